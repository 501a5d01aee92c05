"""Report of trained runs: training curves, test metrics, robustness, confusion matrices, attention maps.

  python -m mmjax.report DIR [DIR ...] [--out OUT] [--explain N]
Writes OUT/report.html (self-contained: figures embedded as base64 PNG, inline CSS, no scripts) and
OUT/report.md (the same, its figures in OUT/report_files/). OUT defaults to DIR for one run and to the
runs' common parent folder for several; several runs get a comparison section first. --explain N first
writes N attention maps per run into DIR/explain/ (mmjax.explain.write_maps).

Any data set: a run's headline metric is its config's train.best_metric (the metric it ranks checkpoints
by); tables and curves show it first, then every other task's metrics, per-group tables come from the
`<task>/<metric>/<group>` keys of the eval files and confusion matrices are labelled with their class names.
The report reads files only: it imports no training code (no jax).

The content is a list of blocks (mmjax.report_render renders them as HTML and Markdown).
"""

import json
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from mmjax.report_render import (
    FILES,
    confusion_figure,
    curve_figure,
    render_html,
    render_markdown,
    run_colors,
)
from mmjax.results import (
    CommandParser,
    check_workdir,
    class_names,
    condition_name,
    group_metrics,
    load_run,
    main_metric_keys,
    task_metrics,
)

NONE = "—"  # a table cell without a value


# Reading a workdir (mmjax.results.load_run).


def write_attention_maps(workdir: pathlib.Path, n: int) -> None:
    """N attention-map figures of the run into workdir/explain/ (imported here: it restores the model)."""
    from mmjax.explain import write_maps

    write_maps(workdir, n)


def run_names(paths: Sequence[pathlib.Path]) -> list[str]:
    """Folder names, or paths below the common parent where folder names repeat."""
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return names
    parent = pathlib.Path(os.path.commonpath(paths))
    return [str(path.relative_to(parent)) or path.name for path in paths]


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have `key`."""
    points = [(r["step"], r[key]) for r in records if key in r]
    return [step for step, _ in points], [value for _, value in points]


def nonempty(curves: Sequence[tuple]) -> list[tuple]:
    """The curves (label, steps, values, style) that have points."""
    return [curve for curve in curves if curve[1]]


def run_tasks(run: dict) -> dict[str, float]:
    """{task: weight} of the tasks the run trains (weight > 0)."""
    return {task: weight for task, weight in run["config"].get("tasks", {}).items() if weight > 0}


def test_metrics(run: dict) -> dict[str, float]:
    """The metrics of the run's eval_test.json ({} without one)."""
    return run["evals"].get("eval_test", {}).get("metrics", {})


def best_validation(run: dict, metric: str = "") -> tuple[float, int] | None:
    """(best value, its first step) of a validation metric (default: the run's headline metric), None without
    validation records of it. Higher is better, as for checkpoint ranking."""
    steps, values = series(run["val"], f"val/{metric or run['headline']}")
    if not values:
        return None
    best = int(np.argmax(values))
    return values[best], steps[best]


def fmt(value) -> str:
    """A table cell: floats to 4 decimals."""
    if value is None:
        return NONE
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def condition_label(condition: Mapping) -> str:
    """The condition's name (`clean`, `drop-image`, ...), or its JSON where it has unknown arguments."""
    try:
        return condition_name(condition)
    except ValueError:
        return json.dumps(condition, sort_keys=True)


# Sections.


def validation_keys(run: dict) -> list[str]:
    """The headline metric, then every other task's main metric, of the validation records."""
    keys = dict.fromkeys(key.removeprefix("val/") for r in run["val"] for key in r if key.startswith("val/"))
    return main_metric_keys(keys, first=run["headline"]) if keys else []


def training_figures(run: dict, prefix: str) -> list[tuple[str, bytes, str]]:
    """Loss, accuracy (validation as markers), validation metrics (the headline first), learning rate, grad
    norms and throughput over steps."""
    train, val, tasks = run["train"], run["val"], run_tasks(run)
    color = {task: f"C{i}" for i, task in enumerate(tasks)}

    def per_task(records, template, label="{}", **style):
        curves = [
            (label.format(task), *series(records, template.format(task)), {"color": color[task], **style})
            for task in tasks
        ]
        return nonempty(curves)

    def single(key, label, **style):
        return nonempty([(label, *series(train, key), style)])

    validation = per_task(val, "val/{}/accuracy", "{} (val)", marker="o", linestyle=":")
    headline = run["headline"]
    val_metrics = nonempty(
        [
            (
                f"{key} (headline)" if key == headline else key,
                *series(val, f"val/{key}"),
                {"color": "black", "linewidth": 2.5, "marker": "o"}
                if key == headline
                else {"color": color.get(key.split("/")[0], "grey"), "marker": "o"},
            )
            for key in validation_keys(run)
        ]
    )
    figures = [
        (
            "loss",
            "training loss (total and per task)",
            "loss",
            single("loss", "total", color="black") + per_task(train, "{}/loss"),
        ),
        (
            "accuracy",
            "accuracy: training (lines), validation (markers)" if validation else "training accuracy",
            "accuracy",
            per_task(train, "{}/accuracy") + validation,
        ),
        (
            "validation",
            f"validation {headline} (headline) and each task's main metric",
            "value",
            val_metrics,
        ),
        ("learning_rate", "learning rate", "learning rate", single("learning_rate", "learning rate")),
        (
            "grad_norm",
            "gradient norms (global and per task)",
            "L2 norm",
            single("grad_norm", "global", color="black") + per_task(train, "{}/grad_norm"),
        ),
        ("throughput", "throughput", "examples / s", single("examples_per_sec", "examples/s")),
    ]
    log = {"grad_norm"}
    return [
        (f"{prefix}-{name}", curve_figure(title, ylabel, curves, name in log), title)
        for name, title, ylabel, curves in figures
        if curves
    ]


def ordered_tasks(report: dict, headline: str) -> list[str]:
    """The tasks of an eval report's metrics, the headline's task first."""
    tasks = list(task_metrics(report.get("metrics", {})))
    first = headline.partition("/")[0]
    return sorted(tasks, key=lambda task: task != first)


def metrics_tables(report: dict, headline: str) -> list[tuple]:
    """Every task's metrics (one row per task, the headline's task first), then the per-group metrics (one
    row per group, sorted; one column per `<task>/<metric>`, the headline first) of one eval report.
    Works on older eval files without "tasks" and "groups" (kinds unknown, groups named `group`)."""
    metrics, kinds = report["metrics"], report.get("tasks", {})
    tasks, per_task = ordered_tasks(report, headline), task_metrics(metrics)
    names = list(dict.fromkeys(name for task in tasks for name in per_task[task]))
    rows = [
        [task, (kinds.get(task) or {}).get("kind", NONE)]
        + [fmt(metrics.get(f"{task}/{name}")) for name in names]
        for task in tasks
    ]
    blocks = [("table", ["task", "kind", *names], rows)]
    grouped = group_metrics(metrics)
    if grouped:
        first = headline.partition("/")[0]
        columns = sorted(grouped, key=lambda key: (key != headline, key.partition("/")[0] != first))
        groups = sorted({group for values in grouped.values() for group in values})
        by = (report.get("groups") or {}).get("by") or "group"
        rows = [[group] + [fmt(grouped[key].get(group)) for key in columns] for group in groups]
        blocks.append(("table", [by, *columns], rows))
    return blocks


def robustness_table(evals: dict[str, dict], headline: str) -> tuple:
    """One row per eval file: its condition, checkpoint step, the headline metric and every other task's
    main metric."""
    keys = dict.fromkeys(key for report in evals.values() for key in report["metrics"])
    columns = main_metric_keys(keys, first=headline)
    rows = [
        [f"{stem}.json", report.get("split", NONE), condition_label(report.get("condition", {}))]
        + [fmt(report.get("step"))]
        + [fmt(report["metrics"].get(key)) for key in columns]
        for stem, report in evals.items()
    ]
    return ("table", ["file", "split", "condition", "step", *columns], rows)


def run_header(run: dict) -> list[tuple]:
    """Run name, workdir, fusion, tasks and their weights, headline metric, steps trained."""
    config = run["config"]
    fusion = config.get("model", {}).get("fusion", {}).get("name", NONE)
    weighting = config.get("multitask", {}).get("method", NONE)
    weights = ", ".join(f"{task} {weight:g}" for task, weight in run_tasks(run).items())
    steps = run["train"][-1]["step"] if run["train"] else 0
    best = best_validation(run)
    best_text = f"; best validation {fmt(best[0])} at step {best[1]}" if best else ""
    return [
        ("h2", f"Run {run['name']}"),
        ("p", f"workdir `{run['path']}`"),
        ("p", f"fusion: {fusion}; tasks (weight): {weights}; task weighting: {weighting}"),
        ("p", f"headline metric (train.best_metric): `{run['headline'] or NONE}`{best_text}"),
        ("p", f"steps trained: {steps}; validation evaluations: {len(run['val'])}"),
    ]


def training_blocks(run: dict, prefix: str) -> list[tuple]:
    figures = training_figures(run, prefix)
    blocks = [("h3", "Training"), ("figures", figures) if figures else ("p", "no training records yet")]
    if not run["val"]:
        blocks.append(("p", "no validation records in metrics.jsonl (written every train.eval_every steps)"))
    return blocks


def eval_blocks(run: dict) -> list[tuple]:
    """Test metrics from eval_test.json, then one row per other eval file (robustness conditions)."""
    test = run["evals"].get("eval_test")
    others = {stem: report for stem, report in run["evals"].items() if stem != "eval_test"}
    blocks = [("h3", "Test metrics")]
    if test is None:
        blocks.append(("p", f"no eval_test.json: run `python -m mmjax.evaluate --workdir {run['path']}`"))
    else:
        source = f"`eval_test.json`: {test.get('checkpoint', NONE)} checkpoint, step {test.get('step', NONE)}"
        headline = f"; headline `{run['headline']}` = {fmt(test['metrics'].get(run['headline']))}"
        blocks += [("p", source + headline), *metrics_tables(test, run["headline"])]
    if others:
        blocks += [
            ("h3", "Other eval conditions"),
            robustness_table(({"eval_test": test} if test else {}) | others, run["headline"]),
        ]
    return blocks


def confusion_blocks(run: dict, prefix: str) -> list[tuple]:
    """One heatmap per classification task from eval_test.json's confusion matrices, labelled with the class
    names of its "tasks" (class indices in older files)."""
    test = run["evals"].get("eval_test")
    blocks = [("h3", "Confusion matrices (test)")]
    if test is None:
        return blocks + [("p", "no confusion matrices without eval_test.json")]
    if "confusion" not in test:
        command = f"python -m mmjax.evaluate --workdir {run['path']}"
        return blocks + [
            ("p", f"eval_test.json has no confusion matrices (older evaluate): rerun `{command}`")
        ]
    if not test["confusion"]:
        return blocks + [("p", "no classification tasks: no confusion matrices")]
    caption = "rows: true class, columns: predicted; colour: fraction of the row"
    tasks = test.get("tasks", {})
    figures = [
        (
            f"{prefix}-confusion-{slug(task)}",
            confusion_figure(task, matrix, class_names(tasks, task, len(matrix))),
            f"{task}: {caption}",
        )
        for task, matrix in test["confusion"].items()
    ]
    return blocks + [("figures", figures)]


def attention_blocks(run: dict, prefix: str) -> list[tuple]:
    """The PNGs of DIR/explain/ and, from explain/shares.json, the attention shares per group."""
    blocks = [("h3", "Attention maps")]
    if not run["maps"]:
        return blocks + [("p", f"no attention maps in `{run['path'] / 'explain'}`: rerun with `--explain N`")]
    maps = [(f"{prefix}-explain-{slug(p.stem)}", p.read_bytes(), f"explain/{p.name}") for p in run["maps"]]
    shares = run["shares"]
    if shares and isinstance(shares.get("shares"), Mapping) and shares["shares"]:
        by = shares.get("group_by") or "group"
        query = f"the {shares['query']} stream's" if shares.get("query") else "the query's"
        text = f"Share of {query} attention on each stream's patches ({shares.get('examples', NONE)} "
        blocks.append(("p", text + f"{shares.get('split', NONE)} examples, per {by}):"))
        values = shares["shares"]
        streams = shares.get("streams") or list(dict.fromkeys(s for v in values.values() for s in v))
        rows = [[group] + [fmt(values[group].get(stream)) for stream in streams] for group in sorted(values)]
        blocks.append(("table", [by, *streams], rows))
    return blocks + [("figures", maps)]


def run_section(run: dict, prefix: str) -> list[tuple]:
    """Header, training curves, test metrics, other eval conditions, confusion matrices, attention maps."""
    return (
        run_header(run)
        + training_blocks(run, prefix)
        + eval_blocks(run)
        + confusion_blocks(run, prefix)
        + attention_blocks(run, prefix)
    )


def comparison_table(runs: Sequence[dict]) -> tuple:
    """One row per run: the test headline metric (one column per distinct headline), every other task's
    main test metric, the headline per group, and the best validation headline with its step."""
    headlines = list(dict.fromkeys(run["headline"] for run in runs if run["headline"]))
    others = list(
        dict.fromkeys(
            key
            for run in runs
            for key in main_metric_keys(test_metrics(run), first=run["headline"])
            if key not in headlines
        )
    )
    per_group = [
        (headline, group)
        for headline in headlines
        for group in sorted({g for run in runs for g in group_metrics(test_metrics(run)).get(headline, {})})
    ]
    header = ["run", "fusion", "steps", *(f"test {h}" for h in headlines), *others]
    header += [f"{h}/{group}" for h, group in per_group]
    for headline in headlines:
        header += [f"best val {headline}", f"best val {headline} at step"]
    rows = []
    for run in runs:
        metrics = test_metrics(run)
        row = [run["name"], run["config"].get("model", {}).get("fusion", {}).get("name", NONE)]
        row += [fmt(run["train"][-1]["step"] if run["train"] else None)]
        row += [fmt(metrics.get(h)) for h in headlines] + [fmt(metrics.get(key)) for key in others]
        row += [fmt(metrics.get(f"{h}/{group}")) for h, group in per_group]
        for headline in headlines:
            row += map(fmt, best_validation(run, headline) or (None, None))
        rows.append(row)
    return ("table", header, rows)


def comparison_figures(runs: Sequence[dict]) -> list[tuple[str, bytes, str]]:
    """Training loss and the validation headline metric of every run on shared axes (a figure per distinct
    headline)."""
    colors = run_colors(len(runs))
    pairs = list(zip(runs, colors, strict=True))
    loss = nonempty([(run["name"], *series(run["train"], "loss"), {"color": c}) for run, c in pairs])
    figures = [("compare-loss", "training loss (total)", "loss", loss)]
    for headline in dict.fromkeys(run["headline"] for run in runs if run["headline"]):
        val = nonempty(
            [
                (run["name"], *series(run["val"], f"val/{headline}"), {"color": c, "marker": "o"})
                for run, c in pairs
            ]
        )
        figures.append((f"compare-val-{slug(headline)}", f"validation {headline}", headline, val))
    return [
        (name, curve_figure(title, ylabel, curves), title)
        for name, title, ylabel, curves in figures
        if curves
    ]


def comparison_section(runs: Sequence[dict]) -> list[tuple]:
    blocks = [("h2", "Comparison"), comparison_table(runs)]
    missing = [run["name"] for run in runs if "eval_test" not in run["evals"]]
    if missing:
        blocks.append(("p", f"no eval_test.json (test columns empty): {', '.join(missing)}"))
    figures = comparison_figures(runs)
    return blocks + [
        ("figures", figures) if figures else ("p", "no training or validation records to compare")
    ]


def default_out(paths: Sequence[pathlib.Path]) -> pathlib.Path:
    """The workdir of a single run, the common parent folder of several."""
    return paths[0] if len(paths) == 1 else pathlib.Path(os.path.commonpath(paths))


def main(
    workdirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, explain: int = 0
) -> dict:
    """Write OUT/report.html and OUT/report.md (+ OUT/report_files/*.png); returns their paths."""
    paths = [check_workdir(workdir) for workdir in workdirs]
    if explain:
        for path in paths:
            write_attention_maps(path, explain)
    runs = [load_run(path, name) for path, name in zip(paths, run_names(paths), strict=True)]
    blocks = [("h1", f"mmjax report: {runs[0]['name'] if len(runs) == 1 else f'{len(runs)} runs'}")]
    if len(runs) > 1:
        blocks += comparison_section(runs)
    for index, run in enumerate(runs):
        blocks += run_section(run, f"{index}-{slug(run['name'])}")

    out = pathlib.Path(out) if out is not None else default_out(paths)
    files = out / FILES
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.glob("*.png"):
        stale.unlink()
    figures = [figure for block in blocks if block[0] == "figures" for figure in block[1]]
    for name, data, _ in figures:
        (files / f"{name}.png").write_bytes(data)
    (out / "report.html").write_text(render_html(blocks[0][1], blocks), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    return {
        "html": out / "report.html",
        "md": out / "report.md",
        "figures": [files / f"{name}.png" for name, _, _ in figures],
    }


def cli(argv: Sequence[str]) -> dict:
    """The command line: bad input (a folder that is not a workdir, an unreadable file) exits with status 2
    and `mmjax.report: error: ...`."""
    parser = CommandParser("mmjax.report", description=__doc__.strip().splitlines()[0])
    parser.add_argument("workdirs", nargs="+", metavar="DIR", help="training workdirs")
    parser.add_argument(
        "--out", default=None, help="output folder (default: DIR, or the DIRs' common parent)"
    )
    parser.add_argument(
        "--explain", type=int, default=0, metavar="N", help="first write N attention maps per run"
    )
    args = parser.parse_args(argv)
    if args.explain < 0:
        parser.error(f"--explain must be >= 0, got {args.explain}")
    try:
        written = main(args.workdirs, args.out, args.explain)
    except (ValueError, OSError) as err:
        parser.fail(err)
    print(f"wrote {written['html']} and {written['md']} ({len(written['figures'])} figures)")
    return written


if __name__ == "__main__":
    cli(sys.argv[1:])
