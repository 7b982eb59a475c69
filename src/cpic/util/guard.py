"""The one check every input path passes before cpic opens it: a regular file where a file is
expected, a folder where a folder is expected; pipes, devices and sockets never block a read.

A file is opened first, without blocking, and its descriptor checked with ``fstat``: what is
checked is what was opened, so a path swapped for a FIFO between a check and an open cannot
hang the reader. :func:`open_file` hands that descriptor to cpic's own readers."""

from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: what a non-regular file is, by its ``stat`` mode
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def check_path(
    path: str | os.PathLike[str],
    what: str = "file",
    *,
    folder: bool = False,
    error: type[Exception] = ValueError,
) -> Path:
    """``path`` as a ``Path`` once it is known to be what is expected: an existing, readable
    regular file (``what`` names it in messages), or a folder when ``folder``. A FIFO, a device,
    a socket, a directory where a file is expected or a file where a folder is expected is
    refused with ``error`` naming the path and what was found. Symlinks are followed: the
    user named the path. A file is opened without blocking and its descriptor checked (then
    closed): for a reader that must open the file by name (h5py, tifffile, tensorstore); cpic's
    own readers use :func:`open_file` and never look the name up again.

    Example:
        >>> try:
        ...     check_path("/dev/null", "volume file")
        ... except ValueError as err:
        ...     print(err)
        /dev/null: is a character device, not a regular file; expected a volume file.
        >>> check_path("/", folder=True)
        PosixPath('/')
    """
    path = Path(path)
    if not folder:
        os.close(_open_regular(path, what, error))
        return path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such folder.") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}).") from None
    if not stat.S_ISDIR(mode):
        raise error(f"{path}: is a file, expected a folder ({what}).")
    if not os.access(path, os.R_OK | os.X_OK):
        raise error(f"{path}: not readable (permission denied).")
    return path


@contextlib.contextmanager
def open_file(
    path: str | os.PathLike[str], what: str = "file", *, error: type[Exception] = ValueError
) -> Iterator[BinaryIO]:
    """``path`` open for reading (binary, blocking) once its descriptor is known to be a
    readable regular file; refusals as :func:`check_path`. Read through it, never by the name
    again: the file read is the file checked. A memory map made from it outlives the block.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(b"voxels"); f.flush()
        ...     with open_file(f.name, "volume file") as fh:
        ...         fh.read()
        b'voxels'
    """
    fd = _open_regular(Path(path), what, error)
    with open(os.fspath(path), "rb", opener=lambda _name, _flags: fd) as fh:  # named, for messages and maps
        yield fh


def _open_nonblocking(path: Path, what: str, error: type[Exception]) -> int:
    """A descriptor of ``path`` opened without blocking (a FIFO with no writer, a terminal)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise error(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a {what}.") from None
    except PermissionError:
        raise error(f"{path}: not readable (permission denied).") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}).") from None


def _open_regular(path: Path, what: str, error: type[Exception]) -> int:
    """A blocking descriptor of ``path``, refused (and closed) unless it is a regular file. A
    name that is not one is refused before it is opened (opening a device can act on it); the
    descriptor's ``fstat`` decides, so a swap after that first look is caught too."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file.") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}).") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode, what, error)
    fd = _open_nonblocking(path, what, error)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode, what, error)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: Path, mode: int, what: str, error: type[Exception]) -> Exception:
    """The refusal of ``path`` whose ``mode`` is not a regular file's."""
    if stat.S_ISDIR(mode):
        return error(f"{path}: is a directory, expected a {what}.")
    return error(f"{path}: is {_kind(mode)}, not a regular file; expected a {what}.")


def read_bytes(
    path: str | os.PathLike[str],
    what: str = "file",
    *,
    max_bytes: int = 1 << 26,
    pipe_timeout: float | None = None,
    error: type[Exception] = ValueError,
) -> bytes:
    """The bytes of a small input file, at most ``max_bytes``. A pipe (``--config <(...)``) is
    read only when ``pipe_timeout`` is given, and then within that many seconds; every other
    non-regular file is refused (see :func:`check_path`). The file is opened without blocking,
    so a FIFO with no writer never hangs the caller.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(b'{"rank": 4}'); f.flush()
        ...     read_bytes(f.name, "config")
        b'{"rank": 4}'
    """
    path = Path(path)
    fd = _open_nonblocking(path, what, error)
    try:
        mode = os.fstat(fd).st_mode  # of what was opened: no race with a check by name
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            if os.fstat(fd).st_size > max_bytes:
                raise error(f"{path}: holds more than {max_bytes} bytes; expected a small {what}.")
            return _read_all(fd, path, what, max_bytes, None, error)
        if stat.S_ISFIFO(mode) and pipe_timeout is not None:
            return _read_all(fd, path, what, max_bytes, pipe_timeout, error)
        raise _not_regular(path, mode, what, error)
    finally:
        os.close(fd)


def _read_all(fd: int, path: Path, what: str, limit: int, seconds: float | None, error) -> bytes:
    """Read ``fd`` to its end: at most ``limit`` bytes, within ``seconds`` (a pipe) if given."""
    deadline = None if seconds is None else time.monotonic() + seconds
    parts, size = [], 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                late = f"a pipe that did not deliver a {what} within the time limit ({seconds:g} s)"
                raise error(f"{path}: {late}.")
        try:
            block = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not block:
            return b"".join(parts)
        size += len(block)
        if size > limit:
            raise error(f"{path}: holds more than {limit} bytes; expected a small {what}.")
        parts.append(block)
