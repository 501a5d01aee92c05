"""ResNet ports match Hugging Face ResNetModel stage by stage at 1e-5, in eval and train mode, and export
back to ResNetModel checkpoints."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from mmjax.encoders.resnet import ResNetEncoder
from mmjax.port import from_hf, resnet, to_hf

pytestmark = pytest.mark.parity
NO_PROBLEMS = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}


def _save(tmp_path, task_model=False, **config):
    """A random HF ResNet (random BatchNorm affine params and running stats too), saved, in eval mode."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_labels=3, **config)
    model = (transformers.ResNetForImageClassification if task_model else transformers.ResNetModel)(config)
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0.0, 0.5)
                norm.running_mean.normal_(0.0, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path)
    return model.eval()


def _pixels(channels, height, width, batch=2, seed=0):
    size = (batch, channels, height, width)
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


def _nchw(x):
    return np.moveaxis(np.asarray(x), -1, 1)


@pytest.mark.parametrize(
    "layer_type, depths, sizes, embedding, first, bottleneck, act, channels, image",
    [
        ("basic", [1, 1], [8, 16], 8, False, False, "relu", 3, (33, 33)),
        ("basic", [2, 1, 1], [8, 8, 16], 8, True, False, "gelu", 1, (29, 40)),
        ("bottleneck", [2, 1, 1], [16, 24, 32], 8, True, False, "gelu", 1, (45, 37)),
        ("bottleneck", [1, 2, 2, 1], [8, 16, 16, 32], 12, False, True, "relu", 3, (64, 61)),
        ("bottleneck", [1, 1], [16, 32], 16, False, True, "gelu_new", 3, (31, 31)),
    ],
)
def test_resnet_matches_hf_every_stage(
    tmp_path, layer_type, depths, sizes, embedding, first, bottleneck, act, channels, image
):
    config = dict(layer_type=layer_type, depths=depths, hidden_sizes=sizes, embedding_size=embedding)
    config |= dict(downsample_in_first_stage=first, downsample_in_bottleneck=bottleneck, hidden_act=act)
    hf_model = _save(tmp_path, num_channels=channels, **config)
    pixels = _pixels(channels, *image)
    module, variables = from_hf(tmp_path)
    assert set(variables) == {"params", "batch_stats"}
    out, aux = jax.jit(module.apply)(variables, pixels)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(pixels), output_hidden_states=True)
    assert len(aux["hidden_states"]) == len(theirs.hidden_states) == len(depths) + 1
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(_nchw(ours), hf.numpy(), rtol=1e-5, atol=1e-5)
    last = theirs.last_hidden_state.numpy()
    np.testing.assert_allclose(
        out[:, 1:], last.reshape(*last.shape[:2], -1).transpose(0, 2, 1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(aux["pooled"], theirs.pooler_output.numpy()[:, :, 0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[:, 0], aux["pooled"])  # the [CLS] slot holds the pooled vector
    assert aux["mask"].shape == out.shape[:2] and aux["mask"].all()
    channels_last = module.clone(channels_first=False)
    np.testing.assert_array_equal(jax.jit(channels_last.apply)(variables, np.moveaxis(pixels, 1, -1))[0], out)


def test_train_mode_normalises_by_batch_and_updates_running_stats(tmp_path):
    hf_model = _save(tmp_path, layer_type="bottleneck", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
    module, variables = from_hf(tmp_path)
    counts = {}  # BatchNorm name -> values per channel in its batch (torch's running_var is unbiased)
    for name, norm in hf_model.named_modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.register_forward_hook(lambda m, i, o, name=name: counts.update({name: o[:, 0].numel()}))
    pixels = _pixels(3, 23, 26, batch=3)
    hf_model.train()
    with torch.no_grad():
        theirs = hf_model(torch.tensor(pixels), output_hidden_states=True)
    (out, aux), updated = module.apply(variables, pixels, deterministic=False, mutable=["batch_stats"])
    for ours, hf in zip(aux["hidden_states"], theirs.hidden_states, strict=True):
        np.testing.assert_allclose(_nchw(ours), hf.numpy(), rtol=1e-5, atol=1e-5)
    old = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    new = traverse_util.flatten_dict(updated["batch_stats"], sep="/")
    assert set(new) == set(old) and len(new) == 2 * len(counts)
    for name, n in counts.items():
        stats = {s: resnet.key_map(f"{name}.running_{s}", module, "image")[0] for s in ("mean", "var")}
        mean, var = (stats[s].removeprefix("batch_stats/") for s in ("mean", "var"))
        assert not np.allclose(new[mean], old[mean])
        np.testing.assert_allclose(new[mean], hf_model.get_submodule(name).running_mean, rtol=1e-5, atol=1e-6)
        # torch: 0.9 old + 0.1 unbiased batch var; flax: 0.9 old + 0.1 biased batch var
        unbiased = (hf_model.get_submodule(name).running_var.numpy() - 0.9 * np.asarray(old[var])) / 0.1
        expected = 0.9 * np.asarray(old[var]) + 0.1 * unbiased * (n - 1) / n
        np.testing.assert_allclose(new[var], expected, rtol=1e-5, atol=1e-6)


def test_task_model_prefix_and_classifier_are_dropped(tmp_path):
    config = dict(layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
    classifier = _save(tmp_path, task_model=True, **config)
    assert any(k.startswith("resnet.") for k in load_file(tmp_path / "model.safetensors"))
    module, variables = from_hf(tmp_path)
    pixels = _pixels(3, 20, 20)
    with torch.no_grad():
        theirs = classifier.resnet(torch.tensor(pixels)).pooler_output.numpy()[:, :, 0, 0]
    np.testing.assert_allclose(
        jax.jit(module.apply)(variables, pixels)[1]["pooled"], theirs, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop("encoder.stages.0.layers.0.layer.1.normalization.running_var"),
            "missing: batch_stats/stage_0_layer_0/conv_1/norm/var",
        ),
        (
            lambda sd: sd.update(
                {"encoder.stages.1.layers.0.shortcut.convolution.weight": np.zeros((16, 8, 3, 3))}
            ),
            r"mis-shaped: encoder\.stages\.1\.layers\.0\.shortcut\.convolution\.weight",
        ),
        (
            lambda sd: sd.update(
                {"encoder.stages.0.layers.0.layer.2.convolution.weight": np.zeros((8, 8, 1, 1))}
            ),
            r"unexpected: encoder\.stages\.0\.layers\.0\.layer\.2\.convolution\.weight",
        ),
    ],
)
def test_bad_checkpoints_name_the_key(tmp_path, edit, message):
    _save(tmp_path, layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
    state_dict = load_file(tmp_path / "model.safetensors")
    edit(state_dict)
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=message):
        from_hf(tmp_path)


@pytest.mark.parametrize(
    "config",
    [
        dict(layer_type="basic", depths=[2, 1], hidden_sizes=[8, 16], downsample_in_first_stage=True),
        dict(layer_type="bottleneck", depths=[1, 2], hidden_sizes=[16, 24], downsample_in_bottleneck=True),
    ],
)
def test_to_hf_round_trip_loads_strictly_and_matches(tmp_path, config):
    """from_hf's variables (params and BatchNorm statistics) go back as they came, step counters as int64."""
    original = _save(
        tmp_path / "hf", task_model=True, embedding_size=8, num_channels=2, hidden_act="gelu", **config
    )
    module, variables = from_hf(tmp_path / "hf")
    to_hf(module, variables, tmp_path / "out")
    written, saved = (load_file(tmp_path / d / "model.safetensors") for d in ("out", "hf"))
    backbone = {k.removeprefix("resnet."): v for k, v in saved.items() if k.startswith("resnet.")}
    assert {k: (v.shape, v.dtype) for k, v in written.items()} == {
        k: (v.shape, v.dtype) for k, v in backbone.items()
    }
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(exported) is transformers.ResNetModel and info == NO_PROBLEMS
    pixels = torch.tensor(_pixels(2, 27, 30))
    with torch.no_grad():
        ours = exported.eval()(pixels, output_hidden_states=True)
        theirs = original.resnet(pixels, output_hidden_states=True)
    for mine, hf in zip(
        (*ours.hidden_states, ours.pooler_output), (*theirs.hidden_states, theirs.pooler_output), strict=True
    ):
        np.testing.assert_allclose(mine.numpy(), hf.numpy(), rtol=1e-5, atol=1e-5)
    module_again, variables_again = from_hf(tmp_path / "out")
    assert module_again == module
    jax.tree.map(np.testing.assert_array_equal, variables_again, variables)


def test_modules_and_configs_hf_cannot_hold_are_refused_naming_the_field(tmp_path):
    module = ResNetEncoder(embedding_size=8, hidden_sizes=(16,), depths=(1,), reduction=2)
    variables = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"resnet checkpoint: reduction=2 \(a resnet checkpoint gives 4\)"):
        to_hf(module, variables, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    small_stem = ResNetEncoder(
        embedding_size=8, hidden_sizes=(16,), depths=(1,), stem_kernel=3, stem_pool=False
    )
    variables = jax.eval_shape(small_stem.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"stem_kernel=3 \(a resnet checkpoint gives 7\)"):
        to_hf(small_stem, variables, tmp_path / "out")
    _save(tmp_path / "hf", layer_type="basic", depths=[1], hidden_sizes=[8], embedding_size=8)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for field, message in [
        ("hidden_act", "hidden_act='prelu' is not supported"),
        ("layer_type", "layer_type='prelu' is not one of"),
    ]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {field: "prelu"}))
        with pytest.raises(ValueError, match=r"config\.json: " + message):
            from_hf(tmp_path / "hf")


@pytest.mark.parametrize("stride, pool, side", [(2, True, 4), (1, True, 7), (1, False, 14)])
def test_a_small_image_stem_keeps_the_resolution_it_is_asked_to(stride, pool, side):
    module = ResNetEncoder(
        embedding_size=4,
        hidden_sizes=(4, 8),
        depths=(1, 1),
        stem_kernel=3,
        stem_stride=stride,
        stem_pool=pool,
    )
    images = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    variables = module.init(jax.random.key(0), images)
    tokens, aux = module.apply(variables, images)
    assert variables["params"]["embedder"]["conv"]["kernel"].shape == (3, 3, 1, 4)
    assert tokens.shape == (2, 1 + side * side, 8) and aux["img/hidden_states"][-1].shape == (
        2,
        side,
        side,
        8,
    )
