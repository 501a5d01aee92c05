"""wav2vec2, HuBERT and WavLM ports match HF layer by layer at 1e-5 on padded batches; to_hf round trips."""

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.encoders.wav2vec2 import Wav2Vec2Encoder
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity

MODELS = {
    "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
    "hubert": (transformers.HubertConfig, transformers.HubertModel),
    "wavlm": (transformers.WavLMConfig, transformers.WavLMModel),
}
TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8))
TINY |= dict(conv_kernel=(10, 3), conv_stride=(5, 2))
LENGTHS = (400, 331, 257)  # samples per example: 39, 32 and 24 frames
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
CONFIGS = {  # together: every option of the three families
    "wav2vec2-group-post-ln": (
        "wav2vec2",
        dict(num_hidden_layers=2, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2),
    ),
    "wav2vec2-layer-stable-adapter": (
        "wav2vec2",
        dict(
            num_hidden_layers=1,
            feat_extract_norm="layer",
            conv_bias=True,
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=3,
            num_conv_pos_embedding_groups=4,
            feat_extract_activation="relu",
            hidden_act="gelu_new",
            layer_norm_eps=1e-6,
            mask_time_prob=0.0,
            add_adapter=True,
            output_hidden_size=16,
            num_adapter_layers=2,
        ),
    ),
    "hubert-batch-norm-no-proj-ln": (
        "hubert",
        dict(
            num_hidden_layers=2,
            feat_proj_layer_norm=False,
            conv_pos_batch_norm=True,
            num_conv_pos_embeddings=5,
            num_conv_pos_embedding_groups=2,
            hidden_act="relu",
        ),
    ),
    "hubert-layer-stable": (
        "hubert",
        dict(
            num_hidden_layers=1,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=1,
            mask_time_prob=0.0,
            layer_norm_eps=1e-6,
        ),
    ),
    "wavlm-group-post-ln": (
        "wavlm",
        dict(
            num_hidden_layers=2,
            num_buckets=8,
            max_bucket_distance=20,
            num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2,
        ),
    ),
    "wavlm-layer-stable-adapter": (
        "wavlm",
        dict(
            num_hidden_layers=2,
            do_stable_layer_norm=True,
            feat_extract_norm="layer",
            conv_bias=True,
            num_buckets=12,
            max_bucket_distance=30,
            num_conv_pos_embeddings=3,
            num_conv_pos_embedding_groups=4,
            hidden_act="gelu_new",
            add_adapter=True,
            num_adapter_layers=1,
            adapter_kernel_size=5,
            adapter_stride=3,
        ),
    ),
}


def _perturb(model):
    """Noise on every weight (LayerNorm, key biases, gates too) and random BatchNorm statistics."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model.eval()


def _hf_model(kind, config, model_cls=None):
    torch.manual_seed(0)
    config_cls, base_cls = MODELS[kind]
    return _perturb((model_cls or base_cls)(config_cls(**TINY | config)))


def _batch(seed=0):
    """Waveforms [3, 400] with their sample mask; padded samples hold noise, which HF's GroupNorm sees."""
    waveform = np.random.default_rng(seed).normal(size=(len(LENGTHS), max(LENGTHS))).astype(np.float32)
    mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    return waveform, mask


def _run_hf(model, waveform, mask):
    with torch.no_grad():
        mask = None if mask is None else torch.tensor(mask)
        return model(torch.tensor(waveform), attention_mask=mask, output_hidden_states=True)


def _assert_matches(aux, theirs):
    """Every hidden state, the output and the extracted features agree at all positions, padded ones too:
    HF zeroes padded frames before the position conv and masks them as keys, as mmjax does."""
    assert len(aux["hidden_states"]) == len(theirs.hidden_states)
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["tokens"], theirs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
    if "extract_features" in theirs:  # HubertModel does not return them
        np.testing.assert_allclose(aux["extract_features"], theirs.extract_features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_hf_every_layer_on_padded_batches(tmp_path, name):
    kind, config = CONFIGS[name]
    hf_model = _hf_model(kind, config)
    hf_model.save_pretrained(tmp_path)
    module, variables = from_hf(tmp_path)
    assert module.variant == kind and ("batch_stats" in variables) == module.conv_pos_batch_norm
    variables = variables if module.conv_pos_batch_norm else {"params": variables}
    waveform, mask = _batch()
    _, aux = module.apply(variables, input_values=waveform, attention_mask=mask)
    theirs = _run_hf(hf_model, waveform, mask)
    _assert_matches(aux, theirs)
    frames = theirs.last_hidden_state.shape[1]
    hf_mask = hf_model._get_feature_vector_attention_mask(frames, torch.tensor(mask)).numpy()
    np.testing.assert_array_equal(aux["mask"], hf_mask)
    assert hf_mask.sum(1).tolist() != [frames] * len(LENGTHS)  # padding reaches the frames
    hidden = theirs.last_hidden_state.numpy()
    pooled = (hidden * hf_mask[..., None]).sum(1) / hf_mask.sum(1, keepdims=True)
    np.testing.assert_allclose(aux["pooled"], pooled, rtol=1e-5, atol=1e-5)
    _, aux = module.apply(variables, waveform)  # no mask: every frame is valid
    _assert_matches(aux, _run_hf(hf_model, waveform, None))
    assert aux["mask"].all()


def test_old_task_checkpoint_loads(tmp_path):
    """A Wav2Vec2ForCTC checkpoint with torch's old weight-norm names (weight_g, weight_v): the `wav2vec2.`
    prefix is stripped, the CTC head dropped, and transformers reads the same weights."""
    kind, config = CONFIGS["wav2vec2-group-post-ln"]
    hf_model = _hf_model(kind, config, transformers.Wav2Vec2ForCTC)
    hf_model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    old = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    renamed = {}
    for key, value in state.items():
        for new, legacy in old.items():
            key = key.replace(new, legacy)
        renamed[key] = value
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in renamed and "lm_head.weight" in renamed
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    module, params = from_hf(tmp_path)
    reloaded = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    waveform, mask = _batch(1)
    _, aux = module.apply({"params": params}, waveform, mask)
    for model in (hf_model, reloaded):
        _assert_matches(aux, _run_hf(model.wav2vec2, waveform, mask))


@pytest.mark.parametrize(
    "name", ["wav2vec2-group-post-ln", "hubert-batch-norm-no-proj-ln", "wavlm-layer-stable-adapter"]
)
def test_hf_round_trip_loads_strictly_and_matches(tmp_path, name):
    kind, config = CONFIGS[name]
    original = _hf_model(kind, config)
    original.save_pretrained(tmp_path / "hf")
    module, variables = from_hf(tmp_path / "hf")
    to_hf(module, variables, tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in saved.items()}
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is type(original) and info == NO_PROBLEMS
    waveform, mask = _batch(2)
    theirs, again = _run_hf(original, waveform, mask), _run_hf(exported.eval(), waveform, mask)
    for ours, hf in zip(again.hidden_states, theirs.hidden_states, strict=True):
        np.testing.assert_allclose(ours.numpy(), hf.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
    module_again, variables_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, variables_again, variables)


def test_scratch_wavlm_runs_the_same_in_transformers(tmp_path):
    kind, config = CONFIGS["wavlm-group-post-ln"]  # its shapes, so the compiled ops are reused
    module = Wav2Vec2Encoder(
        conv_dim=TINY["conv_dim"],
        conv_kernel=TINY["conv_kernel"],
        conv_stride=TINY["conv_stride"],
        width=TINY["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        mlp_dim=TINY["intermediate_size"],
        num_conv_pos_embeddings=config["num_conv_pos_embeddings"],
        num_conv_pos_embedding_groups=config["num_conv_pos_embedding_groups"],
        masked_spec_embed=True,
        variant=kind,
        num_buckets=config["num_buckets"],
        max_bucket_distance=config["max_bucket_distance"],
        aux_prefix="",
    )
    waveform, mask = _batch(3)
    rng = np.random.default_rng(0)  # random params: no LayerNorm scale is 1, no bias 0
    shapes = jax.eval_shape(module.init, jax.random.key(0), waveform, mask)["params"]
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, size=s.shape).astype(np.float32), shapes)
    to_hf(module, params, tmp_path)
    hf_model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf_model) is transformers.WavLMModel and info == NO_PROBLEMS
    _, aux = module.apply({"params": params}, waveform, mask)
    _assert_matches(aux, _run_hf(hf_model.eval(), waveform, mask))


def test_unsupported_options_are_refused_naming_the_field(tmp_path):
    kind, config = CONFIGS["hubert-layer-stable"]
    _hf_model(kind, config | dict(adapter_attn_dim=4)).save_pretrained(tmp_path / "mms")
    with pytest.raises(ValueError, match="adapter_attn_dim=4"):
        from_hf(tmp_path / "mms")
    tiny = dict(conv_dim=(4,), conv_kernel=(4,), conv_stride=(2,), width=8, depth=1, num_heads=2, mlp_dim=8)
    tiny |= dict(num_conv_pos_embeddings=2, num_conv_pos_embedding_groups=2)
    waveform = np.zeros((1, 16), np.float32)
    cases = [
        (Wav2Vec2Encoder(**tiny, conv_pos_batch_norm=True), r"wav2vec2 .*conv_pos_batch_norm=True"),
        (Wav2Vec2Encoder(**tiny, feat_proj_layer_norm=False), r"feat_proj_layer_norm=False"),
        (Wav2Vec2Encoder(**tiny, variant="hubert", add_adapter=True), r"hubert .*add_adapter=True"),
    ]
    for module, message in cases:  # shapes suffice: modules are refused before weights are read
        variables = jax.eval_shape(module.init, jax.random.key(0), waveform)
        with pytest.raises(ValueError, match=message):
            to_hf(module, variables if len(variables) > 1 else variables["params"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    wavlm = Wav2Vec2Encoder(**tiny, variant="wavlm", scan=True)
    with pytest.raises(ValueError, match="variant='wavlm' supports neither scan"):
        jax.eval_shape(wavlm.init, jax.random.key(0), waveform)
    with pytest.raises(ValueError, match="fewer than the 4 one frame needs"):
        jax.eval_shape(wavlm.init, jax.random.key(0), waveform[:, :3])
