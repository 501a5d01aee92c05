"""Word-level tokenizer for short templated text such as the AV-Digits questions."""

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lowercases and splits on anything that is not a letter or a digit."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """Maps words to ids; the vocabulary starts with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3."""

    vocab: tuple[str, ...]

    def __post_init__(self):
        if tuple(self.vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocab must start with {SPECIALS}, got {tuple(self.vocab[: len(SPECIALS)])}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab has duplicate entries")

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 ids [max_len] of `[CLS] words [SEP]` (truncated, [SEP] kept last; padded) and a mask."""
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 to hold [CLS] and [SEP], got {max_len}")
        words = [self._index.get(word, self._index[UNK]) for word in split_words(text)]
        ids = [self._index[CLS], *words[: max_len - 2], self._index[SEP]]
        out = np.zeros(max_len, dtype=np.int32)
        out[: len(ids)] = ids
        return out, np.arange(max_len) < len(ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Joins the words of non-special ids ([UNK] is kept, so unknown words stay visible)."""
        skip = {self._index[PAD], self._index[CLS], self._index[SEP]}
        return " ".join(self.vocab[int(i)] for i in ids if int(i) not in skip)


def build_vocab(texts: Iterable[str]) -> WordTokenizer:
    """Tokenizer over the sorted unique words of `texts`, after the special tokens."""
    words = sorted({word for text in texts for word in split_words(text)})
    return WordTokenizer(vocab=SPECIALS + tuple(words))
