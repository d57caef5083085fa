"""A doctor's wallet: what is pending (accepted, not yet confirmed), available and being paid out.

Example
-------
>>> wallet("d1")  # doctest: +SKIP
{'currency': 'CNY', 'pending_fen': 45000, 'available_fen': 0, 'payout_fen': 0}
"""

from __future__ import annotations

from typing import Any

from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance


def wallet(doctor_id: str) -> dict[str, Any]:
    """The doctor's three balances in fen, read consistently."""
    return {
        "currency": "CNY",
        "pending_fen": balance(accounts.doctor_pending(doctor_id)),
        "available_fen": balance(accounts.doctor_available(doctor_id)),
        "payout_fen": balance(accounts.doctor_payout(doctor_id)),
    }
