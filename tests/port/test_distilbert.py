"""DistilBERT ports match Hugging Face DistilBertModel layer by layer at 1e-5 and export back."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.encoders.text import TextEncoder
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity


def _config(**options):
    defaults = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=24)
    return transformers.DistilBertConfig(**defaults | options)


def _save(path, model, keep=()):
    """Perturbs every weight of `model` but those named in `keep` (so no LayerNorm scale is 1, no bias 0),
    saves it and returns it in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in keep:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


def _batch(config):
    """Ids padded with pad_token_id to different lengths and their attention mask."""
    rng = np.random.default_rng(0)
    lengths = [9, 4, 7, 1]
    ids = rng.integers(3, config.vocab_size, size=(len(lengths), max(lengths)))
    mask = np.arange(ids.shape[1])[None] < np.array(lengths)[:, None]
    return np.where(mask, ids, config.pad_token_id).astype(np.int32), mask.astype(np.int32)


def _hf_states(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), torch.tensor(mask), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def _assert_matches_hf(path, hf_model, ids, mask):
    """Every hidden state (padded positions too), the output and the pooled first token agree at 1e-5."""
    module, params = from_hf(path)
    out, aux = module.apply({"params": params}, input_ids=ids, attention_mask=mask)
    theirs = _hf_states(hf_model, ids, mask)
    assert len(aux["hidden_states"]) == len(theirs) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs, strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], theirs[-1][:, 0], rtol=1e-5, atol=1e-5)
    return module, params


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="gelu"),
        dict(activation="relu", sinusoidal_pos_embds=True, n_layers=3),
        dict(activation="gelu_new", dim=48, n_heads=6, pad_token_id=2),
        dict(activation="silu", sinusoidal_pos_embds=True, dim=40, n_heads=5, n_layers=1),
    ],
)
def test_distilbert_matches_hf_every_layer_and_exports_back(tmp_path, options):
    config = _config(**options)
    sinusoidal = config.sinusoidal_pos_embds  # keep HF's sinusoidal table as it initialised it
    keep = ("embeddings.position_embeddings.weight",) if sinusoidal else ()
    hf_model = _save(tmp_path / "hf", transformers.DistilBertModel(config), keep)
    ids, mask = _batch(config)
    module, params = _assert_matches_hf(tmp_path / "hf", hf_model, ids, mask)
    table = hf_model.embeddings.position_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(params["position_embedding"]["embedding"], table)
    if sinusoidal:
        assert np.array_equal(table[1, :2], np.float32([np.sin(1.0), np.cos(1.0)]))
    to_hf(module, params, tmp_path / "out")
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is transformers.DistilBertModel
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    for ours, hf in zip(_hf_states(exported.eval(), ids, mask), _hf_states(hf_model, ids, mask), strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_task_checkpoint_loads_by_prefix_with_its_head_skipped(tmp_path):
    config = _config(num_labels=3)
    classifier = _save(tmp_path, transformers.DistilBertForSequenceClassification(config))
    with pytest.raises(ValueError, match=r"unexpected: pre_classifier\.weight"):
        from_hf(tmp_path)
    module, params = from_hf(tmp_path, dont_load=[r"(pre_)?classifier\..*"])
    ids, mask = _batch(config)
    out, _ = module.apply({"params": params}, ids, mask)
    np.testing.assert_allclose(out, _hf_states(classifier.distilbert, ids, mask)[-1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="token_type_ids given but type_vocab_size=0"):
        module.apply({"params": params}, ids, mask, np.zeros_like(ids))


def test_scratch_encoder_without_token_types_exports_as_distilbert(tmp_path):
    module = TextEncoder(
        vocab_size=97,
        max_len=24,
        width=32,
        depth=2,
        num_heads=4,
        mlp_dim=37,
        type_vocab_size=0,
        pre_ln=False,
        activation="gelu_new",
        layer_norm_eps=1e-12,
        aux_prefix="",
    )
    ids, mask = _batch(_config())
    shapes = jax.eval_shape(module.init, jax.random.key(0), ids, mask)["params"]
    rng = np.random.default_rng(0)  # random values everywhere: no LayerNorm scale is 1, no bias 0
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32), shapes)
    to_hf(module, params, tmp_path)
    hf_model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(hf_model) is transformers.DistilBertModel
    _, aux = module.apply({"params": params}, ids, mask)
    for ours, hf in zip(aux["hidden_states"], _hf_states(hf_model, ids, mask), strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(pooler=True), r"distilbert checkpoint: pooler=True"),
        (dict(layer_norm_eps=1e-6), r"distilbert checkpoint: layer_norm_eps=1e-06 \(a distilbert .* 1e-12\)"),
    ],
)
def test_encoders_distilbert_cannot_hold_are_refused_naming_the_field(tmp_path, fields, message):
    text = dict(vocab_size=11, max_len=8, width=8, depth=1, num_heads=2, mlp_dim=16, pre_ln=False)
    module = TextEncoder(**text | dict(type_vocab_size=0, layer_norm_eps=1e-12) | fields)
    params = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
    with pytest.raises(ValueError, match=message) as error:
        to_hf(module, params, tmp_path / "out")
    assert "bert checkpoint: type_vocab_size=0" in str(error.value)  # BERT and ELECTRA need token types
    assert not (tmp_path / "out").exists()


def test_unsupported_activation_names_the_field(tmp_path):
    _save(tmp_path, transformers.DistilBertModel(_config()))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"activation": "prelu"}))
    with pytest.raises(ValueError, match="activation='prelu' is not supported"):
        from_hf(tmp_path)
