"""Attention maps (mmjax.explain): the query's attention is read from the fusion's right layers, split over
every image and audio stream in the model's order, honours padding and missing streams, is drawn for any
streams (several images, RGB or grey), and is written for a trained run per group of its data set."""

import dataclasses
import functools
import inspect
import json
import re
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from mmjax import evaluate, explain
from mmjax.data.spec import Task
from mmjax.model import build_model, dummy_batch

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

GRIDS = {"image": (2, 2), "audio": (3, 2)}  # contexts of 1 + 4 image and 1 + 6 audio tokens
FOUR_STREAMS = {"text": "text", "image": "image", "image_2": "image", "audio": "audio"}


def test_split_maps_drops_each_cls_and_keeps_time_major_order():
    context = np.arange(12, dtype=np.float32)[None]  # [image cls, 4 patches, audio cls, 6 patches]
    maps = explain.split_maps(context, GRIDS)
    np.testing.assert_array_equal(maps["image"][0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(maps["audio"][0], [[6, 7], [8, 9], [10, 11]])
    with pytest.raises(ValueError, match="the context has 13 tokens"):
        explain.split_maps(np.zeros((1, 13)), GRIDS)


def test_two_image_streams_and_a_second_text_split_in_the_models_order():
    """Streams text, image (2x2), text_2 (3 tokens), image_2 (1x2), audio (3x2), text the query: the context
    is every other stream in that order; text_2 takes its tokens and gets no map."""
    streams = {"text": "text", "image": "image", "text_2": "text", "image_2": "image", "audio": "audio"}
    config = {
        "image": {"size": 4, "patch_size": 2, "channels": 3},
        "audio": {"frames": 6, "mels": 4, "patch_time": 2, "patch_freq": 2},
    }
    grids = explain.grid_shapes(config, streams)
    assert grids == {"image": (2, 2), "image_2": (2, 2), "audio": (3, 2)}
    grids["image_2"] = (1, 2)  # as if image_2 had its own grid: the layout follows the grids given
    layout = explain.context_layout(streams, "text", grids, {"text": 5, "text_2": 3})
    assert list(layout.items()) == [("image", (2, 2)), ("text_2", 3), ("image_2", (1, 2)), ("audio", (3, 2))]
    # keys: [image cls, 4 patches] [text_2 x3] [image_2 cls, 2 patches] [audio cls, 6 patches] = 5 + 3 + 3 + 7
    context = np.arange(2 * 18, dtype=np.float32).reshape(2, 18)
    maps = explain.split_maps(context, layout)
    assert list(maps) == ["image", "image_2", "audio"]
    np.testing.assert_array_equal(maps["image"][1], [[19, 20], [21, 22]])
    np.testing.assert_array_equal(maps["image_2"][0], [[9, 10]])
    np.testing.assert_array_equal(maps["audio"][0], [[12, 13], [14, 15], [16, 17]])
    # The query is left out of its own context: with image_2 as the query, text and text_2 are context.
    layout = explain.context_layout(streams, "image_2", grids, {"text": 5, "text_2": 3})
    assert list(layout.items()) == [("text", 5), ("image", (2, 2)), ("text_2", 3), ("audio", (3, 2))]
    with pytest.raises(ValueError, match=r"the context has 17 tokens, the layout .* gives 20"):
        explain.split_maps(np.zeros((1, 17)), layout)


def test_a_resnet_grid_is_the_square_of_its_token_count():
    config = {"image": {"encoder": "resnet", "size": 32}, "audio": {}}
    assert explain.grid_shapes(config, {"image": "image"}, {"image": 1 + 16}) == {"image": (4, 4)}


def test_query_attention_averages_layers_heads_and_valid_tokens():
    rng = np.random.default_rng(0)
    weights = rng.random((2, 1, 3, 4, 5))  # [layers, B, heads, query tokens, keys]
    mask = np.array([[True, True, False, False]])
    expected = weights[:, 0, :, :2].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        explain.query_attention(weights, mask, "cross_attention")[0], expected, rtol=1e-6
    )
    # Early fusion: rows and keys are [fusion cls, text (2), context (3)]; only text rows, context keys.
    joint = rng.random((1, 1, 1, 6, 6))
    got = explain.query_attention(joint, np.array([[True, False]]), "early")[0]
    np.testing.assert_allclose(got, joint[0, 0, 0, 1, 3:], rtol=1e-6)
    # The query in the middle: [fusion cls, image (2), text (2), audio (1)]; context = image then audio keys.
    got = explain.query_attention(joint, np.array([[False, True]]), "early", start=2)[0]
    np.testing.assert_allclose(got, joint[0, 0, 0, 4, [1, 2, 5]], rtol=1e-6)
    # A query without valid tokens (an absent stream) gives no attention.
    assert np.all(np.asarray(explain.query_attention(weights, np.zeros((1, 4), bool), "co_attention")) == 0)


def test_the_query_is_the_fusions():
    def config(name, **fusion):
        return {"fusion": {"name": name, **fusion}}

    assert explain.query_stream(config("cross_attention"), FOUR_STREAMS) == "text"
    assert explain.query_stream(config("cross_attention", query="image_2"), FOUR_STREAMS) == "image_2"
    later_text = {"image": "image", "text_2": "text", "text_3": "text", "audio": "audio"}
    assert explain.query_stream(config("co_attention"), later_text) == "text_2"
    assert explain.query_stream(config("early"), later_text) == "text_2"
    with pytest.raises(ValueError, match=r"model.fusion.query='text' is not a stream of the data set"):
        explain.query_stream(config("cross_attention"), {"image": "image", "audio": "audio"})
    with pytest.raises(ValueError, match="early fusion take a text stream's tokens as the queries"):
        explain.query_stream(config("early"), {"image": "image", "audio": "audio"})
    with pytest.raises(ValueError, match="no image or audio stream besides the query 'text'"):
        explain.query_stream(config("co_attention"), {"text": "text", "text_2": "text"})
    with pytest.raises(ValueError, match="fusion 'late' has no query-to-context attention"):
        explain.query_stream(config("late"), FOUR_STREAMS)


def test_fusions_without_query_attention_are_refused():
    with pytest.raises(ValueError, match="fusion 'late' has no query-to-context attention"):
        explain.sown_attention({"fusion": {}}, "late", "text")
    with pytest.raises(ValueError, match="no cross_attn attention weights of the 'text_2' queries"):
        explain.sown_attention({"fusion": {"text_layer_0": {"cross_attn": {}}}}, "cross_attention", "text_2")


def test_pick_examples_takes_groups_in_turn():
    names = np.array(["a", "a", "b", "c", "d", "e", "f", "b", "c"])
    assert explain.pick_examples(names, 7) == [0, 2, 3, 4, 5, 6, 1]
    assert explain.pick_examples(np.array(["x", "x"]), 5) == [0, 1]
    assert explain.pick_examples(np.full(10, "all"), 3) == [0, 1, 2]  # no groups: the first n


def test_shares_by_group():
    maps = {"image": np.array([[[0.1, 0.2]], [[0.3, 0.0]], [[0.0, 0.1]]]), "audio": np.full((3, 2, 1), 0.1)}
    shares = explain.shares_by_group(maps, np.array(["b", "a", "b"]))
    assert list(shares) == ["b", "a"]
    np.testing.assert_allclose([shares["b"]["image"], shares["a"]["image"]], [0.2, 0.3])
    np.testing.assert_allclose(shares["a"]["audio"], 0.2)


def test_task_lines_name_the_classes():
    tasks = {
        "colour": Task("classes", ("red", "green", "blue")),
        "tags": Task("multilabel", ("cat", "dog", "sky")),
        "price": Task("regression"),
        "align": Task("align"),
    }
    predictions = {
        "colour": np.array([2, 0]),
        "tags": np.array([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]]),
        "price": np.array([1.234, 0.0]),
    }
    example = {"labels/colour": np.int32(1), "labels/tags": np.array([1.0, 0.0, 0.0]), "labels/price": 2.5}
    assert explain.task_lines(tasks, predictions, example, 0) == [
        "colour: predicted blue (true green)",
        "tags: predicted cat, sky (true cat)",
        "price: predicted 1.23 (true 2.50)",
    ]
    unlabelled = {"labels/colour": np.int32(-1)}
    assert explain.task_lines(tasks, predictions, unlabelled, 1) == [
        "colour: predicted red (true unlabelled)",
        "tags: predicted none",
        "price: predicted 0.00",
    ]


def test_draw_two_images_rgb_and_grey_and_audio(tmp_path):
    rng = np.random.default_rng(0)
    inputs = {
        "image": rng.normal(size=(8, 8, 3)).astype(np.float32),
        "image_2": rng.normal(size=(12, 12, 1)).astype(np.float32),
        "audio": rng.normal(size=(16, 8)).astype(np.float32),
    }
    maps = {
        "image": rng.random((2, 2)) / 8,
        "image_2": rng.random((3, 3)) / 18,
        "audio": rng.random((4, 2)) / 8,
    }
    assert np.allclose(explain.display_image(inputs["image"]).max(), 1.0)
    assert explain.display_image(inputs["image_2"]).shape == (12, 12)
    figure = explain.draw_example(inputs, FOUR_STREAMS, maps, "'a question'\nlabel: predicted x (true y)")
    assert [axis.get_title().split(" ")[0] for axis in figure.axes] == ["image", "image_2", "audio"]
    figure.savefig(tmp_path / "example.png", dpi=50)
    assert Image.open(tmp_path / "example.png").size[0] > 300


def test_explain_names_no_data_set_and_switches_no_backend():
    source = inspect.getsource(explain)
    assert not re.search(r"av_digits|question_type|image_digit|speaker|answer", source)
    assert not re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", source)
    assert not re.search(r"^(from mmjax import evaluate|import mmjax.evaluate)", source, re.M)


def _model_config(fusion, query="text"):
    return ml_collections.ConfigDict(
        dict(
            size="tiny",
            width=0,
            mlp_dim=0,
            dropout=0.0,
            pre_ln=True,
            head_dropout=0.0,
            text=dict(vocab_size=32, max_len=6),
            image=dict(size=8, channels=3, patch_size=4),
            audio=dict(frames=16, mels=8, patch_time=4, patch_freq=4),
            fusion=dict(name=fusion, depth=1, bidirectional=False, query=query),
        )
    )


@functools.cache
def _untrained(fusion, query, order):
    """A tiny model (not trained) over the streams in `order`, its variables and a batch of 3: text padded
    after 3 tokens in row 0, audio padded after 6 frames in row 1, image_2 absent in row 2."""
    streams = {m: FOUR_STREAMS[m] for m in order}
    cfg = _model_config(fusion, query)
    tasks = {"label": 3}
    model = build_model(cfg, tasks, streams)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), dummy_batch(cfg, tasks, streams=streams)
    )
    rng = np.random.default_rng(0)
    batch = jax.tree.map(np.array, dummy_batch(cfg, tasks, 3, streams))
    batch["text"] = rng.integers(1, 32, batch["text"].shape).astype(np.int32)
    batch["text_mask"][0, 3:] = False
    for m in ("image", "image_2"):
        batch[m] = rng.normal(size=batch[m].shape).astype(np.float32)
    batch["audio"] = rng.normal(size=batch["audio"].shape).astype(np.float32)
    batch["audio_mask"][1, 6:] = False
    batch["present"]["image_2"][2] = False
    return cfg, model, variables, batch


def _sown(model, variables, batch):
    """[(path, attention weights)] the fusion sows."""
    _, state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    return [(path, v[0]) for path, v in traverse_util.flatten_dict(state["intermediates"]["fusion"]).items()]


@pytest.mark.parametrize(
    ("fusion", "query", "order"),
    [
        ("cross_attention", "image_2", ("text", "image", "image_2", "audio")),
        ("early", "text", ("image", "text", "image_2", "audio")),
    ],
)
def test_maps_of_an_untrained_model_with_two_rgb_image_streams(fusion, query, order):
    """Against the sown weights sliced by hand: text 6 tokens, each image 1 + 2x2, audio 1 + 4x2."""
    cfg, model, variables, batch = _untrained(fusion, query, order)
    outputs, maps = explain.attention_maps(model, variables, batch, cfg.to_dict())
    assert set(outputs) >= {"label"}
    expected_maps = [m for m in order if m != query and m != "text"]
    assert list(maps) == expected_maps
    assert all(maps[m].shape == (3, 2, 2) for m in ("image", "image_2") if m in maps)
    assert maps["audio"].shape == (3, 4, 2)
    (weights,) = [
        w for path, w in _sown(model, variables, batch) if explain.ATTENTION_MODULES[fusion] in path
    ]
    weights = np.asarray(weights).mean(axis=1)  # [B, queries, keys], one layer
    if fusion == "early":  # [cls, image 5, text 6, image_2 5, audio 9]; text rows, valid ones only
        rows = [weights[b, 6:12][np.asarray(batch["text_mask"][b])].mean(0) for b in range(3)]
        image, image_2, audio = slice(2, 6), slice(13, 17), slice(18, 26)
    else:  # image_2's rows (all valid where it is present) over [text 6, image 5, audio 9]
        here = batch["present"]["image_2"]
        rows = [weights[b].mean(0) if here[b] else np.zeros(20) for b in range(3)]
        image, image_2, audio = slice(7, 11), None, slice(12, 20)
    rows = np.stack(rows)
    np.testing.assert_allclose(maps["image"].reshape(3, 4), rows[:, image], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps["audio"].reshape(3, 8), rows[:, audio], rtol=1e-5, atol=1e-7)
    if image_2 is not None:
        np.testing.assert_allclose(maps["image_2"].reshape(3, 4), rows[:, image_2], rtol=1e-5, atol=1e-7)
        assert np.all(maps["image_2"][2] == 0.0)  # absent in row 2
    # Padded audio frames (row 1: frames 6.. -> time patches 2 and 3) get no attention.
    assert np.all(maps["audio"][1, 2:] == 0.0) and np.all(maps["audio"][0] > 0.0)
    total = sum(maps[m].sum(axis=(1, 2)) for m in maps)
    if fusion == "early":
        assert np.all(total < 1.0) and np.all(total > 0.0)
    else:  # an absent query attends to nothing
        assert np.all(total[:2] < 1.0) and np.all(total[:2] > 0.0) and total[2] == 0.0


def test_a_text_model_or_a_fusion_without_attention_is_refused():
    cfg, model, variables, batch = _untrained("cross_attention", "image_2", tuple(FOUR_STREAMS))
    late = cfg.to_dict() | {"fusion": {"name": "late"}}
    with pytest.raises(ValueError, match="fusion 'late' has no query-to-context attention"):
        explain.attention_maps(model, variables, batch, late)
    with pytest.raises(ValueError, match="need a multimodal model"):
        explain.attention_maps(model, variables, batch, cfg.to_dict() | {"kind": "text"})


def test_maps_of_the_smoke_run(smoke_run, tmp_path):
    run = evaluate.restore_run(smoke_run)
    config = run.config
    source = run.data.load("test")
    batch = jax.tree.map(lambda *xs: np.stack(xs), *[run.data.preprocess(source[i]) for i in range(4)])
    outputs, maps = explain.attention_maps(run.model, run.variables, batch, config.model.to_dict())
    assert list(maps) == ["image", "audio"]  # the context streams in the data set's order
    audio = config.model.audio
    rows, columns = audio.frames // audio.patch_time, audio.mels // audio.patch_freq  # default: 24 x 1
    assert maps["image"].shape == (4, 4, 4) and maps["audio"].shape == (4, rows, columns)
    # Softmax rows: patch shares plus the two [CLS] tokens' shares make 1, so the patches get less.
    total = maps["image"].sum(axis=(1, 2)) + maps["audio"].sum(axis=(1, 2))
    assert np.all(total < 1.0) and np.all(total > 0.5)
    # Padded audio frames get no attention; an absent stream gets none at all.
    valid_patches = batch["audio_mask"].reshape(4, rows, audio.patch_time).any(-1)
    assert not valid_patches.all() and np.all(maps["audio"][~valid_patches] == 0.0)
    no_audio = dict(batch, present=dict(batch["present"], audio=np.zeros(4, bool)))
    _, dropped = explain.attention_maps(run.model, run.variables, no_audio, config.model.to_dict())
    assert np.all(dropped["audio"] == 0.0) and np.all(dropped["image"].sum(axis=(1, 2)) > total * 0.5)
    assert set(outputs) >= set(run.data.head_sizes())

    workdir = shutil.copytree(smoke_run, tmp_path / "run")  # the shared run stays without maps
    paths = explain.write_maps(workdir, 2)
    assert [p.name for p in paths] == ["example_0.png", "example_1.png"]
    assert all(Image.open(p).size[0] > 400 for p in paths)
    shares = json.loads((workdir / "explain" / "shares.json").read_text())
    assert shares["examples"] == 300 and shares["query"] == "text" and shares["streams"] == ["image", "audio"]
    # Per group: the data set's group names (AV-Digits: its question types), as the data set gives them.
    names = set(run.data.groups("test")[:300].tolist())
    assert set(shares["shares"]) == names and len(names) > 1
    assert all(0 < s["image"] + s["audio"] < 1 for s in shares["shares"].values())


def test_write_maps_without_groups_takes_the_first_examples(smoke_run, tmp_path, monkeypatch):
    restore = evaluate.restore_run

    def without_groups(workdir, which="best"):
        run = restore(workdir, which)
        return dataclasses.replace(run, data=dataclasses.replace(run.data, groups=None))

    monkeypatch.setattr(evaluate, "restore_run", without_groups)
    workdir = shutil.copytree(smoke_run, tmp_path / "run")
    paths = explain.write_maps(workdir, 1)
    assert [p.name for p in paths] == ["example_0.png"]
    shares = json.loads((workdir / "explain" / "shares.json").read_text())
    assert list(shares["shares"]) == ["all"]
