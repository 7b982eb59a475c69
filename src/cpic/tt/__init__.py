"""Tensor layer: the batched tensor train and what is computed in TT format.

Imports nothing else of cpic.
"""

from cpic.tt.tensor_train import TT

__all__ = ["TT"]
