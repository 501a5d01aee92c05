"""Your own data: any multimodal data set in a folder (Hugging Face `datasets` folder conventions).

  python -m mmjax.train --config experiments/folder.py:dir=PATH,labels=COL[+COL...] --workdir W
  python -m mmjax.evaluate --workdir W --split test
The folder holds train/ (and optionally validation/, test/) with a metadata.jsonl, .csv or .parquet each;
`file_name` / `<name>_file_name` columns name image or audio files, other string columns are text, and the
`labels` columns become tasks (classes, multi-label lists or regression numbers). The data set is built once
into the cache (data.tfds_dir) and rebuilt only when the metadata or these data settings change.
Arguments after ':' (comma separated): dir=PATH, labels=COL+COL, fusion=NAME (mmjax.fusion.FUSIONS),
size=tiny|small|base, image_size=N, channels=1|3, group_by=COLUMN (per-group metrics), text=cached|mpnet|
minilm|scratch (the text tower, as in experiments/av_digits.py; default cached, the small all-MiniLM-L6-v2,
frozen; smoke: scratch), smoke.
"""

import pathlib

import ml_collections

from mmjax.config import load_config, parse_arg

AV_DIGITS = str(pathlib.Path(__file__).with_name("av_digits.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg,
        dir="",
        labels="",
        fusion="cross_attention",
        size="small",
        image_size=32,
        channels=3,
        group_by="",
        text="",
        smoke=False,
    )
    labels = [label for label in args.labels.split("+") if label]
    # The AV-Digits config (its smoke config with `smoke`) gives the model, task weighting, optimizer and
    # train loop settings; the data section is the folder's.
    text = args.text or ("" if args.smoke else "cached")
    base_args = [f"fusion={args.fusion}", f"size={args.size}"] + [f"text={text}"] * bool(text)
    base = load_config(f"{AV_DIGITS}:{','.join(base_args + ['smoke'] * args.smoke)}")
    c = ml_collections.ConfigDict()
    c.experiment = "folder"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "folder"  # mmjax.data.folder
    c.data.dir = args.dir  # the data folder (train/, validation/, test/ with a metadata file each)
    c.data.labels = args.labels  # label columns, joined by "+"
    c.data.label_kinds = ""  # "COL=regression;COL2=classes": overrides of the inferred task kinds
    c.data.ignore = ""  # string columns that are not text inputs, joined by "+"
    c.data.max_files = 0  # streams per `<name>_file_names` list column (0: the longest list in train)
    c.data.regression_loss = "mse"  # mse | huber
    c.data.image_size = args.image_size  # images are resized (see image_resize) to image_size x image_size
    c.data.image_channels = args.channels  # 3: RGB, 1: grey
    c.data.image_resize = 0  # > 0: the shorter edge resized to this, then the centre image_size cropped
    c.data.image_resample = "bilinear"  # nearest | bilinear | bicubic | lanczos | box | hamming
    c.data.image_mean = (0.5,) * args.channels  # per-channel normalisation of the 0..1 pixels
    c.data.image_std = (0.25,) * args.channels
    c.data.sample_rate = 16000  # audio is resampled to this rate, then log-mel features every 10 ms
    c.data.n_mels = 64
    c.data.max_audio_seconds = 10.0  # longer clips are cropped when the data set is built
    c.data.audio_frames = 96  # frames per clip in a batch (pad or crop); waveforms: audio_frames * 10 ms
    c.data.waveform_normalize = True  # model.audio.frontend=waveform: each clip to zero mean, unit variance
    c.data.text_len = 16  # tokens per text input
    c.data.tokenizer = ""  # checkpoint folder with tokenizer files; "" -> model.text.init_from's, else words
    c.data.validation_fraction = 0.1  # without a validation/ folder: this share of train, seeded
    c.data.split_seed = 0
    c.data.on_bad_example = "skip"  # skip: a bad row is skipped, listed in bad_inputs.json; stop: it stops
    c.data.tfds_dir = ""  # the built data; "" -> $MMJAX_TFDS_DIR or ~/.cache/mmjax/folders
    c.data.build_workers = 0  # processes that build the data set (0: one per core)
    c.data.batch_size = base.data.batch_size
    c.data.eval_batch_size = base.data.eval_batch_size
    c.data.workers = 0
    c.data.shards = 0

    c.model = base.model.copy_and_resolve_references()
    c.model.text.vocab_size = 0  # 0: the word vocabulary built from the train split's text
    c.model.text.max_len = c.data.text_len
    c.model.text.prefix = ""  # text put before every text input of a pretrained tower (AV-Digits has its own)
    c.model.image.size = args.image_size
    c.model.image.channels = args.channels
    c.model.image.patch_size = 8 if args.image_size % 8 == 0 else args.image_size
    c.model.audio.frames = c.data.audio_frames
    c.model.audio.mels = c.data.n_mels
    c.model.audio.frontend = "log_mel"  # or waveform: the build stores samples at data.sample_rate
    c.model.fusion.query = "text"  # cross_attention: the stream whose tokens query the others

    c.tasks = {label: 1.0 for label in labels}  # loss weight per label column (0: no head, no loss)
    c.multitask = base.multitask.copy_and_resolve_references()
    c.multitask.shared = ".*/encoder/final_ln/.*"
    c.multitask.grad_norms = False
    c.parallel = base.parallel.copy_and_resolve_references()  # mesh and sharding rules
    c.optim = base.optim.copy_and_resolve_references()
    c.train = base.train.copy_and_resolve_references()
    c.train.best_metric = ""  # "": the first task's main metric (accuracy, mAP or R^2)

    c.eval = ml_collections.ConfigDict()
    c.eval.group_by = args.group_by  # a column: every task is also scored per value of it
    c.eval.group_tasks = ""  # the tasks scored per group, joined by ","; "" -> all
    c.lock()
    return c
