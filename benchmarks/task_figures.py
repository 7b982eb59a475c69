"""Figures of benchmarks/tasks.py: the metric against voxels read, and where each method read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cpic.nn.baselines import DenseCNN


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def budget_figure(summary: list[dict], budgeted, volume: int, ylabel: str, title: str, path: Path) -> Path:
    """The metric (mean ± s.e. over cohorts) against voxels read per prediction: one curve per
    method in ``budgeted``, one point for a method that reads what it needs (cross) or
    everything (``volume`` voxels)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == method]
        rows = rows if method in budgeted else rows[:1]  # trained once: repeated per budget
        x = [100 * s["read"][0] / volume for s in rows]
        y = [s["metric"][0] for s in rows]
        xerr = [100 * np.nan_to_num(s["read"][1]) / volume for s in rows]
        yerr = [np.nan_to_num(s["metric"][1]) for s in rows]
        style = "o-" if method in budgeted else "s"
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt=style, capsize=3, label=method)
    ax.set(
        xscale="log",
        xlabel="% of the volume's voxels read per prediction",
        ylabel=ylabel,
        title=title,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slice_through_lesion(source) -> int:
    """The axial (last-axis) index of the grid voxel nearest the centre of the volume's largest
    lesion (the middle of the volume without lesions)."""
    side = source.shape[-1]
    lesions = getattr(getattr(source, "function", None), "lesions", None)
    if not lesions:
        return side // 2
    f = source.function
    lesion = max(lesions, key=lambda le: math.prod(le.radii))
    step = max(side // 64, 1)
    grid = torch.cartesian_prod(*(torch.arange(0, n, step) for n in source.shape))
    nearest = ((f.to_anatomy(grid) - torch.tensor(lesion.centre)) ** 2).sum(1).argmin()
    return int(grid[nearest, -1])


def reads_figure(shown: dict, predict, half: int, path: Path) -> Path:
    """The central axial slice through a lesion of a validation volume, and per method the voxels
    one prediction (``predict(model, sources, batch)``) read within ``half`` slices of it, drawn
    as a mask: ``shown`` maps each method to ``(trained model, validation sources)``."""
    plt = _pyplot()
    first = next(iter(shown.values()))[1]
    source = next((s for s in first if getattr(s.function, "lesions", None)), first[0])
    shape = source.shape
    z = _slice_through_lesion(source)
    plane = torch.cartesian_prod(torch.arange(shape[0]), torch.arange(shape[1]))
    coords = torch.cat([plane, torch.full((len(plane), 1), z)], 1)
    image = source.read(coords).reshape(shape[0], shape[1]).numpy()
    lesions = None
    if getattr(source.function, "lesions", None):
        f = source.function
        lesions = (f(coords) - f(coords, with_lesions=False)).reshape(shape[0], shape[1]).numpy()
    cols = min(len(shown), 4)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, (method, (model, _)) in zip(axes.flat, shown.items()):
        mask = np.zeros(shape[:2], bool)
        if method == "dense-max":  # every voxel, whatever the slab
            mask[:] = True
            read = math.prod(shape)
        else:
            source.stats.reset()
            if isinstance(model, DenseCNN):
                model.views.pop(source.name, None)
            predict(model, [source], 1)
            ids = np.asarray(source.stats.voxel_ids())
            read = len(ids)
            x, y, k = np.unravel_index(ids, shape)
            near = np.abs(k - z) <= half
            mask[x[near], y[near]] = True
        ax.imshow(image.T, cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_where(~mask.T, mask.T), cmap="autumn", alpha=0.6, origin="lower")
        if lesions is not None:
            ax.contour(lesions.T, levels=[0.15], colors="cyan", linewidths=0.8)
        ax.set_title(f"{method}: {read} voxels read", fontsize=9)
        ax.axis("off")
    fig.suptitle(
        f"{source.name}, axial slice {z} (lesion outlined in cyan); in colour: voxels read within "
        f"±{half} slices, one prediction",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
