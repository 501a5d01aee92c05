"""DINOv2 (with registers) ports match HF layer by layer at 1e-5, at any image size, and export back."""

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.encoders.image import ViTEncoder
from mmjax.nn.embeddings import bicubic_matrix
from mmjax.port import dinov2, from_hf, to_hf

pytestmark = pytest.mark.parity

NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
MODELS = {
    "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model),
    "dinov2_with_registers": (transformers.Dinov2WithRegistersConfig, transformers.Dinov2WithRegistersModel),
}


def _hf_model(model_type, **config):
    """A random tiny HF model with noise on every weight (LayerNorms, key biases, layer scales, tokens)."""
    torch.manual_seed(0)
    config_cls, model_cls = MODELS[model_type]
    model = model_cls(config_cls(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _pixels(channels, height, width, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, channels, height, width)).astype(np.float32)


def _assert_matches(module, params, hf_model, pixels, bool_masked_pos=None):
    """Every hidden state, the output and the pooled [CLS] agree with HF's at 1e-5."""
    inputs = {"pixel_values": pixels} | (
        {} if bool_masked_pos is None else {"bool_masked_pos": bool_masked_pos}
    )
    out, aux = jax.jit(module.apply)({"params": params}, **inputs)
    with torch.no_grad():
        theirs = hf_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
    assert len(aux["hidden_states"]) == len(theirs.hidden_states) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)


CONFIGS = [  # together: both model types, SwiGLU, qkv_bias, activations, epsilons, mask token, registers
    ("dinov2", dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=16, patch_size=4)),
    (
        "dinov2",
        dict(
            hidden_size=48,
            num_attention_heads=4,
            num_hidden_layers=1,
            image_size=[15, 15],
            patch_size=5,
            num_channels=1,
            mlp_ratio=3,
            use_swiglu_ffn=True,
            qkv_bias=False,
            layer_norm_eps=1e-5,
            layerscale_value=0.5,
            use_mask_token=False,
        ),
    ),
    (
        "dinov2_with_registers",
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=12,
            patch_size=3,
            num_register_tokens=3,
            hidden_act="gelu_new",
            layer_norm_eps=1e-12,
            mlp_ratio=2,
        ),
    ),
    (
        "dinov2_with_registers",
        dict(
            hidden_size=40,
            num_attention_heads=5,
            num_hidden_layers=1,
            image_size=16,
            patch_size=4,
            num_register_tokens=1,
            use_swiglu_ffn=True,
            qkv_bias=False,
            hidden_act="relu",  # SwiGLU ignores it
        ),
    ),
]


@pytest.mark.parametrize("model_type, config", CONFIGS)
def test_dinov2_matches_hf_every_layer_at_any_image_size(tmp_path, model_type, config):
    hf_model = _hf_model(model_type, **config)
    hf_model.save_pretrained(tmp_path)
    module, params = from_hf(tmp_path)
    assert ("mask_token" in params) == (model_type != "dinov2" or config.get("use_mask_token", True))
    c = hf_model.config
    size, patch = dinov2.square(c.image_size, "image_size"), c.patch_size
    # the checkpoint's size, a non-square size with a remainder past the last patch, and one of: smaller;
    # the table's grid from non-square pixels (no resize); the table's number of patches on another grid
    grid = size // patch
    third = [(size - patch, size - patch), (size + patch - 1, size), (patch * grid // 2, patch * grid * 2)]
    for height, width in [
        (size, size),
        (size + 2 * patch + 1, size - patch),
        third[CONFIGS.index((model_type, config)) % 3],
    ]:
        _assert_matches(module, params, hf_model, _pixels(c.num_channels, height, width))


def test_masked_patches_take_the_mask_token(tmp_path):
    model_type, config = CONFIGS[2]
    hf_model = _hf_model(model_type, **config)
    hf_model.save_pretrained(tmp_path)
    module, params = from_hf(tmp_path)
    masked = np.random.default_rng(1).random((2, 16)) < 0.5
    _assert_matches(module, params, hf_model, _pixels(3, 12, 12), bool_masked_pos=masked)


@pytest.mark.parametrize("antialias", [False, True])
def test_bicubic_matrices_are_torch_interpolate(antialias):
    rng = np.random.default_rng(0)
    for in_size, out_size in [(4, 9), (7, 3), (5, 5), (2, 13), (9, 4), (3, 1), (1, 6)]:
        grid = rng.normal(size=(2, in_size, in_size)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(
            torch.from_numpy(grid)[None].double(),
            size=(out_size, out_size + 2),
            mode="bicubic",
            align_corners=False,
            antialias=antialias,
        )[0].numpy()
        rows, cols = (
            bicubic_matrix(in_size, out_size, antialias),
            bicubic_matrix(in_size, out_size + 2, antialias),
        )
        ours = np.einsum("yi,xj,cij->cyx", rows, cols, grid, dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_classification_checkpoint_loads_its_encoder(tmp_path):
    config = transformers.Dinov2WithRegistersConfig(**CONFIGS[3][1], num_labels=3)
    torch.manual_seed(0)
    classifier = transformers.Dinov2WithRegistersForImageClassification(config).eval()
    classifier.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert all(k.startswith(("dinov2_with_registers.", "classifier.")) for k in state)
    with pytest.raises(ValueError, match=r"unexpected: classifier\.weight"):
        from_hf(tmp_path)
    save_file(
        {k: v for k, v in state.items() if not k.startswith("classifier.")}, tmp_path / "model.safetensors"
    )
    module, params = from_hf(tmp_path)  # (dont_load=[r"classifier\..*"] would skip them instead)
    _assert_matches(module, params, classifier.dinov2_with_registers, _pixels(3, 20, 12))


@pytest.mark.parametrize("index", [1, 2])
def test_hf_round_trip_loads_strictly_and_matches(tmp_path, index):
    model_type, config = CONFIGS[index]
    original = _hf_model(model_type, **config)
    original.save_pretrained(tmp_path / "hf")
    module, params = from_hf(tmp_path / "hf")
    to_hf(module, params, tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in saved.items()}
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is type(original) and info == NO_PROBLEMS
    channels, size = original.config.num_channels, module.image_size
    for height, width in [(size, size), (size + 7, size - 3)]:
        pixels = torch.from_numpy(_pixels(channels, height, width))
        with torch.no_grad():
            ours, theirs = exported(pixels), original(pixels)
        np.testing.assert_allclose(ours.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_what_dinov2_cannot_hold_is_refused(tmp_path):
    base = dict(patch_size=4, width=8, depth=1, num_heads=2, mlp_dim=16, image_size=8, layer_scale=1.0)
    pixels = np.zeros((1, 8, 8, 3), np.float32)
    cases = [
        (ViTEncoder(**base | dict(image_size=None)), r"DINOv2 needs image_size .* image_size=None"),
        (ViTEncoder(**base | dict(mlp_dim=20)), r"mlp_dim=20 is not width \* r"),
        (ViTEncoder(**base | dict(gated_mlp=True, mlp_dim=12)), r"mlp_dim=12 is not swiglu_hidden"),
        (ViTEncoder(**base | dict(pre_ln=False)), r"dinov2 checkpoint: pre_ln=False"),
        (ViTEncoder(**base | dict(num_registers=2)), r"dinov2_with_registers checkpoint: mask_token=False"),
    ]
    for module, message in cases:
        params = jax.eval_shape(module.init, jax.random.key(0), pixels)["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"image_size=\[16, 20\]: only square sizes"):
        dinov2.encoder_from_config({"model_type": "dinov2", "image_size": [16, 20]}, set(), "image")
