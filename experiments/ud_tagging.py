"""UD English EWT tagging: the pretrained all-MiniLM-L6-v2 text tower fine-tuned for token classification,
trained jointly on UPOS, XPOS and dependency-relation labels (loss: each task's mean over its words, summed).
Words are aligned to WordPiece sub-words (each word's tag is predicted at its first sub-word).

  python -m mmjax.train --config experiments/ud_tagging.py --workdir runs/ud_tagging
  python -m mmjax.evaluate --workdir runs/ud_tagging --split test   # per-tag classification reports
Argument `smoke`: a seconds-long run.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

AV_DIGITS = str(pathlib.Path(__file__).with_name("av_digits.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, smoke=False)
    # The AV-Digits MiniLM config (its smoke config with `smoke`) gives the checkpoint path, task weighting,
    # optimizer and train loop settings.
    base = load_config(f"{AV_DIGITS}:text=minilm" + (",smoke" if args.smoke else ""))
    c = ml_collections.ConfigDict()
    c.experiment = "ud_tagging"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "ud_ewt"  # mmjax.data.text_tasks: ud_ewt | xquad
    c.data.data_dir = ""  # "" -> $MMJAX_DATA_DIR or ../shared/data
    c.data.tokenizer = ""  # "" -> model.text.init_from's
    c.data.text_len = 128  # sub-words per sentence ([CLS] and [SEP] included); 99.9% of EWT fits
    c.data.text_buckets = "32,64,128"  # training batches are cut to the shortest length that fits
    c.data.doc_stride = 0  # span QA only
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.data.workers = 0
    c.data.shards = 0

    c.model = ml_collections.ConfigDict()
    c.model.kind = "text"  # mmjax.model.TextTaskModel: the text encoder and one head per task
    c.model.text = dict(init_from=base.model.text.init_from, tower="", max_len=c.data.text_len)
    c.model.dropout = 0.1
    c.model.head_dropout = 0.1
    c.model.scan = False
    c.model.remat = ""
    c.model.dtype = "float32"
    c.model.attention = "xla"
    c.model.peft = base.model.peft.to_dict()

    c.tasks = dict(upos=1.0, xpos=1.0, deprel=1.0)
    c.multitask = base.multitask.copy_and_resolve_references()
    c.multitask.shared = "text/encoder/final_ln/.*|text/encoder/layer_5/.*"  # the last layer all heads read
    c.multitask.grad_norms = False

    c.parallel = base.parallel.copy_and_resolve_references()  # mesh and sharding rules

    c.optim = base.optim.copy_and_resolve_references()
    c.optim.learning_rate = 1e-4
    c.optim.end_learning_rate = 1e-6
    c.optim.weight_decay = 0.01  # AdamW's decoupled weight decay (mmjax.optim)
    c.optim.lr_rules = ""

    c.train = base.train.copy_and_resolve_references()
    c.train.epochs = 2.0
    c.train.best_metric = "upos/accuracy"

    if args.smoke:  # the loop settings stay the AV-Digits smoke config's
        c.data.text_len = c.model.text.max_len = 64
        c.data.text_buckets = "32,64"
        c.data.batch_size = 16
        c.data.eval_batch_size = 32
    else:
        c.optim.warmup_steps = 200
        c.train.eval_every = c.train.checkpoint_every = 200
    c.lock()
    return c
