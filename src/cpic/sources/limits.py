"""What opening a volume may do: follow references to other files (HDF5 external storage,
external links, virtual datasets; Zarr chunks linked out of the store) and how much memory
a load may take. Refusals name the file and what was found."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from cpic.sources.base import SourceError
from cpic.util.guard import check_path
from cpic.util.memory import format_bytes, memory_budget

_DEFAULTS: ContextVar[dict | None] = ContextVar("cpic_open_defaults", default=None)


@dataclass(frozen=True)
class LoadLimits:
    """``allow_external``: whether a volume may make cpic read files the user did not name;
    ``budget``: the bytes a load may allocate (None: unknown, unchecked), ``budget_is`` says
    where that number came from."""

    allow_external: bool = False
    budget: int | None = None
    budget_is: str = "the memory budget"

    @classmethod
    def resolve(cls, allow_external: bool | None = None, budget: int | None = None) -> LoadLimits:
        """The limits of one ``open_volume`` call: its arguments, else those of the enclosing
        :func:`open_defaults`, else external references refused and half the available memory.

        Example:
            >>> LoadLimits.resolve(budget=2**20)
            LoadLimits(allow_external=False, budget=1048576, budget_is='the memory budget')
        """
        defaults = _DEFAULTS.get() or {}
        if allow_external is None:
            allow_external = bool(defaults.get("allow_external", False))
        if budget is None:
            budget = defaults.get("memory_budget")
        try:
            size, how = memory_budget(budget)
        except ValueError as err:
            raise SourceError(str(err)) from None
        return cls(bool(allow_external), size, how)

    def require_memory(self, name: str, needed: int, what: str, hint: str = "") -> None:
        """Refuse a load of ``needed`` bytes (``what``) above the budget, before allocating it.

        Example:
            >>> try:
            ...     LoadLimits(budget=2**20).require_memory("v.gz", 2**30, "1024^3 uint8")
            ... except SourceError as err:
            ...     print(err)
            v.gz: loading it needs 1.0 GiB in memory (1024^3 uint8), more than the memory budget (1.0 MiB).
        """
        if self.budget is not None and needed > self.budget:
            need, have = format_bytes(needed), format_bytes(self.budget)
            if need == have:  # too close to tell apart rounded
                need, have = f"{needed} B", f"{self.budget} B"
            raise SourceError(
                f"{name}: loading it needs {need} in memory ({what}), "
                f"more than {self.budget_is} ({have}){hint}."
            )

    def require_external(self, name: str, found: str, files: list[str | os.PathLike[str]]) -> None:
        """Refuse a volume that reads ``files`` besides itself (``found`` says how) unless external
        files are allowed; allowed ones must still pass :func:`cpic.util.guard.check_path`.

        Example:
            >>> try:
            ...     LoadLimits().require_external("x.h5:/v", "reads external raw storage in", ["/etc/passwd"])
            ... except SourceError as err:
            ...     print(err)  # doctest: +NORMALIZE_WHITESPACE
            x.h5:/v: reads external raw storage in /etc/passwd, a file not named; refused
            (allow_external=True or --allow-external reads it).
        """
        if not self.allow_external:
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            shown = ", ".join(str(f) for f in files[:3]) + more
            raise SourceError(
                f"{name}: {found} {shown}, a file not named; refused "
                "(allow_external=True or --allow-external reads it)."
            )
        for file in files:
            if Path(file).exists():
                check_path(file, f"file read by {name}", folder=Path(file).is_dir(), error=SourceError)


@contextlib.contextmanager
def open_defaults(*, allow_external: bool | None = None, memory_budget: int | None = None) -> Iterator[None]:
    """Within the block, ``open_volume`` calls that do not pass ``allow_external`` or
    ``memory_budget`` use these (a command sets them once from its flags).

    Example:
        >>> with open_defaults(memory_budget=2**20):
        ...     LoadLimits.resolve().budget
        1048576
    """
    given = {"allow_external": allow_external, "memory_budget": memory_budget}
    token = _DEFAULTS.set({**(_DEFAULTS.get() or {}), **{k: v for k, v in given.items() if v is not None}})
    try:
        yield
    finally:
        _DEFAULTS.reset(token)
