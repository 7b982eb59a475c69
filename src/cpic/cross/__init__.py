"""Cross layer: TT-cross approximation of batched black-box tensors.

Imports the tensor layer (``cpic.tt``) only; knows nothing of volumes or files.
"""

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
