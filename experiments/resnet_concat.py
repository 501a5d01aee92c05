"""ResNet + concat on AV-Digits: a ResNet image encoder (BatchNorm running statistics trained in the train
state's batch_stats, used at evaluation and saved in the checkpoints), late fusion (an MLP over the
concatenated pooled vectors) and the pretrained all-MiniLM-L6-v2 text tower frozen with LoRA (rank 8) on
its attention query/value projections.

  python -m mmjax.train --config experiments/resnet_concat.py --workdir runs/resnet_concat
Argument `smoke`: the smoke config (still with MiniLM) with the same changes.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, smoke=False)
    c = load_config(f"{BASE}:text=minilm,fusion=late" + (",smoke" if args.smoke else ""))
    c.experiment = "resnet_concat"
    c.model.image.encoder = "resnet"
    c.model.peft.lora = r"text/.*/(query|value)"
    c.optim.lr_rules = r"text/.*/lora_[ab]=1;text/.*=0"
    return c
