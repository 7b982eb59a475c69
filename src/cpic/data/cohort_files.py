"""Write a cohort (procedural or any sources) to disk as volume files plus a CSV manifest."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cpic.sources import VolumeSource
from cpic.util import atomic_path

FORMATS = ("npy", "nii.gz")


def _write_npy(source: VolumeSource, path: Path) -> None:
    """Every voxel, one plane of the first axis at a time, into a memory-mapped ``.npy``."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=source.shape)
    for i in range(source.shape[0]):
        out[i] = source.read_planes(i, i + 1)[0].numpy()
    out.flush()
    del out


def _write_nifti(source: VolumeSource, path: Path) -> None:
    import nibabel

    scratch = path.with_name(path.name + ".npy")
    try:
        _write_npy(source, scratch)
        nibabel.save(source.spatial.nifti_image(np.load(scratch, mmap_mode="r")), path)
    finally:
        scratch.unlink(missing_ok=True)


def write_cohort(
    sources: Sequence[VolumeSource],
    labels: Mapping[str, Sequence],
    folder: str | os.PathLike[str],
    format: str = "npy",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write each source to ``folder/<name>.<format>`` and ``folder/manifest.csv`` with a
    ``path`` column and one column per entry of ``labels``; returns the manifest's path.

    Each file is written under a temporary name and renamed when complete, and the manifest is
    written last, so an interrupted run leaves no partial volume behind a listed name.
    ``progress`` (e.g. ``tqdm``) wraps the loop over the sources. NIfTI files carry each source's
    ``spatial`` frame (affine, transform codes, units). The
    manifest loads with :meth:`cpic.train.VolumeDataset.from_csv` (``target=`` one label column).

    Example:
        >>> import tempfile, torch, cpic
        >>> from cpic.data import shape_cohort
        >>> sources, labels = shape_cohort(2, side=8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     manifest = write_cohort(sources, {"label": labels}, tmp)
        ...     manifest.read_text().splitlines()
        ['path,label', 'sphere-0000.npy,0', 'cube-0001.npy,1']
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    columns = {
        name: list(values.tolist() if isinstance(values, torch.Tensor) else values)
        for name, values in labels.items()
    }
    for name, values in columns.items():
        if len(values) != len(sources):
            raise ValueError(f"label column {name!r} has {len(values)} values for {len(sources)} sources.")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError("the sources' names must be distinct: they become the file names.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = _write_npy if format == "npy" else _write_nifti
    files = []
    for source in progress(sources) if progress else sources:
        final = folder / f"{source.name}.{format}"
        with atomic_path(final) as partial:
            writer(source, partial)
        files.append(final.name)
    manifest = folder / "manifest.csv"
    with atomic_path(manifest) as partial, open(partial, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", *columns])
        for i, file in enumerate(files):
            out.writerow([file, *(columns[name][i] for name in columns)])
    return manifest
