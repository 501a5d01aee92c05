"""The AV-Digits recipe, one lever at a time: the default experiment (`default`) and variants that each undo
one of its levers or add one it does not use, seed 0, the default's schedule, scored on the validation split
(the test split is for the recipe the levers choose).

  python -m mmjax.sweep experiments/levers.py --workdir runs/levers [--only 'variant=ema,']
Argument `smoke`: every variant on the smoke config (seconds per run).
"""

import pathlib

from mmjax.config import parse_arg
from mmjax.sweep import smoke_sweep

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
UNDO = {  # the default without one of its levers
    "vit": {"model.image.encoder": "vit"},
    "no_shift": {"data.image_shift": 0},
    "text_scratch": {"model.text.init_from": "", "model.text.cache": False, "model.text.pool": ""},
    "text_tokens": {"model.text.pool": ""},
    "audio_patch8x16": {"model.audio.patch_time": 8, "model.audio.patch_freq": 16},  # the old patches
    "audio_patch16x16": {"model.audio.patch_time": 16, "model.audio.patch_freq": 16},
    "linear_heads": {"model.head_hidden": 0},
    "epochs_10": {"train.epochs": 10.0},
    "aux_weights_half": {"tasks.image_digit": 0.5, "tasks.audio_digit": 0.5},  # the digit tasks' old weights
}
ADD = {  # the default with one lever it does not use
    "small_stem": {"model.image.resnet.stem_kernel": 3, "model.image.resnet.stem_stride": 1},
    "specaugment": {"data.time_mask": 4, "data.freq_mask": 8},
    "ema": {"optim.ema_decay": 0.998},
    "smoothing": {"train.label_smoothing": 0.1},
    "epochs_20": {"train.epochs": 20.0},
    "text_noise": {"model.text.noise": 1.0},  # for new wordings: the question's features blurred in training
}
VARIANTS = {"default": {}} | UNDO | ADD


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    sweep = dict(
        base=BASE,
        grid={"variant": VARIANTS, "seed": [0]},
        overrides={},
        robustness=[],
        split="validation",
        eval_max_batches=0,
    )
    if args.smoke:
        sweep = smoke_sweep(sweep, f"{BASE}:text=cached,smoke")
    return sweep
