"""Parameter sharding over a data / fsdp / tensor mesh (mmjax.parallel): the mesh spec, the rules, the
memory they save, training that matches one device on every mesh, and checkpoints that move between meshes."""

import functools
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from mmjax import evaluate, optim, parallel, train
from mmjax.config import load_config
from mmjax.data import av_digits, pipeline
from mmjax.fusion import FUSIONS
from mmjax.metrics import read_metrics
from mmjax.model import build_model, dummy_batch
from mmjax.step import init_state, make_objective, make_train_step, task_losses

MESHES = ("data:8", "data:2,fsdp:4", "fsdp:8", "data:2,fsdp:2,tensor:2")
THREE_D = "data:2,fsdp:2,tensor:2"


def smoke_config(tfds_dir, **overrides) -> ml_collections.ConfigDict:
    config = load_config("experiments/av_digits.py:smoke", [f"{k}={v}" for k, v in overrides.items()])
    config.data.tfds_dir = str(tfds_dir)
    config.parallel.min_shard_size = 256  # the smoke model is tiny: shard its small kernels too
    return config


@pytest.fixture(scope="module")
def smoke_batches(av_digits_dir):
    config = smoke_config(av_digits_dir)
    source = av_digits.load("train", tfds_dir=av_digits_dir)
    batches = pipeline.train_iterator(
        source, batch_size=16, seed=0, preprocess_fn=av_digits.make_preprocess(config)
    )
    return [next(batches) for _ in range(3)]


def train_on_mesh(config, batches, devices, spec):
    """Three train steps laid out as mmjax.train lays them out, and the gradient of the first batch's loss
    (dropout and batch statistics as in training) in that layout: (losses, params and gradients on the host,
    shardings)."""
    mesh = parallel.make_mesh(devices, spec)
    model = build_model(config.model, av_digits.task_classes(config.tasks))
    optimizer = optim.make_optimizer(config.optim, total_steps=10)
    objective = make_objective(config)
    make_state = functools.partial(init_state, model, optimizer, objective, batches[0], 0)
    shardings = parallel.tree_shardings(jax.eval_shape(make_state), mesh, config)
    state = jax.jit(make_state, out_shardings=shardings)()

    def loss(params, batch):
        variables = {"params": params, "batch_stats": state.batch_stats}
        rngs = {"dropout": jax.random.PRNGKey(1)}
        (outputs, _), _ = model.apply(variables, batch, train=True, rngs=rngs, mutable=["batch_stats"])
        return jnp.sum(jnp.asarray(objective.weights) * task_losses(outputs, batch, objective))

    grads = jax.jit(jax.grad(loss))(state.params, parallel.to_global(batches[0], mesh))
    step = make_train_step(model, optimizer, objective, mesh, shardings)
    losses = []
    for batch in batches:
        state, scalars = step(state, parallel.to_global(batch, mesh))
        losses.append(float(scalars["loss"]))
    placed = jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), state, shardings)
    assert all(jax.tree.leaves(placed))  # the step keeps the planned layout
    return losses, jax.device_get(state.params), jax.device_get(grads), shardings


def sharded_axes(shardings) -> set[str]:
    return {axis for s in jax.tree.leaves(shardings.params) for axis in s.spec if axis}


def check_same_training(config, batches, spec, reference=None):
    """Trains on `spec` over 8 devices and on 1 device (or takes `reference`, its result); the shardings.

    Gradients agree to float rounding (1e-5 of the largest). Parameters after three AdamW steps are compared
    by each tensor's mean difference, below 1 % of the learning rate (1e-3; most tensors agree to 1e-9): a
    parameter whose gradient is as small as that rounding (the ResNet stem taps that only see the constant
    MNIST background have a zero gradient: BatchNorm follows the convolution) gets a noise-driven step of up
    to the learning rate from Adam's g / |g|, which moves a few elements by 1e-4 between layouts (a mean of
    1.4e-6 in one tensor); a wrong update moves most of a tensor's elements by the learning rate.
    """
    losses_1, params_1, grads_1, _ = reference or train_on_mesh(config, batches, jax.devices()[:1], "data:1")
    losses_n, params_n, grads_n, shardings = train_on_mesh(config, batches, jax.devices(), spec)
    np.testing.assert_allclose(losses_n, losses_1, rtol=2e-5, atol=2e-5)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_1))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5 * scale)
    jax.tree.map(close, grads_1, grads_n)
    mean_differences = jax.tree.map(lambda a, b: float(np.abs(a - b).mean()), params_1, params_n)
    assert max(jax.tree.leaves(mean_differences)) < 1e-2 * config.optim.learning_rate, mean_differences
    assert losses_1[0] != losses_1[-1]
    return shardings


@pytest.fixture(scope="module")
def one_device(av_digits_dir, smoke_batches):
    return train_on_mesh(smoke_config(av_digits_dir), smoke_batches, jax.devices()[:1], "data:1")


# The 3-D mesh (every axis, tensor rules included) runs by default; the others with -m slow.
@pytest.mark.parametrize(
    "spec", [s if s == THREE_D else pytest.param(s, marks=pytest.mark.slow) for s in MESHES]
)
def test_every_mesh_trains_like_one_device(av_digits_dir, smoke_batches, one_device, spec):
    shardings = check_same_training(smoke_config(av_digits_dir), smoke_batches, spec, one_device)
    assert sharded_axes(shardings) == {axis for axis in ("fsdp", "tensor") if axis in spec}


@pytest.fixture(scope="module")
def one_device_runs(smoke_batches):
    """The 1-device reference run of a config, trained once per config across the mesh parameters."""
    runs = {}

    def run(name, config):
        if name not in runs:
            runs[name] = train_on_mesh(config, smoke_batches, jax.devices()[:1], "data:1")
        return runs[name]

    return run


@pytest.mark.slow  # the default fusion (cross_attention) is in the test above
@pytest.mark.parametrize("spec", MESHES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_trains_like_one_device_on_every_mesh(
    av_digits_dir, smoke_batches, one_device_runs, fusion, spec
):
    config = smoke_config(av_digits_dir, **{"model.fusion.name": fusion})
    check_same_training(config, smoke_batches, spec, one_device_runs(fusion, config))


@pytest.mark.slow
@pytest.mark.parametrize("spec", MESHES)
def test_a_ported_text_tower_trains_like_one_device_sharded(
    av_digits_dir, smoke_batches, one_device_runs, word_bert, spec
):
    config = smoke_config(av_digits_dir, **{"model.text.init_from": word_bert, "parallel.min_shard_size": 64})
    shardings = check_same_training(config, smoke_batches, spec, one_device_runs("ported", config))
    text = {
        parallel.leaf_path(path): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings.params["text"])[0]
    }
    fsdp = "fsdp" if "fsdp" in spec else None
    tensor = "tensor" if "tensor" in spec else None
    assert text["encoder/layer_0/self_attn/query/kernel"] == PartitionSpec(fsdp, tensor, None)
    assert text["encoder/layer_0/mlp/fc2/kernel"] == PartitionSpec(tensor, fsdp)


@pytest.mark.slow
def test_lora_and_adapters_train_like_one_device_sharded(av_digits_dir, smoke_batches):
    lora = {"model.peft.lora": r"audio/.*/(query|value)", "model.peft.adapters": r"audio/.*/mlp"}
    config = smoke_config(av_digits_dir, **lora, **{"model.peft.rank": 8, "parallel.min_shard_size": 64})
    shardings = check_same_training(config, smoke_batches, THREE_D)
    factors = {
        parallel.leaf_path(path): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]
        if "lora_" in parallel.leaf_path(path) or "adapter" in parallel.leaf_path(path)
    }
    assert factors and any("fsdp" in spec for spec in factors.values())


def test_fsdp_shards_all_but_a_sliver_of_a_base_model_and_its_optimizer_state(av_digits_dir):
    """Planned from eval_shape (nothing allocated): a "base" model with AdamW under fsdp:8."""
    config = smoke_config(av_digits_dir, **{"model.size": "base"})
    config.parallel.min_shard_size = 2**14
    tasks = av_digits.task_classes(config.tasks)
    model = build_model(config.model, tasks)
    optimizer = optim.make_optimizer(config.optim, total_steps=10)
    objective = make_objective(config)
    example = dummy_batch(config.model, tasks)
    planned = jax.eval_shape(functools.partial(init_state, model, optimizer, objective, example, 0))
    layouts = {
        spec: parallel.tree_shardings(planned, parallel.make_mesh(spec=spec), config) for spec in MESHES
    }
    held = {spec: parallel.bytes_per_device(planned, s)[0] for spec, s in layouts.items()}
    params_and_moments = (planned.params, planned.opt_state)
    whole = parallel.replicated_fraction(
        params_and_moments, (layouts["fsdp:8"].params, layouts["fsdp:8"].opt_state)
    )
    assert sum(x.size for x in jax.tree.leaves(planned.params)) > 50_000_000
    assert whole <= 0.02
    assert held["data:8"] / held["fsdp:8"] >= 6
    assert held["data:8"] > held["data:2,fsdp:4"] > held["fsdp:8"]


def test_optimizer_state_and_moving_average_follow_their_parameter(av_digits_dir, smoke_batches):
    config = smoke_config(av_digits_dir, **{"optim.ema_decay": 0.9})
    model = build_model(config.model, av_digits.task_classes(config.tasks))
    optimizer = optim.make_optimizer(config.optim, total_steps=10)
    objective = make_objective(config)
    make_state = functools.partial(init_state, model, optimizer, objective, smoke_batches[0], 0)
    planned = jax.eval_shape(make_state)
    shardings = parallel.tree_shardings(planned, parallel.make_mesh(spec=THREE_D), config)
    by_path = {
        parallel.leaf_path(path): s.spec for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]
    }
    params = {p.removeprefix("params/"): spec for p, spec in by_path.items() if p.startswith("params/")}
    followers = [p for p in by_path if p.startswith(("opt_state/", "ema_params/"))]
    matched = 0
    for path in followers:
        for param, spec in params.items():
            if path.endswith("/" + param):
                assert by_path[path] == spec, path
                matched += 1
    assert matched >= 2 * len(params)  # Adam's two moments and the moving average, at least


@pytest.mark.parametrize(
    "spec, message",
    [
        ("data:3,fsdp:-1", "do not divide the 8 devices"),
        ("data:2,fsdp:2", "the axes make 4 devices, but there are 8"),
        ("data:-1,fsdp:-1", "only one axis may take the remaining devices"),
        ("data:2,model:4", "'model:4' is not AXIS:SIZE"),
        ("data:2,data:4", "axis 'data' appears twice"),
        ("data:two", "the size of axis 'data' is 'two'"),
    ],
)
def test_bad_mesh_specs_are_errors_naming_the_axis(spec, message):
    with pytest.raises(ValueError, match=f"parallel.mesh={spec!r}: .*{message}"):
        parallel.parse_mesh(spec, 8)


def test_mesh_specs_fill_the_remaining_devices_in_axis_order():
    assert parallel.parse_mesh("fsdp:-1,data:2", 8) == {"data": 2, "fsdp": 4}
    assert parallel.parse_mesh("data:-1", 8) == {"data": 8}
    mesh = parallel.make_mesh(spec="data:2,fsdp:2,tensor:2")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert parallel.batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))
    with pytest.raises(ValueError, match=r"data.batch_size=6 is not divisible by the 4 batch shards"):
        parallel.check_batch_size(6, mesh)


def test_rules_come_first_and_a_dimension_that_does_not_divide_is_an_error_naming_it():
    mesh = parallel.make_mesh(spec="data:2,fsdp:4")
    rules = (("head_.*/kernel$", (None, "fsdp")),)
    assert parallel.leaf_spec("params/head_answer/kernel", (16, 32), mesh, rules, 1) == PartitionSpec(
        None, "fsdp"
    )
    # the default: the largest dimension fsdp divides; tensor dropped from specs on a mesh without it
    assert parallel.leaf_spec("params/x/kernel", (64, 12), mesh, (), 1) == PartitionSpec("fsdp", None)
    assert parallel.leaf_spec("params/x/kernel", (6, 12), mesh, (), 1) == PartitionSpec(None, "fsdp")
    assert parallel.leaf_spec("params/x/kernel", (6, 10), mesh, (), 1) == PartitionSpec()
    assert parallel.leaf_spec("a/mlp/fc1/kernel", (8, 16), mesh, parallel.TENSOR_RULES, 1) == PartitionSpec(
        "fsdp", None
    )
    assert parallel.leaf_spec("params/x/kernel", (64, 12), mesh, (), 10_000) == PartitionSpec()
    with pytest.raises(
        ValueError, match=r"dimension 30 of params/head_answer/kernel \(16, 30\) .* axis 'fsdp' \(4\)"
    ):
        parallel.leaf_spec("params/head_answer/kernel", (16, 30), mesh, rules, 1)


@pytest.mark.parametrize(
    "rules, message",
    [
        ((("fc1", ("fsdp",), "extra"),), "is not \\(regex over parameter paths, spec\\)"),
        ((("fc1[", ("fsdp",)),), "is not a regular expression"),
        ((("fc1", ("model",)),), "names unknown mesh axes \\['model'\\]"),
    ],
)
def test_bad_rules_are_errors_naming_the_rule(av_digits_dir, rules, message):
    config = smoke_config(av_digits_dir)
    config.parallel.rules = rules
    with pytest.raises(ValueError, match=f"parallel.rules: .*{message}"):
        parallel.sharding_rules(config)


RESUME = {
    "train.steps": 6,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.keep": 10,
    "train.eval_every": 1000,
}


@pytest.fixture(scope="module")
def reference_run(av_digits_dir, tmp_path_factory):
    """A 6-step smoke run on data:2,fsdp:4 that nothing interrupts (checkpoints at steps 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("fsdp_reference")
    train.main(smoke_config(av_digits_dir, **RESUME, **{"parallel.mesh": "data:2,fsdp:4"}), workdir)
    return workdir


def resume_from(source, workdir, step, config):
    """Copy a run, keep its checkpoints up to `step`, and finish it with `config` (another mesh)."""
    shutil.copytree(source, workdir)
    for saved in (workdir / "checkpoints").iterdir():
        if saved.name.isdigit() and int(saved.name) > step:
            shutil.rmtree(saved)
    train.main(config, workdir)


def last_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.mark.parametrize(
    "spec", [pytest.param(s, marks=pytest.mark.slow) for s in ("data:8", "fsdp:8")] + [THREE_D]
)
def test_a_run_saved_on_one_mesh_continues_on_another_and_back(av_digits_dir, tmp_path, reference_run, spec):
    moved, back = tmp_path / "moved", tmp_path / "back"
    resume_from(reference_run, moved, 2, smoke_config(av_digits_dir, **RESUME, **{"parallel.mesh": spec}))
    resume_from(moved, back, 4, smoke_config(av_digits_dir, **RESUME, **{"parallel.mesh": "data:2,fsdp:4"}))
    expected = last_losses(reference_run)
    for workdir in (moved, back):
        got = last_losses(workdir)
        assert sorted(got) == list(range(1, 7))
        np.testing.assert_allclose(
            [got[s] for s in range(1, 7)], [expected[s] for s in range(1, 7)], rtol=2e-5
        )
    # evaluation restores onto one device, whatever mesh wrote the checkpoint
    reference, resumed = (evaluate.restore_run(w, "latest") for w in (reference_run, back))
    assert resumed.step == reference.step == 6
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
        reference.variables["params"],
        resumed.variables["params"],
    )


def test_print_sharding_lists_every_parameter_and_the_saving(av_digits_dir, tmp_path, capsys):
    config = smoke_config(av_digits_dir, **{"parallel.mesh": "fsdp:8"})
    assert train.main(config, tmp_path, print_sharding=True) == {}
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {cells[0]: cells[2] for cells in (re.split(r"\s{2,}", line) for line in lines[1:-1])}
    tasks = av_digits.task_classes(config.tasks)
    model = build_model(config.model, tasks)
    init = functools.partial(model.init, jax.random.key(0), dummy_batch(config.model, tasks), train=False)
    params = jax.eval_shape(init)
    for path, _ in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        spec = rows["params/" + parallel.leaf_path(path)]
        assert spec == "replicated" or spec.split(",").count("fsdp") == 1 and "tensor" not in spec, path
    assert rows["params/audio/encoder/layer_0/mlp/fc1/kernel"] in ("fsdp,-", "-,fsdp")
    held, whole = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes", lines[-1]))
    assert lines[-1].startswith("total per device on mesh fsdp:8: ") and whole / held > 4
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
