"""Checkpoint folders by Hugging Face model id (`ORG/NAME[@REVISION]`), resolved in the local cache only.

The cache is the one `huggingface_hub` fills (`hf download ORG/NAME`): HF_HUB_CACHE, else HF_HOME/hub, else
XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub, in the snapshot layout
`models--ORG--NAME/{refs/<branch>, snapshots/<commit>/}`. Nothing is downloaded.
"""

import os
import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

MODEL_ID = re.compile(r"(?P<repo>[\w][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[\w./-]+))?")


def cache_dir() -> Path:
    """The hub cache folder the environment selects (see the module docstring)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "huggingface" / "hub"


def checkpoint_dir(source: str | Path) -> Path:
    """`source` itself when it is a folder, else the cached snapshot of the model id `ORG/NAME[@REVISION]`
    (revision: a branch, tag or commit; default main). A miss raises FileNotFoundError naming the folder
    looked in and the command that fills the cache."""
    path = Path(source)
    if path.is_dir():
        return path
    match = MODEL_ID.fullmatch(str(source))
    if match is None or path.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such checkpoint folder (nor a model id ORG/NAME[@REVISION])")
    repo, revision = match["repo"], match["revision"] or "main"
    cache = cache_dir()
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError) as e:
        looked = cache / f"models--{repo.replace('/', '--')}"
        raise FileNotFoundError(
            f"{source}: not a folder, and revision {revision!r} of {repo} is not in the local Hugging Face "
            "cache "
            f"(looked in {looked}: refs/{revision} and snapshots/; cache from HF_HUB_CACHE, HF_HOME/hub or "
            f"~/.cache/huggingface/hub). Fill it where there is network: "
            f"HF_HUB_CACHE={cache} hf download {repo} --revision {revision}"
        ) from e
    return Path(folder)
