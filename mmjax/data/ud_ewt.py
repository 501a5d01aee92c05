"""Universal Dependencies English EWT (CoNLL-U) for token tagging: UPOS, XPOS and dependency relations.

Words are aligned to a pretrained tokenizer's sub-words: each word is labelled at its first sub-word, every
other token gets IGNORE. Words whose first sub-word falls past `max_len` are lost (counted per sentence) and
are scored as errors by `word_predictions`, so accuracies stay over every word of the split.

Label vocabularies are the sorted labels of the train split; a label that train lacks raises ValueError (the
released EWT dev and test use no such label).
"""

import copy
import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tokenizers

from mmjax.data.locate import find_data_dir
from mmjax.data.text import PretrainedTokenizer

SPLITS = ("train", "dev", "test")
FILES = {split: f"en_ewt-ud-{split}.conllu" for split in SPLITS}
TASKS = ("upos", "xpos", "deprel")
IGNORE = -1  # label of tokens that are not a word's first sub-word ([CLS], [SEP], padding, later sub-words)

_MULTIWORD = re.compile(r"^\d+-\d+$")  # "3-4": a multi-word token, its words follow on their own lines
_EMPTY_NODE = re.compile(r"^\d+\.\d+$")  # "8.1": an empty node of the enhanced graph, not a word
_DATA_HELP = (
    "Set MMJAX_DATA_DIR (or pass the directory) to a folder holding ud_ewt/en_ewt-ud-{train,dev,test}.conllu "
    "(from github.com/UniversalDependencies/UD_English-EWT)."
)


@dataclasses.dataclass(frozen=True)
class Sentence:
    """The words of one sentence with their labels; `source` is "file:line" of its first word."""

    words: tuple[str, ...]
    upos: tuple[str, ...]
    xpos: tuple[str, ...]
    deprel: tuple[str, ...]
    source: str


def read_conllu(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of a CoNLL-U file. Comments, multi-word token lines (3-4) and empty nodes (8.1) are skipped;
    a line without 10 tab-separated columns or with a word id that is not the next integer raises ValueError
    naming the file and line."""
    sentences, rows, first_line = [], [], 0

    def flush():
        if rows:
            words, upos, xpos, deprel = zip(*rows, strict=True)
            sentences.append(Sentence(words, upos, xpos, deprel, f"{path}:{first_line}"))
            rows.clear()

    for number, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            continue
        columns = line.split("\t")
        if len(columns) != 10:
            raise ValueError(f"{path}:{number}: {len(columns)} tab-separated columns, CoNLL-U has 10")
        word_id = columns[0]
        if _MULTIWORD.match(word_id) or _EMPTY_NODE.match(word_id):
            continue
        if not word_id.isdecimal() or int(word_id) != len(rows) + 1:
            raise ValueError(f"{path}:{number}: word id {word_id!r}, expected {len(rows) + 1}")
        if not rows:
            first_line = number
        rows.append((columns[1], columns[3], columns[4], columns[7]))
    flush()
    return sentences


def strip_subtype(deprel: str) -> str:
    """The universal relation of a label: "nmod:poss" -> "nmod"."""
    return deprel.split(":", 1)[0]


def without_subtypes(sentences: Sequence[Sentence]) -> list[Sentence]:
    """The sentences with universal dependency relations only (subtypes stripped)."""
    return [dataclasses.replace(s, deprel=tuple(map(strip_subtype, s.deprel))) for s in sentences]


def resolve_data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Folder holding ud_ewt/: `path`, else $MMJAX_DATA_DIR, else ../shared/data."""
    return find_data_dir(
        path,
        lambda d: all((d / "ud_ewt" / n).is_file() for n in FILES.values()),
        "UD English EWT",
        _DATA_HELP,
    )


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> list[Sentence]:
    """The sentences of one split ("train", "dev" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown UD EWT split {split!r}; expected one of {SPLITS}")
    return read_conllu(resolve_data_dir(data_dir) / "ud_ewt" / FILES[split])


def build_vocabs(train: Sequence[Sentence]) -> dict[str, tuple[str, ...]]:
    """{task: sorted labels} of the train sentences."""
    return {task: tuple(sorted({label for s in train for label in getattr(s, task)})) for task in TASKS}


def word_labels(sentences: Sequence[Sentence], vocab: Sequence[str], task: str) -> np.ndarray:
    """int32 [total words] label ids of every word in sentence order; a label not in `vocab` raises."""
    index = {label: i for i, label in enumerate(vocab)}
    out = []
    for s in sentences:
        for label in getattr(s, task):
            if label not in index:
                raise ValueError(
                    f"{s.source}: {task} label {label!r} is not among the {len(vocab)} train labels"
                )
            out.append(index[label])
    return np.array(out, dtype=np.int32)


def _truncating(tokenizer: tokenizers.Tokenizer, max_len: int) -> tokenizers.Tokenizer:
    """A copy truncating to `max_len` with the special tokens kept (the shared tokenizer is left alone)."""
    specials = tokenizer.num_special_tokens_to_add(is_pair=False)
    if max_len <= specials:
        raise ValueError(f"max_len={max_len} leaves no room for a word next to {specials} special tokens")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len)
    return tokenizer


def align_words(tokenizer: PretrainedTokenizer, words: Sequence[Sequence[str]], max_len: int) -> dict:
    """Sub-words of pre-split sentences: `text` int32 [N, L] ([CLS] ... [SEP] kept, padded), `text_mask`,
    `word_index` int32 [N, L] (the word of each token, -1 for special and padding tokens), `first_subword`
    bool [N, L], `num_words` and `words_lost` int32 [N] (words without a token left after truncation)."""
    encodings = _truncating(tokenizer.tokenizer, max_len).encode_batch(
        [list(w) for w in words], is_pretokenized=True
    )
    n = len(encodings)
    ids = np.full((n, max_len), tokenizer.pad_id, np.int32)
    word_index = np.full((n, max_len), -1, np.int32)
    lengths, kept = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i, encoding in enumerate(encodings):
        lengths[i] = len(encoding.ids)
        ids[i, : lengths[i]] = encoding.ids
        word_index[i, : lengths[i]] = [-1 if w is None else w for w in encoding.word_ids]
        kept[i] = len({w for w in encoding.word_ids if w is not None})
    previous = np.pad(word_index[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    num_words = np.array([len(w) for w in words], np.int32)
    return {
        "text": ids,
        "text_mask": np.arange(max_len) < lengths[:, None],
        "word_index": word_index,
        "first_subword": (word_index >= 0) & (word_index != previous),
        "num_words": num_words,
        "words_lost": num_words - kept,
    }


def _word_offsets(num_words: np.ndarray) -> np.ndarray:
    return np.cumsum(num_words) - num_words


def encode(
    sentences: Sequence[Sentence],
    vocabs: Mapping[str, Sequence[str]],
    tokenizer: PretrainedTokenizer,
    max_len: int,
) -> dict[str, np.ndarray]:
    """Arrays of a split: `align_words`' arrays plus `labels/<task>` int32 [N, L] for each task of `vocabs`
    (the word's label at its first sub-word, IGNORE elsewhere)."""
    out = align_words(tokenizer, [s.words for s in sentences], max_len)
    rows, cols = np.nonzero(out["first_subword"])
    flat = _word_offsets(out["num_words"])[rows] + out["word_index"][rows, cols]
    for task, vocab in vocabs.items():
        labels = np.full(out["text"].shape, IGNORE, np.int32)
        labels[rows, cols] = word_labels(sentences, vocab, task)[flat]
        out[f"labels/{task}"] = labels
    return out


def word_predictions(token_predictions: np.ndarray, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-word predictions [total words] in sentence order (as `word_labels`), read at each word's first
    sub-word; -1 for words lost to truncation, so they count as errors."""
    out = np.full(int(features["num_words"].sum()), -1, np.int32)
    rows, cols = np.nonzero(features["first_subword"])
    out[_word_offsets(features["num_words"])[rows] + features["word_index"][rows, cols]] = np.asarray(
        token_predictions
    )[rows, cols]
    return out
