"""AST ports match Hugging Face ASTModel layer by layer at 1e-5; the ported module keeps HF's input."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from mmjax.data.audio import ast_fbank
from mmjax.encoders.audio import SpectrogramEncoder
from mmjax.port import from_hf, to_hf

NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
pytestmark = [
    pytest.mark.parity,
    pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values"),  # HF's small mel banks
]


def _config(width, heads, layers, frames, mels, patch, time_stride, freq_stride, **extra):
    """A tiny ASTConfig on [B, frames, mels] spectrograms."""
    return transformers.ASTConfig(
        hidden_size=width,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * width + 3,
        max_length=frames,
        num_mel_bins=mels,
        patch_size=patch,
        time_stride=time_stride,
        frequency_stride=freq_stride,
        **extra,
    )


def _randomize(model: torch.nn.Module) -> None:
    """HF zero-initialises the tokens and positions and sets LayerNorms to identity: make them random, the
    query/value biases random and the key biases large (dropping them must not show)."""
    layers = [n for n, _ in model.named_parameters() if n.endswith("k_proj.bias")]
    assert len(layers) == model.config.num_hidden_layers * model.config.qkv_bias
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("k_proj.bias"):
                p.normal_(0.0, 3.0)
            elif "token" in name or "position" in name or "layernorm" in name or name.endswith("proj.bias"):
                p.normal_(1.0 if "layernorm" in name and name.endswith("weight") else 0.0, 0.5)


def _save(tmp_path, config: transformers.ASTConfig) -> transformers.ASTModel:
    torch.manual_seed(0)
    model = transformers.ASTModel(config).eval()
    _randomize(model)
    model.save_pretrained(tmp_path)
    return model


def _spectrograms(config, batch=2, seed=0) -> np.ndarray:
    size = (batch, config.max_length, config.num_mel_bins)
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def _assert_matches(aux, out, theirs) -> None:
    assert len(aux["hidden_states"]) == len(theirs.hidden_states)
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "width, heads, layers, frames, mels, patch, time_stride, freq_stride, act, eps, qkv_bias",
    [
        (32, 2, 1, 24, 16, 4, 3, 2, "gelu", 1e-12, True),  # overlapping in time and frequency
        (48, 4, 2, 30, 12, 6, 6, 6, "gelu_new", 1e-6, False),  # non-overlapping, 5 x 2 grid
        (64, 4, 3, 42, 22, 5, 4, 5, "relu", 1e-5, True),  # overlapping in time; 1 frame, 2 bins dropped
        (40, 2, 2, 17, 23, 4, 5, 3, "silu", 1e-12, False),  # time stride above the patch (gaps), 3 x 7 grid
    ],
)
def test_ast_matches_hf_every_layer(
    tmp_path, width, heads, layers, frames, mels, patch, time_stride, freq_stride, act, eps, qkv_bias
):
    grid = dict(frames=frames, mels=mels, patch=patch, time_stride=time_stride, freq_stride=freq_stride)
    config = _config(width, heads, layers, **grid, hidden_act=act, layer_norm_eps=eps, qkv_bias=qkv_bias)
    hf_model = _save(tmp_path, config)
    module, params = from_hf(tmp_path)
    spectrograms = _spectrograms(config)
    out, aux = jax.jit(module.apply)({"params": params}, input_values=spectrograms)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(spectrograms), output_hidden_states=True)
    assert aux["mask"].shape == out.shape[:2] and aux["mask"].all()
    assert len(aux["hidden_states"]) == layers + 1
    _assert_matches(aux, out, theirs)


def test_padded_frames_do_not_change_valid_tokens(tmp_path):
    """An mmjax feature (HF AST has no frame mask): a patch is valid if any of its frames is."""
    config = _config(32, 2, 2, frames=24, mels=16, patch=4, time_stride=3, freq_stride=6)  # 7 x 3 patches
    _save(tmp_path, config)
    module, params = from_hf(tmp_path)
    spectrograms = _spectrograms(config)
    frame_mask = np.ones((2, 24), bool)
    frame_mask[0, 10:] = False  # time patches start every 3 frames: 0..3 (up to frame 12) keep a valid one
    out, aux = jax.jit(module.apply)({"params": params}, spectrograms, frame_mask)
    time_valid = np.arange(7) < 4
    expected = np.concatenate([[True, True], np.tile(time_valid, 3)])  # [CLS], distillation, frequency-major
    np.testing.assert_array_equal(aux["mask"][0], expected)
    assert aux["mask"][1].all()
    changed = np.where(frame_mask[..., None], spectrograms, 1e3).astype(np.float32)
    out_changed, _ = jax.jit(module.apply)({"params": params}, changed, frame_mask)
    np.testing.assert_allclose(out_changed[aux["mask"]], out[aux["mask"]], rtol=1e-5, atol=1e-5)
    out_unmasked, _ = jax.jit(module.apply)({"params": params}, changed)
    assert not np.allclose(out_unmasked[0, :2], out[0, :2])


def test_task_model_loads_and_other_sizes_fail(tmp_path):
    config = _config(32, 2, 1, frames=20, mels=12, patch=4, time_stride=2, freq_stride=4, num_labels=5)
    torch.manual_seed(0)
    classifier = transformers.ASTForAudioClassification(config).eval()
    _randomize(classifier)
    classifier.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unexpected: classifier\.dense\.weight"):
        from_hf(tmp_path)
    module, params = from_hf(tmp_path, tower="audio", dont_load=[r"classifier\..*"])
    spectrograms = _spectrograms(config)
    out, aux = jax.jit(module.apply)({"params": params}, input_values=spectrograms)
    with torch.no_grad():
        ast = classifier.audio_spectrogram_transformer
        theirs = ast(torch.tensor(spectrograms), output_hidden_states=True)
    _assert_matches(aux, out, theirs)
    with pytest.raises(ValueError, match="frequency-major patches need all 20 frames, got 16"):
        jax.jit(module.apply)({"params": params}, input_values=spectrograms[:, :16])
    with pytest.raises(ValueError, match="audio has 11 features per frame, not mels=12"):
        jax.jit(module.apply)({"params": params}, input_values=spectrograms[..., :11])


def test_waveform_through_fbank_matches_hf_extractor_and_model(tmp_path):
    """Raw audio -> mmjax.data.audio.ast_fbank -> port == ASTFeatureExtractor -> ASTModel."""
    config = _config(32, 4, 2, frames=64, mels=32, patch=8, time_stride=6, freq_stride=4)
    hf_model = _save(tmp_path, config)
    module, params = from_hf(tmp_path)
    rng = np.random.default_rng(0)
    waves = (0.3 * rng.standard_normal((2, 8000))).astype(np.float32)  # 0.5 s: 48 frames, zero-padded to 64
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=64)
    features = extractor(list(waves), sampling_rate=16000, return_tensors="pt").input_values
    out, aux = jax.jit(module.apply)(
        {"params": params}, input_values=ast_fbank(waves, num_mel_bins=32, max_length=64)
    )
    with torch.no_grad():
        theirs = hf_model(features, output_hidden_states=True)
    _assert_matches(aux, out, theirs)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_to_hf_round_trip_loads_strictly_and_matches(tmp_path, qkv_bias):
    config = _config(32, 2, 2, frames=22, mels=13, patch=4, time_stride=3, freq_stride=2, qkv_bias=qkv_bias)
    hf_model = _save(tmp_path / "hf", config)
    module, params = from_hf(tmp_path / "hf")
    to_hf(module, params, tmp_path / "out")
    written, saved = (load_file(tmp_path / d / "model.safetensors") for d in ("out", "hf"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in saved.items()}
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is transformers.ASTModel and info == NO_PROBLEMS
    spectrograms = torch.tensor(_spectrograms(config))
    with torch.no_grad():
        ours = exported.eval()(spectrograms, output_hidden_states=True)
        theirs = hf_model(spectrograms, output_hidden_states=True)
    for mine, hf in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        np.testing.assert_allclose(mine.numpy(), hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.pooler_output.numpy(), theirs.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_modules_and_configs_hf_cannot_hold_are_refused_naming_the_field(tmp_path):
    common = dict(width=8, depth=1, num_heads=2, mlp_dim=16, aux_prefix="")
    ast_like = dict(
        time_stride=2, freq_stride=2, freq_major=True, distillation_token=True, pooling="cls_distillation"
    )
    cases = [
        (
            SpectrogramEncoder(4, 4, **common, max_frames=12, mels=8),
            r"audio-spectrogram-transformer .*freq_major",
        ),
        (SpectrogramEncoder(4, 4, **common, **ast_like), r"max_frames=None and mels=None"),
        (
            SpectrogramEncoder(4, 2, **common, **ast_like, max_frames=12, mels=8),
            r"patch_time=4 and patch_freq=2",
        ),
        (
            SpectrogramEncoder(4, 4, **common, **ast_like, max_frames=12, mels=8, pre_ln=False),
            r"pre_ln=False",
        ),
    ]
    for module, message in cases:  # shapes suffice: modules are refused before weights are read
        params = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 12, 8), np.float32))["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _save(tmp_path / "hf", _config(32, 2, 1, frames=20, mels=12, patch=4, time_stride=4, freq_stride=4))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {"hidden_act": "prelu"}))
    with pytest.raises(ValueError, match=r"config\.json: hidden_act='prelu' is not supported"):
        from_hf(tmp_path / "hf")
