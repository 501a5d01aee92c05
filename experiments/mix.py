"""Several data sets in one run: each member is an experiment config, as on the command line.

  python -m mmjax.train --workdir W --config \\
    'experiments/mix.py:experiments/folder.py:dir=A,labels=kind;experiments/folder.py:dir=B,labels=mood'
Members are separated by ';', each `PATH[:ARGS] [--config.KEY=VALUE ...]`. The first member's config gives
the model, optimizer and train loop; the tasks are every member's (weights from the first member that has
the task). Each train batch draws from the members by data.mix_method; validation and test hold every
member's own split, scored pooled and per member (`<member>/<task>/<metric>`). The members' inputs must have
the same sizes (image size and channels, audio features, text length): set them in the member configs.
"""

import ml_collections

from mmjax.data.datasets import member_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    specs = tuple(spec.strip() for spec in (arg or "").split(";") if spec.strip())
    if len(specs) < 2:
        raise ValueError("experiments/mix.py needs two or more member configs: mix.py:CONFIG;CONFIG[;...]")
    members = [member_config(spec, seed=0) for spec in specs]
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
