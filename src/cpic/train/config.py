"""Training options from a JSON file (``cpic train --config``), read with the input guard."""

from __future__ import annotations

import json

from cpic.util.guard import read_bytes

#: a config file is small; a pipe (``--config <(...)``) must deliver it within this many seconds
CONFIG_BYTES, CONFIG_PIPE_SECONDS = 1 << 20, 5.0


def read_config(path: str) -> dict:
    """The JSON object of option names and values in ``path`` (a regular file or a pipe), or
    one clear ``ValueError``.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        ...     _ = f.write('{"epochs": 3}')
        ...     f.flush()
        ...     read_config(f.name)
        {'epochs': 3}
    """
    text = read_bytes(path, "config file (JSON)", max_bytes=CONFIG_BYTES, pipe_timeout=CONFIG_PIPE_SECONDS)
    try:
        raw = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"config {path!r} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path!r} must hold a JSON object of option names and values.")
    return raw
