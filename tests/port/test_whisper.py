"""Whisper encoder ports match Hugging Face's WhisperEncoder layer by layer at 1e-5."""

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.data.audio import whisper_log_mel
from mmjax.port import from_hf

pytestmark = pytest.mark.parity


def _config(width, heads, layers, mels, positions, act="gelu") -> transformers.WhisperConfig:
    """A tiny WhisperConfig (a one-layer decoder over 64 tokens) on [B, mels, 2 * positions] features."""
    return transformers.WhisperConfig(
        d_model=width,
        encoder_attention_heads=heads,
        encoder_layers=layers,
        encoder_ffn_dim=2 * width + 3,
        num_mel_bins=mels,
        max_source_positions=positions,
        activation_function=act,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=16,
        max_target_positions=8,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def _save(tmp_path, config, task_model=False) -> torch.nn.Module:
    """A random HF Whisper model (LayerNorms random too) saved to tmp_path, in eval mode."""
    torch.manual_seed(0)
    model_class = transformers.WhisperForConditionalGeneration if task_model else transformers.WhisperModel
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.5)
    model.save_pretrained(tmp_path)
    return model


def _features(mels, frames, batch=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, mels, frames)).astype(np.float32)


def _assert_matches(aux, out, theirs) -> None:
    """Every hidden state (HF's last one is after the final LayerNorm) and the output."""
    assert len(aux["hidden_states"]) == len(theirs.hidden_states)
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "width, heads, layers, mels, positions, act",
    [
        (32, 2, 1, 80, 12, "gelu"),
        (48, 4, 2, 128, 20, "gelu_new"),
        (64, 4, 3, 24, 15, "relu"),
        (40, 2, 2, 80, 25, "gelu"),
    ],
)
def test_whisper_encoder_matches_hf_every_layer(tmp_path, width, heads, layers, mels, positions, act):
    hf_model = _save(tmp_path, _config(width, heads, layers, mels, positions, act))
    module, params = from_hf(tmp_path)
    features = _features(mels, 2 * positions)
    out, aux = module.apply({"params": params}, input_features=features)
    with torch.no_grad():
        theirs = hf_model.get_encoder()(torch.tensor(features), output_hidden_states=True)
    assert out.shape == (2, positions, width) and aux["mask"].shape == (2, positions) and aux["mask"].all()
    assert len(aux["hidden_states"]) == layers + 1
    _assert_matches(aux, out, theirs)


def test_shorter_inputs_use_the_first_positions(tmp_path):
    """HF only takes 2 * max_source_positions frames; the port also takes fewer, like an HF encoder built for
    that length with the first rows of the position table. Longer inputs fail."""
    config = _config(32, 2, 2, mels=16, positions=20)
    hf_model = _save(tmp_path / "full", config)
    module, params = from_hf(tmp_path / "full")
    short = transformers.WhisperModel(_config(32, 2, 2, mels=16, positions=12)).eval()
    state = hf_model.state_dict()
    state["encoder.embed_positions.weight"] = state["encoder.embed_positions.weight"][:12]
    short.load_state_dict(state)
    features = _features(16, 24)
    out, aux = module.apply({"params": params}, input_features=features)
    with torch.no_grad():
        theirs = short.get_encoder()(torch.tensor(features), output_hidden_states=True)
    _assert_matches(aux, out, theirs)
    with pytest.raises(ValueError, match=r"41 frames, more than 2 \* max_positions=40"):
        module.apply({"params": params}, input_features=_features(16, 41))


def test_task_model_loads_without_the_decoder(tmp_path):
    hf_model = _save(tmp_path, _config(32, 2, 2, mels=80, positions=10), task_model=True)
    module, params = from_hf(tmp_path)
    assert set(params) == {"conv1", "conv2", "position_embedding", "encoder"}
    initial = module.init(jax.random.key(0), np.zeros((1, 80, 2), np.float32))["params"]  # HF's sinusoids
    np.testing.assert_allclose(initial["position_embedding"], params["position_embedding"], rtol=0, atol=1e-5)
    features = _features(80, 20)
    out, aux = module.apply({"params": params}, input_features=features)
    with torch.no_grad():
        theirs = hf_model.get_encoder()(torch.tensor(features), output_hidden_states=True)
    _assert_matches(aux, out, theirs)
    with pytest.raises(ValueError, match="hold the towers"):
        from_hf(tmp_path, tower="text")


def test_waveform_through_log_mel_matches_hf_extractor_and_model(tmp_path):
    """Raw audio -> mmjax.data.audio.whisper_log_mel -> port == WhisperFeatureExtractor -> Whisper encoder,
    on 1 s chunks (100 frames, 50 positions)."""
    hf_model = _save(tmp_path, _config(32, 2, 2, mels=80, positions=50))
    module, params = from_hf(tmp_path)
    rng = np.random.default_rng(0)
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000)]  # 9000: zero-padded
    extractor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    features = extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
    batch = np.stack([np.pad(w, (0, 16000 - len(w))) for w in waves])
    ours = whisper_log_mel(batch, n_mels=80, chunk_samples=16000)
    np.testing.assert_allclose(ours, features.numpy(), rtol=1e-5, atol=1e-5)
    out, aux = module.apply({"params": params}, input_features=ours)
    with torch.no_grad():
        theirs = hf_model.get_encoder()(features, output_hidden_states=True)
    _assert_matches(aux, out, theirs)
