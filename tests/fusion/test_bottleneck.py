"""BottleneckFusion (MBT): modalities meet only through the bottleneck tokens, from `fusion_layer` on.

The bottleneck written by layer l reaches the other streams in layer l + 1.
"""

import jax
import numpy as np
import pytest

from mmjax.fusion import BottleneckFusion

B, D = 2, 8
LENGTHS = {"text": 3, "image": 3, "audio": 3}  # equal shapes: fewer kernels to compile


def _fusion(depth=3, fusion_layer=1, num_bottlenecks=2):
    sizes = dict(width=D, num_heads=2, mlp_dim=16)
    return BottleneckFusion(**sizes, depth=depth, num_bottlenecks=num_bottlenecks, fusion_layer=fusion_layer)


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, 4)).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    return tokens, masks, present


def _hidden(fusion, tokens, masks, present):
    """(out, aux, sown intermediates) with the same init for every call."""
    variables = fusion.init(jax.random.key(0), *_inputs(), deterministic=True)
    (out, aux), state = fusion.apply(
        variables, tokens, masks, present, deterministic=True, mutable=["intermediates"]
    )
    return out, aux, state["intermediates"]


def _changed_after_perturbing_image(fusion):
    """{name: per-layer bool "changed"} for the text/audio streams and the bottleneck."""
    tokens, masks, present = _inputs()
    _, _, before = _hidden(fusion, tokens, masks, present)
    _, _, after = _hidden(fusion, dict(tokens, image=tokens["image"] + 1.0), masks, present)
    names = ("text_hidden", "audio_hidden", "bottleneck_hidden")
    pairs = {k: zip(before.get(k, ()), after.get(k, ()), strict=True) for k in names}
    return {k: [not np.allclose(a, b, atol=1e-6) for a, b in pair] for k, pair in pairs.items()}


def test_no_cross_modal_flow_before_the_fusion_layer():
    changed = _changed_after_perturbing_image(_fusion(depth=3, fusion_layer=1))
    for m in ("text_hidden", "audio_hidden"):
        assert changed[m] == [False, False, True]  # layers 0, 1 (reads the learned bottleneck), 2
    assert changed["bottleneck_hidden"] == [True, True]  # written by layers 1 and 2


def test_fusion_layer_zero_exchanges_from_the_first_layer():
    changed = _changed_after_perturbing_image(_fusion(depth=2, fusion_layer=0))
    assert changed["bottleneck_hidden"] == [True, True]
    assert changed["text_hidden"] == changed["audio_hidden"] == [False, True]


def test_fusion_layer_equal_to_depth_is_late_fusion():
    changed = _changed_after_perturbing_image(_fusion(depth=2, fusion_layer=2))
    assert changed == {"text_hidden": [False, False], "audio_hidden": [False, False], "bottleneck_hidden": []}


def test_num_bottlenecks_sets_the_bottleneck_shape():
    fusion = _fusion(depth=1, fusion_layer=0, num_bottlenecks=3)
    params = fusion.init(jax.random.key(0), *_inputs(), deterministic=True)["params"]
    assert params["bottleneck"].shape == (3, D)
    _, aux, _ = _hidden(fusion, *_inputs())
    assert aux["fusion/bottleneck"].shape == (B, 3, D)


def test_absent_modality_is_left_out_of_the_bottleneck_mean():
    fusion = _fusion(depth=2, fusion_layer=0)
    tokens, masks, present = _inputs()
    present["audio"][:] = False
    out, aux, _ = _hidden(fusion, tokens, masks, present)
    # The same weights without any audio input: identical bottleneck, text and image streams.
    without_audio = [{m: v for m, v in d.items() if m != "audio"} for d in (tokens, masks, present)]
    out_two, aux_two, _ = _hidden(fusion, *without_audio)
    np.testing.assert_allclose(aux["fusion/bottleneck"], aux_two["fusion/bottleneck"], rtol=1e-5, atol=1e-6)
    n = LENGTHS["text"] + LENGTHS["image"]
    np.testing.assert_allclose(out["tokens"][:, :n], out_two["tokens"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["pooled"], out_two["pooled"], rtol=1e-5, atol=1e-6)


def test_fusion_layer_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="fusion_layer"):
        _fusion(depth=2, fusion_layer=3).init(jax.random.key(0), *_inputs(), deterministic=True)
