"""Outputs written atomically: a temporary file next to the target, renamed onto it when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path in ``final``'s folder, ending in ``final``'s name (so writers that pick
    a format by suffix, such as ``.nii.gz``, still do); when the block ends it is flushed to
    disk and renamed onto ``final``. If the block raises, or is interrupted, the temporary file
    is removed and ``final`` is left as it was: a reader never sees a half-written file.

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
    fd, name = tempfile.mkstemp(prefix=".", suffix=f"-{final.name}", dir=final.parent)
    os.close(fd)
    temp = Path(name)
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
