"""The seal of a checkpoint's metadata: its canonical JSON, kept in the safetensors header under
the file's sha256, so that metadata edited after saving is refused, naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the safetensors header key holding the canonical JSON of the metadata
SEAL = "cpic_meta"


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` (sorted keys, no spaces) that a seal compares.

    Example:
        >>> canonical_json({"b": 1, "a": [1.5, None]})
        '{"a":[1.5,null],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_seal(
    json_path: Path, st_path: Path, meta: dict, sealed: str | None, error: type[Exception]
) -> None:
    """Raise ``error`` when ``meta`` differs from the copy ``sealed`` in the tensors' header
    (or there is none), naming the file and the first key that differs.

    Example:
        >>> meta = {"config": {"rank": 2}}
        >>> paths = Path("m.json"), Path("m.safetensors")
        >>> check_seal(*paths, meta, canonical_json(meta), ValueError)
        >>> try:
        ...     check_seal(*paths, {"config": {"rank": 3}}, canonical_json(meta), ValueError)
        ... except ValueError as err:
        ...     print(str(err)[-51:])
        m.safetensors at config.rank (edited after saving?)
    """
    if sealed is None:
        raise error(
            f"{st_path} holds no sealed copy of its metadata (not written by save_checkpoint)"
        )
    if sealed == canonical_json(meta):
        return
    try:
        where = _first_difference(meta, json.loads(sealed)) or "the top level"
    except (json.JSONDecodeError, RecursionError):
        where = "the top level"
    raise error(
        f"{json_path}: its metadata differs from the copy sealed in {st_path} at {where} "
        "(edited after saving?)"
    )


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first key path (``config.rank``) where ``a`` and ``b`` differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}{key}"
            found = _first_difference(a[key], b[key], f"{path}{key}.")
            if found is not None:
                return found
        return None
    return None if canonical_json(a) == canonical_json(b) else path.rstrip(".") or None
