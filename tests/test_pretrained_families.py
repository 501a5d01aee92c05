"""Every newly ported encoder family serves as its modality's encoder in an own-data experiment
(experiments/pretrained.py): a tiny random checkpoint (scripts/tiny_checkpoints.py), whose preprocessing sets
the data path, trains two steps on 8 devices and evaluates; wrong frontends are refused by name."""

import importlib.util
import pathlib

import numpy as np
import pytest

from mmjax import train
from mmjax.config import load_config
from mmjax.metrics import read_metrics
from mmjax.model import build_model

ROOT = pathlib.Path(__file__).parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(example folder, build cache, {family: tiny checkpoint folder})."""
    base = tmp_path_factory.mktemp("pretrained")
    root = _script("make_example_folder").make_folder(base / "digits", 40, 16)
    return root, base / "cache", _script("tiny_checkpoints").write(base / "checkpoints")


def _config(folders, family, *overrides):
    root, cache, checkpoints = folders
    spec = f"{ROOT}/experiments/pretrained.py:family={family},checkpoint=hf:{checkpoints[family]},dir={root}"
    spec += ",labels=same,smoke"
    defaults = [f"data.tfds_dir={cache}", "data.ignore=speaker", "data.build_workers=1", "train.steps=2"]
    more = ["train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2"]
    return load_config(spec, [*defaults, *more, *overrides])


@pytest.mark.slow
@pytest.mark.parametrize(
    "family",
    ["siglip", "dinov2", "wav2vec2", "hubert", "wavlm", "distilbert", "electra", "mpnet", "deberta-v2"],
)
def test_each_family_trains_two_steps_on_8_devices(folders, family, tmp_path):
    config = _config(folders, family)
    metrics = train.main(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert 0.0 <= metrics["same/accuracy"] <= 1.0


def test_the_checkpoint_sets_the_data_path_and_the_frontend_must_fit(folders):
    config = _config(folders, "wavlm")
    assert config.model.audio.frontend == "waveform" and config.data.waveform_normalize
    dinov2 = _config(folders, "dinov2")
    assert dinov2.data.image_size == dinov2.model.image.size == 24  # the tiny checkpoint's image processor
    assert dinov2.data.image_mean == (0.45,) * 3
    wrong = _config(folders, "wavlm", "model.audio.frontend=log_mel")
    with pytest.raises(ValueError, match=r"WavLM|Wav2Vec2Encoder.*model\.audio\.frontend='waveform'"):
        build_model(wrong.model, {"same": 2}, {"audio": "audio"})
