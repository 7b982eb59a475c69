"""Multi-level volumes (image pyramids): a base grid and coarser copies of it, each read on demand.

Three layouts open as one source, the base level, whose :attr:`~VolumeSource.levels` are the
others (finest first):

- OME-Zarr: a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4 ``.zattrs``, or
  0.5 ``zarr.json`` attributes ``ome.multiscales``); its first multiscale's ``datasets`` are
  the levels, the first the base;
- a Zarr group of arrays named ``0``, ``1``, ``2``, ... (``0`` the base);
- an HDF5 group (``file.h5:/group``) of datasets named ``0``, ``1``, ``2``, ... (``0`` the base).

Each level must be the base divided, rounding down or up, by an integer factor per axis
(:func:`level_factors`); any other is refused when the volume is opened.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cpic.sources.base import SourceError, VolumeSource
from cpic.util.guard import check_path


def level_factors(
    name: str, base: Sequence[int], shapes: Sequence[Sequence[int]], labels: Sequence[str]
) -> list[tuple[int, ...]]:
    """The integer downsampling factor per axis of each level ``shapes`` (finest first) of a
    grid ``base``: per axis, the previous level's factor times the smallest integer by which
    the previous level's length divides (rounding down or up) to this one's. A level whose
    length is not ``base`` divided by its factor, rounded down or up, is refused, naming
    ``labels``' entry and both shapes.

    Example:
        >>> level_factors("v", (10, 10, 7), [(5, 5, 7), (3, 2, 7)], ["1", "2"])
        [(2, 2, 1), (4, 4, 1)]
        >>> try:
        ...     level_factors("v", (10, 10, 7), [(7, 5, 7)], ["v/1"])
        ... except SourceError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        v/1: a level of shape (7, 5, 7) is not the base shape (10, 10, 7) divided by an integer ...
    """
    base = tuple(int(n) for n in base)
    previous, factors, out = base, (1,) * len(base), []
    for label, shape in zip(labels, shapes):
        shape = tuple(int(n) for n in shape)
        step = [_step(p, m) for p, m in zip(previous, shape)] if len(shape) == len(base) else [None]
        if None in step:
            raise SourceError(
                f"{label}: a level of shape {shape} is not the base shape {base} divided by an "
                f"integer factor per axis (rounding down or up)."
            )
        factors = tuple(f * s for f, s in zip(factors, step))
        if any(m not in (n // f, -(-n // f)) for n, m, f in zip(base, shape, factors)):
            raise SourceError(
                f"{label}: a level of shape {shape} is not the base shape {base} divided by an "
                f"integer factor per axis (rounding down or up): its factors {factors} from the "
                f"levels before it give {tuple(-(-n // f) for n, f in zip(base, factors))}."
            )
        previous = shape
        out.append(factors)
    return out


def _step(n: int, m: int) -> int | None:
    """The smallest integer ``g >= 1`` with ``n // g == m`` or ``ceil(n / g) == m``, or None."""
    if not 1 <= m <= n:
        return None
    down, up = n // (m + 1) + 1, -(-n // m)  # the smallest candidate of each rounding
    fits = [g for g, ok in ((down, n // down == m), (up, -(-n // up) == m)) if ok]
    return min(fits) if fits else None


# ---------------------------------------------------------------------- Zarr groups
def zarr_level_paths(location: str) -> list[str] | None:
    """The locations of the levels (base first) of the Zarr group at ``location``: an
    OME-Zarr multiscale's datasets, or arrays named ``0``, ``1``, ...; None when ``location``
    is not a group (an array, or nothing tensorstore can list).

    Example:
        >>> import json, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / ".zgroup").write_text('{"zarr_format": 2}')
        >>> attrs = {"multiscales": [{"version": "0.4", "datasets": [{"path": "s0"}, {"path": "s1"}]}]}
        >>> _ = (root / ".zattrs").write_text(json.dumps(attrs))
        >>> [pathlib.Path(p).name for p in zarr_level_paths(str(root))]
        ['s0', 's1']
    """
    read = _metadata_reader(location)
    v3 = read("zarr.json")
    if v3 is not None:
        if v3.get("node_type") != "group":
            return None
        attributes = v3.get("attributes") or {}
        attributes = attributes.get("ome", attributes)
    elif read(".zgroup") is not None:
        attributes = read(".zattrs") or {}
    else:
        return None
    multiscales = attributes.get("multiscales")
    if multiscales:
        try:
            paths = [str(d["path"]) for d in multiscales[0]["datasets"]]
        except (KeyError, IndexError, TypeError):
            raise SourceError(
                f"{location}: its 'multiscales' attribute lists no datasets with a 'path' (OME-Zarr)."
            ) from None
    else:
        paths = _numbered(lambda k: read(f"{k}/zarr.json") or read(f"{k}/.zarray"))
    if not paths:
        raise SourceError(
            f"{location}: a Zarr group with no 'multiscales' attribute and no array named 0; "
            f"expected an array, an OME-Zarr image or a group of levels 0, 1, ..."
        )
    return [location.rstrip("/") + "/" + p.strip("/") for p in paths]


def _metadata_reader(location: str):
    """A function reading a JSON file of the store at ``location`` (None when missing)."""
    import tensorstore as ts

    spec = location if "://" in location else {"driver": "file", "path": str(Path(location).resolve()) + "/"}
    try:
        kvstore = ts.KvStore.open(spec if isinstance(spec, dict) else spec.rstrip("/") + "/").result()
    except (ValueError, RuntimeError) as err:
        raise SourceError(f"{location}: not a readable Zarr store ({err}).") from None

    def read(key: str) -> dict | None:
        local = None if "://" in location else Path(location) / key
        if local is not None and (local.exists() or local.is_symlink()):
            check_path(local, "Zarr metadata file", error=SourceError)  # never block on a FIFO
        try:
            found = kvstore.read(key).result()
        except (ValueError, RuntimeError) as err:
            raise SourceError(f"{location}: reading {key} failed ({err}).") from None
        if found.state != "value":
            return None
        try:
            value = json.loads(bytes(found.value))
        except (ValueError, UnicodeDecodeError) as err:
            raise SourceError(f"{location}: {key} is not JSON ({err}).") from None
        if not isinstance(value, dict):
            raise SourceError(f"{location}: {key} holds {type(value).__name__}, not a JSON object.")
        return value

    return read


def _numbered(exists) -> list[str]:
    """``["0", "1", ...]`` as long as ``exists(name)`` is true."""
    names = []
    while exists(str(len(names))):
        names.append(str(len(names)))
    return names


# ---------------------------------------------------------------------- HDF5 groups
def hdf5_level_names(path: Path, group: str | None) -> list[str] | None:
    """The datasets ``group/0``, ``group/1``, ... of the HDF5 file ``path`` when ``group``
    names a group (base first), else None (a dataset, or no name).

    Example:
        >>> import h5py, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "p.h5")
        >>> with h5py.File(path, "w") as fh:
        ...     _ = fh.create_dataset("img/0", data=np.zeros((4, 4)))
        ...     _ = fh.create_dataset("img/1", data=np.zeros((2, 2)))
        >>> hdf5_level_names(Path(path), "/img")
        ['/img/0', '/img/1']
    """
    if group is None:
        return None
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            node = fh.get(group, getlink=True)
            if not isinstance(node, (h5py.HardLink, h5py.SoftLink)) or not isinstance(fh[group], h5py.Group):
                return None  # a dataset, a missing name, or an external link: HDF5Source says which
            members = fh[group]
            names = _numbered(lambda k: isinstance(members.get(k), h5py.Dataset))
    except (ImportError, OSError):
        return None  # HDF5Source gives the error that names what is missing or unreadable
    if not names:
        raise SourceError(
            f"{path}:{group}: is a group with no dataset named 0; name a dataset, or hold levels 0, 1, ..."
        )
    return [group.rstrip("/") + "/" + n for n in names]


def with_levels(name: str, sources: Sequence[VolumeSource]) -> VolumeSource:
    """``sources[0]``, named ``name``, with the others as its :attr:`~VolumeSource.levels`.

    Example:
        >>> import numpy as np
        >>> from cpic.sources import ArraySource
        >>> src = with_levels("scan.zarr", [ArraySource(np.zeros((8, 6))), ArraySource(np.zeros((4, 3)))])
        >>> src.name, [level.factors for level in src.levels]
        ('scan.zarr', [(2, 2)])
    """
    base = sources[0]
    base.name = name
    base.add_levels(sources[1:])
    return base
