"""ResNet image encoder (HF ResNetModel): 7x7/2 conv stem + 3x3/2 max-pool (or a small-image stem) -> stages
of residual layers.

BatchNorm running statistics live in the `batch_stats` collection: apply with `deterministic=False` and
`mutable=["batch_stats"]` to train (batch statistics, running averages updated with torch's momentum 0.1).
Flax keeps the biased batch variance in the running average where torch keeps the unbiased one: running
variances drift apart by a factor n / (n - 1) (n = B * H * W) on each update's share.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from mmjax.nn.transformer import ACTIVATIONS

LAYER_TYPES = ("basic", "bottleneck")


class ConvNorm(nn.Module):
    """Bias-free Conv (torch's symmetric `kernel // 2` padding) -> BatchNorm: HF's ResNetConvLayer, no act."""

    features: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        pad = ((self.kernel // 2,) * 2,) * 2
        x = nn.Conv(self.features, (self.kernel,) * 2, self.stride, pad, use_bias=False, name="conv")(x)
        norm = nn.BatchNorm(
            use_running_average=deterministic,
            momentum=0.9,
            epsilon=1e-5,
            use_fast_variance=False,
            name="norm",
        )
        return norm(x)  # torch's BatchNorm2d defaults: momentum 0.1 (flax counts 1 - 0.1), eps 1e-5


class ResidualLayer(nn.Module):
    """act(convs(x) + shortcut(x)); the shortcut is a 1x1 ConvNorm when the shape changes, else identity.

    basic: 3x3 (stride) -> 3x3. bottleneck: 1x1 to features // reduction -> 3x3 -> 1x1 to features, the
    stride on the first 1x1 with `downsample_in_bottleneck`, else on the 3x3. As in HF, the activations
    inside the layer are always ReLU; `activation` is applied after the residual sum.
    """

    features: int
    stride: int
    layer_type: str
    activation: str
    reduction: int = 4
    downsample_in_bottleneck: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.layer_type == "basic":
            convs = [(self.features, 3, self.stride), (self.features, 3, 1)]
        else:
            reduced, first = self.features // self.reduction, self.downsample_in_bottleneck
            convs = [(reduced, 1, self.stride if first else 1), (reduced, 3, 1 if first else self.stride)]
            convs.append((self.features, 1, 1))
        residual = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = ConvNorm(self.features, 1, self.stride, name="shortcut")
            residual = shortcut(x, deterministic=deterministic)
        for k, (features, kernel, stride) in enumerate(convs):
            if k:
                x = nn.relu(x)
            x = ConvNorm(features, kernel, stride, name=f"conv_{k}")(x, deterministic=deterministic)
        return ACTIVATIONS[self.activation](x + residual)


class ResNetEncoder(nn.Module):
    """Encodes images [B, H, W, C] ([B, C, H, W] with `channels_first`) of any size.

    Returns (tokens [B, 1 + h * w, hidden_sizes[-1]], aux): the global average of the last feature map
    first (where the other encoders keep their [CLS], which fusions read), then the map's spatial tokens
    (row-major: HF's last_hidden_state).
    aux keys (after `aux_prefix`): `tokens`, `mask` (all True), `pooled` (global average of the last map,
    HF's pooler_output) and `hidden_states` (the stem's output, then every stage's output, each NHWC).
    `deterministic=False` normalises with batch statistics and updates `batch_stats` (see the module doc).
    """

    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)  # layers per stage; stages after the first halve the size
    layer_type: str = "bottleneck"  # basic (ResNet-18/34) | bottleneck (ResNet-50 and up)
    activation: str = "relu"  # a key of mmjax.nn.transformer.ACTIVATIONS: the stem's and after each sum
    downsample_in_first_stage: bool = False  # True: the first stage halves the size too
    downsample_in_bottleneck: bool = False  # bottleneck: stride on the first 1x1 conv instead of the 3x3
    reduction: int = 4  # bottleneck: inner width = features // reduction
    channels_first: bool = False  # True: images are [B, C, H, W] (HF `pixel_values`)
    # The stem (HF's: a 7x7 stride-2 conv, then a 3x3 stride-2 max-pool). Small images (28x28 digits) keep
    # more resolution with a 3x3 stride-1 conv and no pool; only HF's stem exports to HF (mmjax.port.resnet).
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    aux_prefix: str = "img/"

    @nn.compact
    def __call__(self, pixel_values: jax.Array, *, deterministic: bool = True) -> tuple[jax.Array, dict]:
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type={self.layer_type!r} is not one of {LAYER_TYPES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"hidden_sizes={self.hidden_sizes} and depths={self.depths} differ in length")
        x = jnp.moveaxis(pixel_values, 1, -1) if self.channels_first else pixel_values
        stem = ConvNorm(self.embedding_size, self.stem_kernel, self.stem_stride, name="embedder")
        x = ACTIVATIONS[self.activation](stem(x, deterministic=deterministic))
        if self.stem_pool:
            x = nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        hidden_states = [x]
        for s, (features, depth) in enumerate(zip(self.hidden_sizes, self.depths, strict=True)):
            for i in range(depth):
                stride = 2 if i == 0 and (s > 0 or self.downsample_in_first_stage) else 1
                layer = ResidualLayer(
                    features=features,
                    stride=stride,
                    layer_type=self.layer_type,
                    activation=self.activation,
                    reduction=self.reduction,
                    downsample_in_bottleneck=self.downsample_in_bottleneck,
                    name=f"stage_{s}_layer_{i}",
                )
                x = layer(x, deterministic=deterministic)
            hidden_states.append(x)
        spatial = x.reshape(x.shape[0], -1, x.shape[-1])
        pooled = spatial.mean(axis=1)
        tokens = jnp.concatenate([pooled[:, None], spatial], axis=1)  # the global average in the [CLS] slot
        mask = jnp.ones(tokens.shape[:2], dtype=bool)
        aux = {"tokens": tokens, "mask": mask, "pooled": pooled, "hidden_states": hidden_states}
        return tokens, {self.aux_prefix + k: v for k, v in aux.items()}
