"""Optional dependencies: found before any work starts, or one error naming the pip command."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ValueError):
    """An optional package that a requested output needs is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or a :class:`MissingDependency` saying ``purpose`` needs it and which
    extra of cpic installs it; call it before any work whose output needs ``module``.

    Example:
        >>> require("json", "io", "tables").__name__
        'json'
        >>> try:
        ...     require("no_such_package", "plot", "figures")
        ... except MissingDependency as err:
        ...     print(err)
        figures need no_such_package: pip install 'cpic[plot]'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{purpose} need {module}: pip install 'cpic[{extra}]'") from None
