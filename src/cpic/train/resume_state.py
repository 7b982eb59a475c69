"""What a checkpoint needs beyond weights and optimiser for a resumed run to end bit-identical to an
uninterrupted one: the pivots of every volume, the batch-order generator and the random states,
and for reconstruction models (whose loss samples the voxels read so far) each volume's read voxels.

Pivots are kept in memory keyed by the volume objects; in a checkpoint each is labelled by its
dataset and position (``"train/3"``, ``"val/0"``), which the resumed run maps back to its own
volume objects. In a distributed job every rank keeps the pivots of the volumes it owns: they are
gathered for rank 0's checkpoint, and on resume each rank takes back those of its own volumes
(on any number of ranks).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from cpic.nn import CPIC
from cpic.train.checkpoint import flatten_state, rng_state, set_rng_state, unflatten_state
from cpic.train.dataset import VolumeDataset
from cpic.train.distributed import Distributed
from cpic.util import write_text_atomic

#: tensor-name prefixes of the pivots and of the voxels read (reconstruction) in a checkpoint
PIVOTS, READS = "pivots/", "reads/"


def _labels(datasets: Mapping[str, VolumeDataset | None]) -> dict[int, str]:
    """``id(source) -> "name/position"`` for every opened volume of ``datasets``."""
    labels = {}
    for name, data in datasets.items():
        if data is not None:
            for i, source in data.opened().items():
                labels.setdefault(id(source), f"{name}/{i}")
    return labels


def save_state(
    model: CPIC,
    batches: torch.Generator,
    datasets: Mapping[str, VolumeDataset | None],
    distributed: Distributed | None = None,
) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, meta)`` of the run state: random generators and the model's pivots (in a
    distributed job, those of every rank: a collective, called on every rank).

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Regression
        >>> data = VolumeDataset([cpic.open_volume(torch.rand(8, 8, 8)) for _ in range(2)], [0.0, 1.0])
        >>> model = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2)
        >>> _ = model([data.source(0), data.source(1)], keys=[data.source(0), data.source(1)])
        >>> tensors, meta = save_state(model, torch.Generator(), {"train": data})
        >>> sorted(meta["pivots"]["items"]), "rng/batches" in tensors
        (['train/0', 'train/1'], True)
    """
    labels = _labels(datasets)
    pivots = _to_cpu(model.pivots.state(lambda key: labels.get(id(key))))
    reads = {}
    if not model.supervised:  # its loss samples the voxels read so far
        for name, data in datasets.items():
            for i, source in ({} if data is None else data.opened()).items():
                reads[f"{name}/{i}"] = torch.from_numpy(source.stats.voxel_ids().copy())
    if distributed is not None and distributed.active:
        pivots, reads = _merge(distributed.gather_objects((pivots, reads)))
    tensors, skeleton = flatten_state(pivots)
    out = {PIVOTS + k: v for k, v in tensors.items()}
    out.update({READS + k: v for k, v in reads.items()})
    out["rng/global"] = rng_state()
    out["rng/model"] = rng_state(model._generator)
    out["rng/batches"] = rng_state(batches)
    return out, {"pivots": skeleton}


def _to_cpu(state: dict) -> dict:
    """A pivot state with its index tensors on the CPU (to travel between ranks and to disk)."""
    items = {
        name: {
            **item,
            "left": [t.cpu() for t in item["left"]],
            "right": [t.cpu() for t in item["right"]],
            "attached": None if item.get("attached") is None else item["attached"].cpu(),
        }
        for name, item in state["items"].items()
    }
    return {**state, "items": items}


def _merge(gathered: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One pivot state and one set of reads from every rank's (rank 0's counters, all items)."""
    pivots = {**gathered[0][0], "items": {}}
    reads: dict = {}
    for rank_pivots, rank_reads in gathered:
        for name, item in rank_pivots["items"].items():
            pivots["items"].setdefault(name, item)
        for name, ids in rank_reads.items():
            reads.setdefault(name, ids)
    return pivots, reads


def restore_state(
    tensors: dict[str, Tensor],
    meta: dict,
    model: CPIC,
    batches: torch.Generator,
    datasets: Mapping[str, VolumeDataset | None],
    distributed: Distributed | None = None,
) -> None:
    """Put back what :func:`save_state` saved (a checkpoint without pivots or the batch
    generator, from an older cpic, restores what it has). In a distributed job each rank takes
    the pivots and reads of the volumes it evaluates (``distributed.share``) and opens no other.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Regression
        >>> data = VolumeDataset([cpic.open_volume(torch.rand(8, 8, 8)) for _ in range(2)], [0.0, 1.0])
        >>> model = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2)
        >>> _ = model([data.source(0)], keys=[data.source(0)])
        >>> tensors, meta = save_state(model, torch.Generator(), {"train": data})
        >>> again = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2)
        >>> restore_state(tensors, meta, again, torch.Generator(), {"train": data})
        >>> data.source(0) in again.pivots, again.pivots.counts == model.pivots.counts
        (True, True)
    """
    set_rng_state(tensors["rng/global"])
    set_rng_state(tensors["rng/model"], model._generator)
    if "rng/batches" in tensors:
        set_rng_state(tensors["rng/batches"], batches)
    mine = _ownership(datasets, distributed)
    for key, ids in tensors.items():
        if key.startswith(READS) and mine(key[len(READS) :]):
            _source(datasets, key[len(READS) :]).stats.add_voxels(ids.numpy())
    if "pivots" not in meta:
        return
    device = next(model.parameters()).device
    flat = {k[len(PIVOTS) :]: v.to(device) for k, v in tensors.items() if k.startswith(PIVOTS)}
    state = unflatten_state(flat, meta["pivots"])
    state["items"] = {label: item for label, item in state["items"].items() if mine(label)}
    model.pivots.load_state(state, lambda label: _source(datasets, label))


def _ownership(datasets: Mapping[str, VolumeDataset | None], distributed: Distributed | None):
    """Whether a ``"name/position"`` label is a volume this rank evaluates (every one without a job)."""
    if distributed is None or not distributed.active:
        return lambda label: True
    shares = {name: set(distributed.share(len(data))) for name, data in datasets.items() if data is not None}

    def mine(label: str) -> bool:
        name, _, position = label.rpartition("/")
        return position.isdigit() and int(position) in shares.get(name, ())

    return mine


def _source(datasets: Mapping[str, VolumeDataset | None], label: str):
    """The volume a ``"name/position"`` label of :func:`save_state` stands for in this run."""
    name, _, position = label.rpartition("/")
    data = datasets.get(name)
    if data is None or not position.isdigit() or int(position) >= len(data):
        raise ValueError(f"the checkpoint holds state of volume {label!r}, which this run does not have.")
    return data.source(int(position))


def sync_log(path: str | Path, rows: list[dict]) -> None:
    """Make a CSV log (one line per epoch, as ``fit(log_csv=...)`` appends) hold exactly the
    epochs of a resumed checkpoint's ``rows``: a run killed between its checkpoint and its log
    line leaves the log an epoch behind, one killed after logging an epoch it then redoes would
    log that epoch twice. Rewritten atomically, and only when it differs.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     log = Path(d) / "log.csv"
        ...     _ = log.write_text("epoch,train_loss\\n1,0.5\\n2,0.4\\n3,0.3\\n")   # epoch 3 was lost
        ...     sync_log(log, [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}])
        ...     log.read_text().split()
        ['epoch,train_loss', '1,0.5', '2,0.4']
    """
    path = Path(path)
    header, logged = None, []
    if path.exists():
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            logged = [row.get("epoch") for row in reader]
            header = reader.fieldnames
    if logged == [str(row["epoch"]) for row in rows]:
        return
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=header or list(rows[0]), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())
