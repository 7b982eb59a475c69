"""Start ``N`` local worker processes of a torch.distributed job and watch them (``cpic train --nproc``).

The workers get the environment torchrun would give them (``MASTER_ADDR``, ``MASTER_PORT`` on a
free port, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); when one exits with an error or is killed,
the others are stopped and the launcher returns that exit code, so a dead rank never leaves the
job hanging.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

#: exit code of a job whose rank was killed by a signal (the work failed)
EXIT_FAILED = 1


def free_port() -> int:
    """A TCP port on localhost that is free now (for ``MASTER_PORT``).

    Example:
        >>> 1024 <= free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(rank: int, nproc: int, port: int, base: dict | None = None) -> dict[str, str]:
    """The environment of local worker ``rank`` of ``nproc``, as torchrun sets it.

    ``OMP_NUM_THREADS`` defaults to the CPU cores shared out between the workers.

    Example:
        >>> env = worker_env(1, 2, 29500, base={})
        >>> env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]
        ('1', '2', '127.0.0.1', '29500')
    """
    env = dict(os.environ if base is None else base)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def describe_exit(code: int) -> str:
    """``"exited with code 2"`` or ``"was killed by SIGKILL"`` for a ``Popen.returncode``.

    Example:
        >>> describe_exit(2), describe_exit(-9)
        ('exited with code 2', 'was killed by SIGKILL')
    """
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def launch(
    command: Sequence[str], nproc: int, name: str = "cpic train", grace: float = 5.0, poll: float = 0.05
) -> int:
    """Run ``command`` as ranks ``0..nproc-1`` of one job on this machine; returns the job's exit code.

    0 when every rank exits with 0. When a rank fails (a non-zero exit or a signal) a line naming
    it goes to stderr, the other ranks get SIGTERM (SIGKILL after ``grace`` seconds), and the
    launcher returns that rank's exit code (1 for a signal). Of ranks found failed at once, one
    killed by a signal is named: the others failed for want of it.

    Example:
        >>> import sys
        >>> launch([sys.executable, "-c", "import os; assert int(os.environ['RANK']) < 2"], 2)
        0
        >>> launch([sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['RANK']) * 3)"], 2)
        3
    """
    port = free_port()
    procs = [subprocess.Popen(list(command), env=worker_env(r, nproc, port)) for r in range(nproc)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:  # a rank killed by a signal first: the others then fail for lack of it
                rank, code = min(failed, key=lambda item: (item[1] >= 0, item[0]))
                others = sum(c is None for c in codes)
                stopping = f"; stopping the other {others} rank(s)" if others else ""
                print(f"{name}: rank {rank} of {nproc} {describe_exit(code)}{stopping}.", file=sys.stderr)
                _stop(procs, grace)
                return code if code > 0 else EXIT_FAILED
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll)
    except BaseException:  # Ctrl-C or anything else: leave no orphaned worker behind
        _stop(procs, grace)
        raise


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to the running ``procs``, SIGKILL to those still running ``grace`` seconds later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
