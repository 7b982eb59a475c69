"""Labelled volume collections: in-memory lists or a CSV manifest of paths, labels and extras."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from cpic.sources import VolumeSource, open_volume
from cpic.util.guard import read_bytes

#: the most classes integer labels may imply (ids 0..N-1): more is a typo or an identifier column
MAX_CLASS_ID = 100_000
#: a manifest's largest size: it is read whole
MANIFEST_BYTES = 1 << 28


class VolumeDataset:
    """Volumes (sources, or paths opened on first use) with targets and optional extra features.

    ``targets`` are class ids, real values, or ``None`` (reconstruction). ``classes`` names the
    class ids when the labels were strings. ``extra`` is ``[N, E]`` per-volume features (age...).

    Example:
        >>> import torch, cpic
        >>> vols = [cpic.open_volume(torch.rand(8, 8, 8)) for _ in range(4)]
        >>> data = VolumeDataset(vols, targets=[0, 1, 0, 1])
        >>> train, val = data.split(0.5, seed=0)
        >>> len(train), len(val), sorted(val.targets.tolist())
        (2, 2, [0, 1])
    """

    def __init__(
        self,
        sources: Sequence[VolumeSource | str | Path],
        targets=None,
        extra=None,
        names: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        open_kwargs: dict | None = None,
    ):
        self._items = list(sources)
        n = len(self._items)
        if n == 0:
            raise ValueError("a dataset needs at least one volume.")
        self.targets = None if targets is None else _as_target_tensor(targets)
        if self.targets is not None and len(self.targets) != n:
            raise ValueError(f"targets has {len(self.targets)} entries for {n} volumes.")
        self.extra = None if extra is None else torch.as_tensor(extra, dtype=torch.float32)
        if self.extra is not None and (self.extra.dim() != 2 or len(self.extra) != n):
            raise ValueError(f"extra must be [{n}, E] (one row per volume), got {tuple(self.extra.shape)}.")
        self.names = list(names) if names is not None else [_name_of(s, i) for i, s in enumerate(self._items)]
        self.classes = list(classes) if classes is not None else None
        self.open_kwargs = dict(open_kwargs or {})

    def __len__(self) -> int:
        return len(self._items)

    def source(self, i: int) -> VolumeSource:
        """Volume ``i``, opened (and kept) on first use."""
        item = self._items[i]
        if not isinstance(item, VolumeSource):
            item = open_volume(item, **self.open_kwargs)
            self._items[i] = item
        return item

    def opened(self) -> dict[int, VolumeSource]:
        """The volumes opened so far, by position (what :meth:`source` has returned).

        Example:
            >>> import torch, cpic
            >>> data = VolumeDataset([cpic.open_volume(torch.zeros(4, 4, 4)), "later.npy"])
            >>> list(data.opened())
            [0]
        """
        return {i: item for i, item in enumerate(self._items) if isinstance(item, VolumeSource)}

    def subset(self, indices: Sequence[int]) -> VolumeDataset:
        """The volumes at ``indices``, sharing opened sources."""
        indices = list(indices)
        part = VolumeDataset.__new__(VolumeDataset)
        part._items = [self._items[i] for i in indices]
        part.targets = None if self.targets is None else self.targets[indices]
        part.extra = None if self.extra is None else self.extra[indices]
        part.names = [self.names[i] for i in indices]
        part.classes, part.open_kwargs = self.classes, self.open_kwargs
        return part

    def split(self, fraction: float, seed: int = 0) -> tuple[VolumeDataset, VolumeDataset]:
        """``(rest, held_out)`` with about ``fraction`` of the volumes held out (for validation).

        With class-id targets the split is stratified: each class holds out ``fraction`` of its
        volumes, rounded to the nearest count but at least one and at most all but one, so every
        class is both trained on and validated. A class with a single volume cannot be split and
        is refused by name. Other targets (real values, none) get a random split. ``seed`` fixes
        which volumes are held out.

        Example:
            >>> import torch, cpic
            >>> vols = [cpic.open_volume(torch.rand(4, 4, 4)) for _ in range(8)]
            >>> train, val = VolumeDataset(vols, targets=[0, 0, 0, 0, 0, 0, 1, 1]).split(0.2, seed=0)
            >>> sorted(val.targets.tolist()), len(train)
            ([0, 1], 6)
        """
        if not 0 < fraction < 1:
            raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}.")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen)
        if self.targets is not None and not self.targets.is_floating_point() and self.targets.dim() == 1:
            labels = self.targets[order]
            classes, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
            single = classes[counts == 1].tolist()
            if single:
                raise ValueError(self._single_volume_message(single, fraction))
            ranks = torch.empty_like(order)  # the position of each volume within its class
            for c in range(len(classes)):
                members = (inverse == c).nonzero().flatten()
                ranks[members] = torch.arange(len(members))
            held_per_class = torch.floor(counts * fraction + 0.5).long().clamp(1, None).minimum(counts - 1)
            held = ranks < held_per_class[inverse]
            held_idx, rest_idx = order[held], order[~held]
        else:
            if len(self) < 2:
                raise ValueError(
                    "splitting off a validation part needs at least 2 volumes, the dataset has 1; "
                    "add volumes, pass a validation manifest (cpic train --val-manifest), or train on "
                    "everything (--val 0)."
                )
            k = min(max(1, round(fraction * len(self))), len(self) - 1)
            held_idx, rest_idx = order[:k], order[k:]
        return self.subset(sorted(rest_idx.tolist())), self.subset(sorted(held_idx.tolist()))

    def _single_volume_message(self, class_ids: list[int], fraction: float) -> str:
        named = [
            repr(self.classes[c]) if self.classes is not None and 0 <= c < len(self.classes) else str(c)
            for c in class_ids
        ]
        which = f"class {named[0]} has" if len(named) == 1 else f"classes {', '.join(named)} each have"
        return (
            f"cannot split at {fraction} stratified by class: {which} 1 volume, and a class needs 2 or "
            "more (one to train on, one to validate); add volumes of that class, pass a validation "
            "manifest (cpic train --val-manifest), or train on everything (--val 0)."
        )

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        target: str | None = "label",
        extra: Sequence[str] = (),
        path_column: str = "path",
        task: str = "classification",
        **open_kwargs,
    ) -> VolumeDataset:
        """A dataset from a CSV manifest: one row per volume with its ``path`` (relative to the
        CSV's folder or absolute), a ``target`` column, and ``extra`` numeric columns.

        For ``task="classification"`` string labels become class ids in sorted order (kept in
        ``classes``); integer labels are used as they are (ids from 0 to ``MAX_CLASS_ID``).
        Labels that differ only by case or surrounding spaces (``"Tumour"``, ``"tumour "``) are
        refused, naming both spellings and their rows, as are extra features or numeric targets
        that are NaN or infinite. Other tasks need numbers. The manifest is read through
        :func:`cpic.util.guard.read_bytes` (a FIFO or device is refused, never waited on).

        Example:
            >>> import tempfile, numpy as np
            >>> from pathlib import Path
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     np.save(Path(tmp) / "a.npy", np.zeros((8, 8, 8), np.float32))
            ...     _ = (Path(tmp) / "m.csv").write_text("path,label,age\\na.npy,healthy,61\\n")
            ...     data = VolumeDataset.from_csv(Path(tmp) / "m.csv", extra=["age"])
            ...     data.classes, data.targets.tolist(), data.extra.tolist(), data.source(0).shape
            (['healthy'], [0], [[61.0]], (8, 8, 8))
        """
        path = Path(path)
        rows = _read_rows(path)
        needed = [path_column] + ([target] if target else []) + list(extra)
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            raise ValueError(f"manifest {str(path)!r} lacks the column(s) {missing}; it has {list(rows[0])}.")
        _check_cells(path, rows, [path_column] + ([target] if target else []))
        _check_unique(path, rows, path_column)
        sources = [_resolve(path.parent, row[path_column]) for row in rows]
        targets = classes = None
        if target:
            targets, classes = _parse_targets(path, [row[target] for row in rows], target, task)
        extras = None
        if extra:
            extras = [[_number(path, i, c, row[c]) for c in extra] for i, row in enumerate(rows)]
        names = [Path(row[path_column]).name for row in rows]
        return cls(sources, targets, extras, names=names, classes=classes, open_kwargs=open_kwargs)


def manifest_files(manifest: str | Path, path_column: str = "path") -> list[Path]:
    """The files a run on ``manifest`` reads: the manifest, then the volume paths it lists
    (resolved as :meth:`VolumeDataset.from_csv` resolves them; nothing is opened), so that an
    output can be checked against them before any work.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "m.csv").write_text("path,label\\na.npy,x\\n/data/b.npy,y\\n")
        ...     [p.relative_to(tmp).as_posix() if p.is_relative_to(tmp) else p.as_posix()
        ...      for p in manifest_files(Path(tmp) / "m.csv")]
        ['m.csv', 'a.npy', '/data/b.npy']
    """
    path = Path(manifest)
    rows = _read_rows(path)
    if path_column not in rows[0]:
        raise ValueError(f"manifest {str(path)!r} lacks the column {path_column!r}; it has {list(rows[0])}.")
    _check_cells(path, rows, [path_column])
    return [path, *(_resolve(path.parent, row[path_column]) for row in rows)]


def _read_rows(path: Path) -> list[dict]:
    """The rows of a CSV manifest; a clear error for an empty file, text that is not UTF-8 or
    CSV, and rows with fewer or more fields than the header."""
    if not path.exists():
        raise ValueError(f"manifest {str(path)!r} does not exist.")
    try:
        data = read_bytes(path, "manifest (CSV)", max_bytes=MANIFEST_BYTES)
    except ValueError as err:
        raise ValueError(f"manifest {str(path)!r}: {str(err).removeprefix(f'{path}: ')}") from None
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        rows = list(reader)
        header = reader.fieldnames
    except UnicodeDecodeError:
        raise ValueError(f"manifest {str(path)!r} is not UTF-8 text; expected a CSV file.") from None
    except csv.Error as err:
        raise ValueError(f"manifest {str(path)!r} is not a readable CSV file ({err}).") from None
    if not rows:
        raise ValueError(f"manifest {str(path)!r} has no rows.")
    for i, row in enumerate(rows):
        if None in row or None in row.values():
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
            raise ValueError(
                f"manifest {str(path)!r}, row {i + 2}: has {fields} field(s), the header {len(header)}."
            )
    return rows


def _check_cells(path: Path, rows: list[dict], columns: list[str]) -> None:
    for i, row in enumerate(rows):
        for column in columns:
            if not row[column].strip():
                raise ValueError(f"manifest {str(path)!r}, row {i + 2}: column {column!r} is empty.")


def _check_unique(path: Path, rows: list[dict], column: str) -> None:
    """Refuse a volume listed twice (it would count twice, or sit in both training and validation)."""
    seen: dict[Path, int] = {}
    for i, row in enumerate(rows):
        resolved = _resolve(path.parent, row[column].strip()).resolve()
        if resolved in seen:
            raise ValueError(
                f"manifest {str(path)!r}, row {i + 2}: repeats the path {row[column]!r} "
                f"of row {seen[resolved]}."
            )
        seen[resolved] = i + 2


def _as_target_tensor(targets) -> Tensor:
    try:
        return torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"targets must be numbers or integer class ids, got {list(targets)[:3]!r}...; map string "
            "labels to ids first (VolumeDataset.from_csv does this and keeps the names in .classes)."
        ) from None


def _name_of(item, i: int) -> str:
    return item.name if isinstance(item, VolumeSource) else Path(item).name if item else str(i)


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def _number(manifest: Path, row: int, column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"manifest {str(manifest)!r}, row {row + 2}: column {column!r} must be a number, got {value!r}."
        ) from None
    if not math.isfinite(number):
        raise ValueError(
            f"manifest {str(manifest)!r}, row {row + 2}: column {column!r} is {value.strip()!r}; "
            "expected a finite number (fill in or drop the missing value)."
        )
    return number


def _class_ids(manifest: Path, values: list[str], column: str) -> Tensor:
    """Integer labels as class ids: 0 or more, and not so large that they imply a huge head."""
    ids = [int(v) for v in values]
    for bad in (min(ids), max(ids)):
        if not 0 <= bad <= MAX_CLASS_ID:
            row = ids.index(bad) + 2
            raise ValueError(
                f"manifest {str(manifest)!r}, row {row}: column {column!r} holds the class id {bad}; "
                f"integer labels are class ids 0..N-1 (at most {MAX_CLASS_ID}), and this would make "
                f"{'no valid class' if bad < 0 else f'a head of {bad + 1} outputs'}; use class names "
                "(text labels) for sparse or negative codes."
            )
    return torch.tensor(ids)


def _check_spellings(manifest: Path, values: list[str], column: str) -> None:
    """Refuse two labels that differ only by case or surrounding spaces: almost always one class
    written two ways, which would silently become two classes."""
    first: dict[str, tuple[str, int]] = {}
    for i, value in enumerate(values):
        key = value.strip().casefold()
        seen, row = first.setdefault(key, (value, i + 2))
        if seen != value:
            raise ValueError(
                f"manifest {str(manifest)!r}: column {column!r} spells one label two ways, {seen!r} "
                f"(row {row}) and {value!r} (row {i + 2}); labels that differ only by case or spaces "
                "are refused: write each class one way."
            )


def _parse_targets(manifest: Path, values: list[str], column: str, task: str) -> tuple[Tensor, list | None]:
    if task == "classification":
        if all(v.strip().lstrip("-").isdigit() for v in values):
            return _class_ids(manifest, values, column), None
        _check_spellings(manifest, values, column)
        classes = sorted(set(values))
        lookup = {c: i for i, c in enumerate(classes)}
        return torch.tensor([lookup[v] for v in values]), classes
    return torch.tensor([_number(manifest, i, column, v) for i, v in enumerate(values)]), None
