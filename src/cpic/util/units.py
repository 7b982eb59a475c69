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


def voxel_budget(text: str | int | float, voxels: int) -> int:
    """A read budget given as a share of a volume's ``voxels`` (``"0.5%"``) or a count of voxels
    (``"12000"``, ``12000``) as a number of voxels, at least 1 and at most ``voxels``.

    Example:
        >>> voxel_budget("0.5%", 256**3), voxel_budget("12000", 256**3), voxel_budget(100, 10**6)
        (83886, 12000, 100)
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 * voxels if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(
            f"a read budget is a percentage of the volume (0.5%) or a count of voxels, got {text!r}."
        ) from None
    if not raw.endswith("%") and value != int(value):
        raise ValueError(f"a read budget in voxels is a whole number, got {text!r}.")
    if not 1 <= value <= voxels:
        raise ValueError(
            f"a read budget must be between 1 voxel and the whole volume ({voxels} voxels, 100%), "
            f"got {text!r}."
        )
    return int(value)
