"""cpic.util's optional imports and thread choice."""

import os
import re
import sys

import pytest
import torch

from cpic.util import MissingDependency, choose_threads, require, use_threads
from cpic.util.threads import TORCH_DEFAULT, idle_cores, usable_cores


def test_require_names_the_extra_and_is_a_value_error(monkeypatch):
    assert require("math", "io", "sums").sqrt(4) == 2
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ValueError, match=r"^figures need matplotlib: pip install 'cpic\[plot\]'$") as err:
        require("matplotlib", "plot", "figures")
    assert isinstance(err.value, MissingDependency)


def test_idle_cores_leave_the_busy_ones_and_keep_one():
    assert [idle_cores(2, load) for load in (0.0, 0.4, 0.6, 1.4, 2.0, 7.0)] == [2, 2, 1, 1, 1, 1]
    assert idle_cores(16, 0.2) == 16 and idle_cores(16, 5.6) == 10


def test_threads_requested_then_environment_then_idle_cores(monkeypatch, one_thread):
    assert choose_threads(2, environ={"OMP_NUM_THREADS": "1"}).count == 2
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert choose_threads(environ={name: "3"}).reason == name
    assert choose_threads(environ={"OMP_NUM_THREADS": " "}).reason.startswith("idle cores")
    monkeypatch.setattr("os.getloadavg", lambda: (40.0, 0.0, 0.0))
    assert choose_threads(environ={}).count == 1
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads(environ={}).count == min(TORCH_DEFAULT, usable_cores())
    torch.set_num_threads(1)  # a count set earlier in the process does not lower the choice
    assert choose_threads(environ={}).count == min(TORCH_DEFAULT, usable_cores())
    for bad in (0, -2):
        with pytest.raises(ValueError, match="--threads"):
            choose_threads(bad)


def test_use_threads_sets_torch(one_thread):
    assert use_threads(2).count == 2 and torch.get_num_threads() == 2


def test_replace_together_puts_the_set_back_when_a_rename_fails(tmp_path, monkeypatch):
    from cpic.util import outputs

    for name in ("a", "b"):
        (tmp_path / name).write_text(f"old {name}")
        (tmp_path / f".new-{name}").write_text(f"new {name}")
    replace, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    pairs = [(tmp_path / ".new-a", tmp_path / "a"), (tmp_path / ".new-b", tmp_path / "b")]
    with pytest.raises(OSError):
        outputs.replace_together(pairs)
    monkeypatch.setattr(outputs.os, "replace", replace)
    assert [(tmp_path / n).read_text() for n in ("a", "b")] == ["old a", "old b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new-b", "a", "b"]  # .new-a was moved, undone
    (tmp_path / ".new-a").write_text("new a")
    outputs.replace_together(pairs)
    assert [(tmp_path / n).read_text() for n in ("a", "b")] == ["new a", "new b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_or_unreadable_one(tmp_path):
    import subprocess

    from cpic.util.outputs import LockHeld, RunLock

    lock, notes = tmp_path / "run.lock", []
    lock.write_text(f"{os.getpid()} {os.uname().nodename}\n")  # this process: alive
    with pytest.raises(LockHeld, match=rf"run.lock: is in use by the running process {os.getpid()}"):
        RunLock(lock).acquire()
    dead = subprocess.Popen(["true"])
    dead.wait()
    owners = ((f"{dead.pid} {os.uname().nodename}", f"process {dead.pid}"), ("garbage", "unreadable"))
    for owner, said in owners:
        lock.write_text(owner)
        with RunLock(lock, notes.append):
            assert lock.read_text().split()[0] == str(os.getpid())
        assert said in notes[-1] and not lock.exists()
    lock.write_text("1 another-host\n")  # another machine's run cannot be checked: refused
    with pytest.raises(LockHeld, match="on another-host"):
        RunLock(lock).acquire()


def test_check_writable_refuses_what_cannot_hold_an_output(tmp_path):
    from cpic.util.outputs import check_writable

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "fifo": "is a FIFO (named pipe), not a regular file",
        tmp_path: "is a directory, expected a file name",
        tmp_path / "file" / "below": "is not a folder",
        "/dev/zero": "is a character device",
    }
    for path, needle in cases.items():
        with pytest.raises(ValueError, match=re.escape(needle)):
            check_writable(path)
    with pytest.raises(ValueError, match="is a file, expected a folder"):
        check_writable(tmp_path / "file", folder=True)
    assert check_writable([tmp_path / "new" / "deeper" / "x", tmp_path / "file"])


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted():
    from cpic.util.safe_text import csv_cell

    for cell in ("=1+1", "+1+1", "-1+1", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"http://x\")"):
        assert csv_cell(cell) == "'" + cell
    for cell in ("-1.5", "+2", "tumour", "", 3, -2.5, None):
        assert csv_cell(cell) == cell


def test_c_strides_are_torchs_contiguous_strides_and_wrap_past_int64():
    from cpic.util.indexing import c_strides

    for shape in [(5,), (4, 3, 2), (2, 1, 7, 3)]:
        assert c_strides(shape).tolist() == list(torch.empty(shape).stride())
        idx = torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape))
        assert ((idx * c_strides(shape)).sum(-1) == torch.arange(idx.shape[0])).all()
    huge = c_strides((3, 2**40, 2**23 + 1))  # 2**63 + 2**40 wraps to -2**63 + 2**40
    assert huge.dtype == torch.int64 and huge.tolist() == [-(2**63) + 2**40, 2**23 + 1, 1]


def test_relative_error_per_row_overall_and_against_zero():
    from cpic.util.norms import relative_error

    exact = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    approx = torch.tensor([[3.0, 4.5], [1.0, 0.0]])
    torch.testing.assert_close(relative_error(approx, exact, dim=1), torch.tensor([0.1, 1.0]))
    torch.testing.assert_close(relative_error(approx, exact), (approx - exact).norm() / exact.norm())
    big = torch.full((4,), 3e38)  # squares overflow float32; the scaled norm does not
    torch.testing.assert_close(relative_error(big * 0.5, big), torch.tensor(0.5))


def test_check_int_takes_numpy_integers_and_raises_the_owners_error():
    import numpy as np

    from cpic.util.checks import check_int

    check_int("side", np.int64(8), low=8)
    for bad in (0, True, 2.0, "3", np.float32(3)):
        with pytest.raises(ValueError, match=r"^count must be an integer >= 1, got "):
            check_int("count", bad)

    class OwnError(ValueError):
        pass

    with pytest.raises(OwnError, match="v.nii: patch must be an odd integer >= 1, got 4"):
        check_int("v.nii: patch", 4, odd=True, error=OwnError)
