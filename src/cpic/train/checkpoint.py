"""Checkpoints as a safetensors file of tensors plus a JSON file of metadata; nothing is pickled.

A checkpoint named ``run/ckpt`` is the pair ``run/ckpt.safetensors`` and ``run/ckpt.json``. The JSON
records the sha256 of the safetensors file and is replaced last, so an interrupted save leaves either
the previous pair or a pair whose hash does not match, which :func:`load_checkpoint` refuses. The
metadata is sealed too: its canonical JSON is stored in the safetensors header (under the hash), and a
JSON whose metadata differs from that copy (a ``rank`` edited by hand) is refused, naming the key.

Nested states such as ``optimizer.state_dict()`` go through :func:`flatten_state`: the tensors go to
the safetensors file and a JSON skeleton of everything else goes into the metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from cpic.train.seal import SEAL, canonical_json, check_seal
from cpic.util import new_temp_file
from cpic.util.guard import open_file, read_bytes

FORMAT = "cpic-checkpoint"
#: 2: the metadata is sealed in the safetensors header
VERSION = 2
_SUFFIXES = (".safetensors", ".json")
# one-key JSON objects with these keys stand for values JSON cannot hold directly
_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"
_MARKERS = {_TENSOR, _TUPLE, _DICT, _FLOAT}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or inconsistent; the message names the file."""


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The ``(safetensors, json)`` file pair of a checkpoint; a ``.safetensors``/``.json`` suffix is dropped.

    Example:
        >>> [p.as_posix() for p in checkpoint_paths("run/ckpt.json")]
        ['run/ckpt.safetensors', 'run/ckpt.json']
    """
    base = Path(path)
    if base.suffix in _SUFFIXES:
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _for_saving(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, no two on the same storage (safetensors refuses shared storage)."""
    out, storages = {}, set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            kinds = f"{type(name).__name__} -> {type(tensor).__name__}"
            raise TypeError(f"tensors must map str to Tensor, got {kinds}")
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:
            tensor = tensor.clone()
        storages.add(storage)
        out[name] = tensor
    return out


def _temp_path(final: Path) -> Path:
    return new_temp_file(final.parent, prefix=f".{final.name}.", suffix=".tmp")


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open directories
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_path(st_path: Path) -> Path:
    """Where the previous tensors wait while a save replaces them (see :func:`save_checkpoint`)."""
    return st_path.with_name(f".{st_path.name}.previous")


def _remove_leftovers(st_path: Path, json_path: Path) -> None:
    """Temporary files of an earlier save that was killed before it could clean up."""
    for final in (st_path, json_path):
        for temp in final.parent.glob(f".{final.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _keep_previous(st_path: Path) -> Path | None:
    """A hard link (or copy) of the current tensors, so a save killed between its two renames
    leaves a loadable pair: the old JSON with these old tensors."""
    if not st_path.exists():
        return None
    backup = _backup_path(st_path)
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    try:
        os.link(st_path, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(st_path, backup)
    return backup


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``meta`` as a checkpoint; returns the safetensors path.

    Both files are written to temporary files in the target directory and moved into place with
    ``os.replace``, the JSON last. The tensors being replaced stay available (a hidden hard link)
    until the JSON is in place: a process killed between the two renames leaves the previous
    checkpoint loadable, and a save that fails there puts the previous tensors back. Tensors are
    saved from the CPU; shared storage is cloned.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     saved = save_checkpoint(f"{d}/ckpt", {"w": torch.ones(2)}, {"epoch": 3})
        ...     tensors, meta = load_checkpoint(f"{d}/ckpt.json")
        >>> saved.name, tensors["w"].tolist(), meta
        ('ckpt.safetensors', [1.0, 1.0], {'epoch': 3})
    """
    st_path, json_path = checkpoint_paths(path)
    prepared = _for_saving(tensors)
    meta_text = json.dumps(meta)  # fail before writing anything if meta is not JSON-serialisable
    st_path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(st_path, json_path)
    temps, backup, replaced, done = [], None, False, False
    try:
        temps.append(st_tmp := _temp_path(st_path))
        # into the file made here: safetensors' save_file creates its own, mode 0600 whatever the umask
        with open(st_tmp, "wb") as f:
            header = {"format": "pt", SEAL: canonical_json(json.loads(meta_text))}  # as a reader parses it
            f.write(safetensors.torch.save(prepared, metadata=header))
        _fsync(st_tmp)
        record = {"format": FORMAT, "version": VERSION, "sha256": _sha256(st_tmp), "meta": meta}
        temps.append(json_tmp := _temp_path(json_path))
        _write_text(json_tmp, json.dumps(record, indent=1))
        backup = _keep_previous(st_path)
        os.replace(st_tmp, st_path)
        replaced = True
        os.replace(json_tmp, json_path)
        done = True
        _fsync_dir(st_path.parent)
    finally:
        if replaced and not done:  # new tensors beside the old JSON: undo
            if backup is not None:
                os.replace(backup, st_path)
            else:
                st_path.unlink()
        for temp in [*temps, backup]:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
    return st_path


def _read_record(json_path: Path) -> dict:
    if not json_path.exists():
        raise CheckpointError(f"checkpoint metadata {json_path} does not exist")
    raw = read_bytes(json_path, "checkpoint metadata file (.json)", max_bytes=1 << 28, error=CheckpointError)
    try:
        record = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "sha256" not in record:
        raise CheckpointError(f"{json_path} is not a {FORMAT} metadata file")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{json_path} has version {record.get('version')}; this code reads {VERSION}")
    if not isinstance(record.get("meta"), dict):
        raise CheckpointError(f"{json_path} holds no metadata object (its 'meta' is not a JSON object)")
    return record


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`, tensors placed on ``device``.

    Raises :class:`CheckpointError` naming the file when either file is missing, the JSON is
    invalid, the safetensors file does not match the recorded hash, or it is not safetensors.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(f"{d}/ckpt", {"w": torch.zeros(1)}, {})
        ...     tensors, meta = load_checkpoint(f"{d}/ckpt.safetensors", device="cpu")
        >>> tensors
        {'w': tensor([0.])}
        >>> load_checkpoint("no/such/ckpt")
        Traceback (most recent call last):
        ...
        cpic.train.checkpoint.CheckpointError: checkpoint metadata no/such/ckpt.json does not exist
    """
    st_path, json_path = checkpoint_paths(path)
    record = _read_record(json_path)
    if not st_path.exists():
        raise CheckpointError(f"checkpoint tensors {st_path} do not exist")
    data = _tensor_bytes(st_path)  # read once, through the guard: what is hashed is what is loaded
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        backup = _backup_path(st_path)  # a save killed between its two renames: the previous pair
        data = _tensor_bytes(backup) if backup.is_file() else b""
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise CheckpointError(
                f"{st_path} does not match the sha256 recorded in {json_path} (truncated or replaced?)"
            )
        st_path = backup
    try:
        loaded = safetensors.torch.load(data)
        header = _safetensors_header(data)
        sealed = (header.get("__metadata__") or {}).get(SEAL)
        # in the file's order, as safetensors.torch.load_file gives them; copies, as load()
        # views the immutable bytes it parsed and an optimiser updates its state in place
        order = sorted(loaded, key=lambda k: (header[k]["data_offsets"], k))
        tensors = {k: loaded[k].to(torch.device(device), copy=True) for k in order}
    except (safetensors.SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{st_path} is not a readable safetensors file: {e}") from None
    check_seal(json_path, st_path, record["meta"], sealed, CheckpointError)
    return tensors, record["meta"]


def _tensor_bytes(path: Path) -> bytes:
    """The bytes of a ``.safetensors`` file, read through :func:`cpic.util.guard.open_file`."""
    with open_file(path, "checkpoint tensor file (.safetensors)", error=CheckpointError) as fh:
        return fh.read()


def _safetensors_header(data: bytes) -> dict:
    """The JSON header of safetensors ``data`` that ``safetensors.torch.load`` accepted (an
    8-byte little-endian length, then the header: each tensor's dtype, shape, data offsets)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])


def _flatten(value: Any, path: tuple[str, ...], tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        key = "/".join(path)
        while key in tensors:  # distinct paths may join to the same key, e.g. {"a/b": x} and {"a": {"b": y}}
            key += "#"
        tensors[key] = value
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not _MARKERS & value.keys():
            return {k: _flatten(v, (*path, k), tensors) for k, v in value.items()}
        pairs = [[_flatten_key(k, path), _flatten(v, (*path, str(k)), tensors)] for k, v in value.items()]
        return {_DICT: pairs}
    if isinstance(value, (list, tuple)):
        items = [_flatten(v, (*path, str(i)), tensors) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {_TUPLE: items}
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    where = "/".join(path) or "the top level"
    raise TypeError(f"cannot store {type(value).__name__} at {where} in a checkpoint")


def _flatten_key(key: Any, path: tuple[str, ...]) -> Any:
    found: dict[str, Tensor] = {}
    encoded = _flatten(key, path, found)
    if found:
        where = "/".join(path) or "the top level"
        raise TypeError(f"cannot store a dict key holding tensors at {where}")
    return encoded


def flatten_state(state: dict) -> tuple[dict[str, Tensor], Any]:
    """Split a nested state (e.g. ``optimizer.state_dict()``) into flat tensors and a JSON skeleton.

    Tensor keys are the ``/``-joined paths to the tensors. The skeleton keeps every other value
    (ints, floats, bools, None, strings, lists, tuples, dicts with any such keys) with placeholders
    for the tensors; :func:`unflatten_state` rebuilds the state exactly.

    Example:
        >>> import torch
        >>> state = {"state": {0: {"step": torch.tensor(2.0)}}, "betas": (0.9, 0.99)}
        >>> tensors, skeleton = flatten_state(state)
        >>> tensors
        {'state/0/step': tensor(2.)}
        >>> skeleton["betas"]
        {'__tuple__': [0.9, 0.99]}
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(state, (), tensors)
    return tensors, skeleton


def _unflatten(node: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and _MARKERS & node.keys():
        ((marker, payload),) = node.items()
        if marker == _TENSOR:
            if payload not in tensors:
                raise CheckpointError(f"the skeleton names a tensor {payload!r} missing from the tensors")
            return tensors[payload]
        if marker == _TUPLE:
            return tuple(_unflatten(v, tensors) for v in payload)
        if marker == _FLOAT:
            return float(payload)
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in payload}
    return {k: _unflatten(v, tensors) for k, v in node.items()}


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> dict:
    """Rebuild the nested state that :func:`flatten_state` split into ``tensors`` and ``skeleton``.

    Example:
        >>> import torch
        >>> state = {"state": {0: {"step": torch.tensor(2.0)}}, "betas": (0.9, 0.99), "best": float("inf")}
        >>> unflatten_state(*flatten_state(state))
        {'state': {0: {'step': tensor(2.)}}, 'betas': (0.9, 0.99), 'best': inf}
    """
    state = _unflatten(skeleton, tensors)
    if not isinstance(state, dict):
        raise CheckpointError(f"the skeleton does not describe a dict but a {type(state).__name__}")
    return state


def rng_state(generator: torch.Generator | None = None) -> Tensor:
    """The state of ``generator`` (default: torch's global CPU generator) as a uint8 tensor.

    Example:
        >>> import torch
        >>> saved = rng_state()
        >>> first = torch.rand(2)
        >>> set_rng_state(saved)
        >>> torch.equal(torch.rand(2), first), saved.dtype
        (True, torch.uint8)
    """
    return (generator.get_state() if generator is not None else torch.get_rng_state()).clone()


def set_rng_state(state: Tensor, generator: torch.Generator | None = None) -> None:
    """Restore a state from :func:`rng_state` into ``generator`` (default: torch's global CPU generator).

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> saved = rng_state(gen)
        >>> first = torch.rand(3, generator=gen)
        >>> set_rng_state(saved, gen)
        >>> torch.equal(torch.rand(3, generator=gen), first)
        True
    """
    if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.ndim != 1:
        raise ValueError("state must be a 1-D uint8 tensor from rng_state()")
    state = state.to("cpu").contiguous()
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)
