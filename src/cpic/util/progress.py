"""Progress on stderr: tqdm bars when tqdm is installed (it is optional), and lines printed
under them without breaking them.

Bars are drawn where tqdm decides to (``disable=None``): on a terminal and in notebooks, not
when stderr is a file or a pipe, so logs and error messages stay free of them."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def shows_progress(args) -> bool:
    """Whether a command shows progress: not with ``--quiet`` or ``--json`` (attributes of ``args``).

    Example:
        >>> import argparse
        >>> shows_progress(argparse.Namespace(quiet=False, json=False))
        True
        >>> shows_progress(argparse.Namespace(quiet=False, json=True))
        False
    """
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional
        return None
    return tqdm


def progress(iterable: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    """``iterable`` under a tqdm bar on stderr when ``enabled`` and stderr is a terminal (the bar
    is removed when done).

    Example:
        >>> list(progress(range(3), False, "counting"))
        [0, 1, 2]
    """
    tqdm = _tqdm() if enabled else None
    if tqdm is None:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None)


class _NoBar:
    """What :func:`counter` gives when no bar is shown: ``update`` and ``close`` do nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def counter(enabled: bool, desc: str, total: int, unit: str = "it"):
    """A bar on stderr (a terminal) advanced by ``update(n)`` (e.g. by the volumes of each
    batch), closed by ``close()`` or a ``with`` block; a stand-in that does nothing when not
    ``enabled``.

    Example:
        >>> with counter(False, "predict", total=4, unit="volume") as bar:
        ...     bar.update(2)
    """
    tqdm = _tqdm() if enabled else None
    if tqdm is None:
        return _NoBar()
    return tqdm(desc=desc, total=total, unit=unit, leave=False, disable=None)


def write(line: str) -> None:
    """Print ``line`` on stderr above any tqdm bar being drawn there (the bar is redrawn below).

    Example:
        >>> import contextlib, io
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     write("epoch 1/2")
        >>> err.getvalue()
        'epoch 1/2\\n'
    """
    tqdm = _tqdm()
    if tqdm is None:
        print(line, file=sys.stderr, flush=True)
    else:
        tqdm.write(line, file=sys.stderr)
