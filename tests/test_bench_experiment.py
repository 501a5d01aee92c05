"""scripts/bench_experiment.py and scripts/torch_twin.py: the PyTorch twin of an experiment config's own model
computes mmjax's outputs, loss and gradients from mmjax's weights (the benchmark times the same model in
both frameworks), configs it does not mirror are refused by name, and `bench_train.py --experiment` runs."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_experiment  # noqa: E402


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    """The example own-data folder (scripts/make_example_folder.py): JPEGs, FLAC, captions; labels of three
    kinds (same: classes, digits: multi-label, total: regression)."""
    path = ROOT / "scripts" / "make_example_folder.py"
    spec = importlib.util.spec_from_file_location("make_example_folder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_folder(tmp_path_factory.mktemp("own") / "digits", 24, 8)


def experiments(folder) -> dict[str, str]:
    return {
        "cached MiniLM text, ResNet, spectrograms": "av_digits:size=tiny,text=cached",
        "fine-tuned MiniLM (HF BertModel)": "av_digits:size=tiny,text=minilm",
        "own folder: scratch text, multi-label, regression": f"folder:dir={folder},labels=same+digits+total",
    }


def grad_norm_jax(model, objective, state, batch) -> float:
    from mmjax.step import task_losses

    def loss(params):
        variables = state.variables() | {"params": params}
        outputs, _ = model.apply(variables, batch, train=False)
        return jnp.sum(jnp.asarray(objective.weights) * task_losses(outputs, batch, objective))

    grads = jax.grad(loss)(state.params)
    return float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))


@pytest.mark.parity
@pytest.mark.parametrize(
    "name",
    [
        "cached MiniLM text, ResNet, spectrograms",
        "fine-tuned MiniLM (HF BertModel)",
        "own folder: scratch text, multi-label, regression",
    ],
)
def test_experiment_twin_matches_mmjax(name, own_folder, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from mmjax.step import task_losses

    monkeypatch.setenv("MMJAX_TFDS_DIR", str(tmp_path / "built"))
    args = argparse.Namespace(experiment=experiments(own_folder)[name], batch=6)
    model, objective, state, _, batch, _, spec = bench_experiment.jax_side(args, {})
    outputs, _ = model.apply(state.variables(), batch, train=False)
    loss = float(jnp.sum(jnp.asarray(objective.weights) * task_losses(outputs, batch, objective)))
    bench_experiment.write_phase_files(tmp_path, spec, batch, state)

    twin, tbatch, loss_fn, _, _ = bench_experiment.torch_side(tmp_path)
    twin.eval()
    twin_outputs = twin(tbatch)
    twin_loss = loss_fn(twin_outputs, tbatch)
    for task in objective.tasks:
        np.testing.assert_allclose(
            twin_outputs[task].detach().numpy(), outputs[task], atol=2e-5, err_msg=task
        )
    assert twin_loss.item() == pytest.approx(loss, rel=1e-5)
    twin_loss.backward()
    twin_norm = float(torch.sqrt(sum((p.grad**2).sum() for p in twin.parameters() if p.grad is not None)))
    assert twin_norm == pytest.approx(grad_norm_jax(model, objective, state, batch), rel=1e-4)
    # every mmjax parameter has its place in the twin (load_flax is strict) and the counts agree; a Hugging
    # Face tower keeps its own layout (BertModel has key biases, the mmjax port a pooler)
    hf = {m for m, e in spec["model"]["encoders"].items() if e["type"] == "hf_bert"}
    twin_count = sum(p.numel() for n, p in twin.named_parameters() if n.split(".")[0] not in hf)
    mmjax_params = {k: v for k, v in state.params.items() if k not in hf}
    assert twin_count == sum(x.size for x in jax.tree.leaves(mmjax_params))


def test_configs_the_twin_does_not_mirror_are_refused_by_name():
    from mmjax.config import load_config

    cfg = load_config(f"{ROOT}/experiments/av_digits.py:fusion=late", ["optim.ema_decay=0.99"])
    gaps = bench_experiment.twin_gaps(cfg)
    assert any("model.fusion.name='late'" in gap for gap in gaps)
    assert any("optim.ema_decay=0.99" in gap for gap in gaps)
    assert bench_experiment.twin_gaps(load_config(f"{ROOT}/experiments/av_digits.py")) == []


def test_random_batch_has_the_data_sets_shapes_and_valid_labels(own_folder, tmp_path, monkeypatch):
    from mmjax.model import dummy_batch
    from mmjax.step import make_objective

    monkeypatch.setenv("MMJAX_TFDS_DIR", str(tmp_path / "built"))
    cfg, data = bench_experiment.load_experiment(
        experiments(own_folder)["own folder: scratch text, multi-label, regression"], 5
    )
    objective = make_objective(cfg, data)
    batch = bench_experiment.random_batch(cfg, data, objective, 5)
    shapes = jax.eval_shape(lambda: dummy_batch(cfg.model, data.head_sizes(), 5, data.streams))
    for key, shape in shapes.items():
        if key != "present" and not key.startswith("labels/"):
            assert batch[key].shape == shape.shape and batch[key].dtype == shape.dtype, key
    sizes = data.head_sizes()
    kinds = dict(zip(objective.tasks, objective.kinds, strict=True))
    assert kinds == {"same": "classes", "digits": "multilabel", "total": "regression:mse"}
    assert batch["labels/same"].max() < sizes["same"] and batch["labels/digits"].shape == (5, sizes["digits"])
    assert batch["labels/total"].dtype == np.float32
    text = (
        batch["text"] if "text" in batch else batch[next(m for m, k in data.streams.items() if k == "text")]
    )
    assert (text[:2, -1] == 0).all() and (text[2:, -1] > 0).all()  # the first half padded at the end
    assert bench_experiment.nested_batch(bench_experiment.flat_batch(batch)).keys() == batch.keys()


@pytest.mark.slow
def test_bench_train_times_an_experiments_own_model(tmp_path):
    import bench_train

    out = tmp_path / "experiment.json"
    bench_train.main(
        ["--quick", "--experiment", "av_digits:size=tiny,text=cached", "--batch", "4", "--out", str(out)]
    )
    result = json.loads(out.read_text())
    assert result["shapes"] == {"experiment": "av_digits:size=tiny,text=cached", "batch": 4}
    assert result["twin_loss_abs_diff"] < 1e-4
    assert result["mmjax"]["params"] == result["torch"]["params"]
    for row in result["summary"].values():
        assert row["step_s"] > 0 and row["examples_per_s"] == pytest.approx(4 / row["step_s"])
    assert result["flops"]["used_for_mfu"] == "xla_cost_analysis" and result["flops"]["formula"] is None


@pytest.mark.parity
def test_twin_noises_the_pooled_question_in_training_only_as_mmjax_does():
    """model.text.noise in the twin: Gaussian noise of `noise` x the pooled token's RMS per dimension."""
    import torch
    import torch_twin

    class Fusion(torch.nn.Module):  # passes the text token on
        def forward(self, tokens, masks, present):
            return tokens["text"][:, 0]

    twin = torch_twin.Twin(
        {"text": torch_twin.CachedText()},
        {"text": "text"},
        {"text": 768},
        768,
        Fusion(),
        {},
        text_pool=True,
        text_noise=2.0,
    )
    twin.tasks = ["x"]
    twin.add_module("head_x", torch.nn.Identity())
    torch.manual_seed(0)
    features = torch.randn(64, 5, 768) * 3.0
    batch = {
        "text_features": features,
        "text_mask": torch.ones(64, 5, dtype=torch.bool),
        "present": {"text": torch.ones(64, dtype=torch.bool)},
    }
    clean = features.mean(1)
    np.testing.assert_allclose(twin.eval()(batch)["x"].numpy(), clean.numpy(), rtol=1e-6, atol=1e-6)
    noise = twin.train()(batch)["x"] - clean
    ratio = (noise.std(-1) / clean.square().mean(-1).sqrt()).numpy()
    np.testing.assert_allclose(ratio, 2.0, rtol=0.1)
