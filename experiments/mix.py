"""Several data sets in one run: each member is an experiment config, as on the command line.

  python -m mmjax.train --workdir W --config \\
    'experiments/mix.py:experiments/folder.py:dir=A,labels=kind;experiments/folder.py:dir=B,labels=mood'
Members are separated by ';', each `PATH[:ARGS] [--config.KEY=VALUE ...]`; a `smoke` entry makes every
member its smoke config. The first member's config gives
the model, optimizer and train loop; the tasks are every member's (weights from the first member that has
the task). Each train batch draws from the members by data.mix_method; validation and test hold every
member's own split, scored pooled and per member (`<member>/<task>/<metric>`). The members' inputs must have
the same sizes (image size and channels, audio features, text length): set them in the member configs.
"""

import pathlib
import shlex

import ml_collections

from mmjax.data.datasets import member_config

AV_DIGITS = str(pathlib.Path(__file__).with_name("av_digits.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    specs = [spec.strip() for spec in (arg or "").split(";") if spec.strip()]
    smoke = "smoke" in specs  # every member's smoke config
    specs = tuple(with_smoke(spec) if smoke else spec for spec in specs if spec != "smoke")
    # Without members (e.g. listing every experiment) the AV-Digits settings stand in; training needs two.
    members = [
        member_config(spec, seed=0) for spec in specs or (with_smoke(AV_DIGITS) if smoke else AV_DIGITS,)
    ]
    c = members[0].copy_and_resolve_references()
    tasks = {}
    for member in members:
        for task, weight in member.tasks.items():
            tasks.setdefault(task, weight)
    with c.unlocked():
        c.experiment = "mix"
        c.data.dataset = "mix"
        c.data.mix = specs  # the member configs
        c.data.mix_method = "proportional"  # proportional | temperature | round_robin (mmjax.data.mixture)
        c.data.mix_temperature = 2.0  # temperature: p_k ∝ n_k^(1/T)
        c.tasks = ml_collections.ConfigDict(tasks)
        c.train.best_metric = ""  # "": the first member's primary task, pooled over the members
    c.lock()
    return c


def with_smoke(spec: str) -> str:
    """A member spec with `smoke` added to its config's arguments."""
    config, *overrides = shlex.split(spec)
    path, _, args = config.partition(":")
    return shlex.join([f"{path}:{args},smoke" if args else f"{path}:smoke", *overrides])
