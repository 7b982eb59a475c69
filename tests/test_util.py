"""cpic.util's optional imports and thread choice."""

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
