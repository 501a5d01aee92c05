"""Fusion ablation on AV-Digits: every fusion x 3 seeds on the default recipe and schedule (its learning
curves, in the report, show whether the budget has converged), tested clean, without a modality and with
noise; the classical baseline (scripts/classical_baseline.py) is a row of the table. The text tower is the
cached all-MiniLM-L6-v2 (`text=cached`), the default when the grid was run; the fusions see one pooled
question token either way.

  python -m mmjax.sweep experiments/fusion_ablation.py --workdir runs/fusion_ablation [--only 'fusion=late,']
  python -m mmjax.sweep experiments/fusion_ablation.py --workdir runs/fusion_ablation --report
Argument `smoke`: the base experiment's smoke config, 2 fusions x 2 seeds, 3 corruptions (seconds per run).

`get_sweep` returns a plain dict (dotted config keys do not fit ConfigDict attribute names):
  base        the experiment config spec that every run starts from
  grid        {config key: [values]}; runs are the Cartesian product, named by their values
  overrides   {config key: value} applied to every run (before the grid values)
  robustness  [evaluate.main keyword arguments]: one test condition each, besides the clean one
  split       the split the runs are tested on
  eval_max_batches  test only this many batches per condition (0: the whole split)
  references  (optional) {row label: {metric key: value}}: known results shown beside the runs
"""

import json
import pathlib

from mmjax.config import parse_arg
from mmjax.fusion import FUSIONS

BASE = str(pathlib.Path(__file__).with_name("av_digits.py"))
TEXT = "text=cached"  # the tower every run of the grid trained with (runs resume from their checkpoints)
AUX_WEIGHTS = {"tasks.image_digit": 0.5, "tasks.audio_digit": 0.5}  # the digit tasks' weights it trained with
BASELINE = pathlib.Path(__file__).with_name("results") / "classical_baseline.json"


def baseline_metrics(path: pathlib.Path = BASELINE) -> dict[str, float]:
    """The classical baseline's test accuracies under the sweep's metric keys (`answer/accuracy`, ...)."""
    results = json.loads(path.read_text())
    return {f"{task}/accuracy": results[task] for task in ("answer", "image_digit", "audio_digit", "speaker")}


def get_sweep(arg: str | None = None) -> dict:
    args = parse_arg(arg, smoke=False)
    missing = [{"drop": modality} for modality in ("image", "audio", "text")]
    snr = [{"audio_snr": db} for db in (20.0, 10.0, 0.0)]
    image_noise = [{"image_noise": std} for std in (0.5, 1.0)]
    sweep = dict(
        base=f"{BASE}:{TEXT}",
        grid={"model.fusion.name": list(FUSIONS), "seed": [0, 1, 2]},
        overrides=dict(AUX_WEIGHTS),
        robustness=missing + snr + image_noise,
        split="test",
        eval_max_batches=0,
        references={"classical baseline (SVCs + rules)": baseline_metrics()},
    )
    if args.smoke:
        sweep["base"] = f"{BASE}:smoke"
        sweep["grid"] = {"model.fusion.name": ["late", "cross_attention"], "seed": [0, 1]}
        sweep["robustness"] = [{"drop": "audio"}, {"audio_snr": 0.0}, {"image_noise": 1.0}]
        sweep["overrides"] = {"train.eval_every": 1000, "train.checkpoint_every": 1000}  # at the end only
        sweep["eval_max_batches"] = 2
    return sweep
