"""cpic: low-rank embeddings of huge volumes from a few cherry-picked voxels."""

from cpic import layout, tci
from cpic._version import __version__
from cpic.nn import CPIC
from cpic.sources import open_volume
from cpic.tci import CrossInfo, cross, interpolate
from cpic.tt import TT

__all__ = ["CPIC", "TT", "CrossInfo", "__version__", "cross", "interpolate", "layout", "open_volume", "tci"]
