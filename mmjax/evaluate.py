"""Evaluate a trained run: accuracy and macro-F1 per task and answer accuracy per question type.

  python -m mmjax.evaluate --workdir DIR [--split test] [--questions FILE] [--checkpoint best|latest]
Writes DIR/eval_<split>.json (metrics and confusion matrices) and prints a table; --explain N also draws
the attention maps of N examples into DIR/explain/ (mmjax.explain). Text-only runs (data.dataset ud_ewt or
xquad) get per-word tag accuracy with a per-tag classification report, or XQuAD exact match and F1.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mmjax import checkpoint, explain, losses, metrics, parallel
from mmjax.data import av_digits, pipeline, text_tasks
from mmjax.data.text import PretrainedTokenizer, WordTokenizer, load_tokenizer
from mmjax.model import SPAN, MultimodalModel, TextTaskModel, build_model, dummy_batch
from mmjax.port.pretrained import tokenizer_dir


def make_tokenizer(config: ml_collections.ConfigDict) -> WordTokenizer | PretrainedTokenizer:
    """data.tokenizer's folder, else the text encoder's checkpoint (model.text.init_from), else words."""
    init_from = config.model.text.get("init_from", "")
    folder = config.data.get("tokenizer", "") or (str(tokenizer_dir(init_from)) if init_from else "")
    return load_tokenizer(folder) if folder else av_digits.make_tokenizer()


def make_preprocess(
    config: ml_collections.ConfigDict,
    questions: Mapping[str, list[str]] | None = None,
    corruption: pipeline.Corruption | None = None,
):
    """The per-example preprocessing of an experiment (optionally other phrasings, a robustness condition).
    Phrasings longer than data.text_len tokens are truncated with a warning, or stop the run when
    data.on_bad_example=stop."""
    tokenizer = make_tokenizer(config)
    limit = config.data.text_len
    lengths = {
        p: int(tokenizer.encode(p, 4 * limit + 8)[1].sum())  # + 8: room for special tokens
        for phrasings in (questions or av_digits.PHRASINGS).values()
        for p in phrasings
    }
    too_long = {p: n for p, n in lengths.items() if n > limit}
    if too_long:
        listed = "; ".join(f"{p!r} ({n} tokens)" for p, n in too_long.items())
        if config.data.get("on_bad_example") == "stop":
            raise ValueError(f"question phrasings longer than data.text_len={limit}: {listed}")
        print(f"mmjax: warning: truncating to data.text_len={limit} tokens: {listed}")
    return functools.partial(
        pipeline.preprocess,
        tokenizer=tokenizer,
        text_len=config.data.text_len,
        audio_frames=config.data.audio_frames,
        questions=questions,
        seed=config.seed,
        corruption=corruption,
        n_mfcc=config.data.get("n_mfcc", 0),
    )


def load_split(config: ml_collections.ConfigDict, split: str):
    """The AV-Digits split of an experiment config (built on first use)."""
    return av_digits.load(
        split,
        data_dir=config.data.data_dir or None,
        tfds_dir=config.data.tfds_dir or None,
        on_bad=config.data.get("on_bad_example", "skip"),  # absent in older runs
    )


@dataclasses.dataclass(frozen=True)
class ExperimentData:
    """What training and evaluation read from the experiment's data set (config.data.dataset)."""

    tasks: dict[str, int]  # task -> classes
    load: Callable[[str], Sequence]  # split -> grain source
    preprocess: Callable[[Mapping], dict]
    summarize: Callable[[str, Mapping[str, np.ndarray]], dict[str, float]]  # (split, eval results) -> metrics
    iterator_args: dict  # pipeline.train_iterator's shape buckets
    text: text_tasks.TextTaskData | None = None  # text-only data sets


def experiment_data(config: ml_collections.ConfigDict) -> ExperimentData:
    """AV-Digits (built on first use) or a text data set encoded in memory (mmjax.data.text_tasks)."""
    dataset = config.data.get("dataset", "av_digits")
    if dataset == "av_digits":
        tasks = av_digits.task_classes(config.tasks)
        buckets = pipeline.parse_buckets(
            config.data.get("audio_buckets", ""), config.data.audio_frames, config.model.audio.patch_time
        )
        return ExperimentData(
            tasks,
            functools.partial(load_split, config),
            make_preprocess(config),
            lambda split, results: summarize(results, tasks),
            {"audio_buckets": buckets},
        )
    data = text_tasks.load(
        dataset,
        [task for task, weight in config.tasks.items() if weight > 0],
        make_tokenizer(config),
        config.data.text_len,
        config.data.get("doc_stride", 128),
        config.data.data_dir or None,
    )
    buckets = text_tasks.parse_text_buckets(config.data.get("text_buckets", ""), config.data.text_len)
    return ExperimentData(data.tasks, data.source, dict, data.summarize, {"text_buckets": buckets}, data)


def split_batches(config: ml_collections.ConfigDict, source, preprocess) -> Iterator[dict]:
    """This process's share of each evaluation batch of `source` (see pipeline.eval_batches)."""
    return pipeline.eval_batches(
        source,
        batch_size=config.data.eval_batch_size,
        preprocess_fn=preprocess,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def eval_step(variables, batch: dict, *, model, align_positives: tuple[str, str] | None = None) -> dict:
    """Predicted class per task (and per modality head, -1 where the modality is absent), with the labels,
    question types and validity passed through; the span task also returns its start/end logits.

    The contrastive `align` task gives `hits/align`: whether each example's nearest other-modality
    embedding in the same eval batch is a positive (labels `align_positives` equal, else itself).
    """
    outputs, _ = model.apply(variables, batch, train=False)
    result = {}
    for task, heads in outputs.pop("modality_heads", {}).items():  # scored on the examples with m
        for m, logits in heads.items():
            result[f"pred/{task}@{m}"] = jnp.where(outputs["present"][m], jnp.argmax(logits, -1), -1)
    outputs.pop("present", None)
    for task, out in outputs.items():
        if task == av_digits.ALIGN:
            valid = out["valid"] & batch["valid"]
            positives = None
            if align_positives is not None:
                positives = losses.positives_from_labels(batch[align_positives[0]], batch[align_positives[1]])
            result["hits/align"] = losses.retrieval_hits(out["x"], out["y"], valid, positives)
            result["valid/align"] = valid
        else:
            result[f"pred/{task}"] = jnp.argmax(out, -1)
            result[f"labels/{task}"] = batch[f"labels/{task}"]
        if task == SPAN:
            result[f"logits/{task}"] = out
    if "question_type" in batch:
        result["question_type"] = batch["question_type"]
    result["valid"] = batch["valid"]
    return result


def make_eval_step(model, mesh, align_positives: tuple[str, str] | None = None):
    """eval_step jitted over the mesh; results are replicated so every process can read all of them."""
    return jax.jit(
        functools.partial(eval_step, model=model, align_positives=align_positives),
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )


def predict(variables, batches: Iterable[dict], eval_fn, mesh, max_batches: int = 0) -> dict[str, np.ndarray]:
    """Run eval_fn over the batches (at most max_batches if > 0); returns the valid rows, concatenated."""
    parts = []
    for index, batch in enumerate(batches):
        if max_batches and index >= max_batches:
            break
        # Every process gets all rows, in global order (each gave its share of the batch).
        parts.append(
            multihost_utils.process_allgather(eval_fn(variables, parallel.to_global(batch, mesh)), tiled=True)
        )
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    valid = merged.pop("valid").astype(bool)
    return {key: value[valid] for key, value in merged.items()}


def summarize(results: Mapping[str, np.ndarray], tasks: Mapping[str, int]) -> dict[str, float]:
    """`task/accuracy`, `task/macro_f1`, `answer/accuracy/<question type>` and, with modality heads,
    `task@modality/accuracy` over the examples that have the modality."""
    summary = {}
    for task, num_classes in tasks.items():
        pred, labels = results[f"pred/{task}"], results[f"labels/{task}"]
        summary[f"{task}/accuracy"] = metrics.accuracy(pred, labels)
        summary[f"{task}/macro_f1"] = metrics.macro_f1(pred, labels, num_classes)
    for key in [k for k in results if "@" in k]:  # modality heads: pred/<task>@<modality>, -1 if absent
        task = key.removeprefix("pred/").split("@")[0]
        scored = results[key] >= 0
        summary[f"{key.removeprefix('pred/')}/accuracy"] = metrics.accuracy(
            results[key][scored], results[f"labels/{task}"][scored]
        )
    if "hits/align" in results:
        hits = results["hits/align"][results["valid/align"].astype(bool)]
        summary["align/accuracy"] = float(hits.mean()) if hits.size else float("nan")
    if "answer" in tasks:
        for index, qtype in enumerate(av_digits.QUESTION_TYPES):
            rows = results["question_type"] == index
            summary[f"answer/accuracy/{qtype}"] = metrics.accuracy(
                results["pred/answer"][rows], results["labels/answer"][rows]
            )
    return summary


def format_table(summary: Mapping[str, float], tasks: Iterable[str]) -> str:
    lines = [f"{'task':<16}{'accuracy':>10}{'macro-F1':>10}"]
    lines += [f"{t:<16}{summary[f'{t}/accuracy']:>10.4f}{summary[f'{t}/macro_f1']:>10.4f}" for t in tasks]
    heads = [k.removesuffix("/accuracy") for k in summary if "@" in k]
    lines += [f"{head:<16}{summary[f'{head}/accuracy']:>10.4f}" for head in heads]
    if "align/accuracy" in summary:
        lines.append(f"{'align (top-1)':<16}{summary['align/accuracy']:>10.4f}")
    per_type = [(k.rsplit("/", 1)[1], v) for k, v in summary.items() if k.startswith("answer/accuracy/")]
    if per_type:
        lines += ["", f"{'question type':<16}{'accuracy':>10}"]
        lines += [f"{qtype:<16}{value:>10.4f}" for qtype, value in per_type]
    return "\n".join(lines)


def format_metrics(summary: Mapping[str, float]) -> str:
    """One `name value` line per metric."""
    return "\n".join(f"{key:<24}{value:>10.4f}" for key, value in summary.items())


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run restored from its workdir: its config, tasks, model and one checkpoint's variables
    ({"params"}, and {"batch_stats"} for a model with BatchNorm), for `model.apply(variables, ...)`."""

    config: ml_collections.ConfigDict
    tasks: dict[str, int]
    model: MultimodalModel | TextTaskModel
    variables: dict
    step: int


def restore_run(
    workdir: str | pathlib.Path, which: str = "best", sharding=None, tasks: dict[str, int] | None = None
) -> Run:
    """The run in `workdir` with the variables of its best (or latest) checkpoint, placed with `sharding`
    (default: the first device). A run without a best checkpoint falls back to its latest. `tasks`: the
    run's task classes when known (text data sets take them from the data), else AV-Digits'."""
    workdir = pathlib.Path(workdir)
    config = read_config(workdir)
    manager = checkpoint.make_manager(
        workdir / "checkpoints",
        keep=config.train.keep,
        keep_best=config.train.keep_best,
        best_metric=config.train.best_metric,
        read_only=True,
    )
    step = manager.best_step() if which == "best" else manager.latest_step()
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    dataset = config.data.get("dataset", "av_digits")
    if tasks is None and dataset != "av_digits":
        raise ValueError(
            f"{workdir} is a text-only run (data.dataset={dataset!r}): evaluate it with mmjax.evaluate; "
            "predictions, reports and attention maps are for AV-Digits runs"
        )
    tasks = tasks or av_digits.task_classes(config.tasks)
    model = build_model(config.model, tasks)
    example = dummy_batch(config.model, tasks)
    init = functools.partial(model.init, {"params": jax.random.PRNGKey(0)}, example, train=False)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {
        name: tree for name, tree in jax.eval_shape(init).items() if name in ("params", "batch_stats")
    }
    abstract = parallel.with_sharding(abstract, sharding)
    return Run(config, tasks, model, checkpoint.restore_variables(manager, step, abstract), step)


def read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config.json a training run wrote into `workdir`."""
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def evaluate_text(workdir: pathlib.Path, split: str, which: str, max_batches: int) -> dict:
    """A text-only run (data.dataset ud_ewt | xquad) on `split`: writes eval_<split>.json with the metrics
    and, for tagging, a per-tag classification report per task (printed too)."""
    mesh = parallel.make_mesh()
    data = experiment_data(read_config(workdir))
    run = restore_run(workdir, which, parallel.replicated(mesh), data.tasks)
    batches = split_batches(run.config, data.load(split), data.preprocess)
    results = predict(run.variables, batches, make_eval_step(run.model, mesh), mesh, max_batches)
    summary = data.summarize(split, results)
    reports = data.text.reports(split, results)
    report = {"split": split, "step": run.step, "checkpoint": which, "metrics": summary, "reports": reports}
    (workdir / f"eval_{split}.json").write_text(json.dumps(report, indent=2))
    for task, table in reports.items():
        print(f"{task} on the {split} split (per word):\n{metrics.format_classification_report(table)}\n")
    print(f"{split} split, checkpoint of step {run.step} ({which}):")
    print(format_metrics(summary))
    return summary


def confusions(results: Mapping[str, np.ndarray], tasks: Mapping[str, int]) -> dict[str, list[list[int]]]:
    """{task: confusion matrix [true][predicted] as nested lists} of every classification task."""
    return {
        task: metrics.confusion_matrix(results[f"pred/{task}"], results[f"labels/{task}"], n).tolist()
        for task, n in tasks.items()
    }


def main(
    workdir: str | pathlib.Path,
    split: str = "test",
    questions: str = "",
    which: str = "best",
    drop: str = "",
    audio_snr: float | None = None,
    image_noise: float = 0.0,
    max_batches: int = 0,
) -> dict:
    """Evaluate the best (or latest) checkpoint of `workdir` on `split`; writes eval_<split><condition>.json.

    Robustness conditions: `drop` a modality ("text" | "image" | "audio") in every example, white noise at
    `audio_snr` dB on the recordings, Gaussian noise of std `image_noise` on the normalised images.
    `max_batches` > 0 evaluates only that many batches.
    """
    workdir = pathlib.Path(workdir)
    if read_config(workdir).data.get("dataset", "av_digits") != "av_digits":
        if questions or drop or audio_snr is not None or image_noise:
            raise ValueError("--questions, --drop, --audio-snr and --image-noise are for AV-Digits runs only")
        return evaluate_text(workdir, split, which, max_batches)
    mesh = parallel.make_mesh()
    run = restore_run(workdir, which, parallel.replicated(mesh))
    config, tasks, model = run.config, run.tasks, run.model
    source = load_split(config, split)
    phrasings = pipeline.load_questions(questions) if questions else None
    recordings = ""
    if audio_snr is not None:
        recordings = str(av_digits.resolve_data_dir(config.data.data_dir or None) / "fsdd" / "recordings")
    corruption = pipeline.Corruption(drop, audio_snr, image_noise, recordings)
    preprocess = make_preprocess(config, phrasings, corruption)
    batches = split_batches(config, source, preprocess)
    eval_fn = make_eval_step(model, mesh, av_digits.align_label_keys(config.model.get("align", {})))
    results = predict(run.variables, batches, eval_fn, mesh, max_batches)
    summary = summarize(results, tasks)
    report = {"split": split, "step": run.step, "checkpoint": which, "questions": questions}
    report |= {"metrics": summary, "confusion": confusions(results, tasks)}
    report["condition"] = {k: v for k, v in dataclasses.asdict(corruption).items() if k != "recordings_dir"}
    (workdir / f"eval_{split}{corruption.suffix}.json").write_text(json.dumps(report, indent=2))
    print(f"{split} split{corruption.suffix.replace('_', ' ')}, checkpoint of step {run.step} ({which}):")
    print(format_table(summary, tasks))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.evaluate", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--questions", default="", help="JSON file {question_type: [phrasings]}")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--drop", default="", choices=("", "text", "image", "audio"), help="missing modality")
    parser.add_argument("--audio-snr", type=float, default=None, help="white noise on the audio (dB SNR)")
    parser.add_argument("--image-noise", type=float, default=0.0, help="noise std on the normalised images")
    parser.add_argument("--max-batches", type=int, default=0, help="evaluate only this many batches")
    parser.add_argument("--explain", type=int, default=0, metavar="N", help="draw N examples' attention maps")
    args = parser.parse_args(sys.argv[1:])
    main(
        args.workdir,
        args.split,
        args.questions,
        args.checkpoint,
        args.drop,
        args.audio_snr,
        args.image_noise,
        args.max_batches,
    )
    if args.explain:
        for path in explain.write_maps(args.workdir, args.explain, args.split, args.checkpoint):
            print(f"attention map: {path}")
