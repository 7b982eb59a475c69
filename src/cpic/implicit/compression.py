"""``compress``: one volume from a read budget, measured on voxels never read, beside the cubic
interpolation of a regular lattice reading at most as many voxels (the baseline)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from cpic.implicit.choose import choose_reads
from cpic.implicit.decoding import values_at
from cpic.implicit.files import METHODS, CompressedVolume
from cpic.implicit.fit import fit_implicit
from cpic.implicit.metrics import HELD_OUT, PEAK_PERCENTILES, error_figures, held_out_coords
from cpic.implicit.refine import read_lattice, refine
from cpic.sources import VolumeSource
from cpic.sources.base import Normalization

#: what ``compress`` can be told to do: ``auto`` chooses ``refine`` or ``lattice`` per volume
COMPRESS_METHODS = ("auto", *METHODS)
#: the method of ``compress`` unless told: refinement where it measured better, the lattice
#: elsewhere (docs/benchmarks.md, reconstruction)
DEFAULT_METHOD = "auto"
#: the read budget unless told: this fraction of the voxels
DEFAULT_BUDGET = 0.005
#: voxels the implicit method reads (and counts) to set its normalisation
NORMALISATION_SAMPLE = 4096


@dataclass
class CompressResult:
    """What :func:`compress` made: the compressed volume, the voxels it read, the held-out
    figures of it and of the lattice baseline (same held-out voxels), and the seconds taken."""

    volume: CompressedVolume
    voxels_read: int
    fraction_read: float
    error: dict
    baseline: dict
    seconds: float


def read_budget(budget: int | float, size: int) -> int:
    """Voxels to read: ``budget`` voxels (an int >= 1), or that fraction of ``size`` (a float in (0, 1]).

    Example:
        >>> read_budget(0.005, 1_000_000), read_budget(300, 1000)
        (5000, 300)
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"the read budget must be a voxel count or a fraction, got {budget!r}.")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a read budget fraction must be in (0, 1], got {budget}.")
        return max(1, round(budget * size))
    if budget < 1:
        raise ValueError(f"a read budget must be at least 1 voxel, got {budget}.")
    return min(budget, size)


def _percentiles(values: torch.Tensor) -> dict:
    low, high = torch.quantile(values.double(), torch.tensor(PEAK_PERCENTILES, dtype=torch.float64)).tolist()
    return {"method": "percentile", "low": low, "high": high}


def compress(
    source: VolumeSource,
    *,
    method: str = DEFAULT_METHOD,
    budget: int | float = DEFAULT_BUDGET,
    seed: int = 0,
    held_out: int = HELD_OUT,
    **implicit_settings,
) -> CompressResult:
    """Compress the one-channel 3-D ``source`` by ``method`` (``refine``: adaptive dyadic lattice
    refinement, ``lattice``: a regular lattice decoded by cubic splines, both reading ``budget``
    voxels or fewer; ``auto``: one of the two, chosen by
    :func:`~cpic.implicit.choose.choose_reads` from a pilot of the regular lattice (refinement
    where the pilot's neighbour differences are heavy-tailed, i.e. edges; the lattice on a
    smooth field), recorded in the volume's ``meta["choice"]``; ``implicit``:
    :func:`~cpic.implicit.fit.fit_implicit` with ``implicit_settings``, reading what its cross
    pivots read), then measure it and the lattice baseline on ``held_out`` random voxels
    neither read (:func:`~cpic.implicit.metrics.error_figures`).

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> result = compress(src, budget=0.1)
        >>> result.voxels_read, result.error["voxels"] > 0, sorted(result.baseline)[:2]
        (324, True, ['foreground_psnr_db', 'foreground_voxels'])
    """
    if method not in COMPRESS_METHODS:
        raise ValueError(f"method must be one of {COMPRESS_METHODS}, got {method!r}.")
    if source.channels:
        raise ValueError(
            f"{source.name}: has {source.channels} channels; compress takes one-channel volumes."
        )
    if source.ndim != 3:
        raise ValueError(f"{source.name}: grid {source.shape} is not 3-D; compress takes 3-D volumes.")
    if min(source.shape) < 2:
        raise ValueError(
            f"{source.name}: grid {source.shape} is too thin; compress needs 2+ voxels per axis."
        )
    count = read_budget(budget, source.size)
    if method != "implicit" and count < 2**source.ndim:
        raise ValueError(
            f"{source.name}: a read budget of {count} voxels is below the {2**source.ndim} corners a "
            "lattice reads; give a larger read budget."
        )
    source.stats.reset()
    started = time.perf_counter()
    meta = {"grid": list(source.shape), "dtype": str(source.dtype), "spatial": source.spatial.to_dict()}
    if method == "implicit":
        sample = held_out_coords(
            source.shape, torch.empty(0, dtype=torch.long), NORMALISATION_SAMPLE, seed + 7
        )
        norm = _percentiles(source.read(sample, normalize=False))
        source.normalization = Normalization(norm["low"], norm["high"], "percentile")
        model, latent = fit_implicit(source, seed=seed, **implicit_settings)
        volume = CompressedVolume("implicit", {**meta, "normalization": norm}, model=model, latent=latent)
    elif method == "auto":
        choice = choose_reads(source, count)
        meta = {**meta, "normalization": _percentiles(choice.reads.values), "choice": choice.to_dict()}
        volume = CompressedVolume(choice.method, meta, reads=choice.reads)
    else:
        reads = (refine if method == "refine" else read_lattice)(source, count)
        volume = CompressedVolume(method, {**meta, "normalization": _percentiles(reads.values)}, reads=reads)
    seconds = time.perf_counter() - started
    unique = source.stats.unique_voxels
    read = torch.from_numpy(source.stats.voxel_ids().copy())
    baseline = (
        volume
        if volume.method == "lattice"
        else CompressedVolume("lattice", meta, reads=read_lattice(source, unique))
    )
    coords = held_out_coords(source.shape, torch.cat([read, _linear(baseline.reads.coords, source.shape)]),
                             held_out, seed)  # fmt: skip
    truth = source.read(coords, normalize=False).double() if len(coords) else torch.empty(0)
    error = error_figures(values_at(volume, coords), truth)
    base = error_figures(values_at(baseline, coords), truth, error["peak"], error["threshold"])
    base["voxels_read"] = baseline.reads.count
    return CompressResult(volume, unique, unique / source.size, error, base, seconds)


def _linear(coords: torch.Tensor, shape) -> torch.Tensor:
    strides = torch.tensor([math.prod(shape[a + 1 :]) for a in range(len(shape))])
    return (coords * strides).sum(-1)
