"""One training run per output: lock files beside the model file and in the checkpoint folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from cpic.train.checkpoint import checkpoint_paths
from cpic.util.outputs import RunLock


def lock_paths(output: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The lock files of a run writing the model ``output`` (and checkpoints to ``checkpoint_dir``).

    Example:
        >>> [p.as_posix() for p in lock_paths("run/model.safetensors", "run/ckpt")]
        ['run/model.lock', 'run/ckpt/train.lock']
    """
    base = checkpoint_paths(output)[0].with_suffix("")
    paths = [base.with_name(base.name + ".lock")]
    if checkpoint_dir is not None:
        paths.append(Path(checkpoint_dir) / "train.lock")
    return paths


def training_locks(
    output: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_stale: Callable[[str], None] | None = None,
) -> contextlib.ExitStack:
    """Hold the :func:`lock_paths` of a run for the length of a ``with`` block: a second run on
    the same model file or checkpoint folder is refused (:class:`cpic.util.outputs.LockHeld`,
    naming the lock and the PID) while this one lives; a lock a killed run left is reported
    through ``on_stale`` and taken over.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with training_locks(f"{d}/model"):
        ...         print(sorted(p.name for p in Path(d).iterdir()))
        ...     print(sorted(p.name for p in Path(d).iterdir()))
        ['model.lock']
        []
    """
    stack = contextlib.ExitStack()
    with contextlib.ExitStack() as undo:
        undo.enter_context(stack)
        for path in lock_paths(output, checkpoint_dir):
            stack.enter_context(RunLock(path, on_stale))
        undo.pop_all()
    return stack
