"""Training: every experiment's smoke config trains; 1 and 8 devices agree; killed runs resume exactly."""

import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.special

from mmjax import checkpoint, evaluate, losses, multitask, optim, parallel, train
from mmjax.config import load_config
from mmjax.data import av_digits, pipeline
from mmjax.metrics import read_metrics
from mmjax.model import build_model
from mmjax.step import init_state, make_objective, make_train_step

ROOT = pathlib.Path(__file__).parents[1]
EXPERIMENTS = sorted(  # AV-Digits experiments (the text-only ones are smoke-tested in test_text_tasks.py)
    str(p.relative_to(ROOT))
    for p in ROOT.glob("experiments/*.py")
    if "def get_config" in p.read_text() and load_config(str(p)).data.dataset == "av_digits"
)


def smoke_config(tfds_dir, spec="experiments/av_digits.py:smoke", **overrides):
    config = load_config(str(ROOT / spec), [f"{key}={value}" for key, value in overrides.items()])
    config.data.tfds_dir = str(tfds_dir)
    return config


def final_params(workdir, config):
    manager = checkpoint.make_manager(
        workdir / "checkpoints", keep=9, keep_best=1, best_metric=config.train.best_metric, read_only=True
    )
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
    return manager.latest_step(), jax.device_get(restored["state"]["params"])


def last_record_per_step(workdir):
    return {record["step"]: record for record in read_metrics(workdir) if "loss" in record}


@pytest.mark.parametrize("spec", EXPERIMENTS)
def test_smoke_config_trains_and_evaluates(spec, av_digits_dir, tmp_path):
    config = smoke_config(av_digits_dir, f"{spec}:smoke")
    val = train.main(config, tmp_path)
    records = last_record_per_step(tmp_path)
    assert sorted(records) == list(
        range(config.train.log_every, config.train.steps + 1, config.train.log_every)
    )
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records.values())
    classes = av_digits.task_classes(config.tasks)
    assert 0.0 <= val["answer/accuracy"] <= 1.0 and set(val) >= {f"{t}/macro_f1" for t in classes}
    assert (tmp_path / "config.json").is_file() and any((tmp_path / "tensorboard").iterdir())
    whole_split = spec == "experiments/av_digits.py"  # the default small model; 2 batches for bigger ones
    test = evaluate.main(tmp_path, split="test", max_batches=0 if whole_split else 2)
    assert test.keys() == val.keys()
    assert (tmp_path / "eval_test.json").is_file()
    if "batch_stats" in evaluate.restore_run(tmp_path).variables:
        check_batch_stats(tmp_path)


def check_batch_stats(workdir):
    """A model with BatchNorm (ResNet): training moved the running statistics, the checkpoint holds them, and
    evaluation normalises with them (an example's outputs do not depend on the rest of its batch)."""
    run = evaluate.restore_run(workdir, "latest")
    stats = jax.tree_util.tree_leaves_with_path(run.variables["batch_stats"])
    means = [v for path, v in stats if "mean" in jax.tree_util.keystr(path)]
    variances = [v for path, v in stats if "var" in jax.tree_util.keystr(path)]
    assert means and len(means) == len(variances)
    assert all(np.abs(m).max() > 0 for m in means)  # initialised at 0
    assert all(np.abs(v - 1.0).max() > 0 for v in variances)  # initialised at 1
    source = run.data.load("test")
    preprocess = run.data.preprocess
    batch = jax.tree.map(lambda *xs: np.stack(xs), *[preprocess(source[i]) for i in range(6)])
    full, _ = run.model.apply(run.variables, batch, train=False)
    part, _ = run.model.apply(run.variables, jax.tree.map(lambda x: x[:2], batch), train=False)
    np.testing.assert_allclose(full["answer"][:2], part["answer"], rtol=1e-5, atol=1e-6)


def test_one_and_eight_devices_give_the_same_step(av_digits_dir):
    assert jax.device_count() == 8
    config = smoke_config(av_digits_dir)
    tasks = av_digits.task_classes(config.tasks)
    source = av_digits.load("train", tfds_dir=av_digits_dir)
    batches = pipeline.train_iterator(
        source, batch_size=16, seed=0, preprocess_fn=av_digits.make_preprocess(config)
    )
    batch_list = [next(batches) for _ in range(2)]
    model = build_model(config.model, tasks)
    # As in the av_digits smoke run: its 8-device train step is this one (compiled once per test run).
    optimizer = optim.make_optimizer(config.optim, total_steps=config.train.steps)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        objective = make_objective(config)
        make_state = functools.partial(init_state, model, optimizer, objective, batch_list[0], 0)
        state = jax.jit(make_state, out_shardings=parallel.replicated(mesh))()
        step = make_train_step(model, optimizer, objective, mesh)
        step_losses = []
        for batch in batch_list:
            global_batch = parallel.to_global(batch, mesh)
            assert len(global_batch["text"].sharding.device_set) == len(devices)
            state, scalars = step(state, global_batch)
            step_losses.append(float(scalars["loss"]))
        results.append((step_losses, jax.device_get(state.params)))
    (losses_1, params_1), (losses_8, params_8) = results
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params_1, params_8)
    assert losses_1[0] != losses_1[1]


def test_ema_of_the_params_follows_its_recurrence_and_is_what_evaluation_restores(av_digits_dir, tmp_path):
    config = smoke_config(av_digits_dir, **{"optim.ema_decay": 0.5, "train.label_smoothing": 0.1})
    tasks = av_digits.task_classes(config.tasks)
    source = av_digits.load("train", tfds_dir=av_digits_dir)
    batches = pipeline.train_iterator(
        source, batch_size=16, seed=0, preprocess_fn=av_digits.make_preprocess(config)
    )
    model, objective = build_model(config.model, tasks), make_objective(config)
    assert objective.label_smoothing == 0.1 and objective.ema_decay == 0.5
    optimizer = optim.make_optimizer(config.optim, total_steps=config.train.steps)
    mesh = parallel.make_mesh(jax.devices()[:1])
    batch = next(batches)
    state = init_state(model, optimizer, objective, batch, 0)
    step = make_train_step(model, optimizer, objective, mesh)
    params = [jax.device_get(state.params)]
    averages = [jax.device_get(state.ema_params)]
    for _ in range(3):
        state, _ = step(state, parallel.to_global(next(batches), mesh))
        params.append(jax.device_get(state.params))
        averages.append(jax.device_get(state.ema_params))
    expected = params[0]
    for t, new in enumerate(params[1:]):
        rate = min(0.5, (1 + t) / (10 + t))  # 0.1, 2/11, 3/12: the warm-up, then at most 0.5
        expected = jax.tree.map(lambda e, p, r=rate: r * e + (1 - r) * p, expected, new)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), averages[t + 1], expected
        )
    assert state.variables()["params"] is state.ema_params

    train.main(config, tmp_path)
    manager = checkpoint.make_manager(
        tmp_path / "checkpoints", keep=9, keep_best=1, best_metric=config.train.best_metric, read_only=True
    )
    saved = manager.restore(manager.best_step(), args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))[
        "state"
    ]
    restored = evaluate.restore_run(tmp_path).variables["params"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved["ema_params"])
    differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), saved["ema_params"], saved["params"])
    assert all(jax.tree.leaves(differs))


class Crash(Exception):
    pass


@pytest.mark.slow  # the SIGKILL test below covers resuming in the default run
def test_crash_and_restart_continues_with_the_same_losses(av_digits_dir, tmp_path, monkeypatch):
    overrides = dict(
        **{"train.steps": 10, "train.log_every": 1, "train.checkpoint_every": 3, "train.eval_every": 100}
    )
    reference = tmp_path / "reference"
    train.main(smoke_config(av_digits_dir, **overrides), reference)

    real_make_train_step = train.make_train_step

    def crashing_make_train_step(*args, **kwargs):
        step_fn = real_make_train_step(*args, **kwargs)

        def step(state, batch):
            if int(state.step) == 7:
                raise Crash("simulated crash before step 8")
            return step_fn(state, batch)

        return step

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(train, "make_train_step", crashing_make_train_step)
    with pytest.raises(Crash):
        train.main(smoke_config(av_digits_dir, **overrides), resumed)
    monkeypatch.setattr(train, "make_train_step", real_make_train_step)
    assert final_params(resumed, smoke_config(av_digits_dir))[0] == 6
    train.main(smoke_config(av_digits_dir, **overrides), resumed)

    steps = [record["step"] for record in read_metrics(resumed) if "loss" in record]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]  # step 7 ran before the crash and again after resume
    expected, got = last_record_per_step(reference), last_record_per_step(resumed)
    for step in range(1, 11):
        assert got[step]["loss"] == expected[step]["loss"], step
    (step_a, params_a), (step_b, params_b) = (
        final_params(reference, smoke_config(av_digits_dir)),
        final_params(resumed, smoke_config(av_digits_dir)),
    )
    assert step_a == step_b == 10
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


KILL_OVERRIDES = {
    "train.steps": 40,
    "train.log_every": 1,
    "train.checkpoint_every": 5,
    "train.eval_every": 1000,
}


@pytest.fixture(scope="session")  # not rebuilt when other modules' tests run between its two tests
def uninterrupted(av_digits_dir, tmp_path_factory):
    """(workdir, its last metrics record per step) of a 40-step smoke run that nothing interrupts."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.main(smoke_config(av_digits_dir, **KILL_OVERRIDES), workdir)
    return workdir, last_record_per_step(workdir)


def _train_command(workdir, tfds_dir) -> list[str]:
    command = [sys.executable, "-m", "mmjax.train", "--config", "experiments/av_digits.py:smoke"]
    command += ["--workdir", str(workdir), f"--config.data.tfds_dir={tfds_dir}"]
    return command + [f"--config.{k}={v}" for k, v in KILL_OVERRIDES.items()]


def _signal_after(command, workdir, records: int, signum: int) -> subprocess.Popen:
    """Starts the command and sends `signum` once metrics.jsonl has `records` records; waits for the exit."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (workdir / "metrics.jsonl").is_file() and len(read_metrics(workdir)) >= records:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read()[-2000:]
    process.send_signal(signum)
    process.wait(timeout=120)
    return process


@pytest.mark.xdist_group("uninterrupted")  # one worker trains the fixture's run once for both tests
def test_sigterm_then_sigkill_then_rerun_matches_an_uninterrupted_run(av_digits_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "interrupted"
    command = _train_command(workdir, av_digits_dir)
    # SIGTERM: every step so far is logged and the checkpoint is of the current step (between save intervals).
    process = _signal_after(command, workdir, 12, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, process.stderr.read()[-2000:]
    saved = int(process.stdout.read().split("SIGTERM: saved the checkpoint of step ")[1].split()[0])
    assert sorted(last_record_per_step(workdir)) == list(range(1, saved + 1))
    assert final_params(workdir, smoke_config(av_digits_dir))[0] == saved
    # SIGKILL of the rerun: no chance to save, so the next rerun goes back to the last periodic checkpoint.
    _signal_after(command, workdir, saved + 14, signal.SIGKILL)
    killed_at = max(record["step"] for record in read_metrics(workdir))
    assert killed_at < KILL_OVERRIDES["train.steps"]

    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    resumed_from = int(finished.stdout.split("resumed from the checkpoint of step ")[1].split()[0])
    assert saved < resumed_from <= killed_at and resumed_from % 5 == 0
    reference, expected = uninterrupted
    got = last_record_per_step(workdir)
    assert sorted(got) == list(range(1, 41))
    for step in range(1, 41):
        assert got[step]["loss"] == expected[step]["loss"], step
    jax.tree.map(
        np.testing.assert_array_equal,
        final_params(reference, smoke_config(av_digits_dir))[1],
        final_params(workdir, smoke_config(av_digits_dir))[1],
    )


@pytest.mark.xdist_group("uninterrupted")
def test_a_run_saved_on_8_devices_resumes_on_1(av_digits_dir, tmp_path, uninterrupted):
    reference, expected = uninterrupted
    workdir = tmp_path / "moved"
    shutil.copytree(reference, workdir)
    command = _train_command(workdir, av_digits_dir) + ["--config.train.steps=44"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (
        "resumed from the checkpoint of step 40" in finished.stdout
        and ", 1 devices (mesh data:1)," in finished.stdout
    )
    got = last_record_per_step(workdir)
    assert sorted(got) == list(range(1, 45)) and all(np.isfinite(got[s]["loss"]) for s in range(41, 45))
    assert final_params(workdir, smoke_config(av_digits_dir))[0] == 44


def test_an_incomplete_save_is_reported_deleted_and_never_restored(tmp_path, capsys):
    def manager():
        return checkpoint.make_manager(tmp_path, keep=3, keep_best=1, best_metric="answer/accuracy")

    data = pipeline.train_iterator(range(8), batch_size=2, seed=0, preprocess_fn=lambda i: {"i": np.int32(i)})
    first = manager()
    checkpoint.save(first, 10, {"w": np.ones(3, np.float32)}, data)
    first.wait_until_finished()
    # What a run killed while saving step 15 leaves behind: Orbax's temporary folder, partly written.
    partial = tmp_path / f"15{checkpoint.INCOMPLETE_MARK}-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 100)
    assert checkpoint.incomplete_saves(tmp_path) == [partial]
    capsys.readouterr()
    restarted = manager()
    assert f"deleting the incomplete checkpoint {partial}" in capsys.readouterr().err
    assert restarted.latest_step() == 10 and not partial.exists()


def test_non_finite_steps_stop_with_the_step_task_and_saved_batch_or_are_skipped(tmp_path, capsys):
    records = [{"loss": 1.0, "answer/loss": 0.5, "speaker/loss": 0.5, "skipped": 0.0}] * 2
    records.append({"loss": float("nan"), "answer/loss": 0.5, "speaker/loss": float("inf"), "skipped": 1.0})
    batches = [
        {"image": np.full((2, 3), i, np.float32), "present": {"text": np.ones(2, bool)}} for i in range(3)
    ]
    assert train.check_finite(records[:2], first_step=10, batches=batches[:2], workdir=tmp_path) == 0
    with pytest.raises(
        train.NonFiniteLossError, match=r"at step 13 \(tasks with a non-finite loss: speaker\)"
    ):
        train.check_finite(records, first_step=10, batches=batches, workdir=tmp_path)
    saved = np.load(tmp_path / "nonfinite_batch_step13.npz")
    np.testing.assert_array_equal(saved["image"], batches[2]["image"])
    assert saved["present/text"].all()
    assert train.check_finite(records + records[2:], first_step=10, on_nonfinite="skip") == 2
    assert "skipped the update of step 14" in capsys.readouterr().out


@pytest.mark.slow  # the NaN-batch test covers stopping in the default run
def test_nan_in_training_stops_the_run(av_digits_dir, tmp_path, monkeypatch):
    real_loss = losses.softmax_cross_entropy

    def poisoned(logits, *args):
        loss = real_loss(logits, *args)
        return loss * jax.numpy.nan if logits.shape[-1] == av_digits.TASKS["image_digit"] else loss

    monkeypatch.setattr(losses, "softmax_cross_entropy", poisoned)
    config = smoke_config(av_digits_dir, **{"train.log_every": 1, "tasks.audio_digit": 0.0})
    with pytest.raises(train.NonFiniteLossError, match="at step 1 .*image_digit"):
        train.main(config, tmp_path)


def _poison_third_batch(monkeypatch):
    """Fills the third training batch's images with NaN, in place (the run sees, and saves, that batch)."""
    real, calls = train.parallel.to_global, []

    def to_global(batch, mesh):
        calls.append(1)
        if len(calls) == 3:
            batch["image"][...] = np.nan
        return real(batch, mesh)

    monkeypatch.setattr(train.parallel, "to_global", to_global)


def test_nan_batch_is_skipped_and_counted_or_stops_the_run_with_the_batch_saved(
    av_digits_dir, tmp_path, monkeypatch
):
    overrides = {"train.log_every": 1, "train.eval_every": 100, "train.checkpoint_every": 100}
    _poison_third_batch(monkeypatch)
    train.main(smoke_config(av_digits_dir, **overrides, **{"train.on_nonfinite": "skip"}), tmp_path / "skip")
    records = last_record_per_step(tmp_path / "skip")
    assert [records[s]["skipped_steps"] for s in sorted(records)] == [0, 0, 1, 1, 1, 1]
    assert all(np.isfinite(records[s]["loss"]) for s in (1, 2, 4, 5, 6))
    step, params = final_params(tmp_path / "skip", smoke_config(av_digits_dir))
    assert step == 6 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))

    _poison_third_batch(monkeypatch)
    with pytest.raises(train.NonFiniteLossError, match="at step 3 .*answer.*update was not applied"):
        train.main(smoke_config(av_digits_dir, **overrides), tmp_path / "stop")
    assert np.isnan(np.load(tmp_path / "stop" / "nonfinite_batch_step3.npz")["image"]).all()


@pytest.mark.parity
def test_text_encoder_from_a_port_starts_pretrained_and_a_rule_freezes_it(av_digits_dir, tmp_path, word_bert):
    from mmjax.port.pretrained import load_pretrained

    overrides = {"model.text.init_from": word_bert, "optim.lr_rules": "text/.*=0"}
    config = smoke_config(av_digits_dir, **overrides)
    train.main(config, tmp_path / "run")
    _, params = final_params(tmp_path / "run", config)
    _, pretrained = load_pretrained(word_bert)
    jax.tree.map(np.testing.assert_array_equal, params["text"], jax.device_get(pretrained))
    assert params["text_proj"]["kernel"].shape == (48, 32)  # BERT width -> the tiny fusion width
    assert "answer/accuracy" in evaluate.main(tmp_path / "run", max_batches=1)  # rebuilds the architecture


@pytest.mark.slow  # two train-step compiles (69 s of the default run's budget)
def test_a_frozen_tower_gets_no_backward_pass_and_no_share_of_the_grad_norm(av_digits_dir):
    """XLA drops the frozen text tower's gradients: the compiled step saves at least their weight-gradient
    FLOPs (2 x tokens x kernel size), and the logged grad_norm covers the trainable params only."""
    config = smoke_config(av_digits_dir)
    tasks = av_digits.task_classes(config.tasks)
    source = av_digits.load("train", tfds_dir=av_digits_dir)
    preprocess = av_digits.make_preprocess(config)
    batch = next(pipeline.train_iterator(source, batch_size=16, seed=0, preprocess_fn=preprocess))
    model = build_model(config.model, tasks)
    mesh = parallel.make_mesh(jax.devices()[:1])
    flops, scalars = {}, {}
    for rules in ("", "text/.*=0"):
        config.optim.lr_rules = rules
        optimizer = optim.make_optimizer(config.optim, total_steps=config.train.steps)  # as one_and_eight's
        objective = make_objective(config)
        state = jax.jit(functools.partial(init_state, model, optimizer, objective, batch, 0))()
        text_kernels = sum(
            x.size
            for path, x in jax.tree_util.tree_leaves_with_path(state.params["text"])
            if path[-1].key == "kernel"
        )
        compiled = make_train_step(model, optimizer, objective, mesh).lower(state, batch).compile()
        flops[rules] = compiled.cost_analysis()["flops"]
        scalars[rules] = jax.device_get(compiled(state, parallel.to_global(batch, mesh))[1])
    tokens = batch["text"].size
    assert flops[""] - flops["text/.*=0"] >= 2 * tokens * text_kernels > 0
    assert scalars[""]["loss"] == pytest.approx(scalars["text/.*=0"]["loss"], rel=1e-6)
    assert scalars["text/.*=0"]["grad_norm"] < scalars[""]["grad_norm"]


ALIGN = {"tasks.align": 0.5, "model.align.modalities": "image,audio", "multitask.period": 1}


@functools.cache
def _multitask_setup(tfds_dir):
    config = smoke_config(tfds_dir, **ALIGN)
    tasks = av_digits.task_classes(config.tasks)
    source = av_digits.load("train", tfds_dir=tfds_dir)
    batches = pipeline.train_iterator(
        source, batch_size=16, seed=0, preprocess_fn=av_digits.make_preprocess(config)
    )
    return config, build_model(config.model, tasks), [next(batches) for _ in range(3)]


FAST_METHODS = ("gradnorm",)  # the others run with -m slow


@pytest.mark.parametrize(
    "method", [m if m in FAST_METHODS else pytest.param(m, marks=pytest.mark.slow) for m in multitask.METHODS]
)
def test_every_task_weighting_method_trains_and_logs_weights_and_grad_norms(av_digits_dir, method):
    config, model, batches = _multitask_setup(av_digits_dir)
    config = ml_collections.ConfigDict(config.to_dict())
    config.multitask.method = method
    config.multitask.grad_norms = True  # logged every log_every steps by every method
    objective = make_objective(config)
    assert objective.tasks == ("align", "answer", "audio_digit", "image_digit", "match", "speaker")
    mesh = parallel.make_mesh(jax.devices()[:1])  # 8 devices: the pcgrad-vs-static test below
    optimizer = optim.make_optimizer(config.optim, total_steps=10)
    state = init_state(model, optimizer, objective, batches[0], 0)
    step = make_train_step(model, optimizer, objective, mesh)
    logged = []
    for batch in batches:
        state, scalars = step(state, parallel.to_global(batch, mesh))
        logged.append(jax.device_get(scalars))
    weights = np.array([[s[f"{t}/weight"] for t in objective.tasks] for s in logged])
    norms = np.array([[s[f"{t}/grad_norm"] for t in objective.tasks] for s in logged])
    assert all(np.isfinite(s["loss"]) and np.isfinite(s["align/loss"]) for s in logged)
    assert 0 <= logged[-1]["align/accuracy"] <= 1
    assert np.all(np.isfinite(norms[1]) & (norms[1] > 0))  # step 2 is a logging step (log_every=2)
    static = np.array(objective.weights)
    if method == "gradnorm":
        assert np.all(np.isfinite(norms))  # measured on every step
        np.testing.assert_allclose(weights.sum(1), len(static), rtol=1e-5)
        assert not np.allclose(weights[0], weights[-1])
    else:
        assert np.all(np.isnan(norms[[0, 2]]))  # skipped between logging steps
    if method in ("static", "pcgrad"):
        np.testing.assert_array_equal(weights, np.broadcast_to(static, weights.shape))
    if method == "uncertainty":  # 0.5 exp(-s) w, s moving towards log(w L)
        np.testing.assert_allclose(weights[0], 0.5 * static, rtol=1e-6)
        assert np.all(np.diff(weights, axis=0) != 0)
    if method == "dwa":  # period 1: lambda = T softmax(L(k-1) / L(k-2) / temperature) from the third step
        np.testing.assert_allclose(weights[:2], np.broadcast_to(static, (2, len(static))), rtol=1e-6)
        ratios = np.array([[s[f"{t}/loss"] for t in objective.tasks] for s in logged[:2]])
        lam = len(static) * scipy.special.softmax(ratios[1] / ratios[0] / config.multitask.temperature)
        np.testing.assert_allclose(weights[2], lam * static, rtol=1e-4)


@pytest.mark.slow  # PCGrad's projection is unit-tested in test_multitask.py
def test_pcgrad_and_static_see_the_same_losses_but_step_differently_on_8_devices(av_digits_dir):
    config, model, batches = _multitask_setup(av_digits_dir)
    mesh = parallel.make_mesh()
    optimizer = optim.make_optimizer(config.optim, total_steps=10)
    results = {}
    for method in ("static", "pcgrad"):
        objective = dataclasses.replace(make_objective(config), method=method, grad_norm_every=0)
        state = init_state(model, optimizer, objective, batches[0], 0)
        state, scalars = make_train_step(model, optimizer, objective, mesh)(
            state, parallel.to_global(batches[0], mesh)
        )
        results[method] = (float(scalars["loss"]), float(scalars["grad_norm"]))
    assert results["static"][0] == pytest.approx(results["pcgrad"][0], rel=1e-6)
    assert results["static"][1] != pytest.approx(results["pcgrad"][1], rel=1e-3)  # conflicts were projected


def test_objective_errors_name_the_fields(av_digits_dir):
    with pytest.raises(ValueError, match=r"config.tasks.align > 0 needs config.model.align.modalities"):
        make_objective(smoke_config(av_digits_dir, **{"tasks.align": 1.0}))
    with pytest.raises(ValueError, match=r"config.model.align.modalities is set but config.tasks.align is 0"):
        make_objective(smoke_config(av_digits_dir, **{"model.align.modalities": "image,audio"}))
    with pytest.raises(
        ValueError, match=r"positives='labels' needs streams with class labels \['audio', 'image'\]"
    ):
        make_objective(smoke_config(av_digits_dir, **{**ALIGN, "model.align.modalities": "text,audio"}))
    with pytest.raises(ValueError, match=r"config.multitask.method='mgda' is not one of"):
        make_objective(smoke_config(av_digits_dir, **{"multitask.method": "mgda"}))
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['caption'\]"):
        av_digits.task_classes({"answer": 1.0, "caption": 1.0})


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=60", "data.batch_size=60 is not divisible by the 8 batch shards"),
        ("data.eval_batch_size=50", "data.eval_batch_size=50 is not divisible by the 8 batch shards"),
        ("data.shards=3", "data.batch_size=16 is not divisible by 3 data shards"),
        (
            "data.audio_frames=90",
            "data.audio_frames=90 must be a multiple of config.model.audio.patch_time=4",
        ),
        ("data.audio_frames=104", "at most config.model.audio.frames=96"),
        ("model.fusion.name=foo", "model.fusion.name='foo' is not one of"),
        ("model.remat=bogus", "model.remat='bogus' is not one of"),
        ("model.image.encoder=bogus", "model.image.encoder='bogus' is not one of"),
        ("model.align.modalities=text", "model.align.modalities='text' must name two of"),
        ("tasks.answer=-1.0", "config.tasks.answer=-1.0 is negative"),
        ("tasks.answer=0.0", "config.train.best_metric='answer/accuracy' needs config.tasks.answer > 0"),
        ("train.on_nonfinite=bogus", "config.train.on_nonfinite='bogus' is not one of"),
        ("train.label_smoothing=1.0", "config.train.label_smoothing=1.0 must be in [0, 1)"),
        ("optim.ema_decay=-0.1", "config.optim.ema_decay=-0.1 must be in [0, 1)"),
    ],
)
def test_config_errors_name_the_field_before_anything_compiles(
    av_digits_dir, tmp_path, monkeypatch, override, message
):
    def never(*args, **kwargs):
        raise AssertionError("the train step was built despite the bad config")

    monkeypatch.setattr(train, "make_train_step", never)
    with pytest.raises(ValueError, match=re.escape(message)):
        train.main(smoke_config(av_digits_dir, **dict([override.split("=")])), tmp_path)


def test_evaluations_since_best():
    assert train.evaluations_since_best([]) == 0
    assert train.evaluations_since_best([0.5, 0.6, 0.6, 0.55]) == 2
    assert train.evaluations_since_best([0.5, 0.6, 0.61], min_delta=0.02) == 1
    assert train.evaluations_since_best([0.5, 0.6, 0.7]) == 0


def test_early_stopping_stops_resumes_stopped_and_reports_the_best_checkpoint(
    av_digits_dir, tmp_path, capsys
):
    overrides = {
        "train.steps": 8,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
        "train.early_stop_patience": 1,
        "train.early_stop_min_delta": 1.0,  # no accuracy improves by more than 1: stop at the 2nd evaluation
        # Compared for equality below: the untrained smoke model's answers are near ties, and the ResNet's
        # CPU convolutions on a restored (differently placed) state can flip one; the ViT's never did.
        "model.image.encoder": "vit",
    }
    config = smoke_config(av_digits_dir, **overrides)
    val = train.main(config, tmp_path)
    assert "early stop after step 4" in capsys.readouterr().out
    records = read_metrics(tmp_path)
    assert max(r["step"] for r in records) == 4
    first_eval = next(r for r in records if r["step"] == 2 and "val/answer/accuracy" in r)
    assert val["answer/accuracy"] == first_eval["val/answer/accuracy"]  # the best checkpoint is step 2's
    train.main(config, tmp_path)  # resuming a stopped run trains no further
    assert max(r["step"] for r in read_metrics(tmp_path)) == 4
    assert final_params(tmp_path, config)[0] == 4


@pytest.mark.slow
def test_chaos_script_loses_nothing(tmp_path):
    out = tmp_path / "chaos.json"
    subprocess.run(
        [sys.executable, "scripts/chaos.py", "--kills", "2", "--steps", "30", "--out", str(out)],
        cwd=ROOT,
        check=True,
    )
    summary = json.loads(out.read_text())
    assert summary["examples_lost"] == 0 and summary["final_params_bit_identical"]
    assert summary["runs_recovered"] == summary["reruns"] == 3 and summary["all_corruptions_listed"]
