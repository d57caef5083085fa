"""Ledger account names and which of them may go below zero.

Only the providers' clearing accounts stand for the world outside (money arriving from
and leaving for WeChat Pay, Alipay, UnionPay): they run negative as money comes in.
Every other account holds money the platform owes someone and must never go below zero.

Example
-------
>>> doctor_available("d1"), may_overdraw(provider("wechat")), may_overdraw(escrow("i1"))
('doctor:d1:available', True, False)
"""

from __future__ import annotations

import re

ACCOUNT_NAME = re.compile(r"[a-z]+(:[A-Za-z0-9_-]{1,64}){1,3}")
"""``kind:part[:part[:part]]``; match it with ``fullmatch`` (``$`` would let a newline through)."""
PLATFORM_FEES = "platform:fees"
PLATFORM_MEMBERSHIP = "platform:membership"
PLATFORM_TIPS = "platform:tips"


def provider(channel: str) -> str:
    return f"provider:{channel}"


def escrow(invitation_id: str) -> str:
    return f"escrow:{invitation_id}"


def doctor_pending(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:pending"


def doctor_available(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:available"


def doctor_payout(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:payout"


def may_overdraw(account: str) -> bool:
    """Whether ``account`` may go below zero (only a provider's clearing account)."""
    return account.startswith("provider:")


def is_escrow(account: str) -> bool:
    return account.startswith("escrow:")
