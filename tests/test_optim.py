"""Learning-rate rules: multipliers by regex over param paths; 0 freezes (no step, no decay, no clipping)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax import optim


def _config(lr_rules: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            learning_rate=0.1,
            warmup_steps=0,
            end_learning_rate=0.1,
            weight_decay=0.5,
            b1=0.9,
            b2=0.999,
            clip_norm=1.0,
            lr_rules=lr_rules,
        )
    )


def _params():
    return {
        "text": {"encoder": {"kernel": jnp.ones((3, 2))}, "bias": jnp.ones(2)},
        "image": {"kernel": jnp.ones((2, 2))},
        "fusion": {"kernel": jnp.ones((2,))},
    }


def test_multipliers_scale_updates_and_zero_freezes():
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)  # clipped to norm 1
    base = optim.make_optimizer(_config(""), total_steps=10)
    ruled = optim.make_optimizer(_config(r"text/encoder/.*=0.1;image/.*=0;text/.*=3"), total_steps=10)
    base_updates, _ = base.update(grads, base.init(params), params)
    updates, _ = ruled.update(grads, ruled.init(params), params)
    np.testing.assert_allclose(
        updates["text"]["encoder"]["kernel"], 0.1 * base_updates["text"]["encoder"]["kernel"]
    )
    np.testing.assert_allclose(updates["text"]["bias"], 3 * base_updates["text"]["bias"], rtol=1e-6)
    np.testing.assert_array_equal(updates["image"]["kernel"], 0.0)  # frozen: no step and no weight decay
    np.testing.assert_allclose(updates["fusion"]["kernel"], base_updates["fusion"]["kernel"], rtol=1e-6)
    assert optax.tree.norm(updates["fusion"]) > 0


def test_first_matching_rule_wins_and_unmatched_params_get_one():
    rules = optim.parse_lr_rules(" text/.*=0.5 ; text/encoder/.*=0 ;")
    multipliers = optim.lr_multipliers(rules, _params())
    assert multipliers["text"]["encoder"]["kernel"] == 0.5 and multipliers["image"]["kernel"] == 1.0


@pytest.mark.parametrize("bad", ["text/.*", "=0.1", "text/.*=fast", "text/(=1", "text/.*=-1"])
def test_bad_rules_name_the_item(bad):
    with pytest.raises(ValueError, match="optim.lr_rules item"):
        optim.parse_lr_rules(bad)


def test_trainable_count_excludes_frozen_params():
    params = _params()  # text/encoder/kernel 6, text/bias 2, image/kernel 4, fusion/kernel 2
    assert optim.trainable_count(_config(""), params) == (14, 14)
    assert optim.trainable_count(_config("image/.*=0;text/bias=0.5"), params) == (10, 14)
    assert optim.trainable_count(_config("fusion/.*=1;.*=0"), params) == (2, 14)
