"""Orbax checkpoints of the train state and the data iterator: keep the latest k and the best by a metric.

A checkpoint is written to a temporary folder and renamed when complete, so a run killed mid-save
resumes from the previous complete one; make_manager reports and deletes such leftover folders.
"""

import logging
import pathlib
import shutil
import sys
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

# Steps saved between evaluations carry no metrics on purpose; Orbax warns about each of them.
logging.getLogger("absl").addFilter(lambda record: "did not provide metrics" not in record.getMessage())


# Orbax writes a step to "<step>.orbax-checkpoint-tmp..." and renames it when the save is complete.
INCOMPLETE_MARK = ".orbax-checkpoint-tmp"


def incomplete_saves(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """Folders of saves that never completed (the run died while writing them)."""
    directory = pathlib.Path(directory)
    return (
        sorted(p for p in directory.glob(f"*{INCOMPLETE_MARK}*") if p.is_dir()) if directory.is_dir() else []
    )


def make_manager(
    directory: str | pathlib.Path, *, keep: int, keep_best: int, best_metric: str, read_only: bool = False
) -> ocp.CheckpointManager:
    """Keeps the `keep` latest steps plus the `keep_best` steps with the highest `best_metric`. Unless
    read_only, incomplete saves are reported on stderr and deleted; they are never restored."""
    if not read_only:
        for path in incomplete_saves(directory):
            print(
                f"mmjax: warning: deleting the incomplete checkpoint {path} (its save was cut short)",
                file=sys.stderr,
            )
            if jax.process_index() == 0:
                shutil.rmtree(path)
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(keep),
            policies.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric],
                reverse=False,
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=lambda metrics: metrics[best_metric],
        best_mode="max",
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).absolute(), options=options, item_names=("state", "data")
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: grain.DatasetIterator,
    metrics: dict[str, float] | None = None,
) -> None:
    """Start an asynchronous save of the state and the data iterator's position."""
    args = ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
    )
    manager.save(step, args=args, metrics=metrics, force=True)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: Any,
    data_iterator: grain.DatasetIterator | None = None,
) -> Any:
    """Restore the state (onto the shardings of `abstract_state`) and, if given, the iterator in place."""
    items = {"state": _restore_args(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_variables(
    manager: ocp.CheckpointManager, step: int, abstract_variables: dict, params_key: str = "params"
) -> dict:
    """Restore only the model variables of a saved train state ({"params"} and, if the model has them,
    {"batch_stats"}; no optimizer state needed), e.g. for evaluation. The params come from the state's
    `params_key` field (params_key(config))."""
    saved = {params_key if key == "params" else key: tree for key, tree in abstract_variables.items()}
    args = ocp.args.Composite(state=_restore_args(saved, partial=True))
    restored = manager.restore(step, args=args)["state"]
    return {key: restored[params_key if key == "params" else key] for key in abstract_variables}


def params_key(config: ml_collections.ConfigDict) -> str:
    """The train-state field evaluation reads params from: their moving average when optim.ema_decay > 0."""
    return "ema_params" if config.optim.get("ema_decay", 0.0) else "params"


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Restore onto the shapes, dtypes and shardings of `abstract` (jax.ShapeDtypeStruct leaves)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    return ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=partial)
