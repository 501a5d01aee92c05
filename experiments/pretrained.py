"""A pretrained Hugging Face encoder on your own data: the folder experiment (experiments/folder.py) with one
modality's encoder ported from a checkpoint, whose own preprocessing (image size, mean/std, sampling rate,
raw waveforms) sets the data path.

  python -m mmjax.train --workdir W --config \
      experiments/pretrained.py:family=dinov2,checkpoint=hf:facebook/dinov2-small,dir=PATH,labels=COL
Arguments after ':' (comma separated): family=NAME (a key of FAMILIES: it picks the modality and tower),
checkpoint=SPEC (hf:DIR, hf:ORG/NAME[@REVISION] from the local Hugging Face cache, or a `python -m mmjax.port`
folder; default: the family's usual checkpoint in FAMILIES, which must be in the cache), lr=MULT
(learning-rate multiplier of the pretrained encoder; 0 freezes it), and the folder experiment's dir=,
labels=, fusion=, size=, smoke. Tiny random checkpoints of every family, for smoke runs:
`python scripts/tiny_checkpoints.py OUT`.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

FOLDER = str(pathlib.Path(__file__).with_name("folder.py"))

# Family -> (modality, tower of a two-tower checkpoint or "", the default checkpoint: a model id that
# `hf download` puts in the local Hugging Face cache).
FAMILIES = {
    "bert": ("text", "", "hf:google-bert/bert-base-uncased"),
    "roberta": ("text", "", "hf:FacebookAI/roberta-base"),
    "distilbert": ("text", "", "hf:distilbert/distilbert-base-uncased"),
    "electra": ("text", "", "hf:google/electra-base-discriminator"),
    "mpnet": ("text", "", "hf:sentence-transformers/all-mpnet-base-v2"),
    "deberta-v2": ("text", "", "hf:microsoft/deberta-v3-base"),
    "clip_text": ("text", "text", "hf:openai/clip-vit-base-patch32"),
    "siglip_text": ("text", "text", "hf:google/siglip-base-patch16-224"),
    "vit": ("image", "", "hf:google/vit-base-patch16-224-in21k"),
    "clip": ("image", "vision", "hf:openai/clip-vit-base-patch32"),
    "siglip": ("image", "vision", "hf:google/siglip-base-patch16-224"),
    "dinov2": ("image", "", "hf:facebook/dinov2-small"),
    "resnet": ("image", "", "hf:microsoft/resnet-50"),
    "wav2vec2": ("audio", "", "hf:facebook/wav2vec2-base"),
    "hubert": ("audio", "", "hf:facebook/hubert-base-ls960"),
    "wavlm": ("audio", "", "hf:microsoft/wavlm-base-plus"),
    "whisper": ("audio", "", "hf:openai/whisper-tiny"),
    "ast": ("audio", "", "hf:MIT/ast-finetuned-audioset-10-10-0.4593"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg,
        family="dinov2",
        checkpoint="",
        lr=0.1,
        dir="",
        labels="",
        fusion="cross_attention",
        size="small",
        smoke=False,
    )
    if args.family not in FAMILIES:
        raise ValueError(f"config argument family={args.family!r} is not one of {sorted(FAMILIES)}")
    modality, tower, default = FAMILIES[args.family]
    smoke = ",smoke" if args.smoke else ""
    c = load_config(
        f"{FOLDER}:dir={args.dir},labels={args.labels},fusion={args.fusion},size={args.size}{smoke}"
    )
    c.experiment = f"pretrained_{args.family}"
    c.model[modality].init_from = args.checkpoint or default
    c.model[modality].tower = tower
    if modality == "text":
        c.data.text_len = c.model.text.max_len = 32  # subword tokens of a caption
    c.optim.lr_rules = f"{modality}/.*={args.lr}"  # the stream holding the port (folder streams: kind names)
    return c
