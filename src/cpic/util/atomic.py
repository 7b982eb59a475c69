"""Outputs written atomically: a temporary file next to the target, renamed onto it when complete."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def new_temp_file(folder: str | os.PathLike[str], prefix: str = ".", suffix: str = "") -> Path:
    """Create an empty file of a new random name ``prefix...suffix`` in ``folder``; returns its path.

    Unlike ``tempfile.mkstemp`` (mode 0600), the file gets the mode ``open()`` gives a new file,
    ``0o666`` less the umask, so what is written there and renamed into place can be read by
    whoever the user's umask lets read their files.

    Example:
        >>> import os, tempfile
        >>> old = os.umask(0o022)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     temp = new_temp_file(d, suffix=".csv")
        ...     oct(temp.stat().st_mode & 0o777), temp.name.endswith(".csv"), temp.stat().st_size
        ('0o644', True, 0)
        >>> _ = os.umask(old)
    """
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"{folder}: found no free temporary file name {prefix}*{suffix}.")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path in ``final``'s folder, ending in ``final``'s name (so writers that pick
    a format by suffix, such as ``.nii.gz``, still do); when the block ends it is flushed to
    disk and renamed onto ``final``. If the block raises, or is interrupted, the temporary file
    is removed and ``final`` is left as it was: a reader never sees a half-written file. The
    file's mode is what ``open()`` would give it (see :func:`new_temp_file`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with atomic_path(f"{d}/out.csv") as tmp:
        ...         _ = tmp.write_text("a,b\\n")
        ...     try:
        ...         with atomic_path(f"{d}/other.csv") as tmp:
        ...             _ = tmp.write_text("half")
        ...             raise KeyboardInterrupt
        ...     except KeyboardInterrupt:
        ...         pass
        ...     sorted(p.name for p in Path(d).iterdir())
        ['out.csv']
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = new_temp_file(final.parent, suffix=f"-{final.name}")
    try:
        yield temp
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_text_atomic(f"{d}/a.txt", "hello").read_text()
        'hello'
    """
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)
