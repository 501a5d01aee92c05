"""FiLM fusion (Perez et al. 2018): the text summary modulates the image and audio token streams."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.fusion.common import masked_mean, project

STREAMS = ("image", "audio")  # the modulated modalities, in this order


class FiLMFusion(nn.Module):
    """Each stream (tokens through Dense(width)) passes `depth` residual blocks x + ReLU(gamma * LN(Dense(x))
    + beta) (LN without scale/bias, as the paper's BatchNorm), with per-block, per-stream gamma = 1 + Dense(t)
    and beta = Dense(t) predicted from the text summary t (masked mean of the projected text tokens).

    Where text is absent the modulation is the identity (gamma = 1, beta = 0): the blocks still run,
    unconditioned, so image/audio-only examples keep a useful path. pooled = Dense([t; each modulated
    stream's masked mean]). out["tokens"]: the projected text tokens, then the modulated streams;
    aux["fusion/{stream}_gamma"] and ["fusion/{stream}_beta"] are [B, depth, width].
    """

    width: int
    depth: int
    dropout_rate: float = 0.0  # on each block's residual branch

    @nn.compact
    def __call__(
        self,
        tokens: dict[str, jax.Array],
        masks: dict[str, jax.Array],
        present: dict[str, jax.Array],
        *,
        deterministic: bool,
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        if "text" not in tokens:
            raise ValueError("FiLMFusion needs 'text' tokens (the conditioning)")
        streams = [m for m in STREAMS if m in tokens]
        if not streams:
            raise ValueError(f"FiLMFusion needs at least one of {STREAMS}")
        if self.depth < 1:
            raise ValueError(f"FiLMFusion needs depth >= 1 (got {self.depth})")

        text_here = present["text"].astype(bool)[:, None]

        def modulation(t: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
            gamma = jnp.where(text_here, 1.0 + nn.Dense(self.width, name=f"{name}_gamma")(t), 1.0)
            return gamma, jnp.where(text_here, nn.Dense(self.width, name=f"{name}_beta")(t), 0.0)

        x, valid = project(self, "text", tokens, masks, present, embedding=False)
        t = masked_mean(x, valid)
        all_tokens, all_masks, summaries, aux = [x], [valid], [t], {}
        for m in streams:
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
            all_tokens.append(x)
            all_masks.append(valid)
            summaries.append(masked_mean(x, valid))
        out_mask = jnp.concatenate(all_masks, axis=1)
        out_tokens = jnp.where(out_mask[..., None], jnp.concatenate(all_tokens, axis=1), 0.0)
        pooled = nn.Dense(self.width, name="pooled_proj")(jnp.concatenate(summaries, -1))
        out = {"tokens": out_tokens, "mask": out_mask, "pooled": pooled}
        return out, {f"fusion/{k}": v for k, v in out.items()} | aux
