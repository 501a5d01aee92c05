"""LoRA and adapters injected by method interception into the real Encoder: identity at init, merging,
target selection, dropout, and fine-tuning that leaves frozen params bit-identical."""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from mmjax import optim
from mmjax.nn import lora
from mmjax.nn.transformer import Encoder

B, L, D, HEADS, RANK = 2, 5, 16, 2, 4
LORA = r".*/self_attn/(query|value|out)|.*/mlp/fc1"  # DenseGeneral multi-axis out/in and a Dense
ADAPTERS = r".*/mlp"


class _Model(nn.Module):
    """A 2-layer Encoder and a Dense head, run under `peft` (an interceptor) when given."""

    peft: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        encoder = Encoder(depth=2, num_heads=HEADS, mlp_dim=32, name="encoder")
        if self.peft is None:
            h, _ = encoder(x, mask, deterministic=True)
        else:
            with nn.intercept_methods(self.peft):
                h, _ = encoder(x, mask, deterministic=True)
        return nn.Dense(3, name="head")(h.mean(axis=1))


def _inputs():
    rng = np.random.default_rng(0)
    mask = np.ones((B, L), bool)
    mask[1, 3:] = False
    return jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32), jnp.asarray(mask)


def _init(**kwargs):
    model = _Model(lora.interceptor(rank=RANK, **kwargs))
    return model, model.init(jax.random.key(0), *_inputs())["params"]


def _strip(params):
    """The base params: every LoRA/adapter param removed."""
    peft = set(lora.LORA_PARAMS + lora.ADAPTER_PARAMS)
    return {k: _strip(v) for k, v in params.items() if k not in peft} if isinstance(params, dict) else params


def _randomize(params, names=("lora_b", "adapter_up")):
    """Zero-initialised LoRA/adapter params set to random values, so they change the output."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    new = [
        0.3 * jax.random.normal(k, x.shape) if path[-1].key in names else x
        for k, (path, x) in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, new)


def _at(params, path: str):
    for key in path.split("/"):
        params = params[key]
    return params


def _module_paths(params, name: str) -> set[str]:
    return {p.rpartition("/")[0] for p in lora.peft_param_paths(params) if p.endswith("/" + name)}


def test_targets_select_exactly_the_matching_modules():
    _, params = _init(lora_targets=LORA, adapter_targets=ADAPTERS)
    layers = ("encoder/layer_0", "encoder/layer_1")
    assert _module_paths(params, "lora_a") == {
        f"{layer}/{name}"
        for layer in layers
        for name in ("self_attn/query", "self_attn/value", "self_attn/out", "mlp/fc1")
    }
    assert _module_paths(params, "adapter_up") == {f"{layer}/mlp" for layer in layers}
    attn = params["encoder"]["layer_0"]["self_attn"]
    assert "lora_a" not in attn["key"] and "lora_a" not in params["encoder"]["layer_0"]["mlp"]["fc2"]
    assert attn["query"]["lora_a"].shape == (D, RANK) and attn["query"]["lora_b"].shape == (RANK, D)
    assert attn["out"]["lora_a"].shape == (D, RANK) and attn["out"]["kernel"].shape == (HEADS, D // HEADS, D)
    mlp = params["encoder"]["layer_0"]["mlp"]
    assert mlp["fc1"]["lora_b"].shape == (RANK, 32)
    assert mlp["adapter_down"].shape == (D, 16) and mlp["adapter_up"].shape == (16, D)
    lora.check_targets(params, LORA, ADAPTERS)


def test_check_targets_names_the_regex_that_matched_nothing():
    _, params = _init(lora_targets=r".*/self_attn/querry", adapter_targets=ADAPTERS)
    assert _module_paths(params, "lora_a") == set()
    with pytest.raises(ValueError, match=re.escape("lora_targets='.*/self_attn/querry'")):
        lora.check_targets(params, r".*/self_attn/querry", ADAPTERS)
    _, params = _init(lora_targets=LORA, adapter_targets="mlp")  # paths are full-matched: no module is "mlp"
    with pytest.raises(ValueError, match="adapter_targets='mlp'"):
        lora.check_targets(params, LORA, "mlp")


def test_identity_at_init():
    model, params = _init(lora_targets=LORA, adapter_targets=ADAPTERS)
    assert lora.peft_param_paths(params)
    out = model.apply({"params": params}, *_inputs())
    plain = _Model().apply({"params": _strip(params)}, *_inputs())
    np.testing.assert_allclose(out, plain, atol=1e-6)
    changed = model.apply({"params": _randomize(params)}, *_inputs())
    assert np.abs(changed - plain).max() > 1e-2


def test_merged_params_in_the_plain_model_match_lora():
    model, params = _init(lora_targets=LORA, alpha=8.0)
    params = _randomize(params)
    out = model.apply({"params": params}, *_inputs())
    merged = lora.merge(params, (8.0, RANK))
    assert lora.peft_param_paths(merged) == []
    assert jax.tree.structure(merged) == jax.tree.structure(_strip(params))
    np.testing.assert_allclose(_Model().apply({"params": merged}, *_inputs()), out, atol=1e-5)
    base = _Model().apply({"params": _strip(params)}, *_inputs())
    assert np.abs(out - base).max() > 1e-2  # LoRA does change the output
    attn, merged_attn = params["encoder"]["layer_0"]["self_attn"], merged["encoder"]["layer_0"]["self_attn"]
    np.testing.assert_array_equal(merged_attn["key"]["kernel"], attn["key"]["kernel"])
    assert not np.allclose(merged_attn["out"]["kernel"], attn["out"]["kernel"])
    np.testing.assert_allclose(
        lora.merge(params, 2.0)["encoder"]["layer_1"]["mlp"]["fc1"]["kernel"],
        merged["encoder"]["layer_1"]["mlp"]["fc1"]["kernel"],
    )


def test_merge_refuses_adapters_unless_kept_for_an_adapter_only_interceptor():
    model, params = _init(lora_targets=LORA, adapter_targets=ADAPTERS)
    params = _randomize(params)
    with pytest.raises(ValueError, match="adapters cannot be merged"):
        lora.merge(params, 16.0 / RANK)
    merged = lora.merge(params, 16.0 / RANK, keep_adapters=True)
    assert _module_paths(merged, "lora_a") == set() and _module_paths(merged, "adapter_up")
    adapters_only = _Model(lora.interceptor(adapter_targets=ADAPTERS))
    np.testing.assert_allclose(
        adapters_only.apply({"params": merged}, *_inputs()),
        model.apply({"params": params}, *_inputs()),
        atol=1e-5,
    )


def test_dense_general_with_non_trailing_axes_merges_exactly():
    x = jax.random.normal(jax.random.key(2), (2, 5, 6, 7))

    class Wrap(nn.Module):
        peft: Callable | None = None

        @nn.compact
        def __call__(self, x):
            dense = nn.DenseGeneral((3, 4), axis=(1, -1), name="proj")
            if self.peft is None:
                return dense(x)
            with nn.intercept_methods(self.peft):
                return dense(x)

    model = Wrap(lora.interceptor(lora_targets="proj", rank=2, alpha=3.0))
    params = _randomize(model.init(jax.random.key(0), x)["params"])
    assert params["proj"]["lora_a"].shape == (5 * 7, 2) and params["proj"]["lora_b"].shape == (2, 12)
    out = model.apply({"params": params}, x)
    assert out.shape == (2, 6, 3, 4)
    kernel = params["proj"]["kernel"]
    merged = lora.merge(params, 3.0 / 2)
    np.testing.assert_allclose(Wrap().apply({"params": merged}, x), out, atol=1e-5)
    assert not np.allclose(merged["proj"]["kernel"], kernel)


def test_dropout_on_lora_input_needs_an_rng_and_changes_the_output():
    model, params = _init(lora_targets=LORA)
    params = _randomize(params)
    train = _Model(lora.interceptor(lora_targets=LORA, rank=RANK, dropout_rate=0.5, deterministic=False))
    with pytest.raises(Exception, match="dropout"):
        train.apply({"params": params}, *_inputs())
    eval_out = model.apply({"params": params}, *_inputs())
    out_1 = train.apply({"params": params}, *_inputs(), rngs={"dropout": jax.random.key(1)})
    out_2 = train.apply({"params": params}, *_inputs(), rngs={"dropout": jax.random.key(2)})
    assert np.abs(out_1 - eval_out).max() > 1e-3 and np.abs(out_1 - out_2).max() > 1e-3
    no_dropout = _Model(lora.interceptor(lora_targets=LORA, rank=RANK, dropout_rate=0.5, deterministic=True))
    np.testing.assert_allclose(no_dropout.apply({"params": params}, *_inputs()), eval_out, atol=1e-6)


def test_trainable_rules_train_peft_and_head_and_freeze_the_rest():
    rules = lora.trainable_rules(LORA, ADAPTERS, train_regex="head/.*")
    _, params = _init(lora_targets=LORA, adapter_targets=ADAPTERS)
    multipliers = optim.lr_multipliers(optim.parse_lr_rules(rules), params)
    flat = {"/".join(k.key for k in path): m for path, m in jax.tree_util.tree_leaves_with_path(multipliers)}
    trainable = {path for path, m in flat.items() if m == 1}
    assert {path for path, m in flat.items() if m not in (0, 1)} == set()
    assert trainable == set(lora.peft_param_paths(params)) | {"head/kernel", "head/bias"}
    with pytest.raises(ValueError, match="freeze all"):
        lora.trainable_rules()


def _optim_config(lr_rules: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            learning_rate=0.05,
            warmup_steps=0,
            end_learning_rate=0.05,
            weight_decay=0.1,
            b1=0.9,
            b2=0.999,
            clip_norm=1.0,
            lr_rules=lr_rules,
        )
    )


def test_fine_tuning_leaves_frozen_params_bit_identical_without_optimizer_state():
    model, params = _init(lora_targets=LORA, adapter_targets=ADAPTERS)
    cfg = _optim_config(lora.trainable_rules(LORA, ADAPTERS, train_regex="head/.*"))
    trainable, total = optim.trainable_count(cfg, params)
    peft_size = sum(_at(params, p).size for p in lora.peft_param_paths(params))
    head_size = params["head"]["kernel"].size + params["head"]["bias"].size
    assert trainable == peft_size + head_size and total == sum(x.size for x in jax.tree.leaves(params))
    assert trainable < total / 2

    tx = optim.make_optimizer(cfg, total_steps=10)
    opt_state = tx.init(params)
    state_size = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size"))
    # Adam's two moments of the trainable params and a few step counts; nothing for frozen params.
    assert 2 * trainable <= state_size <= 2 * trainable + 8 < total
    x, mask = _inputs()
    target = jax.random.normal(jax.random.key(3), (B, 3))

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x, mask) - target) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new = params
    for _ in range(3):
        new, opt_state = step(new, opt_state)
    peft = set(lora.peft_param_paths(params))
    for path in lora._paths(params):
        before, after = _at(params, path), _at(new, path)
        if path in peft or path.startswith("head/"):
            assert not np.array_equal(before, after), path
        else:
            assert np.array_equal(before, after), path
