"""How many intra-op threads torch uses: the user's choice, else the cores that are idle.

cpic's operations are small (a few thousand voxels, ranks of ten), so extra threads gain little
on an idle machine and cost a great deal on a busy one, where they wait for each other at every
operation (docs/usage.md, "Shared machines").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cpic.util.checks import check_int

#: the environment variables through which a user sets torch's intra-op threads
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: torch's own choice (its physical cores), read once so that a count set later does not lower it
TORCH_DEFAULT = torch.get_num_threads()


@dataclass(frozen=True)
class Threads:
    """The intra-op thread count chosen and why (``--threads``, a variable, or the idle cores)."""

    count: int
    reason: str


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count).

    Example:
        >>> usable_cores() >= 1
        True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores(cores: int, load: float) -> int:
    """Cores left over by a 1-minute load average ``load`` on ``cores`` cores, at least one.

    Example:
        >>> idle_cores(2, 0.1), idle_cores(2, 1.2), idle_cores(2, 4.5), idle_cores(16, 3.4)
        (2, 1, 1, 13)
    """
    return max(1, min(cores, cores - round(load)))


def choose_threads(requested: int | None = None, environ: Mapping[str, str] | None = None) -> Threads:
    """The intra-op threads to use: ``requested`` (``--threads``) if given; else what
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` says (torch reads them when it starts); else the
    idle cores (:func:`idle_cores` of the 1-minute load average), at most torch's default.

    Example:
        >>> choose_threads(3)
        Threads(count=3, reason='--threads')
        >>> choose_threads(environ={"OMP_NUM_THREADS": "1"}).reason
        'OMP_NUM_THREADS'
        >>> 1 <= choose_threads(environ={}).count <= usable_cores()
        True
    """
    environ = os.environ if environ is None else environ
    if requested is not None:
        check_int("--threads", requested)
        return Threads(requested, "--threads")
    for name in THREAD_VARIABLES:
        if environ.get(name, "").strip():
            return Threads(torch.get_num_threads(), name)
    cores = min(usable_cores(), TORCH_DEFAULT)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        return Threads(cores, "all cores, load unknown")
    return Threads(idle_cores(cores, load), f"idle cores of {cores}, load {load:.1f}")


def use_threads(requested: int | None = None) -> Threads:
    """:func:`choose_threads`, applied with ``torch.set_num_threads``.

    Example:
        >>> before = torch.get_num_threads()
        >>> use_threads(1).count, torch.get_num_threads()
        (1, 1)
        >>> _ = use_threads(before)
    """
    chosen = choose_threads(requested)
    torch.set_num_threads(chosen.count)
    return chosen
