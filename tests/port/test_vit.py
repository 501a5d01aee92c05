"""ViT ports match Hugging Face ViTModel layer by layer at 1e-5; the ported module keeps HF's input."""

import flax
import numpy as np
import pytest
import torch
import transformers

from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity


def _save(tmp_path, pooler, **config):
    """Builds a random HF ViTModel from a tiny config, saves it and returns it in eval mode."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(intermediate_size=2 * config["hidden_size"] + 3, **config)
    model = transformers.ViTModel(config, add_pooling_layer=pooler).eval()
    model.save_pretrained(tmp_path)
    return model


def _pixels(config, batch=2, seed=0):
    size = (batch, config.num_channels, config.image_size, config.image_size)
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


@pytest.mark.parametrize(
    "pooler, width, heads, layers, image, patch, channels, act, eps",
    [
        (True, 32, 2, 1, 16, 4, 3, "gelu", 1e-12),
        (False, 48, 4, 2, 32, 8, 1, "gelu_new", 1e-6),
        (True, 64, 4, 3, 24, 6, 3, "gelu_new", 1e-6),
        (True, 40, 2, 2, 20, 5, 1, "gelu", 1e-12),
    ],
)
def test_vit_matches_hf_every_layer(tmp_path, pooler, width, heads, layers, image, patch, channels, act, eps):
    config = dict(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers, image_size=image)
    config |= dict(patch_size=patch, num_channels=channels, hidden_act=act, layer_norm_eps=eps)
    hf_model = _save(tmp_path, pooler, **config)
    with torch.no_grad():  # random, large key biases: dropping them must not show
        key_biases = [p for n, p in hf_model.named_parameters() if n.endswith(("k_proj.bias", "key.bias"))]
        assert len(key_biases) == hf_model.config.num_hidden_layers  # key.bias on disk, k_proj in memory
        for bias in key_biases:
            bias.normal_(0.0, 1.0)
    hf_model.save_pretrained(tmp_path)
    pixels = _pixels(hf_model.config)
    module, params = from_hf(tmp_path)
    assert "pooler" in params if pooler else "pooler" not in params
    out, aux = module.apply({"params": params}, pixel_values=pixels)
    mask = aux["mask"]
    with torch.no_grad():
        theirs = hf_model(torch.tensor(pixels), output_hidden_states=True)
    assert mask.all() and out.shape == theirs.last_hidden_state.shape
    assert len(aux["hidden_states"]) == len(theirs.hidden_states) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    if pooler:
        np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)


def test_task_model_prefix_is_stripped_and_other_image_sizes_fail(tmp_path):
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=3,
    )
    torch.manual_seed(0)
    classifier = transformers.ViTForImageClassification(config).eval()
    classifier.save_pretrained(tmp_path)
    module, params = from_hf(tmp_path, tower="image", dont_load=[r"classifier\..*"])
    pixels = _pixels(config)
    out, _ = module.apply({"params": params}, pixel_values=pixels)
    with torch.no_grad():
        theirs = classifier.vit(torch.tensor(pixels)).last_hidden_state.numpy()
    np.testing.assert_allclose(out, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(flax.errors.ScopeParamShapeError, match="position_embedding"):
        module.apply({"params": params}, pixel_values=np.zeros((1, 3, 20, 20), np.float32))
    with pytest.raises(ValueError, match=r"hold the towers \(.image.,\)"):
        from_hf(tmp_path, tower="text")


def test_vit_without_qkv_bias_ports_and_exports(tmp_path):
    """Regression: a qkv_bias=False checkpoint failed with "missing: encoder/layer_0/self_attn/query/bias"."""
    hf_model = _save(
        tmp_path / "hf",
        True,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        image_size=16,
        patch_size=4,
        num_channels=3,
        qkv_bias=False,
    )
    module, params = from_hf(tmp_path / "hf")
    attention = params["encoder"]["layer_0"]["self_attn"]
    assert "bias" not in attention["query"] and "bias" not in attention["value"]
    assert "bias" in attention["out"]
    pixels = _pixels(hf_model.config)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(pixels)).last_hidden_state.numpy()
    out, _ = module.apply({"params": params}, pixel_values=pixels)
    np.testing.assert_allclose(out, theirs, rtol=1e-5, atol=1e-5)
    to_hf(module, params, tmp_path / "out")
    reloaded = transformers.ViTModel.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.qkv_bias is False
    with torch.no_grad():
        again = reloaded(torch.tensor(pixels)).last_hidden_state.numpy()
    np.testing.assert_allclose(again, theirs, rtol=1e-5, atol=1e-5)
