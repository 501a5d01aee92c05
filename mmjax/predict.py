"""Ask a trained model about your own files: any data set, any subset of its input streams.

  python -m mmjax.predict --workdir DIR [--image FILE] [--audio FILE] [--text "..."] [--input STREAM=VALUE]
      [--checkpoint best|latest] [--json]
--image, --audio and --text (or --question) fill the first stream of that kind; --input fills any stream by
name (e.g. --input image_2=back.jpg). Streams not given are marked absent, as in training with missing
inputs. Files are decoded, resized and resampled as the data set's build does. Prints every task's prediction:
the classes with their probabilities (the top 5 for the run's main task), the labels of a multi-label task
above 0.5, the value of a regression task.

From Python, `Predictor.from_workdir(DIR)` restores the run and compiles once; each call
`predictor(image=..., audio=..., text=...)` (paths, arrays or a (wave, sample rate) pair) reuses it.
"""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

from mmjax import evaluate
from mmjax.data import inputs as inputs_lib

TOP = 5  # classes listed for the main task


def top_k(probabilities: np.ndarray, names: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The k most probable (class name, probability), most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(names[i], float(probabilities[i])) for i in order]


def stream_inputs(streams: Mapping[str, str], given: Mapping[str, object]) -> dict[str, object]:
    """{stream: value} from keyword inputs: stream names, or a kind (image, audio, text; `question` = text)
    for the first stream of that kind. Unknown names raise ValueError listing the streams."""
    chosen = {}
    for name, value in given.items():
        if value is None:
            continue
        name = "text" if name == "question" else name
        stream = name if name in streams else next((s for s, k in streams.items() if k == name), None)
        if stream is None:
            raise ValueError(f"this run has no stream {name!r}; its streams: {dict(streams)}")
        if isinstance(value, str) and streams[stream] == "text" and not value.strip():
            raise ValueError(f"the {stream} input is empty")
        chosen[stream] = value
    if not chosen:
        raise ValueError(f"give at least one input; this run's streams: {dict(streams)}")
    return chosen


@dataclasses.dataclass
class Predictor:
    """A trained run, compiled once for one example at a time; see the module docstring."""

    run: evaluate.Run
    compiled: jax.stages.Compiled

    @classmethod
    def from_workdir(
        cls, workdir: str | os.PathLike, which: str = "best", data=None, mesh: jax.sharding.Mesh | None = None
    ) -> "Predictor":
        """The run in `workdir` (on `data` when it trained on Python sources), compiled for one example; on
        one device, or with its params laid out on `mesh` as in training (a model too big for one)."""
        run = evaluate.restore_run(workdir, which, mesh, data=data)
        if run.data.encode_inputs is None:
            raise ValueError(
                f"predictions from raw inputs are not available for the {run.data.name} data set"
            )
        kinds = {task: spec.kind for task, spec in run.data.tasks.items() if spec.kind != "align"}

        def outputs(variables, batch):
            out, _ = run.model.apply(variables, batch, train=False)
            squash = {"classes": lambda x: jax.nn.softmax(x, -1), "multilabel": jax.nn.sigmoid}
            return {t: squash.get(kind, lambda x: x[..., 0])(out[t])[0] for t, kind in kinds.items()}

        example = next(iter(run.data.streams))
        empty = one_batch(run, {example: None})
        return cls(run, jax.jit(outputs).lower(run.variables, empty).compile())

    def __call__(self, **given) -> dict:
        """{"present": [streams given], "tasks": {task: {"kind", "top": [(class, p)] | "labels": [(class, p)]
        | "value": x}}, "main": the run's main task}."""
        chosen = stream_inputs(self.run.data.streams, given)
        outputs = jax.device_get(self.compiled(self.run.variables, one_batch(self.run, chosen)))
        main = self.run.config.train.best_metric.split("/")[0]
        result = {"present": [s for s in self.run.data.streams if s in chosen], "main": main, "tasks": {}}
        for task, values in outputs.items():
            spec = self.run.data.tasks[task]
            if spec.kind == "regression":
                result["tasks"][task] = {"kind": spec.kind, "value": float(values) * spec.std + spec.mean}
            elif spec.kind == "multilabel":
                ranked = top_k(values, spec.classes, len(spec.classes))
                labels = [(name, p) for name, p in ranked if p >= 0.5]
                result["tasks"][task] = {"kind": spec.kind, "labels": labels, "top": ranked[:TOP]}
            else:
                result["tasks"][task] = {"kind": spec.kind, "top": top_k(values, spec.classes, TOP)}
        return result


def one_batch(run: evaluate.Run, chosen: Mapping[str, object]) -> dict:
    """A batch of one example from the chosen inputs; streams not chosen (or None) are marked absent."""
    example = run.data.preprocess(run.data.encode_inputs({s: v for s, v in chosen.items() if v is not None}))
    example["present"] = {s: np.bool_(chosen.get(s) is not None) for s in run.data.streams}
    return jax.tree.map(lambda x: np.asarray(x)[None], example)


def format_result(result: Mapping) -> str:
    """One line per task (the main task's top classes below it), then the streams given."""
    lines = []
    for task, out in sorted(result["tasks"].items(), key=lambda item: item[0] != result["main"]):
        if "value" in out:
            lines.append(f"{task}: {out['value']:.4g}")
        elif "labels" in out:
            shown = out["labels"] or out["top"][:1]
            note = "" if out["labels"] else " (none above 0.5; the most probable)"
            lines.append(f"{task}: " + ", ".join(f"{n} ({p:.3f})" for n, p in shown) + note)
        else:
            name, probability = out["top"][0]
            lines.append(f"{task}: {name} ({probability:.3f})")
            if task == result["main"]:
                lines += [f"  {n:<10}{p:.3f}" for n, p in out["top"]]
    lines.append(f"streams given: {', '.join(result['present'])}")
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.predict", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--image", help="an image file for the first image stream (PNG, JPEG, ...)")
    parser.add_argument("--audio", help="an audio file for the first audio stream (WAV, FLAC, OGG; any rate)")
    parser.add_argument("--text", "--question", dest="text", help="text for the first text stream")
    parser.add_argument("--input", action="append", default=[], metavar="STREAM=VALUE", help="any stream")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only restores are not for this output
    given = {"image": args.image, "audio": args.audio, "text": args.text}
    for item in args.input:
        stream, has_value, value = item.partition("=")
        if not has_value or not stream:
            parser.exit(2, f"mmjax.predict: error: --input {item!r} must look like STREAM=VALUE\n")
        given[stream] = value
    if all(value is None for value in given.values()):
        parser.exit(2, "mmjax.predict: error: give at least one of --image, --audio, --text and --input\n")
    try:
        for value in (args.image, *(v for k, v in given.items() if k.startswith("image_"))):
            if value is not None:
                inputs_lib.read_image(value, (1, 1), 1)  # a bad file is named before the model is compiled
        for value in (args.audio, *(v for k, v in given.items() if k.startswith("audio_"))):
            if value is not None:
                inputs_lib.read_wave(value)
        predictor = Predictor.from_workdir(args.workdir, args.checkpoint)
        result = predictor(**given)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"mmjax.predict: error: {err}\n")
    print(json.dumps(result) if args.json else format_result(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
