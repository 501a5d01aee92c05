"""mmjax.predict on real FSDD recordings and MNIST digits: CLI and API, missing modalities, bad files."""

import json
import shutil
import subprocess
import sys

import librosa
import numpy as np
import PIL.Image
import pytest
import soundfile as sf

from mmjax import predict
from mmjax.data import av_digits_questions, av_digits_sources
from tests.test_train import ROOT

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

RECORDING = "3_george_0.wav"  # a test-split take


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real MNIST 7 as a 140 x 140 PNG and a JPEG, and a real FSDD WAV (8 kHz) with FLAC copies."""
    folder = tmp_path_factory.mktemp("inputs")
    data = av_digits_sources.resolve_data_dir()
    images, labels, _ = av_digits_sources.read_mnist(data / "mnist5k" / "mnist_5k.csv.gz")
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
    assert from_api["main"] == "answer"
    top_cli, top_api = from_cli["tasks"]["answer"]["top"], from_api["tasks"]["answer"]["top"]
    assert [name for name, _ in top_cli] == [name for name, _ in top_api]
    np.testing.assert_allclose([p for _, p in top_cli], [p for _, p in top_api], rtol=1e-5)
    probabilities = [p for _, p in top_api]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1.0 + 1e-6
    assert set(from_api["tasks"]) == {"answer", "image_digit", "audio_digit", "speaker", "match"}
    assert from_api["present"] == ["text", "image", "audio"]


def test_printed_main_task_top5_and_every_task(predictor, files):
    result = predictor(audio=files["flac"], text="who is speaking?")
    lines = predict.format_result(result).splitlines()
    top = result["tasks"]["answer"]["top"]
    assert lines[0] == f"answer: {top[0][0]} ({top[0][1]:.3f})"
    assert [line.split() for line in lines[1:6]] == [[name, f"{p:.3f}"] for name, p in top]
    assert all(name in av_digits_questions.ANSWERS for name, _ in top)
    speaker = result["tasks"]["speaker"]["top"][0]
    assert f"speaker: {speaker[0]} ({speaker[1]:.3f})" in lines[6:]
    assert lines[-1] == "streams given: text, audio"


def test_the_call_matches_the_evaluation_pipeline(smoke_run, predictor, files):
    """An FSDD test recording and MNIST digit give the same source example as the built data set, and
    reading any sample rate or image format gives nearly the same features."""
    features = av_digits_sources.audio_features(files["wav"])
    encode = predictor.run.data.encode_inputs
    np.testing.assert_allclose(encode({"audio": files["wav"]})["audio"], features, atol=1e-6)
    np.testing.assert_allclose(encode({"audio": files["flac"]})["audio"], features, atol=1e-6)
    resampled = encode({"audio": files["flac_44k"]})["audio"]  # any sample rate: nearly the same features
    frames = min(len(resampled), len(features))
    assert abs(len(resampled) - len(features)) <= 1
    assert np.corrcoef(resampled[:frames].ravel(), features[:frames].ravel())[0, 1] > 0.98
    np.testing.assert_array_equal(encode({"image": files["digit"]})["image"], files["digit"])
    for name in ("png", "jpg"):  # grey from 140 x 140 / RGB 56 x 56 JPEG: close to the pixels
        pixels = encode({"image": files[name]})["image"]
        assert pixels.shape == (28, 28)
        assert np.corrcoef(pixels.ravel(), files["digit"].ravel())[0, 1] > 0.95, name


def test_missing_streams(predictor, files):
    image_only = predictor(image=files["png"])
    assert image_only["present"] == ["image"]
    question_only = predictor(question="what digit is spoken?")
    assert question_only["present"] == ["text"]
    # An absent stream's input is ignored: zeros or a real image give the same result when marked absent.
    batch = predict.one_batch(predictor.run, {"audio": files["wav"], "text": "who is speaking?"})
    with_image = dict(batch, image=predict.one_batch(predictor.run, {"image": files["png"]})["image"])
    a, b = (predictor.compiled(predictor.run.variables, x) for x in (batch, with_image))
    np.testing.assert_array_equal(a["answer"], b["answer"])
    with pytest.raises(ValueError, match="give at least one input"):
        predictor()
    with pytest.raises(ValueError, match="no stream 'image_2'"):
        predictor(image_2=files["png"])


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
    with pytest.raises(ValueError, match="the text input is empty"):
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
    assert done.returncode == 2 and "give at least one of --image, --audio, --text and --input" in done.stderr
    done = _run_cli("--workdir", smoke_run, "--input", "video=clip.mp4")
    assert done.returncode == 2 and "no stream 'video'" in done.stderr and "Traceback" not in done.stderr


def test_a_predictor_on_a_sharded_mesh_answers_like_one_device(smoke_run, predictor, files, tmp_path):
    import jax

    from mmjax import parallel

    sharded_run = tmp_path / "run"  # the same run, with every parameter of 64+ elements to be sharded
    shutil.copytree(smoke_run, sharded_run)
    config = json.loads((sharded_run / "config.json").read_text())
    config["parallel"]["min_shard_size"] = 64
    (sharded_run / "config.json").write_text(json.dumps(config))
    mesh = parallel.make_mesh(spec="data:2,fsdp:2,tensor:2")
    sharded = predict.Predictor.from_workdir(sharded_run, mesh=mesh)
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(sharded.run.variables["params"])]
    assert any("fsdp" in spec for spec in specs) and any("tensor" in spec for spec in specs)
    given = {"audio": files["flac"], "image": files["png"], "text": "what is the sum of the two digits?"}
    want, got = predictor(**given), sharded(**given)
    assert got["tasks"]["answer"]["top"][0][0] == want["tasks"]["answer"]["top"][0][0]
    for task in want["tasks"]:
        np.testing.assert_allclose(
            [p for _, p in got["tasks"][task]["top"]], [p for _, p in want["tasks"][task]["top"]], atol=1e-5
        )
