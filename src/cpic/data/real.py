"""Real volumes that ship inside registry packages (see docs/data.md), opened as sources.

Nothing is downloaded: each loader finds its package's file or says what to install.
"""

from __future__ import annotations

import importlib.util
import os
import plistlib
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from cpic.sources import SourceError, SpatialInfo, VolumeSource, open_volume

MRICRON = Path("/usr/share/mricron/templates")
INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")

_COLIN = {
    "t1": "ch2better.nii.gz",  # 0.5 mm T1, 301 x 370 x 316
    "t1_1mm": "ch2.nii.gz",  # 1 mm T1, 181 x 217 x 181
    "brain": "ch2bet.nii.gz",  # skull-stripped 1 mm T1
    "aal": "aal.nii.gz",  # 116 AAL regions on the 1 mm grid
    "brodmann": "brodmann.nii.gz",  # Brodmann areas on the 1 mm grid
}
_MNI = {"t1": "t1", "gm": "gm", "wm": "wm"}


class DataUnavailable(SourceError):
    """A built-in real volume's package is not installed."""


def _cache_dir() -> Path:
    return Path(os.environ.get("CPIC_CACHE", Path.home() / ".cache" / "cpic"))


def _wheel_file(package: str, relative: str, what: str) -> Path:
    """A data file inside an installed package, or a DataUnavailable naming the install."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataUnavailable(
            f"{what} ships with {package}: install it with `pip install --no-deps {package}`."
        )
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise DataUnavailable(f"{path} is missing from the installed {package}.")
    return path


def colin27(kind: str = "t1", normalize="range") -> VolumeSource:
    """The Colin27 brain (Debian ``mricron-data``): ``kind`` one of t1, t1_1mm, brain, aal, brodmann.

    Example:
        >>> from cpic.data import colin27
        >>> colin27("t1_1mm").shape   # doctest: +SKIP
        (181, 217, 181)
    """
    if kind not in _COLIN:
        raise ValueError(f"kind must be one of {sorted(_COLIN)}, got {kind!r}.")
    path = MRICRON / _COLIN[kind]
    if not path.exists():
        raise DataUnavailable(f"{path} is missing: install it with `apt-get install mricron-data`.")
    return open_volume(path, normalize=None if kind in ("aal", "brodmann") else normalize)


def mni152(kind: str = "t1", normalize="range") -> VolumeSource:
    """The MNI152 2009a template from the ``nilearn`` wheel: ``kind`` t1, gm or wm (197 x 233 x 189).

    Example:
        >>> from cpic.data import mni152
        >>> mni152("gm").shape   # doctest: +SKIP
        (197, 233, 189)
    """
    if kind not in _MNI:
        raise ValueError(f"kind must be one of {sorted(_MNI)}, got {kind!r}.")
    name = f"datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    path = _wheel_file("nilearn", name, "MNI152")
    return open_volume(path, normalize=normalize)


def mean_head(normalize="percentile") -> VolumeSource:
    """The mean T1 head of the ``pydeface`` wheel (176 x 256 x 256 int16).

    Example:
        >>> from cpic.data import mean_head
        >>> mean_head().normalization.method   # doctest: +SKIP
        'percentile'
    """
    path = _wheel_file("pydeface", "data/mean_reg2mean.nii.gz", "the mean head")
    return open_volume(path, normalize=normalize)


def head_ct(normalize=(-1024.0, 2048.0)) -> VolumeSource:
    """The InVesalius head CT (Debian ``invesalius-examples``): 108 x 256 x 256 int16 HU, (z, y, x).

    The ``.inv3`` archive's ``matrix.dat`` is extracted once into ``$CPIC_CACHE`` (default
    ``~/.cache/cpic``) and memory-mapped from there.

    Example:
        >>> import torch
        >>> from cpic.data import head_ct
        >>> ct = head_ct()                                         # doctest: +SKIP
        >>> ct.read(torch.tensor([[54, 128, 128]]), normalize=False)   # doctest: +SKIP
        tensor([...])
    """
    if not INVESALIUS.exists():
        raise DataUnavailable(
            f"{INVESALIUS} is missing: install it with `apt-get install invesalius-examples`."
        )
    target = _cache_dir() / "invesalius-cranium"
    matrix, meta = target / "matrix.dat", target / "main.plist"
    if not (matrix.exists() and meta.exists()):
        _extract_inv3(INVESALIUS, target)
    info = plistlib.loads(meta.read_bytes())
    shape = tuple(int(n) for n in info["matrix"]["shape"])
    spacing = tuple(float(s) for s in info.get("spacing", (1.0, 1.0, 1.0)))[::-1]  # (x, y, z) -> (z, y, x)
    source = open_volume(
        matrix,
        format="raw",
        shape=shape,
        dtype=np.dtype(info["matrix"]["dtype"]).newbyteorder("<"),
        spacing=spacing,
        normalize=normalize,
    )
    # world x, y, z run along the matrix's axes 2, 1, 0 (their directions' signs are not recorded)
    source.spatial = SpatialInfo(np.diag([*spacing, 1.0])[[2, 1, 0, 3]], xyz_units="mm")
    return source


def _extract_inv3(archive: Path, target: Path) -> None:
    """Extract ``main.plist`` and ``matrix.dat`` atomically (a temporary folder, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in ("main.plist", "matrix.dat") and member.isfile():
                source = tar.extractfile(member)
                (Path(tmp) / name).write_bytes(source.read())
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for name in ("main.plist", "matrix.dat"):
            (Path(tmp) / name).rename(staged / name)
        try:
            staged.rename(target)
        except OSError:  # another process got there first
            if not target.exists():
                raise
