"""Ask a trained AV-Digits model about your own files.

  python -m mmjax.predict --workdir DIR [--image FILE] [--audio FILE] [--question "..."] [--json]
Any subset of the three modalities; the others are marked absent, as in training with modality dropout.
Images (PNG, JPEG, ...) become grey and are resized to the model's input size; audio (WAV, FLAC, OGG) of
any sample rate is resampled to 16 kHz and turned into the training log-mel features. Prints the answer
with its top-5 probabilities and every auxiliary task's prediction.

From Python, `Predictor.from_workdir(DIR)` restores the run and compiles once; each call
`predictor(image=..., audio=..., question=...)` (paths, arrays or a (wave, sample rate) pair) reuses it.
"""

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping

import jax
import numpy as np
import PIL.Image
from absl import logging

from mmjax import evaluate
from mmjax.data import audio as audio_lib
from mmjax.data import av_digits, pipeline

ImageInput = str | os.PathLike | np.ndarray
AudioInput = str | os.PathLike | tuple[np.ndarray, int]
# The modalities an auxiliary task's prediction needs: without them it is not shown.
NEEDS = {
    "image_digit": {"image"},
    "audio_digit": {"audio"},
    "speaker": {"audio"},
    "match": {"image", "audio"},
}


def load_image(image: ImageInput, size: int) -> np.ndarray:
    """A file or pixel array ([H, W] or [H, W, C], 0..255) -> grey, resized to size x size, float32 0..255.
    An unreadable file raises ValueError naming it."""
    if isinstance(image, np.ndarray):
        pixels = image.astype(np.float32)
        if pixels.ndim == 3:
            pixels = pixels[..., :3].mean(axis=-1)
        if pixels.ndim != 2:
            raise ValueError(f"image array of shape {image.shape}: expected [H, W] or [H, W, C]")
        picture = PIL.Image.fromarray(pixels)  # 32-bit float pixels
    else:
        try:
            with PIL.Image.open(image) as opened:
                picture = opened.convert("L")
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image file {image}: {err}") from err
    if picture.size != (size, size):
        picture = picture.resize((size, size), PIL.Image.Resampling.BILINEAR)
    return np.asarray(picture, np.float32)


def check_image(path: str | os.PathLike) -> None:
    """Raises ValueError naming `path` if it is not a readable image."""
    load_image(path, 1)


def load_audio(audio: AudioInput) -> np.ndarray:
    """A file (any sample rate) or (wave, sample rate) -> the training log-mel features [frames, 64].
    Unreadable, empty, silent or non-finite audio raises ValueError naming the file."""
    if isinstance(audio, tuple):
        wave, sample_rate = np.asarray(audio[0], np.float32), int(audio[1])
        source = "audio array"
        if wave.ndim == 2:
            wave = wave.mean(axis=1)  # [samples, channels]
        if wave.ndim != 1 or not wave.size:
            raise ValueError(
                f"audio array of shape {np.shape(audio[0])}: expected [samples] or [samples, channels]"
            )
    else:
        wave, sample_rate = audio_lib.load_wav(audio)
        source = audio
    av_digits.check_wave(wave, source)
    return av_digits.wave_features(wave, sample_rate)


def top_k(probabilities: np.ndarray, names: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The k most probable (class name, probability), most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(names[i], float(probabilities[i])) for i in order]


@dataclasses.dataclass
class Predictor:
    """A trained run, compiled once for one example at a time; see the module docstring."""

    run: evaluate.Run
    tokenizer: object  # mmjax.data.text WordTokenizer | PretrainedTokenizer
    compiled: jax.stages.Compiled

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, which: str = "best") -> "Predictor":
        run = evaluate.restore_run(workdir, which)

        def probabilities(variables, batch):
            outputs, _ = run.model.apply(variables, batch, train=False)
            return {task: jax.nn.softmax(outputs[task], -1)[0] for task in run.tasks}

        empty = make_batch(run.config, None, None, None, evaluate.make_tokenizer(run.config))
        compiled = jax.jit(probabilities).lower(run.variables, empty).compile()
        return cls(run, evaluate.make_tokenizer(run.config), compiled)

    def __call__(
        self, image: ImageInput | None = None, audio: AudioInput | None = None, question: str | None = None
    ) -> dict:
        """{"answer", "top5": [(answer, probability)], "tasks": {task: (class, probability)}, "present"}:
        "tasks" holds the auxiliary tasks whose modalities were given."""
        if image is None and audio is None and question is None:
            raise ValueError("give at least one of image, audio and question")
        batch = make_batch(self.run.config, image, audio, question, self.tokenizer)
        probabilities = jax.device_get(self.compiled(self.run.variables, batch))
        result = {"present": [m for m, here in batch["present"].items() if here[0]]}
        if "answer" in probabilities:
            result["top5"] = top_k(probabilities["answer"], av_digits.ANSWERS, 5)
            result["answer"] = result["top5"][0][0]
        result["tasks"] = {
            task: top_k(p, av_digits.CLASS_NAMES[task], 1)[0]
            for task, p in probabilities.items()
            if task in NEEDS and NEEDS[task] <= set(result["present"])
        }
        return result


def make_batch(config, image, audio, question, tokenizer) -> dict:
    """A batch of one example in the model's shapes; a modality given as None is marked absent."""
    model = config.model
    text_len, frames = config.data.text_len, config.data.audio_frames
    batch = {
        "text": np.zeros((1, text_len), np.int32),
        "text_mask": np.zeros((1, text_len), bool),
        "image": np.zeros((1, model.image.size, model.image.size, model.image.channels), np.float32),
        "audio": np.zeros((1, frames, model.audio.mels), np.float32),
        "audio_mask": np.zeros((1, frames), bool),
    }
    if question is not None:
        if not question.strip():
            raise ValueError("the question is empty")
        ids, mask = tokenizer.encode(question, text_len)
        if tokenizer.encode(question, 4 * text_len + 8)[1].sum() > text_len:  # + 8: special tokens
            print(
                f"mmjax.predict: warning: the question is cut to data.text_len={text_len} tokens",
                file=sys.stderr,
            )
        batch["text"][0], batch["text_mask"][0] = ids, mask
    if image is not None:
        pixels = load_image(image, model.image.size)
        normalised = (pixels / 255.0 - pipeline.IMAGE_MEAN) / pipeline.IMAGE_STD
        batch["image"][0] = normalised[..., None]
    if audio is not None:
        features, mask = audio_lib.pad_or_crop(load_audio(audio), frames)
        if config.data.get("n_mfcc", 0):
            features = audio_lib.mfcc_from_log_mel(features, mask, config.data.n_mfcc)
        batch["audio"][0], batch["audio_mask"][0] = features, mask
    given = {"text": question, "image": image, "audio": audio}
    batch["present"] = {m: np.array([value is not None]) for m, value in given.items()}
    return batch


def format_result(result: Mapping) -> str:
    lines = []
    if "answer" in result:
        lines.append(f"answer: {result['answer']}")
        lines += [f"  {name:<10}{probability:.3f}" for name, probability in result["top5"]]
    lines += [f"{task}: {name} ({probability:.3f})" for task, (name, probability) in result["tasks"].items()]
    lines.append(f"modalities given: {', '.join(result['present'])}")
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m mmjax.predict", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--image", help="an image file (PNG, JPEG, ...)")
    parser.add_argument("--audio", help="an audio file (WAV, FLAC, OGG; any sample rate)")
    parser.add_argument("--question", help="the question, in words")
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only restores are not for this output
    if args.image is None and args.audio is None and args.question is None:
        parser.error("give at least one of --image, --audio and --question")
    try:
        for reader, path in ((load_audio, args.audio), (check_image, args.image)):
            if path is not None:
                reader(path)  # a bad file is named before the model is restored and compiled
        predictor = Predictor.from_workdir(args.workdir, args.checkpoint)
        result = predictor(args.image, args.audio, args.question)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"mmjax.predict: error: {err}\n")
    print(json.dumps(result) if args.json else format_result(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
