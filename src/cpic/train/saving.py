"""The two model files a training run writes: its best epoch and its last."""

from __future__ import annotations

import os
from pathlib import Path

from cpic.nn import CPIC
from cpic.train.checkpoint import checkpoint_paths
from cpic.train.fit import History
from cpic.train.model_file import save_model


def last_path(output: str | os.PathLike[str]) -> Path:
    """Where ``cpic train -o OUTPUT`` keeps the last epoch's model: ``OUTPUT.last``.

    Example:
        >>> last_path("run/model.safetensors").as_posix()
        'run/model.last'
    """
    base = checkpoint_paths(output)[0].with_suffix("")
    return base.with_name(base.name + ".last")


def save_best_and_last(model: CPIC, history: History, output, provenance: dict) -> tuple[Path, Path]:
    """The last epoch's model as ``OUTPUT.last``, then the best epoch's (restored into
    ``model``) as ``OUTPUT``, both with ``provenance`` and the run's history; returns their
    ``.safetensors`` paths ``(best, last)``."""
    common = dict(
        provenance,
        epochs=len(history.rows),
        best_epoch=history.best_epoch,
        monitor=history.monitor,
        numerics=history.numerics,
        history=history.rows,
    )
    last = save_model(model, last_path(output), epoch=len(history.rows), **common)
    best_epoch = history.restore_best(model)
    return save_model(model, output, epoch=best_epoch, **common), last
