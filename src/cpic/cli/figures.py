"""Figures of the command-line tools: slices with the voxels read, learning curves, sampling scale.

matplotlib is imported lazily, with the Agg backend (no display needed); every function takes
plain NumPy arrays or dicts and writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cpic.util import atomic_path, require

AXES = ("x", "y", "z")


def require_matplotlib():
    """matplotlib, or a :class:`cpic.util.MissingDependency` naming the extra that installs it:
    commands that draw call it before any work."""
    return require("matplotlib", "plot", "figures")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; a clear error when matplotlib is missing."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return str(path)


def slice_figure(image: np.ndarray, path: str | Path, title: str) -> str:
    """One 2-D image with a colour bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    shown = ax.imshow(np.asarray(image).T, origin="lower", cmap="gray")
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set(title=title, xticks=[], yticks=[])
    return _save(fig, path)


def orthogonal_slices(
    volumes: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str],
    read: Sequence[np.ndarray] | None = None,
    slab: int = 0,
    centres: Sequence[Sequence[int]] | None = None,
    evidence: Sequence[np.ndarray] | None = None,
) -> str:
    """Three orthogonal slices of each volume (one row per volume), through its centre or
    through ``centres[row]``.

    ``read`` (optional, per volume): voxel coordinates ``[K, 3]``; those within ``slab``
    voxels of a slice are drawn on it as red dots. ``evidence`` (optional, per volume): patch
    centres ``[E, 3]`` drawn as yellow circles where within ``slab`` of a slice.
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), squeeze=False)
    for row, volume in enumerate(volumes):
        volume = np.asarray(volume)
        for axis in range(3):
            centre = volume.shape[axis] // 2 if centres is None else int(centres[row][axis])
            ax = axes[row, axis]
            ax.imshow(np.take(volume, centre, axis=axis).T, origin="lower", cmap="gray")
            rest = [a for a in range(3) if a != axis]
            label = f"{AXES[axis]} = {centre}"
            if read is not None:
                coords = np.asarray(read[row]).reshape(-1, 3)
                near = coords[np.abs(coords[:, axis] - centre) <= slab]
                ax.scatter(
                    near[:, rest[0]], near[:, rest[1]], s=2, c="red", marker="s", linewidths=0, alpha=0.4
                )
                label += f" (±{slab}): {len(near)} read" if slab else f": {len(near)} read"
            if evidence is not None:
                coords = np.asarray(evidence[row]).reshape(-1, 3)
                near = coords[np.abs(coords[:, axis] - centre) <= slab]
                ax.scatter(near[:, rest[0]], near[:, rest[1]], s=30, facecolors="none", edgecolors="yellow")
            ax.set(xticks=[], yticks=[], xlabel=f"{AXES[rest[0]]}", ylabel=f"{AXES[rest[1]]}")
            ax.set_title(f"{titles[row] if axis == 1 else ''}\n{label}", fontsize=9)
    return _save(fig, path)


def learning_curve(rows: Sequence[dict], path: str | Path) -> str:
    """Train and validation loss, and validation accuracy, per epoch (``History.rows``)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", ms=3, label="train")
    if rows and "val_loss" in rows[0]:
        left.plot(epochs, [r["val_loss"] for r in rows], "o-", ms=3, label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    if rows and "val_accuracy" in rows[0]:
        right.plot(epochs, [r["val_accuracy"] for r in rows], "o-", ms=3, color="C2")
    right.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend()
    return _save(fig, path)


def sampling_scale(rows: Sequence[dict], path: str | Path, title: str) -> str:
    """Unique voxels read (linear axis) and the fraction of the grid read (log axis) against
    log2 of the grid's voxels; ``rows`` have ``voxels``, ``unique_voxels`` and ``fraction``."""
    plt = pyplot()
    x = [math.log2(r["voxels"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(x, [r["unique_voxels"] for r in rows], "o-")
    for xi, r in zip(x, rows):
        left.annotate(f"{r['side']}^3", (xi, r["unique_voxels"]), textcoords="offset points", xytext=(4, -10))
    left.set(xlabel="log2(voxels in the grid)", ylabel="unique voxels read", title=title)
    right.semilogy(x, [r["fraction"] for r in rows], "o-", color="C1")
    right.set(xlabel="log2(voxels in the grid)", ylabel="fraction of the grid read")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def reconstruction_slices(
    decoded: Sequence[np.ndarray],
    truth: Sequence[np.ndarray] | None,
    titles: Sequence[str],
    path: str | Path,
    title: str,
) -> str:
    """One row per slice: the reconstruction, and with ``truth`` the source and the difference
    (reconstruction - source, symmetric colour scale)."""
    plt = pyplot()
    columns = 1 if truth is None else 3
    size = (3.6 * columns, 3.3 * len(decoded))
    fig, axes = plt.subplots(len(decoded), columns, figsize=size, squeeze=False)
    for row, image in enumerate(decoded):
        panels = [(image, "reconstruction", "gray", None)]
        if truth is not None:
            diff = image - truth[row]
            limit = float(np.abs(diff).max()) or 1.0
            panels = [(truth[row], "source", "gray", None), panels[0], (diff, "error", "coolwarm", limit)]
        low, high = float(min(p[0].min() for p in panels[:2])), float(max(p[0].max() for p in panels[:2]))
        for ax, (data, name, cmap, limit) in zip(axes[row], panels):
            vmin, vmax = (-limit, limit) if limit is not None else (low, high)
            shown = ax.imshow(np.asarray(data).T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
            fig.colorbar(shown, ax=ax, shrink=0.8)
            ax.set(title=f"{name}, {titles[row]}", xticks=[], yticks=[])
    fig.suptitle(title)
    return _save(fig, path)
