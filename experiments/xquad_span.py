"""XQuAD English span QA: the pretrained all-MiniLM-L6-v2 text tower with a start/end head, fine-tuned with
AdamW (decoupled weight decay) on 30 articles, early-stopped on validation F1 (6 articles) and tested on 12.
Contexts longer than a window are cut into windows sharing `doc_stride` tokens; each question's answer is
the best-scoring span over all its windows, scored with SQuAD's exact match and F1.

  python -m mmjax.train --config experiments/xquad_span.py --workdir runs/xquad_span
  python -m mmjax.evaluate --workdir runs/xquad_span --split test
Argument `smoke`: a seconds-long run.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

UD_TAGGING = str(pathlib.Path(__file__).with_name("ud_tagging.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, smoke=False)
    c = load_config(UD_TAGGING + (":smoke" if args.smoke else ""))
    c.unlock()
    c.experiment = "xquad_span"
    c.data.dataset = "xquad"
    c.data.text_len = c.model.text.max_len = 96 if args.smoke else 256
    c.data.doc_stride = 32 if args.smoke else 128
    c.data.text_buckets = ""  # windows are full length but for the last of a context
    c.data.batch_size = 16
    c.data.eval_batch_size = 16 if args.smoke else 64
    c.tasks = dict(span=1.0)
    c.multitask.shared = "text/encoder/final_ln/.*|text/encoder/layer_5/.*"
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 0.01
    c.train.best_metric = "span/f1"
    if not args.smoke:
        c.optim.warmup_steps = 60
        c.train.epochs = 8.0
        c.train.eval_every = c.train.checkpoint_every = 59  # an epoch: 950 windows / 16
        c.train.early_stop_patience = 3
    c.lock()
    return c
