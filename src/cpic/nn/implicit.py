"""The implicit volume: a latent TT plus a decoder that answers any voxel without reading it."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from cpic.layout import Layout
from cpic.nn.heads import Reconstruction
from cpic.nn.latent_model import LatentModel, as_sources
from cpic.nn.reads import ReadPolicy
from cpic.sources import VolumeSource
from cpic.tt import TT


class ImplicitVolume(LatentModel):
    """The latent TT of a volume and a decoder (:class:`~cpic.nn.Reconstruction`, ``hidden``
    units) from the feature vector at a voxel to its intensity: :meth:`query` decodes any voxel
    from the TT, and training (:meth:`loss`) fits it to voxels already read. Patches are
    centred on every voxel (no stride).

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import ImplicitVolume
        >>> model = ImplicitVolume((16, 16, 16), features=4, patch=3, rank=3)
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> loss, pred = model.loss([src], voxels=100)
        >>> model.query(model.latent([src]), torch.zeros(5, 3)).shape, pred.shape
        (torch.Size([1, 5]), torch.Size([1, 100]))
    """

    #: its loss compares decoded voxels with those read: no targets, no per-volume metrics
    supervised = False
    task = "reconstruction"
    extra_features = 0

    def __init__(
        self,
        grid_shape: Sequence[int],
        *,
        features: int = 16,
        patch: int = 5,
        channels: int = 1,
        encoder: str | nn.Module = "mlp",
        positions: bool = False,
        background: float | None = None,
        hidden: int | None = 64,
        rank: int = 10,
        sweeps: int = 3,
        refresh_every: int | None = None,
        refresh_tol: float | None = None,
        border: str = "reflect",
        layout: Layout | None = None,
        reads: ReadPolicy | None = None,
        seed: int = 0,
    ):
        super().__init__(
            grid_shape,
            features=features,
            patch=patch,
            channels=channels,
            encoder=encoder,
            positions=positions,
            background=background,
            rank=rank,
            sweeps=sweeps,
            refresh_every=refresh_every,
            refresh_tol=refresh_tol,
            border=border,
            layout=layout,
            reads=reads,
            seed=seed,
        )
        self.decoder = Reconstruction(channels, hidden)
        self.decoder.build(features)
        self.config.update(model="implicit-volume", hidden=hidden, head=self.decoder.config())
        del self.config["stride"]

    def query(self, latent: TT, coords: Tensor) -> Tensor:
        """Decoded intensities ``[B, K]`` at voxel ``coords [B, K, D]`` (or ``[K, D]`` for all)
        from a latent TT: an implicit representation, no voxel is read."""
        coords = torch.as_tensor(coords).long()
        if coords.dim() == 2:
            coords = coords.expand(latent.batch, -1, -1)
        idx = self.layout.to_index(coords.cpu(), feature=0)[..., :-1]
        return self.decoder(latent.fibers(idx))

    def loss(
        self, sources, targets=None, keys: Sequence[Hashable] | None = None, extra=None, voxels: int = 4096
    ) -> tuple[Tensor, Tensor]:
        """Mean squared error of :meth:`query` at ``voxels`` voxels per volume drawn from those
        read so far (the reads' patches and pivot selection): training reads nothing more.
        ``targets`` and ``extra`` are not used (the voxels are the targets)."""
        sources = as_sources(sources)
        latent = self.latent(sources, keys)
        coords = torch.stack([self._sample_read(src, voxels) for src in sources])
        target = torch.stack([src.read(c) for src, c in zip(sources, coords)]).to(latent.device, latent.dtype)
        pred = self.query(latent, coords)
        return self.decoder.loss(pred, target), pred

    def _sample_read(self, src: VolumeSource, count: int) -> Tensor:
        """Coordinates ``[count, D]`` of voxels of ``src`` read so far, drawn with replacement."""
        ids = src.stats.voxel_ids()
        pick = torch.randint(0, len(ids), (count,), generator=self._generator).numpy()
        return src.coords_of(torch.from_numpy(ids[pick]))
