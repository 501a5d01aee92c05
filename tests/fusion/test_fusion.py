"""Every fusion in FUSIONS: shapes, padding invariance, absent modalities are ignored and never give NaN,
finite gradients, parameter names. Fusion-specific behaviour is tested in tests/fusion/test_<name>.py;
streams other than text/image/audio, and their order, in tests/fusion/test_streams.py."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from mmjax.fusion import FUSIONS, CrossAttentionFusion, build_fusion

B, D = 3, 16
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}  # encoders may have different widths

FIELDS = dict(depth=2, bidirectional=False, num_bottlenecks=2, fusion_layer=1, num_latents=3, rank=4)


def _build(name, pre_ln=True, **fields):
    cfg = ml_collections.ConfigDict(dict(FIELDS, name=name) | fields)
    return build_fusion(cfg, width=D, num_heads=2, mlp_dim=32, dropout_rate=0.0, pre_ln=pre_ln)


FUSION_CASES = {name: _build(name) for name in FUSIONS} | {
    "bidirectional": _build("cross_attention", bidirectional=True),
    "image_query": _build("cross_attention", query="image"),
    "audio_query_bidirectional": _build("cross_attention", query="audio", bidirectional=True),
    "post_ln": CrossAttentionFusion(width=D, depth=1, num_heads=2, mlp_dim=32, pre_ln=False),
}


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    masks["text"][0, 3:] = False
    masks["audio"][1, 2:] = False
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    return tokens, masks, present


@functools.cache
def _variables(name):
    return FUSION_CASES[name].init(jax.random.key(0), *_inputs(), deterministic=True)


@functools.cache
def _apply(name, order):
    def apply(variables, tokens, masks, present):
        tokens = {m: tokens[m] for m in order}  # jit hands dicts back sorted: the streams in the order given
        return FUSION_CASES[name].apply(variables, tokens, masks, present, deterministic=True)

    return jax.jit(apply)


def _run(name, tokens, masks, present):
    return _apply(name, tuple(tokens))(_variables(name), tokens, masks, present)


def _assert_same(a, b):
    for key in ("tokens", "mask", "pooled"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_registry_has_the_whole_zoo():
    zoo = {"late", "late_logits", "early", "cross_attention", "co_attention", "bottleneck", "gated", "film"}
    assert set(FUSIONS) == zoo | {"tensor", "low_rank_tensor", "perceiver"}


@pytest.mark.parametrize("name", FUSION_CASES)
def test_shapes_and_aux(name):
    out, aux = _run(name, *_inputs())
    assert out["tokens"].shape[::2] == (B, D) and out["mask"].shape == out["tokens"].shape[:2]
    assert out["pooled"].shape == (B, D)
    assert {"fusion/tokens", "fusion/mask", "fusion/pooled"} <= set(aux)
    assert np.all(np.isfinite(out["tokens"])) and np.all(np.isfinite(out["pooled"]))


@pytest.mark.parametrize("name", FUSION_CASES)
def test_padding_does_not_change_output(name):
    tokens, masks, present = _inputs()
    out, _ = _run(name, tokens, masks, present)
    changed = {m: np.where(masks[m][..., None], x, 77.0).astype(np.float32) for m, x in tokens.items()}
    out_changed, _ = _run(name, changed, masks, present)
    _assert_same(out, out_changed)


@pytest.mark.parametrize("name", FUSION_CASES)
@pytest.mark.parametrize("absent", ["image", "audio", "text"])
def test_absent_modality_content_is_ignored(name, absent):
    tokens, masks, present = _inputs()
    present[absent][1] = False
    out, _ = _run(name, tokens, masks, present)
    changed = dict(tokens)
    changed[absent] = tokens[absent].copy()
    changed[absent][1] = np.nan  # even NaN content of an absent modality must not leak
    out_changed, _ = _run(name, changed, masks, present)
    _assert_same(out, out_changed)
    if out["tokens"].shape[1] == sum(LENGTHS.values()):  # fusions that keep every modality's tokens
        assert not out_changed["mask"][1, _offset(absent) : _offset(absent) + LENGTHS[absent]].any()
    # Present, the same change does matter (so the check above can fail).
    present[absent][1] = True
    changed[absent][1] = 5.0
    out_present, _ = _run(name, tokens, masks, present)
    out_present_changed, _ = _run(name, changed, masks, present)
    assert not np.allclose(out_present["pooled"][1], out_present_changed["pooled"][1])


def _offset(modality):
    order = ("text", "image", "audio")  # fusions that keep the tokens put text first, then image, then audio
    return sum(LENGTHS[m] for m in order[: order.index(modality)])


@pytest.mark.parametrize("name", FUSION_CASES)
def test_all_context_missing_gives_no_nan(name):
    tokens, masks, present = _inputs()
    present["image"][:] = False
    present["audio"][:] = False
    out, _ = _run(name, tokens, masks, present)
    assert np.all(np.isfinite(out["tokens"])) and np.all(np.isfinite(out["pooled"]))
    if out["tokens"].shape[1] == sum(LENGTHS.values()):
        assert out["mask"][:, LENGTHS["text"] :].sum() == 0

    def loss(v):
        return FUSION_CASES[name].apply(v, tokens, masks, present, deterministic=True)[0]["pooled"].sum()

    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(_variables(name))))


def test_bidirectional_updates_context_tokens():
    tokens, masks, present = _inputs()
    one_way, _ = _run("cross_attention", tokens, masks, present)
    both_ways, _ = _run("bidirectional", tokens, masks, present)
    n_text = LENGTHS["text"]
    assert not np.allclose(one_way["tokens"][:, n_text:], both_ways["tokens"][:, n_text:])


def test_cross_attention_needs_its_query_and_context():
    tokens, masks, present = _inputs()
    fusion = FUSION_CASES["cross_attention"]
    with pytest.raises(ValueError, match=r"needs 'text' tokens.*got streams \['image', 'audio'\]"):
        two = {"image": tokens["image"], "audio": tokens["audio"]}
        fusion.init(jax.random.key(0), two, masks, present, deterministic=True)
    with pytest.raises(ValueError, match=r"a stream other than 'text'.*got streams \['text'\]"):
        fusion.init(jax.random.key(0), {"text": tokens["text"]}, masks, present, deterministic=True)
    # Any stream name is a query; it is checked against the streams when called.
    video = _build("cross_attention", query="video")
    with pytest.raises(ValueError, match=r"needs 'video' tokens.*got streams \['text', 'image', 'audio'\]"):
        video.init(jax.random.key(0), *_inputs(), deterministic=True)
    for bad in (3, ""):
        with pytest.raises(ValueError, match="model.fusion.query"):
            _build("cross_attention", query=bad)


def test_build_fusion_reads_film_condition():
    assert FUSION_CASES["film"].condition == "text"
    assert _build("film", condition="image_2").condition == "image_2"
    with pytest.raises(ValueError, match="model.fusion.condition"):
        _build("film", condition=None)


def test_image_query_pools_the_image_cls_after_attending_to_text_and_audio():
    tokens, masks, present = _inputs()
    out, _ = _run("image_query", tokens, masks, present)
    variables = _variables("image_query")["params"]
    assert {"image_layer_0", "image_layer_1", "image_final_ln"} <= set(variables)
    # pooled = the image's first token, which sits after the text tokens in the output layout.
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, LENGTHS["text"]], rtol=1e-6)
    # The query attends to the text: changing a valid text token changes the pooled image vector.
    changed = dict(tokens, text=tokens["text"].copy())
    changed["text"][:, 1] += 1.0
    assert not np.allclose(out["pooled"], _run("image_query", changed, masks, present)[0]["pooled"])
    # One way: the text and audio tokens pass through unattended (only projected), so the query's content
    # leaves them unchanged.
    moved = dict(tokens, image=tokens["image"] + 1.0)
    out_moved, _ = _run("image_query", moved, masks, present)
    np.testing.assert_allclose(out_moved["tokens"][:, : LENGTHS["text"]], out["tokens"][:, : LENGTHS["text"]])


# Parameters of each case with the streams text, image, audio as at the commit before fusions took any
# stream (6631747): the number of leaves and of values, and the top-level names. Checkpoints keep loading.
PARAM_COUNTS_BEFORE_STREAMS = {
    "late": (10, 2336),
    "late_logits": (18, 3456),
    "early": (42, 5136),
    "cross_attention": (59, 7328),
    "co_attention": (159, 20640),
    "bottleneck": (103, 14000),
    "gated": (14, 1359),
    "film": (32, 4672),
    "tensor": (13, 12600),
    "low_rank_tensor": (15, 2664),
    "perceiver": (60, 7376),
    "bidirectional": (109, 13984),
    "image_query": (59, 7328),
    "audio_query_bidirectional": (109, 13984),
    "post_ln": (33, 3984),
}
PARAM_NAMES_BEFORE_STREAMS = {
    "late": "audio_proj hidden image_proj pooled_proj text_proj",
    "late_logits": """
        audio_hidden audio_out audio_proj
        image_hidden image_out image_proj
        text_hidden text_out text_proj
    """,
    "early": "audio_embedding audio_proj cls encoder image_embedding image_proj text_embedding text_proj",
    "cross_attention": """
        audio_embedding audio_proj
        image_embedding image_proj
        text_embedding text_final_ln text_layer_0 text_layer_1 text_proj
    """,
    "co_attention": """
        audio_embedding audio_final_ln audio_layer_0 audio_layer_1 audio_proj
        image_embedding image_final_ln image_layer_0 image_layer_1 image_proj
        text_embedding text_final_ln text_layer_0 text_layer_1 text_proj
    """,
    "bottleneck": """
        audio_final_ln audio_layer_0 audio_layer_1 audio_proj
        bottleneck
        image_final_ln image_layer_0 image_layer_1 image_proj
        text_final_ln text_layer_0 text_layer_1 text_proj
    """,
    "gated": "audio_hidden audio_proj gate image_hidden image_proj text_hidden text_proj",
    "film": """
        audio_film_0_beta audio_film_0_gamma audio_film_1_beta audio_film_1_gamma audio_layer_0
        audio_layer_1 audio_proj
        image_film_0_beta image_film_0_gamma image_film_1_beta image_film_1_gamma image_layer_0
        image_layer_1 image_proj
        pooled_proj
        text_proj
    """,
    "tensor": "audio_factor audio_proj image_factor image_proj pooled_proj text_factor text_proj",
    "low_rank_tensor": """
        audio_factor audio_proj audio_rank_factors
        image_factor image_proj image_rank_factors
        text_factor text_proj text_rank_factors
    """,
    "perceiver": """
        audio_embedding audio_proj
        final_ln latents layer_0 layer_1
        image_embedding image_proj
        text_embedding text_proj
    """,
    "bidirectional": """
        audio_embedding audio_proj
        context_final_ln context_layer_0 context_layer_1
        image_embedding image_proj
        text_embedding text_final_ln text_layer_0 text_layer_1 text_proj
    """,
    "image_query": """
        audio_embedding audio_proj
        image_embedding image_final_ln image_layer_0 image_layer_1 image_proj
        text_embedding text_proj
    """,
    "audio_query_bidirectional": """
        audio_embedding audio_final_ln audio_layer_0 audio_layer_1 audio_proj
        context_final_ln context_layer_0 context_layer_1
        image_embedding image_proj
        text_embedding text_proj
    """,
    "post_ln": "audio_embedding audio_proj image_embedding image_proj text_embedding text_layer_0 text_proj",
}


def _leaves(params):
    return {jax.tree_util.keystr(path): x.shape for path, x in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.parametrize("name", FUSION_CASES)
def test_parameters_of_text_image_audio_are_unchanged(name):
    params = _variables(name)["params"]
    leaves = _leaves(params)
    count, size = PARAM_COUNTS_BEFORE_STREAMS[name]
    assert sorted(params) == sorted(PARAM_NAMES_BEFORE_STREAMS[name].split())
    assert len(leaves) == count
    assert sum(int(np.prod(s)) for s in leaves.values()) == size


@pytest.mark.parametrize("name", FUSION_CASES)
def test_parameter_names_follow_the_stream_names(name):
    """Renaming a stream (audio -> image_2, same shapes) renames exactly its parameters, nothing else."""
    renamed = ("text", "image", "image_2")
    tokens, masks, present = ({r: d[m] for r, m in zip(renamed, d, strict=True)} for d in _inputs())
    fusion = FUSION_CASES[name]
    if name == "audio_query_bidirectional":
        fusion = fusion.clone(query="image_2")
    params = fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)["params"]
    before = _leaves(_variables(name)["params"])
    assert _leaves(params) == {_audio_to_image_2(path): shape for path, shape in before.items()}


def _audio_to_image_2(path):
    return "['image_2_" + path[len("['audio_") :] if path.startswith("['audio_") else path
