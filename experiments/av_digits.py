"""AV-Digits: answer questions about a spoken digit (FSDD) and a written digit (MNIST), plus auxiliary tasks.

Train and evaluate:
  python -m mmjax.train --config experiments/av_digits.py:fusion=late --workdir runs/av_late
  python -m mmjax.evaluate --workdir runs/av_late --split test
Arguments after ':' (comma separated): fusion=cross_attention|late, size=tiny|small|base,
smoke (a seconds-long run).
"""

import ml_collections

from mmjax.config import parse_arg
from mmjax.data import av_digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, fusion="cross_attention", size="small", smoke=False)
    c = ml_collections.ConfigDict()
    c.experiment = "av_digits"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ""  # raw FSDD + MNIST; "" -> $MMJAX_DATA_DIR or ../shared/data
    c.data.tfds_dir = ""  # built data set; "" -> $MMJAX_TFDS_DIR or ~/.cache/mmjax/tensorflow_datasets
    c.data.text_len = 16
    c.data.audio_frames = 96  # 0.96 s of 10 ms frames; longer clips (under 1% of FSDD) are cropped
    c.data.batch_size = 64  # global batch, split over all devices
    c.data.eval_batch_size = 200
    c.data.image_shift = 0  # training augmentation: random image shifts of up to this many pixels (0: off)
    c.data.workers = 0  # grain worker processes for the training stream
    c.data.questions = ""  # JSON {question_type: [phrasings]} used by evaluation instead of the built-in ones

    c.model = ml_collections.ConfigDict()
    c.model.size = args.size  # tiny | small | base
    c.model.dropout = 0.1
    c.model.pre_ln = True
    c.model.head_dropout = 0.0
    c.model.text = dict(vocab_size=av_digits.make_tokenizer().vocab_size, max_len=c.data.text_len)
    c.model.image = dict(size=28, channels=1, patch_size=7)
    c.model.audio = dict(frames=c.data.audio_frames, mels=64, patch_time=8, patch_freq=16)
    c.model.fusion = dict(name=args.fusion, depth=2, bidirectional=False)

    # Loss weight per task (task names and class counts come from the data set).
    c.tasks = dict(answer=1.0, image_digit=0.5, audio_digit=0.5, speaker=0.5, match=0.5)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 150
    c.optim.end_learning_rate = 1e-5
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10.0
    c.train.steps = 0  # if > 0, overrides epochs
    c.train.log_every = 25
    c.train.eval_every = 300
    c.train.checkpoint_every = 300
    c.train.keep = 2  # latest checkpoints kept
    c.train.keep_best = 1  # best checkpoints kept, ranked by best_metric on the validation split
    c.train.best_metric = "answer/accuracy"
    c.train.eval_max_batches = 0  # 0 = the whole validation split

    if args.smoke:
        c.model.size = "tiny"
        c.model.fusion.depth = 1
        c.data.batch_size = 16
        c.data.eval_batch_size = 32
        c.optim.warmup_steps = 2
        c.train.steps = 6
        c.train.log_every = 2
        c.train.eval_every = 4
        c.train.checkpoint_every = 3
        c.train.eval_max_batches = 2
    c.lock()
    return c
