"""Whisper encoder ports match Hugging Face's WhisperEncoder layer by layer at 1e-5, export back to a
WhisperEncoder checkpoint, and serve as an experiment's audio tower with a frame mask."""

import json
from functools import partial

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from mmjax.data.audio import whisper_log_mel
from mmjax.encoders.audio import WhisperEncoder
from mmjax.model import build_model, dummy_batch, pretrained_params
from mmjax.port import from_hf, to_hf
from mmjax.port.pretrained import with_pretrained

pytestmark = pytest.mark.parity
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


def _config(width, heads, layers, mels, positions, act="gelu", **extra) -> transformers.WhisperConfig:
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
        **extra,
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
    "width, heads, layers, mels, positions, act, extra",
    [
        (32, 2, 1, 80, 12, "gelu", {}),
        (48, 4, 2, 128, 20, "gelu_new", {}),
        (64, 4, 3, 24, 15, "relu", {}),
        (40, 2, 2, 80, 25, "silu", {"scale_embedding": True}),  # scales the decoder's embeddings only
    ],
)
def test_whisper_encoder_matches_hf_every_layer(tmp_path, width, heads, layers, mels, positions, act, extra):
    hf_model = _save(tmp_path, _config(width, heads, layers, mels, positions, act, **extra))
    module, params = from_hf(tmp_path)
    features = _features(mels, 2 * positions)
    out, aux = jax.jit(module.apply)({"params": params}, input_features=features)
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
    out, aux = jax.jit(module.apply)({"params": params}, input_features=features)
    with torch.no_grad():
        theirs = short.get_encoder()(torch.tensor(features), output_hidden_states=True)
    _assert_matches(aux, out, theirs)
    with pytest.raises(ValueError, match=r"41 frames, more than 2 \* max_positions=40"):
        jax.jit(module.apply)({"params": params}, input_features=_features(16, 41))


def test_task_model_loads_without_the_decoder(tmp_path):
    hf_model = _save(tmp_path, _config(32, 2, 2, mels=80, positions=10), task_model=True)
    module, params = from_hf(tmp_path)
    assert set(params) == {"conv1", "conv2", "position_embedding", "encoder"}
    initial = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 80, 2), np.float32))[
        "params"
    ]  # HF's sinusoids
    np.testing.assert_allclose(initial["position_embedding"], params["position_embedding"], rtol=0, atol=1e-5)
    features = _features(80, 20)
    out, aux = jax.jit(module.apply)({"params": params}, input_features=features)
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
    out, aux = jax.jit(module.apply)({"params": params}, input_features=ours)
    with torch.no_grad():
        theirs = hf_model.get_encoder()(features, output_hidden_states=True)
    _assert_matches(aux, out, theirs)


def test_frame_mask_leaves_padding_out(tmp_path):
    """An mmjax feature (HF's encoder ignores attention_mask): token t is valid where frame 2t is; padded
    frames change no valid token nor the pooled mean; an all-valid mask is HF's computation."""
    hf_model = _save(tmp_path, _config(32, 2, 2, mels=16, positions=10))
    module, params = from_hf(tmp_path)
    features = _features(16, 20)
    out, aux = jax.jit(module.apply)({"params": params}, features)
    out_ones, _ = jax.jit(module.apply)({"params": params}, features, np.ones((2, 20), bool))
    np.testing.assert_allclose(out_ones, out, rtol=1e-6, atol=1e-6)
    mask = np.arange(20)[None] < np.array([[20], [13]])
    out, aux = jax.jit(module.apply)({"params": params}, features, mask)
    token_mask = np.arange(10)[None] < np.array([[10], [7]])  # HF's lengths: (13 - 1) // 2 + 1 = 7
    np.testing.assert_array_equal(aux["mask"], token_mask)
    with torch.no_grad():
        theirs = hf_model.get_encoder()(torch.tensor(features)).last_hidden_state.numpy()
    np.testing.assert_allclose(out[0], theirs[0], rtol=1e-5, atol=1e-5)  # the unpadded example
    np.testing.assert_allclose(aux["pooled"][1], out[1, :7].mean(axis=0), rtol=1e-5, atol=1e-5)
    changed = np.where(mask[:, None, :], features, 1e3).astype(np.float32)
    out_changed, aux_changed = jax.jit(module.apply)({"params": params}, changed, mask)
    np.testing.assert_allclose(out_changed[token_mask], out[token_mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux_changed["pooled"], aux["pooled"], rtol=1e-5, atol=1e-5)


def test_ported_whisper_is_an_experiment_audio_tower_with_a_mask(tmp_path):
    """Regression: MultimodalModel passes batch["audio_mask"] to the audio encoder, and batches hold
    features [B, T, F], not HF's [B, n_mels, T]."""
    _save(tmp_path, _config(32, 2, 2, mels=8, positions=12))
    audio = dict(frames=24, mels=8, patch_time=8, patch_freq=8, init_from=f"hf:{tmp_path}")
    cfg = ml_collections.ConfigDict(
        dict(
            size="tiny",
            dropout=0.0,
            pre_ln=True,
            head_dropout=0.0,
            audio=audio,
            fusion=dict(name="early", depth=1),
        )
    )
    streams, tasks = {"audio": "audio"}, {"digit": 10}
    model = build_model(cfg, tasks, streams)
    features = np.random.default_rng(0).normal(size=(2, 24, 8)).astype(np.float32)
    mask = np.arange(24)[None] < np.array([[24], [15]])
    batch = dummy_batch(cfg, tasks, 2, streams) | {"audio": features, "audio_mask": mask}
    params = jax.jit(partial(model.init, train=False))(jax.random.key(0), batch)["params"]
    params = with_pretrained(params, pretrained_params(cfg, streams))
    outputs, aux = jax.jit(partial(model.apply, train=False))({"params": params}, batch)
    assert outputs["digit"].shape == (2, 10) and np.isfinite(outputs["digit"]).all()
    module, ported = from_hf(tmp_path)
    _, expected = jax.jit(module.apply)({"params": ported}, np.swapaxes(features, 1, 2), mask)
    np.testing.assert_array_equal(aux["aud/mask"], mask[:, ::2])
    np.testing.assert_allclose(aux["aud/tokens"], expected["tokens"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["aud/pooled"], expected["pooled"], rtol=1e-5, atol=1e-5)


def test_to_hf_writes_a_whisper_encoder_checkpoint(tmp_path):
    """Export writes what HF's WhisperEncoder saves: it loads strictly and runs like the original encoder."""
    hf_model = _save(
        tmp_path / "hf", _config(32, 2, 2, mels=16, positions=10, act="gelu_new"), task_model=True
    )
    module, params = from_hf(tmp_path / "hf")
    to_hf(module, params, tmp_path / "out")
    written, saved = (load_file(tmp_path / d / "model.safetensors") for d in ("out", "hf"))
    encoder_keys = {k.removeprefix("model.encoder."): v.shape for k, v in saved.items() if ".encoder." in k}
    assert {k: v.shape for k, v in written.items()} == encoder_keys
    exported, info = HFWhisperEncoder.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info == NO_PROBLEMS
    features = torch.tensor(_features(16, 20))
    with torch.no_grad():
        ours = exported.eval()(features, output_hidden_states=True)
        theirs = hf_model.get_encoder()(features, output_hidden_states=True)
    for mine, hf in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        np.testing.assert_allclose(mine.numpy(), hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
    transformers.WhisperModel(exported.config)  # the config also builds a model with a decoder
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_modules_and_configs_hf_cannot_hold_are_refused_naming_the_field(tmp_path):
    module = WhisperEncoder(width=8, depth=1, num_heads=2, mlp_dim=16, max_positions=4, layer_norm_eps=1e-6)
    params = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3, 8), np.float32))["params"]
    with pytest.raises(
        ValueError, match=r"whisper checkpoint: layer_norm_eps=1e-06 \(a whisper checkpoint gives 1e-05\)"
    ):
        to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _save(tmp_path / "hf", _config(32, 2, 1, mels=8, positions=4))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {"activation_function": "prelu"}))
    with pytest.raises(ValueError, match=r"config\.json: activation_function='prelu' is not supported"):
        from_hf(tmp_path / "hf")
