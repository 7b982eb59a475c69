"""A ModelNet10-like cohort: ten classes of upright 3-D shapes as soft voxel occupancy, any size.

Each shape is a signed distance function (SDF) in a canonical frame that fits the cylinder
``x^2 + y^2 <= 1, |z| <= 1``. A random pose (rotation about the vertical z axis only, scale,
mild anisotropic stretch, small translation) maps it into the grid's ``[-1, 1]^3`` unit cube, and
the occupancy is ``sigmoid(-distance / 0.75 voxel)``, so edges are equally smooth at every side.
The pose is drawn in unit coordinates, hence the same seed gives the same shape at every side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cpic.sources import ProceduralSource
from cpic.util.checks import check_int

SHAPE_CLASSES: tuple[str, ...] = (
    "sphere",
    "cube",
    "cylinder",
    "cone",
    "torus",
    "pyramid",
    "capsule",
    "open_box",
    "cross",
    "table",
)

#: width of the soft edge, in voxels: the occupancy goes from 0.21 to 0.79 over two widths
EDGE_VOXELS = 0.75
SPAN_RANGE = (0.45, 0.85)
STRETCH = 0.15
MAX_SHIFT = 0.1
MIN_SIDE = 8


# ------------------------------------------------------------------ SDF primitives
def _box(p: Tensor, half: tuple[float, float, float]) -> Tensor:
    """Exact SDF of the axis-aligned box ``|p_i| <= half_i``."""
    q = p.abs() - torch.tensor(half, dtype=p.dtype)
    outside = q.clamp_min(0).norm(dim=-1)
    inside = q.amax(dim=-1).clamp_max(0)
    return outside + inside


def _vertical_cylinder(p: Tensor, radius: float, half_height: float) -> Tensor:
    """Exact SDF of the cylinder about the z axis, ``r <= radius, |z| <= half_height``."""
    q = torch.stack([p[:, :2].norm(dim=-1) - radius, p[:, 2].abs() - half_height], -1)
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)


def _segment(p: Tensor, start: tuple[float, ...], end: tuple[float, ...], radius: float) -> Tensor:
    """Exact SDF of a capsule: points within ``radius`` of the segment ``start``-``end``."""
    a = torch.tensor(start, dtype=p.dtype)
    ab = torch.tensor(end, dtype=p.dtype) - a
    t = ((p - a) @ ab / ab.dot(ab)).clamp(0, 1)
    return (p - a - t[:, None] * ab).norm(dim=-1) - radius


def _apex_up(horizontal: Tensor, z: Tensor, base: float, bottom: float, top: float) -> Tensor:
    """SDF-like distance of a solid narrowing linearly from half-width ``base`` at z = ``bottom``
    to a point at z = ``top``, where ``horizontal`` is the radius (cone) or the max-norm (pyramid).

    The maximum of the face distances is exact inside and on the surface, slightly short near
    edges outside: a sharp corner, as a voxelised solid has.
    """
    height = top - bottom
    slope = math.hypot(height, base)
    side = (horizontal * height + (z - top) * base) / slope
    return torch.maximum(side, bottom - z)


# ------------------------------------------------------------------ the ten classes
def _sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - 1.0


def _cube(p: Tensor) -> Tensor:
    return _box(p, (0.7, 0.7, 0.7))


def _cylinder(p: Tensor) -> Tensor:
    # tall column: its aspect tells it from the cube and the squat open box
    return _vertical_cylinder(p, 0.55, 1.0)


def _cone(p: Tensor) -> Tensor:
    return _apex_up(p[:, :2].norm(dim=-1), p[:, 2], base=1.0, bottom=-1.0, top=1.0)


def _torus(p: Tensor) -> Tensor:
    ring = p[:, :2].norm(dim=-1) - 0.7
    return torch.stack([ring, p[:, 2]], -1).norm(dim=-1) - 0.3


def _pyramid(p: Tensor) -> Tensor:
    # square base whose corners touch the unit circle; squatter than the cone
    return _apex_up(p[:, :2].abs().amax(dim=-1), p[:, 2], base=0.7, bottom=-0.7, top=0.5)


def _capsule(p: Tensor) -> Tensor:
    # lying down, so the z rotation sweeps its long axis round the horizontal plane
    return _segment(p, (-0.6, 0.0, 0.0), (0.6, 0.0, 0.0), 0.4)


def _open_box(p: Tensor) -> Tensor:
    # a bathtub-like bin: walls and floor 0.22 thick; the hollow pokes out through the top
    outer = (0.8, 0.55, 0.45)
    wall = 0.22
    hollow = _box(p - torch.tensor([0.0, 0.0, wall]), (outer[0] - wall, outer[1] - wall, outer[2]))
    return torch.maximum(_box(p, outer), -hollow)


def _cross(p: Tensor) -> Tensor:
    bars = [_box(p, half) for half in ((0.95, 0.2, 0.2), (0.2, 0.95, 0.2), (0.2, 0.2, 0.95))]
    return torch.stack(bars, -1).amin(dim=-1)


def _table(p: Tensor) -> Tensor:
    top = _box(p - torch.tensor([0.0, 0.0, 0.8]), (0.7, 0.7, 0.15))
    # the four legs by symmetry: fold every quadrant onto the leg at (+0.53, +0.53)
    folded = torch.stack([p[:, 0].abs() - 0.53, p[:, 1].abs() - 0.53, p[:, 2] + 0.1], -1)
    legs = _vertical_cylinder(folded, 0.14, 0.8)
    return torch.minimum(top, legs)


_SDF: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": _sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": _pyramid,
    "capsule": _capsule,
    "open_box": _open_box,
    "cross": _cross,
    "table": _table,
}


# ------------------------------------------------------------------ pose and sources
@dataclass(frozen=True)
class _Pose:
    """Canonical frame -> unit cube: ``x = shift + R_z(angle) @ (span * stretch * p)``."""

    angle: float
    span: float
    stretch: tuple[float, float, float]
    shift: tuple[float, float, float]

    @classmethod
    def draw(cls, gen: torch.Generator) -> _Pose:
        u = torch.rand(8, generator=gen, dtype=torch.float64).tolist()
        angle = 2 * math.pi * u[0]
        span = SPAN_RANGE[0] + (SPAN_RANGE[1] - SPAN_RANGE[0]) * u[1]
        stretch = tuple(1 + STRETCH * (2 * v - 1) for v in u[2:5])
        # the shape's bounding cylinder stays inside the grid: shift only into the margin left
        margins = [1 - span * max(stretch[:2]), 1 - span * max(stretch[:2]), 1 - span * stretch[2]]
        shift = tuple(min(MAX_SHIFT, m) * (2 * v - 1) for m, v in zip(margins, u[5:8]))
        return cls(angle, span, stretch, shift)

    def to_canonical(self, x: Tensor) -> Tensor:
        """Unit-cube points ``[K, 3]`` -> canonical frame (the inverse pose)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        d = x - torch.tensor(self.shift, dtype=x.dtype)
        # R_z(-angle) applied to row vectors
        rotated = torch.stack([cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1], d[:, 2]], -1)
        return rotated / (self.span * torch.tensor(self.stretch, dtype=x.dtype))

    @property
    def distance_scale(self) -> float:
        """Canonical distances -> unit-cube distances; the smallest stretch keeps it a lower bound."""
        return self.span * min(self.stretch)


def _check_kind(kind: str) -> None:
    if kind not in _SDF:
        raise ValueError(f"unknown shape kind {kind!r}; valid kinds are {', '.join(SHAPE_CLASSES)}.")


def _occupancy(kind: str, side: int, pose: _Pose) -> Callable[[Tensor], Tensor]:
    """``coords: LongTensor[K, 3] -> float32 [K]`` soft occupancy of the posed shape."""
    sdf = _SDF[kind]
    half_extent = (side - 1) / 2  # voxels per unit-cube unit
    to_voxels = pose.distance_scale * half_extent

    def occupancy(coords: Tensor) -> Tensor:
        x = (coords.to(torch.float32) - half_extent) / half_extent
        distance = sdf(pose.to_canonical(x)) * to_voxels
        return torch.sigmoid(-distance / EDGE_VOXELS)

    return occupancy


def _item_seed(seed: int, index: int) -> int:
    """One generator seed per (cohort seed, item index), so an item does not depend on the count."""
    return (seed * 1_000_003 + index) % 2**63


def shape_source(kind: str, side: int = 64, seed: int = 0) -> ProceduralSource:
    """One shape of class ``kind`` (see ``SHAPE_CLASSES``) on a ``side^3`` grid, posed by ``seed``.

    Values are soft occupancy in ``[0, 1]`` (float32), computed from the coordinates read: nothing
    is stored. The pose (rotation about z, scale to 45-85% of the grid, +-15% stretch, small
    shift) depends on ``seed`` only, so one seed gives the same shape at every ``side``.

    Example:
        >>> import torch
        >>> src = shape_source("cube", side=16, seed=3)
        >>> src.shape, src.name
        ((16, 16, 16), 'cube')
        >>> centre, corner = src.read(torch.tensor([[8, 8, 8], [0, 0, 0]])).tolist()
        >>> centre > 0.9, corner < 0.01
        (True, True)
    """
    _check_kind(kind)
    check_int("side", side, MIN_SIDE)
    side = int(side)
    pose = _Pose.draw(torch.Generator().manual_seed(seed % 2**63))
    return ProceduralSource(_occupancy(kind, side, pose), (side,) * 3, name=kind)


def shape_cohort(count: int, side: int = 64, seed: int = 0) -> tuple[list[ProceduralSource], Tensor]:
    """``count`` shapes with balanced classes (item ``i`` has class ``i % 10``) and their labels.

    Labels are indices into ``SHAPE_CLASSES`` (LongTensor ``[count]``). Item ``i`` is posed by
    a seed made of ``(seed, i)``, so the first items of a cohort do not depend on ``count``.

    Example:
        >>> sources, labels = shape_cohort(12, side=16)
        >>> [s.name for s in sources[:3]], labels.tolist()
        (['sphere-0000', 'cube-0001', 'cylinder-0002'], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    labels = torch.arange(count, dtype=torch.long) % len(SHAPE_CLASSES)
    sources = []
    for index, label in enumerate(labels.tolist()):
        kind = SHAPE_CLASSES[label]
        source = shape_source(kind, side, _item_seed(seed, index))
        source.name = f"{kind}-{index:04d}"
        sources.append(source)
    return sources, labels
