"""Word tokenizer: round trip, unknown words, padding, truncation, vocabulary rules."""

import numpy as np
import pytest

from mmjax.data.text import SPECIALS, WordTokenizer, build_vocab


@pytest.fixture
def tokenizer() -> WordTokenizer:
    return build_vocab(["What digit is spoken?", "who is speaking", "the sum of 3 and 4"])


def test_build_vocab_is_sorted_and_deterministic(tokenizer):
    assert tokenizer.vocab[:4] == SPECIALS
    assert list(tokenizer.vocab[4:]) == sorted(tokenizer.vocab[4:])
    assert build_vocab(["the sum of 3 and 4", "who is speaking", "What digit is spoken?"]) == tokenizer
    assert tokenizer.vocab_size == 4 + len(
        {"what", "digit", "is", "spoken", "who", "speaking", "the", "sum", "of", "3", "and", "4"}
    )


def test_encode_round_trip_and_padding(tokenizer):
    ids, mask = tokenizer.encode("What DIGIT is spoken?!", 8)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape == (8,)
    assert ids[0] == 2 and ids[5] == 3
    np.testing.assert_array_equal(ids[6:], 0)
    np.testing.assert_array_equal(mask, [True] * 6 + [False] * 2)
    assert tokenizer.decode(ids) == "what digit is spoken"


def test_unknown_words_map_to_unk(tokenizer):
    ids, _ = tokenizer.encode("what is louder", 6)
    assert ids[3] == 1
    assert tokenizer.decode(ids) == "what is [UNK]"


def test_truncation_keeps_sep_last(tokenizer):
    ids, mask = tokenizer.encode("the sum of 3 and 4", 5)
    assert mask.all()
    assert list(ids) == [
        2,
        tokenizer.vocab.index("the"),
        tokenizer.vocab.index("sum"),
        tokenizer.vocab.index("of"),
        3,
    ]


def test_too_short_max_len_and_bad_vocab_raise(tokenizer):
    with pytest.raises(ValueError, match="max_len"):
        tokenizer.encode("what", 1)
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(vocab=("a", "b"))
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(vocab=(*SPECIALS, "a", "a"))
