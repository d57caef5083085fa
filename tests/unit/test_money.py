"""Fen and yuan conversions are exact, and anything inexact is refused."""

from __future__ import annotations

import pytest

from chalicelib.payments.money import MoneyError, fen_to_yuan, require_fen, yuan_to_fen


@pytest.mark.parametrize(
    ("text", "fen"),
    [("0", 0), ("0.01", 1), ("0.1", 10), ("12.30", 1230), ("99999.99", 9999999), ("1", 100)],
)
def test_yuan_to_fen_is_exact(text: str, fen: int) -> None:
    assert yuan_to_fen(text) == fen


@pytest.mark.parametrize("text", ["", "-1", "1.234", "01", "1e3", "0.1.2", " ", "¥1", "NaN", "1,000"])
def test_malformed_yuan_is_refused(text: str) -> None:
    with pytest.raises(MoneyError):
        yuan_to_fen(text)


@pytest.mark.parametrize(("fen", "text"), [(0, "0.00"), (1, "0.01"), (10, "0.10"), (1230, "12.30")])
def test_fen_to_yuan_round_trips(fen: int, text: str) -> None:
    assert fen_to_yuan(fen) == text
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@pytest.mark.parametrize("value", [1.5, True, "100", -1, None])
def test_only_non_negative_integers_are_fen(value: object) -> None:
    with pytest.raises(MoneyError):
        require_fen(value)
