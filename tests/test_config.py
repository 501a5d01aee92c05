"""Experiment configs: argument parsing, overrides, and clear errors for unknown keys and wrong types."""

import pathlib
import re

import ml_collections
import pytest

from mmjax.config import apply_override, load_config, parse_arg

ROOT = pathlib.Path(__file__).parents[1]
# Experiment configs; sweep definitions (get_sweep) are tested in test_sweep.py.
EXPERIMENTS = sorted(str(p) for p in ROOT.glob("experiments/*.py") if "def get_config" in p.read_text())


def test_parse_arg_types_flags_and_defaults():
    args = parse_arg("fusion=late, smoke,depth=3", fusion="cross_attention", smoke=False, depth=2, rate=0.5)
    assert (args.fusion, args.smoke, args.depth, args.rate) == ("late", True, 3, 0.5)
    assert parse_arg(None, smoke=False).smoke is False


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("fusoin=late", "unknown config argument 'fusoin'"),
        ("depth=two", "'depth' must be int"),
        ("depth", "'depth' needs a value"),
        ("smoke=maybe", "'smoke' must be true or false"),
    ],
)
def test_parse_arg_errors_name_the_key(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(arg, fusion="cross_attention", depth=2, smoke=False)


def test_load_config_with_argument_and_overrides():
    config = load_config(
        "experiments/av_digits.py:fusion=late", ["train.steps=7", "optim.learning_rate=0.01"]
    )
    assert config.model.fusion.name == "late"
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.optim.learning_rate == 0.01


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown config key 'train.stepz'"),
        ("trian.steps=3", "unknown config key 'trian'"),
        ("train.steps=abc", "'train.steps' must be int"),
        ("train.steps", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("experiments/av_digits.py", [override])


def test_unknown_key_set_in_python_is_rejected():
    config = load_config("experiments/av_digits.py")
    with pytest.raises(AttributeError, match="nonexistent"):
        config.train.nonexistent = 1
    with pytest.raises(ValueError, match="unknown config key"):
        apply_override(config, "model.fusion.nmae=late")


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="experiments/nope.py"):
        load_config("experiments/nope.py")


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_has_a_smoke_config(path):
    full, smoke = load_config(path), load_config(f"{path}:smoke")
    assert smoke.train.steps > 0 and smoke.train.steps <= 20
    if smoke.model.get("kind") == "text":  # a pretrained encoder: shorter sequences and batches
        assert smoke.data.text_len < full.data.text_len and smoke.data.batch_size <= full.data.batch_size
    else:
        assert smoke.model.size == "tiny" and full.model.size != "tiny"


def test_a_sweep_file_is_not_an_experiment_config():
    with pytest.raises(ValueError, match="no get_config.*python -m mmjax.sweep"):
        load_config(str(ROOT / "experiments/fusion_ablation.py"))


def _fields() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "model": {"sizes": (32, 64), "rates": (0.1,), "names": ("a",), "flags": [True], "empty": ()},
            "seed": 0,
            "lr": 0.1,
            "smoke": False,
            "name": "x",
            "extra": None,
            "steps": ml_collections.config_dict.placeholder(int),
        }
    )


def test_override_tuple_of_ints_from_the_command_line():
    config = load_config("experiments/av_digits.py", ["model.image.resnet.hidden_sizes=64,128"])
    assert config.model.image.resnet.hidden_sizes == (64, 128)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("model.sizes=64,128", "sizes", (64, 128)),
        ("model.sizes=(16, 32, 64)", "sizes", (16, 32, 64)),
        ("model.sizes=8", "sizes", (8,)),
        ("model.sizes=8,", "sizes", (8,)),
        ("model.sizes=()", "sizes", ()),
        ("model.sizes=", "sizes", ()),
        ("model.rates=1,1e-3", "rates", (1.0, 0.001)),
        ("model.names=cat,dog", "names", ("cat", "dog")),
        ("model.names='cat', \"dog\"", "names", ("cat", "dog")),
        ("model.names=64", "names", ("64",)),  # the elements' type: str, not inferred
        ("model.flags=true,0", "flags", [True, False]),  # a list stays a list
        ("model.empty=1,2.5,b", "empty", (1, 2.5, "b")),  # no elements to follow: int, float, str
        ("model.empty='1'", "empty", ("1",)),
    ],
)
def test_override_sequences(override, key, expected):
    config = _fields()
    apply_override(config, override)
    value = config.model[key]
    assert value == expected and type(value) is type(expected)
    assert [type(v) for v in value] == [type(v) for v in expected]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("'3'", "3"),
        ("(1, 2)", (1, 2)),
        ("None", None),
        ("cat", "cat"),
        ("a/b*", "a/b*"),
    ],
)
def test_override_none_default_parses_a_literal_else_keeps_the_string(raw, expected):
    config = _fields()
    apply_override(config, f"extra={raw}")
    assert config.extra == expected and type(config.extra) is type(expected)


def test_override_scalars():
    config = _fields()
    for override in ("seed=7", "lr=1e-3", "smoke=true", "name=resnet", "steps=5"):
        apply_override(config, override)
    assert (config.seed, config.lr, config.smoke, config.name, config.steps) == (7, 1e-3, True, "resnet", 5)
    assert isinstance(config.seed, int) and isinstance(config.lr, float) and isinstance(config.steps, int)
    for raw, expected in (("False", False), ("1", True), ("0", False)):
        apply_override(config, f"smoke={raw}")
        assert config.smoke is expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=1.5", "'seed' must be int, got '1.5'"),
        ("lr=fast", "'lr' must be float, got 'fast'"),
        ("smoke=yes", "'smoke' must be true or false, got 'yes'"),
        ("steps=many", "'steps' must be int, got 'many'"),  # placeholder(int)
        ("model.sizes=64,1.5", "'model.sizes' must be comma-separated int values, got '1.5' in '64,1.5'"),
        ("model.flags=true,maybe", "'model.flags' must be comma-separated bool values, got 'maybe'"),
        ("model.sizes=64,,128", "'model.sizes' has an empty element in '64,,128'"),
        ("model=3", "'model' is a section"),
    ],
)
def test_bad_override_values_name_the_key_and_value(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_override(_fields(), override)
