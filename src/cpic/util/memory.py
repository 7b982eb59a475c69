"""How much memory a load may take: the system's available memory and the default budget."""

from __future__ import annotations

from cpic.util.checks import check_int

#: the share of the available memory a load may take when no budget is given
DEFAULT_FRACTION = 0.5


def available_memory(device=None) -> int | None:
    """Bytes free on ``device``: CUDA's free memory for a CUDA device, else what the system can
    still give without swapping (``MemAvailable``); None if unknown.

    Example:
        >>> have = available_memory()
        >>> have is None or have > 0
        True
    """
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_budget(budget: int | None = None) -> tuple[int | None, str]:
    """``(bytes, how it was chosen)``: ``budget`` when given, else half the available memory
    (None where the system does not say).

    Example:
        >>> memory_budget(2**30)
        (1073741824, 'the memory budget')
    """
    if budget is not None:
        check_int("memory_budget (bytes)", budget)
        return budget, "the memory budget"
    have = available_memory()
    if have is None:
        return None, "unknown"
    share = int(have * DEFAULT_FRACTION)
    return share, f"the default memory budget (half the {format_bytes(have)} available)"


def memory_shortfall(need: int, budget: int | None, device=None) -> tuple[int, str] | None:
    """``(bytes there are, what they are)`` when ``need`` bytes exceed ``budget`` (when given and
    below what ``device`` has free) or the free memory of ``device``; None when ``need`` fits.

    Example:
        >>> memory_shortfall(2**20, 2**10)
        (1024, 'is the memory budget')
        >>> memory_shortfall(1, None) is None
        True
    """
    have, what = available_memory(device), "is available"
    if budget is not None and (have is None or budget < have):
        have, what = budget, "is the memory budget"
    return (have, what) if have is not None and need > have else None


def format_bytes(n: int | float) -> str:
    """A byte count for people.

    Example:
        >>> format_bytes(4 * 2**30), format_bytes(1536), format_bytes(12)
        ('4.0 GiB', '1.5 KiB', '12 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"
