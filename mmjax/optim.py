"""Optimizer from config: AdamW with linear warm-up then cosine decay, clipping, no decay on biases/norms,
and per-parameter learning-rate multipliers from regex rules (multiplier 0 freezes).
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.end_learning_rate,
    )


DECAYED = ("kernel", "embedding")  # parameter names that get weight decay; biases, norm scales, CLS do not


def decay_mask(params):
    """True where weight decay applies; by leaf name, so 2-D biases of DenseGeneral are exempt."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params)


def parse_lr_rules(text: str) -> list[tuple[re.Pattern, float]]:
    """`"REGEX=MULT;REGEX=MULT"` -> [(pattern, multiplier)], e.g. "text/.*=0.1;image/patch.*=0".

    A regex is matched in full against param paths like `text/encoder/layer_0/mlp/fc1/kernel`.
    """
    rules = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        pattern, sep, raw = item.rpartition("=")
        try:
            rule = (re.compile(pattern), float(raw))
        except (ValueError, re.error) as e:
            raise ValueError(f"optim.lr_rules item {item!r} must be REGEX=MULTIPLIER: {e}") from e
        if not sep or not pattern or rule[1] < 0:
            raise ValueError(f"optim.lr_rules item {item!r} must be REGEX=MULTIPLIER with MULTIPLIER >= 0")
        rules.append(rule)
    return rules


def lr_multipliers(rules: list[tuple[re.Pattern, float]], params):
    """The learning-rate multiplier of every param: the first rule whose regex matches its path, else 1."""

    def multiplier(path, _) -> float:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return next((m for pattern, m in rules if pattern.fullmatch(name)), 1.0)

    return jax.tree_util.tree_map_with_path(multiplier, params)


def frozen_mask(lr_rules: str, params):
    """True for every param whose `lr_rules` multiplier is 0 (a Python bool per leaf, static under jit)."""
    return jax.tree.map(lambda m: m == 0, lr_multipliers(parse_lr_rules(lr_rules), params))


def zero_frozen(grads, frozen):
    """Frozen leaves replaced by zeros, so under jit XLA never computes their gradients (the backward
    pass of a fully frozen tower is dropped) and norms or projections over `grads` see trainable ones only."""
    return jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Frozen grads are zeroed first (they count neither in clipping nor in any update or decay)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    lr_rules = cfg.get("lr_rules", "")
    rules = parse_lr_rules(lr_rules)

    def adamw(scale: float) -> optax.GradientTransformation:
        learning_rate = schedule if scale == 1 else (lambda step: scale * schedule(step))
        return optax.adamw(
            learning_rate, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask
        )

    groups = {str(m): optax.set_to_zero() if m == 0 else adamw(m) for m in {1.0, *(m for _, m in rules)}}
    return optax.chain(
        optax.masked(optax.set_to_zero(), lambda p: frozen_mask(lr_rules, p)),
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.multi_transform(groups, lambda p: jax.tree.map(str, lr_multipliers(rules, p))),
    )


def trainable_count(cfg: ml_collections.ConfigDict, params) -> tuple[int, int]:
    """(trainable, total) numbers of parameter values; `cfg.lr_rules` multiplier 0 means frozen."""
    frozen = jax.tree.leaves(frozen_mask(cfg.get("lr_rules", ""), params))
    sizes = [x.size for x in jax.tree.leaves(params)]
    return sum(size for size, f in zip(sizes, frozen, strict=True) if not f), sum(sizes)
