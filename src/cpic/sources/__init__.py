"""Sources layer: reading voxels of volumes on demand, with one batched ``gather`` per request.

Imports only cpic.util: sources know volumes, not tensor trains.
"""

from cpic.sources.array import ArraySource
from cpic.sources.base import Level, Normalization, SourceError, VolumeSource, check_same_grid
from cpic.sources.chunked import HDF5Source, TiffSource, ZarrSource
from cpic.sources.limits import LoadLimits, open_defaults
from cpic.sources.open import FORMATS, detect_format, open_volume
from cpic.sources.procedural import ProceduralSource
from cpic.sources.spatial import SpatialInfo
from cpic.sources.stats import ReadStats

__all__ = [
    "check_same_grid",
    "FORMATS",
    "ArraySource",
    "HDF5Source",
    "Level",
    "LoadLimits",
    "Normalization",
    "ProceduralSource",
    "ReadStats",
    "SourceError",
    "SpatialInfo",
    "TiffSource",
    "VolumeSource",
    "ZarrSource",
    "detect_format",
    "open_defaults",
    "open_volume",
]
