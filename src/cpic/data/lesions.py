"""Lesion cohorts on real anatomy: a deformed, bias-corrupted, noisy real head with 0..k lesions.

Every volume is a :class:`~cpic.sources.ProceduralSource` on a ``side^3`` grid: a voxel's value
is computed from its coordinates when it is read (the real anatomy is resampled through a smooth
random deformation, ellipsoidal lesions are added in anatomy space so they deform with it, then a
multiplicative bias field and per-voxel noise from a hash of the voxel index). Nothing depends on
the order or number of reads, so a volume is identical however much of it a model looks at, and
the same seed gives the same volume at any ``side``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cpic.data.real import MRICRON, colin27, head_ct, mean_head, mni152
from cpic.sources import ProceduralSource, SpatialInfo
from cpic.util.checks import check_int

#: anatomies a cohort can be built on, and the loader of each (all from installed packages)
ANATOMIES = ("colin27", "mni152", "mean_head", "head_ct")
#: lesion radii in millimetres of the anatomy (uniform between the two; the default of ``radius``)
RADIUS_MM = (6.0, 12.0)
#: lesion contrast added to the normalised intensity (uniform between the two); calibrated so
#: that a detector that knows where to look (the largest deviation of a 64^3 view from the mean
#: head) separates lesion from lesion-free volumes with an ROC AUC of about 0.9 (0.6 at 0.3-0.7)
CONTRAST = (0.6, 1.0)
#: smooth deformation amplitude (anatomy voxels) and bias-field amplitude (log scale)
DEFORM_VOXELS, BIAS = 3.0, 0.15
#: standard deviation of the per-voxel Gaussian noise
NOISE = 0.03
#: lesion edge width in anatomy voxels
EDGE = 1.0
#: perilesional oedema, when asked for: a hypointense (T1) halo of the lesion's shape, this many
#: times its radii, with this contrast and a soft edge (this fraction of the halo's radius)
OEDEMA_SCALE, OEDEMA_CONTRAST, OEDEMA_EDGE = 2.5, -0.25, 0.15
#: voxels computed at once
CHUNK = 1 << 20


@dataclass(frozen=True)
class Lesion:
    """One ellipsoid in anatomy voxel coordinates: centre, radii (voxels), added contrast, region."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    contrast: float
    region: str

    def scaled_distance(self, p: Tensor) -> Tensor:
        """``[K]``: how far anatomy positions ``p [K, 3]`` lie from the centre in units of the
        radii (below 1: inside the ellipsoid).

        Example:
            >>> import torch
            >>> lesion = Lesion((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), 0.8, "x")
            >>> lesion.scaled_distance(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
            tensor([0.5000, 2.0000])
        """
        centre, radii = (torch.tensor(v, dtype=p.dtype) for v in (self.centre, self.radii))
        return ((p - centre) / radii).norm(dim=1)


@dataclass(frozen=True)
class _Anatomy:
    volume: Tensor  # [X, Y, Z] float32 in [0, 1]
    tissue: Tensor  # [N, 3] voxel coordinates where a lesion centre may go
    regions: Tensor | None  # [X, Y, Z] atlas labels, or None
    names: dict[int, str]
    spatial: SpatialInfo  # the anatomy's voxel-to-world frame


@functools.lru_cache(maxsize=4)
def _anatomy(name: str) -> _Anatomy:
    """The dense anatomy (loaded once per process), where lesions may sit, and its atlas."""
    loaders = {
        "colin27": lambda: colin27("t1_1mm"),
        "mni152": mni152,
        "mean_head": mean_head,
        "head_ct": head_ct,
    }
    if name not in loaders:
        raise ValueError(f"anatomy must be one of {', '.join(ANATOMIES)}, got {name!r}.")
    source = loaders[name]()
    volume = _dense(source).clamp(0, 1)
    regions, names = None, {}
    if name == "colin27":  # the AAL atlas shares Colin27's 1 mm grid
        brain = _dense(colin27("brain"))
        regions = _dense(colin27("aal")).round().to(torch.int16)
        names = _aal_names()
        allowed = (brain > 0.15) & (regions > 0)
    else:  # soft tissue: above a fifth of the intensity range, away from the border
        allowed = volume > 0.2
    tissue = _erode(allowed, 6).nonzero()
    if len(tissue) == 0:
        raise ValueError(f"{name}: found no tissue to place lesions in.")
    return _Anatomy(volume, tissue, regions, names, source.spatial)


def _dense(source) -> Tensor:
    return source.read_planes(0, source.shape[0]).float()


def _erode(mask: Tensor, radius: int) -> Tensor:
    """Voxels whose whole ``(2 radius + 1)^3`` neighbourhood is in ``mask``."""
    grown = (~mask).float()[None, None]
    for axis in range(3):  # a cube is separable: three 1-D max filters
        kernel = [1, 1, 1]
        kernel[axis] = 2 * radius + 1
        padding = [k // 2 for k in kernel]
        grown = torch.nn.functional.max_pool3d(grown, kernel, stride=1, padding=padding)
    return grown[0, 0] == 0


def _aal_names() -> dict[int, str]:
    path = MRICRON / "aal.nii.txt"
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


# ------------------------------------------------------------------ the random draws of one volume
def _draw_lesions(
    anatomy: _Anatomy, count: int, gen: torch.Generator, radius: tuple[float, float] = RADIUS_MM
) -> list[Lesion]:
    """``count`` non-overlapping ellipsoids centred in tissue (a few tries each), their radii
    uniform in ``radius`` (anatomy voxels)."""
    lesions: list[Lesion] = []
    for _ in range(50 * max(count, 1)):
        if len(lesions) == count:
            break
        centre = anatomy.tissue[torch.randint(len(anatomy.tissue), (1,), generator=gen)].squeeze(0)
        radii = radius[0] + (radius[1] - radius[0]) * torch.rand(
            3, generator=gen, dtype=torch.float64
        )
        contrast = CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * float(
            torch.rand(1, generator=gen, dtype=torch.float64)
        )
        c = tuple(float(v) for v in centre)
        if any(math.dist(c, other.centre) < max(radii.max().item(), *other.radii) * 2 for other in lesions):
            continue
        region = "unknown"
        if anatomy.regions is not None:
            region = anatomy.names.get(int(anatomy.regions[tuple(centre.tolist())]), "unknown")
        lesions.append(Lesion(c, tuple(radii.tolist()), contrast, region))
    return lesions


def _smooth_field(gen: torch.Generator, outputs: int, terms: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Random low-frequency sinusoids: frequencies ``[outputs, terms, 3]``, phases, amplitudes."""
    freq = torch.randint(-2, 3, (outputs, terms, 3), generator=gen).double()
    freq[..., 0] += (freq.abs().sum(-1) == 0).double()  # no constant term
    phase = 2 * math.pi * torch.rand(outputs, terms, generator=gen, dtype=torch.float64)
    amp = torch.randn(outputs, terms, generator=gen, dtype=torch.float64) / math.sqrt(terms)
    return freq, phase, amp


def _evaluate_field(field: tuple[Tensor, Tensor, Tensor], u: Tensor) -> Tensor:
    """``u: [K, 3]`` in the unit cube -> ``[K, outputs]``."""
    freq, phase, amp = (t.to(u.dtype) for t in field)
    angles = 2 * math.pi * torch.einsum("kd,otd->kot", u, freq) + phase
    return (torch.sin(angles) * amp).sum(-1)


def _noise(linear: Tensor, seed: int) -> Tensor:
    """Standard normal noise that is a pure function of (voxel index, seed): a 32-bit integer hash."""
    mask = 0xFFFFFFFF

    def mix(x: Tensor) -> Tensor:  # multipliers < 2^31 keep every product inside int64
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
        return x ^ (x >> 16)

    base = (linear * 2) ^ ((seed * 0x9E3779B1) & mask)
    u1 = (mix(base & mask ^ (base >> 32)).double() + 1) / (mask + 2)
    u2 = (mix((base + 1) & mask ^ ((base + 1) >> 32)).double() + 1) / (mask + 2)
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def _trilinear(volume: Tensor, p: Tensor) -> Tensor:
    """Sample ``volume [X, Y, Z]`` at continuous voxel positions ``p [K, 3]`` (zero outside)."""
    size = torch.tensor(volume.shape, dtype=p.dtype)
    grid = (2 * p / (size - 1) - 1).flip(-1).to(torch.float32)  # grid_sample wants (z, y, x) order
    sampled = torch.nn.functional.grid_sample(
        volume[None, None],
        grid[None, :, None, None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return sampled.reshape(-1)


class LesionVolume:
    """The voxel function of one cohort member: ``coords [K, 3] -> float32 [K]``."""

    def __init__(
        self,
        anatomy: str,
        side: int,
        seed: int,
        lesions: int,
        oedema: bool = False,
        radius: tuple[float, float] = RADIUS_MM,
    ):
        self.anatomy_name, self.side, self.seed, self.oedema = anatomy, side, seed, oedema
        anat = _anatomy(anatomy)
        self.volume = anat.volume
        gen = torch.Generator().manual_seed(seed % 2**63)
        self.lesions = _draw_lesions(anat, lesions, gen, radius)
        self.deformation = _smooth_field(gen, 3)
        self.bias = _smooth_field(gen, 1)
        # the anatomy fits the cube isotropically and centred
        extent = max(anat.volume.shape)
        self.scale = extent / side  # anatomy voxels per grid voxel
        self.offset = torch.tensor([(n - extent) / 2 for n in anat.volume.shape])
        # grid voxel c's centre lies at anatomy voxel offset + (c + 0.5) scale - 0.5 (see to_anatomy)
        start = (self.offset + 0.5 * self.scale - 0.5).tolist()
        self.spatial = anat.spatial.resampled((self.scale,) * 3, start)

    def unit(self, coords: Tensor) -> Tensor:
        """Grid coordinates ``[K, 3]`` -> voxel centres in the unit cube (float32)."""
        return (coords.float() + 0.5) / self.side

    def to_anatomy(self, coords: Tensor, u: Tensor | None = None) -> Tensor:
        """Grid coordinates ``[K, 3]`` (or their :meth:`unit` positions ``u``) -> deformed
        anatomy voxel positions ``[K, 3]`` (float32)."""
        u = self.unit(coords) if u is None else u
        p = self.offset + u * self.scale * self.side - 0.5
        return p + DEFORM_VOXELS * _evaluate_field(self.deformation, u)

    def lesion_mask(self, p: Tensor, oedema: bool | None = None) -> Tensor:
        """Soft occupancy of all lesions at anatomy positions ``p [K, 3]``, weighted by contrast,
        plus their oedema halos when the volume has them (or when ``oedema`` says so). Halos
        that overlap add up, as the fluid of two lesions does."""
        oedema = self.oedema if oedema is None else oedema
        total = torch.zeros(len(p), dtype=torch.float32)
        for lesion in self.lesions:
            r = lesion.scaled_distance(p)
            edge = EDGE / min(lesion.radii)
            core = torch.sigmoid((1 - r) / edge)
            total += lesion.contrast * core
            if oedema:  # around the lesion, not over it
                total += OEDEMA_CONTRAST * torch.sigmoid((1 - r / OEDEMA_SCALE) / OEDEMA_EDGE) * (1 - core)
        return total

    def __call__(self, coords: Tensor, with_lesions: bool = True, noise: bool = True) -> Tensor:
        if len(coords) > CHUNK:  # bounds the temporaries of a large read
            return torch.cat([self(part, with_lesions, noise) for part in coords.split(CHUNK)])
        u = self.unit(coords)
        p = self.to_anatomy(coords, u)
        values = _trilinear(self.volume, p)
        if with_lesions and self.lesions:
            values = values + self.lesion_mask(p)
        values = values * torch.exp(BIAS * _evaluate_field(self.bias, u)[:, 0])
        if noise:
            linear = (coords[:, 0] * self.side + coords[:, 1]) * self.side + coords[:, 2]
            values = values + NOISE * _noise(linear, self.seed).float()
        return values

    @property
    def lesion_voxels(self) -> float:
        """Total lesion volume in grid voxels (ellipsoid volumes; the deformation is volume-neutral
        to first order)."""
        return sum(4 / 3 * math.pi * math.prod(lesion.radii) for lesion in self.lesions) / self.scale**3


def _check_radius(radius) -> tuple[float, float]:
    """``radius`` as ``(low, high)``: two finite millimetre values with ``0 < low <= high``.

    Example:
        >>> _check_radius((1, 2.5))
        (1.0, 2.5)
    """
    try:
        low, high = (float(r) for r in radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be two numbers (low, high) in millimetres, got {radius!r}.") from None
    if not (0 < low <= high < math.inf):
        raise ValueError(f"radius must be (low, high) millimetres with 0 < low <= high, got {radius!r}.")
    return low, high


def lesion_source(
    anatomy: str = "colin27",
    side: int = 256,
    seed: int = 0,
    lesions: int = 1,
    oedema: bool = False,
    radius: tuple[float, float] = RADIUS_MM,
) -> ProceduralSource:
    """One volume: ``anatomy`` (see ``ANATOMIES``) on a ``side^3`` grid with ``lesions`` lesions,
    each inside a faint hypointense oedema halo (``OEDEMA_*``) when ``oedema``. Lesion radii are
    drawn uniformly in ``radius`` (millimetres of the anatomy, default ``RADIUS_MM``): small radii
    make needle-in-a-haystack lesions that a coarse view of the volume averages away.

    The source's ``spatial`` frame is the anatomy's, resampled: voxels of ``extent / side``
    anatomy voxels (``extent`` the anatomy's longest axis), centred on the anatomy as the grid
    is. Its ``.function`` is a :class:`LesionVolume`; its ``.lesions`` list says what was
    inserted (centre, radii, contrast, AAL region on Colin27) and ``.lesion_voxels`` their total
    volume in grid voxels.

    Example:
        >>> src = lesion_source("colin27", side=64, seed=1, lesions=2)   # doctest: +SKIP
        >>> len(src.function.lesions), src.shape                         # doctest: +SKIP
        (2, (64, 64, 64))
    """
    check_int("side", side, 8)
    check_int("lesions", lesions, 0)
    function = LesionVolume(anatomy, int(side), seed, int(lesions), bool(oedema), _check_radius(radius))
    source = ProceduralSource(function, (int(side),) * 3, name=f"{anatomy}-lesions")
    source.spatial = function.spatial
    return source


def lesion_cohort(
    count: int,
    side: int = 256,
    seed: int = 0,
    anatomy: str = "colin27",
    max_lesions: int = 3,
    oedema: bool = False,
    radius: tuple[float, float] = RADIUS_MM,
) -> tuple[list[ProceduralSource], dict[str, Tensor | list[str]]]:
    """``count`` volumes, every other one lesion-free, and their labels.

    Item ``i`` has ``0`` lesions when ``i`` is even, else ``1..max_lesions`` (drawn from its seed),
    so presence is balanced. Labels: ``presence`` (0/1), ``count``, ``volume`` (total lesion
    volume in grid voxels) and ``region`` (the AAL region holding the largest lesion on Colin27,
    ``"unknown"`` on other anatomies, ``"none"`` without lesions). Item ``i`` does not depend on
    ``count``. With ``oedema`` every lesion sits in a faint hypointense halo 2.5 times its size
    (the perilesional oedema of tumours); the draws, and so the labels, are the same either way.
    Lesion radii are drawn uniformly in ``radius`` millimetres (as :func:`lesion_source`).

    Example:
        >>> sources, labels = lesion_cohort(4, side=32)            # doctest: +SKIP
        >>> labels["presence"].tolist()                            # doctest: +SKIP
        [0, 1, 0, 1]
    """
    check_int("count", count, 0)
    check_int("side", side, 8)
    check_int("max_lesions", max_lesions, 1)
    sources, presence, counts, volumes, regions = [], [], [], [], []
    for index in range(count):
        item_seed = (seed * 1_000_003 + index) % 2**63
        k = 0
        if index % 2:
            k = 1 + int(torch.randint(max_lesions, (1,), generator=torch.Generator().manual_seed(item_seed)))
        source = lesion_source(anatomy, side, item_seed, k, oedema, radius)
        source.name = f"{anatomy}-{index:04d}"
        function: LesionVolume = source.function
        found = function.lesions
        sources.append(source)
        presence.append(int(bool(found)))
        counts.append(len(found))
        volumes.append(function.lesion_voxels)
        largest = max(found, key=lambda lesion: math.prod(lesion.radii)) if found else None
        regions.append(largest.region if largest else "none")
    labels = {
        "presence": torch.tensor(presence, dtype=torch.long),
        "count": torch.tensor(counts, dtype=torch.long),
        "volume": torch.tensor(volumes, dtype=torch.float32),
        "region": regions,
    }
    return sources, labels
