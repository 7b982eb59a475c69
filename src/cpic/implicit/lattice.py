"""Separable interpolation from a rectilinear lattice of voxels: the nodes of a stride along each
axis, the linear maps from node values to voxel values (linear, or a natural cubic spline), and
their application axis by axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.util.checks import check_int

KINDS = ("linear", "cubic")


def lattice_nodes(n: int, stride: int) -> Tensor:
    """The node positions of one axis of ``n`` voxels at ``stride``: ``0, stride, 2 stride, ...``
    and the last voxel, so that no voxel is extrapolated. Nodes of ``stride`` are nodes of every
    divisor of ``stride``.

    Example:
        >>> lattice_nodes(10, 4).tolist()
        [0, 4, 8, 9]
    """
    check_int("stride", stride)
    nodes = torch.arange(0, n, stride)
    return nodes if nodes[-1] == n - 1 else torch.cat([nodes, torch.tensor([n - 1])])


def axis_strides(shape: Sequence[int], stride: int | Sequence[int]) -> list[int]:
    """``stride`` for each axis of ``shape`` (one int: the same on every axis).

    Example:
        >>> axis_strides((4, 5, 6), 2), axis_strides((4, 5, 6), [2, 3, 3])
        ([2, 2, 2], [2, 3, 3])
    """
    strides = [stride] * len(shape) if isinstance(stride, int) else [int(s) for s in stride]
    if len(strides) != len(shape):
        raise ValueError(f"strides {strides} do not match a {len(shape)}-D grid.")
    return strides


def lattice_size(shape: Sequence[int], stride: int | Sequence[int]) -> int:
    """Voxels a lattice of ``stride`` (one, or one per axis) reads on ``shape``.

    Example:
        >>> lattice_size((10, 10, 10), 4), lattice_size((10, 10, 10), [4, 4, 2])
        (64, 96)
    """
    return math.prod(len(lattice_nodes(n, s)) for n, s in zip(shape, axis_strides(shape, stride)))


def lattice_stride(shape: Sequence[int], budget: int) -> int:
    """The smallest stride whose lattice reads at most ``budget`` voxels (at least 2 nodes an axis).

    Example:
        >>> lattice_stride((64, 64, 64), 5000), lattice_size((64, 64, 64), 4)
        (4, 4913)
    """
    check_int("budget", budget)
    stride = max(1, math.floor((math.prod(shape) / budget) ** (1 / len(shape))))
    while lattice_size(shape, stride) > budget and stride < max(shape):
        stride += 1
    return stride


def lattice_strides(shape: Sequence[int], budget: int) -> list[int]:
    """Per-axis strides of the densest lattice within ``budget`` voxels: :func:`lattice_stride`
    on every axis, then one less on the longest axes while the budget allows.

    Example:
        >>> lattice_strides((64, 64, 64), 5000), lattice_size((64, 64, 64), [4, 4, 4])
        ([4, 4, 4], 4913)
        >>> lattice_strides((64, 64, 64), 6400), lattice_size((64, 64, 64), [3, 4, 4])
        ([3, 4, 4], 6358)
    """
    strides = [lattice_stride(shape, budget)] * len(shape)
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        finer = [s - (a == axis) for a, s in enumerate(strides)]
        if strides[axis] > 1 and lattice_size(shape, finer) <= budget:
            strides = finer
    return strides


def interpolation_matrix(nodes: Tensor, queries: Tensor, kind: str = "cubic") -> Tensor:
    """The float64 ``[len(queries), len(nodes)]`` matrix mapping values at the sorted ``nodes`` to values at
    ``queries`` (inside ``nodes[0] .. nodes[-1]``): piecewise ``linear``, or the ``cubic`` natural
    spline through the nodes (C2, exact at the nodes, linear where there are only two).

    Example:
        >>> w = interpolation_matrix(torch.tensor([0, 2, 4]), torch.arange(5), "cubic")
        >>> (w @ torch.tensor([0.0, 2.0, 4.0], dtype=w.dtype)).tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    x, q = nodes.double(), queries.double()
    m = len(x)
    if m == 1:
        return torch.ones(len(q), 1, dtype=torch.float64)
    j = (torch.searchsorted(x, q, right=True) - 1).clamp(0, m - 2)
    h = x[1:] - x[:-1]
    t = (q - x[j]) / h[j]
    rows = torch.arange(len(q))
    w = torch.zeros(len(q), m, dtype=torch.float64)
    w[rows, j] += 1 - t
    w[rows, j + 1] += t
    if kind == "linear" or m == 2:
        return w
    # natural spline: second derivatives M = A^-1 R f with M_0 = M_{m-1} = 0
    inner = torch.arange(1, m - 1)
    a = torch.zeros(m - 2, m - 2, dtype=torch.float64)
    k = torch.arange(m - 2)
    a[k, k] = (h[:-1] + h[1:]) / 3
    a[k[1:], k[:-1]] = h[1:-1] / 6
    a[k[:-1], k[1:]] = h[1:-1] / 6
    r = torch.zeros(m - 2, m, dtype=torch.float64)
    r[k, inner - 1] = 1 / h[:-1]
    r[k, inner] = -1 / h[:-1] - 1 / h[1:]
    r[k, inner + 1] = 1 / h[1:]
    second = torch.zeros(m, m, dtype=torch.float64)
    second[1:-1] = torch.linalg.solve(a, r)
    hj = h[j][:, None]
    # the cubic part of the spline on [x_j, x_j+1] beyond the linear one
    c0 = ((1 - t) ** 3 - (1 - t))[:, None] * hj**2 / 6
    c1 = (t**3 - t)[:, None] * hj**2 / 6
    return w + c0 * second[j] + c1 * second[j + 1]


def interpolate(values: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """``values`` on a lattice ``[m_0, m_1, ...]`` mapped axis by axis by ``weights[a]``
    (``[n_a, m_a]``, e.g. :func:`interpolation_matrix`): the ``[n_0, n_1, ...]`` voxel values.

    Example:
        >>> w = interpolation_matrix(torch.tensor([0, 3]), torch.arange(4), "linear")
        >>> interpolate(torch.tensor([[0.0, 3.0], [3.0, 6.0]]), [w, w])[1].tolist()
        [1.0, 2.0, 3.0, 4.0]
    """
    out = values.double()
    for axis, w in enumerate(weights):
        out = torch.tensordot(w, out.movedim(axis, 0), dims=1).movedim(0, axis)
    return out.to(values.dtype)


def upsample(
    values: Tensor, nodes: Sequence[Tensor], queries: Sequence[Tensor], kind: str = "cubic"
) -> Tensor:
    """Lattice ``values`` at ``nodes`` (per axis) interpolated at the voxels ``queries`` (per axis).

    Example:
        >>> nodes = [lattice_nodes(5, 2)] * 2
        >>> up = upsample(torch.ones(3, 3), nodes, [torch.arange(5)] * 2)
        >>> up.shape, bool(torch.allclose(up, torch.ones(5, 5)))
        (torch.Size([5, 5]), True)
    """
    return interpolate(values, [interpolation_matrix(x, q, kind) for x, q in zip(nodes, queries)])
