"""The one file of a compressed volume: safetensors tensors plus JSON metadata, never a pickle.

The metadata (the safetensors header's ``"cpic"`` entry) records the format and its version,
the method, the grid, the source's dtype, a normalisation (the 0.5th..99.5th percentiles of the
values read), the source's voxel-to-world frame (affine, NIfTI transform codes and units), the
method's settings, the provenance, and the sha256 of the tensors, so that an edited or truncated
file is refused. Tensors: ``ids`` (C-order linear voxel ids ``[K]``, int32 below 2^31 voxels,
else int64) and ``values`` (float32 ``[K]``) of the voxels read for ``lattice`` and ``refine``;
the model's tensors (``model.*``) and the latent TT cores (``latent.core_k``, each
``[r_k, n_k, r_{k+1}]``) for ``implicit``. The file is written
under a hidden temporary name and moved into place (:func:`cpic.util.outputs.staged`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cpic.implicit.refine import LatticeReads
from cpic.nn import ImplicitVolume
from cpic.sources import SpatialInfo
from cpic.train import CheckpointError, model_from_config
from cpic.tt import TT
from cpic.util.outputs import staged

FORMAT, VERSION = "cpic-compressed-volume", 2
METHODS = ("refine", "lattice", "implicit")


@dataclass
class CompressedVolume:
    """A compressed volume: its ``method``, metadata (``grid``, ``normalization``, ``spatial``,
    settings, provenance) and either the voxels read (``reads``) or a ``model`` and its ``latent``."""

    method: str
    meta: dict
    reads: LatticeReads | None = None
    model: ImplicitVolume | None = None
    latent: TT | None = None
    file: str | None = None
    _finest: tuple | None = field(default=None, repr=False)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.meta["grid"])

    @property
    def normalization(self) -> dict:
        return self.meta["normalization"]

    @property
    def source_volume(self) -> str | None:
        """The volume it was compressed from, as ``cpic compress`` was given it (or ``None``)."""
        return self.meta.get("provenance", {}).get("volume")

    @property
    def spatial(self) -> SpatialInfo:
        try:
            return SpatialInfo.from_dict(self.meta["spatial"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{self.file}: the recorded voxel-to-world frame is unusable ({err})."
            ) from None

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the file holds besides the metadata."""
        if self.method == "implicit":
            state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            cores = {
                f"latent.core_{k}": c[0].detach().cpu().contiguous() for k, c in enumerate(self.latent.cores)
            }
            return {**state, **cores}
        grid = self.reads.grid
        ids = torch.from_numpy(np.ravel_multi_index(tuple(self.reads.coords.T.numpy()), grid))
        dtype = torch.int32 if math.prod(grid) < 2**31 else torch.int64
        return {"ids": ids.to(dtype).contiguous(), "values": self.reads.values.float().contiguous()}


def _sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_compressed(file: str | Path, volume: CompressedVolume) -> int:
    """Write ``volume`` as the one file ``file`` (replaced atomically); returns its bytes.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import compress
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=40).volume
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_compressed(f"{d}/v.cpic", volume) > 0, load_compressed(f"{d}/v.cpic").method
        (True, 'lattice')
    """
    import safetensors.torch

    tensors = volume.tensors()
    meta = {"format": FORMAT, "version": VERSION, **volume.meta, "method": volume.method,
            "sha256": _sha256(tensors)}  # fmt: skip
    if volume.method == "implicit":
        meta["config"] = volume.model.config
    else:
        meta["strides"] = volume.reads.strides
    with staged(file, lambda base: [base]) as temp:  # staged: a killed run's leftover is removed next time
        safetensors.torch.save_file(tensors, str(temp), metadata={"cpic": json.dumps(meta)})
    return Path(file).stat().st_size


def load_compressed(file: str | Path, device: str | torch.device = "cpu") -> CompressedVolume:
    """The compressed volume of :func:`save_compressed`'s ``file``; a
    :class:`~cpic.train.CheckpointError` for a file that is not one, or was altered.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import compress
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=40, method="lattice").volume
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_compressed(f"{d}/v.cpic", volume)
        ...     load_compressed(f"{d}/v.cpic").reads.strides
        [[3, 4, 4]]
    """
    import safetensors
    import safetensors.torch

    path = Path(file)
    if not path.is_file():
        older = path.with_name(path.name + ".json").exists() or path.with_suffix(".json").exists()
        hint = " (files of an older 'cpic compress'; compress the volume again)" if older else ""
        raise FileNotFoundError(f"{file}: no such compressed volume{hint}.")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = safetensors.torch.load_file(str(path))
        meta = json.loads(header["cpic"])
    except (OSError, ValueError, KeyError, RuntimeError, safetensors.SafetensorError) as err:
        raise CheckpointError(
            f"{file}: not a compressed volume written by 'cpic compress' ({err})."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{file}: not a compressed volume of format version {VERSION}.")
    if meta.get("sha256") != _sha256(tensors):
        raise CheckpointError(f"{file}: its tensors do not match the recorded sha256 (altered or truncated).")
    method = meta.get("method")
    try:
        if method == "implicit":
            return _implicit(str(file), meta, tensors, device)
        if method in ("refine", "lattice"):
            grid = tuple(meta["grid"])
            ids = tensors["ids"].long()
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= math.prod(grid)):
                raise CheckpointError(f"{file}: voxel ids outside the grid {grid}.")
            coords = torch.stack(torch.unravel_index(ids, grid), -1).reshape(-1, len(grid))
            reads = LatticeReads(grid, list(meta["strides"]), coords.long(), tensors["values"].float())
            _check_reads(file, reads)
            return CompressedVolume(method, meta, reads=reads, file=str(file))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{file}: its contents are inconsistent ({err}).") from None
    raise CheckpointError(f"{file}: unknown method {method!r}; expected one of {METHODS}.")


def _check_reads(file, reads: LatticeReads) -> None:
    coords, values = reads.coords, reads.values
    if values.ndim != 1 or len(coords) != len(values):
        pairs = f"{len(coords)} voxel ids and values {tuple(values.shape)}"
        raise CheckpointError(f"{file}: {pairs} do not pair.")
    if not bool(torch.isfinite(values).all()):
        raise CheckpointError(f"{file}: the values read hold NaN or Inf.")


def _implicit(file: str, meta: dict, tensors: dict, device) -> CompressedVolume:
    model = model_from_config(meta["config"])
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    count = sum(k.startswith("latent.") for k in tensors)
    latent = TT([tensors[f"latent.core_{k}"][None].to(device) for k in range(count)])
    if latent.shape[:-1] != model.layout.tensor_shape[:-1]:
        raise ValueError(f"TT modes {latent.shape} do not fit the model's layout")
    return CompressedVolume("implicit", meta, model=model.to(device).eval(), latent=latent, file=file)
