"""Money is integer fen (分), CNY, everywhere; yuan strings exist only at provider boundaries.

Example
-------
>>> yuan_to_fen("12.30")
1230
>>> fen_to_yuan(1230)
'12.30'
"""

from __future__ import annotations

import re

_YUAN = re.compile(r"^(0|[1-9]\d{0,11})(?:\.(\d{1,2}))?$")


class MoneyError(ValueError):
    """An amount that is not a valid, exact amount of money."""


def require_fen(value: object) -> int:
    """Accept a non-negative integer number of fen; refuse floats, bools and strings.

    >>> require_fen(100)
    100
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise MoneyError(f"an amount must be an integer number of fen, got {value!r}")
    if value < 0:
        raise MoneyError(f"an amount cannot be negative, got {value}")
    return value


def yuan_to_fen(text: str) -> int:
    """Convert a yuan string with at most two decimals exactly, never through float.

    >>> yuan_to_fen("0.01")
    1
    """
    match = _YUAN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise MoneyError(f"not a yuan amount with at most two decimals: {text!r}")
    whole, fraction = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(fraction)


def fen_to_yuan(fen: int) -> str:
    """Format fen as a yuan string with two decimals.

    >>> fen_to_yuan(5)
    '0.05'
    """
    fen = require_fen(fen)
    return f"{fen // 100}.{fen % 100:02d}"
