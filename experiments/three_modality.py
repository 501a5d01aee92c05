"""Three-modality tagging on AV-Digits: MFCC audio features + image + text, one head per modality on each
encoder's pooled vector plus the fused (cross-attention) head for every task; each task's loss is the
fused head's plus the per-modality heads' (over the examples that have the modality).

  python -m mmjax.train --config experiments/three_modality.py --workdir runs/three_modality
  python -m mmjax.evaluate --workdir runs/three_modality      (fused and per-modality head accuracies)
  python scripts/bench_infer.py --workdir runs/three_modality (p50/p99 batch-1 latency via the Predictor)
Argument `smoke`: the base experiment's smoke config with the same changes.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
N_MFCC = 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, smoke=False)
    c = load_config(f"{BASE}:smoke" if args.smoke else BASE)
    c.experiment = "three_modality"
    c.data.n_mfcc = c.model.audio.mels = c.model.audio.patch_freq = N_MFCC  # a patch: every MFCC of 4 frames
    c.model.modality_heads = True
    return c
