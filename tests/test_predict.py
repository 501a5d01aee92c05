"""mmjax.predict on real FSDD recordings and MNIST digits: CLI and API, missing modalities, bad files."""

import json
import subprocess
import sys

import librosa
import numpy as np
import PIL.Image
import pytest
import soundfile as sf

from mmjax import predict
from mmjax.data import av_digits
from tests.test_train import ROOT

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

RECORDING = "3_george_0.wav"  # a test-split take


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real MNIST 7 as a 140 x 140 PNG and a JPEG, and a real FSDD WAV (8 kHz) with FLAC copies."""
    folder = tmp_path_factory.mktemp("inputs")
    data = av_digits.resolve_data_dir()
    images, labels, _ = av_digits.read_mnist(data / "mnist5k" / "mnist_5k.csv.gz")
    digit = PIL.Image.fromarray(images[int(np.flatnonzero(labels == 7)[0])])
    digit.resize((140, 140)).save(folder / "seven.png")
    digit.convert("RGB").resize((56, 56)).save(folder / "seven.jpg", quality=95)
    wav = data / "fsdd" / "recordings" / RECORDING
    wave, rate = sf.read(wav, dtype="float32")
    sf.write(folder / "three.flac", wave, rate)  # lossless: the same samples
    sf.write(folder / "three_44k.flac", librosa.resample(wave, orig_sr=rate, target_sr=44100), 44100)
    return {"png": folder / "seven.png", "jpg": folder / "seven.jpg", "wav": wav, "folder": folder} | {
        "flac": folder / "three.flac",
        "flac_44k": folder / "three_44k.flac",
        "digit": np.asarray(digit, np.float32),
    }


@pytest.fixture(scope="module")
def predictor(smoke_run):
    return predict.Predictor.from_workdir(smoke_run)


def _run_cli(*args):
    command = [sys.executable, "-m", "mmjax.predict", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_and_api_give_the_same_answer(smoke_run, files, predictor):
    question = "what is the sum of the written and spoken digits?"
    done = _run_cli(
        "--workdir",
        smoke_run,
        "--image",
        files["png"],
        "--audio",
        files["wav"],
        "--question",
        question,
        "--json",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    from_cli = json.loads(done.stdout.strip().splitlines()[-1])
    from_api = predictor(image=files["png"], audio=files["wav"], question=question)
    assert from_cli["answer"] == from_api["answer"] == from_api["top5"][0][0]
    assert [name for name, _ in from_cli["top5"]] == [name for name, _ in from_api["top5"]]
    np.testing.assert_allclose([p for _, p in from_cli["top5"]], [p for _, p in from_api["top5"]], rtol=1e-5)
    probabilities = [p for _, p in from_api["top5"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1.0 + 1e-6
    assert set(from_api["tasks"]) == {"image_digit", "audio_digit", "speaker", "match"}
    assert from_api["present"] == ["text", "image", "audio"]


def test_printed_answer_and_top5(predictor, files):
    result = predictor(audio=files["flac"], question="who is speaking?")
    lines = predict.format_result(result).splitlines()
    assert lines[0] == f"answer: {result['answer']}"
    assert [line.split() for line in lines[1:6]] == [[name, f"{p:.3f}"] for name, p in result["top5"]]
    assert all(name in av_digits.ANSWERS for name, _ in result["top5"])
    assert lines[6:] == [
        f"audio_digit: {result['tasks']['audio_digit'][0]} ({result['tasks']['audio_digit'][1]:.3f})",
        f"speaker: {result['tasks']['speaker'][0]} ({result['tasks']['speaker'][1]:.3f})",
        "modalities given: text, audio",
    ]


def test_the_call_matches_the_evaluation_pipeline(smoke_run, predictor, files):
    """An FSDD test recording and MNIST digit give the same features as the training pipeline: the same
    probabilities as the model on the preprocessed example."""
    features = av_digits.audio_features(files["wav"])
    np.testing.assert_allclose(predict.load_audio(files["wav"]), features, atol=1e-6)
    np.testing.assert_allclose(predict.load_audio(files["flac"]), features, atol=1e-6)
    resampled = predict.load_audio(files["flac_44k"])  # any sample rate: nearly the same features
    frames = min(len(resampled), len(features))
    assert abs(len(resampled) - len(features)) <= 1
    assert np.corrcoef(resampled[:frames].ravel(), features[:frames].ravel())[0, 1] > 0.98
    np.testing.assert_array_equal(predict.load_image(files["digit"], 28), files["digit"])
    for name in ("png", "jpg"):  # grey from 140 x 140 / RGB 56 x 56 JPEG: close to the pixels
        pixels = predict.load_image(files[name], 28)
        assert pixels.shape == (28, 28)
        assert np.corrcoef(pixels.ravel(), files["digit"].ravel())[0, 1] > 0.95, name


def test_missing_modalities(predictor, files):
    image_only = predictor(image=files["png"])
    assert image_only["present"] == ["image"] and set(image_only["tasks"]) == {"image_digit"}
    question_only = predictor(question="what digit is spoken?")
    assert question_only["present"] == ["text"] and question_only["tasks"] == {}
    # An absent modality's input is ignored: zeros or a real image give the same result when marked absent.
    batch = predict.make_batch(
        predictor.run.config, None, files["wav"], "who is speaking?", predictor.tokenizer
    )
    with_image = dict(
        batch, image=predict.make_batch(predictor.run.config, files["png"], None, None, None)["image"]
    )
    a, b = (predictor.compiled(predictor.run.variables, x) for x in (batch, with_image))
    np.testing.assert_array_equal(a["answer"], b["answer"])
    with pytest.raises(ValueError, match="at least one of image, audio and question"):
        predictor()


def test_bad_files_are_named(predictor, files):
    not_an_image = files["folder"] / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read image file .*notes.png"):
        predictor(image=not_an_image)
    with pytest.raises(ValueError, match="cannot read image file .*missing.jpg"):
        predictor(image=files["folder"] / "missing.jpg")
    truncated = files["folder"] / "truncated.wav"
    truncated.write_bytes(files["wav"].read_bytes()[:30])
    with pytest.raises(ValueError, match="cannot read audio file .*truncated.wav"):
        predictor(audio=truncated)
    silent = files["folder"] / "silent.wav"
    sf.write(silent, np.zeros(4000, np.float32), 8000)
    with pytest.raises(ValueError, match="silent.wav: silent"):
        predictor(audio=silent)
    with pytest.raises(ValueError, match="the question is empty"):
        predictor(question="  ")


def test_cli_errors(smoke_run, files, tmp_path):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + bytes(40))
    done = _run_cli("--workdir", smoke_run, "--audio", bad)
    assert done.returncode == 2 and "mmjax.predict: error: cannot read audio file" in done.stderr
    assert str(bad) in done.stderr and "Traceback" not in done.stderr
    done = _run_cli("--workdir", tmp_path, "--image", files["png"])
    assert done.returncode == 2 and f"{tmp_path / 'config.json'} not found" in done.stderr
    done = _run_cli("--workdir", smoke_run)
    assert done.returncode == 2 and "give at least one of --image, --audio and --question" in done.stderr
