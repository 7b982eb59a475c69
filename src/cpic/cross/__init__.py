"""Cross layer: TT-cross approximation of batched black-box tensors.

Imports ``cpic.tt`` and ``cpic.util`` only; knows nothing of volumes or files. The package is
itself callable as its function :func:`cross`, so that ``cpic.cross(f, shape, rank=...)`` and
``import cpic.cross.engine`` both work.

Example:
    >>> import torch, cpic
    >>> f = lambda idx: (idx.double() + 1).prod(-1)  # a rank-1 tensor
    >>> tt, info = cpic.cross(f, (4, 4, 4), rank=2, n_test=0)
    >>> cpic.cross.engine.cross is cpic.cross.cross
    True
"""

import sys
import types

from cpic.cross.cache import NonFiniteValues
from cpic.cross.engine import cross
from cpic.cross.info import CrossInfo
from cpic.cross.interpolate import interpolate
from cpic.cross.maxvol import maxvol, maxvol_rect
from cpic.cross.pivots import PivotCounts, PivotStore

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


class _CallablePackage(types.ModuleType):
    """``cpic.cross``: the package, which calls :func:`cpic.cross.engine.cross` when called."""

    def __call__(self, *args, **kwargs):
        return cross(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
