"""The AV-Digits recipe levers, one at a time: each variant changes one thing against `resnet` (the old
default with the ResNet image encoder, itself compared with `vit`, the old default), seed 0, the demo's
10 epochs, scored on the validation split (the test split is for the recipe the levers choose).

  python -m mmjax.sweep experiments/levers.py --workdir runs/levers [--only 'variant=ema,']
Argument `smoke`: every variant on the smoke config (seconds per run).
"""

import pathlib

from mmjax.config import load_config, parse_arg
from mmjax.sweep import smoke_sweep

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
MINILM = load_config(f"{BASE}:text=cached").model.text.init_from
OLD_DEFAULT = {  # before issue 21: every lever off
    "model.image.encoder": "vit",
    "model.image.resnet.stem_kernel": 7,
    "model.image.resnet.stem_stride": 2,
    "model.text.init_from": "",
    "model.text.cache": False,
    "data.image_shift": 0,
    "data.time_mask": 0,
    "data.freq_mask": 0,
    "optim.ema_decay": 0.0,
    "train.label_smoothing": 0.0,
    "train.epochs": 10.0,
    "tasks.image_digit": 0.5,
    "tasks.audio_digit": 0.5,
    "model.head_hidden": 0,
}
RESNET = OLD_DEFAULT | {"model.image.encoder": "resnet"}
VARIANTS = {
    "resnet": RESNET,
    "small_stem": RESNET | {"model.image.resnet.stem_kernel": 3, "model.image.resnet.stem_stride": 1},
    "shift": RESNET | {"data.image_shift": 2},
    "specaugment": RESNET | {"data.time_mask": 12, "data.freq_mask": 8},
    "text_cached": RESNET | {"model.text.init_from": MINILM, "model.text.cache": True},
    "mlp_head": RESNET | {"model.head_hidden": 256},
    "aux_weights": RESNET | {"tasks.image_digit": 1.0, "tasks.audio_digit": 1.0},
    "epochs_15": RESNET | {"train.epochs": 15.0},
    "ema": RESNET | {"optim.ema_decay": 0.998},
    "smoothing": RESNET | {"train.label_smoothing": 0.1},
    "vit": OLD_DEFAULT,
}


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    sweep = dict(
        base=f"{BASE}:text=cached",
        grid={"variant": VARIANTS, "seed": [0]},
        overrides={"multitask.grad_norms": False},  # logging only; the same updates, 13% fewer passes
        robustness=[],
        split="validation",
        eval_max_batches=0,
    )
    if args.smoke:
        sweep = smoke_sweep(sweep, f"{BASE}:text=cached,smoke")
    return sweep
