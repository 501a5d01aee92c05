"""Parameter-efficient fine-tuning without editing model code: LoRA and bottleneck adapters injected by
`nn.intercept_methods`, the lr rules that freeze everything else, and merging LoRA back into kernels.

    with nn.intercept_methods(lora.interceptor(lora_targets=r".*/self_attn/(query|value)", rank=8)):
        out = encoder(x, mask, deterministic=True)

Targets are regexes matched in full against module paths relative to the root module, e.g.
`text/encoder/layer_0/self_attn/query`; the new params live in the matched module's scope
(`.../query/lora_a`), so checkpoints, shardings and `optim.lr_rules` see them like any other param.
"""

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.transformer import gelu

LORA_PARAMS = ("lora_a", "lora_b")
ADAPTER_PARAMS = ("adapter_down", "adapter_down_bias", "adapter_up", "adapter_up_bias")

# LoRA's A: PyTorch's kaiming_uniform(a=sqrt(5)) of the LoRA reference code, i.e. U(+-1/sqrt(fan_in)).
_lora_a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _compile(regex: str, name: str) -> re.Pattern | None:
    if not regex:
        return None
    try:
        return re.compile(regex)
    except re.error as e:
        raise ValueError(f"{name}={regex!r} is not a valid regex: {e}") from e


def _dense_axes(module: nn.Module, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(contracted input axes, normalised to >= 0 in the module's order; output feature shape)."""
    if isinstance(module, nn.DenseGeneral):
        if module.batch_dims:
            raise ValueError(f"LoRA on DenseGeneral with batch_dims ({'/'.join(module.path)}) is unsupported")
        axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
        features = (module.features,) if isinstance(module.features, int) else tuple(module.features)
    else:
        axis, features = (-1,), (module.features,)
    return tuple(a % ndim for a in axis), features


def _lora_delta(
    module: nn.Module, x: jax.Array, rank: int, scale: float, dropout_rate: float, deterministic: bool
) -> jax.Array:
    """scale * dropout(x) @ A @ B for a Dense/DenseGeneral; its contracted axes and features flattened."""
    axis, features = _dense_axes(module, x.ndim)
    x = jnp.moveaxis(x, axis, tuple(range(x.ndim - len(axis), x.ndim)))  # DenseGeneral's output order
    lead = x.shape[: x.ndim - len(axis)]
    x = x.reshape(*lead, -1)
    a = module.param("lora_a", _lora_a_init, (x.shape[-1], rank), module.param_dtype)
    b = module.param("lora_b", nn.initializers.zeros, (rank, math.prod(features)), module.param_dtype)
    if dropout_rate > 0 and not deterministic:
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - dropout_rate, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0)
    x, a, b = nn.dtypes.promote_dtype(x, a, b, dtype=module.dtype)
    return (scale * (x @ a @ b)).reshape(*lead, *features)


def _adapter(module: nn.Module, y: Any, adapter_dim: int) -> jax.Array:
    """y + up(gelu(down(y))) over the last axis; `up` is zero-initialised, so identity at init."""
    if not isinstance(y, jax.Array):
        raise TypeError(f"adapter target {'/'.join(module.path)} must return one array, got {type(y)}")
    dim, dtype = y.shape[-1], getattr(module, "param_dtype", jnp.float32)
    zeros = nn.initializers.zeros
    down = module.param("adapter_down", nn.initializers.lecun_normal(), (dim, adapter_dim), dtype)
    down_bias = module.param("adapter_down_bias", zeros, (adapter_dim,), dtype)
    up = module.param("adapter_up", zeros, (adapter_dim, dim), dtype)
    up_bias = module.param("adapter_up_bias", zeros, (dim,), dtype)
    h = gelu(y @ down.astype(y.dtype) + down_bias.astype(y.dtype))
    return y + h @ up.astype(y.dtype) + up_bias.astype(y.dtype)


def interceptor(
    lora_targets: str = "",
    rank: int = 8,
    alpha: float = 16.0,
    dropout_rate: float = 0.0,
    adapter_targets: str = "",
    adapter_dim: int = 16,
    deterministic: bool = True,
) -> Callable:
    """A method interceptor for `nn.intercept_methods` that adds LoRA and/or bottleneck adapters.

    LoRA: every nn.Dense/nn.DenseGeneral whose path fully matches `lora_targets` gets
    out += (alpha / rank) * dropout(x) @ lora_a @ lora_b (lora_a [in, rank], lora_b [rank, out] zero-init;
    `in`/`out` flatten multi-axis `axis`/`features`). Dropout (on the LoRA input only) uses the "dropout" rng.
    Adapters (Houlsby): every module whose path fully matches `adapter_targets` and whose `__call__` returns
    one array [..., D] gets out += up(gelu(down(out))) (adapter_down [D, adapter_dim], adapter_up zero-init).
    Both are identity at init. Only `__call__` is intercepted; targets must be `@nn.compact` modules
    (Flax allows new params there only). An empty regex disables that kind; see `check_targets`.
    """
    lora_re = _compile(lora_targets, "lora_targets")
    adapter_re = _compile(adapter_targets, "adapter_targets")
    if rank < 1 or adapter_dim < 1:
        raise ValueError(f"rank={rank} and adapter_dim={adapter_dim} must be >= 1")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate={dropout_rate} must be in [0, 1)")
    scale = alpha / rank

    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or (lora_re is None and adapter_re is None):
            return next_fun(*args, **kwargs)
        module = context.module
        path = "/".join(module.path)
        out = next_fun(*args, **kwargs)
        if lora_re and isinstance(module, nn.Dense | nn.DenseGeneral) and lora_re.fullmatch(path):
            inputs = args[0] if args else kwargs["inputs"]
            out = out + _lora_delta(module, inputs, rank, scale, dropout_rate, deterministic)
        if adapter_re and adapter_re.fullmatch(path):
            out = _adapter(module, out, adapter_dim)
        return out

    return intercept


def _paths(params) -> list[str]:
    return [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]


def peft_param_paths(params) -> list[str]:
    """Paths of the LoRA and adapter params, e.g. `text/encoder/layer_0/self_attn/query/lora_a`."""
    return [p for p in _paths(params) if p.rpartition("/")[2] in LORA_PARAMS + ADAPTER_PARAMS]


def check_targets(params, lora_targets: str = "", adapter_targets: str = "") -> None:
    """Raises ValueError naming a non-empty target regex that created no params (call it after init).

    Works on abstract params (`jax.eval_shape`) too; the message lists a few module paths to match against.
    """
    names = {p.rpartition("/")[2] for p in peft_param_paths(params)}
    modules = sorted({p.rpartition("/")[0] for p in _paths(params) if p.endswith("/kernel")})
    examples = ", ".join(modules[:4]) + (", ..." if len(modules) > 4 else "")
    if lora_targets and "lora_a" not in names:
        raise ValueError(
            f"lora_targets={lora_targets!r} matched no nn.Dense/nn.DenseGeneral module path "
            f"(full match; Dense module paths: {examples})"
        )
    if adapter_targets and "adapter_up" not in names:
        raise ValueError(f"adapter_targets={adapter_targets!r} matched no module path (full match)")


def trainable_rules(lora_targets: str = "", adapter_targets: str = "", train_regex: str = "") -> str:
    """`optim.lr_rules` training only the LoRA/adapter params of these targets and params matching
    `train_regex` (e.g. "head_.*"), and freezing everything else (multiplier 0, so no optimizer moments)."""
    rules = []
    if lora_targets:
        rules.append(f"(?:{lora_targets})/(?:lora_a|lora_b)")
    if adapter_targets:
        rules.append(f"(?:{adapter_targets})/adapter_(?:down|up)(?:_bias)?")
    if train_regex:
        rules.append(train_regex)
    if not rules:
        raise ValueError(
            "trainable_rules needs lora_targets, adapter_targets or train_regex: it would freeze all"
        )
    for rule in rules:
        _compile(rule, "trainable rule")
        if ";" in rule:
            raise ValueError(f"regex {rule!r} contains ';', which separates optim.lr_rules items")
    return ";".join([f"{rule}=1" for rule in rules] + [".*=0"])


def merge(params, scale: float | tuple[float, int], keep_adapters: bool = False):
    """Folds every lora_a/lora_b pair into its module's kernel (kernel += scale * A @ B, reshaped to the
    kernel's [*in, *features]) and drops them, so the plain model (no interceptor) runs the result.

    `scale` is alpha / rank, or (alpha, rank). Adapters are nonlinear and cannot be merged: with adapter
    params present this raises unless `keep_adapters`, which keeps them for an adapter-only interceptor
    (the plain model would silently ignore them).
    """
    if isinstance(scale, tuple):
        alpha, rank = scale
        scale = alpha / rank
    adapters = [p for p in peft_param_paths(params) if p.rpartition("/")[2] in ADAPTER_PARAMS]
    if adapters and not keep_adapters:
        raise ValueError(f"adapters cannot be merged (pass keep_adapters=True to keep them): {adapters[:4]}")

    def walk(tree: Mapping, path: str) -> dict:
        out = {k: walk(v, f"{path}/{k}") if isinstance(v, Mapping) else v for k, v in tree.items()}
        if "lora_a" in out or "lora_b" in out:
            a, b, kernel = out.pop("lora_a", None), out.pop("lora_b", None), out.get("kernel")
            if a is None or b is None or kernel is None or a.shape[0] * b.shape[1] != kernel.size:
                raise ValueError(f"{path.lstrip('/')}: lora_a/lora_b do not match a kernel")
            delta = scale * (jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32))
            out["kernel"] = (jnp.asarray(kernel, jnp.float32) + delta.reshape(kernel.shape)).astype(
                kernel.dtype
            )
        return out

    return walk(params, "")
