"""Where the raw data sets live: an explicit folder, else $MMJAX_DATA_DIR, else ../shared/data."""

import os
import pathlib
from collections.abc import Callable


def find_data_dir(
    path: str | os.PathLike | None, has_data: Callable[[pathlib.Path], bool], what: str, hint: str
) -> pathlib.Path:
    """The first candidate folder for which `has_data` holds: `path` if given, else $MMJAX_DATA_DIR, else
    ../shared/data beside the repository or the working directory. Raises FileNotFoundError naming `what`,
    the folders looked in and the `hint`."""
    if path is not None:
        candidates = [pathlib.Path(path)]
    elif os.environ.get("MMJAX_DATA_DIR"):
        candidates = [pathlib.Path(os.environ["MMJAX_DATA_DIR"])]
    else:
        repo_root = pathlib.Path(__file__).resolve().parents[2]
        candidates = [repo_root / ".." / "shared" / "data", pathlib.Path.cwd() / ".." / "shared" / "data"]
    for candidate in candidates:
        if has_data(candidate):
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{what} not found (looked in: {looked}). {hint}")
