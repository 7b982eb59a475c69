"""Procedural phantoms of any size: sources computed from coordinates, never stored."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.data.procedural import blob_field
from cpic.sources import ProceduralSource

# Modified 3-D Shepp-Logan (Toft / Kak-Slaney): intensity, semi-axes a b c, centre x y z,
# Euler angles phi theta psi in degrees.
_SHEPP_LOGAN = [
    (1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0, 0, 0),
    (-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0, 0, 0),
    (-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18, 0, 10),
    (-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18, 0, 10),
    (0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0, 0, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0, 0, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0, 0, 0),
    (0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0, 0, 0),
    (0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0, 0, 0),
    (0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0, 0, 0),
]


def _unit_coords(coords: Tensor, shape: Sequence[int]) -> Tensor:
    """Voxel coordinates -> ``[-1, 1]`` (voxel centres), float64."""
    n = torch.tensor(shape, dtype=torch.float64)
    return (coords.double() - (n - 1) / 2) / ((n - 1).clamp_min(1) / 2)


def _euler(phi: float, theta: float, psi: float) -> Tensor:
    p, t, s = (math.radians(a) for a in (phi, theta, psi))
    cp, sp, ct, st, cs, ss = math.cos(p), math.sin(p), math.cos(t), math.sin(t), math.cos(s), math.sin(s)
    return torch.tensor(
        [
            [cs * cp - ct * sp * ss, cs * sp + ct * cp * ss, ss * st],
            [-ss * cp - ct * sp * cs, -ss * sp + ct * cp * cs, cs * st],
            [st * sp, -st * cp, ct],
        ],
        dtype=torch.float64,
    )


def shepp_logan(shape: Sequence[int] = (256, 256, 256)) -> ProceduralSource:
    """The modified 3-D Shepp-Logan head phantom on a grid of any ``shape`` (values 0..1).

    Example:
        >>> import torch
        >>> src = shepp_logan((2**14,) * 3)            # 4.4e12 voxels, none stored
        >>> round(src.read(torch.tensor([[8192, 8192, 8192]])).item(), 3)
        0.2
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"shepp_logan needs a 3-D shape, got {shape}.")

    def phantom(coords: Tensor) -> Tensor:
        x = _unit_coords(coords, shape)
        out = torch.zeros(len(coords), dtype=torch.float64)
        for value, a, b, c, x0, y0, z0, phi, theta, psi in _SHEPP_LOGAN:
            p = x @ _euler(phi, theta, psi).T - torch.tensor([x0, y0, z0], dtype=torch.float64)
            inside = (p.square() / torch.tensor([a * a, b * b, c * c], dtype=torch.float64)).sum(1) <= 1
            out = out + value * inside
        return out.float()

    return ProceduralSource(phantom, shape, name=f"shepp-logan {'x'.join(map(str, shape))}")


def band_limited_noise(
    shape: Sequence[int] = (256, 256, 256), cutoff: float = 8.0, waves: int = 64, seed: int = 0
) -> ProceduralSource:
    """A smooth random field: ``waves`` plane waves with frequencies below ``cutoff`` cycles per side.

    The same ``seed`` gives the same field at every resolution.

    Example:
        >>> import torch
        >>> src = band_limited_noise((64, 64), seed=1)
        >>> src.read(torch.tensor([[0, 0], [63, 63]])).shape
        torch.Size([2])
    """
    shape = tuple(int(n) for n in shape)
    gen = torch.Generator().manual_seed(seed)
    D = len(shape)
    direction = torch.randn(waves, D, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    freq = direction * cutoff * torch.rand(waves, 1, generator=gen, dtype=torch.float64) * math.pi
    phase = 2 * math.pi * torch.rand(waves, generator=gen, dtype=torch.float64)
    amp = torch.randn(waves, generator=gen, dtype=torch.float64) / math.sqrt(waves)

    def field(coords: Tensor) -> Tensor:
        x = _unit_coords(coords, shape)
        return (torch.cos(x @ freq.T + phase) @ amp).float()

    return ProceduralSource(field, shape, name=f"band-limited noise {'x'.join(map(str, shape))}")


def blobs(shape: Sequence[int] = (256, 256, 256), count: int = 6, seed: int = 0) -> ProceduralSource:
    """Gaussian blobs on a gentle gradient (``blob_field``) as a source of any ``shape``.

    Example:
        >>> import torch
        >>> blobs((512, 512, 512), count=3).read(torch.tensor([[256, 256, 256]])).shape
        torch.Size([1])
    """
    shape = tuple(int(n) for n in shape)
    return ProceduralSource(
        lambda c: blob_field(c, shape, blobs=count, seed=seed),
        shape,
        name=f"blobs {'x'.join(map(str, shape))}",
    )
