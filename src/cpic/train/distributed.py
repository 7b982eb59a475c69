"""Data-parallel training with torch.distributed: which volumes a rank owns, the gradient all-reduce.

Each rank **owns** the training volumes whose index ``i`` has ``i % world == rank``: it alone
opens, reads and keeps the pivots of those volumes. Every rank draws the same global batches
(same seed), keeps the items it owns, runs ``model.loss`` on them, and one ``all_reduce`` per
step sums ``n_r * grad_r`` (and ``n_r * loss_r``, ``n_r``) over the ranks, so the step applies
``sum_r n_r grad_r / sum_r n_r``: the gradient of the global batch's mean loss, as one process
would compute it. Ownership never changes between epochs, so a volume's pivots evolve exactly as
in a one-process run, and the model trained on ``W`` processes equals the one-process model up to
the order of float sums.

Outside ``torchrun`` (or ``cpic train --nproc``) nothing here starts: :func:`current` is a
one-process context whose collectives do nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

#: the environment variables that torchrun (and ``cpic train --nproc``) set for each worker
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: the numerical events that fit and the model count (``History.numerics``), summed over ranks
EVENTS = ("numerical_error", "nonfinite_loss", "skipped_steps", "refreshed", "lowered_rank", "drift")
#: seconds a collective waits for the other ranks before the job fails (a hung rank)
DEFAULT_TIMEOUT = 600.0


class RankLost(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


def _collective(method):
    """Turn the backend's error in a collective into :class:`RankLost` with a plain message."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as err:  # gloo and NCCL raise RuntimeError (or DistBackendError)
            cause = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip()).split(". ")[0]
            raise RankLost(
                f"rank {self.rank} lost contact with the other ranks: one stopped, or did not answer "
                f"within {'the timeout' if self.timeout is None else f'{self.timeout:g} s'} ({cause})"
            ) from err

    return wrapper


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node.

    Example:
        >>> one = Distributed()
        >>> one.is_main, one.owns(5), one.shard([3, 1, 4])
        (True, True, [3, 1, 4])
        >>> second = Distributed(rank=1, world=2)
        >>> second.is_main, second.shard([3, 1, 4, 0]), second.owned(5)
        (False, [3, 1], [1, 3])
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: seconds a collective waits for the other ranks (as given to ``init_process_group``)
    timeout: float | None = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Whether this rank writes checkpoints, logs and the model (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether collectives run (more than one process in an initialised group)."""
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def owns(self, item: int) -> bool:
        """Whether dataset item ``item`` belongs to this rank (``item % world == rank``)."""
        return item % self.world == self.rank

    def owned(self, n: int) -> list[int]:
        """The items of a dataset of ``n`` volumes that this rank owns."""
        return list(range(self.rank, n, self.world))

    def share(self, n: int) -> list[int]:
        """The items of a dataset of ``n`` volumes that this rank evaluates (or checks): those it
        owns, or all of them when there are fewer than ranks or no process group."""
        return self.owned(n) if self.active and n >= self.world else list(range(n))

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's part of a global batch (possibly empty), in the batch's order."""
        return [i for i in batch if self.owns(i)]

    # ------------------------------------------------------------------ collectives
    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: this rank's GPU for NCCL, else the CPU (gloo)."""
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @_collective
    def sync_gradients(self, model: nn.Module, loss: float | None, count: int) -> tuple[float | None, int]:
        """All-reduce ``model``'s gradients to the mean over the global batch.

        ``loss`` is this rank's mean loss over its ``count`` items (``None`` when its part was
        skipped or empty: it then adds nothing). Afterwards every rank holds the same gradients
        ``sum_r count_r grad_r / sum_r count_r`` (summed in float64); returns ``(global mean
        loss, global count)``, ``(None, 0)`` when no rank contributed. One collective per call,
        on every rank; a parameter that got no gradient on any rank keeps none.
        """
        if loss is None:
            count = 0
        if not self.active:
            return (loss if count else None), count
        params = [p for p in model.parameters() if p.requires_grad]
        comm = self.comm_device
        parts = [
            p.grad.detach().reshape(-1).to(comm, torch.float64) * count
            if p.grad is not None and count
            else torch.zeros(p.numel(), dtype=torch.float64, device=comm)
            for p in params
        ]
        used = [float(p.grad is not None and count > 0) for p in params]
        parts.append(
            torch.tensor([*used, count * (loss or 0.0), float(count)], dtype=torch.float64, device=comm)
        )
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        tail = flat[-2 - len(params) :].tolist()
        total = int(round(tail[-1]))
        offset = 0
        for p, anywhere in zip(params, tail[: len(params)]):
            n = p.numel()
            grad = flat[offset : offset + n] / total if total and anywhere else None
            p.grad = None if grad is None else grad.to(p.device, p.dtype).view_as(p)
            offset += n
        return (tail[-2] / total, total) if total else (None, 0)

    @_collective
    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of all ``n`` items in dataset order, from each rank's rows of its owned items.

        Every rank must own at least one item (``n >= world``); all ranks get the whole result.
        """
        if not self.active:
            return local
        size = -(-n // self.world)
        padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=self.comm_device)
        padded[: len(local)] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        out = local.new_empty((n, *local.shape[1:]))
        for r, part in enumerate(parts):
            out[r :: self.world] = part[: len(range(r, n, self.world))].to(local.device)
        return out

    @_collective
    def gather_objects(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank: for small per-rank states such as
        the pivots of the volumes a rank owns, which a checkpoint written by rank 0 must hold
        for all volumes. Objects travel pickled between the job's own processes (never from a
        file).

        Example:
            >>> Distributed().gather_objects({"pivots": 3})
            [{'pivots': 3}]
        """
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @_collective
    def broadcast_parameters(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (all start from the same model)."""
        if not self.active:
            return
        tensors = list(model.parameters()) + list(model.buffers())
        flat = torch.cat([t.detach().reshape(-1).to(self.comm_device, torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    @_collective
    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. the decision to stop after this epoch)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    @_collective
    def total(self, events: Counter, since: Counter) -> dict[str, int]:
        """The counts of :data:`EVENTS` in ``events`` met since ``since`` summed over the ranks,
        plus ``since`` (the totals of a resumed run); other names as counted on this rank.

        Example:
            >>> from collections import Counter
            >>> Distributed().total(Counter(drift=3, skipped_steps=1), since=Counter(drift=1))
            {'drift': 3, 'skipped_steps': 1}
        """
        if not self.active:
            return dict(events)
        new = torch.tensor([float(events[k] - since[k]) for k in EVENTS], dtype=torch.float64)
        new = new.to(self.comm_device)
        dist.all_reduce(new)
        out = dict(events)
        for name, count in zip(EVENTS, new.tolist()):
            if since[name] + count:
                out[name] = since[name] + int(round(count))
        return out

    @_collective
    def mean(self, values: list[float], weights: list[float]) -> float:
        """The weighted mean of ``values`` over the items of every rank (0 when there are none)."""
        pair = [sum(v * w for v, w in zip(values, weights)), float(sum(weights))]
        if self.active:
            both = torch.tensor(pair, dtype=torch.float64, device=self.comm_device)
            dist.all_reduce(both)
            pair = both.tolist()
        return pair[0] / pair[1] if pair[1] else 0.0


#: what :func:`init` was given, for :func:`current`
_joined: dict[str, float] = {}


def in_distributed_env() -> bool:
    """Whether this process was started by torchrun or ``cpic train --nproc`` (``WORLD_SIZE`` set).

    Example:
        >>> import os
        >>> in_distributed_env() == ("WORLD_SIZE" in os.environ)
        True
    """
    return "WORLD_SIZE" in os.environ


def current() -> Distributed:
    """The context of the initialised process group, or the one-process context.

    Example:
        >>> current()
        Distributed(rank=0, world=1, local_rank=0)
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return Distributed(dist.get_rank(), dist.get_world_size(), local, _joined.get("timeout"))
    return Distributed()


def init(backend: str | None = None, device: str | torch.device = "cpu", timeout: float = DEFAULT_TIMEOUT):
    """Join the job described by torchrun's environment variables; returns ``(context, device)``.

    ``backend`` defaults to ``nccl`` for CUDA devices and ``gloo`` otherwise. With CUDA each rank
    takes the GPU ``cuda:LOCAL_RANK``. A collective that waits longer than ``timeout`` seconds for
    another rank fails (a rank that dies outright is noticed at once). Without ``WORLD_SIZE`` in
    the environment (or with ``WORLD_SIZE=1``) no group starts.

    Example:
        >>> init()  # not under torchrun: one process
        (Distributed(rank=0, world=1, local_rank=0), device(type='cpu'))
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return Distributed(), device
    missing = [name for name in ENV if name not in os.environ and name != "LOCAL_RANK"]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} is set but {missing} are not: start the job with torchrun.")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    _joined["timeout"] = timeout
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout),
                **({"device_id": device} if backend == "nccl" else {}),
            )
        except RuntimeError as err:  # incl. DistStoreError: the others never came
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise RankLost(
                f"rank {rank} of {world} could not join the job at {where} with {backend} within "
                f"{timeout:g} s: {str(err).strip().splitlines()[0]}"
            ) from err
    return Distributed(rank, world, local, timeout), device


def shutdown(wait: bool = False) -> None:
    """Leave the process group, if one was started; with ``wait``, first wait for the other ranks
    to finish too (a rank that has failed meanwhile is not waited for)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        with contextlib.suppress(RuntimeError):  # incl. DistError
            dist.barrier()
    dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End this rank's process now, with ``code``: its files are written and closed, its
    messages flushed. Interpreter exit after a gloo job can end in ``std::terminate``
    (SIGABRT) as gloo's threads are torn down, even after ``destroy_process_group``: 1 run in
    60 of a successful 2-rank ``cpic train --nproc 2`` on this machine, and more often when a
    peer has died. That would turn a finished job into a failed one and add a C++ message
    after ours."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_as_rank(work: Callable[[], int]) -> NoReturn:
    """Run ``work()`` as this rank of the job joined with :func:`init`, leave the process
    group (after waiting for the other ranks when ``work`` returned 0) and end the process with
    ``work``'s exit code (:func:`leave`): this does not return. An exception from ``work``
    leaves the group and propagates."""
    try:
        code = work()
    except BaseException:
        shutdown()
        raise
    if code == 0:
        shutdown(wait=True)
    leave(code)
