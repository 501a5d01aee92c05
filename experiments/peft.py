"""Fine-tuning the pretrained all-MiniLM-L6-v2 text tower on AV-Digits: LoRA vs full fine-tuning vs a
frozen tower, 3 seeds each (5 epochs); the image and audio encoders, fusion and heads train from scratch.

  python -m mmjax.sweep experiments/peft.py --workdir runs/peft
Argument `smoke`: the smoke config (still with MiniLM), 3 variants x 1 seed.

  full    every text parameter at 0.1x the learning rate (experiments/av_digits.py:text=minilm)
  lora    the text tower frozen; LoRA (rank 8, alpha 16) on its attention query/value projections
  frozen  the text tower frozen
"""

import pathlib

from mmjax.config import parse_arg
from mmjax.sweep import smoke_sweep

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
VARIANTS = {
    "full": {},
    "lora": {"model.peft.lora": r"text/.*/(query|value)", "optim.lr_rules": r"text/.*/lora_[ab]=1;text/.*=0"},
    "frozen": {"optim.lr_rules": "text/.*=0"},
}


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    sweep = dict(
        base=f"{BASE}:text=minilm",
        grid={"variant": VARIANTS, "seed": [0, 1, 2]},
        overrides={"train.epochs": 5.0},
        robustness=[],
        split="test",
        eval_max_batches=0,
    )
    if args.smoke:
        sweep = smoke_sweep(sweep, f"{BASE}:text=minilm,smoke")
    return sweep
