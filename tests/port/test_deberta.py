"""DeBERTa and DeBERTa-v2/v3 ports match Hugging Face PyTorch layer by layer at 1e-5; to_hf round-trips."""

from functools import partial

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from mmjax.encoders.deberta import DebertaEncoder, log_buckets
from mmjax.port import deberta, from_hf, to_hf

pytestmark = pytest.mark.parity

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
V1 = (transformers.DebertaConfig, transformers.DebertaModel)
V2 = (transformers.DebertaV2Config, transformers.DebertaV2Model)
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}

# Together these exercise every option that changes weights or computation (lengths 9, 4, 7, 1 and
# max_position_embeddings 32 or 16: relative distances up to 8, clipped and bucketed).
CONFIGS = {
    # absolute positions only; pos_att_type still sets the scale (sqrt(3 head_dim)), as in HF
    "v2_absolute": (V2, dict(pos_att_type=["c2p", "p2c"], layer_norm_eps=1e-7)),
    # DeBERTa-v3: shared position projections, log buckets, LayerNorm-ed relative embeddings, old string form
    "v2_v3_like": (
        V2,
        dict(
            relative_attention=True,
            pos_att_type="p2c|c2p",
            share_att_key=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
        ),
    ),
    # c2p only with its own pos_key_proj, clipped distances, grouped conv, token types, embed_proj
    "v2_c2p_conv": (
        V2,
        dict(
            relative_attention=True,
            pos_att_type=["c2p"],
            max_relative_positions=4,
            conv_kernel_size=3,
            conv_groups=2,
            conv_act="gelu",
            type_vocab_size=3,
            embedding_size=24,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
        ),
    ),
    # p2c only with its own pos_query_proj, buckets narrower than max_relative_positions, default conv
    "v2_p2c_conv": (
        V2,
        dict(
            relative_attention=True,
            pos_att_type=["p2c"],
            position_buckets=6,
            max_relative_positions=10,
            norm_rel_ebd="layer_norm",
            conv_kernel_size=5,
            attention_head_size=16,
            max_position_embeddings=16,
            hidden_act="relu",
        ),
    ),
    "v1_absolute": (V1, dict(type_vocab_size=2)),
    "v1_talking_head": (
        V1,
        dict(relative_attention=True, pos_att_type="c2p|p2c", talking_head=True, max_relative_positions=5),
    ),
    "v1_p2c": (
        V1,
        dict(
            relative_attention=True,
            pos_att_type=["p2c"],
            position_biased_input=False,
            embedding_size=24,
            hidden_act="relu",
            layer_norm_eps=1e-5,
        ),
    ),
}


def _hf_model(name, model_cls=None, seed=0):
    """A random tiny HF model with every weight (LayerNorms and biases too) perturbed."""
    (config_cls, default_cls), fields = CONFIGS[name]
    torch.manual_seed(seed)
    config = config_cls(**(TINY | dict(max_position_embeddings=32) | fields))
    model = (model_cls or default_cls)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _batch(config, seed=0):
    """Ids padded to different lengths, their attention mask and token types."""
    rng = np.random.default_rng(seed)
    lengths = [9, 4, 7, 1]
    ids = rng.integers(3, config.vocab_size, size=(len(lengths), max(lengths)))
    mask = np.arange(ids.shape[1])[None] < np.array(lengths)[:, None]
    types = rng.integers(0, max(config.type_vocab_size, 1), size=ids.shape) * mask
    return np.where(mask, ids, 0).astype(np.int32), mask.astype(np.int32), types.astype(np.int32)


def _run_hf(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids).long(),
            attention_mask=torch.tensor(mask).long(),
            token_type_ids=torch.tensor(types).long(),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states]


def _assert_matches(module, params, hf_hidden, batch):
    """Every hidden state (padded positions too), tokens and pooled ([CLS]) agree at 1e-5."""
    out, aux = module.apply({"params": params}, *batch)
    assert len(aux["hidden_states"]) == len(hf_hidden) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], hf_hidden, strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, hf_hidden[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], hf_hidden[-1][:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(aux["mask"], batch[1].astype(bool))
    return aux


@pytest.mark.parametrize("name", list(CONFIGS))
def test_deberta_matches_hf_every_layer(tmp_path, name):
    hf_model = _hf_model(name)
    hf_model.save_pretrained(tmp_path)
    module, params = from_hf(tmp_path)
    assert module.version == (1 if hf_model.config.model_type == "deberta" else 2)
    batch = _batch(hf_model.config)
    _assert_matches(module, params, _run_hf(hf_model, *batch), batch)


def test_log_buckets_match_hf():
    relative = torch.arange(-300, 301)[:, None]
    for buckets, max_position in [(8, 32), (6, 10), (256, 512), (64, 128), (32, 4096), (7, 100)]:
        theirs = make_log_bucket_position(relative, buckets, max_position).long().numpy()
        np.testing.assert_array_equal(log_buckets(relative.numpy(), buckets, max_position), theirs)


def test_task_checkpoint_prefix_heads_and_unused_position_table_are_dropped(tmp_path):
    classifier = _hf_model("v2_v3_like", transformers.DebertaV2ForSequenceClassification)
    classifier.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert {"pooler.dense.weight", "classifier.weight", "deberta.encoder.rel_embeddings.weight"} <= set(state)
    # older checkpoints hold a position table that position_biased_input=False never reads (HF skips it)
    state["deberta.embeddings.position_embeddings.weight"] = np.ones((32, 32), np.float32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    module, params = from_hf(tmp_path)
    batch = _batch(classifier.config)
    _assert_matches(module, params, _run_hf(classifier.deberta, *batch), batch)


@pytest.mark.parametrize("name", ["v2_v3_like", "v2_c2p_conv", "v1_talking_head"])
def test_hf_round_trip_loads_strictly_and_matches(tmp_path, name):
    original = _hf_model(name)
    original.save_pretrained(tmp_path / "hf")
    module, params = from_hf(tmp_path / "hf")
    to_hf(module, params, tmp_path / "out")
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is type(original) and info == NO_PROBLEMS
    batch = _batch(original.config)
    for ours, theirs in zip(_run_hf(exported, *batch), _run_hf(original, *batch), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def _random_params(module, *inputs):
    """Random params of `module`'s shapes (numpy: no compile): LayerNorm scales near 1, all else near 0."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.default_rng(1)
    flat = traverse_util.flatten_dict(shapes)
    return traverse_util.unflatten_dict(
        {k: (k[-1] == "scale") + 0.1 * rng.standard_normal(s.shape, np.float32) for k, s in flat.items()}
    )


SCRATCH = dict(vocab_size=50, max_len=16, width=32, depth=2, num_heads=2, mlp_dim=40, aux_prefix="")


def test_scratch_encoder_runs_the_same_in_transformers(tmp_path):
    module = DebertaEncoder(
        **SCRATCH,
        position_buckets=4,
        share_att_key=False,
        conv_kernel_size=3,
        type_vocab_size=2,
        position_biased_input=True,
    )
    config = transformers.DebertaV2Config(vocab_size=50, type_vocab_size=2)
    batch = _batch(config)
    params = _random_params(module, *batch)
    to_hf(module, params, tmp_path)
    hf_model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf_model) is transformers.DebertaV2Model and info == NO_PROBLEMS
    _assert_matches(module, params, _run_hf(hf_model.eval(), *batch), batch)


def test_speed_levers_keep_the_function():
    module = DebertaEncoder(**(SCRATCH | dict(depth=1)), conv_kernel_size=3, position_buckets=4)
    batch = _batch(transformers.DebertaV2Config(vocab_size=50))
    params = _random_params(module, *batch)
    valid = batch[1].astype(bool)
    reference = jax.jit(module.apply)({"params": params}, *batch)[0]
    for levers in [dict(remat="full"), dict(attention="fused")]:
        out = jax.jit(module.clone(**levers).apply)({"params": params}, *batch)[0]
        np.testing.assert_allclose(out[valid], reference[valid], rtol=1e-5, atol=1e-5)
    train = jax.jit(partial(module.clone(dropout_rate=0.1, remat="dots").apply, deterministic=False))
    trained = train({"params": params}, *batch, rngs={"dropout": jax.random.key(2, impl="rbg")})[0]
    assert np.isfinite(trained).all() and not np.allclose(trained, reference)
    half = jax.jit(module.clone(dtype="bfloat16").apply)({"params": params}, *batch)[0]
    assert half.dtype == np.float32 and np.isfinite(half).all()
    with pytest.raises(ValueError, match=r"scan=True is not supported"):
        module.clone(scan=True).apply({"params": params}, *batch)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(model_type="deberta-v2", attention_head_size=8), r"attention_head_size=8 .* hidden_size=32"),
        (dict(model_type="deberta-v2", conv_kernel_size=2), r"conv_kernel_size=2 must be odd"),
        (
            dict(model_type="deberta-v2", conv_kernel_size=3, conv_act="prelu"),
            r"conv_act='prelu' is not supported",
        ),
        (dict(model_type="deberta", hidden_act="xielu"), r"hidden_act='xielu' is not supported"),
        (dict(model_type="deberta", pos_att_type="c2p|p2p"), r"pos_att_type=\('c2p', 'p2p'\)"),
    ],
)
def test_configs_deberta_cannot_run_are_refused_naming_the_field(fields, message):
    config = TINY | dict(max_position_embeddings=32) | fields
    with pytest.raises(ValueError, match=message):
        module = deberta.encoder_from_config(config, set(), "text")
        jax.eval_shape(module.init, jax.random.key(0), *deberta.dummy_inputs(config, "text"))


def test_modules_hf_cannot_hold_are_refused_naming_the_field(tmp_path):
    ids = np.zeros((1, 3), np.int32)
    cases = [
        (
            DebertaEncoder(**SCRATCH, embedding_dim=32),
            r"embedding_dim=32 \(a deberta-v2 checkpoint gives None\)",
        ),
        (DebertaEncoder(**SCRATCH, dtype="bfloat16"), r"dtype='bfloat16'"),
    ]
    for module, message in cases:
        params = jax.eval_shape(module.init, jax.random.key(0), ids)["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    with pytest.raises(ValueError, match=r"share_att_key=True is a DeBERTa-v2 option"):
        v1 = DebertaEncoder(**SCRATCH, version=1, position_buckets=-1, rel_embedding_ln=False)
        jax.eval_shape(v1.init, jax.random.key(0), ids)
    assert not (tmp_path / "out").exists()
