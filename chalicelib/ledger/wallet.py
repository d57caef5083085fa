"""A doctor's wallet: what is pending (accepted, not yet confirmed), available, being paid out, and owed.

``owed_fen`` is what a refund for a service not delivered took back beyond the available
balance; the next earnings (a release, a tip) pay it back before they become available.

Example
-------
>>> wallet("d1")  # doctest: +SKIP
{'currency': 'CNY', 'pending_fen': 45000, 'available_fen': 0, 'payout_fen': 0, 'owed_fen': 0}
"""

from __future__ import annotations

from typing import Any

from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance


def wallet(doctor_id: str) -> dict[str, Any]:
    """The doctor's balances in fen, read consistently."""
    return {
        "currency": "CNY",
        "pending_fen": balance(accounts.doctor_pending(doctor_id)),
        "available_fen": balance(accounts.doctor_available(doctor_id)),
        "payout_fen": balance(accounts.doctor_payout(doctor_id)),
        "owed_fen": -balance(accounts.doctor_receivable(doctor_id)),
    }


def earnings(doctor_id: str, amount_fen: int) -> dict[str, int]:
    """Where ``amount_fen`` earned by the doctor goes: first to what they owe, the rest available.

    The receivable's guard (never above zero) makes a concurrent repayment retry, so a
    debt is never paid back twice.

    >>> earnings("d1", 5000)  # doctest: +SKIP
    {'doctor:d1:receivable': 2000, 'doctor:d1:available': 3000}
    """
    owed = max(0, -balance(accounts.doctor_receivable(doctor_id)))
    repaid = min(owed, amount_fen)
    entries = {accounts.doctor_receivable(doctor_id): repaid, accounts.doctor_available(doctor_id): amount_fen - repaid}
    return {account: amount for account, amount in entries.items() if amount}
