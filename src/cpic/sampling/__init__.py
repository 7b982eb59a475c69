"""Sampling layer: the batched functions of multi-indices that sources and layouts define.

Imports layout and sources; the cross and tensor layers consume what it makes.
"""

from cpic.sampling.intensity import IntensityFunction

__all__ = ["IntensityFunction"]
