"""XQuAD English extractive question answering (SQuAD v1.1 JSON), sliding-window features and SQuAD scoring.

Splits are by article in file order (48 articles of 5 paragraphs): articles 0-29 train, 30-35 validation
(early stopping), 36-47 test, so no article or paragraph crosses splits (786 / 139 / 265 questions).

Scoring follows the SQuAD v1.1 definitions: answers are normalised (lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed); exact match and token F1 take the best gold answer; corpus scores are
means in percent.
"""

import collections
import copy
import dataclasses
import json
import os
import pathlib
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np
import tokenizers

from mmjax.data.locate import find_data_dir
from mmjax.data.text import PretrainedTokenizer

FILE = "xquad.en.json"
SPLITS = ("train", "validation", "test")
SPLIT_ARTICLES = {"train": range(0, 30), "validation": range(30, 36), "test": range(36, 48)}
_DATA_HELP = (
    "Set MMJAX_DATA_DIR (or pass the directory) to a folder holding xquad/xquad.en.json "
    "(from github.com/google-deepmind/xquad)."
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclasses.dataclass(frozen=True)
class Example:
    """One question on one paragraph; `answer_starts` are character offsets of `answers` in `context`."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    article: int  # index of the article in the file
    paragraph: int  # index of the paragraph in the file (over all articles)


def read_squad(path: str | os.PathLike) -> list[Example]:
    """Questions of a SQuAD v1.1 JSON file in file order; a missing field or an answer that is not the context
    text at its `answer_start` raises ValueError naming the file and the place."""
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    examples, paragraph = [], 0
    for a, article in enumerate(data["data"]):
        for p, par in enumerate(article["paragraphs"]):
            where = f"{path}: article {a} paragraph {p}"
            try:
                for qa in par["qas"]:
                    answers = tuple(x["text"] for x in qa["answers"])
                    starts = tuple(int(x["answer_start"]) for x in qa["answers"])
                    for text, start in zip(answers, starts, strict=True):
                        if par["context"][start : start + len(text)] != text:
                            raise ValueError(
                                f"{where}: question {qa['id']}: answer {text!r} is not at {start}"
                            )
                    examples.append(
                        Example(qa["id"], qa["question"], par["context"], answers, starts, a, paragraph)
                    )
            except KeyError as e:
                raise ValueError(f"{where}: missing field {e}") from None
            paragraph += 1
    return examples


def resolve_data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Folder holding xquad/: `path`, else $MMJAX_DATA_DIR, else ../shared/data."""
    return find_data_dir(path, lambda d: (d / "xquad" / FILE).is_file(), "XQuAD", _DATA_HELP)


def split_of(article: int) -> str:
    """The split of an article index (SPLIT_ARTICLES)."""
    for split, articles in SPLIT_ARTICLES.items():
        if article in articles:
            return split
    raise ValueError(f"article {article} is in no split: XQuAD has 48 articles (SPLIT_ARTICLES)")


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The questions of one split ("train", "validation" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown XQuAD split {split!r}; expected one of {SPLITS}")
    examples = read_squad(resolve_data_dir(data_dir) / "xquad" / FILE)
    return [e for e in examples if split_of(e.article) == split]


def _windowing(tokenizer: tokenizers.Tokenizer, max_len: int, doc_stride: int) -> tokenizers.Tokenizer:
    """A copy cutting the context of (question, context) pairs into windows (the shared one is left alone)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len, stride=doc_stride, strategy="only_second")
    return tokenizer


def _answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """(start, end) token positions of the characters [start, end) among a window's context tokens
    (offsets -1 elsewhere), or (0, 0) when the window does not hold the whole answer."""
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(context) or offsets[context[0], 0] > start or offsets[context[-1], 1] < end:
        return 0, 0
    first = context[offsets[context, 1] > start][0]
    last = context[offsets[context, 0] < end][-1]
    return int(first), int(last)


def windows(
    examples: Sequence[Example], tokenizer: PretrainedTokenizer, max_len: int, doc_stride: int
) -> dict[str, np.ndarray]:
    """`[CLS] question [SEP] context window [SEP]` features, several windows per long context; consecutive
    windows share `doc_stride` context tokens. Arrays over windows W: `text`, `text_mask`, `text_types`
    [W, L]; `offsets` int32 [W, L, 2] (context character span of each context token, -1 elsewhere);
    `example` int32 [W] (index into `examples`); `labels/start`, `labels/end` int32 [W] (the first gold
    answer's token positions, 0 = [CLS] when the window does not hold all of it)."""
    specials = tokenizer.tokenizer.num_special_tokens_to_add(is_pair=True)
    questions = tokenizer.tokenizer.encode_batch([e.question for e in examples], add_special_tokens=False)
    for example, question in zip(examples, questions, strict=True):
        if max_len - specials - len(question.ids) <= doc_stride:  # tokenizers panics (not raises) here
            raise ValueError(
                f"question {example.id} has {len(question.ids)} tokens: with {specials} special tokens and "
                f"doc_stride={doc_stride}, max_len={max_len} leaves no room for a context window"
            )
    encodings = _windowing(tokenizer.tokenizer, max_len, doc_stride).encode_batch(
        [(e.question, e.context) for e in examples]
    )
    rows = collections.defaultdict(list)
    for index, (example, encoding) in enumerate(zip(examples, encodings, strict=True)):
        for window in [encoding, *encoding.overflowing]:
            n = len(window.ids)
            is_context = np.array([s == 1 for s in window.sequence_ids])
            offsets = np.full((max_len, 2), -1, np.int32)
            offsets[:n][is_context] = np.array(window.offsets, np.int32).reshape(n, 2)[is_context]
            answer = (0, 0)
            if example.answers:
                start = example.answer_starts[0]
                answer = _answer_tokens(offsets, start, start + len(example.answers[0]))
            rows["text"].append(np.pad(window.ids, (0, max_len - n), constant_values=tokenizer.pad_id))
            rows["text_mask"].append(np.arange(max_len) < n)
            rows["text_types"].append(np.pad(window.type_ids, (0, max_len - n)))
            rows["offsets"].append(offsets)
            rows["example"].append(index)
            rows["labels/start"].append(answer[0])
            rows["labels/end"].append(answer[1])
    return {
        key: np.stack(values).astype(bool if key == "text_mask" else np.int32) for key, values in rows.items()
    }


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    context: str,
    max_answer_tokens: int,
) -> str:
    """The context text of the highest start + end score over one example's windows ([W, L] logits, [W, L, 2]
    offsets), among spans of context tokens with start <= end and at most `max_answer_tokens` tokens."""
    start_logits, end_logits = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
    offsets = np.asarray(offsets)
    is_context = offsets[..., 0] >= 0
    length = np.arange(offsets.shape[1])[None, :] - np.arange(offsets.shape[1])[:, None] + 1  # [start, end]
    valid = (
        is_context[:, :, None] & is_context[:, None, :] & (length >= 1) & (length <= max_answer_tokens)
    )  # [W, start, end]
    if not valid.any():
        return ""
    scores = np.where(valid, start_logits[:, :, None] + end_logits[:, None, :], -np.inf)
    window, start, end = np.unravel_index(np.argmax(scores), scores.shape)
    return context[offsets[window, start, 0] : offsets[window, end, 1]]


def predict_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: Mapping[str, np.ndarray],
    examples: Sequence[Example],
    max_answer_tokens: int,
) -> dict[str, str]:
    """{question id: best_span over the question's windows} for every example with a window in `features`."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    answers = {}
    for index in np.unique(features["example"]):
        rows = features["example"] == index
        example = examples[index]
        answers[example.id] = best_span(
            start_logits[rows],
            end_logits[rows],
            features["offsets"][rows],
            example.context,
            max_answer_tokens,
        )
    return answers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles (a, an, the), whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(gold) for gold in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best F1 over gold answers of the normalised tokens in common (a multiset); 0 if none is shared."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        expected = normalize_answer(gold).split()
        common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def squad_scores(predictions: Mapping[str, str], examples: Sequence[Example]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over `examples`; a question without a prediction raises ValueError."""
    missing = [e.id for e in examples if e.id not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of {len(examples)} questions, e.g. {missing[:3]}")
    if not examples:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = np.mean([exact_match(predictions[e.id], e.answers) for e in examples])
    f1 = np.mean([token_f1(predictions[e.id], e.answers) for e in examples])
    return {"exact_match": 100 * float(em), "f1": 100 * float(f1)}
