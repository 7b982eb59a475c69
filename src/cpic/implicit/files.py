"""The files of a compressed volume: the model and the volume's latent TT, bound by a hash.

- ``FILE.safetensors`` + ``FILE.json``: the model (encoder and decoder weights), a
  :func:`cpic.train.save_model` file whose provenance says ``kind="compressed-volume"``;
- ``FILE.latent.safetensors`` + ``FILE.latent.json``: the latent TT cores (``core_0`` ...
  ``core_{d-1}``, each ``[r_k, n_k, r_{k+1}]``) as a :func:`cpic.train.save_checkpoint`, with
  the grid, the normalisation, the source's voxel-to-world frame (affine, NIfTI transform
  codes and units) and the sha256 of the model's tensors, so that a latent is never decoded
  by another model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from cpic.nn import ImplicitVolume
from cpic.sources import SpatialInfo, VolumeSource
from cpic.train import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from cpic.tt import TT
from cpic.util.outputs import staged

KIND = "compressed-volume"
LATENT_FORMAT, LATENT_VERSION = "cpic-latent", 1


def latent_path(file: str | Path) -> Path:
    """The base name of the latent checkpoint next to the model file ``file``.

    Example:
        >>> latent_path("out/brain.cpic").as_posix()
        'out/brain.cpic.latent'
    """
    base = checkpoint_paths(file)[0].with_suffix("")
    return base.with_name(base.name + ".latent")


def compressed_files(file: str | Path) -> list[Path]:
    """The four files of a compressed volume.

    Example:
        >>> [p.name for p in compressed_files("brain")]
        ['brain.safetensors', 'brain.json', 'brain.latent.safetensors', 'brain.latent.json']
    """
    return [*checkpoint_paths(file), *checkpoint_paths(latent_path(file))]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_compressed(
    file: str | Path, model: ImplicitVolume, latent: TT, source: VolumeSource, **provenance
) -> dict[str, int]:
    """Write ``model`` and the ``latent`` of ``source`` as ``file``'s four files (``provenance``
    is stored in the model file); returns ``{path: bytes}`` of the four files. They are written
    under temporary names and moved into place together (:func:`cpic.util.outputs.staged`), so
    an earlier compressed volume of that name is never mixed with the new one.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import reconstruction_model
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="range")
        >>> model = reconstruction_model(src.shape, rank=2, features=2)
        >>> latent = model.latent([src], keys=[src]).detach()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     len(save_compressed(f"{d}/v", model, latent, src))
        4
    """
    with staged(checkpoint_paths(file)[0].with_suffix(""), compressed_files) as base:
        _save_as(base, model, latent, source, provenance)
    return {str(p): p.stat().st_size for p in compressed_files(file)}


def _save_as(file: Path, model: ImplicitVolume, latent: TT, source: VolumeSource, provenance: dict) -> None:
    norm = source.normalization
    normalization = {"method": norm.method, "low": norm.low, "high": norm.high}
    model_st = save_model(model, file, kind=KIND, normalization=normalization, **provenance)
    cores = {f"core_{k}": core[0].detach().cpu() for k, core in enumerate(latent.cores)}
    meta = {
        "format": LATENT_FORMAT,
        "version": LATENT_VERSION,
        "kind": KIND,
        "grid": list(source.shape),
        "dtype": str(source.dtype),
        "normalization": normalization,
        "spatial": source.spatial.to_dict(),
        "ranks": list(latent.ranks),
        "model_sha256": _sha256(model_st),
    }
    save_checkpoint(latent_path(file), cores, meta)


@dataclass
class CompressedVolume:
    """A loaded compressed volume: the model (in eval mode), the latent TT and the latent's
    metadata (``grid``, ``normalization``, ``spatial``, ...)."""

    file: str
    model: ImplicitVolume
    latent: TT
    meta: dict
    #: the model file's metadata (its provenance names the source volume)
    model_meta: dict

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.meta["grid"])

    @property
    def normalization(self) -> dict:
        return self.meta["normalization"]

    @property
    def source_volume(self) -> str | None:
        """The volume it was compressed from, as ``cpic compress`` was given it (or ``None``)."""
        return self.model_meta.get("provenance", {}).get("volume")

    @property
    def spatial(self) -> SpatialInfo:
        """The source's frame as compress recorded it; files without one (older) hold its affine."""
        try:
            if "spatial" in self.meta:
                return SpatialInfo.from_dict(self.meta["spatial"])
            return SpatialInfo(self.meta["affine"])  # nibabel's default codes, as these files were written
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{latent_path(self.file)}: the recorded voxel-to-world frame is unusable ({err})."
            ) from None


def load_compressed(file: str | Path, device: str | torch.device = "cpu") -> CompressedVolume:
    """The model, the latent TT and the latent's metadata of :func:`save_compressed`'s ``file``;
    a :class:`~cpic.train.CheckpointError` for files that are not, or do not belong together.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import reconstruction_model
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="range")
        >>> model = reconstruction_model(src.shape, rank=2, features=2)
        >>> latent = model.latent([src], keys=[src]).detach()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_compressed(f"{d}/v", model, latent, src)
        ...     load_compressed(f"{d}/v").grid
        (8, 8, 8)
    """
    if not checkpoint_paths(file)[1].exists():
        raise FileNotFoundError(
            f"{file}: no such compressed volume ({checkpoint_paths(file)[1]} is missing)."
        )
    model, meta = load_model(file, device=device)
    if meta.get("provenance", {}).get("kind") != KIND:
        raise CheckpointError(
            f"{file}: a cpic model, but not a compressed volume (written by 'cpic compress')."
        )
    tensors, latent_meta = load_checkpoint(latent_path(file), device=device)
    if latent_meta.get("format") != LATENT_FORMAT or latent_meta.get("version") != LATENT_VERSION:
        raise CheckpointError(f"{latent_path(file)}: not a cpic latent of version {LATENT_VERSION}.")
    if latent_meta.get("model_sha256") != _sha256(checkpoint_paths(file)[0]):
        raise CheckpointError(f"{latent_path(file)}: this latent was written with another model file.")
    dtype = next(model.parameters()).dtype
    for name, core in tensors.items():
        if core.dtype != dtype or not bool(torch.isfinite(core).all()):
            raise CheckpointError(
                f"{latent_path(file)}: core {name!r} must hold finite {dtype} values, got {core.dtype}"
                + ("" if core.dtype != dtype else " with NaN or Inf")
                + "."
            )
    try:
        latent = TT([tensors[f"core_{k}"][None] for k in range(len(tensors))])
    except (KeyError, ValueError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{latent_path(file)}: the TT cores are inconsistent ({err}).") from None
    if latent.shape[:-1] != model.layout.tensor_shape[:-1]:
        raise CheckpointError(f"{latent_path(file)}: TT modes {latent.shape} do not fit the model's layout.")
    return CompressedVolume(str(file), model.eval(), latent, latent_meta, meta)
