"""GatedFusion: gates are a distribution over the present modalities; one present modality passes alone."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fusion import GatedFusion

B, D = 3, 16
LENGTHS = {"text": 5, "image": 4, "audio": 6}
WIDTH_IN = {"text": 16, "image": 12, "audio": 8}


def _inputs():
    rng = np.random.default_rng(0)
    tokens = {m: rng.normal(size=(B, n, WIDTH_IN[m])).astype(np.float32) for m, n in LENGTHS.items()}
    masks = {m: np.ones((B, n), bool) for m, n in LENGTHS.items()}
    masks["text"][0, 3:] = False
    present = {m: np.ones((B,), bool) for m in LENGTHS}
    present["image"][1] = False  # example 1: text + audio; example 2: image only
    present["text"][2] = present["audio"][2] = False
    return tokens, masks, present


def _run():
    fusion, inputs = GatedFusion(width=D), _inputs()
    variables = fusion.init(jax.random.key(0), *inputs, deterministic=True)
    return variables, fusion.apply(variables, *inputs, deterministic=True)


def test_gates_sum_to_one_over_present_modalities():
    _, (_, aux) = _run()
    gates = np.asarray(aux["fusion/gates"])  # [B, M], streams in the order given
    here = np.stack([_inputs()[2][m] for m in ("text", "image", "audio")], axis=1)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(gates[~here] == 0.0) and np.all(gates[here] > 0.0)


def test_single_present_modality_gives_its_own_hidden_vector():
    variables, (out, _) = _run()
    tokens, masks, _ = _inputs()
    params = variables["params"]["image_hidden"]
    summary = tokens["image"][2].mean(axis=0)  # example 2: image only, no padding
    expected = jnp.tanh(summary @ params["kernel"] + params["bias"])
    np.testing.assert_allclose(out["pooled"][2], expected, rtol=1e-5, atol=1e-6)
