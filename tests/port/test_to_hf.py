"""to_hf writes checkpoints transformers loads strictly and runs like the mmjax module, at 1e-5."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from safetensors.numpy import load_file

from mmjax.encoders.image import ViTEncoder
from mmjax.encoders.text import TextEncoder
from mmjax.port import from_hf, to_hf

pytestmark = pytest.mark.parity

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=67)
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


def _hf_model(kind):
    """A random tiny HF model with every weight perturbed (key biases too: export writes them as zeros)."""
    torch.manual_seed(0)
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=12, patch_size=4, num_channels=2, hidden_act="gelu_new", **TINY
        )
        model = transformers.ViTModel(config)
    else:
        cls, model_cls = {
            "bert": (transformers.BertConfig, transformers.BertModel),
            "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        }[kind]
        types = 1 if kind == "roberta" else 3
        config = cls(
            vocab_size=97, max_position_embeddings=24, type_vocab_size=types, layer_norm_eps=1e-5, **TINY
        )
        model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _text_batch(vocab_size, type_vocab_size, pad_token_id):
    """Ids padded with `pad_token_id` to different lengths, their attention mask and token types."""
    rng = np.random.default_rng(0)
    lengths = [9, 4, 7, 1]
    ids = rng.integers(3, vocab_size, size=(len(lengths), max(lengths)))
    mask = np.arange(ids.shape[1])[None] < np.array(lengths)[:, None]
    types = rng.integers(0, type_vocab_size, size=ids.shape) * mask
    return np.where(mask, ids, pad_token_id).astype(np.int32), mask.astype(np.int32), types.astype(np.int32)


def _inputs(kind, config):
    """mmjax keyword inputs for a batch fitting the HF `config`."""
    if kind == "vit":
        size = (2, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": np.random.default_rng(0).normal(size=size).astype(np.float32)}
    ids, mask, types = _text_batch(config.vocab_size, config.type_vocab_size, config.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _run_hf(model, inputs):
    """The HF model's hidden states and pooler output (None without a pooler) as numpy."""
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True)
    pooled = None if out.pooler_output is None else out.pooler_output.numpy()
    return {"hidden_states": [h.numpy() for h in out.hidden_states], "pooled": pooled}


def _assert_outputs_close(ours, theirs):
    """Every hidden state (padded positions too) and the pooler output agree at 1e-5."""
    assert len(ours["hidden_states"]) == len(theirs["hidden_states"])
    for mine, hf in zip(ours["hidden_states"], theirs["hidden_states"], strict=True):
        np.testing.assert_allclose(mine, hf, rtol=1e-5, atol=1e-5)
    if theirs["pooled"] is not None:
        np.testing.assert_allclose(ours["pooled"], theirs["pooled"], rtol=1e-5, atol=1e-5)


def _perturbed_init(module, *inputs):
    """module.init params plus noise, so no LayerNorm scale is 1 and no bias is 0."""
    params = module.init(jax.random.key(0), *inputs)["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


@pytest.mark.parametrize("kind", ["bert", "roberta", "vit"])
def test_hf_round_trip_loads_strictly_and_matches(tmp_path, kind):
    original = _hf_model(kind)
    original.save_pretrained(tmp_path / "hf")
    module, params = from_hf(tmp_path / "hf")
    to_hf(module, params, tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in saved.items()}
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is type(original) and info == NO_PROBLEMS
    inputs = _inputs(kind, original.config)
    _assert_outputs_close(_run_hf(exported, inputs), _run_hf(original, inputs))
    module_again, params_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


@pytest.mark.parametrize(
    "fields",
    [
        dict(type_vocab_size=3, activation="gelu", layer_norm_eps=1e-12, pooler=True),  # BertModel
        dict(type_vocab_size=1, activation="quick_gelu", position_offset=1, pad_token_id=1),  # RobertaModel
    ],
)
def test_scratch_text_encoder_runs_the_same_in_transformers(tmp_path, fields):
    module = TextEncoder(
        vocab_size=97,
        max_len=24,
        width=32,
        depth=2,
        num_heads=4,
        mlp_dim=67,
        pre_ln=False,
        aux_prefix="",
        **fields,
    )
    batch = _text_batch(module.vocab_size, module.type_vocab_size, module.pad_token_id)
    params = _perturbed_init(module, *batch)
    to_hf(module, params, tmp_path)
    hf_model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    no_pooler = {"missing_keys": {"pooler.dense.weight", "pooler.dense.bias"}}
    assert info == NO_PROBLEMS | ({} if module.pooler else no_pooler)  # HF initialises a missing pooler
    _, aux = module.apply({"params": params}, *batch)
    hf_out = _run_hf(
        hf_model, dict(zip(["input_ids", "attention_mask", "token_type_ids"], batch, strict=True))
    )
    _assert_outputs_close(aux, hf_out | ({} if module.pooler else {"pooled": None}))


def test_scratch_vit_encoder_runs_the_same_in_transformers(tmp_path):
    module = ViTEncoder(
        patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=67, pre_ln=True, pooler=True, aux_prefix=""
    )
    images = np.random.default_rng(0).normal(size=(2, 12, 12, 2)).astype(np.float32)  # channels last
    params = _perturbed_init(module, images)
    to_hf(module, params, tmp_path)
    hf_model, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info == NO_PROBLEMS
    assert (hf_model.config.image_size, hf_model.config.num_channels) == (12, 2)
    _, aux = module.apply({"params": params}, images)
    _assert_outputs_close(aux, _run_hf(hf_model, {"pixel_values": np.moveaxis(images, -1, 1)}))


def test_modules_hf_cannot_hold_are_refused_naming_the_field(tmp_path):
    text = dict(vocab_size=11, max_len=8, width=8, depth=1, num_heads=2, mlp_dim=16)
    ids = np.zeros((1, 3), np.int32)
    cases = [
        (
            TextEncoder(**text),
            ids,
            r"TextEncoder .* bert checkpoint: pre_ln=True \(a bert checkpoint gives False\)",
        ),
        (
            TextEncoder(**text, pre_ln=False, position_offset=2, pad_token_id=1),
            ids,
            r"roberta .*position_offset=2",
        ),
        (TextEncoder(**text, pre_ln=False, embedding_ln=False), ids, r"embedding_ln=False"),
        (
            ViTEncoder(4, 8, 1, 2, 16, pre_ln=False),
            np.zeros((1, 8, 8, 3)),
            r"ViTEncoder .* vit .*pre_ln=False",
        ),
        (ViTEncoder(4, 8, 1, 2, 16), np.zeros((1, 8, 12, 3)), r"position_embedding/embedding .* square"),
    ]
    for module, inputs, message in cases:  # shapes suffice: modules are refused before weights are read
        params = jax.eval_shape(module.init, jax.random.key(0), inputs)["params"]
        with pytest.raises(ValueError, match=message):
            to_hf(module, params, tmp_path / "out")
    with pytest.raises(
        TypeError, match=r"Dense has no Hugging Face export; supported: \[.*'TextEncoder', 'ViTEncoder'.*\]"
    ):
        to_hf(nn.Dense(3), {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_params_that_do_not_fit_the_module_are_listed_together(tmp_path):
    module = TextEncoder(
        vocab_size=11, max_len=8, width=8, depth=1, num_heads=2, mlp_dim=16, pre_ln=False, pooler=True
    )
    shapes = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 3), np.int32))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    del params["encoder"]["layer_0"]["mlp"]["fc2"]["kernel"]
    params["pooler"]["bias"] = np.zeros(5, np.float32)
    params["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match="3 problems") as error:
        to_hf(module, params, tmp_path / "out")
    message = str(error.value)
    assert "missing: encoder/layer_0/mlp/fc2/kernel (for encoder.layer.0.output.dense.weight)" in message
    assert "mis-shaped: pooler/bias -> pooler.dense.bias (8,): needs (8,), has (5,)" in message
    assert "unused: extra/kernel" in message
    assert not (tmp_path / "out").exists()
