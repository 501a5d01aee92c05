"""SigLIP and SigLIP 2 ports match HF tower by tower, layer by layer at 1e-5, logits included; export back."""

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.naflex import NaFlexEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.port import from_hf, siglip, to_hf

pytestmark = pytest.mark.parity

NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


def _text_config(width=32, heads=4, layers=2, act="gelu_pytorch_tanh", eps=1e-6, **extra):
    return dict(
        vocab_size=60,
        max_position_embeddings=10,
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * width + 3,
        hidden_act=act,
        layer_norm_eps=eps,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        **extra,
    )


def _vision_config(
    width=32, heads=4, layers=2, patch=4, channels=3, act="gelu_pytorch_tanh", eps=1e-6, **extra
):
    return dict(
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * width + 5,
        patch_size=patch,
        num_channels=channels,
        hidden_act=act,
        layer_norm_eps=eps,
        **extra,
    )


def _save(tmp_path, model_cls, config):
    """A random HF model with noise on every weight (LayerNorms, key biases, probe, logit scale and bias),
    saved to `tmp_path` and returned in eval mode."""
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def _text_inputs(config, seed=0):
    """Ids of different lengths right-padded with pad_token_id, and their attention mask."""
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 3, 10, 1])
    ids = rng.integers(4, config.vocab_size, size=(len(lengths), config.max_position_embeddings))
    mask = np.arange(ids.shape[1])[None] < lengths[:, None]
    ids = np.where(mask, ids, config.pad_token_id)
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}


def _pixels(channels, height, width, batch=2, seed=0):
    size = (batch, channels, height, width)
    return {"pixel_values": np.random.default_rng(seed).normal(size=size).astype(np.float32)}


def _patches(config, shapes, length, seed=0):
    """SigLIP 2 inputs: random patch sequences of `length` for images of patch grids `shapes`, and masks."""
    shapes = np.array(shapes, np.int64)
    dim = config.num_channels * config.patch_size**2
    pixels = np.random.default_rng(seed).normal(size=(len(shapes), length, dim)).astype(np.float32)
    mask = (np.arange(length)[None] < shapes.prod(-1)[:, None]).astype(np.int32)
    return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def _port(path, tower=None):
    """The ported tower as (depth, jitted function of the inputs)."""
    module, params = from_hf(path, tower=tower)
    return module.depth, jax.jit(lambda inputs: module.apply({"params": params}, **inputs))


def _run(ported, hf_tower, inputs, **hf_kwargs):
    """(our aux, HF's output) for `inputs`; every hidden state and the output agree at 1e-5."""
    depth, apply = ported
    out, aux = apply(inputs)
    with torch.no_grad():
        theirs = hf_tower(
            **{k: torch.from_numpy(v) for k, v in inputs.items()}, **hf_kwargs, output_hidden_states=True
        )
    assert len(aux["hidden_states"]) == len(theirs.hidden_states) == depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)  # padded positions too
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    return aux, theirs


def _assert_text_matches(ported, hf_text, inputs):
    """pooled = the last position, embeds = HF's pooler_output (the head of it)."""
    aux, theirs = _run(ported, hf_text, inputs)
    np.testing.assert_allclose(aux["pooled"], theirs.last_hidden_state[:, -1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["embeds"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    return aux


def _assert_vision_matches(ported, hf_vision, inputs, **hf_kwargs):
    """pooled = HF's pooler_output (the head), or without head the (unmasked) token mean."""
    aux, theirs = _run(ported, hf_vision, inputs, **hf_kwargs)
    if theirs.pooler_output is not None:
        np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    else:
        mask = inputs.get("pixel_attention_mask", np.ones(theirs.last_hidden_state.shape[:2]))[..., None]
        mean = (theirs.last_hidden_state.numpy() * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(aux["pooled"], mean, rtol=1e-5, atol=1e-5)
    return aux


def _assert_logits_match(path, hf_model, text_aux, image_aux, inputs):
    logits = siglip.logits_per_image(
        image_aux["pooled"], text_aux["embeds"], *siglip.logit_scale_and_bias(path)
    )
    with torch.no_grad():
        theirs = hf_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits_per_image.numpy()
    assert logits.shape == theirs.shape == (len(image_aux["pooled"]), len(text_aux["embeds"]))
    np.testing.assert_allclose(logits, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "text, vision, image",
    [
        (_text_config(), _vision_config(image_size=16), (20, 13)),
        (
            _text_config(48, 3, 1, "gelu", 1e-5, projection_size=24),
            _vision_config(
                24, 2, 1, patch=5, channels=1, act="gelu", eps=1e-5, image_size=15, vision_use_head=False
            ),
            (10, 24),
        ),
    ],  # with the one-tower configs below: every activation, epsilon, head, resize case
)
def test_siglip_model_towers_and_logits_match_hf(tmp_path, text, vision, image):
    config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    hf_model = _save(tmp_path, transformers.SiglipModel, config)
    text_inputs, ported_text = _text_inputs(config.text_config), _port(tmp_path, "text")
    text_aux = _assert_text_matches(ported_text, hf_model.text_model, text_inputs)
    c, ported_vision = config.vision_config, _port(tmp_path, "vision")
    image_inputs = _pixels(c.num_channels, c.image_size, c.image_size, batch=3)
    image_aux = _assert_vision_matches(ported_vision, hf_model.vision_model, image_inputs)
    if c.vision_use_head:  # without it HF's SiglipModel has no image embeddings
        _assert_logits_match(tmp_path, hf_model, text_aux, image_aux, text_inputs | image_inputs)
    other = _pixels(c.num_channels, *image)  # HF resizes the positions when asked
    _assert_vision_matches(ported_vision, hf_model.vision_model, other, interpolate_pos_encoding=True)


@pytest.mark.parametrize("head", [True, False])
def test_siglip2_model_towers_and_logits_match_hf(tmp_path, head):
    vision = _vision_config(24, 2, 2, patch=2, num_patches=16, vision_use_head=head)
    text = _text_config(32, 4, 1, "gelu", 1e-5, projection_size=24)
    config = transformers.Siglip2Config(text_config=text, vision_config=vision)
    hf_model = _save(tmp_path, transformers.Siglip2Model, config)
    # grids smaller and larger than the 4 x 4 table, non-square, padded to 10 patches
    image_inputs = _patches(config.vision_config, [(2, 3), (5, 2), (3, 3)], length=10)
    image_aux = _assert_vision_matches(_port(tmp_path, "vision"), hf_model.vision_model, image_inputs)
    text_inputs = _text_inputs(config.text_config)
    text_aux = _assert_text_matches(_port(tmp_path, "text"), hf_model.text_model, text_inputs)
    if head:
        _assert_logits_match(tmp_path, hf_model, text_aux, image_aux, text_inputs | image_inputs)


T = transformers


@pytest.mark.parametrize(
    "model_cls, config_cls, config, exported_cls",  # exported_cls: what to_hf writes
    [
        (
            T.SiglipTextModel,
            T.SiglipTextConfig,
            _text_config(40, 5, 2, "gelu_new", 1e-12, projection_size=16),
            T.SiglipTextModel,
        ),
        (
            T.SiglipVisionModel,
            T.SiglipVisionConfig,
            _vision_config(24, 3, 1, patch=3, act="quick_gelu", eps=1e-12, image_size=12),
            T.SiglipVisionModel,
        ),
        (
            T.Siglip2TextModel,
            T.Siglip2TextConfig,
            _text_config(24, 3, 1),
            T.SiglipTextModel,
        ),  # the same tower
        (
            T.Siglip2VisionModel,
            T.Siglip2VisionConfig,
            _vision_config(24, 3, 1, num_patches=9),
            T.Siglip2VisionModel,
        ),
    ],
)
def test_one_tower_checkpoints_load_their_tower_and_export_back(
    tmp_path, model_cls, config_cls, config, exported_cls
):
    tower = "text" if "Text" in model_cls.__name__ else "vision"
    hf_model = _save(tmp_path / "hf", model_cls, config_cls(**config))
    c = hf_model.config
    if tower == "text":  # no mask: SigLIP's tokenizer pads to max length
        inputs, check = {"input_ids": _text_inputs(c)["input_ids"]}, _assert_text_matches
    elif "Siglip2" in model_cls.__name__:
        inputs, check = _patches(c, [(3, 2), (1, 4)], length=7), _assert_vision_matches
    else:
        inputs, check = _pixels(c.num_channels, c.image_size, c.image_size), _assert_vision_matches
    check(_port(tmp_path / "hf"), hf_model, inputs)
    with pytest.raises(ValueError, match=rf"hold the towers \('{tower}',\)"):
        from_hf(tmp_path / "hf", tower="vision" if tower == "text" else "text")
    module, params = from_hf(tmp_path / "hf")
    # older checkpoints prefix the keys with the tower
    state = load_file(tmp_path / "hf" / "model.safetensors")
    save_file({f"{tower}_model.{k}": v for k, v in state.items()}, tmp_path / "hf" / "model.safetensors")
    jax.tree.map(np.testing.assert_array_equal, from_hf(tmp_path / "hf")[1], params)
    to_hf(module, params, tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in state.items()}
    exported, info = exported_cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info == NO_PROBLEMS
    with torch.no_grad():  # the same function as the original
        ours, theirs = (
            m(**{k: torch.from_numpy(v) for k, v in inputs.items()}) for m in (exported.eval(), hf_model)
        )
    for key in ("last_hidden_state", "pooler_output"):
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_model_checkpoint_exports_its_vision_tower(tmp_path):
    config = transformers.SiglipConfig(text_config=_text_config(), vision_config=_vision_config(image_size=8))
    hf_model = _save(tmp_path / "hf", transformers.SiglipModel, config)
    module, params = from_hf(tmp_path / "hf", tower="vision")
    to_hf(module, params, tmp_path / "out")
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is transformers.SiglipVisionModel and info == NO_PROBLEMS
    pixels = torch.from_numpy(_pixels(3, 8, 8)["pixel_values"])
    with torch.no_grad():
        ours, theirs = exported(pixels).pooler_output, hf_model.vision_model(pixels).pooler_output
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_what_siglip_cannot_hold_is_refused(tmp_path):
    tiny = dict(width=8, depth=1, num_heads=2, mlp_dim=16)
    text = dict(vocab_size=11, max_len=8, type_vocab_size=0, embedding_ln=False, pool="last", **tiny)
    ids, pixels = np.zeros((1, 3), np.int32), np.zeros((1, 8, 8, 3), np.float32)
    cases = [
        (TextEncoder(**text), ids, r"SigLIP text tower ends in a head: projection_dim must be set"),
        (TextEncoder(**text, projection_dim=4), ids, r"siglip_text_model checkpoint: projection_bias=False"),
        (TextEncoder(**text, projection_dim=4, projection_bias=True, causal=True), ids, r"causal=True"),
        (
            ViTEncoder(4, **tiny, class_token=False, pool="map"),
            pixels,
            r"SigLIP vision .* image_size must be set",
        ),
        (
            ViTEncoder(4, **tiny, class_token=False, pool="map", image_size=8, patch_bias=False),
            pixels,
            "patch_bias",
        ),
    ]
    for module, inputs, message in cases:
        params = jax.eval_shape(module.init, jax.random.key(0), inputs)["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    naflex = NaFlexEncoder(2, 12, **tiny)
    with pytest.raises(ValueError, match="num_patches=12 is not a square number"):
        naflex.init(jax.random.key(0), np.zeros((1, 4, 12)), np.ones((1, 4)), np.array([[2, 2]]))


def test_naflex_encoder_takes_image_batches_as_full_patch_grids():
    encoder = NaFlexEncoder(4, 4, width=8, depth=1, num_heads=2, mlp_dim=16, aux_prefix="")
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    patches = images.reshape(2, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 48)
    variables = encoder.init(jax.random.key(0), images)
    out, aux = encoder.apply(variables, images)
    again, _ = encoder.apply(variables, patches, np.ones((2, 6), np.int32), np.array([[2, 3], [2, 3]]))
    np.testing.assert_allclose(out, again, rtol=1e-6, atol=1e-6)
    assert out.shape == (2, 6, 8) and aux["mask"].all() and aux["pooled"].shape == (2, 8)
    with pytest.raises(ValueError, match="need their pixel_attention_mask and spatial_shapes"):
        encoder.apply(variables, patches)
