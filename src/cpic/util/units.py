"""Quantities as short human-readable text."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """A number of bytes in B, KiB, MiB or GiB.

    Example:
        >>> human_bytes(1536), human_bytes(100), human_bytes(3 * 2**30)
        ('1.5 KiB', '100 B', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns
