"""Write a cohort (procedural or any sources) to disk as volume files plus a CSV manifest."""

from __future__ import annotations

import contextlib
import csv
import errno
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cpic.sources import VolumeSource
from cpic.util import atomic_path
from cpic.util.outputs import WriteFailed, check_writable, write_failure

FORMATS = ("npy", "nii.gz")


def _write_npy(source: VolumeSource, path: Path) -> None:
    """Every voxel, one plane of the first axis at a time, into a ``.npy``. The file's space is
    allocated first, and written with ``write``, not through a memory map: a full disk is then an
    ``OSError`` (ENOSPC) at once, where a map of a sparse file would die of SIGBUS."""
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(source.shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        size = fh.tell() + 4 * math.prod(source.shape)
        fh.flush()
        with contextlib.suppress(AttributeError):  # posix_fallocate: Linux and most Unix
            _allocate(fh.fileno(), size)
        for i in range(source.shape[0]):
            fh.write(source.read_planes(i, i + 1)[0].numpy().astype("<f4", copy=False).tobytes())


def _allocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``fd`` (an ``OSError`` if they are not free)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: write on
            return
        raise


def _write_nifti(source: VolumeSource, path: Path) -> None:
    import nibabel

    scratch = path.with_name(path.name + ".npy")
    try:
        _write_npy(source, scratch)
        nibabel.save(source.spatial.nifti_image(np.load(scratch, mmap_mode="r")), path)
    finally:
        scratch.unlink(missing_ok=True)


MANIFEST = "manifest.csv"


def check_cohort_folder(
    folder: str | os.PathLike[str], files: Sequence[str] = (), overwrite: bool = False
) -> Path:
    """``folder`` once a cohort may be written there: a writable folder (or a new one) that holds
    no ``manifest.csv`` and none of ``files``, unless ``overwrite``; else a ``ValueError`` naming
    what is in the way.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Path(d, "manifest.csv").write_text("path,label\\n")
        ...     try:
        ...         check_cohort_folder(d)
        ...     except ValueError as err:
        ...         print(str(err).endswith("choose an empty folder or pass --overwrite."))
        True
    """
    folder = check_writable(folder, "cohort folder", folder=True)[0]
    if overwrite:
        return folder
    taken = [name for name in (MANIFEST, *files) if (folder / name).exists()]
    if taken:
        shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise ValueError(
            f"{folder}: already holds {shown} (another cohort's files would be replaced); "
            "choose an empty folder or pass --overwrite."
        )
    return folder


def write_cohort(
    sources: Sequence[VolumeSource],
    labels: Mapping[str, Sequence],
    folder: str | os.PathLike[str],
    format: str = "npy",
    progress: Callable[[Iterable], Iterable] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write each source to ``folder/<name>.<format>`` and ``folder/manifest.csv`` with a
    ``path`` column and one column per entry of ``labels``; returns the manifest's path.

    Each file is written under a temporary name and renamed when complete, and the manifest is
    written last, so an interrupted run, or a full disk (:class:`cpic.util.outputs.WriteFailed`),
    leaves no partial volume behind a listed name. A folder that already holds a manifest or
    one of the volume files is refused unless ``overwrite`` (:func:`check_cohort_folder`).
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
    folder = check_cohort_folder(folder, [f"{name}.{format}" for name in names], overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    writer = _write_npy if format == "npy" else _write_nifti
    files = []
    manifest = folder / MANIFEST
    try:
        for source in progress(sources) if progress else sources:
            final = folder / f"{source.name}.{format}"
            with atomic_path(final) as partial:
                writer(source, partial)
            files.append(final.name)
        with atomic_path(manifest) as partial, open(partial, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["path", *columns])
            for i, file in enumerate(files):
                out.writerow([file, *(columns[name][i] for name in columns)])
    except OSError as err:
        done = f"; the {len(files)} volume(s) written before are complete, no manifest was written"
        raise WriteFailed(f"{folder}: {write_failure(err)}{done}.") from None
    return manifest
