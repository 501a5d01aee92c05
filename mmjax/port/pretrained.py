"""Pretrained encoders for experiments, named by a spec: `hf:DIR` (a Hugging Face checkpoint folder, or a
model id `hf:ORG/NAME[@REVISION]` in the local Hugging Face cache) or
`CKPT`, a folder written by `python -m mmjax.port --hf DIR --out CKPT`: Orbax params, port.json (the HF
config, tower and weight names the module is rebuilt from) and the checkpoint's tokenizer files.
"""

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax import traverse_util

from mmjax.hf_cache import checkpoint_dir
from mmjax.nn import lora
from mmjax.port import family_and_tower, from_hf
from mmjax.port.common import read_config, read_state_dict, strip_prefix

PORT_JSON = "port.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def save_ported(hf_dir: str | Path, out: str | Path, tower: str | None = None) -> tuple[nn.Module, dict]:
    """Ports the HF folder `hf_dir` (one tower) and writes it to the new folder `out`; returns the port."""
    hf_dir, out = checkpoint_dir(hf_dir), Path(out).absolute()
    if out.exists():
        raise FileExistsError(f"{out} already exists; pick a new --out folder")
    module, params = from_hf(hf_dir, tower)
    config = read_config(hf_dir)
    _, tower = family_and_tower(config, tower, hf_dir / "config.json")
    keys = sorted({strip_prefix(k) for k in read_state_dict(hf_dir)})
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", params)
    checkpointer.wait_until_finished()
    info = {"source": str(hf_dir.absolute()), "tower": tower, "hf_config": config, "hf_keys": keys}
    (out / PORT_JSON).write_text(json.dumps(info, indent=1))
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copy(hf_dir / name, out / name)
    return module, params


def load_pretrained(spec: str, tower: str | None = None) -> tuple[nn.Module, dict]:
    """(module, params) of `hf:DIR` or of a ported folder; `tower` picks a tower of `hf:` checkpoints."""
    if spec.startswith("hf:"):
        return from_hf(spec[len("hf:") :], tower)
    folder = Path(spec)
    if not (folder / PORT_JSON).is_file():
        raise FileNotFoundError(
            f"init_from={spec!r}: expected hf:DIR or a folder written by `python -m mmjax.port` "
            f"(no {PORT_JSON} in {folder})"
        )
    info = json.loads((folder / PORT_JSON).read_text())
    if tower not in (None, info["tower"]):
        raise ValueError(f"{folder} holds the {info['tower']} tower, not tower={tower!r}")
    family, tower = family_and_tower(info["hf_config"], info["tower"], folder / PORT_JSON)
    module = family.encoder_from_config(info["hf_config"], set(info["hf_keys"]), tower)
    inputs = family.dummy_inputs(info["hf_config"], tower)
    abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    if set(abstract) == {"params"}:  # as from_hf: every collection only for a model with more (ResNet)
        abstract = abstract["params"]
    return module, ocp.StandardCheckpointer().restore((folder / "params").absolute(), abstract)


def tokenizer_dir(spec: str) -> Path:
    """The folder holding the tokenizer files of `spec` (the HF folder, or the ported folder's copies)."""
    return checkpoint_dir(spec[len("hf:") :]) if spec.startswith("hf:") else Path(spec)


def with_pretrained(params: dict, pretrained: Mapping[str, dict]) -> dict:
    """`params` with each pretrained modality's subtree swapped in. Structures and shapes must agree, except
    for the LoRA and adapter params PEFT adds (mmjax.nn.lora), which keep their initial values."""
    params = dict(params)
    peft_names = set(lora.LORA_PARAMS + lora.ADAPTER_PARAMS)
    for m, tree in pretrained.items():
        ours, theirs = _shapes(params[m]), _shapes(tree)
        added_by_peft = {path for path in set(ours) - set(theirs) if path.rsplit("/", 1)[-1] in peft_names}
        if {k: v for k, v in ours.items() if k not in added_by_peft} != theirs:
            diff = sorted((set(ours.items()) ^ set(theirs.items())) - {(p, ours[p]) for p in added_by_peft})
            raise ValueError(
                f"pretrained {m} params do not fit the {m} encoder; differing (path, shape): {diff}"
            )
        merged = traverse_util.flatten_dict(params[m], sep="/") | traverse_util.flatten_dict(tree, sep="/")
        params[m] = traverse_util.unflatten_dict(merged, sep="/")
    return params


def _shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    return {"/".join(path): tuple(x.shape) for path, x in traverse_util.flatten_dict(tree).items()}
