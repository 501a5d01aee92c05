"""Where the model looked: attention of the question's tokens over the image patches and audio patches.

  python -m mmjax.evaluate --workdir DIR --explain N      (or python -m mmjax.report DIR --explain N)
writes DIR/explain/example_<i>.png for N test examples (question types in turn): the image and the log-mel
spectrogram with the fusion's text-to-image and text-to-audio attention drawn over them.

The attention is averaged over the fusion's layers, heads and the question's valid tokens; each map shows
the share of that attention each patch gets (the modality's [CLS] token takes the rest of its share).
Fusions with text queries over image and audio keys have maps: cross_attention, co_attention, early.
"""

import functools
import json
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import traverse_util

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmjax.data import av_digits  # noqa: E402

# Where each fusion sows the attention whose queries include the text tokens (mmjax.nn.attention).
ATTENTION_MODULES = {"cross_attention": "cross_attn", "co_attention": "cross_attn", "early": "self_attn"}


def grid_shapes(model_config: Mapping) -> dict[str, tuple[int, int]]:
    """{modality: (rows, columns) of its patch grid}: image (height, width), audio (time, frequency)."""
    image, audio = model_config["image"], model_config["audio"]
    side = image["size"] // image["patch_size"]
    return {
        "image": (side, side),
        "audio": (audio["frames"] // audio["patch_time"], audio["mels"] // audio["patch_freq"]),
    }


def sown_attention(intermediates: Mapping, fusion: str) -> jax.Array:
    """The fusion's text-query attention weights, stacked over layers: [layers, B, heads, queries, keys].

    Under nn.scan the sown weights already carry a leading layer axis; unrolled layers are stacked here.
    """
    if fusion not in ATTENTION_MODULES:
        raise ValueError(
            f"fusion {fusion!r} has no text-to-image/audio attention; {sorted(ATTENTION_MODULES)} do"
        )
    module = ATTENTION_MODULES[fusion]
    flat = traverse_util.flatten_dict(intermediates["fusion"])
    chosen = sorted(
        (path, value)
        for path, value in flat.items()
        if module in path
        and path[-1] == "attention"
        and (fusion == "early" or path[0].startswith("text_layer"))
    )
    if not chosen:
        raise ValueError(f"no {module} attention weights were sown by the {fusion} fusion")
    return jnp.concatenate([jnp.reshape(v[0], (-1, *v[0].shape[-4:])) for _, v in chosen])


def text_attention(weights: jax.Array, text_mask: jax.Array, fusion: str, text_len: int) -> jax.Array:
    """[B, keys]: attention from the valid text tokens to the context (image then audio tokens), averaged
    over layers, heads and those tokens."""
    if fusion == "early":  # rows and keys: fusion [CLS], text, image, audio
        weights = weights[..., 1 : 1 + text_len, 1 + text_len :]
    mean = weights.mean(axis=(0, 2))  # [B, text, keys]
    valid = text_mask[..., None].astype(mean.dtype)
    return (mean * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0)


def split_maps(context: np.ndarray, grids: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """[B, keys] over ([CLS] + image patches, [CLS] + audio patches) -> {modality: [B, rows, columns]}.
    Audio patches are time-major (the encoder's default order)."""
    maps, start = {}, 0
    for modality in ("image", "audio"):
        rows, cols = grids[modality]
        patches = context[:, start + 1 : start + 1 + rows * cols]
        maps[modality] = patches.reshape(-1, rows, cols)
        start += 1 + rows * cols
    if start != context.shape[1]:
        raise ValueError(f"the context has {context.shape[1]} tokens, the patch grids {grids} give {start}")
    return maps


@functools.partial(jax.jit, static_argnums=0)
def _apply_sowing(model, variables, batch):
    """The model's evaluation outputs and the intermediates it sows (the attention weights)."""
    return model.apply(variables, batch, train=False, mutable=["intermediates"])


def attention_maps(
    model, variables, batch: Mapping, model_config: Mapping
) -> tuple[dict, dict[str, np.ndarray]]:
    """(outputs of the model, {modality: [B, rows, columns] attention share per patch}) for one batch."""
    if model_config.get("audio", {}).get("freq_major"):
        raise ValueError("attention maps assume time-major audio patches (model.audio.freq_major=False)")
    fusion = model_config["fusion"]["name"]
    if fusion == "cross_attention" and model_config["fusion"].get("query", "text") != "text":
        raise ValueError("attention maps need text queries; this run has model.fusion.query != 'text'")
    (outputs, _), state = _apply_sowing(model, variables, batch)
    weights = sown_attention(state["intermediates"], fusion)
    context = text_attention(weights, batch["text_mask"], fusion, batch["text"].shape[1])
    return outputs, split_maps(np.asarray(context), grid_shapes(model_config))


def _overlay(axis, background: np.ndarray, heat: np.ndarray, **imshow) -> None:
    """`background` in grey with `heat` (a coarser grid, stretched over it) drawn on top."""
    reps = (background.shape[0] // heat.shape[0], background.shape[1] // heat.shape[1])
    stretched = np.kron(heat, np.ones(reps))
    axis.imshow(background, cmap="gray", **imshow)
    shown = np.zeros(background.shape)
    shown[: stretched.shape[0], : stretched.shape[1]] = stretched
    axis.imshow(shown, cmap="inferno", alpha=0.55, vmin=0.0, vmax=max(float(heat.max()), 1e-9), **imshow)


def draw_example(image: np.ndarray, spectrogram: np.ndarray, maps: Mapping[str, np.ndarray], title: str):
    """Figure: the image [H, W] and the spectrogram [frames, mels] with their attention maps over them."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1, 2.2]})
    _overlay(left, image, maps["image"])
    left.set_title(f"image ({maps['image'].sum():.0%} of the attention)", fontsize=9)
    left.axis("off")
    # Time on x, mel bands up: transpose [frames, mels] and the [time, freq] map alike.
    _overlay(right, spectrogram.T, maps["audio"].T, origin="lower", aspect="auto")
    right.set_title(f"log-mel spectrogram ({maps['audio'].sum():.0%} of the attention)", fontsize=9)
    right.set_xlabel("frame (10 ms)")
    right.set_ylabel("mel band")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def pick_examples(question_types: np.ndarray, n: int) -> list[int]:
    """Indices of n examples taking the question types in turn (the first unused example of each)."""
    chosen: list[int] = []
    for k in range(n):
        wanted = k % len(av_digits.QUESTION_TYPES)
        candidates = [i for i in np.flatnonzero(question_types == wanted) if i not in chosen]
        if not candidates:  # that type is used up: take the next unused example
            candidates = [i for i in range(len(question_types)) if i not in chosen]
        if not candidates:
            break
        chosen.append(int(candidates[0]))
    return chosen


def shares_by_question_type(maps: Mapping[str, np.ndarray], question_types: np.ndarray) -> dict:
    """{question type: {modality: mean share of the text's attention on its patches}} (types present)."""
    return {
        qtype: {m: float(maps[m][question_types == k].sum(axis=(1, 2)).mean()) for m in maps}
        for k, qtype in enumerate(av_digits.QUESTION_TYPES)
        if np.any(question_types == k)
    }


def write_maps(
    workdir: str | pathlib.Path, n: int, split: str = "test", which: str = "best"
) -> list[pathlib.Path]:
    """Draws the attention maps of n examples of `split` for the run in `workdir` into workdir/explain/,
    and writes explain/shares.json: the attention share of image and audio patches per question type over
    the first 60 n examples (at least 300)."""
    from mmjax import evaluate  # evaluate imports this module for --explain

    workdir = pathlib.Path(workdir)
    run = evaluate.restore_run(workdir, which)
    source = evaluate.load_split(run.config, split)
    preprocess = evaluate.make_preprocess(run.config)
    raw = [source[i] for i in range(min(len(source), max(60 * n, 300)))]
    question_types = np.array([int(r["question_type"]) for r in raw])
    examples = [preprocess(r) for r in raw]
    answers, maps = [], {"image": [], "audio": []}
    for start in range(0, len(examples), 100):
        batch = jax.tree.map(lambda *xs: np.stack(xs), *examples[start : start + 100])
        outputs, chunk = attention_maps(run.model, run.variables, batch, run.config.model.to_dict())
        answers.append(np.asarray(jnp.argmax(outputs["answer"], -1)) if "answer" in outputs else None)
        for m in maps:
            maps[m].append(chunk[m])
    maps = {m: np.concatenate(parts) for m, parts in maps.items()}
    folder = workdir / "explain"
    folder.mkdir(exist_ok=True)
    shares = shares_by_question_type(maps, question_types)
    (folder / "shares.json").write_text(
        json.dumps({"split": split, "examples": len(raw), "shares": shares}, indent=1)
    )
    predicted = np.concatenate(answers) if answers[0] is not None else None
    paths = []
    for row, index in enumerate(pick_examples(question_types, n)):
        question = raw[index]["question"]
        question = question.decode() if isinstance(question, bytes) else str(question)
        truth = av_digits.ANSWERS[int(raw[index]["answer"])]
        guess = f"predicted {av_digits.ANSWERS[int(predicted[index])]}, " if predicted is not None else ""
        figure = draw_example(
            np.asarray(raw[index]["image"], np.float32),
            examples[index]["audio"],
            {m: maps[m][index] for m in maps},
            f"{question!r}: {guess}answer {truth}",
        )
        paths.append(folder / f"example_{row}.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths
