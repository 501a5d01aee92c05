"""Experiment configs: argument parsing, overrides, and clear errors for unknown keys and wrong types."""

import pathlib

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
