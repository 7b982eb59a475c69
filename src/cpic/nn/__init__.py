"""Model layer: patch encoders, the latent feature tensor, projections, heads and :class:`CPIC`.

Imports the tensor, layout, cross and sources layers; knows nothing of training loops or the
command line.
"""

from cpic.nn.encoders import PatchConv, PatchMLP, make_encoder
from cpic.nn.heads import (
    Classification,
    Head,
    QuantileRegression,
    Reconstruction,
    Regression,
    head_from_config,
    pinball_loss,
)
from cpic.nn.latent import PatchFeatures, lattice
from cpic.nn.model import CPIC
from cpic.nn.projections import (
    CovariancePooling,
    GridPooling,
    MeanPooling,
    coarse_feature_grid,
    feature_mean,
    feature_moments,
    make_projection,
)

__all__ = [
    "CPIC",
    "Classification",
    "CovariancePooling",
    "GridPooling",
    "Head",
    "MeanPooling",
    "PatchConv",
    "PatchFeatures",
    "lattice",
    "PatchMLP",
    "QuantileRegression",
    "Reconstruction",
    "Regression",
    "coarse_feature_grid",
    "feature_mean",
    "feature_moments",
    "head_from_config",
    "make_encoder",
    "make_projection",
    "pinball_loss",
]
