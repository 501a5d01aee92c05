"""ELECTRA ports match Hugging Face ElectraModel layer by layer at 1e-5 and export back."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.encoders.text import TextEncoder
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _config(**options):
    defaults = dict(
        vocab_size=97,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=24,
    )
    return transformers.ElectraConfig(**defaults | options)


def _save(path, model):
    """Perturbs every weight of `model` (so no LayerNorm scale is 1, no bias 0), saves it, returns it."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


def _batch(config):
    """Ids padded with pad_token_id to different lengths, their attention mask and token types."""
    rng = np.random.default_rng(0)
    lengths = [9, 4, 7, 1]
    ids = rng.integers(3, config.vocab_size, size=(len(lengths), max(lengths)))
    mask = np.arange(ids.shape[1])[None] < np.array(lengths)[:, None]
    types = rng.integers(0, config.type_vocab_size, size=ids.shape) * mask
    ids = np.where(mask, ids, config.pad_token_id)
    return tuple(a.astype(np.int32) for a in (ids, mask, types))


def _hf_states(model, batch):
    with torch.no_grad():
        inputs = {k: torch.tensor(v) for k, v in zip(NAMES, batch, strict=True)}
        out = model(**inputs, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, hf in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # embedding_size 16 -> hidden_size 32 through embeddings_project
        dict(embedding_size=32, hidden_act="gelu_new", layer_norm_eps=1e-5, type_vocab_size=1),
        dict(hidden_act="relu", is_decoder=True, type_vocab_size=4, num_hidden_layers=3),
        dict(
            embedding_size=24, hidden_size=48, num_attention_heads=6, hidden_act="silu", layer_norm_eps=1e-7
        ),
    ],
)
def test_electra_matches_hf_every_layer_and_exports_back(tmp_path, options):
    config = _config(**options)
    hf_model = _save(tmp_path / "hf", transformers.ElectraModel(config))
    batch = _batch(config)
    assert batch[2].any() or config.type_vocab_size == 1  # token types are read
    module, params = from_hf(tmp_path / "hf")
    assert ("embedding_proj" in params) == (config.embedding_size != config.hidden_size)
    out, aux = module.apply({"params": params}, *batch)
    theirs = _hf_states(hf_model, batch)
    _assert_close(aux["hidden_states"], theirs)  # the first: after embeddings_project
    np.testing.assert_allclose(out, theirs[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], theirs[-1][:, 0], rtol=1e-5, atol=1e-5)  # no pooler
    to_hf(module, params, tmp_path / "out")
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    if config.embedding_size == config.hidden_size:  # no projection: BERT computes it (a pooler is added)
        assert type(exported) is transformers.BertModel
        assert info["missing_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}
    else:
        assert type(exported) is transformers.ElectraModel and not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    _assert_close(_hf_states(exported.eval(), batch), theirs)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_pretraining_checkpoint_loads_by_prefix_with_the_discriminator_head_skipped(tmp_path):
    config = _config()
    pretraining = _save(tmp_path, transformers.ElectraForPreTraining(config))
    with pytest.raises(ValueError, match=r"unexpected: discriminator_predictions\.dense\.weight"):
        from_hf(tmp_path)
    module, params = from_hf(tmp_path, dont_load=[r"discriminator_predictions\..*"])
    batch = _batch(config)
    _, aux = module.apply({"params": params}, *batch)
    _assert_close(aux["hidden_states"], _hf_states(pretraining.electra, batch))


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"is_decoder": True, "add_cross_attention": True}, "add_cross_attention=True"),
        ({"hidden_act": "xielu"}, "hidden_act='xielu' is not supported"),
        ({"num_attention_heads": 5}, "hidden_size=32 is not a multiple of num_attention_heads=5"),
    ],
)
def test_options_transformers_5_does_not_compute_are_refused_by_name(tmp_path, edit, message):
    _save(tmp_path, transformers.ElectraModel(_config(num_hidden_layers=1)))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | edit))
    with pytest.raises(ValueError, match=message):
        from_hf(tmp_path)


TEXT = dict(vocab_size=11, max_len=8, width=8, depth=1, num_heads=2, mlp_dim=16, pre_ln=False, aux_prefix="")


def test_scratch_encoder_with_embedding_dim_exports_as_electra(tmp_path):
    module = TextEncoder(**TEXT | dict(max_len=12, embedding_dim=4, type_vocab_size=3, activation="mish"))
    batch = _batch(_config(vocab_size=11, type_vocab_size=3))
    shapes = jax.eval_shape(module.init, jax.random.key(0), *batch)["params"]
    rng = np.random.default_rng(0)  # random values everywhere: no LayerNorm scale is 1, no bias 0
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32), shapes)
    to_hf(module, params, tmp_path)
    hf_model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf_model) is transformers.ElectraModel and hf_model.config.embedding_size == 4
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    _, aux = module.apply({"params": params}, *batch)
    _assert_close(aux["hidden_states"], _hf_states(hf_model.eval(), batch))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(embedding_dim=4, pooler=True), r"electra checkpoint: pooler=True"),
        (dict(embedding_dim=8), r"electra checkpoint: embedding_dim=8 \(an? electra checkpoint gives None\)"),
        (dict(embedding_dim=4, position_offset=1, pad_token_id=1), r"electra checkpoint: position_offset=1"),
    ],
)
def test_encoders_electra_cannot_hold_are_refused_naming_the_field(tmp_path, fields, message):
    module = TextEncoder(**TEXT | fields)
    params = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
    with pytest.raises(ValueError, match=message):
        to_hf(module, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
