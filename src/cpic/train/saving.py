"""The two model files a training run writes: its best epoch and its last."""

from __future__ import annotations

import os
from pathlib import Path

from cpic.nn import CPIC
from cpic.train.checkpoint import checkpoint_paths
from cpic.train.loop import History
from cpic.train.model_file import save_model
from cpic.util.outputs import staged


def last_path(output: str | os.PathLike[str]) -> Path:
    """Where ``cpic train -o OUTPUT`` keeps the last epoch's model: ``OUTPUT.last``.

    Example:
        >>> last_path("run/model.safetensors").as_posix()
        'run/model.last'
    """
    base = checkpoint_paths(output)[0].with_suffix("")
    return base.with_name(base.name + ".last")


def model_files(output: str | os.PathLike[str]) -> list[Path]:
    """The four files ``cpic train -o OUTPUT`` writes (the best and the last epoch's model).

    Example:
        >>> [p.name for p in model_files("run/model")]
        ['model.safetensors', 'model.json', 'model.last.safetensors', 'model.last.json']
    """
    return [*checkpoint_paths(output), *checkpoint_paths(last_path(output))]


def save_best_and_last(model: CPIC, history: History, output, provenance: dict) -> tuple[Path, Path]:
    """The last epoch's model as ``OUTPUT.last``, then the best epoch's (restored into
    ``model``) as ``OUTPUT``, both with ``provenance`` and the run's history; returns their
    ``.safetensors`` paths ``(best, last)``. The four files are written under temporary names
    and moved into place together (:func:`cpic.util.outputs.staged`), so an earlier pair is
    never mixed with a new one."""
    common = dict(
        provenance,
        epochs=len(history.rows),
        best_epoch=history.best_epoch,
        monitor=history.monitor,
        numerics=history.numerics,
        history=history.rows,
    )
    with staged(checkpoint_paths(output)[0].with_suffix(""), model_files) as base:
        save_model(model, last_path(base), epoch=len(history.rows), **common)
        save_model(model, base, epoch=history.restore_best(model), **common)
    return checkpoint_paths(output)[0], checkpoint_paths(last_path(output))[0]
