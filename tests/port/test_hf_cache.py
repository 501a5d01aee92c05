"""Model ids (`ORG/NAME[@REVISION]`) resolve in a local Hugging Face cache the test builds; misses say where
they looked and how to fill the cache; weights are read one tensor at a time (also from sharded files)."""

import json
import shutil

import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmjax.data.text import pretrained_tokenizer
from mmjax.hf_cache import cache_dir
from mmjax.port import from_hf
from mmjax.port.common import read_state_dict
from mmjax.port.pretrained import load_pretrained, tokenizer_dir

pytestmark = pytest.mark.parity

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A cache holding org/tiny-bert at one commit (refs/main and refs/v1 point to it); HF_HUB_CACHE set."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24
    )
    model = transformers.BertModel(config).eval()
    repo = tmp_path / "hub" / "models--org--tiny-bert"
    model.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    for branch in ("main", "v1"):
        (repo / "refs" / branch).write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return model


def _last_hidden(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).last_hidden_state.numpy()


def test_model_ids_resolve_in_the_local_cache(hub, tmp_path):
    ids = np.array([[2, 5, 7, 3]], np.int32)
    expected = _last_hidden(hub, ids)
    for source in ("org/tiny-bert", "org/tiny-bert@v1", f"org/tiny-bert@{COMMIT}"):
        module, params = from_hf(source)
        out, _ = module.apply({"params": params}, ids)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    module, params = load_pretrained("hf:org/tiny-bert@main")
    np.testing.assert_allclose(module.apply({"params": params}, ids)[0], expected, rtol=1e-5, atol=1e-5)
    assert (
        tokenizer_dir("hf:org/tiny-bert")
        == tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / COMMIT
    )


def test_a_miss_names_the_folder_and_the_command(hub, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as error:
        from_hf("org/tiny-bert@v2")
    message = str(error.value)
    assert str(tmp_path / "hub" / "models--org--tiny-bert") in message and "refs/v2" in message
    assert f"HF_HUB_CACHE={tmp_path / 'hub'} hf download org/tiny-bert --revision v2" in message
    with pytest.raises(
        FileNotFoundError, match=r"models--other--model.*hf download other/model --revision main"
    ):
        from_hf("other/model")
    with pytest.raises(FileNotFoundError, match=r"\./missing: no such checkpoint folder"):
        from_hf("./missing")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "hub"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "home" / "hub" / "models--org--tiny-bert")):
        from_hf("org/tiny-bert")


def test_sharded_safetensors_read_lazily(hub, tmp_path):
    """A model.safetensors.index.json checkpoint (as HF writes big models) loads like the single file."""
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / COMMIT
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(snapshot / "config.json", folder)
    weights = load_file(snapshot / "model.safetensors")
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: weights[k] for k in part}, folder / name, metadata={"format": "pt"})
    weight_map = {k: name for name, part in shards.items() for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    lazy = read_state_dict(folder)
    assert sorted(lazy) == keys and len(lazy) == len(keys)
    np.testing.assert_array_equal(lazy[keys[3]], weights[keys[3]])
    ids = np.array([[2, 9, 4]], np.int32)
    module, params = from_hf(folder)
    np.testing.assert_allclose(
        module.apply({"params": params}, ids)[0], _last_hidden(hub, ids), rtol=1e-5, atol=1e-5
    )


def test_the_tokenizer_of_a_cached_text_encoder_is_found(hub, tmp_path):
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / COMMIT
    (snapshot / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "digit", "two"]) + "\n"
    )
    config = ml_collections.ConfigDict(
        {"data": {"tokenizer": ""}, "model": {"text": {"init_from": "hf:org/tiny-bert"}}}
    )
    ids, mask = pretrained_tokenizer(config).encode("digit two", 6)
    assert list(ids[: int(mask.sum())]) == [2, 4, 5, 3]
