"""Tokenizers: a word-level one for short templated text (AV-Digits questions) and a pretrained checkpoint's
own WordPiece/BPE tokenizer (`load_tokenizer`, via the `tokenizers` library, offline).

Both have `encode(text, max_len) -> (int32 ids [max_len], bool mask [max_len])` and `vocab_size`.
"""

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import ml_collections
import numpy as np
import tokenizers

from mmjax.hf_cache import checkpoint_dir

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


@dataclasses.dataclass(frozen=True)
class PretrainedTokenizer:
    """A Hugging Face checkpoint's tokenizer: special tokens added, truncated and padded like HF's; `encode`
    puts `prefix` before every text (a fixed instruction or context for the tower, like E5's "query: ")."""

    tokenizer: tokenizers.Tokenizer
    pad_id: int
    prefix: str = ""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 ids [max_len] (truncated with the special tokens kept, then padded) and a mask."""
        self.tokenizer.enable_truncation(max_len)
        ids = self.tokenizer.encode(self.prefix + text).ids
        out = np.full(max_len, self.pad_id, dtype=np.int32)
        out[: len(ids)] = ids
        return out, np.arange(max_len) < len(ids)


def _read_json(file: Path) -> dict:
    return json.loads(file.read_text()) if file.is_file() else {}


def _special(config: dict, name: str, default: str) -> str:
    token = config.get(name, default)
    return token["content"] if isinstance(token, dict) else token


def _wordpiece(folder: Path, config: dict) -> tokenizers.Tokenizer:
    """BERT's tokenizer from vocab.txt: normalise (lowercase per do_lower_case), split, WordPiece."""
    unk, cls, sep = (
        _special(config, k, d)
        for k, d in (("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"))
    )
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordPiece.from_file(str(folder / "vocab.txt"), unk_token=unk)
    )
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(
        lowercase=config.get("do_lower_case", True), strip_accents=config.get("strip_accents")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = tokenizers.processors.BertProcessing(
        (sep, tokenizer.token_to_id(sep)), (cls, tokenizer.token_to_id(cls))
    )
    return tokenizer


def _byte_level_bpe(folder: Path, config: dict) -> tokenizers.Tokenizer:
    """RoBERTa's tokenizer from vocab.json + merges.txt: byte-level BPE wrapped in <s> ... </s>."""
    model = tokenizers.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer = tokenizers.Tokenizer(model)
    prefix_space = config.get("add_prefix_space", False)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    bos, eos = _special(config, "bos_token", "<s>"), _special(config, "eos_token", "</s>")
    tokenizer.post_processor = tokenizers.processors.RobertaProcessing(
        (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)), add_prefix_space=prefix_space
    )
    return tokenizer


def load_tokenizer(path: str | Path) -> PretrainedTokenizer:
    """The tokenizer of the checkpoint folder `path`: tokenizer.json, else vocab.txt (WordPiece, BERT) or
    vocab.json + merges.txt (byte-level BPE, RoBERTa), with tokenizer_config.json's options."""
    folder = Path(path)
    config = _read_json(folder / "tokenizer_config.json") | _read_json(folder / "special_tokens_map.json")
    if (folder / "tokenizer.json").is_file():
        tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file():
        tokenizer = _wordpiece(folder, config)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = _byte_level_bpe(folder, config)
    else:
        raise FileNotFoundError(
            f"no tokenizer in {folder}: expected tokenizer.json, vocab.txt or vocab.json + merges.txt"
        )
    configured = tokenizer.padding  # tokenizer.json may name its pad token
    tokenizer.no_padding()
    names = [_special(config, "pad_token", None), configured and configured["pad_token"], "[PAD]", "<pad>"]
    pad_id = next(
        (tokenizer.token_to_id(n) for n in names if n and tokenizer.token_to_id(n) is not None), None
    )
    if pad_id is None:
        raise ValueError(f"{folder}: no pad token in the vocabulary (tried {[n for n in names if n]})")
    return PretrainedTokenizer(tokenizer, pad_id)


def pretrained_tokenizer(config: ml_collections.ConfigDict) -> PretrainedTokenizer | None:
    """data.tokenizer's folder, else the text encoder's checkpoint (model.text.init_from), else None; with
    model.text.prefix put before every text it encodes."""
    text = config.model.get("text", {})
    spec = config.data.get("tokenizer", "") or text.get("init_from", "")
    prefix = text.get("prefix", "")
    if prefix and not spec:
        raise ValueError(
            f"model.text.prefix={prefix!r} is for pretrained towers: set model.text.init_from or "
            "data.tokenizer"
        )
    if prefix and config.model.get("kind", "multimodal") != "multimodal":
        raise ValueError(
            f"model.text.prefix={prefix!r} is for multimodal models; text-task models tokenize pairs and "
            "character offsets, which a prefix would shift"
        )
    if not spec:
        return None
    path = checkpoint_dir(spec.removeprefix("hf:")) if spec.startswith("hf:") else spec
    return dataclasses.replace(load_tokenizer(path), prefix=prefix)


def experiment_tokenizer(
    config: ml_collections.ConfigDict, texts: Iterable[str] = ()
) -> WordTokenizer | PretrainedTokenizer:
    """The experiment's pretrained tokenizer, else a word vocabulary over `texts` (the training text)."""
    return pretrained_tokenizer(config) or build_vocab(texts)
