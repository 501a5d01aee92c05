"""Which modality queries in cross-attention fusion: text (the default) vs image tokens as queries over the
text + audio tokens, on AV-Digits, 3 seeds each (5 epochs, as in the fusion ablation), tested clean and
without each modality.

  python -m mmjax.sweep experiments/query_modality.py --workdir runs/query_modality [--only 'variant=image,']
Argument `smoke`: the smoke config, both variants x 1 seed.

The text-query runs are the fusion ablation's cross_attention runs (same config, same seeds).
"""

import pathlib

from mmjax.config import parse_arg
from mmjax.sweep import smoke_sweep

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
VARIANTS = {query: {"model.fusion.query": query} for query in ("text", "image")}


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    sweep = dict(
        base=f"{BASE}:fusion=cross_attention",
        grid={"variant": VARIANTS, "seed": [0, 1, 2]},
        overrides={"train.epochs": 5.0},
        robustness=[{"drop": modality} for modality in ("image", "audio", "text")],
        split="test",
        eval_max_batches=0,
    )
    if args.smoke:
        sweep = smoke_sweep(sweep, f"{BASE}:fusion=cross_attention,smoke") | {
            "robustness": [{"drop": "text"}]
        }
    return sweep
