"""Tensor cross interpolation (TCI) layer: TT-cross approximation of batched black-box tensors.

Imports ``cpic.tt`` and ``cpic.util`` only; knows nothing of volumes or files. Its main
function, :func:`cross`, is also ``cpic.cross``.

Example:
    >>> import torch, cpic
    >>> f = lambda idx: (idx.double() + 1).prod(-1)  # a rank-1 tensor
    >>> tt, info = cpic.cross(f, (4, 4, 4), rank=2, n_test=0)
    >>> cpic.cross is cpic.tci.cross
    True
"""

from cpic.tci.cache import NonFiniteValues
from cpic.tci.engine import cross
from cpic.tci.info import CrossInfo
from cpic.tci.interpolation import interpolate
from cpic.tci.pivots import PivotCounts, PivotStore
from cpic.tci.submatrix import maxvol, maxvol_rect

__all__ = [
    "CrossInfo",
    "NonFiniteValues",
    "PivotCounts",
    "PivotStore",
    "cross",
    "interpolate",
    "maxvol",
    "maxvol_rect",
]

