"""UD English EWT tagging and XQuAD span QA as in-memory sources for mmjax.train and mmjax.evaluate.

`load` encodes every split once with the text encoder's tokenizer. Tagging rows hold `text`, `text_mask` and
`labels/<task>` [L] (a word's tag at its first sub-word, -1 elsewhere). Span QA rows are sliding windows of
`[CLS] question [SEP] context [SEP]` with `text_types`, `span_mask` (the context tokens and [CLS]) and
`labels/span` [2] (start, end; both 0, i.e. [CLS], when the window lacks the answer). Metrics are per word for
UD (a word lost to truncation counts as an error) and per question for XQuAD (the best span over all its
windows, SQuAD exact match and F1).
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mmjax import metrics
from mmjax.data import ud_ewt, xquad
from mmjax.data.text import PretrainedTokenizer

DATASETS = ("ud_ewt", "xquad")
SPAN = "span"  # the span QA task (mmjax.model.SPAN)
UD_SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # mmjax split -> EWT file
ROW_KEYS = ("text", "text_mask", "text_types", "span_mask")  # besides labels/*: what a batch row holds


@dataclasses.dataclass(frozen=True)
class TextTaskData:
    """Every split of a text data set, encoded: `features[split]` arrays over rows (sentences or windows)."""

    dataset: str  # ud_ewt | xquad
    tasks: dict[str, int]  # task -> classes (tags; for `span` the sequence length)
    features: dict[str, dict[str, np.ndarray]]
    vocabs: dict[str, tuple[str, ...]]  # UD: task -> tag names (from train)
    gold: dict[str, dict[str, np.ndarray]]  # UD: split -> task -> per-word gold tag ids
    examples: dict[str, list[xquad.Example]]  # XQuAD: split -> questions
    max_answer_tokens: int = 30

    def source(self, split: str) -> list[dict[str, np.ndarray]]:
        """The split's rows as a grain source (one dict per sentence or window)."""
        arrays = {k: v for k, v in self.features[split].items() if k in ROW_KEYS or k.startswith("labels/")}
        return [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays["text"]))]

    def _words(
        self, split: str, results: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """UD: {task: (predicted, gold) per-word tag ids} of the sentences in `results` (the split's first
        rows, in source order); a word lost to truncation is predicted -1."""
        features = _first_rows(self.features[split], _num_rows(results))
        words = int(features["num_words"].sum())
        return {
            task: (ud_ewt.word_predictions(results[f"pred/{task}"], features), self.gold[split][task][:words])
            for task in self.tasks
        }

    def summarize(self, split: str, results: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Metrics of eval results over the split's first rows (all, or those of eval_max_batches). UD:
        `<task>/accuracy` and `<task>/macro_f1` per word. XQuAD: `span/exact_match` and `span/f1` (percent,
        over the questions with a window in `results`) and `span/accuracy` (windows with start and end
        right)."""
        if self.dataset == "ud_ewt":
            summary = {}
            for task, (predicted, gold) in self._words(split, results).items():
                summary[f"{task}/accuracy"] = metrics.accuracy(predicted, gold)
                report = metrics.classification_report(predicted, gold, self.vocabs[task])
                summary[f"{task}/macro_f1"] = report["macro"]["f1"]
            return summary
        features = _first_rows(self.features[split], _num_rows(results))
        logits = results[f"logits/{SPAN}"]
        examples = self.examples[split]
        answers = xquad.predict_answers(
            logits[:, 0], logits[:, 1], features, examples, self.max_answer_tokens
        )
        scores = xquad.squad_scores(answers, [examples[i] for i in np.unique(features["example"])])
        both_right = np.all(results[f"pred/{SPAN}"] == results[f"labels/{SPAN}"], axis=1)
        return {f"{SPAN}/{k}": v for k, v in scores.items()} | {f"{SPAN}/accuracy": float(both_right.mean())}

    def reports(self, split: str, results: Mapping[str, np.ndarray]) -> dict[str, dict]:
        """UD: {task: metrics.classification_report per tag over the split's words}; XQuAD: {}."""
        if self.dataset != "ud_ewt":
            return {}
        return {
            task: metrics.classification_report(predicted, gold, self.vocabs[task])
            for task, (predicted, gold) in self._words(split, results).items()
        }


def _num_rows(results: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(results.values())))


def _first_rows(features: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {key: value[:n] for key, value in features.items()}


def load(
    dataset: str,
    tasks: Sequence[str],
    tokenizer: PretrainedTokenizer,
    max_len: int,
    doc_stride: int = 128,
    data_dir: str | None = None,
) -> TextTaskData:
    """Encodes the train, validation and test splits of `dataset` (ud_ewt: `tasks` among upos, xpos, deprel;
    xquad: the task `span`)."""
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset={dataset!r} is not one of av_digits, {', '.join(DATASETS)}")
    allowed = ud_ewt.TASKS if dataset == "ud_ewt" else (SPAN,)
    unknown = sorted(set(tasks) - set(allowed))
    if unknown or not tasks:
        raise ValueError(f"config.tasks {sorted(tasks)}: {dataset} has the tasks {allowed}, not {unknown}")
    if dataset == "xquad":
        examples = {split: xquad.load_split(split, data_dir) for split in xquad.SPLITS}
        features = {split: span_features(e, tokenizer, max_len, doc_stride) for split, e in examples.items()}
        return TextTaskData(dataset, {SPAN: max_len}, features, {}, {}, examples)
    sentences = {split: ud_ewt.load_split(name, data_dir) for split, name in UD_SPLITS.items()}
    vocabs = {t: v for t, v in ud_ewt.build_vocabs(sentences["train"]).items() if t in tasks}
    features = {split: ud_ewt.encode(s, vocabs, tokenizer, max_len) for split, s in sentences.items()}
    gold = {
        split: {t: ud_ewt.word_labels(s, vocab, t) for t, vocab in vocabs.items()}
        for split, s in sentences.items()
    }
    return TextTaskData(dataset, {t: len(v) for t, v in vocabs.items()}, features, vocabs, gold, {})


def span_features(
    examples: Sequence[xquad.Example], tokenizer: PretrainedTokenizer, max_len: int, doc_stride: int
) -> dict[str, np.ndarray]:
    """xquad.windows plus `span_mask` (context tokens and position 0) and `labels/span` [W, 2]."""
    features = xquad.windows(examples, tokenizer, max_len, doc_stride)
    span_mask = features["offsets"][..., 0] >= 0
    span_mask[:, 0] = True
    labels = np.stack([features.pop("labels/start"), features.pop("labels/end")], axis=1)
    return features | {"span_mask": span_mask, f"labels/{SPAN}": labels}


def parse_text_buckets(text: str, max_len: int) -> tuple[int, ...]:
    """`data.text_buckets` "32,64,128" -> (32, 64, 128); the largest must be data.text_len."""
    try:
        buckets = tuple(sorted(int(part) for part in text.split(",") if part.strip()))
    except ValueError as e:
        raise ValueError(f"data.text_buckets={text!r} must be comma-separated token counts") from e
    if buckets and (buckets[-1] != max_len or buckets[0] <= 0):
        raise ValueError(
            f"data.text_buckets={text!r}: positive token counts, the largest data.text_len={max_len}"
        )
    return buckets
