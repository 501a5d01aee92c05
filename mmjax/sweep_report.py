"""What a sweep reports, from its runs' records (mmjax.sweep writes them): results.md tables (mean ± std
over seeds, per example group, per robustness condition, learning curves), results.csv rows and plots."""

import math
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mmjax.metrics import read_metrics
from mmjax.results import condition_name, main_metric_keys

SEED_AXIS = "seed"  # the grid axis that tables average over


def condition_names(sweep: Mapping) -> list[str]:
    """The sweep's test conditions by name, the clean test first."""
    return ["clean"] + [condition_name(c) for c in sweep["robustness"]]


def headline(records: Sequence[Mapping]) -> str:
    """The sweep's headline metric: the config.train.best_metric its complete runs share (the first run's if
    they differ); without one recorded, the main metric of the first task the clean test reported."""
    named = [r["best_metric"] for r in records if r["status"] == "complete" and r.get("best_metric")]
    if named:
        return named[0]
    keys = dict.fromkeys(
        k for r in records if r["status"] == "complete" for k in r["metrics"].get("clean", {})
    )
    return next(iter(main_metric_keys(keys)), "")


def group_name(record: Mapping) -> str:
    """A run's name without its seed: the rows of the tables ("all" if the grid has only seeds)."""
    rest = [part for part in record["name"].split(",") if not part.startswith(f"{SEED_AXIS}=")]
    return ",".join(rest) or "all"


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, count) of the finite values; std is 0 for a single value."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan"), 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def aggregate(records: Sequence[Mapping], value_fn) -> dict[str, tuple[float, float, int]]:
    """{group: (mean, std, n)} of value_fn(record) over the complete runs of each group (i.e. over seeds)."""
    groups: dict[str, list[float]] = {}
    for record in records:
        if record["status"] == "complete":
            groups.setdefault(group_name(record), []).append(value_fn(record))
    return {group: mean_std(values) for group, values in groups.items()}


def metric(condition: str, key: str):
    """A value_fn for aggregate: one test metric under one condition."""
    return lambda record: record["metrics"].get(condition, {}).get(key, float("nan"))


def field(key: str):
    """A value_fn for aggregate: a per-run number (num_params, flops_per_example, examples_per_sec)."""
    return lambda record: record.get(key, float("nan"))


def format_mean_std(stats: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stats
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_count(stats: tuple[float, float, int]) -> str:
    """A large number (parameters, FLOPs) as 1.23M / 4.56G; mean over the group."""
    mean, _, n = stats
    if n == 0:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(mean) >= size:
            return f"{mean / size:.2f}{unit}"
    return f"{mean:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def metric_columns(records: Sequence[Mapping], first: str = "") -> list[str]:
    """The headline metric (`first`, default: `headline(records)`), then every other task's main metric the
    clean test reported (tasks in order of appearance)."""
    keys = dict.fromkeys(k for r in records for k in r["metrics"].get("clean", {}))
    first = first or headline(records)
    return main_metric_keys(keys, first=first) if keys or first else []


def main_table(
    records: Sequence[Mapping], first: str = "", references: Mapping[str, Mapping[str, float]] | None = None
) -> str:
    """Clean test metrics (the headline first), size, cost and speed per group, mean ± std over seeds; then
    one row per reference ({label: {metric key: value}}, e.g. a classical baseline; "–" where it has none)."""
    keys = metric_columns(records, first)
    columns = [aggregate(records, metric("clean", key)) for key in keys]
    params, flops = aggregate(records, field("num_params")), aggregate(records, field("flops_per_example"))
    trainable = aggregate(records, field("num_trainable"))
    speed = aggregate(records, field("examples_per_sec"))
    header = ["run", "seeds", *keys, "parameters", "trainable", "FLOPs/example", "train examples/s"]
    rows = []
    for group, stats in (columns[0] if columns else {}).items():
        rows.append(
            [group, str(stats[2])]
            + [format_mean_std(column[group]) for column in columns]
            + [format_count(params[group]), format_count(trainable.get(group, (0.0, 0.0, 0)))]
            + [format_count(flops[group]), format_mean_std(speed[group], 1)]
        )
    for label, values in (references or {}).items():
        cells = [f"{values[key]:.3f}" if key in values else "–" for key in keys]
        rows.append([label, "–", *cells, "–", "–", "–", "–"])
    return markdown_table(header, rows)


def robustness_table(records: Sequence[Mapping], condition_names: Sequence[str], key: str = "") -> str:
    """The headline metric (or `key`) under every test condition per group, mean ± std over seeds."""
    key = key or headline(records)
    columns = [aggregate(records, metric(name, key)) for name in condition_names]
    rows = [[group] + [format_mean_std(column[group]) for column in columns] for group in columns[0]]
    return markdown_table(["run", *condition_names], rows)


def by_group_table(records: Sequence[Mapping], key: str) -> str:
    """The clean `key` per example group the data set reports (`<key>/<group>`, e.g. AV-Digits' answer
    accuracy per question type), one column per group, mean ± std over seeds; "" if no run has groups."""
    keys = dict.fromkeys(k for r in records for k in r["metrics"].get("clean", {}) if k.startswith(f"{key}/"))
    if not keys:
        return ""
    columns = [aggregate(records, metric("clean", k)) for k in keys]
    rows = [[group] + [format_mean_std(column[group]) for column in columns] for group in columns[0]]
    return markdown_table(["run", *(k.removeprefix(f"{key}/") for k in keys)], rows)


def validation_curves(
    records: Sequence[Mapping], workdir: pathlib.Path, key: str
) -> dict[str, dict[int, tuple[float, float, int]]]:
    """{group: {step: (mean, std, n) over seeds}} of the validation `key` each complete run logged while
    training (its metrics.jsonl): the learning curves that show whether a budget has converged."""
    per_group: dict[str, dict[int, list[float]]] = {}
    for record in records:
        run_dir = workdir / "runs" / record["name"]
        if record["status"] != "complete" or not (run_dir / "metrics.jsonl").is_file():
            continue
        steps = per_group.setdefault(group_name(record), {})
        for row in read_metrics(run_dir):
            if f"val/{key}" in row:
                steps.setdefault(row["step"], []).append(row[f"val/{key}"])
    return {group: {s: mean_std(v) for s, v in sorted(steps.items())} for group, steps in per_group.items()}


def curves_table(curves: Mapping[str, Mapping[int, tuple[float, float, int]]]) -> str:
    """The validation curves as a table: one column per evaluation step, and the step of each group's best."""
    steps = sorted({step for curve in curves.values() for step in curve})
    rows = []
    for group, curve in curves.items():
        best = max(curve, key=lambda step: curve[step][0])
        cells = [format_mean_std(curve[s]) if s in curve else "–" for s in steps]
        rows.append([group, *cells, str(best)])
    return markdown_table(["run", *(f"step {s}" for s in steps), "best at step"], rows)


def plot_curves(curves: Mapping[str, Mapping[int, tuple]], key: str, path: pathlib.Path) -> None:
    """Validation `key` vs training step per group, mean over seeds with a ±1 std band."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for group, curve in curves.items():
        steps = list(curve)
        means = np.array([curve[s][0] for s in steps])
        stds = np.array([curve[s][1] for s in steps])
        (line,) = ax.plot(steps, means, marker="o", markersize=3, label=group)
        ax.fill_between(steps, means - stds, means + stds, alpha=0.2, color=line.get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {key}")
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_report(sweep: Mapping, records: Sequence[Mapping], curves: Mapping | None = None) -> str:
    names = condition_names(sweep)
    complete = [r for r in records if r["status"] == "complete"]
    failed = [r for r in records if r["status"] == "failed"]
    pending = math.prod(len(axis) for axis in sweep["grid"].values()) - len(complete) - len(failed)
    key = headline(complete)
    differ = sorted({r["best_metric"] for r in complete if r.get("best_metric")} - {key})
    lines = [
        f"# Sweep over {', '.join(sweep['grid'])} (base {sweep['base']}, {sweep['split']} split)",
        "",
        f"{len(complete)} complete, {len(failed)} failed, {pending} not run or unfinished. "
        f"Mean ± sample std over the `{SEED_AXIS}` axis; metrics on the {sweep['split']} split. "
        f"Headline metric (config train.best_metric): `{key or '–'}`.",
    ]
    if differ:
        lines.append(f"Some runs rank checkpoints by another metric: {', '.join(differ)}.")
    table = main_table(complete, key, sweep.get("references"))
    lines += ["", f"## Clean {sweep['split']} metrics, size and cost", "", table]
    groups = by_group_table(complete, key)
    if groups:
        lines += ["", f"## Clean {sweep['split']} {key} per example group", "", groups]
    if len(names) > 1:
        robustness = robustness_table(complete, names, key)
        lines += ["", f"## Robustness: {key} per test condition", "", robustness]
    if curves:
        lines += ["", f"## Validation {key} during training (learning curves)", "", curves_table(curves)]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- `{r['name']}`: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def csv_rows(records: Sequence[Mapping], grid_keys: Sequence[str]) -> tuple[list[str], list[list]]:
    """(header, rows) of results.csv: one row per run, metrics as `<condition>/<metric>` columns."""
    metric_keys = list(
        dict.fromkeys(
            f"{cond}/{key}" for r in records for cond, values in r["metrics"].items() for key in values
        )
    )
    numbers = ("num_params", "num_trainable", "flops_per_example", "examples_per_sec")
    header = ["name", "status", *grid_keys, *numbers]
    header += metric_keys + ["error"]
    rows = []
    for r in records:
        flat = {f"{cond}/{key}": v for cond, values in r["metrics"].items() for key, v in values.items()}
        row = [r["name"], r["status"], *(r["values"][key] for key in grid_keys)]
        row += [r.get(key, "") for key in numbers]
        rows.append(row + [flat.get(key, "") for key in metric_keys] + [r["error"]])
    return header, rows


def bounded(values: Sequence[float]) -> bool:
    """All finite values lie in [0, 1] (an accuracy-like metric: plotted on a 0..1 axis)."""
    finite = [v for v in values if math.isfinite(v)]
    return all(0.0 <= v <= 1.0 for v in finite)


def plot_metric(
    records: Sequence[Mapping],
    key: str,
    split: str,
    path: pathlib.Path,
    references: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """The clean metric `key` (the headline) per group, error bars = std over seeds; a dashed line per
    reference that has `key`."""
    stats = aggregate(records, metric("clean", key))
    groups = list(stats)
    fig = Figure(figsize=(max(4.0, 0.8 * len(groups) + 2), 4))
    ax = fig.subplots()
    ax.bar(range(len(groups)), [stats[g][0] for g in groups], yerr=[stats[g][1] for g in groups], capsize=4)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(f"{key} ({split})")
    lines = {label: values[key] for label, values in (references or {}).items() if key in values}
    for label, value in lines.items():
        ax.axhline(value, linestyle="--", color="gray", linewidth=1)
        ax.annotate(label, (len(groups) - 0.5, value), ha="right", va="bottom", fontsize="small")
    if bounded([stats[g][0] for g in groups] + list(lines.values())):
        ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_robustness(sweep: Mapping, records: Sequence[Mapping], key: str, path: pathlib.Path) -> None:
    """Left: the metric `key` (the headline) vs audio SNR per group (clean at the right). Right: bars for the
    other conditions."""
    snr = sorted((c["audio_snr"], condition_name(c)) for c in sweep["robustness"] if set(c) == {"audio_snr"})
    others = ["clean"] + [condition_name(c) for c in sweep["robustness"] if set(c) != {"audio_snr"}]
    per_condition = {name: aggregate(records, metric(name, key)) for name in condition_names(sweep)}
    groups = list(per_condition["clean"])
    cmap = matplotlib.colormaps["tab20"]
    colors = [cmap(i / 19) for i in range(len(groups))] if len(groups) > 10 else [None] * len(groups)
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    xs = [db for db, _ in snr] + [max([db for db, _ in snr], default=0) + 10]
    for group, color in zip(groups, colors, strict=True):
        points = [per_condition[name][group] for _, name in snr] + [per_condition["clean"][group]]
        left.errorbar(
            xs,
            [p[0] for p in points],
            yerr=[p[1] for p in points],
            marker="o",
            capsize=3,
            label=group,
            color=color,
        )
    left.set_xticks(xs, [f"{db:g}" for db, _ in snr] + ["clean"])
    left.set_xlabel("audio SNR (dB)")
    left.set_ylabel(f"{key} ({sweep['split']})")
    means = [s[0] for stats in per_condition.values() for s in stats.values()]
    if bounded(means):
        left.set_ylim(0, 1)
        right.set_ylim(0, 1)
    if groups:
        left.legend(fontsize="small")
    width = 0.8 / max(len(groups), 1)
    for index, group in enumerate(groups):
        stats = [per_condition[name][group] for name in others]
        positions = [i + (index - (len(groups) - 1) / 2) * width for i in range(len(others))]
        right.bar(
            positions,
            [s[0] for s in stats],
            width,
            yerr=[s[1] for s in stats],
            capsize=2,
            color=colors[index],
        )
    right.set_xticks(range(len(others)), others, rotation=30, ha="right")
    right.set_title("missing modality / image noise")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
