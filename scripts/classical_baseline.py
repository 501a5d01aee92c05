"""The classical AV-Digits baseline every neural result is read against: scikit-learn SVCs on the project's
own splits, and rules that answer each test question from their two predictions.

- written digit: an RBF SVC on the raw MNIST pixels (0..1) of the training rows (i % 5 in {2, 3, 4});
- spoken digit and speaker: RBF SVCs on MFCC statistics of the 16 kHz recordings (20 MFCCs: per coefficient
  the mean, the standard deviation and the means of each half of the clip; standardised), FSDD takes 10-49;
- answers: mmjax.data.av_digits_questions.answer_index applied to the predicted digits and speaker,
  on the real test pairs (question types as built): per-type accuracies that compare with the neural models'.

    .venv/bin/python scripts/classical_baseline.py [--out experiments/results/classical_baseline.json]

Prints one JSON object: accuracy per component (image digit, audio digit, speaker) and answer accuracy
overall and per question type, on the test split.
"""

import argparse
import json
import pathlib
import sys

import librosa
import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from mmjax.data import audio
from mmjax.data.av_digits import load
from mmjax.data.av_digits_questions import QUESTION_TYPES, SPEAKERS, answer_index
from mmjax.data.av_digits_sources import (
    FSDD_SAMPLE_RATE,
    SAMPLE_RATE,
    image_split,
    list_recordings,
    parse_recording,
    read_mnist,
    read_recording,
    recording_split,
    resolve_data_dir,
)

N_MFCC = 20


def mfcc_statistics(wave: np.ndarray) -> np.ndarray:
    """An 8 kHz FSDD waveform -> 16 kHz -> 20 MFCCs per frame -> [mean, std, mean of 1st half, mean of 2nd
    half] per coefficient (80 values)."""
    mfcc = librosa.feature.mfcc(
        y=audio.resample(wave, FSDD_SAMPLE_RATE, SAMPLE_RATE), sr=SAMPLE_RATE, n_mfcc=N_MFCC
    )
    half = max(mfcc.shape[1] // 2, 1)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), mfcc[:, :half].mean(1), mfcc[:, half:].mean(1)])


def svc() -> object:
    return make_pipeline(StandardScaler(), SVC(kernel="rbf"))


def image_classifier(data_dir: pathlib.Path) -> tuple[object, np.ndarray, dict]:
    """(SVC fitted on the training rows' pixels, all images as [N, 784] in 0..1, test accuracy)."""
    images, labels, bad = read_mnist(data_dir / "mnist5k" / "mnist_5k.csv.gz")
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    rows = {
        s: [i for i in range(len(labels)) if image_split(i) == s and i not in bad] for s in ("train", "test")
    }
    model = SVC(kernel="rbf").fit(pixels[rows["train"]], labels[rows["train"]])
    accuracy = accuracy_score(labels[rows["test"]], model.predict(pixels[rows["test"]]))
    return model, pixels, {"image_digit": accuracy}


def audio_classifiers(data_dir: pathlib.Path) -> tuple[dict[str, tuple[int, int]], dict]:
    """({test recording: (predicted digit, predicted speaker index)}, test accuracies) of SVCs on MFCC
    statistics, trained on FSDD's training takes."""
    folder = data_dir / "fsdd" / "recordings"
    names = {
        s: [n for n in list_recordings(folder) if recording_split(parse_recording(n)[2]) == s]
        for s in ("train", "test")
    }
    features = {s: np.stack([mfcc_statistics(read_recording(folder / n)) for n in names[s]]) for s in names}
    digits = {s: np.array([parse_recording(n)[0] for n in names[s]]) for s in names}
    speakers = {s: np.array([SPEAKERS.index(parse_recording(n)[1]) for n in names[s]]) for s in names}
    digit_model = svc().fit(features["train"], digits["train"])
    speaker_model = svc().fit(features["train"], speakers["train"])
    digit, speaker = digit_model.predict(features["test"]), speaker_model.predict(features["test"])
    accuracies = {
        "audio_digit": accuracy_score(digits["test"], digit),
        "speaker": accuracy_score(speakers["test"], speaker),
    }
    return {n: (int(d), int(s)) for n, d, s in zip(names["test"], digit, speaker, strict=True)}, accuracies


def answer_accuracy(test, image_model, pixels, by_recording) -> dict:
    """Answer accuracy overall and per question type on the built test pairs, answering by rule."""
    image_rows = np.array([int(test[i]["image_index"]) for i in range(len(test))])
    written = dict(zip(image_rows.tolist(), image_model.predict(pixels[image_rows]).tolist(), strict=True))
    correct = {q: [] for q in QUESTION_TYPES}
    for i in range(len(test)):
        example = test[i]
        qtype = QUESTION_TYPES[int(example["question_type"])]
        recording = example["recording"]
        recording = recording.decode() if isinstance(recording, bytes) else str(recording)
        spoken, speaker = by_recording[recording]
        guess = answer_index(qtype, written[int(example["image_index"])], spoken, speaker)
        correct[qtype].append(guess == int(example["answer"]))
    per_type = {q: float(np.mean(c)) for q, c in correct.items()}
    overall = float(np.mean([x for c in correct.values() for x in c]))
    return {"answer": overall, "answer_by_question_type": per_type, "test_pairs": len(test)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default="", help="raw FSDD + MNIST ('' -> $MMJAX_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--tfds-dir", default="", help="the built AV-Digits data set (its test pairs)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir or None)
    image_model, pixels, result = image_classifier(data_dir)
    by_recording, audio_accuracies = audio_classifiers(data_dir)
    result |= audio_accuracies
    test = load("test", data_dir=data_dir, tfds_dir=args.tfds_dir or None)
    result |= answer_accuracy(test, image_model, pixels, by_recording)
    text = json.dumps(result, indent=1)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
