"""Where a grid sits in the world: a voxel-to-world affine and the NIfTI header codes and units.

Affines map voxel indices in cpic's axis order (the order of ``VolumeSource.shape``) to world
coordinates ``(x, y, z)``. For a NIfTI source the two orders agree (cpic reads a NIfTI's axes
as they are stored, ``i, j, k``), so a NIfTI's own affine is used unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: NIfTI ``qform_code``/``sform_code`` values: unknown, scanner, aligned, Talairach, MNI
XFORM_CODES = range(5)
#: the spatial and temporal units a NIfTI header can name
XYZ_UNITS = ("unknown", "meter", "mm", "micron")
T_UNITS = ("unknown", "sec", "msec", "usec", "hz", "ppm", "rads")


def _matrix(name: str, value) -> tuple[tuple[float, ...], ...]:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 4x4 matrix of numbers, got {value!r}.") from None
    if array.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return tuple(tuple(float(v) for v in row) for row in array)


@dataclass(frozen=True)
class SpatialInfo:
    """A 3-D grid's voxel-to-world ``affine`` (4x4), its NIfTI ``qform_code``/``sform_code``
    (see ``XFORM_CODES``), spatial and temporal units, and the qform's own affine when it
    differs from ``affine`` (the sform's, or the qform's when there is no sform).

    Example:
        >>> info = SpatialInfo.from_spacing((2.0, 2.0, 3.0))
        >>> info.spacing, info.sform_code
        ((2.0, 2.0, 3.0), 2)
        >>> info.resampled(step=(2, 2, 2), start=(0.5, 0.5, 0.5)).world((0, 0, 0))
        (1.0, 1.0, 1.5)
    """

    affine: tuple[tuple[float, ...], ...]
    qform_code: int = 0
    sform_code: int = 2
    xyz_units: str = "unknown"
    t_units: str = "unknown"
    qform: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "affine", _matrix("affine", self.affine))
        if self.qform is not None:
            object.__setattr__(self, "qform", _matrix("qform", self.qform))
        for name in ("qform_code", "sform_code"):
            code = getattr(self, name)
            if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or code not in XFORM_CODES:
                raise ValueError(f"{name} must be a NIfTI transform code 0..4, got {code!r}.")
            object.__setattr__(self, name, int(code))
        for name, allowed in (("xyz_units", XYZ_UNITS), ("t_units", T_UNITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")

    @classmethod
    def from_spacing(cls, spacing: Sequence[float]) -> SpatialInfo:
        """Axis-aligned voxels of ``spacing`` (1 to 3 values; missing axes 1), the first voxel
        at the origin: what a grid without a world frame is given (nibabel's default codes).

        Example:
            >>> SpatialInfo.from_spacing((0.5, 0.5)).affine[1]
            (0.0, 0.5, 0.0, 0.0)
        """
        diagonal = [float(s) for s in spacing] + [1.0] * (3 - len(spacing))
        return cls(np.diag([*diagonal, 1.0]))

    @classmethod
    def from_nifti(cls, header) -> SpatialInfo:
        """The frame of a nibabel NIfTI header: its best affine, codes, units and qform.

        Example:
            >>> import nibabel, numpy as np
            >>> header = nibabel.Nifti1Header()
            >>> header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=4)
            >>> SpatialInfo.from_nifti(header).sform_code
            4
        """
        affine = header.get_best_affine()
        qform_code = int(header["qform_code"])
        qform = header.get_qform() if qform_code > 0 else None
        if qform is not None and np.allclose(qform, affine, atol=1e-6):
            qform = None
        xyz, t = header.get_xyzt_units()
        return cls(affine, qform_code, int(header["sform_code"]), xyz, t, qform)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel sizes: the lengths of the affine's first three columns.

        Example:
            >>> SpatialInfo([[0, 0, 3, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]).spacing
            (1.0, 2.0, 3.0)
        """
        return tuple(float(v) for v in np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0))

    def world(self, voxel: Sequence[float]) -> tuple[float, float, float]:
        """World coordinates of the (possibly fractional) voxel index ``voxel``.

        Example:
            >>> SpatialInfo.from_spacing((2.0, 2.0, 2.0)).world((1, 0.5, 0))
            (2.0, 1.0, 0.0)
        """
        padded = [*map(float, voxel), *[0.0] * (3 - len(voxel))]
        return tuple(float(v) for v in (np.asarray(self.affine) @ [*padded, 1.0])[:3])

    def resampled(self, step: Sequence[float], start: Sequence[float]) -> SpatialInfo:
        """The frame of a grid whose voxel ``v`` lies at this grid's voxel ``start + step * v``
        (per axis): a crop (``step`` 1), or a resampling of the same field of view.

        Example:
            >>> SpatialInfo.from_spacing((1.0, 1.0, 1.0)).resampled((1, 1, 1), (0, 5, 8)).affine[2]
            (0.0, 0.0, 1.0, 8.0)
        """
        to_source = np.diag([*map(float, step), 1.0])
        to_source[:3, 3] = [float(s) for s in start]

        def mapped(matrix):
            return None if matrix is None else np.asarray(matrix) @ to_source

        codes = (self.qform_code, self.sform_code, self.xyz_units, self.t_units)
        return SpatialInfo(mapped(self.affine), *codes, mapped(self.qform))

    def with_spacing(self, spacing: Sequence[float]) -> SpatialInfo:
        """The same frame (origin, directions) with voxels of ``spacing`` instead.

        Example:
            >>> SpatialInfo.from_spacing((1.0, 1.0, 1.0)).with_spacing((0.5, 0.5, 2.0)).spacing
            (0.5, 0.5, 2.0)
        """
        current = self.spacing
        ratios = [float(s) / c if c > 0 else float(s) for s, c in zip(spacing, current)]
        return self.resampled(ratios + [1.0] * (3 - len(ratios)), (0.0, 0.0, 0.0))

    def to_dict(self) -> dict:
        """JSON-ready fields; :meth:`from_dict` reads them back.

        Example:
            >>> info = SpatialInfo.from_spacing((1.0, 2.0, 3.0))
            >>> SpatialInfo.from_dict(info.to_dict()) == info
            True
        """
        return {
            "affine": [list(row) for row in self.affine],
            "qform_code": self.qform_code,
            "sform_code": self.sform_code,
            "xyz_units": self.xyz_units,
            "t_units": self.t_units,
            "qform": None if self.qform is None else [list(row) for row in self.qform],
        }

    @classmethod
    def from_dict(cls, fields: dict) -> SpatialInfo:
        """The record :meth:`to_dict` wrote; a ValueError naming what is wrong otherwise.

        Example:
            >>> import numpy as np
            >>> SpatialInfo.from_dict({"affine": np.eye(4).tolist(), "sform_code": 4}).sform_code
            4
        """
        if not isinstance(fields, dict) or "affine" not in fields:
            raise ValueError(f"a spatial record needs an 'affine', got {fields!r}.")
        known = {"affine", "qform_code", "sform_code", "xyz_units", "t_units", "qform"}
        return cls(**{k: v for k, v in fields.items() if k in known})

    def nifti_image(self, array):
        """A ``nibabel.Nifti1Image`` of the 3-D ``array`` (in cpic's axis order) in this frame:
        sform and qform with their codes, units and voxel sizes as recorded.

        Example:
            >>> import numpy as np
            >>> info = SpatialInfo(np.diag([2.0, 2.0, 2.0, 1.0]), qform_code=0, sform_code=4)
            >>> image = info.nifti_image(np.zeros((2, 3, 4), np.float32))
            >>> int(image.header["sform_code"]), image.header.get_zooms()
            (4, (np.float32(2.0), np.float32(2.0), np.float32(2.0)))
        """
        import nibabel

        image = nibabel.Nifti1Image(array, None)  # no affine: nibabel would reset codes 0 to 2
        header = image.header
        affine = np.asarray(self.affine)
        header.set_sform(affine, code=self.sform_code)
        header.set_qform(affine if self.qform is None else np.asarray(self.qform), code=self.qform_code)
        header.set_xyzt_units(self.xyz_units, self.t_units)
        return image
