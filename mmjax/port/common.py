"""Reading Hugging Face checkpoints (config.json, safetensors or torch files) and the strict merge."""

import json
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open

PREFIXES = (  # task-model wrappers
    "bert.",
    "roberta.",
    "distilbert.",
    "mpnet.",
    "electra.",
    "vit.",
    "model.",
    "audio_spectrogram_transformer.",
)

# A key map turns an HF key (prefix stripped) into (mmjax param path, transform), or None to
# drop the key on purpose; it raises KeyError for a key it does not know.
Transform = Callable[[np.ndarray], np.ndarray]
KeyMap = Callable[[str], tuple[str, Transform] | None]


def identity(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    return w.T


def conv_patch_kernel(w: np.ndarray) -> np.ndarray:
    """Patch Conv2d [D, C, p, q] -> the Dense kernel [(p q C), D] of mmjax.nn.embeddings.PatchEmbedding."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def layer_transform(module: str, kind: str, num_heads: int) -> Transform:
    """torch Linear [out, in] -> flax kernels; q/k/v split their outputs, `out` its inputs, into heads.

    `module` is the mmjax module inside a TransformerBlock (`self_attn/query`, `mlp_ln`, ...).
    """
    if module.startswith("self_attn/") and module != "self_attn/out":
        if kind == "weight":
            return lambda w: w.T.reshape(w.shape[1], num_heads, -1)
        return lambda b: b.reshape(num_heads, -1)
    if module == "self_attn/out" and kind == "weight":
        return lambda w: w.T.reshape(num_heads, -1, w.shape[0])
    if module.endswith("_ln"):
        return identity
    return transpose if kind == "weight" else identity


LAYER_KEY = re.compile(r"encoder\.layers?\.(\d+)\.(.+)\.(weight|bias)")  # Whisper: encoder.layers.{i}


def map_layer_key(key: str, layer: dict[str, str], num_heads: int) -> tuple[str, Transform]:
    """`encoder.layer.{i}.<HF module>.{weight,bias}` -> (param path in encoder/layer_{i}, transform).

    `layer` maps a family's HF module names to mmjax module names; unknown keys raise KeyError.
    """
    match = LAYER_KEY.fullmatch(key)
    if match is None or match[2] not in layer:
        raise KeyError(key)
    module = layer[match[2]]
    leaf = "bias" if match[3] == "bias" else "scale" if module.endswith("_ln") else "kernel"
    return f"encoder/layer_{match[1]}/{module}/{leaf}", layer_transform(module, match[3], num_heads)


def map_key(
    key: str,
    ignored: Iterable[str],
    table: dict[str, tuple[str, Transform]],
    layer: dict[str, str],
    num_heads: int,
) -> tuple[str, Transform] | None:
    """A family's key map: None for `ignored` regexes, then `table` (HF key -> (path, transform)), then the
    encoder-layer keys through `layer` (map_layer_key); KeyError for anything else."""
    if any(re.fullmatch(p, key) for p in ignored):
        return None
    if key in table:
        return table[key]
    return map_layer_key(key, layer, num_heads)


def layer_shapes(
    layer: dict[str, str],
    width: int,
    mlp_dim: int,
    depth: int,
    prefix: str = "encoder.layer",
    no_bias: tuple[str, ...] = (),
) -> dict[str, tuple[int, ...]]:
    """Shapes of the `<prefix>.{i}.<HF module>.{weight,bias}` keys of `depth` standard transformer layers;
    `layer` maps HF to mmjax modules (as for map_layer_key), `no_bias` lists mmjax modules without a bias
    (`self_attn/query`, ... under qkv_bias=False)."""
    out_in = {"mlp/fc1": (mlp_dim, width), "mlp/fc2": (width, mlp_dim)}  # attention: (width, width)
    shapes = {}
    for i in range(depth):
        for hf, ours in layer.items():
            weight = (width,) if ours.endswith("_ln") else out_in.get(ours, (width, width))
            shapes[f"{prefix}.{i}.{hf}.weight"] = weight
            if ours not in no_bias:
                shapes[f"{prefix}.{i}.{hf}.bias"] = weight[:1]
    return shapes


def read_config(path: str | Path) -> dict:
    """The checkpoint folder's config.json as a dict."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    return json.loads(file.read_text())


class StateDict(Mapping):
    """HF weights by key, each read from disk only when asked for (`read(key)`), so that porting holds
    one tensor at a time on top of the params it has built."""

    def __init__(self, keys: Iterable[str], read: Callable[[str], np.ndarray]):
        self._keys, self._read = dict.fromkeys(keys), read  # ordered, O(1) membership

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        return self._read(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_state_dict(path: str | Path) -> StateDict:
    """The checkpoint folder's weights as numpy arrays, read lazily: model.safetensors (memory-mapped), a
    sharded model.safetensors.index.json, else pytorch_model.bin (memory-mapped, float tensors as float32)."""
    folder = Path(path)
    if (folder / "model.safetensors").is_file():
        return _safetensors(
            {key: "model.safetensors" for key in _open(folder / "model.safetensors").keys()}, folder
        )
    if (folder / "model.safetensors.index.json").is_file():
        index = folder / "model.safetensors.index.json"
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"cannot read {index}: {e!r}") from e
        return _safetensors(weight_map, folder)
    if (folder / "pytorch_model.bin").is_file():
        import torch  # optional (the `hf` extra); only old-style checkpoints need it

        file = folder / "pytorch_model.bin"
        try:  # weights_only: tensors and plain containers only; pickled code is never run
            state = torch.load(file, weights_only=True, map_location="cpu", mmap=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"refusing {file}: it holds more than tensors ({str(e).splitlines()[0]})") from e

        def read(key: str) -> np.ndarray:
            v = state[key]
            return v.float().numpy() if v.is_floating_point() else v.numpy()

        return StateDict(state, read)
    raise FileNotFoundError(
        f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {folder}"
    )


def _open(file: Path):
    """A memory-mapped safetensors file; a bad or missing one raises ValueError naming it."""
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {file}: {e}") from e


def _safetensors(weight_map: dict[str, str], folder: Path) -> StateDict:
    """The lazy StateDict of safetensors files in `folder`; weight_map: key -> file name."""
    handles = {name: _open(folder / name) for name in sorted(set(weight_map.values()))}

    def read(key: str) -> np.ndarray:
        file = weight_map[key]
        try:
            return handles[file].get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {key} from {folder / file}: {e}") from e

    return StateDict(weight_map, read)


def strip_prefix(key: str) -> str:
    """Drops a leading task-model prefix (PREFIXES: `bert.`, `electra.`, `model.`, ...)."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def merge(
    template: dict,
    state_dict: Mapping[str, np.ndarray],
    key_map: KeyMap,
    dont_load: Iterable[str] = (),
    source: str = "checkpoint",
    as_array: Callable[[np.ndarray], object] = np.asarray,
) -> dict:
    """Fills the params pytree `template` from `state_dict` through `key_map`, strictly.

    `dont_load` regexes (full match) name mmjax param paths ("encoder/layer_0/mlp/fc1/kernel"), which keep
    their value from `template` (so it must hold initialised arrays), or HF keys, which are skipped (the
    param they fill is then reported missing unless its path is matched too). Every missing, unexpected
    or mis-shaped weight and every pattern that matches nothing is collected into one ValueError.
    `as_array` converts each param as soon as it is read (jnp.asarray: on the device, one tensor at a time).
    """
    patterns = [re.compile(p) for p in dont_load]
    used = set()

    def skipped(name: str) -> bool:
        hits = {p.pattern for p in patterns if p.fullmatch(name)}
        used.update(hits)
        return bool(hits)

    targets = {"/".join(k): v for k, v in traverse_util.flatten_dict(template).items()}
    kept = {path for path in targets if skipped(path)}
    params, unexpected, misshaped = {}, [], []
    for raw_key, value in state_dict.items():
        key = strip_prefix(raw_key)
        if skipped(key):
            continue
        try:
            target = key_map(key)
        except KeyError:
            unexpected.append(raw_key)
            continue
        if target is None:
            continue
        path, transform = target
        if path in kept:
            continue
        if path not in targets:
            unexpected.append(f"{raw_key} (-> {path})")
            continue
        array = np.asarray(transform(value), dtype=targets[path].dtype)
        if array.shape != targets[path].shape:
            misshaped.append(f"{raw_key} {value.shape} -> {path} needs {targets[path].shape}")
            params[path] = None  # reported as mis-shaped, not also as missing
            continue
        params[path] = as_array(array)
        del value, array  # the host copy goes before the next tensor is read
    missing = sorted(set(targets) - set(params) - kept)
    problems = [f"missing: {p}" for p in missing] + [f"unexpected: {k}" for k in unexpected]
    problems += [f"mis-shaped: {m}" for m in misshaped]
    problems += [f"dont_load pattern matches nothing: {p.pattern}" for p in patterns if p.pattern not in used]
    not_init = [p for p in kept if isinstance(targets[p], jax.ShapeDtypeStruct)]
    problems += [f"dont_load keeps {p} but the template has no initial value" for p in sorted(not_init)]
    if problems:
        raise ValueError(
            f"{source} does not fit the model ({len(problems)} problems):\n" + "\n".join(problems)
        )
    params |= {p: as_array(np.asarray(targets[p])) for p in kept}
    return traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in params.items()})
