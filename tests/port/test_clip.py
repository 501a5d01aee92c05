"""CLIP ports match Hugging Face CLIP tower by tower, layer by layer at 1e-5, projections included."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


def _text_config(width=32, heads=4, layers=2, act="quick_gelu", eps=1e-5, eos=7, pad=1, **extra):
    return dict(
        vocab_size=60,
        max_position_embeddings=12,
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * width + 3,
        hidden_act=act,
        layer_norm_eps=eps,
        bos_token_id=3,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )


def _vision_config(
    width=32, heads=4, layers=2, image=16, patch=4, channels=3, act="quick_gelu", eps=1e-5, **extra
):
    return dict(
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * width + 5,
        image_size=image,
        patch_size=patch,
        num_channels=channels,
        hidden_act=act,
        layer_norm_eps=eps,
        **extra,
    )


def _save(tmp_path, model_cls, config):
    """Builds a random HF model with large random key biases (dropping them must not show) and random
    LayerNorms (a swapped LayerNorm would show), saves it and returns it in eval mode."""
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("k_proj.bias"):
                p.normal_(0.0, 1.0)
            elif "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    model.save_pretrained(tmp_path)
    return model


def _text_inputs(config, seed=0):
    """Right-padded ids of different lengths, each ending in its EOS, and their attention mask.

    The EOS is eos_token_id, among higher ids (argmax pooling would miss it), or for old configs
    (eos_token_id=2: HF pools the highest id) the highest id, with no 2 around (EOS pooling would miss it).
    """
    rng = np.random.default_rng(seed)
    eos = config.vocab_size - 1 if config.eos_token_id == 2 else config.eos_token_id
    lengths = np.array([7, 3, 10, 1])
    ids = rng.integers(4, config.vocab_size - 1, size=(len(lengths), lengths.max()))
    ids = np.where(ids == eos, eos + 1, ids)
    positions = np.arange(lengths.max())[None]
    ids = np.where(positions == lengths[:, None] - 1, eos, ids)
    mask = positions < lengths[:, None]
    ids = np.where(mask, ids, config.pad_token_id)
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}


def _vision_inputs(config, batch=2, seed=0):
    size = (batch, config.num_channels, config.image_size, config.image_size)
    return {"pixel_values": np.random.default_rng(seed).normal(size=size).astype(np.float32)}


def _assert_tower_matches(path, tower, hf_tower, hf_projection, inputs):
    """Every hidden state, the output, the pooled output and the projected embeds agree with HF's."""
    module, params = from_hf(path, tower=tower)
    assert ("projection" in params) == (hf_projection is not None)
    out, aux = jax.jit(module.apply)({"params": params}, **inputs)
    with torch.no_grad():
        theirs = hf_tower(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
    assert len(aux["hidden_states"]) == len(theirs.hidden_states) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)  # padded positions too
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    if hf_projection is not None:
        with torch.no_grad():
            embeds = hf_projection(theirs.pooler_output).numpy()
        np.testing.assert_allclose(aux["embeds"], embeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "text, vision, projection_dim",
    [
        (_text_config(eos=2), _vision_config(), 16),  # old config: pools the highest id
        (
            _text_config(48, 3, 3, "gelu", 1e-6, eos=7, pad=7),  # pads are EOS, as the CLIP tokenizer's
            _vision_config(24, 2, 1, image=24, patch=8, channels=1, act="gelu", eps=1e-6),
            8,
        ),
        (
            _text_config(24, 2, 1, "gelu_new", 1e-12, eos=9),
            _vision_config(40, 5, 3, image=20, patch=5, eps=1e-12),
            24,
        ),
    ],
)
def test_clip_model_towers_match_hf_every_layer(tmp_path, text, vision, projection_dim):
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    hf_model = _save(tmp_path, transformers.CLIPModel, config)
    text_inputs = _text_inputs(config.text_config)
    assert (text_inputs["attention_mask"] == 0).any()
    _assert_tower_matches(tmp_path, "text", hf_model.text_model, hf_model.text_projection, text_inputs)
    vision_inputs = _vision_inputs(config.vision_config)
    _assert_tower_matches(
        tmp_path, "vision", hf_model.vision_model, hf_model.visual_projection, vision_inputs
    )


@pytest.mark.parametrize(
    "model_cls",
    [
        transformers.CLIPTextModel,
        transformers.CLIPTextModelWithProjection,
        transformers.CLIPVisionModel,
        transformers.CLIPVisionModelWithProjection,
    ],
)
def test_one_tower_checkpoints_load_their_tower(tmp_path, model_cls):
    tower, other = ("text", "vision") if "Text" in model_cls.__name__ else ("vision", "text")
    if tower == "text":
        config = transformers.CLIPTextConfig(**_text_config(40, 5, 2, projection_dim=12))
    else:
        config = transformers.CLIPVisionConfig(
            **_vision_config(24, 3, 2, image=12, patch=3, projection_dim=12)
        )
    hf_model = _save(tmp_path, model_cls, config)
    state = load_file(tmp_path / "model.safetensors")
    with_projection = model_cls.__name__.endswith("WithProjection")  # these save `{tower}_model.` keys
    assert any(k.startswith(f"{tower}_model.") for k in state) == with_projection
    hf_tower = getattr(hf_model, f"{tower}_model") if with_projection else hf_model
    hf_projection = getattr(hf_model, "text_projection" if tower == "text" else "visual_projection", None)
    inputs = _text_inputs(config) if tower == "text" else _vision_inputs(config)
    _assert_tower_matches(tmp_path, None, hf_tower, hf_projection, inputs)
    with pytest.raises(ValueError, match=rf"hold the towers \('{tower}',\); got tower='{other}'"):
        from_hf(tmp_path, tower=other)


@pytest.fixture
def tiny_clip(tmp_path):
    config = transformers.CLIPConfig(
        text_config=_text_config(), vision_config=_vision_config(), projection_dim=8
    )
    return tmp_path, _save(tmp_path, transformers.CLIPModel, config)


def test_clip_model_needs_a_tower_and_reads_old_configs(tiny_clip):
    path, _ = tiny_clip
    towers = r"clip checkpoints hold the towers \('text', 'vision'\); got tower=None"
    with pytest.raises(ValueError, match=r"config\.json: " + towers):
        from_hf(path)
    # Older config.json files nest `text_config_dict` (preferred by HF) and leave defaults out.
    config = json.loads((path / "config.json").read_text())
    text = config.pop("text_config")
    assert text.pop("hidden_act") == "quick_gelu" and text.pop("layer_norm_eps") == 1e-5  # HF's defaults
    (path / "config.json").write_text(
        json.dumps(config | {"text_config": {"hidden_size": 7}, "text_config_dict": text})
    )
    hf_model = transformers.CLIPModel.from_pretrained(path).eval()
    _assert_tower_matches(
        path, "text", hf_model.text_model, hf_model.text_projection, _text_inputs(hf_model.config.text_config)
    )


def test_strict_merge_ignores_the_other_tower_and_old_buffers_but_lists_problems(tiny_clip):
    path, _ = tiny_clip
    file = path / "model.safetensors"
    state = load_file(file)
    for tower, n in (("text", 12), ("vision", 17)):  # old checkpoints hold the position-id buffers
        state[f"{tower}_model.embeddings.position_ids"] = np.arange(n)[None]
    state.pop("text_model.final_layer_norm.bias")
    state["text_model.encoder.layers.0.self_attn.bogus.weight"] = np.zeros((2, 2), np.float32)
    state["text_projection.weight"] = np.zeros((8, 5), np.float32)
    save_file(state, file)
    with pytest.raises(ValueError, match="3 problems") as error:
        from_hf(path, tower="text")
    message = str(error.value)
    assert "missing: encoder/final_ln/bias" in message
    assert "unexpected: text_model.encoder.layers.0.self_attn.bogus.weight" in message
    assert "mis-shaped: text_projection.weight (8, 5) -> projection/kernel needs (32, 8)" in message
    _, params = from_hf(path, tower="vision")  # text keys, logit_scale and buffers are dropped
    assert params["projection"]["kernel"].shape == (32, 8)


def _tower_outputs(hf_tower, hf_projection, inputs):
    """An HF tower's hidden states, output, pooled output and (with a projection) embeds, as numpy."""
    with torch.no_grad():
        out = hf_tower(**{k: torch.from_numpy(v) for k, v in inputs.items()}, output_hidden_states=True)
        embeds = None if hf_projection is None else hf_projection(out.pooler_output).numpy()
    states = [h.numpy() for h in out.hidden_states] + [
        out.last_hidden_state.numpy(),
        out.pooler_output.numpy(),
    ]
    return states, embeds


def _hf_tower(model, tower):
    """(tower, projection or None) of any CLIP model class."""
    names = ("text_model", "text_projection") if tower == "text" else ("vision_model", "visual_projection")
    return getattr(model, names[0], model), getattr(model, names[1], None)


@pytest.mark.parametrize(
    "model_cls, tower, architecture",
    [
        (transformers.CLIPModel, "text", "CLIPTextModelWithProjection"),  # an old config: pools the max id
        (transformers.CLIPModel, "vision", "CLIPVisionModelWithProjection"),
        (transformers.CLIPTextModel, "text", "CLIPTextModel"),
        (transformers.CLIPVisionModel, "vision", "CLIPVisionModel"),
    ],
)
def test_to_hf_writes_one_tower_that_loads_strictly_and_matches(tmp_path, model_cls, tower, architecture):
    text, vision = (
        _text_config(eos=2, act="gelu"),
        _vision_config(24, 3, 2, image=12, patch=3, act="gelu_new"),
    )
    if model_cls is transformers.CLIPModel:
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
    elif tower == "text":
        config = transformers.CLIPTextConfig(**text)
    else:
        config = transformers.CLIPVisionConfig(**vision)
    original = _save(tmp_path / "hf", model_cls, config)
    module, params = from_hf(tmp_path / "hf", tower=tower)
    to_hf(module, params, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [architecture]
    model_cls = getattr(transformers, architecture)  # AutoModel gives the class without projection
    exported, info = model_cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info == NO_PROBLEMS
    tower_config = getattr(original.config, f"{tower}_config", original.config)
    inputs = _text_inputs(tower_config) if tower == "text" else _vision_inputs(tower_config)
    ours, ours_embeds = _tower_outputs(*_hf_tower(exported.eval(), tower), inputs)
    theirs, their_embeds = _tower_outputs(*_hf_tower(original, tower), inputs)
    for mine, hf in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, hf, rtol=1e-5, atol=1e-5)
    assert (ours_embeds is None) == (their_embeds is None)
    if their_embeds is not None:
        np.testing.assert_allclose(ours_embeds, their_embeds, rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_modules_clip_cannot_hold_are_refused_naming_the_field(tmp_path):
    text = dict(vocab_size=11, max_len=8, width=8, depth=1, num_heads=2, mlp_dim=16, type_vocab_size=0)
    clip_text = dict(text, embedding_ln=False, causal=True, pool="eos", eos_token_id=3)
    vision = dict(patch_size=4, width=8, depth=1, num_heads=2, mlp_dim=16)
    clip_vision = dict(vision, patch_bias=False, embedding_ln=True, final_ln=False, pooled_ln=True)
    ids, image = np.zeros((1, 3), np.int32), np.zeros((1, 8, 8, 3), np.float32)
    cases = [
        (TextEncoder(**clip_text | dict(pool="first")), ids, r"pool='first': CLIP's text tower pools"),
        (
            TextEncoder(**clip_text | dict(pool="eos", eos_token_id=2)),
            ids,
            r"pool='eos' \(a clip_text_model .* 'max_id'\)",
        ),
        (TextEncoder(**clip_text | dict(causal=False)), ids, r"clip_text_model checkpoint: causal=False"),
        (
            ViTEncoder(**clip_vision | dict(qkv_bias=False)),
            image,
            r"clip_vision_model checkpoint: qkv_bias=False",
        ),
        (ViTEncoder(**clip_vision | dict(pooler=True)), image, r"clip_vision_model checkpoint: pooler=True"),
    ]
    for module, inputs, message in cases:  # shapes suffice: modules are refused before weights are read
        params = jax.eval_shape(module.init, jax.random.key(0), inputs)["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "tower, field, message",
    [
        ("text", {"hidden_act": "prelu"}, r"hidden_act='prelu' is not supported"),
        ("text", {"eos_token_id": [7, 8]}, r"eos_token_id=\[7, 8\] is not an int"),
        ("vision", {"image_size": 18}, r"image_size=18 is not a multiple of patch_size=4"),
    ],
)
def test_configs_mmjax_cannot_compute_are_refused_naming_the_field(tiny_clip, tower, field, message):
    path, _ = tiny_clip
    config = json.loads((path / "config.json").read_text())
    config[f"{tower}_config"] |= field
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: " + message):
        from_hf(path, tower=tower)
