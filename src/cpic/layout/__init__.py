"""Layout layer: maps between voxel coordinates of a grid and tensor multi-indices.

Imports nothing else of cpic.
"""

from cpic.layout.base import Layout
from cpic.layout.morton import QTTLayout
from cpic.layout.plain import PlainLayout

__all__ = ["Layout", "PlainLayout", "QTTLayout"]
