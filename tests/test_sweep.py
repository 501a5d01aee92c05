"""Sweeps: grid expansion and naming, aggregation over seeds, tables, resuming, and one real smoke sweep."""

import csv
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.experimental.compilation_cache import compilation_cache as jax_cache
from matplotlib.figure import Figure
from PIL import Image

from mmjax import sweep, sweep_report
from mmjax.fusion import FUSIONS
from mmjax.step import make_objective

ROOT = pathlib.Path(__file__).parents[1]
ABLATION = str(ROOT / "experiments/fusion_ablation.py")


def fake_sweep(**changes):
    base = dict(
        base=str(ROOT / "experiments/av_digits.py:smoke"),
        grid={"model.fusion.name": ["late", "cross_attention"], "seed": [0, 1]},
        overrides={"train.steps": 3},
        robustness=[{"drop": "image"}, {"audio_snr": 10.0}, {"audio_snr": 0.0}, {"image_noise": 0.5}],
        split="test",
        eval_max_batches=0,
    )
    return sweep.check_sweep(base | changes)


def fake_record(fusion, seed, answer, status="complete", conditions=("clean",)):
    values = {"model.fusion.name": fusion, "seed": seed}
    metrics = {c: {"answer/accuracy": answer, "speaker/accuracy": answer / 2} for c in conditions}
    return dict(
        name=sweep.run_name(values),
        values=values,
        best_metric="answer/accuracy",
        status=status,
        error="" if status == "complete" else "NonFiniteLossError: loss is nan at step 3",
        metrics=metrics if status == "complete" else {},
        num_params=1_500_000,
        num_trainable=1_200_000,
        flops_per_example=2.5e9,
        examples_per_sec=100.0 + seed,
    )


def test_grid_expands_to_named_runs_first_axis_slowest():
    runs = sweep.expand_grid({"model.fusion.name": ["late", "film"], "seed": [0, 1, 2]})
    assert [sweep.run_name(v) for v in runs] == [
        "fusion=late,seed=0",
        "fusion=late,seed=1",
        "fusion=late,seed=2",
        "fusion=film,seed=0",
        "fusion=film,seed=1",
        "fusion=film,seed=2",
    ]
    assert runs[4] == {"model.fusion.name": "film", "seed": 1}
    assert sweep.run_name({"model.fusion.fusion_layer": 2, "optim.learning_rate": 0.0005}) == (
        "fusion_layer=2,learning_rate=0.0005"
    )
    assert sweep_report.group_name({"name": sweep.run_name(runs[4])}) == "fusion=film"
    assert [sweep.run_name(v) for v in sweep.select(runs, "film,seed=[01]")] == [
        "fusion=film,seed=0",
        "fusion=film,seed=1",
    ]


def test_variant_axis_names_runs_by_label_and_applies_its_overrides():
    variants = {"single": {"tasks.speaker": 0.0, "tasks.match": 0.0}, "wide": {"model.size": "base"}}
    spec = fake_sweep(grid={"variant": variants, "seed": [0, 1]}, overrides={"train.steps": 3})
    runs = sweep.expand_grid(spec["grid"])
    assert [sweep.run_name(v) for v in runs] == [
        "variant=single,seed=0",
        "variant=single,seed=1",
        "variant=wide,seed=0",
        "variant=wide,seed=1",
    ]
    assert sweep.run_overrides(spec, runs[1]) == [
        "train.steps=3",
        "tasks.speaker=0.0",
        "tasks.match=0.0",
        "seed=1",
    ]
    config = sweep.run_config(spec, runs[2])
    assert (config.model.size, config.seed, config.tasks.speaker) == ("base", 0, 0.5)
    assert sweep.run_config(spec, runs[0]).tasks.speaker == 0.0
    with pytest.raises(ValueError, match="variant axis 'variant'"):
        fake_sweep(grid={"variant": {"single": "tasks.speaker=0"}})


def test_bad_grids_and_conditions_are_named():
    with pytest.raises(ValueError, match="clashing run-name labels"):
        fake_sweep(grid={"model.dropout": [0.1], "model.fusion.dropout": [0.1]})
    with pytest.raises(ValueError, match="grid axis 'seed' needs a non-empty list"):
        fake_sweep(grid={"seed": 0})
    with pytest.raises(ValueError, match="run name"):
        sweep.run_name({"data.tfds_dir": "/tmp/x"})
    with pytest.raises(ValueError, match=r"unknown robustness argument\(s\) \['snr'\]"):
        fake_sweep(robustness=[{"snr": 10}])
    assert [sweep.condition_name(c) for c in fake_sweep()["robustness"]] == [
        "drop-image",
        "snr-10",
        "snr-0",
        "image-noise-0.5",
    ]
    assert list(sweep.conditions(fake_sweep()))[0] == "clean"
    with pytest.raises(ValueError, match="optional: \\('references',\\)"):
        fake_sweep(refs={})
    with pytest.raises(ValueError, match="reference 'svc' needs {metric key: number}"):
        fake_sweep(references={"svc": {"answer/accuracy": "high"}})


def test_unknown_config_key_in_the_grid_stops_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.train, "main", lambda *a: pytest.fail("trained despite a bad grid"))
    bad = fake_sweep(grid={"seed": [0], "model.fusion.nme": ["late"]})
    with pytest.raises(
        ValueError, match=r"sweep run seed=0,nme=late .*unknown config key 'model.fusion.nme'"
    ):
        sweep.run_sweep(bad, tmp_path)
    with pytest.raises(ValueError, match="must be int, got 'x'"):
        sweep.run_sweep(fake_sweep(grid={"seed": ["x"]}), tmp_path)


def test_fusion_ablation_covers_every_fusion_and_seed():
    full = sweep.load_sweep(ABLATION)
    assert full["grid"] == {"model.fusion.name": list(FUSIONS), "seed": [0, 1, 2]}
    assert list(sweep.conditions(full)) == [
        "clean",
        "drop-image",
        "drop-audio",
        "drop-text",
        "snr-20",
        "snr-10",
        "snr-0",
        "image-noise-0.5",
        "image-noise-1",
    ]
    for values in sweep.expand_grid(full["grid"]):
        config = sweep.run_config(full, values)
        assert (config.model.fusion.name, config.seed) == (values["model.fusion.name"], values["seed"])
    baseline = json.loads((ROOT / "experiments/results/classical_baseline.json").read_text())
    [reference] = full["references"].values()  # the classical baseline as a table row
    assert reference["answer/accuracy"] == baseline["answer"] and len(reference) == 4
    smoke = sweep.load_sweep(f"{ABLATION}:smoke")
    assert len(sweep.expand_grid(smoke["grid"])) == 4
    assert sweep.run_config(smoke, {"seed": 1}, ["data.tfds_dir=/data"]).data.tfds_dir == "/data"


def test_fusion_ablation_reproduces_its_recorded_runs():
    """Every committed run record of the ablation was trained with the config the sweep builds today (paths
    aside; fields added since then at their defaults), so its table can be rerun or extended."""
    full = sweep.load_sweep(ABLATION)
    records = ROOT / "experiments/results/fusion_ablation/run_records"
    added = {"model.text.cache_layer": -1, "model.text.prefix": ""}
    for values in sweep.expand_grid(full["grid"]):
        recorded = flatten_dict(
            json.loads((records / sweep.run_name(values) / "config.json").read_text()), sep="."
        )
        now = flatten_dict(json.loads(json.dumps(sweep.run_config(full, values).to_dict())), sep=".")
        for key in set(recorded) | set(now):
            if key == "model.text.init_from" or "dir" in key.split(".")[-1]:
                continue
            want = recorded[key] if key in recorded else added[key]
            assert now[key] == want, (sweep.run_name(values), key)


def test_aggregation_is_mean_and_sample_std_over_seeds_of_complete_runs():
    records = [fake_record("late", s, a) for s, a in enumerate([0.5, 0.7, 0.6])]
    records += [fake_record("film", 0, 0.9), fake_record("film", 1, 0.0, status="failed")]
    stats = sweep_report.aggregate(records, sweep_report.metric("clean", "answer/accuracy"))
    assert list(stats) == ["fusion=late", "fusion=film"]
    mean, std, n = stats["fusion=late"]
    assert (round(mean, 6), round(std, 6), n) == (0.6, 0.1, 3)
    assert stats["fusion=film"] == (0.9, 0.0, 1)
    speed = sweep_report.aggregate(records, sweep_report.field("examples_per_sec"))
    assert speed["fusion=late"][:2] == (101.0, 1.0)
    assert sweep_report.mean_std([])[2] == 0 and sweep_report.mean_std([float("nan"), 1.0]) == (1.0, 0.0, 1)


def test_learning_curves_average_the_seeds_validation_logs_and_mark_the_best_step(tmp_path):
    logged = {  # (fusion, seed): validation accuracy at steps 100, 200, 300
        ("late", 0): [0.5, 0.7, 0.8],
        ("late", 1): [0.7, 0.9, 0.8],
        ("film", 0): [0.6, 0.65, 0.7],
    }
    records = [fake_record(f, s, curve[-1]) for (f, s), curve in logged.items()]
    records.append(fake_record("film", 1, 0.0, status="failed"))
    for record, curve in zip(records, logged.values(), strict=False):
        run_dir = tmp_path / "runs" / record["name"]
        run_dir.mkdir(parents=True)
        lines = [{"step": 50, "loss": 1.0}]
        lines += [
            {"step": 100 * (i + 1), "val/answer/accuracy": v, "val/speaker/accuracy": 0.1}
            for i, v in enumerate(curve)
        ]
        (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    curves = sweep_report.validation_curves(records, tmp_path, "answer/accuracy")
    assert list(curves) == ["fusion=late", "fusion=film"] and list(curves["fusion=late"]) == [100, 200, 300]
    mean, std, n = curves["fusion=late"][200]
    assert (round(mean, 6), round(std, 6), n) == (0.8, round(np.std([0.7, 0.9], ddof=1), 6), 2)
    assert curves["fusion=film"][300] == (0.7, 0.0, 1)  # the failed seed is left out
    table = sweep_report.curves_table(curves)
    assert "| step 100 | step 200 | step 300 | best at step |" in table
    assert table.splitlines()[2].endswith("| 200 |") and table.splitlines()[3].endswith("| 300 |")
    sweep_report.plot_curves(curves, "answer/accuracy", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_tables_format_mean_and_std():
    assert sweep_report.format_mean_std((0.61234, 0.1, 3)) == "0.612 ± 0.100"
    assert sweep_report.format_mean_std((0.9, 0.0, 1)) == "0.900"
    assert sweep_report.format_mean_std((float("nan"), float("nan"), 0)) == "–"
    assert (
        sweep_report.format_count((1_500_000, 0, 2)) == "1.50M"
        and sweep_report.format_count((2.5e9, 0, 1)) == "2.50G"
    )
    assert sweep_report.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    names = ["clean", "drop-image"]
    records = [fake_record("late", s, a, conditions=names) for s, a in enumerate([0.5, 0.7, 0.6])]
    records.append(fake_record("film", 0, 0.0, status="failed"))
    main = sweep_report.main_table(records[:3]).splitlines()
    assert main[0] == (
        "| run | seeds | answer/accuracy | speaker/accuracy | parameters | trainable | FLOPs/example "
        "| train examples/s |"
    )
    assert main[2] == (
        "| fusion=late | 3 | 0.600 ± 0.100 | 0.300 ± 0.050 | 1.50M | 1.20M | 2.50G | 101.0 ± 1.0 |"
    )
    robust = sweep_report.robustness_table(records[:3], names).splitlines()
    assert robust[0] == "| run | clean | drop-image |" and robust[2].count("0.600 ± 0.100") == 2
    report = sweep_report.markdown_report(fake_sweep(), records)
    assert "3 complete, 1 failed, 0 not run" in report
    assert "per example group" not in report  # no run reported groups
    grouped = [
        dict(r, metrics={"clean": r["metrics"]["clean"] | {"answer/accuracy/sum": 0.1 * r["values"]["seed"]}})
        for r in records[:3]
    ]
    groups = sweep_report.by_group_table(grouped, "answer/accuracy").splitlines()
    assert groups[0] == "| run | sum |" and groups[2] == "| fusion=late | 0.100 ± 0.100 |"
    assert "## Clean test answer/accuracy per example group" in sweep_report.markdown_report(
        fake_sweep(), grouped
    )
    baseline = {"classical": {"answer/accuracy": 0.97}}
    with_reference = sweep_report.markdown_report(fake_sweep(references=baseline), records)
    assert "| classical | – | 0.970 | – | – | – | – | – |" in with_reference
    assert "| classical |" not in report
    assert "- `fusion=film,seed=0`: NonFiniteLossError: loss is nan at step 3" in report
    header, rows = sweep_report.csv_rows(records, ["model.fusion.name", "seed"])
    assert header[:4] == ["name", "status", "model.fusion.name", "seed"] and header[-1] == "error"
    assert rows[0][header.index("drop-image/answer/accuracy")] == 0.5 and rows[3][1] == "failed"


def fake_training(monkeypatch, calls, fail=()):
    """train/evaluate stand-ins that write nothing but a config and count calls; `fail`: run names to NaN."""

    def fake_train(config, workdir):
        calls.append(("train", pathlib.Path(workdir).name))
        if pathlib.Path(workdir).name in fail:
            raise RuntimeError("loss is nan at step 2")

    def fake_evaluate(workdir, split="test", questions="", which="best", max_batches=0, **condition):
        calls.append(("evaluate", pathlib.Path(workdir).name, sweep.condition_name(condition)))
        return {"answer/accuracy": 0.5 + 0.1 * len(calls) % 0.4, "speaker/accuracy": 0.25}

    monkeypatch.setattr(sweep.train, "main", fake_train)
    monkeypatch.setattr(sweep.evaluate, "main", fake_evaluate)
    monkeypatch.setattr(sweep, "model_cost", lambda config: (1000, 900, 2e6))
    monkeypatch.setattr(sweep, "median_examples_per_sec", lambda run_dir: 50.0)


def test_rerun_skips_complete_runs_and_retries_failed_ones(tmp_path, monkeypatch):
    calls = []
    fake_training(monkeypatch, calls, fail={"fusion=late,seed=1"})
    records = sweep.run_sweep(fake_sweep(), tmp_path)
    assert [r["status"] for r in records] == ["complete", "failed", "complete", "complete"]
    assert len(calls) == 4 + 3 * 5
    failed = json.loads((tmp_path / "runs/fusion=late,seed=1/results.json").read_text())
    assert failed["error"] == "RuntimeError: loss is nan at step 2" and "Traceback" in failed["traceback"]
    assert "fusion=late,seed=1`: RuntimeError" in (tmp_path / "results.md").read_text()
    assert all((tmp_path / name).stat().st_size > 0 for name in ("accuracy.png", "robustness.png"))

    calls.clear()
    sweep.run_sweep(fake_sweep(), tmp_path)  # only the failed run again
    assert {c[1] for c in calls} == {"fusion=late,seed=1"}

    calls.clear()
    more = fake_sweep(robustness=[*fake_sweep()["robustness"], {"drop": "text"}])
    records = sweep.run_sweep(more, tmp_path, only="cross_attention")  # resumes with the new condition only
    assert [c for c in calls if c[0] == "evaluate"] == [
        ("evaluate", "fusion=cross_attention,seed=0", "drop-text"),
        ("evaluate", "fusion=cross_attention,seed=1", "drop-text"),
    ]
    assert set(records[2]["metrics"]) == set(sweep.conditions(more))

    calls.clear()
    sweep.main([ABLATION + ":smoke", "--workdir", str(tmp_path), "--report"])
    assert calls == []


@pytest.fixture
def no_user_cache():
    """No XLA cache set (tests/conftest.py sets one for the run); caches of any compile time are written."""
    user_cache = jax.config.jax_compilation_cache_dir
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    jax_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", user_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)


def test_a_sweep_caches_compilations_in_its_folder_unless_the_user_set_a_cache(tmp_path, no_user_cache):
    with sweep.compilation_cache(tmp_path / "jax_cache"):
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax_cache")
        jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.arange(5.0)).block_until_ready()
    assert any((tmp_path / "jax_cache").iterdir()) and not jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "user_cache"))
    with sweep.compilation_cache(tmp_path / "unused"):
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "user_cache")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "user_cache")
    assert not (tmp_path / "unused").exists()


@pytest.mark.xdist_group("smoke_run")  # never beside the AV smoke trainings of tests/test_predict.py
def test_smoke_sweep_trains_tests_reports_and_resumes(av_digits_dir, tmp_path, monkeypatch):
    argv = [f"{ABLATION}:smoke", "--workdir", str(tmp_path), f"--config.data.tfds_dir={av_digits_dir}"]
    records = sweep.main(argv)
    smoke = sweep.load_sweep(f"{ABLATION}:smoke")
    assert [r["status"] for r in records] == ["complete"] * 4, [r["error"] for r in records]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == [
        "fusion=late,seed=0",
        "fusion=late,seed=1",
        "fusion=cross_attention,seed=0",
        "fusion=cross_attention,seed=1",
    ]
    for row in rows:
        assert int(row["num_params"]) > 0 and float(row["flops_per_example"]) > 0
        assert float(row["examples_per_sec"]) > 0
        for name in sweep.conditions(smoke):
            assert 0.0 <= float(row[f"{name}/answer/accuracy"]) <= 1.0
    assert rows[0]["num_params"] != rows[2]["num_params"]  # different fusions, different sizes
    report = (tmp_path / "results.md").read_text()
    assert "| fusion=late | 2 |" in report and "| fusion=cross_attention | 2 |" in report
    assert all(
        (tmp_path / name).stat().st_size > 0 for name in ("accuracy.png", "robustness.png", "curves.png")
    )
    assert "## Validation answer/accuracy during training (learning curves)" in report
    assert not (tmp_path / "jax_cache").exists()  # the test run's cache (tests/conftest.py) was used

    monkeypatch.setattr(sweep.train, "main", lambda *a: pytest.fail("a complete run trained again"))
    monkeypatch.setattr(sweep.evaluate, "main", lambda *a, **k: pytest.fail("a complete run evaluated again"))
    assert [r["status"] for r in sweep.main(argv)] == ["complete"] * 4


def test_multitask_and_peft_sweeps_define_valid_runs():
    multitask = sweep.load_sweep(str(ROOT / "experiments/multitask.py"))
    runs = sweep.expand_grid(multitask["grid"])
    assert [r["variant"] for r in runs[::3]] == [
        "single",
        "static",
        "uncertainty",
        "gradnorm",
        "pcgrad",
        "dwa",
    ]
    configs = {sweep.run_name(r): sweep.run_config(multitask, r) for r in runs}
    single, pcgrad = configs["variant=single,seed=0"], configs["variant=pcgrad,seed=2"]
    assert make_objective(single).tasks == ("answer",)
    assert make_objective(pcgrad).tasks[0] == "align" and pcgrad.multitask.method == "pcgrad"
    assert (pcgrad.seed, pcgrad.train.epochs) == (2, 5.0)
    peft = sweep.load_sweep(str(ROOT / "experiments/peft.py"))
    lora = sweep.run_config(peft, {"variant": "lora", "seed": 0})
    assert lora.model.peft.lora and lora.optim.lr_rules.endswith("text/.*=0")
    assert lora.model.text.init_from.startswith("hf:")


@pytest.mark.slow  # fusion/test_streams.py covers image queries; this trains one sweep run
def test_query_modality_sweep_trains_an_image_query_model(av_digits_dir, tmp_path):
    queries = sweep.load_sweep(str(ROOT / "experiments/query_modality.py"))
    ablation = sweep.load_sweep(ABLATION)
    # The text-query runs are the ablation's cross_attention runs: the same config, seed for seed.
    text = sweep.run_config(queries, {"variant": "text", "seed": 1}).to_dict()
    same = sweep.run_config(ablation, {"model.fusion.name": "cross_attention", "seed": 1}).to_dict()
    assert text == same
    image = sweep.run_config(queries, {"variant": "image", "seed": 0})
    assert image.model.fusion.query == "image" and image.model.fusion.name == "cross_attention"

    spec = str(ROOT / "experiments/query_modality.py:smoke")
    argv = [
        spec,
        "--workdir",
        str(tmp_path),
        "--only",
        "variant=image,",
        f"--config.data.tfds_dir={av_digits_dir}",
    ]
    (record,) = sweep.main(argv)
    assert record["status"] == "complete", record["error"]
    assert set(record["metrics"]) == {"clean", "drop-text"}
    run = tmp_path / "runs" / "variant=image,seed=0"
    params = sweep.evaluate.restore_run(run).variables["params"]
    assert "image_layer_0" in params["fusion"] and "text_layer_0" not in params["fusion"]


# Any data set: a folder-style sweep (tasks same / digits / total), no training.


def folder_metrics(same: float, r2: float) -> dict:
    return {
        "digits/map": 0.6,
        "digits/micro_f1": 0.5,
        "same/accuracy": same,
        "same/macro_f1": same - 0.1,
        "total/mae": 1.5,
        "total/r2": r2,
        "same/accuracy/theo": same,
    }


def folder_record(fusion, seed, same, r2=-0.5, best_metric="same/accuracy", conditions=("clean",)):
    values = {"model.fusion.name": fusion, "seed": seed}
    record = fake_record(fusion, seed, same, conditions=conditions)
    metrics = {name: folder_metrics(same - 0.25 * (name != "clean"), r2) for name in conditions}
    return record | {"values": values, "best_metric": best_metric, "metrics": metrics}


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib Figure the sweep draws."""
    drawn = []

    class Recorded(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            drawn.append(self)

    monkeypatch.setattr(sweep_report, "Figure", Recorded)
    return drawn


def write_runs(workdir: pathlib.Path, records) -> None:
    for record in records:
        run_dir = workdir / "runs" / record["name"]
        run_dir.mkdir(parents=True)
        sweep.write_record(run_dir, record)


def test_a_folder_sweep_reports_its_best_metric_first(tmp_path, figures):
    names = list(sweep.conditions(fake_sweep()))
    records = [folder_record("late", s, a, conditions=names) for s, a in enumerate([0.5, 0.7, 0.6])]
    records += [folder_record("cross_attention", s, a, conditions=names) for s, a in enumerate([0.8, 0.9])]
    main = sweep_report.main_table(records).splitlines()
    assert main[0] == (
        "| run | seeds | same/accuracy | digits/map | total/r2 | parameters | trainable | FLOPs/example "
        "| train examples/s |"
    )
    assert main[2].startswith("| fusion=late | 3 | 0.600 ± 0.100 | 0.600 ± 0.000 | -0.500 ± 0.000 |")
    robust = sweep_report.robustness_table(records, names).splitlines()
    assert robust[0] == "| run | " + " | ".join(names) + " |"
    assert robust[2] == "| fusion=late | 0.600 ± 0.100 | " + " | ".join(["0.350 ± 0.100"] * 4) + " |"
    write_runs(tmp_path, records[:4])  # one cross_attention run not started
    sweep.write_report(fake_sweep(), tmp_path)
    report = (tmp_path / "results.md").read_text()
    assert "Headline metric (config train.best_metric): `same/accuracy`" in report
    assert (
        "## Clean test metrics, size and cost" in report and "## Robustness: same/accuracy per test" in report
    )
    assert "answer" not in report and "accuracy" not in report.replace("same/accuracy", "")
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["clean/same/accuracy"]) == 0.5 and float(rows[0]["drop-image/total/r2"]) == -0.5
    accuracy, robustness = figures
    assert accuracy.axes[0].get_ylabel() == "same/accuracy (test)"
    assert [ax.get_ylabel() for ax in robustness.axes[:2]] == ["same/accuracy (test)", ""]
    for name in ("accuracy.png", "robustness.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_a_regression_headline_is_not_clipped_to_0_1(figures, tmp_path):
    records = [
        folder_record(fusion, 0, 0.5, r2=r2, best_metric="total/r2")
        for fusion, r2 in [("late", -2.0), ("film", 3.0)]
    ]
    assert (
        sweep_report.main_table(records)
        .splitlines()[0]
        .startswith("| run | seeds | total/r2 | digits/map | same/")
    )
    sweep_report.plot_metric(records, "total/r2", "validation", tmp_path / "plot.png")
    (figure,) = figures
    assert figure.axes[0].get_ylabel() == "total/r2 (validation)"
    assert figure.axes[0].get_ylim()[0] < -1  # not the 0..1 axis of an accuracy


def test_records_without_a_best_metric_take_it_from_the_runs_config(tmp_path):
    records = [folder_record("late", s, 0.5, best_metric="") for s in range(2)]
    write_runs(tmp_path, records)
    spec = fake_sweep(robustness=[])
    assert sweep_report.headline(sweep.collect(spec, tmp_path)) == "digits/map"  # no config: the first task's
    config = {"train": {"best_metric": "total/r2"}, "tasks": {"same": 1.0}}
    for record in records:
        (tmp_path / "runs" / record["name"] / "config.json").write_text(json.dumps(config))
    collected = sweep.collect(spec, tmp_path)
    assert [r["best_metric"] for r in collected] == ["total/r2", "total/r2"]
    assert "| run | seeds | total/r2 | digits/map | same/accuracy |" in sweep_report.markdown_report(
        spec, collected
    )


def test_only_process_0_prints_and_writes(tmp_path, monkeypatch, capsys):
    calls = []
    fake_training(monkeypatch, calls)
    monkeypatch.setattr(sweep.jax, "process_index", lambda: 1)
    records = sweep.run_sweep(fake_sweep(grid={"seed": [0]}), tmp_path)
    assert [r["status"] for r in records] == [] and len(calls) == 1 + 5  # trained and tested, not recorded
    assert "mmjax.sweep" not in "".join(capsys.readouterr())  # (the config's own warnings may print)
    assert not list(tmp_path.rglob("*.*"))
    monkeypatch.setattr(sweep.jax, "process_index", lambda: 0)
    assert [r["status"] for r in sweep.run_sweep(fake_sweep(grid={"seed": [0]}), tmp_path)] == ["complete"]
    assert "mmjax.sweep: [1/1] seed=0" in capsys.readouterr().out


def test_the_sweep_modules_set_no_matplotlib_backend():
    for module in (sweep, sweep_report):
        source = pathlib.Path(module.__file__).read_text()
        assert "matplotlib.use" not in source and "pyplot" not in source, module.__name__


def run_sweep_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmjax.sweep", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def test_bad_input_on_the_command_line_exits_2_naming_it(tmp_path):
    missing = run_sweep_command(tmp_path / "nope.py", "--workdir", tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(
        f"mmjax.sweep: error: sweep file '{tmp_path / 'nope.py'}' does not exist"
    )
    unknown = run_sweep_command(f"{ABLATION}:smoke", "--workdir", tmp_path, "--config.model.nope=1")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.startswith("mmjax.sweep: error: sweep run fusion=late,seed=0")
    assert "unknown config key 'model.nope'" in unknown.stderr
    usage = run_sweep_command(f"{ABLATION}:smoke", "--workdir", tmp_path, "--confg.seed=1")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: python -m mmjax.sweep")
    assert usage.stderr.splitlines()[-1].startswith(
        "mmjax.sweep: error: unrecognised argument '--confg.seed=1'"
    )
    assert not list(tmp_path.iterdir())  # nothing trained or written
