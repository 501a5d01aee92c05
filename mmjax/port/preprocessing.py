"""A ported checkpoint's own preprocessing drives the experiment's data path.

A Hugging Face checkpoint folder holds its image processor or feature extractor in preprocessor_config.json
(size, crop, mean/std, resample; sampling rate, normalisation, mel bins). `checkpoint_settings` turns it
into experiment config values (`data.image_size`, `data.image_mean`, `data.sample_rate`,
`model.audio.frontend`, ...) and `apply_checkpoint_preprocessing` writes them into the config of every
encoder with `init_from`, except the keys set on the command line, logging each decision.
"""

import json
from collections.abc import Collection
from pathlib import Path

import ml_collections

from mmjax.hf_cache import checkpoint_dir
from mmjax.port.common import read_config

PREPROCESSOR = "preprocessor_config.json"
# PIL's resampling enum, as HF image processors store it.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _edge(size: int | dict | None) -> int | None:
    """The square side of an HF size entry: an int, {height, width} (square only), or {shortest_edge}."""
    if size is None or isinstance(size, int):
        return size
    if "height" in size and "width" in size:
        if size["height"] != size["width"]:
            raise ValueError(f"{PREPROCESSOR}: size {size} is not square; mmjax data sets resize to squares")
        return size["height"]
    return size.get("shortest_edge")


def image_settings(processor: dict, hf_config: dict) -> dict[str, object]:
    """Config values of an HF image processor: the image side after resize (and center crop), the shorter
    edge it resizes to before a center crop (0: none), channels, mean/std (when it normalises) and the
    resampling filter."""
    crop = _edge(processor.get("crop_size")) if processor.get("do_center_crop") else None
    side = crop or _edge(processor.get("size"))
    vision = hf_config.get("vision_config") or hf_config
    channels = vision.get("num_channels", 3)
    settings = {"data.image_channels": channels, "model.image.channels": channels}
    if side:
        settings |= {"data.image_size": side, "model.image.size": side}
    resize = (processor.get("size") or {}) if crop else {}
    settings["data.image_resize"] = resize.get("shortest_edge", 0) if isinstance(resize, dict) else resize
    if processor.get("do_normalize", True) and "image_mean" in processor:
        settings |= {
            "data.image_mean": tuple(processor["image_mean"]),
            "data.image_std": tuple(processor["image_std"]),
        }
    if "resample" in processor:
        settings["data.image_resample"] = RESAMPLE.get(processor["resample"], processor["resample"])
    return settings


def audio_settings(processor: dict) -> dict[str, object]:
    """Config values of an HF feature extractor: the sampling rate, and either raw waveforms (one feature per
    sample: wav2vec2, HuBERT, WavLM), normalised or not, or log-mel features with its number of mel bins."""
    settings = {"data.sample_rate": processor.get("sampling_rate", 16000)}
    if processor.get("feature_size") == 1 and "num_mel_bins" not in processor:
        return settings | {
            "model.audio.frontend": "waveform",
            "data.waveform_normalize": bool(processor.get("do_normalize", True)),
        }
    mels = processor.get("num_mel_bins", processor.get("feature_size"))
    return settings | {"model.audio.frontend": "log_mel", "data.n_mels": mels, "model.audio.mels": mels}


def checkpoint_settings(spec: str) -> dict[str, object]:
    """Config values from the preprocessing of `spec` (`hf:DIR`, `hf:ORG/NAME` or a ported folder holding the
    HF files); {} when the checkpoint has no preprocessor_config.json."""
    folder = checkpoint_dir(spec.removeprefix("hf:")) if spec.startswith("hf:") else Path(spec)
    file = folder / PREPROCESSOR
    if not file.is_file():
        return {}
    try:
        processor = json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"cannot read {file}: {e}") from e
    if "image_processor_type" in processor or "image_mean" in processor:
        hf_config = read_config(folder) if (folder / "config.json").is_file() else {}
        return image_settings(processor, hf_config)
    if "sampling_rate" in processor:
        return audio_settings(processor)
    return {}


def apply_checkpoint_preprocessing(
    config: ml_collections.ConfigDict, overridden: Collection[str] = (), log=print
) -> dict[str, object]:
    """Sets the config values of the preprocessing of every pretrained image or audio encoder
    (model.<kind>.init_from) in `config`, except `overridden` keys (set on the command line) and keys the
    config does not have (the data set has no such setting); logs every decision. Returns what it set."""
    applied = {}
    for kind in ("image", "audio"):
        spec = config.model.get(kind, {}).get("init_from", "")
        if not spec:
            continue
        try:
            settings = checkpoint_settings(spec)
        except FileNotFoundError as e:  # loading the encoder will stop the run with the same message
            log(f"preprocessing: {spec} is not here, the data path keeps its settings: {e}")
            continue
        for key, value in settings.items():
            section, field = key.rsplit(".", 1)
            node = config
            for part in section.split("."):
                node = node.get(part) if node is not None else None
            current = None if node is None else node.get(field)
            if node is None or field not in node:
                log(f"preprocessing: {spec} sets {key}={value!r}; this experiment has no such field: ignored")
            elif key in overridden:
                log(f"preprocessing: {key}={current!r} kept from the command line ({spec} says {value!r})")
            elif current != value:
                node[field] = type(current)(value) if isinstance(current, tuple | list) else value
                applied[key] = value
                log(f"preprocessing: {key}={value!r} from {spec}'s {PREPROCESSOR} (was {current!r})")
    return applied
