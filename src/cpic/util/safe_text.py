"""Text outputs other programs parse: strict JSON (no NaN or Infinity) and CSV cells that a
spreadsheet does not run as formulas."""

from __future__ import annotations

import json
import math

#: the first characters that make a spreadsheet read a cell as a formula (OWASP's list)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def finite_or_null(value, where: str = "", found: list[str] | None = None):
    """``value`` with every non-finite float replaced by ``None``; the JSON path of each one
    replaced is appended to ``found``.

    Example:
        >>> found = []
        >>> finite_or_null({"loss": float("nan"), "rows": [1.0, float("inf")]}, found=found), found
        ({'loss': None, 'rows': [1.0, None]}, ['loss', 'rows[1]'])
    """
    if isinstance(value, float) and not math.isfinite(value):
        if found is not None:
            found.append(where or "(the value)")
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def strict_json(document: dict, **dumps) -> str:
    """``document`` as strict JSON (RFC 8259): NaN and infinities become ``null`` and are named
    in a ``"warnings"`` list, so any JSON parser reads the output.

    Example:
        >>> strict_json({"psnr_db": float("inf"), "voxels": 3})
        '{"psnr_db": null, "voxels": 3, "warnings": ["psnr_db was inf or NaN (not JSON): written as null"]}'
    """
    found: list[str] = []
    clean = finite_or_null(document, found=found)
    if found:
        notes = [f"{where} was inf or NaN (not JSON): written as null" for where in found]
        clean["warnings"] = [*clean.get("warnings", []), *notes]
    return json.dumps(clean, allow_nan=False, **dumps)


def csv_cell(value):
    """``value`` safe to put in a CSV cell: a string starting with ``= + - @``, a tab or a
    carriage return gets a leading ``'`` so a spreadsheet shows it as text instead of running
    it as a formula; numbers are kept as they are (a negative number is not a formula).

    Example:
        >>> csv_cell('=HYPERLINK("http://x")'), csv_cell("-1.5"), csv_cell(-1.5), csv_cell("tumour")
        ('\\'=HYPERLINK("http://x")', '-1.5', -1.5, 'tumour')
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value
