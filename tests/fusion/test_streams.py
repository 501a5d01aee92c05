"""Every fusion in FUSIONS on whatever streams it is given (image_2, text_2, no text, one stream), taken in
the order given: a second stream of a kind is used, its padding and absence are not, out["tokens"] and the
per-stream axes follow the dict's order, and a fusion that cannot work with the streams says so."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from mmjax.fusion import FUSIONS, FiLMFusion, build_fusion

B, D = 4, 8
LENGTHS = {"text": 5, "image": 3, "image_2": 4, "audio": 2}
WIDTH_IN = {
    "text": 6,
    "image": 5,
    "image_2": 7,
    "audio": 4,
}  # all different: no stream is mistaken for another
FIELDS = dict(depth=1, bidirectional=False, num_bottlenecks=2, fusion_layer=0, num_latents=2, rank=2)

THREE = ("text", "image", "image_2")
ONE_STREAM = {"late", "late_logits", "early", "bottleneck", "gated", "tensor", "low_rank_tensor", "perceiver"}
LATENT_TOKENS = {
    "perceiver"
}  # out["tokens"] are its latents; every other fusion lays out the streams' tokens
# Fusions whose pooled does not depend on the order of the streams (with the same parameters).
ORDER_FREE_POOLED = {"early", "cross_attention", "co_attention", "bottleneck", "perceiver", "low_rank_tensor"}
ORDER_FREE_POOLED |= {"late_logits"}


def _build(name, **fields):
    cfg = ml_collections.ConfigDict(dict(FIELDS, name=name) | fields)
    return build_fusion(cfg, width=D, num_heads=2, mlp_dim=16, dropout_rate=0.0, pre_ln=True)


CASES = {name: _build(name) for name in FUSIONS}
# Without a text stream: film conditions on the image, cross_attention queries with it.
WITHOUT_TEXT = CASES | {
    "film": _build("film", condition="image"),
    "cross_attention": _build("cross_attention", query="image"),
}


def _inputs(streams):
    """Streams in the order given; padding in rows 0 and 2 (never the first token), all present."""
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, LENGTHS[m], WIDTH_IN[m])).astype(np.float32) for m in streams}
    masks = {m: np.ones((B, LENGTHS[m]), bool) for m in streams}
    for m in streams:
        masks[m][0, -1] = False
        masks[m][2, 2:] = False
    present = {m: np.ones((B,), bool) for m in streams}
    return tokens, masks, present


@functools.cache
def _variables(name, streams, without_text=False):
    fusion = (WITHOUT_TEXT if without_text else CASES)[name]
    return fusion.init(jax.random.key(0), *_inputs(streams), deterministic=True)


def _run(name, tokens, masks, present, without_text=False, variables=None):
    fusion = (WITHOUT_TEXT if without_text else CASES)[name]
    variables = variables or _variables(name, tuple(tokens), without_text)
    out, _ = fusion.apply(variables, tokens, masks, present, deterministic=True)
    return jax.tree.map(np.asarray, out)


def _assert_rows_equal(a, b, rows):
    for key in a:
        np.testing.assert_array_equal(a[key][rows], b[key][rows], err_msg=key)


def _pooled_moves(a, b, rows):
    """Every one of `rows` of pooled changed (clearly: not float noise)."""
    return all(np.abs(a["pooled"][r] - b["pooled"][r]).max() > 1e-4 for r in rows)


@pytest.mark.parametrize("name", FUSIONS)
def test_second_image_stream_shapes_and_mask(name):
    tokens, masks, present = _inputs(THREE)
    present["image_2"][1] = False
    out = _run(name, tokens, masks, present)
    assert out["pooled"].shape == (B, D) and np.all(np.isfinite(out["pooled"]))
    assert np.all(np.isfinite(out["tokens"]))
    if name in LATENT_TOKENS:
        assert out["tokens"].shape == (B, FIELDS["num_latents"], D)
    else:
        assert out["tokens"].shape == (B, sum(LENGTHS[m] for m in THREE), D)
        expected = np.concatenate([masks[m] & present[m][:, None] for m in THREE], axis=1)
        np.testing.assert_array_equal(out["mask"], expected)
        assert not np.any(out["tokens"][~expected])
    if name == "late_logits":
        assert out["per_modality"].shape == (B, 3, D)
        np.testing.assert_allclose(out["weights"][1], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("name", FUSIONS)
def test_second_image_stream_is_used_where_present_only(name):
    tokens, masks, present = _inputs(THREE)
    present["image_2"][1] = False
    out = _run(name, tokens, masks, present)
    changed = dict(
        tokens, image_2=np.where(masks["image_2"][..., None], tokens["image_2"] + 1.0, tokens["image_2"])
    )
    changed["image_2"][1] = np.nan  # absent: even NaN must not leak
    out_changed = _run(name, changed, masks, present)
    assert _pooled_moves(out, out_changed, rows=[0, 2, 3])
    _assert_rows_equal(out, out_changed, rows=1)


@pytest.mark.parametrize("name", FUSIONS)
def test_second_image_stream_padding_is_ignored(name):
    tokens, masks, present = _inputs(THREE)
    out = _run(name, tokens, masks, present)
    changed = dict(tokens, image_2=np.where(masks["image_2"][..., None], tokens["image_2"], 1e3))
    _assert_rows_equal(out, _run(name, changed, masks, present), rows=slice(None))


@pytest.mark.parametrize("name", FUSIONS)
def test_two_streams_without_text(name):
    streams = ("image", "audio")
    tokens, masks, present = _inputs(streams)
    out = _run(name, tokens, masks, present, without_text=True)
    assert out["pooled"].shape == (B, D) and np.all(np.isfinite(out["pooled"]))
    if name not in LATENT_TOKENS:
        assert out["tokens"].shape == (B, LENGTHS["image"] + LENGTHS["audio"], D)
    for m in streams:
        changed = dict(tokens, **{m: tokens[m] + 1.0})
        assert _pooled_moves(out, _run(name, changed, masks, present, without_text=True), rows=range(B)), m


@pytest.mark.parametrize("name", ["film", "cross_attention"])
def test_text_by_default_is_an_error_without_text(name):
    tokens, masks, present = _inputs(("image", "audio"))
    with pytest.raises(ValueError, match=r"needs 'text' tokens.*got streams \['image', 'audio'\]"):
        CASES[name].init(jax.random.key(0), tokens, masks, present, deterministic=True)


@pytest.mark.parametrize("name", FUSIONS)
def test_one_stream(name):
    tokens, masks, present = _inputs(("image_2",))
    fusion = CASES[name]
    if name not in ONE_STREAM:
        with pytest.raises(ValueError, match=rf"{type(fusion).__name__} needs .*got streams \['image_2'\]"):
            fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)
        return
    out = _run(name, tokens, masks, present)
    assert out["pooled"].shape == (B, D) and np.all(np.isfinite(out["pooled"]))
    if name not in LATENT_TOKENS:
        np.testing.assert_array_equal(out["mask"], masks["image_2"])
    changed = dict(tokens, image_2=tokens["image_2"] + 1.0)
    assert _pooled_moves(out, _run(name, changed, masks, present), rows=range(B))
    for top in _variables(name, ("image_2",))["params"]:  # only image_2's names, and the shared ones
        assert not top.startswith(("text_", "image_proj", "audio_")), top


@pytest.mark.parametrize("name", ["co_attention", "cross_attention", "film"])
def test_one_stream_with_the_query_or_condition_is_still_too_few(name):
    tokens, masks, present = _inputs(("text",))
    fusion = CASES[name]
    with pytest.raises(ValueError, match=rf"{type(fusion).__name__} needs .*got streams \['text'\]"):
        fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)


@pytest.mark.parametrize("name", FUSIONS)
def test_no_stream_is_an_error(name):
    fusion = CASES[name]
    with pytest.raises(ValueError, match=rf"{type(fusion).__name__} needs .*got streams \[\]"):
        fusion.init(jax.random.key(0), {}, {}, {}, deterministic=True)


def test_missing_mask_or_presence_is_an_error():
    tokens, masks, present = _inputs(THREE)
    del masks["image_2"]
    with pytest.raises(ValueError, match=r"LateFusion got streams .* no mask or presence for \['image_2'\]"):
        CASES["late"].init(jax.random.key(0), tokens, masks, present, deterministic=True)


@pytest.mark.parametrize("name", FUSIONS)
def test_outputs_follow_the_order_given(name):
    """The same streams (and parameters) in another order: the token blocks are permuted alike."""
    order = ("image", "image_2", "text")  # every stream moves
    tokens, masks, present = _inputs(THREE)
    present["image"][1] = False
    out = _run(name, tokens, masks, present)
    reordered = tuple({m: d[m] for m in order} for d in (tokens, masks, present))
    out_reordered = _run(name, *reordered, variables=_variables(name, THREE))
    if name not in LATENT_TOKENS:
        assert out_reordered["tokens"].shape == (B, sum(LENGTHS[m] for m in THREE), D)
        ends = np.cumsum([LENGTHS[m] for m in THREE])[:-1]
        blocks = {
            key: dict(zip(THREE, np.split(out[key], ends, 1), strict=True)) for key in ("tokens", "mask")
        }
        np.testing.assert_array_equal(
            out_reordered["mask"], np.concatenate([blocks["mask"][m] for m in order], 1)
        )
        permuted = np.concatenate([blocks["tokens"][m] for m in order], 1)
        np.testing.assert_allclose(out_reordered["tokens"], permuted, rtol=1e-5, atol=1e-5)
    if name in ORDER_FREE_POOLED:
        np.testing.assert_allclose(out_reordered["pooled"], out["pooled"], rtol=1e-5, atol=1e-5)
    if name == "late_logits":
        index = [THREE.index(m) for m in order]
        np.testing.assert_allclose(out_reordered["per_modality"], out["per_modality"][:, index], rtol=1e-6)
        np.testing.assert_allclose(out_reordered["weights"], out["weights"][:, index])
        np.testing.assert_allclose(out_reordered["weights"][1], [0.0, 0.5, 0.5])  # image absent in row 1


def test_cross_attention_queries_with_any_stream():
    fusion = _build("cross_attention", query="image_2", bidirectional=True)
    tokens, masks, present = _inputs(THREE)
    variables = fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)
    assert {"image_2_layer_0", "image_2_final_ln", "context_layer_0"} <= set(variables["params"])
    assert not {"text_layer_0", "image_layer_0"} & set(variables["params"])
    out, _ = fusion.apply(variables, tokens, masks, present, deterministic=True)
    start = LENGTHS["text"] + LENGTHS["image"]  # image_2's block, in the order given
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, start], rtol=1e-6)


def test_film_condition_is_any_stream_and_the_others_are_modulated_in_order():
    streams = ("text", "image", "audio")
    fusion = FiLMFusion(width=D, depth=2, condition="image")
    tokens, masks, present = _inputs(streams)
    present["image"][1] = False
    variables = fusion.init(jax.random.key(0), tokens, masks, present, deterministic=True)
    params = variables["params"]
    assert {"text_film_0_gamma", "audio_film_1_beta", "image_proj"} <= set(params)
    assert not any(p.startswith("image_") and p != "image_proj" for p in params)
    out, aux = fusion.apply(variables, tokens, masks, present, deterministic=True)
    assert {"fusion/text_gamma", "fusion/audio_gamma"} <= set(aux) and "fusion/image_gamma" not in aux
    for m in ("text", "audio"):  # the condition is absent in row 1: identity modulation there
        np.testing.assert_array_equal(aux[f"fusion/{m}_gamma"][1], 1.0)
        np.testing.assert_array_equal(aux[f"fusion/{m}_beta"][1], 0.0)
    # The condition's block sits at its own place (after text) and holds its projected tokens, unmodulated.
    start, end = LENGTHS["text"], LENGTHS["text"] + LENGTHS["image"]
    proj = params["image_proj"]
    valid = masks["image"] & present["image"][:, None]
    expected = np.where(valid[..., None], tokens["image"] @ proj["kernel"] + proj["bias"], 0.0)
    np.testing.assert_allclose(out["tokens"][:, start:end], expected, rtol=1e-5, atol=1e-6)
    # The condition modulates the text stream (row 0 has it present).
    changed = dict(tokens, image=tokens["image"] + 1.0)
    out_changed, _ = fusion.apply(variables, changed, masks, present, deterministic=True)
    assert not np.allclose(out["tokens"][0, :start], out_changed["tokens"][0, :start])
    np.testing.assert_array_equal(out["tokens"][1, :start], out_changed["tokens"][1, :start])
