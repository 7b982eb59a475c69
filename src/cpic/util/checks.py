"""One check for the integer parameters every layer takes (ranks, sizes, counts)."""

from __future__ import annotations

from numbers import Integral


def check_int(
    name: str,
    value,
    low: int = 1,
    *,
    odd: bool = False,
    optional: bool = False,
    error: type[ValueError] = ValueError,
) -> None:
    """Refuse ``value`` unless it is an integer ``>= low`` (Python or NumPy; odd with ``odd``;
    ``None`` allowed with ``optional``), raising ``error`` with one message naming ``name`` and
    what was expected.

    Example:
        >>> check_int("rank", 3)
        >>> try:
        ...     check_int("patch", 4, odd=True)
        ... except ValueError as err:
        ...     print(err)
        patch must be an odd integer >= 1, got 4.
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (odd and value % 2 == 0):
        what = f"an odd integer >= {low}" if odd else f"an integer >= {low}"
        raise error(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}.")
