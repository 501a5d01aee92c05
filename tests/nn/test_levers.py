"""Speed levers (scan, remat, dtype, attention): each is a switch that changes no result beyond tolerance."""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.model import build_model, dummy_batch, lever_fields, pretrained_params
from mmjax.nn.attention import MultiHeadAttention
from mmjax.nn.transformer import Encoder, TransformerBlock, stack_layers, unstack_layers
from mmjax.port.pretrained import with_pretrained

B, L, D, HEADS, MLP = 2, 6, 16, 2, 32


def _inputs(length=L, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, length, D)).astype(np.float32)
    mask = np.ones((B, length), bool)
    mask[0, length // 2 :] = False
    return x, mask


def _encoder_loss(encoder, params, x, mask):
    """Mean square of every hidden state and the output: gradients reach every layer."""
    out, hidden = encoder.apply({"params": params}, x, mask, deterministic=True)
    return jnp.mean(out**2) + sum(jnp.mean(h**2) for h in hidden)


def _assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# scan


def test_stack_and_unstack_layers_round_trip_and_errors():
    x, mask = _inputs()
    params = Encoder(3, HEADS, MLP).init(jax.random.key(0), x, mask, deterministic=True)["params"]
    params = jax.device_get(params)
    stacked = stack_layers(params, 3)
    assert sorted(stacked) == ["final_ln", "layers"]
    assert stacked["layers"]["mlp"]["fc1"]["kernel"].shape == (3, D, MLP)
    assert isinstance(stacked["layers"]["mlp"]["fc1"]["kernel"], np.ndarray)  # host in, host out
    _assert_trees_close(unstack_layers(stacked, 3), params, 0, 0)
    with pytest.raises(ValueError, match=r"missing \['layer_3'\]"):
        stack_layers(params, 4)
    with pytest.raises(ValueError, match=r"unexpected \['layer_2'\]"):
        stack_layers(params, 2)
    with pytest.raises(ValueError, match="leading axes"):
        unstack_layers(stacked, 2)


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("remat", ["", "full"])
def test_scan_matches_unrolled_outputs_and_grads(pre_ln, remat):
    x, mask = _inputs()
    unrolled = Encoder(3, HEADS, MLP, pre_ln=pre_ln, causal=not pre_ln)
    scanned = unrolled.clone(scan=True, remat=remat)
    params = unrolled.init(jax.random.key(0), x, mask, deterministic=True)["params"]
    stacked = stack_layers(params, 3)
    shapes = jax.eval_shape(scanned.init, jax.random.key(0), x, mask, deterministic=True)["params"]
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, shapes)

    out, hidden = unrolled.apply({"params": params}, x, mask, deterministic=True)
    out_s, hidden_s = scanned.apply({"params": stacked}, x, mask, deterministic=True)
    assert len(hidden_s) == len(hidden) == 4
    _assert_trees_close((out_s, hidden_s), (out, hidden), 1e-5, 1e-5)

    loss, grads = jax.value_and_grad(lambda p: _encoder_loss(unrolled, p, x, mask))(params)
    loss_s, grads_s = jax.value_and_grad(lambda p: _encoder_loss(scanned, p, x, mask))(stacked)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
    _assert_trees_close(unstack_layers(grads_s, 3), grads, 1e-5, 1e-5)


def test_scan_sows_attention_of_every_layer_and_trains_with_dropout():
    x, mask = _inputs()
    scanned = Encoder(3, HEADS, MLP, dropout_rate=0.1, scan=True)
    variables = scanned.init(jax.random.key(0), x, mask, deterministic=True)
    _, state = scanned.apply(variables, x, mask, deterministic=True, mutable="intermediates")
    (weights,) = state["intermediates"]["layers"]["self_attn"]["attention"]
    assert weights.shape == (3, B, HEADS, L, L)
    rngs = {"dropout": jax.random.key(1)}
    out, _ = scanned.apply(variables, x, mask, deterministic=False, rngs=rngs)
    assert np.all(np.isfinite(out))


def _compile_seconds(encoder, x, mask):
    params = jax.eval_shape(encoder.init, jax.random.key(0), x, mask, deterministic=True)["params"]
    step = jax.jit(jax.value_and_grad(lambda p: _encoder_loss(encoder, p, x, mask)))
    start = time.perf_counter()
    step.lower(params).compile()
    return time.perf_counter() - start


def test_scan_compiles_a_deep_encoder_faster(capsys):
    """Prints the compile times of value_and_grad of a 12-layer encoder; timing is reported, not asserted."""
    x, mask = _inputs()
    unrolled = Encoder(12, HEADS, MLP)
    seconds = {"unrolled": _compile_seconds(unrolled, x, mask)}
    seconds["scan"] = _compile_seconds(unrolled.clone(scan=True), x, mask)
    with capsys.disabled():
        print(f"\n12-layer encoder value_and_grad compile seconds: {seconds}")


# remat


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", ["full", "dots", "dots_saveable"])
def test_remat_keeps_loss_and_grads(remat, scan):
    x, mask = _inputs()
    plain = Encoder(2, HEADS, MLP, scan=scan)
    params = plain.init(jax.random.key(0), x, mask, deterministic=True)["params"]
    loss, grads = jax.jit(jax.value_and_grad(lambda p: _encoder_loss(plain, p, x, mask)))(params)
    remat_encoder = plain.clone(remat=remat)
    loss_r, grads_r = jax.jit(jax.value_and_grad(lambda p: _encoder_loss(remat_encoder, p, x, mask)))(params)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    _assert_trees_close(grads_r, grads, 1e-6, 1e-6)


def test_remat_rejects_unknown_policy():
    x, mask = _inputs()
    with pytest.raises(ValueError, match="remat='everything'"):
        Encoder(1, HEADS, MLP, remat="everything").init(jax.random.key(0), x, mask, deterministic=True)


def _temp_bytes(encoder, x, mask):
    params = jax.eval_shape(encoder.init, jax.random.key(0), x, mask, deterministic=True)["params"]
    loss = lambda p: jnp.mean(encoder.apply({"params": p}, x, mask, deterministic=True)[0] ** 2)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_remat_reduces_compiled_temp_memory(capsys):
    """XLA's compiled temp buffer size of value_and_grad (a deterministic measurement, unlike timing).

    Asserted with scan, where the backward pass must recompute layer by layer; unrolled, XLA's CPU scheduler
    is free to hoist the recomputation and the saving may not show (the numbers are printed).
    """
    x = np.random.default_rng(0).normal(size=(2, 128, 32)).astype(np.float32)
    mask = np.ones((2, 128), bool)
    encoder = Encoder(6, 4, 128)
    temp = {
        (remat or "none", "scan" if scan else "unrolled"): _temp_bytes(
            encoder.clone(remat=remat, scan=scan), x, mask
        )
        for remat, scan in [("", False), ("full", False), ("", True), ("full", True), ("dots", True)]
    }
    with capsys.disabled():
        print(f"\n6-layer encoder value_and_grad temp bytes by (remat, layers): {temp}")
    assert temp["full", "scan"] < temp["none", "scan"]
    assert temp["dots", "scan"] < temp["none", "scan"]


# dtype


def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params():
    x, mask = _inputs()
    encoder = Encoder(2, HEADS, MLP, dropout_rate=0.0)
    variables = encoder.init(jax.random.key(0), x, mask, deterministic=True)
    bf16 = encoder.clone(dtype="bfloat16")
    bf16_variables = bf16.init(jax.random.key(0), x, mask, deterministic=True)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_variables)} == {jnp.dtype(jnp.float32)}
    out, _ = encoder.apply(variables, x, mask, deterministic=True)
    out_bf16, _ = bf16.apply(variables, x, mask, deterministic=True)
    assert out_bf16.dtype == jnp.float32  # the residual stream and LayerNorms stay float32
    error = np.linalg.norm(np.asarray(out_bf16) - np.asarray(out)) / np.linalg.norm(np.asarray(out))
    assert error < 2e-2
    assert not np.array_equal(out_bf16, out)  # bfloat16 did compute something


def test_bfloat16_block_computes_dense_layers_in_bfloat16():
    x, mask = _inputs()
    block = TransformerBlock(HEADS, MLP, dtype="bfloat16")
    variables = block.init(jax.random.key(0), x, mask, deterministic=True)
    _, state = block.apply(variables, x, mask, deterministic=True, capture_intermediates=True)
    calls = state["intermediates"]
    assert calls["mlp"]["fc1"]["__call__"][0].dtype == jnp.bfloat16
    assert calls["self_attn"]["out"]["__call__"][0].dtype == jnp.bfloat16
    assert calls["mlp_ln"]["__call__"][0].dtype == jnp.float32
    with pytest.raises(ValueError, match="dtype='float16'"):
        TransformerBlock(HEADS, MLP, dtype="float16").init(jax.random.key(0), x, mask, deterministic=True)


# attention


def _attention_pair(causal=False):
    xla = MultiHeadAttention(HEADS, causal=causal)
    return xla, xla.clone(implementation="fused")


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_matches_xla_on_self_attention(causal):
    x, mask = _inputs()
    mask[1, 0] = False  # with causal: query 0 of example 1 has no visible key -> zeros in both
    mask[1, 1:] = True
    xla, fused = _attention_pair(causal)
    variables = xla.init(jax.random.key(0), x, context_mask=mask, deterministic=True)
    for m in (mask, None):
        out = xla.apply(variables, x, context_mask=m, deterministic=True)
        out_fused = fused.apply(variables, x, context_mask=m, deterministic=True)
        np.testing.assert_allclose(out_fused, out, rtol=1e-5, atol=1e-5)


def test_fused_attention_matches_xla_on_cross_attention_with_empty_context():
    x, _ = _inputs()
    context = np.random.default_rng(1).normal(size=(B, 9, D)).astype(np.float32)
    context_mask = np.zeros((B, 9), bool)
    context_mask[1, :4] = True  # example 0 has no context at all: its output is exactly zero
    xla, fused = _attention_pair()
    variables = xla.init(jax.random.key(0), x, context, context_mask, deterministic=True)
    out = xla.apply(variables, x, context, context_mask, deterministic=True)
    out_fused = fused.apply(variables, x, context, context_mask, deterministic=True)
    np.testing.assert_allclose(out_fused, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out_fused[0], 0.0)


def test_fused_attention_encoder_and_grads_match_xla():
    x, mask = _inputs()
    encoder = Encoder(2, HEADS, MLP, causal=True)
    params = encoder.init(jax.random.key(0), x, mask, deterministic=True)["params"]
    fused = encoder.clone(attention="fused")
    loss, grads = jax.value_and_grad(lambda p: _encoder_loss(encoder, p, x, mask))(params)
    loss_f, grads_f = jax.value_and_grad(lambda p: _encoder_loss(fused, p, x, mask))(params)
    np.testing.assert_allclose(loss_f, loss, rtol=1e-5)
    _assert_trees_close(grads_f, grads, 1e-5, 1e-5)


def test_fused_attention_rejects_dropout_in_training_and_bad_names():
    x, mask = _inputs()
    fused = MultiHeadAttention(HEADS, dropout_rate=0.1, implementation="fused")
    variables = fused.init(jax.random.key(0), x, context_mask=mask, deterministic=True)
    with pytest.raises(ValueError, match="attention='fused' does not support attention dropout"):
        fused.apply(variables, x, context_mask=mask, deterministic=False, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(ValueError, match="implementation='flash'"):
        fused.clone(implementation="flash").init(jax.random.key(0), x, deterministic=True)


# the model config


TASKS = {"answer": 30, "image_digit": 10}


def _model_config(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            size="tiny",
            dropout=0.0,
            pre_ln=True,
            head_dropout=0.0,
            text=dict(vocab_size=64, max_len=8),
            image=dict(size=28, channels=1, patch_size=7),
            audio=dict(frames=32, mels=32, patch_time=8, patch_freq=16),
            fusion=dict(name="early", depth=2),
            scan=False,
            remat="",
            dtype="float32",
            attention="xla",
        )
    )
    cfg.update_from_flattened_dict(overrides)
    return cfg


def _model_batch(cfg):
    rng = np.random.default_rng(0)
    batch = dummy_batch(cfg, TASKS, 2)
    batch["text"] = jnp.asarray(rng.integers(1, 64, batch["text"].shape), jnp.int32)
    batch["text_mask"] = batch["text_mask"].at[0, 5:].set(False)
    batch["image"] = jnp.asarray(rng.normal(size=batch["image"].shape), jnp.float32)
    batch["audio"] = jnp.asarray(rng.normal(size=batch["audio"].shape), jnp.float32)
    return batch


def _scanned_params(params):
    """Model params with every encoder's (and early fusion's) layers stacked."""
    params = dict(params)
    for m in ("text", "image", "audio", "fusion"):
        encoder = params[m]["encoder"]
        depth = sum(k.startswith("layer_") for k in encoder)
        params[m] = params[m] | {"encoder": stack_layers(encoder, depth)}
    return params


def test_model_levers_keep_logits():
    cfg = _model_config()
    batch = _model_batch(cfg)
    model = build_model(cfg, TASKS)
    params = model.init(jax.random.key(0), batch, train=False)["params"]
    logits, _ = model.apply({"params": params}, batch, train=False)
    fast = build_model(_model_config(scan=True, remat="dots", attention="fused"), TASKS)
    fast_logits, _ = fast.apply({"params": _scanned_params(params)}, batch, train=False)
    _assert_trees_close(fast_logits, logits, 1e-5, 1e-5)
    bf16_logits, _ = build_model(_model_config(dtype="bfloat16"), TASKS).apply(
        {"params": params}, batch, train=False
    )
    for task, value in bf16_logits.items():
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, logits[task], rtol=5e-2, atol=5e-2)


def test_model_config_levers_are_checked():
    with pytest.raises(ValueError, match="model.remat='some'"):
        lever_fields(_model_config(remat="some"))
    with pytest.raises(ValueError, match="model.attention='flash'"):
        lever_fields(_model_config(attention="flash"))
    assert lever_fields(ml_collections.ConfigDict({})) == dict(
        scan=False, remat="", dtype="float32", attention="xla"
    )


@pytest.mark.parity
def test_pretrained_encoder_with_scan_gets_stacked_params(tmp_path):
    """A ported BERT (layer_{i}) initialises a scanned text tower: the same tokens as the unscanned one."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "hf")
    tokens = {}
    for scan in (False, True):
        cfg = _model_config(**{"text.init_from": f"hf:{tmp_path / 'hf'}", "scan": scan})
        model = build_model(cfg, TASKS)
        assert dict(model.encoders)["text"].scan == scan
        batch = _model_batch(cfg)
        pretrained = pretrained_params(cfg)
        assert ("layers" in pretrained["text"]["encoder"]) == scan
        params = model.init(jax.random.key(0), batch, train=False)["params"]
        params = with_pretrained(params, pretrained)
        _, aux = model.apply({"params": params}, batch, train=False)
        tokens[scan] = aux["txt/tokens"]
    np.testing.assert_allclose(tokens[True], tokens[False], rtol=1e-5, atol=1e-5)
