"""Honest figures of a reconstruction: voxels never read, a peak from the data, a foreground.

The peak of the PSNR is the spread between the 0.5th and 99.5th percentiles of the true values
of the held-out voxels (a random sample of the volume), never a dtype's range; the foreground
is the held-out voxels above an Otsu threshold of that sample (the head, not the air around it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.train.metrics import psnr, relative_error

#: random voxels, never read by a method, on which compress measures it
HELD_OUT = 20_000
#: percentiles of the held-out values that set the PSNR's peak
PEAK_PERCENTILES = (0.005, 0.995)


def held_out_coords(shape: Sequence[int], read: Tensor, count: int = HELD_OUT, seed: int = 0) -> Tensor:
    """Up to ``count`` random distinct voxel coordinates ``[K, D]`` of ``shape`` outside ``read``
    (the linear C-order ids of every voxel read).

    Example:
        >>> c = held_out_coords((4, 4, 4), torch.arange(60), 10)
        >>> sorted((c[:, 0] * 16 + c[:, 1] * 4 + c[:, 2]).tolist())
        [60, 61, 62, 63]
    """
    size = math.prod(shape)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, size, (min(2 * count + len(read), 4 * size),), generator=gen).unique()
    ids = ids[~torch.isin(ids, read.cpu())]
    ids = ids[torch.randperm(len(ids), generator=gen)[:count]]
    return torch.stack(torch.unravel_index(ids, tuple(shape)), -1)


def otsu_threshold(values: Tensor, bins: int = 256) -> float:
    """The threshold between the two classes of ``values`` of least within-class variance.

    Example:
        >>> otsu_threshold(torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1, 5.2])) > 0.2
        True
    """
    v = values.double()
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return lo
    hist = torch.histc(v, bins, lo, hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    weight = hist.cumsum(0)
    mass = (hist * centres).cumsum(0)
    below, total = weight[:-1], weight[-1]
    above = total - below
    mean_below = mass[:-1] / below.clamp_min(1)
    mean_above = (mass[-1] - mass[:-1]) / above.clamp_min(1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(lo + (int(between.argmax()) + 1) * (hi - lo) / bins)


def error_figures(
    estimate: Tensor, truth: Tensor, peak: float | None = None, threshold: float | None = None
) -> dict:
    """PSNR (peak: ``peak``, else the 0.5-99.5 percentile spread of ``truth``), relative error and
    the PSNR on the foreground (``truth`` above ``threshold``, else its Otsu threshold).

    Example:
        >>> truth = torch.cat([torch.zeros(50), torch.linspace(1, 2, 50)])
        >>> f = error_figures(truth + 0.01, truth)
        >>> round(f["psnr_db"], 1), f["foreground_voxels"]
        (46.0, 50)
    """
    estimate, truth = estimate.double(), truth.double()
    if not len(truth):
        return {"voxels": 0, "psnr_db": None, "relative_error": None, "foreground_psnr_db": None,
                "foreground_voxels": 0, "peak": None, "threshold": None}  # fmt: skip
    if peak is None:
        low, high = torch.quantile(truth, torch.tensor(PEAK_PERCENTILES, dtype=truth.dtype)).tolist()
        peak = high - low or 1.0
    threshold = otsu_threshold(truth) if threshold is None else threshold
    fore = truth > threshold
    return {
        "voxels": len(truth),
        "psnr_db": psnr(estimate, truth, peak),
        "relative_error": relative_error(estimate, truth),
        "foreground_psnr_db": psnr(estimate[fore], truth[fore], peak) if fore.any() else None,
        "foreground_voxels": int(fore.sum()),
        "peak": peak,
        "threshold": threshold,
    }
