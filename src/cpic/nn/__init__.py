"""Model layer: patch encoders, the latent feature tensor, read policies, projections, heads,
:class:`CPIC` (per-volume predictions), :class:`ImplicitVolume` (a decoder of voxels) and the
baselines C-PIC is measured against (:class:`DenseCNN`, :class:`RandomPatchModel`,
:class:`AttentionPatches`).

Imports the tensor, layout, tci and sources layers; knows nothing of training loops or the
command line.
"""

from cpic.nn.baselines import AttentionPatches, DenseCNN, RandomPatchModel
from cpic.nn.cross_reads import CrossPivots
from cpic.nn.encoders import PatchConv, PatchMLP, make_encoder
from cpic.nn.explore_exploit import ExploreExploit
from cpic.nn.heads import (
    Classification,
    Head,
    QuantileRegression,
    Reconstruction,
    Regression,
    head_from_config,
    pinball_loss,
)
from cpic.nn.implicit import ImplicitVolume
from cpic.nn.latent import Patches, PatchFeatures, PatchLog, lattice
from cpic.nn.latent_model import LatentModel
from cpic.nn.lattice_reads import LatticePatches
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
from cpic.nn.reads import (
    DEFAULT_READ_BUDGET,
    SAMPLERS,
    PatchBudget,
    RandomPatches,
    ReadPolicy,
    Reads,
    make_sampler,
    read_policy_from_config,
)

__all__ = [
    "AttentionPatches",
    "CPIC",
    "Classification",
    "CrossPivots",
    "DEFAULT_READ_BUDGET",
    "make_sampler",
    "ExploreExploit",
    "LatticePatches",
    "PatchBudget",
    "SAMPLERS",
    "DenseCNN",
    "ImplicitVolume",
    "LatentModel",
    "PatchLog",
    "Patches",
    "RandomPatchModel",
    "RandomPatches",
    "ReadPolicy",
    "Reads",
    "read_policy_from_config",
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
