"""Multi-task learning on AV-Digits: answer-only vs answer + auxiliary tasks + audio-image contrastive
alignment under each task weighting method, 3 seeds each (5 epochs), tested on the clean test split.

  python -m mmjax.sweep experiments/multitask.py --workdir runs/multitask
Argument `smoke`: the base experiment's smoke config, 3 variants x 1 seed (seconds per run).

Variants: `single` trains only `answer`; the others train answer, image_digit, audio_digit, speaker,
match (weights from av_digits.py) and `align` (InfoNCE between the image and audio encoders' pooled
vectors, positives = the same digit) with multitask.method = static | uncertainty | gradnorm | pcgrad | dwa.
"""

import pathlib

from mmjax.config import parse_arg
from mmjax.multitask import METHODS
from mmjax.sweep import smoke_sweep

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
AUXILIARY = ("image_digit", "audio_digit", "speaker", "match")
ALIGN = {"tasks.align": 0.5, "model.align.modalities": "image,audio"}


def variants() -> dict[str, dict]:
    single = {f"tasks.{task}": 0.0 for task in AUXILIARY}
    return {"single": single} | {method: ALIGN | {"multitask.method": method} for method in METHODS}


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    sweep = dict(
        base=BASE,
        grid={"variant": variants(), "seed": [0, 1, 2]},
        # 5 epochs as in the fusion ablation; per-task gradient norms logged (the methods' diagnostics)
        overrides={"train.epochs": 5.0, "multitask.grad_norms": True},
        robustness=[],
        split="test",
        eval_max_batches=0,
    )
    if args.smoke:
        chosen = ("single", "gradnorm", "pcgrad")
        sweep["grid"]["variant"] = {k: v for k, v in variants().items() if k in chosen}
        sweep = smoke_sweep(sweep, f"{BASE}:smoke")
    return sweep
