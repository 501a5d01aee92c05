"""The model of an experiment config, for `scripts/bench_train.py --experiment CONFIG[:ARGS]`: mmjax's side
(the config's own model, data streams, tasks and optimizer, on a random batch shaped as the data set's) and
the spec of its PyTorch twin (scripts/torch_twin.py), written to a folder that the torch process reads
without importing mmjax.

The twin mirrors what the experiment configs use: cross-attention fusion; scratch ResNet images, scratch
spectrogram audio, scratch or cached (frozen, precomputed) or Hugging Face BERT-family text; classification
heads; static task weights. A config outside that is refused with the settings named (`twin_gaps`).
"""

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

SPEC = "twin.json"  # in the phase folder: the twin's spec, optimizer and loss settings
BATCH = "batch.npz"  # the batch both frameworks time, flat keys (present/<stream>)
PARAMS = "mmjax_params.npz"
STATS = "mmjax_batch_stats.npz"
OPTIM_FIELDS = ("learning_rate", "weight_decay", "b1", "b2", "clip_norm", "lr_rules")  # config.optim's


def load_experiment(spec: str, batch_size: int = 0):
    """(config, DataSet) of an experiment spec `FILE[:ARGS]` (a bare name is experiments/NAME.py); the
    per-task gradient norms are off (extra backward passes, not a train step); batch_size > 0 overrides."""
    from mmjax.config import load_config
    from mmjax.data import datasets

    path, sep, arg = spec.partition(":")
    if not path.endswith(".py"):
        path = str(Path(__file__).resolve().parent.parent / "experiments" / f"{path}.py")
    cfg = load_config(path + sep + arg)
    cfg.multitask.grad_norms = False
    if batch_size:
        cfg.data.batch_size = batch_size
    return cfg, datasets.from_config(cfg)


def twin_gaps(cfg) -> list[str]:
    """The settings of the config the PyTorch twin does not mirror (empty: it mirrors the model)."""
    m = cfg.model
    gaps = []
    if m.fusion.name != "cross_attention" or m.fusion.get("bidirectional", False):
        gaps.append(f"model.fusion.name={m.fusion.name!r} (the twin has one-directional cross_attention)")
    if not m.pre_ln:
        gaps.append("model.pre_ln=False")
    if "image" in m and (m.image.get("encoder", "vit") != "resnet" or m.image.init_from):
        gaps.append("model.image: the twin has the scratch ResNet encoder only")
    if "audio" in m and (m.audio.get("frontend", "log_mel") != "log_mel" or m.audio.init_from):
        gaps.append("model.audio: the twin has the scratch log-mel SpectrogramEncoder only")
    if m.text.init_from and not m.text.get("cache", False) and not m.text.init_from.startswith("hf:"):
        gaps.append(f"model.text.init_from={m.text.init_from!r} (the twin reads hf:DIR BERT-family towers)")
    levers = {
        "model.modality_dropout": m.get("modality_dropout", 0.0),
        "model.modality_heads": m.get("modality_heads", False),
        "model.align.modalities": m.get("align", {}).get("modalities", ""),
        "model.peft.lora": m.get("peft", {}).get("lora", ""),
        "model.peft.adapters": m.get("peft", {}).get("adapters", ""),
        "optim.ema_decay": cfg.optim.get("ema_decay", 0.0),
    }
    gaps += [f"{key}={value!r}" for key, value in levers.items() if value]
    if cfg.multitask.method != "static":
        gaps.append(f"multitask.method={cfg.multitask.method!r} (the twin weights tasks statically)")
    return gaps


def random_batch(cfg, data, objective, batch_size: int, seed: int = 0) -> dict:
    """Random arrays shaped as the data set's batches (mmjax.model.dummy_batch): every stream present, the
    last quarter of each text padded in half of the examples, labels valid for each task's kind."""
    import jax

    from mmjax.model import dummy_batch

    tasks = data.head_sizes()
    shapes = jax.eval_shape(lambda: dummy_batch(cfg.model, tasks, batch_size, data.streams))
    rng = np.random.default_rng(seed)
    vocab = data.text_vocab_size or cfg.model.text.vocab_size
    batch = {"present": {m: np.ones((batch_size,), bool) for m in data.streams}}
    for key, shape in shapes.items():
        if key == "present" or key.startswith("labels/"):
            continue
        if shape.dtype == bool:
            batch[key] = np.ones(shape.shape, bool)
            if data.streams.get(key.removesuffix("_mask")) == "text":
                batch[key][: batch_size // 2, shape.shape[1] - shape.shape[1] // 4 :] = False
        elif shape.dtype == np.int32:
            batch[key] = rng.integers(1, vocab, shape.shape).astype(np.int32)
        else:
            batch[key] = rng.normal(size=shape.shape).astype(np.float32)
    for m, kind in data.streams.items():  # padding: zero ids and features
        if kind == "text":
            for key in (k for k in batch if k == m or k.startswith(f"{m}_features")):
                mask = batch[f"{m}_mask"]
                batch[key] = batch[key] * mask.reshape(mask.shape + (1,) * (batch[key].ndim - 2))
    for task, kind in zip(objective.tasks, objective.kinds, strict=True):
        n = tasks[task]
        if kind == "multilabel":
            batch[f"labels/{task}"] = rng.integers(0, 2, (batch_size, n)).astype(np.float32)
        elif kind.startswith("regression"):
            batch[f"labels/{task}"] = rng.normal(size=(batch_size,)).astype(np.float32)
        else:
            batch[f"labels/{task}"] = rng.integers(0, n, (batch_size,)).astype(np.int32)
    return batch


def encoder_spec(cfg, data, kind: str, batch: Mapping, stream: str, width: int) -> dict:
    """The twin's encoder of one stream (torch_twin.encoder)."""
    m = cfg.model
    if kind == "image":
        r = m.image.resnet
        return {
            "type": "resnet",
            "width": r.hidden_sizes[-1],
            "channels": m.image.channels,
            "embedding_size": r.embedding_size,
            "hidden_sizes": list(r.hidden_sizes),
            "depths": list(r.depths),
            "stem_kernel": r.get("stem_kernel", 7),
            "stem_stride": r.get("stem_stride", 2),
            "pool": r.get("stem_pool", True),
        }
    if kind == "audio":
        patch = (m.audio.patch_time, m.audio.patch_freq)
        tokens = 1 + (m.audio.frames // patch[0]) * (m.audio.mels // patch[1])
        return {"type": "patch", "width": width, "patch": patch, "channels": 1, "tokens": tokens}
    if m.text.get("cache", False):
        return {"type": "cached", "width": int(batch[f"{stream}_features"].shape[-1])}
    if m.text.init_from:
        path = m.text.init_from.removeprefix("hf:")
        width = json.loads((Path(path) / "config.json").read_text())["hidden_size"]
        return {"type": "hf_bert", "width": width, "path": path}
    vocab = data.text_vocab_size or m.text.vocab_size
    return {"type": "text", "width": width, "vocab": vocab, "max_len": m.text.max_len}


def twin_spec(cfg, data, objective, batch: Mapping) -> dict:
    """The spec torch_twin.build_twin reads (under "model"), with step_spec's settings."""
    from mmjax.nn.transformer import SIZES

    gaps = twin_gaps(cfg)
    if gaps:
        raise ValueError(f"the PyTorch twin does not mirror this config: {'; '.join(gaps)}")
    m = cfg.model
    size = SIZES[m.size] | {k: m[k] for k in SIZES[m.size] if m.get(k)}
    encoders = {
        stream: encoder_spec(cfg, data, kind, batch, stream, size["width"])
        for stream, kind in data.streams.items()
    }
    step = step_spec(cfg, objective, data.head_sizes())
    return step | {
        "model": {
            "streams": dict(data.streams),
            "encoders": encoders,
            "width": size["width"],
            "depth": size["depth"],
            "heads": size["num_heads"],
            "mlp": size["mlp_dim"],
            "dropout": m.dropout,
            "head_hidden": m.get("head_hidden", 0),
            "head_dropout": m.head_dropout,
            "text_pool": m.text.get("pool", "") == "mean",
            "text_noise": m.text.get("noise", 0.0),
            "fusion": {"query": m.fusion.get("query", "text"), "depth": m.fusion.depth},
            "tasks": step["tasks"],
        },
    }


def step_spec(cfg, objective, tasks: Mapping[str, int]) -> dict:
    """What the torch step needs besides the model: the tasks of the loss, the optimizer, label smoothing."""
    import bench_common as bc

    return {
        "tasks": bc.twin_tasks(objective, tasks),
        "optim": {k: cfg.optim[k] for k in OPTIM_FIELDS},
        "label_smoothing": cfg.train.get("label_smoothing", 0.0),
    }


def flat_batch(batch: Mapping) -> dict[str, np.ndarray]:
    """The batch with `present` flattened to `present/<stream>` keys (for np.savez)."""
    flat = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            flat |= {f"{key}/{m}": x for m, x in value.items()}
        else:
            flat[key] = value
    return flat


def nested_batch(flat: Mapping[str, np.ndarray]) -> dict:
    """flat_batch's inverse: `present/<stream>` keys back under `present`."""
    batch = {}
    for key, value in flat.items():
        head, sep, stream = key.partition("/")
        if head == "present" and sep:
            batch.setdefault("present", {})[stream] = value
        else:
            batch[key] = value
    return batch


def jax_side(args, switches: Mapping):
    """mmjax's side of the experiment: (model, objective, state, step, batch, applied switches, twin spec)."""
    import bench_common as bc

    from mmjax.step import make_objective

    cfg, data = load_experiment(args.experiment, args.batch or 0)
    applied = bc.apply_switches(cfg.model, switches)
    objective = make_objective(cfg, data)
    batch = random_batch(cfg, data, objective, cfg.data.batch_size)
    spec = twin_spec(cfg, data, objective, batch)
    model, _, objective, state, step = bc.build_mmjax(cfg, data.head_sizes(), batch, data=data)
    return model, objective, state, step, batch, applied, spec


def write_phase_files(folder: Path, spec: Mapping, batch: Mapping, state) -> None:
    """What the torch process reads: the twin's spec, the batch, mmjax's initial params and BatchNorm
    statistics."""
    import bench_common as bc

    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC).write_text(json.dumps(spec, indent=1))
    np.savez(folder / BATCH, **flat_batch(batch))
    np.savez(folder / PARAMS, **bc.flat_params(state.params))
    np.savez(folder / STATS, **bc.flat_params(state.batch_stats or {}))


def torch_side(folder: Path, make_model=None):
    """The twin's side, from write_phase_files' folder: (twin with mmjax's initial weights, batch, loss
    function, optimizer, clip norm). make_model(spec) builds the twin (default: torch_twin.build_twin of
    spec["model"])."""
    import bench_torch
    import torch_twin as tt

    spec = json.loads((folder / SPEC).read_text())
    model = make_model(spec) if make_model else tt.build_twin(spec["model"])
    tt.load_flax(model, dict(np.load(folder / PARAMS)), dict(np.load(folder / STATS)))
    batch = bench_torch.torch_batch(nested_batch(dict(np.load(folder / BATCH))))
    tasks, smoothing = spec["tasks"], spec["label_smoothing"]

    def loss(outputs, batch):
        return tt.twin_loss(outputs, batch, tasks, smoothing)

    optimizer = tt.optimizer(model, spec["optim"], spec["optim"]["lr_rules"])
    return model, batch, loss, optimizer, spec["optim"]["clip_norm"]
