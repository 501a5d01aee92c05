"""Attention maps (mmjax.explain): the text-to-context attention is read from the right layers, split into
the image and audio patch grids, honours missing modalities, and is drawn for a trained run."""

import json
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import evaluate, explain

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

GRIDS = {"image": (2, 2), "audio": (3, 2)}  # contexts of 1 + 4 image and 1 + 6 audio tokens


def test_split_maps_drops_each_cls_and_keeps_time_major_order():
    context = np.arange(12, dtype=np.float32)[None]  # [image cls, 4 patches, audio cls, 6 patches]
    maps = explain.split_maps(context, GRIDS)
    np.testing.assert_array_equal(maps["image"][0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(maps["audio"][0], [[6, 7], [8, 9], [10, 11]])
    with pytest.raises(ValueError, match="the context has 13 tokens"):
        explain.split_maps(np.zeros((1, 13)), GRIDS)


def test_text_attention_averages_layers_heads_and_valid_tokens():
    rng = np.random.default_rng(0)
    weights = rng.random((2, 1, 3, 4, 5))  # [layers, B, heads, text tokens, keys]
    mask = np.array([[True, True, False, False]])
    expected = weights[:, 0, :, :2].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        explain.text_attention(weights, mask, "cross_attention", 4)[0], expected, rtol=1e-6
    )
    # Early fusion: rows and keys are [fusion cls, text (2), context (3)]; only text rows, context keys.
    joint = rng.random((1, 1, 1, 6, 6))
    got = explain.text_attention(joint, np.array([[True, False]]), "early", 2)[0]
    np.testing.assert_allclose(got, joint[0, 0, 0, 1, 3:], rtol=1e-6)


def test_pick_examples_takes_question_types_in_turn():
    types = np.array([0, 0, 1, 2, 3, 4, 5, 1, 2])
    assert explain.pick_examples(types, 7) == [0, 2, 3, 4, 5, 6, 1]
    assert explain.pick_examples(np.array([3, 3]), 5) == [0, 1]


def test_maps_of_the_smoke_run(smoke_run, tmp_path):
    run = evaluate.restore_run(smoke_run)
    config = run.config
    source = evaluate.load_split(config, "test")
    preprocess = evaluate.make_preprocess(config)
    batch = jax.tree.map(lambda *xs: np.stack(xs), *[preprocess(source[i]) for i in range(4)])
    outputs, maps = explain.attention_maps(run.model, run.variables, batch, config.model.to_dict())
    assert maps["image"].shape == (4, 4, 4) and maps["audio"].shape == (4, 12, 4)
    # Softmax rows: patch shares plus the two [CLS] tokens' shares make 1, so the patches get less.
    total = maps["image"].sum(axis=(1, 2)) + maps["audio"].sum(axis=(1, 2))
    assert np.all(total < 1.0) and np.all(total > 0.5)
    # Padded audio frames get no attention; an absent modality gets none at all.
    valid_patches = batch["audio_mask"].reshape(4, 12, 8).any(-1)
    assert np.all(maps["audio"][~valid_patches] == 0.0)
    no_audio = dict(batch, present=dict(batch["present"], audio=np.zeros(4, bool)))
    _, dropped = explain.attention_maps(run.model, run.variables, no_audio, config.model.to_dict())
    assert np.all(dropped["audio"] == 0.0) and np.all(dropped["image"].sum(axis=(1, 2)) > total * 0.5)
    assert set(outputs) >= {"answer"}

    workdir = shutil.copytree(smoke_run, tmp_path / "run")  # the shared run stays without maps
    paths = explain.write_maps(workdir, 2)
    assert [p.name for p in paths] == ["example_0.png", "example_1.png"]
    assert all(Image.open(p).size[0] > 400 for p in paths)
    shares = json.loads((workdir / "explain" / "shares.json").read_text())
    assert shares["examples"] == 300 and set(shares["shares"]) <= {
        "spoken_digit",
        "written_digit",
        "same",
        "sum",
        "larger",
        "speaker",
    }
    assert all(0 < s["image"] + s["audio"] < 1 for s in shares["shares"].values())


def test_fusions_without_text_queries_are_refused():
    with pytest.raises(ValueError, match="fusion 'late' has no text-to-image/audio attention"):
        explain.sown_attention({"fusion": {}}, "late")
