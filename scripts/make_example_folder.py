"""Writes a small own-data folder in Hugging Face `datasets` folder conventions from the offline FSDD and
MNIST-5k data, laid out unlike AV-Digits, to try `mmjax.data.folder` on:

    python scripts/make_example_folder.py OUT [--rows-per-split N] [--test-rows M] [--faults] [--seed S]

OUT/train/metadata.csv and OUT/test/metadata.jsonl (no validation folder: it is carved from train); each row
pairs a 40x40 RGB JPEG of an MNIST digit tinted with a colour with an FSDD recording resampled to 44.1 kHz
and stored as FLAC (the same digit in about half of the rows). Columns: image_file_name, audio_file_name,
caption (text), same (yes/no), digits (multi-label: names of the digits present), total (regression: the sum
of both digits) and speaker (metadata). Test images are MNIST rows i % 5 == 0, test recordings FSDD takes
0-4; train uses the others.

--faults adds, at fixed rows (see FAULT_ROWS): rows without an image, rows without audio, a corrupt FLAC,
a path escaping the folder (../../outside.jpg), unlabelled rows and a test row with an unknown `same` value.
"""

import argparse
import csv
import gzip
import json
import pathlib
import sys

import numpy as np
from PIL import Image

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "orange": (250, 150, 30),
    "purple": (160, 60, 220),
    "teal": (30, 190, 190),
}
PACES = ("slowly", "quickly", "clearly", "softly")
IMAGE_SIZE = 40
SAMPLE_RATE = 44100
COLUMNS = ("image_file_name", "audio_file_name", "caption", "same", "digits", "total", "speaker")
# --faults: {split: {kind: 1-based row numbers}} (train: CSV data rows; test: jsonl lines).
FAULT_ROWS = {
    "train": {
        "missing_image": (3, 4),
        "missing_audio": (5, 6),
        "corrupt_audio": (7,),
        "escaping_path": (8,),
        "unlabelled": (9,),
    },
    "test": {"missing_image": (2,), "unknown_label": (3,), "unlabelled": (4,)},
}
ESCAPING_PATH = "../../outside.jpg"
UNKNOWN_LABEL = "maybe"


def _mnist_rows(data_dir: pathlib.Path, wanted: set[int]) -> dict[int, tuple[np.ndarray, int]]:
    """{row: (uint8 [28, 28] image, digit)} of the wanted MNIST-5k rows (only those lines are parsed)."""
    with gzip.open(data_dir / "mnist5k" / "mnist_5k.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    rows = {}
    for i in wanted:
        values = np.array(lines[i].split(","), dtype=np.float64).astype(np.int64)
        rows[i] = (values[:784].reshape(28, 28).astype(np.uint8), int(values[784]))
    return rows


def _mnist_labels(data_dir: pathlib.Path) -> np.ndarray:
    with gzip.open(data_dir / "mnist5k" / "mnist_5k.csv.gz", "rt") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    return np.array([int(float(line.rsplit(",", 1)[1])) for line in lines])


def _recordings(data_dir: pathlib.Path, split: str) -> list[tuple[str, int, str]]:
    """(file name, digit, speaker) of the FSDD recordings of a split (test: takes 0-4; train: the others)."""
    found = []
    for path in sorted((data_dir / "fsdd" / "recordings").glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        if (int(take) < 5) == (split == "test"):
            found.append((path.name, int(digit), speaker))
    return found


def _tinted(pixels: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """A grey digit as a colour digit on a light background, resized to IMAGE_SIZE."""
    ink = pixels.astype(np.float32)[..., None] / 255.0
    background = np.array([245, 242, 235], np.float32)
    rgb = (1 - ink) * background + ink * np.array(colour, np.float32)
    image = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)


def make_rows(
    out: str | pathlib.Path,
    split: str,
    rows: int,
    *,
    faults: bool = False,
    seed: int = 0,
    data_dir: str | pathlib.Path | None = None,
) -> list[dict]:
    """Writes the image and audio files of `rows` rows of a split under out/split and returns the rows
    ({column: value}, None for an empty cell) in order."""
    import soundfile

    from mmjax.data import audio
    from mmjax.data.av_digits_sources import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    split_dir = pathlib.Path(out) / split
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = _mnist_labels(data_dir)
    pool = np.array([i for i in range(len(labels)) if (i % 5 == 0) == (split == "test")])
    recordings = _recordings(data_dir, split)
    plan = []
    for _ in range(rows):
        name, spoken, speaker = recordings[int(rng.integers(len(recordings)))]
        written = spoken if rng.random() < 0.5 else (spoken + int(rng.integers(1, 10))) % 10
        image_row = int(rng.choice(pool[labels[pool] == written]))
        plan.append((name, spoken, speaker, written, image_row))
    images = _mnist_rows(data_dir, {p[4] for p in plan})
    wanted = FAULT_ROWS[split] if faults else {}
    table = []
    for number, (name, spoken, speaker, written, image_row) in enumerate(plan, start=1):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        pixels, digit = images[image_row]
        assert digit == written
        image_name, audio_name = f"images/{number:05d}.jpg", f"audio/{number:05d}.flac"
        _tinted(pixels, COLOURS[colour]).save(split_dir / image_name, quality=90)
        wave, rate = audio.load_wav(data_dir / "fsdd" / "recordings" / name)
        soundfile.write(split_dir / audio_name, audio.resample(wave, rate, SAMPLE_RATE), SAMPLE_RATE)
        pace = PACES[int(rng.integers(len(PACES)))]
        article = "an" if colour[0] in "aeiou" else "a"
        row = {
            "image_file_name": image_name,
            "audio_file_name": audio_name,
            "caption": f"{article} {colour} handwritten digit and a digit {speaker} says {pace}",
            "same": "yes" if written == spoken else "no",
            "digits": sorted({DIGIT_NAMES[written], DIGIT_NAMES[spoken]}, key=DIGIT_NAMES.index),
            "total": float(written + spoken),
            "speaker": speaker,
        }
        if number in wanted.get("missing_image", ()):
            row["image_file_name"] = None
        if number in wanted.get("missing_audio", ()):
            row["audio_file_name"] = None
        if number in wanted.get("corrupt_audio", ()):
            (split_dir / audio_name).write_bytes(np.random.default_rng(number).bytes(4096))
        if number in wanted.get("escaping_path", ()):
            row["image_file_name"] = ESCAPING_PATH
        if number in wanted.get("unlabelled", ()):
            row.update(same=None, digits=None, total=None)
        if number in wanted.get("unknown_label", ()):
            row["same"] = UNKNOWN_LABEL
        table.append(row)
    return table


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """metadata.csv: empty cells for None, lists as JSON, floats as written by Python (7.0)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: "" if v is None else json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def make_folder(
    out: str | pathlib.Path,
    rows_per_split: int = 100,
    test_rows: int | None = None,
    *,
    faults: bool = False,
    seed: int = 0,
    data_dir: str | pathlib.Path | None = None,
) -> pathlib.Path:
    """The example folder: train/metadata.csv (rows_per_split rows), test/metadata.jsonl (test_rows rows,
    default rows_per_split); returns out."""
    out = pathlib.Path(out)
    train = make_rows(out, "train", rows_per_split, faults=faults, seed=seed, data_dir=data_dir)
    write_csv(out / "train" / "metadata.csv", train)
    test_count = rows_per_split if test_rows is None else test_rows
    test = make_rows(out, "test", test_count, faults=faults, seed=seed, data_dir=data_dir)
    write_jsonl(out / "test" / "metadata.jsonl", test)
    return out


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--rows-per-split", type=int, default=100)
    parser.add_argument("--test-rows", type=int, default=None, help="test rows (default: --rows-per-split)")
    parser.add_argument("--faults", action="store_true", help="add bad and incomplete rows (see FAULT_ROWS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_folder(args.out, args.rows_per_split, args.test_rows, faults=args.faults, seed=args.seed)
    print(f"wrote {out}/train/metadata.csv and {out}/test/metadata.jsonl")


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # mmjax without installing it
    main()
