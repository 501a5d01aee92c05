"""Experiment-config helpers: parse `path:key=value,flag` arguments and load config files by path.

Experiment configs are trusted Python code (they are executed); load only files you would run yourself.
"""

import ast
import importlib.util
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmjax.port.preprocessing import apply_checkpoint_preprocessing


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


def _convert(key: str, raw: str, kind: type, what: str = "config argument") -> Any:
    """`raw` as a scalar of type `kind` (bool: true/false/1/0; int rejects "1.5"; float takes "1e-3")."""
    if kind is bool:
        if raw.strip().lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{what} {key!r} must be true or false, got {raw!r}")
        return raw.strip().lower() in ("true", "1")
    try:
        return kind(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} {key!r} must be {kind.__name__}, got {raw!r}") from e


def _literal(raw: str) -> Any:
    """A Python literal ("3", "0.1", "'a'", "(1, 2)", "None") as its value; anything else stays the string."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return raw


def _quoted(raw: str) -> bool:
    return len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""


def _infer(raw: str) -> int | float | str:
    """A sequence element with no element type to follow: int, else float, else str ('quoted': str)."""
    if _quoted(raw):
        return raw[1:-1]
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _convert_sequence(key: str, raw: str, current: tuple | list) -> tuple | list:
    """Comma-separated `raw` ("64,128", "(64, 128)", "a,b", "()", "") in the container type of `current`.

    Each element is converted with the type the existing elements share (bool, int, float or str); with
    none (an empty or mixed default) each element is inferred: int, else float, else str. Elements cannot
    contain commas; one trailing comma is allowed ("64," -> (64,)).
    """
    text = raw.strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("(", ")"), ("[", "]")):
        text = text[1:-1].strip()
    parts = [part.strip() for part in text.split(",")] if text else []
    if len(parts) > 1 and not parts[-1]:
        parts.pop()
    if not all(parts):
        raise ValueError(f"config override {key!r} has an empty element in {raw!r}")
    kinds = {type(element) for element in current}
    kind = kinds.pop() if len(kinds) == 1 else None
    values = []
    for part in parts:
        if kind is str:
            values.append(part[1:-1] if _quoted(part) else part)
        elif kind in (bool, int, float):
            try:
                values.append(_convert(key, part, kind, "config override"))
            except ValueError:
                raise ValueError(
                    f"config override {key!r} must be comma-separated {kind.__name__} values, "
                    f"got {part!r} in {raw!r}"
                ) from None
        else:
            values.append(_infer(part))
    return tuple(values) if isinstance(current, tuple) else list(values)


def _parse_override(key: str, raw: str, current: Any, kind: type) -> Any:
    """`raw` for a field holding `current` of declared type `kind` (a placeholder's type when it is None)."""
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(
            f"config key {key!r} is a section, not a value: override its fields ({key}.name=...)"
        )
    if current is None and kind in (tuple, list):  # e.g. config_dict.placeholder(tuple)
        current = kind()
    if isinstance(current, tuple | list):
        return _convert_sequence(key, raw, current)
    if current is not None:
        return _convert(key, raw, type(current), "config override")
    if kind in (bool, int, float, str):  # e.g. config_dict.placeholder(int)
        return _convert(key, raw, kind, "config override")
    return _literal(raw)


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
    """Load `path/to/config.py[:arg]` and apply `key.sub=value` overrides (unknown keys rejected); then the
    preprocessing of pretrained image/audio encoders sets the data path's values that the overrides leave
    (mmjax.port.preprocessing)."""
    path, _, arg = spec.partition(":")
    config = load_python(path, "experiment config", "get_config").get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    if "model" in config:
        apply_checkpoint_preprocessing(config, {o.partition("=")[0] for o in overrides})
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Set `a.b.c=value` in a config, parsing value with the type of the existing field.

    bool: true/false/1/0; int: an integer ("1.5" is an error); float: any float ("1e-3"); str: as is.
    tuple/list: comma-separated elements ("64,128", also "(64, 128)"; "()" or "" for empty), each of the
    type of the existing elements (none, e.g. an empty default: int, else float, else str), keeping the
    container type. A None default: a Python literal ("3", "0.5", "(1, 2)", "None") as its value, else the
    string as is (a typed placeholder parses with its type). Errors are ValueErrors naming the key and value.

    (Not ml_collections.config_flags' parsers: its TupleParser literal-evals the whole value, so "a,b"
    becomes ("a,b",) and "1,2" for a float tuple stays ints; its literal parser is private.)
    """
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
    value = _parse_override(dotted, raw, node[leaf], node.get_type(leaf))
    with node.unlocked():
        try:
            node[leaf] = value
        except TypeError as e:  # ConfigDict's own type check, e.g. a str for a placeholder(int)
            raise ValueError(f"config override {dotted!r} cannot be set to {raw!r}: {e}") from e
