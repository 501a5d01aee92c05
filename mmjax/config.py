"""Experiment-config helpers: parse `path:key=value,flag` arguments and load config files by path.

Experiment configs are trusted Python code (they are executed); load only files you would run yourself.
"""

import importlib.util
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse `get_config`'s argument `"key=value,flag"` against typed defaults.

    A bare `flag` sets a bool default to True. Unknown keys and values of the wrong type raise ValueError
    naming the key.
    """
    values = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, has_value, raw = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        kind = type(defaults[key])
        if not has_value:
            if kind is not bool:
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            values[key] = True
        else:
            values[key] = _convert(key, raw, kind)
    return ml_collections.ConfigDict(values)


def _convert(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config argument {key!r} must be true or false, got {raw!r}")
        return raw.lower() in ("true", "1")
    try:
        return kind(raw)
    except ValueError as e:
        raise ValueError(f"config argument {key!r} must be {kind.__name__}, got {raw!r}") from e


def load_python(path: str, kind: str, function: str):
    """Executes the Python file `path` (an experiment config or sweep definition, named `kind` in errors)
    and returns its module, which must define `function`."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{kind} {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"mmjax_{kind.replace(' ', '_')}_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        sweep = function == "get_config" and hasattr(module, "get_sweep")
        hint = " (a sweep definition: run it with python -m mmjax.sweep)" if sweep else ""
        raise ValueError(f"{kind} {path!r} has no {function}(arg){hint}")
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` and apply `key.sub=value` overrides (unknown keys rejected)."""
    path, _, arg = spec.partition(":")
    config = load_python(path, "experiment config", "get_config").get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Set `a.b.c=value` in a config, parsing value with the type of the existing field."""
    dotted, has_value, raw = override.partition("=")
    if not has_value:
        raise ValueError(f"config override {override!r} must look like key=value")
    *parents, leaf = dotted.split(".")
    node = config
    for depth, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ValueError(
                f"unknown config key {'.'.join(parents[: depth + 1])!r} in override {override!r}"
            )
        node = node[name]
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise ValueError(f"unknown config key {dotted!r}; known keys here: {known}")
    current = node[leaf]
    with node.unlocked():
        node[leaf] = _convert(dotted, raw, type(current)) if current is not None else raw
