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


def check_read_budget(text: str | int | float) -> str:
    """``text`` if it is a read budget: a share of a volume above 0 and at most 100%
    (``"0.5%"``) or a positive whole number of voxels (``"12000"``); else a ValueError.

    Example:
        >>> check_read_budget(" 0.5% "), check_read_budget(12000)
        ('0.5%', '12000')
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1] if raw.endswith("%") else raw)
    except ValueError:
        raise ValueError(
            f"a read budget is a share of the volume (0.5%) or a number of voxels, got {text!r}."
        ) from None
    if raw.endswith("%"):
        if not 0 < value <= 100:
            raise ValueError(f"a read budget share must be above 0% and at most 100%, got {text!r}.")
    elif value != int(value) or value < 1:
        raise ValueError(f"a read budget in voxels is a positive whole number, got {text!r}.")
    return raw


def voxel_budget(text: str | int | float, voxels: int) -> int:
    """The read budget ``text`` (:func:`check_read_budget`) in voxels of a volume of ``voxels``:
    at least 1, and a count must not exceed the volume.

    Example:
        >>> voxel_budget("0.5%", 256**3), voxel_budget("12000", 256**3), voxel_budget(100, 10**6)
        (83886, 12000, 100)
    """
    raw = check_read_budget(text)
    if raw.endswith("%"):
        return max(1, int(float(raw[:-1]) / 100 * voxels))
    if int(float(raw)) > voxels:
        raise ValueError(f"a read budget of {raw} voxels is more than the volume's {voxels}.")
    return int(float(raw))
