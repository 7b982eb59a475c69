"""The ``implicit`` method: fit the reconstruction model to one volume on the voxels its cross
pivots read, and give the volume's latent TT."""

from __future__ import annotations

import math

import torch

from cpic.implicit.model import reconstruction_model
from cpic.nn import ImplicitVolume
from cpic.sources import VolumeSource
from cpic.train.loop import LEARNING_RATE
from cpic.tt import TT
from cpic.util.checks import check_int
from cpic.util.progress import progress as progress_bar

#: what a failed fit raises: a singular or non-finite latent TT, or too little memory for its samples
FIT_FAILURES = (FloatingPointError, torch.linalg.LinAlgError, MemoryError)


class RefusedToStart(MemoryError):
    """The fit did not start: one step would exceed the memory budget."""


def fit_implicit(
    source: VolumeSource,
    *,
    rank: int = 12,
    features: int = 16,
    steps: int = 300,
    lr: float = LEARNING_RATE,
    seed: int = 0,
    device: str | torch.device = "cpu",
    memory_budget: int | None = None,
    progress: bool = False,
) -> tuple[ImplicitVolume, TT]:
    """:func:`reconstruction_model` fitted to the one-channel ``source`` (opened with a
    normalisation) in ``steps`` AdamW steps on the voxels its pivots read, and its latent TT.

    Raises ``ValueError`` for a bad setting, :class:`RefusedToStart` when a step would not fit
    ``memory_budget`` (checked before starting), one of :data:`FIT_FAILURES` when the fit fails.

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="percentile")
        >>> model, latent = fit_implicit(src, rank=2, features=2, steps=2)
        >>> latent.ranks[1] <= 2, src.stats.unique_voxels > 0
        (True, True)
    """
    for name, value in (("rank", rank), ("features", features), ("steps", steps)):
        check_int(name, value)
    model = reconstruction_model(source.shape, rank=rank, features=features, seed=seed).to(device)
    model.memory_budget = memory_budget
    try:
        model.check_memory(1)
    except MemoryError as err:
        raise RefusedToStart(str(err)) from None
    _train(model, source, steps, lr, progress)
    with torch.no_grad():
        latent = model.latent([source], keys=[source])
    return model.eval(), latent


def _train(model: ImplicitVolume, src: VolumeSource, steps: int, lr: float, progress: bool) -> None:
    """``steps`` AdamW steps on the voxels the pivots read, cosine learning rate, gradients clipped."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    bar = progress_bar(range(steps), progress, "compress")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss, _ = model.loss([src], keys=[src])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {step + 1}.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.2e}", refresh=False)
