"""SIGTERM (``kill``, a batch scheduler's stop) handled like Ctrl-C: a ``KeyboardInterrupt``
that commands already turn into a message, a resumable checkpoint and exit code 1."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread (elsewhere, and
    where the signal cannot be caught, nothing changes); the previous handler is restored after.

    Example:
        >>> import os, signal
        >>> with sigterm_as_interrupt():
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...         signal.sigtimedwait([], 0)  # let the handler run
        ...     except KeyboardInterrupt as err:
        ...         print("interrupted by", err)
        interrupted by signal SIGTERM
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
