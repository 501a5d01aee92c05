"""`python -m mmjax.port` writes an Orbax checkpoint that loads back into the same module and params."""

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.data.text import load_tokenizer
from mmjax.port import from_hf
from mmjax.port.pretrained import load_pretrained, tokenizer_dir

pytestmark = pytest.mark.parity


@pytest.fixture
def tiny_bert(tmp_path):
    """A random 2-layer BERT with a pooler and a WordPiece vocab.txt, saved in tmp_path/hf."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    folder = tmp_path / "hf"
    transformers.BertModel(config).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "digit", "spoken", "which", "is", "the", "?"]
    (folder / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(40 - len(words))]) + "\n")
    return folder


def test_command_line_port_round_trips(tiny_bert, tmp_path):
    out = tmp_path / "ported"
    command = [sys.executable, "-m", "mmjax.port", "--hf", str(tiny_bert), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert "TextEncoder" in result.stdout and str(out) in result.stdout
    module, params = load_pretrained(str(out))
    expected_module, expected = from_hf(tiny_bert)
    assert module == expected_module
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    assert tokenizer_dir(str(out)) == out and (out / "vocab.txt").is_file()
    ids, _ = load_tokenizer(out).encode("Which digit is spoken?", 8)
    np.testing.assert_array_equal(ids, [2, 7, 5, 8, 6, 10, 3, 0])
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_hf_spec_and_bad_specs(tiny_bert, tmp_path):
    module, params = load_pretrained(f"hf:{tiny_bert}")
    assert module.width == 32 and "pooler" in params
    with pytest.raises(FileNotFoundError, match=f"init_from='{tmp_path}'.*no port.json"):
        load_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(f"hf:{tmp_path}")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # unpickling would create the marker file


def test_a_pickled_checkpoint_with_code_is_refused_and_never_run(tmp_path):
    from mmjax.port.common import read_state_dict

    marker = tmp_path / "was_run"
    torch.save({"weight": torch.ones(2), "payload": _RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing .*pytorch_model.bin: it holds more than tensors"):
        read_state_dict(tmp_path)
    assert not marker.exists()
