"""Where the model looked: the attention of the fusion's query tokens over every image and audio stream.

  python -m mmjax.evaluate --workdir DIR --explain N      (or python -m mmjax.report DIR --explain N)
writes DIR/explain/example_<i>.png for N examples of the split (the data set's groups, config.eval.group_by,
in turn; else the first N): every image and every audio stream (spectrogram, time on x) with the fusion's
query-to-context attention drawn over its patches, titled with the query text and each task's prediction.
It also writes DIR/explain/shares.json: the mean share of that attention on each stream's patches, per group
(or "all").

The query stream is the fusion's: cross_attention's `model.fusion.query`; co_attention and early fusion use
the data set's first text stream. The attention is averaged over the fusion's layers, heads and the query's
valid tokens; each map shows the share of that attention each patch gets (the stream's [CLS] token, and any
other text stream in the context, take the rest). Fusions with query-to-context attention: cross_attention,
co_attention, early.
"""

import functools
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from matplotlib.figure import Figure

from mmjax.model import aux_prefix, stream_kind

# Where each fusion sows the attention whose queries include the query stream's tokens (mmjax.nn.attention).
ATTENTION_MODULES = {"cross_attention": "cross_attn", "co_attention": "cross_attn", "early": "self_attn"}
MAPPED_KINDS = ("image", "audio")  # streams whose patches get a map

Layout = Mapping[str, tuple[int, int] | int]  # context stream -> patch grid, or a token count without a map


def query_stream(model_config: Mapping, streams: Mapping[str, str]) -> str:
    """The stream whose tokens are the fusion's queries: cross_attention's model.fusion.query, else
    (co_attention, early) the first text stream. ValueError for a fusion without such attention, a query the
    data set lacks, or no image or audio stream beside the query."""
    fusion = model_config["fusion"]["name"]
    if fusion not in ATTENTION_MODULES:
        raise ValueError(
            f"fusion {fusion!r} has no query-to-context attention to draw; {sorted(ATTENTION_MODULES)} do"
        )
    if fusion == "cross_attention":
        query = model_config["fusion"].get("query", "text")
        if query not in streams:
            raise ValueError(
                f"model.fusion.query={query!r} is not a stream of the data set; "
                f"its streams are {list(streams)}"
            )
    else:
        query = next((s for s, kind in streams.items() if kind == "text"), None)
        if query is None:
            raise ValueError(
                f"attention maps of the {fusion} fusion take a text stream's tokens as the queries; "
                f"the data set has streams {dict(streams)}"
            )
    if not any(kind in MAPPED_KINDS for s, kind in streams.items() if s != query):
        raise ValueError(
            f"no image or audio stream besides the query {query!r} to draw: streams {dict(streams)}"
        )
    return query


def grid_shapes(
    model_config: Mapping, streams: Mapping[str, str], lengths: Mapping[str, int] | None = None
) -> dict[str, tuple[int, int]]:
    """{stream: (rows, columns) of its patch grid} of every image stream (height, width) and audio stream
    (time, frequency), from model.image and model.audio. A ResNet image encoder's grid is the square its
    token count (`lengths`, [CLS] included) gives."""
    grids = {}
    for stream, kind in streams.items():
        if kind == "image":
            image = model_config["image"]
            if image.get("encoder", "vit") == "resnet":
                if lengths is None:
                    raise ValueError("a ResNet image encoder's patch grid needs the encoder's token count")
                side = math.isqrt(lengths[stream] - 1)
                grids[stream] = (side, side)
            else:
                side = image["size"] // image["patch_size"]
                grids[stream] = (side, side)
        elif kind == "audio":
            audio = model_config["audio"]
            grids[stream] = (audio["frames"] // audio["patch_time"], audio["mels"] // audio["patch_freq"])
    return grids


def context_layout(
    streams: Mapping[str, str], query: str, grids: Mapping[str, tuple[int, int]], lengths: Mapping[str, int]
) -> dict[str, tuple[int, int] | int]:
    """The keys the query attends to, streams in the model's order without the query: each image or audio
    stream's patch grid ([CLS] + rows * columns tokens), or another text stream's token count (no map)."""
    return {
        s: grids[s] if kind in MAPPED_KINDS else int(lengths[s]) for s, kind in streams.items() if s != query
    }


def sown_attention(intermediates: Mapping, fusion: str, query: str) -> jax.Array:
    """The fusion's attention weights whose queries are the `query` stream's tokens (early fusion: all
    tokens), stacked over layers: [layers, B, heads, queries, keys].

    Under nn.scan the sown weights already carry a leading layer axis; unrolled layers are stacked here.
    """
    if fusion not in ATTENTION_MODULES:
        raise ValueError(
            f"fusion {fusion!r} has no query-to-context attention to draw; {sorted(ATTENTION_MODULES)} do"
        )
    module = ATTENTION_MODULES[fusion]
    flat = traverse_util.flatten_dict(intermediates.get("fusion", {}))
    chosen = sorted(
        (path, value)
        for path, value in flat.items()
        if module in path
        and path[-1] == "attention"
        and (fusion == "early" or path[0].startswith(f"{query}_layer_"))
    )
    if not chosen:
        raise ValueError(
            f"no {module} attention weights of the {query!r} queries were sown by the {fusion} fusion"
        )
    return jnp.concatenate([jnp.reshape(v[0], (-1, *v[0].shape[-4:])) for _, v in chosen])


def query_attention(weights: jax.Array, query_mask: jax.Array, fusion: str, start: int = 0) -> jax.Array:
    """[B, keys]: attention from the valid query tokens (query_mask [B, Lq]) to the context, averaged over
    layers, heads and those tokens (0 where the query has none).

    Early fusion's rows and keys are [fusion CLS] + every stream's tokens; the query's tokens start at `start`
    among the stream tokens, and the context is every stream token but the query's (in the same order)."""
    if fusion == "early":
        n = query_mask.shape[1]
        rows = weights[..., 1 + start : 1 + start + n, :]
        weights = jnp.concatenate([rows[..., 1 : 1 + start], rows[..., 1 + start + n :]], axis=-1)
    mean = weights.mean(axis=(0, 2))  # [B, query tokens, keys]
    valid = query_mask[..., None].astype(mean.dtype)
    return (mean * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0)


def split_maps(context: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """[B, keys] over the context streams in order -> {stream: [B, rows, columns]} of every stream with a grid
    in `layout` ([CLS] + rows * columns patches; the [CLS] is dropped); a stream with a token count takes that
    many keys and gets no map. Audio patches are time-major (the encoder's default order)."""
    sizes = [shape if isinstance(shape, int) else 1 + shape[0] * shape[1] for shape in layout.values()]
    if sum(sizes) != context.shape[1]:
        raise ValueError(
            f"the context has {context.shape[1]} tokens, the layout {dict(layout)} gives {sum(sizes)}"
        )
    maps, start = {}, 0
    for (stream, shape), size in zip(layout.items(), sizes, strict=True):
        if not isinstance(shape, int):
            maps[stream] = context[:, start + 1 : start + size].reshape(-1, *shape)
        start += size
    return maps


@functools.partial(jax.jit, static_argnums=0)
def _apply_sowing(model, variables, batch):
    """The model's evaluation outputs, each encoder's token mask {stream: [B, tokens]} and the intermediates
    it sows (the attention weights)."""
    (outputs, aux), state = model.apply(variables, batch, train=False, mutable=["intermediates"])
    masks = {m: aux[f"{aux_prefix(m)}mask"] for m, _ in model.encoders}
    return outputs, masks, state["intermediates"]


def attention_maps(
    model, variables, batch: Mapping, model_config: Mapping
) -> tuple[dict, dict[str, np.ndarray]]:
    """(outputs of the model, {stream: [B, rows, columns] attention share per patch}) for one batch: a map for
    every image and audio stream other than the fusion's query stream, streams in the model's order."""
    if model_config.get("kind", "multimodal") != "multimodal" or not hasattr(model, "encoders"):
        raise ValueError("attention maps need a multimodal model (encoders -> fusion -> heads)")
    if model_config.get("audio", {}).get("freq_major"):
        raise ValueError("attention maps assume time-major audio patches (model.audio.freq_major=False)")
    streams = {m: stream_kind(m) for m, _ in model.encoders}  # the model's (the data set's) order
    fusion = model_config["fusion"]["name"]
    query = query_stream(model_config, streams)
    outputs, masks, intermediates = _apply_sowing(model, variables, batch)
    lengths = {m: int(masks[m].shape[1]) for m in streams}
    weights = sown_attention(intermediates, fusion, query)
    query_mask = jnp.asarray(masks[query], bool) & jnp.asarray(batch["present"][query], bool)[:, None]
    order = list(streams)
    start = sum(lengths[m] for m in order[: order.index(query)])
    context = query_attention(weights, query_mask, fusion, start)
    layout = context_layout(streams, query, grid_shapes(model_config, streams, lengths), lengths)
    return outputs, split_maps(np.asarray(context), layout)


# Drawing (matplotlib's object API: no pyplot, no backend switch).


def display_image(image: np.ndarray) -> np.ndarray:
    """A preprocessed (normalised) image [H, W, C] (C = 1 or 3) or [H, W] min-max scaled to 0..1 for display:
    [H, W] for grey, [H, W, 3] for colour."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    low, high = float(image.min()), float(image.max())
    return (image - low) / max(high - low, 1e-9)


def _overlay(axis, background: np.ndarray, heat: np.ndarray, **imshow) -> None:
    """`background` (grey [H, W] or colour [H, W, 3]) with `heat` (a coarser grid, stretched over it)
    drawn on top."""
    height, width = background.shape[:2]
    reps = (max(height // heat.shape[0], 1), max(width // heat.shape[1], 1))
    stretched = np.kron(heat, np.ones(reps))[:height, :width]
    axis.imshow(background, cmap="gray" if background.ndim == 2 else None, **imshow)
    shown = np.zeros((height, width))
    shown[: stretched.shape[0], : stretched.shape[1]] = stretched
    axis.imshow(shown, cmap="inferno", alpha=0.55, vmin=0.0, vmax=max(float(heat.max()), 1e-9), **imshow)


def draw_example(
    inputs: Mapping[str, np.ndarray], kinds: Mapping[str, str], maps: Mapping[str, np.ndarray], title: str
) -> Figure:
    """Figure: each stream of `maps` (in order) with its attention map over it. `inputs` holds the stream's
    preprocessed array: an image [H, W, C] or [H, W], or audio features [frames, bands]; `kinds` its kind."""
    ratios = [1.0 if kinds[m] == "image" else 2.2 for m in maps]
    lines = title.count("\n") + 1
    figure = Figure(figsize=(1.2 + 3.3 * sum(ratios), 3.0 + 0.2 * lines), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(maps), gridspec_kw={"width_ratios": ratios}))
    for axis, (stream, heat) in zip(axes, maps.items(), strict=True):
        share = f"{float(heat.sum()):.0%} of the attention"
        if kinds[stream] == "image":
            _overlay(axis, display_image(inputs[stream]), heat)
            axis.set_title(f"{stream} ({share})", fontsize=9)
            axis.axis("off")
        else:  # time on x, bands up: transpose [frames, bands] and the [time, freq] map alike
            _overlay(axis, np.asarray(inputs[stream], np.float32).T, heat.T, origin="lower", aspect="auto")
            axis.set_title(f"{stream} features ({share})", fontsize=9)
            axis.set_xlabel("frame")
            axis.set_ylabel("band")
    figure.suptitle(title, fontsize=9)
    return figure


# Choosing examples, shares per group, titles.


def pick_examples(groups: Sequence, n: int) -> list[int]:
    """Indices of n examples taking the groups (each example's group name) in turn, groups in the order they
    first appear, the first unused example of each; a used-up group gives the next unused example."""
    groups = np.asarray(groups)
    order = list(dict.fromkeys(groups.tolist()))
    chosen: list[int] = []
    taken = np.zeros(len(groups), bool)
    for k in range(min(n, len(groups))):
        candidates = np.flatnonzero((groups == order[k % len(order)]) & ~taken)
        if not candidates.size:
            candidates = np.flatnonzero(~taken)
        chosen.append(int(candidates[0]))
        taken[candidates[0]] = True
    return chosen


def shares_by_group(maps: Mapping[str, np.ndarray], groups: Sequence) -> dict[str, dict[str, float]]:
    """{group: {stream: mean share of the query's attention on the stream's patches}}, groups in the order
    they first appear."""
    groups = np.asarray(groups)
    return {
        str(group): {m: float(maps[m][groups == group].sum(axis=(1, 2)).mean()) for m in maps}
        for group in dict.fromkeys(groups.tolist())
    }


def as_text(value) -> str | None:
    """A stored text value (bytes or str) as str; None for anything else."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "SUO":
        return as_text(value.item())
    return None


def task_lines(
    tasks: Mapping, predictions: Mapping[str, np.ndarray], example: Mapping, index: int
) -> list[str]:
    """One title line per task with a prediction: "task: predicted NAME (true NAME)" for classes, the labels
    scored above 0.5 (at most 3) for multilabel, "predicted x.xx (true y.yy)" for regression."""
    lines = []
    for name, task in tasks.items():
        if name not in predictions:
            continue
        pred, label = predictions[name][index], example.get(f"labels/{name}")
        if task.kind == "classes":
            truth = "" if label is None else f" (true {_class_name(task, int(label))})"
            lines.append(f"{name}: predicted {_class_name(task, int(pred))}{truth}")
        elif task.kind == "multilabel":
            top = [int(i) for i in np.argsort(-pred)[:3] if pred[i] > 0.5]
            truth = (
                ""
                if label is None
                else f" (true {_class_list(task, np.flatnonzero(np.asarray(label) > 0.5))})"
            )
            lines.append(f"{name}: predicted {_class_list(task, top)}{truth}")
        elif task.kind == "regression":
            mean, std = float(getattr(task, "mean", 0.0)), float(getattr(task, "std", 1.0))
            truth = "" if label is None else f" (true {float(label) * std + mean:.2f})"
            lines.append(f"{name}: predicted {float(pred) * std + mean:.2f}{truth}")
    return lines


def _class_name(task, index: int) -> str:
    if index < 0:
        return "unlabelled"
    return task.classes[index] if index < len(task.classes) else str(index)


def _class_list(task, indices) -> str:
    return ", ".join(_class_name(task, int(i)) for i in indices) or "none"


def _predictions(outputs: Mapping, tasks: Mapping) -> dict[str, np.ndarray]:
    """{task: predicted class / sigmoid scores / value} of the classes, multilabel and regression tasks."""
    found = {}
    for name, task in tasks.items():
        if name not in outputs or task.kind not in ("classes", "multilabel", "regression"):
            continue
        out = np.asarray(outputs[name])
        if task.kind == "classes":
            found[name] = out.argmax(-1)
        elif task.kind == "multilabel":
            found[name] = 1.0 / (1.0 + np.exp(-out))
        else:
            found[name] = out[..., 0]
    return found


def write_maps(
    workdir: str | pathlib.Path, n: int, split: str = "test", which: str = "best"
) -> list[pathlib.Path]:
    """Draws the attention maps of n examples of `split` for the run in `workdir` into workdir/explain/,
    and writes explain/shares.json: the attention share of each image and audio stream's patches per group
    (config.eval.group_by; "all" without groups) over the first 60 n examples (at least 300)."""
    from mmjax import evaluate  # evaluate imports this module for --explain

    workdir = pathlib.Path(workdir)
    run = evaluate.restore_run(workdir, which)
    data, model_config = run.data, run.config.model.to_dict()
    query = query_stream(model_config, data.streams)
    source = data.load(split)
    count = min(len(source), max(60 * n, 300))
    if count == 0:
        raise ValueError(f"the {split} split of the {data.name} data set has no examples to explain")
    raw = [source[i] for i in range(count)]
    examples = [data.preprocess(r) for r in raw]
    groups = np.asarray(data.groups(split))[:count] if data.groups is not None else np.full(count, "all")
    parts, maps = [], {}
    for start in range(0, count, 100):
        batch = jax.tree.map(lambda *xs: np.stack(xs), *examples[start : start + 100])
        outputs, chunk = attention_maps(run.model, run.variables, batch, model_config)
        parts.append(_predictions(outputs, data.tasks))
        for m, part in chunk.items():
            maps.setdefault(m, []).append(part)
    maps = {m: np.concatenate(p) for m, p in maps.items()}
    predictions = {t: np.concatenate([p[t] for p in parts]) for t in parts[0]} if parts else {}
    folder = workdir / "explain"
    folder.mkdir(exist_ok=True)
    summary = {
        "split": split,
        "examples": count,
        "query": query,
        "streams": list(maps),
        "shares": shares_by_group(maps, groups),
    }
    (folder / "shares.json").write_text(json.dumps(summary, indent=1))
    paths = []
    for row, index in enumerate(pick_examples(groups, n)):
        lines = []
        text = as_text(raw[index][query]) if data.streams[query] == "text" and query in raw[index] else None
        if text is not None:
            lines.append(repr(text))
        if data.groups is not None:
            lines.append(f"group {groups[index]}")
        lines += task_lines(data.tasks, predictions, examples[index], index)
        figure = draw_example(
            {m: examples[index][m] for m in maps},
            data.streams,
            {m: maps[m][index] for m in maps},
            "\n".join(lines),
        )
        paths.append(folder / f"example_{row}.png")
        figure.savefig(paths[-1], dpi=110)
    return paths
