"""Evaluate a trained run on any data set: the metrics of every task, per group, and per-class reports.

  python -m mmjax.evaluate --workdir DIR [--split test] [--checkpoint best|latest] [--max-batches N]
      [--drop STREAM] [--image-noise STD] [--audio-snr DB] [--questions FILE] [--explain N]
Writes DIR/eval_<split><condition>.json (`_questions-<stem>` added under --questions FILE): metrics,
confusion matrices of classification tasks, per-class reports; and prints a table. Classification tasks get
accuracy and macro-F1, multi-label tasks mAP and micro/macro F1, regression MAE, RMSE and R^2; with
config.eval.group_by, the tasks are also scored per group (e.g. per question type). Robustness conditions:
a stream marked absent (--drop), Gaussian noise on the normalised images (--image-noise); the data set may
add its own (AV-Digits: --audio-snr, --questions).
--explain N also draws the attention maps of N examples into DIR/explain/ (mmjax.explain).
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mmjax import checkpoint, losses, metrics, parallel
from mmjax.data import datasets, pipeline
from mmjax.data.spec import DataSet, align_label_keys
from mmjax.model import MultimodalModel, TextTaskModel, build_model, dummy_batch


def split_batches(config: ml_collections.ConfigDict, source, preprocess) -> Iterator[dict]:
    """This process's share of each evaluation batch of `source` (see pipeline.eval_batches)."""
    return pipeline.eval_batches(
        source,
        batch_size=config.data.eval_batch_size,
        preprocess_fn=preprocess,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def eval_step(
    variables,
    batch: dict,
    *,
    model,
    kinds: tuple[tuple[str, str], ...],
    align_positives: tuple[str, str] | None = None,
) -> dict:
    """Per task (by its kind, `kinds` = ((task, kind), ...)): the predicted class (`pred/<task>`; per token
    for tagging and span), sigmoid scores (`scores/<task>`, multilabel) or the predicted value
    (`pred/<task>`, regression), with `labels/<task>`; per stream head, the predicted class (-1 where the
    stream is absent). `index` and `valid` pass through; the span task also returns its start/end logits.

    The contrastive `align` task gives `hits/align`: whether each example's nearest other-stream
    embedding in the same eval batch is a positive (labels `align_positives` equal, else itself).
    """
    outputs, _ = model.apply(variables, batch, train=False)
    result = {}
    for task, heads in outputs.pop("modality_heads", {}).items():  # scored on the examples with m
        for m, logits in heads.items():
            result[f"pred/{task}@{m}"] = jnp.where(outputs["present"][m], jnp.argmax(logits, -1), -1)
    outputs.pop("present", None)
    for task, kind in kinds:
        out = outputs[task]
        if kind == "align":
            valid = out["valid"] & batch["valid"]
            positives = None
            if align_positives is not None:
                positives = losses.positives_from_labels(batch[align_positives[0]], batch[align_positives[1]])
            result["hits/align"] = losses.retrieval_hits(out["x"], out["y"], valid, positives)
            result["valid/align"] = valid
            continue
        if kind == "multilabel":
            result[f"scores/{task}"] = jax.nn.sigmoid(out)
        elif kind == "regression":
            result[f"pred/{task}"] = out[..., 0]
        else:
            result[f"pred/{task}"] = jnp.argmax(out, -1)
        result[f"labels/{task}"] = batch[f"labels/{task}"]
        if kind == "span":
            result[f"logits/{task}"] = out
    result["valid"] = batch["valid"]
    if "index" in batch:
        result["index"] = batch["index"]
    return result


def make_eval_step(
    model, mesh, data: DataSet, align_positives: tuple[str, str] | None = None, variable_shardings=None
):
    """eval_step for the data set's tasks, jitted over the mesh with the variables laid out by
    `variable_shardings` (parallel.tree_shardings; default replicated); results are replicated so every
    process can read all of them."""
    kinds = tuple((task, spec.kind) for task, spec in data.tasks.items())
    variable_shardings = parallel.replicated(mesh) if variable_shardings is None else variable_shardings
    return jax.jit(
        functools.partial(eval_step, model=model, kinds=kinds, align_positives=align_positives),
        in_shardings=(variable_shardings, parallel.batch_sharding(mesh)),
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


def format_table(summary: Mapping[str, float], tasks: Iterable[str]) -> str:
    """The metrics as a table: one row per task (its metrics as columns), then stream heads, then each
    member's tasks (`<member>/<task>/<metric>`, data.mix), then one table per grouped task (group -> its
    main metric)."""
    tasks = list(tasks)
    rows, grouped = {}, {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] not in tasks and parts[1] in tasks:  # a mixed data set's member
            parts = [f"{parts[0]}/{parts[1]}", *parts[2:]]
        if len(parts) == 2:
            rows.setdefault(parts[0], {})[parts[1]] = value
        elif len(parts) >= 3:
            grouped.setdefault(f"{parts[0]} {parts[1]}", []).append(("/".join(parts[2:]), value))
    order = [*tasks, *sorted(r for r in rows if "@" in r), *sorted(r for r in rows if "/" in r)]
    width = max(
        [20, *(len(name) + 2 for name in rows), *(len(g) + 2 for v in grouped.values() for g, _ in v)]
    )
    lines = [
        f"{name:<{width}}"
        + "".join(f"{metric} {value:.4f}   " for metric, value in rows[name].items()).rstrip()
        for name in order
        if name in rows
    ]
    for title, values in grouped.items():
        lines += ["", f"{'group':<{width}}{title}"]
        lines += [f"{group:<{width}}{value:.4f}" for group, value in values]
    return "\n".join(lines)


def confusions(results: Mapping[str, np.ndarray], data: DataSet) -> dict[str, list[list[int]]]:
    """{task: confusion matrix [true][predicted] as nested lists} of every single-label classification task
    (its labelled examples)."""
    matrices = {}
    for task, spec in data.tasks.items():
        if spec.kind == "classes":
            labels = results[f"labels/{task}"]
            labelled = labels >= 0
            matrix = metrics.confusion_matrix(
                results[f"pred/{task}"][labelled], labels[labelled], spec.outputs
            )
            matrices[task] = matrix.tolist()
    return matrices


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run restored from its workdir: its config, data set, model and one checkpoint's variables
    ({"params"}, and {"batch_stats"} for a model with BatchNorm), for `model.apply(variables, ...)`."""

    config: ml_collections.ConfigDict
    data: DataSet
    model: MultimodalModel | TextTaskModel
    variables: dict
    step: int

    @property
    def tasks(self) -> dict[str, int]:
        """{task: head outputs}."""
        return self.data.head_sizes()


def restore_run(
    workdir: str | pathlib.Path, which: str = "best", sharding=None, data: DataSet | None = None
) -> Run:
    """The run in `workdir` with the variables of its best (or latest) checkpoint, placed with `sharding`
    (a Sharding for every leaf; a Mesh: laid out on it by the run's config.parallel, as in training;
    default: the first device), on `data` (default: its config's data set; pass the DataSet a run from
    Python sources trained on). A run without a best checkpoint falls back to its latest."""
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
    data = data or datasets.from_config(config)
    model = build_model(config.model, data.head_sizes(), data.streams, data.text_vocab_size)
    example = dummy_batch(config.model, data.head_sizes(), streams=data.streams)
    init = functools.partial(model.init, {"params": jax.random.PRNGKey(0)}, example, train=False)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {
        name: tree for name, tree in jax.eval_shape(init).items() if name in ("params", "batch_stats")
    }
    if isinstance(sharding, jax.sharding.Mesh):
        sharding = parallel.tree_shardings(abstract, sharding, config)
    abstract = parallel.with_sharding(abstract, sharding)
    variables = checkpoint.restore_variables(manager, step, abstract, checkpoint.params_key(config))
    return Run(config, data, model, variables, step)


def read_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config.json a training run wrote into `workdir`."""
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def eval_file_name(split: str, corruption: pipeline.Corruption, questions: str = "") -> str:
    """eval_<split><condition>.json; other question phrasings add `_questions-<file stem>`, so results under
    them never overwrite those under the training phrasings."""
    phrasings = f"_questions-{pathlib.Path(questions).stem}" if questions else ""
    return f"eval_{split}{corruption.suffix}{phrasings}.json"


def conditioned_preprocess(data: DataSet, corruption: pipeline.Corruption, questions: str = ""):
    """The data set's preprocessing under a robustness condition (clean: data.preprocess)."""
    if corruption == pipeline.Corruption() and not questions:
        return data.preprocess
    if data.condition is None:
        raise ValueError(f"the {data.name} data set has no robustness conditions or other phrasings")
    if corruption.drop and corruption.drop not in data.streams:
        raise ValueError(f"--drop {corruption.drop!r} is not a stream of this data set: {list(data.streams)}")
    return data.condition(corruption, questions)


def main(
    workdir: str | pathlib.Path,
    split: str = "test",
    questions: str = "",
    which: str = "best",
    drop: str = "",
    audio_snr: float | None = None,
    image_noise: float = 0.0,
    max_batches: int = 0,
    data: DataSet | None = None,
) -> dict:
    """Evaluate the best (or latest) checkpoint of `workdir` on `split`; writes eval_file_name(...).

    Robustness conditions: `drop` a stream (e.g. "image") in every example, Gaussian noise of std
    `image_noise` on the normalised images; AV-Digits also has white noise at `audio_snr` dB on the
    recordings and other question phrasings (`questions`, a JSON file). `max_batches` > 0 evaluates only that
    many batches. `data`: the DataSet the run trained on when it came from Python sources.
    """
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh(spec=parallel.mesh_spec(read_config(workdir)))
    run = restore_run(workdir, which, mesh, data)
    config, data = run.config, run.data
    corruption = pipeline.Corruption(drop, audio_snr, image_noise)
    preprocess = conditioned_preprocess(data, corruption, questions)
    batches = split_batches(config, data.load(split), preprocess)
    positives = align_label_keys(config.model.get("align", {}), data.align_labels)
    shardings = jax.tree.map(lambda x: x.sharding, run.variables)
    eval_fn = make_eval_step(run.model, mesh, data, positives, shardings)
    results = predict(run.variables, batches, eval_fn, mesh, max_batches)
    summary = data.summarize(split, results)
    report = {"split": split, "step": run.step, "checkpoint": which, "questions": questions}
    report["tasks"] = {name: {"kind": t.kind, "classes": list(t.classes)} for name, t in data.tasks.items()}
    report["groups"] = {"by": config.get("eval", {}).get("group_by", ""), "tasks": list(data.group_tasks)}
    report |= {"metrics": summary, "confusion": confusions(results, data)}
    report["reports"] = data.reports(split, results) if data.reports else {}
    report["condition"] = {k: v for k, v in dataclasses.asdict(corruption).items() if k != "recordings_dir"}
    if jax.process_index() == 0:
        (workdir / eval_file_name(split, corruption, questions)).write_text(json.dumps(report, indent=2))
    for task, table in report["reports"].items():
        print(f"{task} on the {split} split:\n{metrics.format_classification_report(table)}\n")
    print(f"{split} split{corruption.suffix.replace('_', ' ')}, checkpoint of step {run.step} ({which}):")
    print(format_table(summary, data.tasks))
    return summary


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.evaluate", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--questions", default="", help="AV-Digits: JSON of other phrasings")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--drop", default="", help="a stream marked absent in every example, e.g. image")
    parser.add_argument(
        "--audio-snr", type=float, default=None, help="AV-Digits: white noise on the audio (dB)"
    )
    parser.add_argument("--image-noise", type=float, default=0.0, help="noise std on the normalised images")
    parser.add_argument("--max-batches", type=int, default=0, help="evaluate only this many batches")
    parser.add_argument("--explain", type=int, default=0, metavar="N", help="draw N examples' attention maps")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    try:
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
    except (ValueError, FileNotFoundError) as err:
        print(f"mmjax.evaluate: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.explain:
        from mmjax import explain  # explain imports this module

        for path in explain.write_maps(args.workdir, args.explain, args.split, args.checkpoint):
            print(f"attention map: {path}")
