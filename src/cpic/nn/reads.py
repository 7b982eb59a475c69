"""Which patches a model reads: one pluggable :class:`ReadPolicy` per model.

A policy gets the batched feature function of a batch of volumes (:class:`PatchFeatures`,
whose calls read and encode patches) and returns :class:`Reads`: the latent TT the
projection and the head see, the patches behind it and, when asked, the largest value of each
feature over them. The model counts the voxels each prediction reads (``Reads.voxels``) and
refuses a policy that reads more than its ``budget``. :class:`~cpic.nn.cross_reads.CrossPivots`
(cross pivots, the default), :class:`RandomPatches`,
:class:`~cpic.nn.lattice_reads.LatticePatches` and
:class:`~cpic.nn.explore_exploit.ExploreExploit` are the policies; :data:`SAMPLERS` names them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cpic.nn.latent import Patches, PatchFeatures
from cpic.nn.sparse_latent import SparseLatent
from cpic.tci import PivotStore
from cpic.tt import TT
from cpic.util.checks import check_int
from cpic.util.units import voxel_budget

#: the read policies by name (``cpic train --sampler``): :func:`make_sampler` builds them
SAMPLERS = ("cross", "random", "lattice", "explore-exploit")
#: what a sampler with a read budget reads per prediction unless told otherwise
DEFAULT_READ_BUDGET = "1%"


@dataclass
class Reads:
    """What one prediction read: the latent tensor ``[B, *tensor_shape]`` (a TT, or the
    :class:`~cpic.nn.sparse_latent.SparseLatent` of a patch sampler; :attr:`tt` gives it as a
    TT either way), the patches behind it (``None`` where the TT was built without a
    differentiable pass), each feature's largest value over them ``[B, F]`` (when asked for),
    the voxels read per volume ``[B]`` and, from a policy with
    :attr:`ReadPolicy.summary_features`, a summary ``[B, summary_features]`` of what else it
    read (the head sees it too)."""

    latent: TT | SparseLatent
    patches: Patches | None = None
    peaks: Tensor | None = None
    voxels: Tensor | None = None
    summary: Tensor | None = None

    @property
    def tt(self) -> TT:
        """The latent tensor as a TT (built from a sparse latent on first use, then kept)."""
        if isinstance(self.latent, SparseLatent):
            self.latent = self.latent.to_tt()
        return self.latent


class ReadPolicy(ABC):
    """Chooses the patches a model reads and builds the latent TT from them.

    ``budget``: voxels per prediction and volume the policy reads at most (``None``: no limit
    but its own parameters'). ``pivots`` holds what it keeps per volume between calls (empty
    for a policy that keeps nothing); ``numerics`` counts numerical events it handled.
    """

    budget: int | None = None
    #: width of :attr:`Reads.summary` (0: the policy gives none)
    summary_features: int = 0

    def __init__(self) -> None:
        self.pivots = PivotStore(1)
        self.numerics: Counter[str] = Counter()

    @abstractmethod
    def select(
        self,
        f: PatchFeatures,
        keys: Sequence[Hashable] | None,
        seeds: Sequence[int],
        generator: torch.Generator,
        peaks: bool = False,
    ) -> Reads:
        """The reads of the volumes of ``f``: ``keys`` name them across calls (``None``: no
        memory), ``seeds`` are one per volume (a volume's reads do not depend on its batch),
        ``generator`` draws anything else; with ``peaks``, :attr:`Reads.peaks` too."""

    def check(self, patch: int, ndim: int, features: int) -> None:
        """Refuse a model this policy cannot read for (patches of side ``patch`` in ``ndim``
        dimensions, ``features`` per patch); a model calls this when it is built."""
        return None

    @abstractmethod
    def entries(self, shape: Sequence[int], patch_voxels: int) -> int:
        """Patches one call encodes per volume at most (for the memory estimate)."""

    @abstractmethod
    def config(self) -> dict:
        """A JSON description that :func:`read_policy_from_config` turns back into the policy."""


class PatchBudget(ReadPolicy):
    """A policy that reads whole patches up to an exact ``budget`` of voxels per prediction and
    volume: ``budget // patch_voxels`` patches (:meth:`patches`). Subclasses set ``kind`` (the
    name in configurations and on the command line) and :meth:`select`."""

    kind = ""

    def __init__(self, budget: int):
        super().__init__()
        check_int("budget", budget)
        self.budget = budget

    def minimum(self, patch: int, ndim: int) -> int:
        """The smallest budget this policy can honour with patches of side ``patch``."""
        return patch**ndim

    def check(self, patch: int, ndim: int, features: int) -> None:
        need = self.minimum(patch, ndim)
        if self.budget < need:
            raise ValueError(
                f"a read budget of {self.budget} voxels is below the {need} that the {self.kind} "
                f"sampler needs with {patch}^{ndim} patches."
            )

    def patches(self, patch_voxels: int) -> int:
        """Patches one prediction reads per volume."""
        return self.budget // patch_voxels

    def generators(
        self, keys: Sequence[Hashable] | None, seeds: Sequence[int], generator: torch.Generator
    ) -> list[torch.Generator]:
        """One generator per volume: the model's (fresh draws at every training step, ``keys``
        given) or one seeded by the volume (the same reads whatever the batch)."""
        if keys is not None:
            return [generator] * len(seeds)
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    def entries(self, shape, patch_voxels) -> int:
        return max(1, self.patches(patch_voxels))

    def config(self) -> dict:
        return {"type": self.kind, "budget": self.budget}


class RandomPatches(PatchBudget):
    """Patches centred at uniformly drawn distinct cells, as many as ``budget`` voxels allow.

    The latent TT is the sparse tensor of the read patches' features, each weighted by the
    number of cells over the number of patches: an unbiased estimate of the whole latent
    tensor, whose mean projection is the mean of the patches' features. Predictions draw from
    each volume's seed (the same patches whatever the batch); training (``keys`` given) draws
    fresh patches at every step.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, reads=RandomPatches(270))
        >>> reads = model.read([cpic.open_volume(torch.rand(16, 16, 16))])
        >>> reads.voxels.tolist(), reads.tt.ranks[1]
        ([270], 10)
    """

    kind = "random"

    def select(self, f, keys, seeds, generator, peaks=False) -> Reads:
        cells = math.prod(f.layout.grid_shape)
        count = min(self.patches(f.patch**f.layout.ndim), cells)
        drawn = []
        for b, gen in enumerate(self.generators(keys, seeds, generator)):
            picked = torch.randint(0, cells, (count,), generator=gen).unique()
            while len(picked) < count:  # distinct cells: exactly ``count`` patches
                more = torch.randint(0, cells, (count - len(picked),), generator=gen)
                picked = torch.cat([picked, more]).unique()
            drawn.append(picked + b * cells)
        ids = torch.cat(drawn)
        patches = Patches(ids, f.encode(ids))
        return patch_reads(f, patches, peaks=peaks)


def patch_reads(
    f: PatchFeatures,
    patches: Patches,
    weights: Tensor | None = None,
    peaks: bool = False,
    summary: Tensor | None = None,
) -> Reads:
    """The :class:`Reads` of a policy that read ``patches``: their :func:`sparse_latent` with
    ``weights``, and with ``peaks`` each feature's largest value over them."""
    top = f.sampled_max(patches)[0] if peaks else None
    return Reads(sparse_latent(f, patches, weights), patches, top, summary=summary)


def sparse_latent(f: PatchFeatures, patches: Patches, weights: Tensor | None = None) -> SparseLatent:
    """The tensor ``[B, *f.shape]`` that holds each patch's features at its cell, times its
    weight (``weights [U]``; default: the cells over the patches of its volume), and zero
    elsewhere."""
    cells = math.prod(f.layout.grid_shape)
    volume = patches.ids // cells
    if weights is None:
        counts = torch.bincount(volume, minlength=f.batch)
        weights = (cells / counts.clamp_min(1))[volume]
    weighted = patches.features * weights.to(patches.features)[:, None]
    return SparseLatent(f.layout, f.batch, f.cell_coords(patches.ids % cells), volume, weighted)


def read_policy_from_config(config: dict | None, model_config: dict) -> ReadPolicy:
    """The policy a :meth:`ReadPolicy.config` describes (cross pivots take the model's rank,
    sweeps and refresh parameters from ``model_config``, and its seed when they name none).

    Example:
        >>> read_policy_from_config({"type": "random", "budget": 125}, {}).budget
        125
    """
    from cpic.nn.cross_reads import CrossPivots

    config = config or {"type": "cross"}
    if config.get("type") == "cross":

        def value(name: str, default):
            return config.get(name, model_config.get(name, default))

        return CrossPivots(
            value("rank", 10),
            sweeps=value("sweeps", 3),
            refresh_every=value("refresh_every", None),
            refresh_tol=value("refresh_tol", None),
            seed=value("seed", 0),
        )
    from cpic.nn.explore_exploit import ExploreExploit
    from cpic.nn.lattice_reads import LatticePatches

    kind = config.get("type")
    if kind == "random":
        return RandomPatches(config["budget"])
    if kind == "lattice":
        return LatticePatches(config["budget"])
    if kind == "explore-exploit":
        settings = ("explore", "zoom", "width", "exploration", "stage2", "cross_rank")
        return ExploreExploit(
            config["budget"],
            features=config.get("features", model_config.get("features", 16)),
            channels=config.get("channels", model_config.get("channels", 1)),
            **{name: config[name] for name in settings if name in config},  # else the defaults
        )
    raise ValueError(f"unknown read policy {config!r} in the model configuration.")


def make_sampler(
    name: str,
    shape: Sequence[int],
    read_budget: str | int | None = None,
    *,
    features: int = 16,
    channels: int = 1,
    patch: int = 5,
    like: ReadPolicy | None = None,
    **cross_settings,
) -> ReadPolicy:
    """The read policy :data:`SAMPLERS` calls ``name`` for volumes of ``shape``, reading
    ``read_budget`` voxels per prediction (a share such as ``"0.5%"`` or a count; default
    :data:`DEFAULT_READ_BUDGET`, or the sampler's minimum for patches of side ``patch`` where
    that is more; the cross sampler reads what its rank needs and takes none), for a model of
    ``features`` features and volumes of ``channels`` channels.
    ``like``: a policy of the same kind whose learnt state (the explore-exploit scorer) the new
    one keeps, e.g. to predict with another budget than the model was trained with.

    Example:
        >>> make_sampler("lattice", (64, 64, 64), "0.5%").budget
        1310
        >>> make_sampler("explore-exploit", (32, 32, 32), patch=3).budget  # 1% is below its minimum
        431
        >>> make_sampler("cross", (64, 64, 64), rank=4).rank
        4
    """
    from cpic.nn.cross_reads import CrossPivots

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}.")
    if name == "cross":
        if read_budget is not None:
            raise ValueError(
                "a read budget applies to the random, lattice and explore-exploit samplers; "
                "the cross sampler reads what its rank needs."
            )
        return CrossPivots(**cross_settings)
    if isinstance(read_budget, int) and not isinstance(read_budget, bool):
        budget = read_budget  # a count as is (a sampler's minimum may exceed a tiny volume)
    else:
        budget = voxel_budget(DEFAULT_READ_BUDGET if read_budget is None else read_budget, math.prod(shape))
    same = like is not None and like.config().get("type") == name
    config = {**like.config(), "budget": budget} if same else {"type": name, "budget": budget}
    policy = read_policy_from_config(config, {"features": features, "channels": channels})
    need = policy.minimum(patch, len(shape))
    if read_budget is None and budget < need:
        return make_sampler(name, shape, need, features=features, channels=channels, patch=patch, like=like)
    if same and isinstance(policy, torch.nn.Module):
        policy.load_state_dict(like.state_dict())
    return policy
