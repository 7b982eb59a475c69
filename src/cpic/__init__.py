"""cpic: low-rank embeddings of huge volumes from a few cherry-picked voxels."""

# cross: the package cpic.cross, callable as its function cross()
from cpic import cross, layout
from cpic._version import __version__
from cpic.cross import CrossInfo, interpolate
from cpic.nn import CPIC
from cpic.sources import open_volume
from cpic.tt import TT

__all__ = ["CPIC", "TT", "CrossInfo", "__version__", "cross", "interpolate", "layout", "open_volume"]
