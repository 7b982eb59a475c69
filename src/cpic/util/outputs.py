"""Output safety: what a command may write is checked before any work starts, a set of files is
replaced as a whole, and one run at a time writes an output (a lock file holding its PID)."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from cpic.util.guard import _kind

#: the hidden name a file being replaced is kept under until its set is complete
PREVIOUS = ".{}.previous"


def _paths(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def check_writable(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    what: str = "output",
    *,
    folder: bool = False,
    error: type[Exception] = ValueError,
) -> list[Path]:
    """``paths`` once each is known to be writable: an existing regular file (or folder, when
    ``folder``) that may be written, or a new name whose nearest existing parent is a writable
    folder. A FIFO, a terminal or another device, a socket, a folder where a file is expected,
    or a parent that is a file, is refused with ``error`` naming the path; nothing is created.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     [p.name for p in check_writable([f"{d}/new/model", f"{d}/log.csv"])]
        ['model', 'log.csv']
        >>> try:
        ...     check_writable("/dev/null", "log file (--log-csv)")
        ... except ValueError as err:
        ...     print(err)
        /dev/null: is a character device, not a regular file; cannot write the log file (--log-csv) there.
    """
    checked = []
    for path in _paths(paths):
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        except OSError as err:
            raise error(f"{path}: cannot be written ({err.strerror or err}).") from None
        if mode is not None:
            if folder and not stat.S_ISDIR(mode):
                raise error(f"{path}: is a file, expected a folder ({what}).")
            if not folder and stat.S_ISDIR(mode):
                raise error(f"{path}: is a directory, expected a file name for the {what}.")
            if not folder and not stat.S_ISREG(mode):
                raise error(f"{path}: is {_kind(mode)}, not a regular file; cannot write the {what} there.")
            if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
                raise error(f"{path}: not writable (permission denied); cannot write the {what}.")
        else:
            _check_parent(path, what, error)
        checked.append(path)
    return checked


def _check_parent(path: Path, what: str, error: type[Exception]) -> None:
    """The nearest existing ancestor of the new ``path`` is a folder this process may write."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{path}: its parent {parent} is not a folder; cannot write the {what}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{path}: the folder {parent} is not writable; cannot write the {what}.")


def refuse_inputs(
    outputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    flag: str,
    overwrite: bool = False,
    remedy: str = "give another name or --overwrite",
) -> None:
    """Refuse an output that is one of the ``inputs`` (the same file, by any name) unless
    ``overwrite``; ``flag`` names the output option in the message, ``remedy`` what to do
    (for a command without ``--overwrite``: ``"give another name"``).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".npy") as f:
        ...     try:
        ...         refuse_inputs(f.name, ["other.npy", f.name], "-o")
        ...     except ValueError as err:
        ...         print(str(err).endswith("is also an input; give another name or --overwrite."))
        True
    """
    sources = [p for p in _paths(inputs) if p.exists()]
    for out in _paths(outputs):
        if overwrite or not out.exists():
            continue
        for source in sources:
            if os.path.samefile(out, source):
                raise ValueError(f"{flag} {str(out)!r} is also an input; {remedy}.")


def temp_sibling(final: str | os.PathLike[str]) -> Path:
    """A new hidden name next to ``final`` (nothing is created), for a file or a base name
    whose files are written first and then moved into place with :func:`replace_together`.

    Example:
        >>> p = temp_sibling("run/model")
        >>> p.parent.as_posix(), p.name.startswith(".") and p.name.endswith("-model")
        ('run', True)
    """
    final = Path(final)
    return final.with_name(f".{secrets.token_hex(6)}-{final.name}")


def restore_previous(finals: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Put back the files a killed :func:`replace_together` kept under hidden names, so the
    set ``finals`` is again the one before it started; returns the files that had been replaced.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, ".a.previous").write_text("old"); _ = Path(d, "a").write_text("new")
        ...     [p.name for p in restore_previous([f"{d}/a"])], Path(d, "a").read_text()
        (['a'], 'old')
    """
    restored = []
    for final in map(Path, finals):
        previous = final.with_name(PREVIOUS.format(final.name))
        if not previous.exists():
            continue
        if final.exists() and os.path.samefile(previous, final):  # never replaced: rename is a no-op
            previous.unlink()
        else:
            os.replace(previous, final)
            restored.append(final)
    return restored


def replace_together(pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]]) -> None:
    """Move each complete ``(temporary, final)`` file onto its final name, as one set: the files
    being replaced are first kept under hidden names (hard links), then every temporary file is
    renamed, then the kept ones are removed. If a rename fails, the set is put back as it was;
    if the process is killed during the renames (a few system calls), the kept files remain and
    the next :func:`replace_together` (or :func:`restore_previous`) of the same set restores them
    first, so the earlier complete set is never lost.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name in ("a", "b", ".t1", ".t2"):
        ...         _ = Path(d, name).write_text(name)
        ...     replace_together([(f"{d}/.t1", f"{d}/a"), (f"{d}/.t2", f"{d}/b")])
        ...     sorted(p.name for p in Path(d).iterdir()), Path(d, "a").read_text()
        (['a', 'b'], '.t1')
    """
    pairs = [(Path(t), Path(f)) for t, f in pairs]
    finals = [f for _, f in pairs]
    restore_previous(finals)  # a set a killed replace left half-moved
    kept = []
    try:
        for _, final in pairs:
            if final.exists():
                previous = final.with_name(PREVIOUS.format(final.name))
                with contextlib.suppress(FileNotFoundError):
                    previous.unlink()
                os.link(final, previous)
                kept.append(previous)
        for temp, final in pairs:
            os.replace(temp, final)
    except BaseException:
        restore_previous(finals)
        raise
    _sync_folders(finals)
    for previous in kept:
        previous.unlink()


def _sync_folders(paths: Iterable[Path]) -> None:
    """Flush the renames in each folder to disk (where the file system allows it)."""
    for folder in {p.absolute().parent for p in paths}:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def staged(final: str | os.PathLike[str], files: Callable[[Path], Sequence[Path]]) -> Iterator[Path]:
    """A hidden base name next to ``final`` to write a set of files under (``files(base)``
    lists them); when the block ends they replace ``files(final)`` together
    (:func:`replace_together`). If the block raises or is interrupted, the staged files are
    removed and the earlier set is untouched; staged files a killed process left for the same
    ``final`` (hidden ``.<12 hex>-NAME...``) are removed first.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> pair = lambda base: [base.with_name(base.name + ".a"), base.with_name(base.name + ".b")]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with staged(f"{d}/out", pair) as base:
        ...         for p in pair(base):
        ...             _ = p.write_text("new")
        ...     sorted(p.name for p in Path(d).iterdir())
        ['out.a', 'out.b']
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    leftover = re.compile(rf"\.[0-9a-f]{{12}}-{re.escape(final.name)}(\..+)?")
    for old in final.parent.glob(f".*-{glob.escape(final.name)}*"):
        if leftover.fullmatch(old.name) and old.is_file():
            old.unlink(missing_ok=True)
    base = temp_sibling(final)
    try:
        yield base
        replace_together(list(zip(files(base), files(final))))
    finally:
        for temp in files(base):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


class LockHeld(ValueError):
    """Another live process holds the lock of an output."""


class RunLock:
    """One run at a time per output: ``path`` (a lock file) holds the PID and host of the run
    that created it, and is removed when the run ends. A second run while the first lives is
    refused (:class:`LockHeld`, naming the lock and the PID); a lock left by a process that no
    longer runs (killed) is reported through ``on_stale`` and taken over.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with RunLock(f"{d}/model.lock"):
        ...         try:
        ...             RunLock(f"{d}/model.lock").acquire()
        ...         except LockHeld as err:
        ...             print("is in use by the running process" in str(err))
        True
    """

    def __init__(self, path: str | os.PathLike[str], on_stale: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.on_stale = on_stale
        self._held = False

    def _owner(self) -> tuple[int | None, str]:
        try:
            pid, _, host = self.path.read_text(encoding="utf-8").strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, ""

    def acquire(self) -> RunLock:
        """Create the lock file, or refuse (a live owner), or take over a stale one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = self._owner()
                if pid is not None and (host != socket.gethostname() or _alive(pid)):
                    where = "" if host == socket.gethostname() else f" on {host}"
                    raise LockHeld(
                        f"{self.path}: is in use by the running process {pid}{where} (another run "
                        "writing the same output); wait for it, stop it, or choose another output."
                    ) from None
                stale = temp_sibling(self.path)
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path, stale)  # only one taker wins the rename
                    stale.unlink()
                    if self.on_stale:
                        owner = "an unreadable owner" if pid is None else f"process {pid}, no longer running"
                        self.on_stale(f"{self.path}: took over a stale lock left by {owner}.")
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._held = True
            return self
        raise LockHeld(f"{self.path}: could not be taken (other runs keep creating it).")

    def release(self) -> None:
        """Remove the lock file if this run holds it."""
        if self._held and self._owner()[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_failure(err: OSError) -> str:
    """One line saying why writing failed and where: a full disk or quota named as such.

    Example:
        >>> import errno
        >>> write_failure(OSError(errno.ENOSPC, "No space left on device", "run/last.safetensors"))
        'the disk is full (No space left on device) writing run/last.safetensors; free space and run again'
    """
    where = f" writing {err.filename}" if err.filename else ""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({reason}){where}; free space and run again"
    return f"{reason}{where}"


class WriteFailed(OSError):
    """An output could not be written (a full disk...): the work failed, the message says where."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "writing an output failed"
