"""FiLM fusion (Perez et al. 2018): one stream's summary (text by default) modulates every other stream."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import project, stream_names
from mmjax.nn.pooling import masked_mean


class FiLMFusion(nn.Module):
    """The `condition` stream conditions; every other stream, in the order given, is modulated. Each
    modulated stream (tokens through Dense(width)) passes `depth` residual blocks
    x + ReLU(gamma * LN(Dense(x)) + beta) (LN without scale/bias, as the paper's BatchNorm), with per-block,
    per-stream gamma = 1 + Dense(t) and beta = Dense(t) predicted from the condition summary t (masked mean
    of the projected condition tokens).

    Where the condition is absent the modulation is the identity (gamma = 1, beta = 0): the blocks still
    run, unconditioned, so examples without it keep a useful path. pooled = Dense of the concatenated
    summaries (t for the condition, each modulated stream's masked mean), streams in the order given.
    out["tokens"]: the projected condition tokens and the modulated streams, streams in the order given;
    aux["fusion/{stream}_gamma"] and ["fusion/{stream}_beta"] are [B, depth, width].

    Needs the condition stream and at least one other (ValueError otherwise).
    """

    width: int
    depth: int
    dropout_rate: float = 0.0  # on each block's residual branch
    condition: str = "text"  # the conditioning stream: any stream name (text, text_2, image, ...)

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        names = stream_names(self, tokens, masks, present)
        if self.condition not in names:
            raise ValueError(
                f"FiLMFusion needs {self.condition!r} tokens (model.fusion.condition, the conditioning), "
                f"got streams {names}"
            )
        if len(names) < 2:
            raise ValueError(
                f"FiLMFusion needs at least one stream besides {self.condition!r} to modulate, "
                f"got streams {names}"
            )
        if self.depth < 1:
            raise ValueError(f"FiLMFusion needs depth >= 1 (got {self.depth})")

        condition_here = present[self.condition].astype(bool)[:, None]

        def modulation(t: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
            gamma = jnp.where(condition_here, 1.0 + nn.Dense(self.width, name=f"{name}_gamma")(t), 1.0)
            return gamma, jnp.where(condition_here, nn.Dense(self.width, name=f"{name}_beta")(t), 0.0)

        # The condition first (its projection is what modulates), then the rest; laid out in the order given.
        c, c_valid = project(self, self.condition, tokens, masks, present, embedding=False)
        t = masked_mean(c, c_valid)
        streams = {self.condition: (c, c_valid, t)}
        aux = {}
        for m in names:
            if m == self.condition:
                continue
            x, valid = project(self, m, tokens, masks, present, embedding=False)
            gammas, betas = [], []
            for i in range(self.depth):
                gamma, beta = modulation(t, f"{m}_film_{i}")
                h = nn.Dense(self.width, name=f"{m}_layer_{i}")(x)
                h = nn.LayerNorm(use_scale=False, use_bias=False, name=f"{m}_ln_{i}")(h)
                h = nn.relu(gamma[:, None] * h + beta[:, None])
                x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
                gammas.append(gamma)
                betas.append(beta)
            aux |= {f"fusion/{m}_gamma": jnp.stack(gammas, 1), f"fusion/{m}_beta": jnp.stack(betas, 1)}
            streams[m] = (x, valid, masked_mean(x, valid))
        out_mask = jnp.concatenate([streams[m][1] for m in names], axis=1)
        out_tokens = jnp.where(out_mask[..., None], jnp.concatenate([streams[m][0] for m in names], 1), 0.0)
        summaries = jnp.concatenate([streams[m][2] for m in names], -1)
        pooled = nn.Dense(self.width, name="pooled_proj")(summaries)
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": pooled}
        return out, {f"fusion/{k}": v for k, v in out.items()} | aux
