"""``compress``: fit the reconstruction model to one volume and measure it on voxels never read."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from cpic.implicit.model import reconstruction_model
from cpic.nn import ImplicitVolume
from cpic.sources import VolumeSource
from cpic.train.loop import LEARNING_RATE
from cpic.train.metrics import psnr, relative_error
from cpic.tt import TT
from cpic.util.progress import progress as progress_bar

#: random voxels (not read by the model) on which compress measures its error
HELD_OUT = 20_000
#: what a failed fit raises: a singular or non-finite latent TT, or too little memory for its samples
FIT_FAILURES = (FloatingPointError, torch.linalg.LinAlgError, MemoryError)


class RefusedToStart(MemoryError):
    """:func:`compress` did not start: one step would exceed the memory budget."""


@dataclass
class CompressResult:
    """What :func:`compress` made: the model, the volume's latent TT, how much of the volume
    the fit read (before the held-out reads), the held-out error and the fit's seconds."""

    model: ImplicitVolume
    latent: TT
    voxels_read: int
    fraction_read: float
    error: dict
    seconds: float


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"--{name} must be a positive integer, got {value}.")


def compress(
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
) -> CompressResult:
    """Fit :func:`reconstruction_model` to the one-channel volume ``source`` in ``steps``
    AdamW steps on the voxels its pivots read, then measure it (:func:`held_out_error`).

    Raises ``ValueError`` for a bad volume or setting, :class:`RefusedToStart` when a step
    would not fit ``memory_budget`` (checked before starting), one of :data:`FIT_FAILURES`
    when the fit fails.

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="range")
        >>> result = compress(src, rank=2, features=2, steps=2)
        >>> 0 < result.fraction_read <= 1, result.error["voxels"] > 0
        (True, True)
    """
    for name, value in (("rank", rank), ("features", features), ("steps", steps)):
        _positive(name, value)
    name = source.name
    if source.channels:
        raise ValueError(f"{name}: has {source.channels} channels; compress takes one-channel volumes.")
    if min(source.shape) < 2:
        raise ValueError(f"{name}: grid {source.shape} is too thin; compress needs 2+ voxels per axis.")
    model = reconstruction_model(source.shape, rank=rank, features=features, seed=seed).to(device)
    model.memory_budget = memory_budget
    try:
        model.check_memory(1)
    except MemoryError as err:
        raise RefusedToStart(str(err)) from None
    started = time.perf_counter()
    _train(model, source, steps, lr, progress)
    with torch.no_grad():
        latent = model.latent([source], keys=[source])
    seconds = time.perf_counter() - started
    fraction, unique = source.stats.fraction(source.size), source.stats.unique_voxels
    seen = torch.from_numpy(source.stats.voxel_ids().copy())
    error = held_out_error(model, latent, source, seen, seed)
    return CompressResult(model, latent, unique, fraction, error, seconds)


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


def held_out_error(
    model: ImplicitVolume, latent: TT, src: VolumeSource, seen: torch.Tensor, seed: int
) -> dict:
    """PSNR and relative error of the decoded intensities at up to ``HELD_OUT`` random voxels
    that were never read (``seen``: linear ids of every voxel read, training targets included).

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="range")
        >>> model = reconstruction_model(src.shape, rank=2, features=2)
        >>> latent = model.latent([src], keys=[src]).detach()
        >>> seen = torch.from_numpy(src.stats.voxel_ids().copy())
        >>> sorted(held_out_error(model, latent, src, seen, seed=0))
        ['psnr_db', 'relative_error', 'voxels']
    """
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, src.size, (min(2 * HELD_OUT, 4 * src.size),), generator=gen).unique()
    ids = ids[~torch.isin(ids, seen.cpu())]
    ids = ids[torch.randperm(len(ids), generator=gen)[:HELD_OUT]]
    if not len(ids):
        return {"voxels": 0, "psnr_db": None, "relative_error": None}
    strides = torch.tensor([math.prod(src.shape[a + 1 :]) for a in range(src.ndim)])
    coords = ids[:, None] // strides % torch.tensor(src.shape)
    truth = src.read(coords).double()
    with torch.no_grad():
        pred = model.query(latent, coords[None])[0].double().cpu()
    # PSNR on the normalised scale (peak 1); without normalisation, peak = the values' range
    peak = 1.0 if src.normalization.method != "none" else float(truth.max() - truth.min()) or 1.0
    return {
        "voxels": len(ids),
        "psnr_db": psnr(pred, truth, peak),
        "relative_error": relative_error(pred, truth),
    }
