"""Ledger account names and which of them may go below zero.

Only the providers' clearing accounts stand for the world outside (money arriving from
and leaving for WeChat Pay, Alipay, UnionPay): they run negative as money comes in.
A doctor's receivable (``doctor:<id>:receivable``) is what the doctor owes the platform
after a refund took back more than their available balance: it runs negative, never
above zero, and future earnings pay it back first. Every other account holds money the
platform owes someone and must never go below zero.

The platform's fee account and each provider's clearing account are touched by every
invitation: one balance item each would be a hot key. They are split into shards
(``platform:fees:<n>``, ``provider:<channel>:<n>``), the shard chosen by the invitation,
so one invitation always uses the same shard; totals are the sum over the shards.

Example
-------
>>> doctor_available("d1"), may_overdraw(provider("wechat")), may_overdraw(escrow("i1"))
('doctor:d1:available', True, False)
>>> is_receivable(doctor_receivable("d1")), may_overdraw(doctor_receivable("d1"))
(True, True)
>>> fee_account("i1", shards=8)
'platform:fees:7'
"""

from __future__ import annotations

import hashlib
import re

ACCOUNT_NAME = re.compile(r"[a-z]+(:[A-Za-z0-9_-]{1,64}){1,3}")
"""``kind:part[:part[:part]]``; match it with ``fullmatch`` (``$`` would let a newline through)."""
PLATFORM_FEES = "platform:fees"
PLATFORM_MEMBERSHIP = "platform:membership"
PLATFORM_TIPS = "platform:tips"


def provider(channel: str) -> str:
    return f"provider:{channel}"


def shard_of(key: str, shards: int) -> int:
    """A stable shard number in ``0..shards-1`` for ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % shards


def fee_account(key: str, shards: int) -> str:
    """The shard of ``platform:fees`` that ``key`` (an invitation id) uses."""
    return f"{PLATFORM_FEES}:{shard_of(key, shards)}"


def clearing_account(channel: str, key: str, shards: int) -> str:
    """The shard of ``provider:<channel>`` that ``key`` (an invitation id) uses."""
    return f"{provider(channel)}:{shard_of(key, shards)}"


def family(account: str) -> str:
    """The account a shard belongs to: ``platform:fees:3`` → ``platform:fees``; others unchanged."""
    if account.startswith((PLATFORM_FEES + ":", "provider:")):
        return ":".join(account.split(":")[:2])
    return account


def escrow(invitation_id: str) -> str:
    return f"escrow:{invitation_id}"


def doctor_pending(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:pending"


def doctor_available(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:available"


def doctor_payout(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:payout"


def doctor_receivable(doctor_id: str) -> str:
    return f"doctor:{doctor_id}:receivable"


def claim(invitation_id: str) -> str:
    """Money taken back from the doctor and the fee for a refund the back office confirmed (C8)."""
    return f"claim:{invitation_id}"


def is_receivable(account: str) -> bool:
    return account.startswith("doctor:") and account.endswith(":receivable")


def may_overdraw(account: str) -> bool:
    """Whether ``account`` may go below zero (a provider's clearing account, a doctor's receivable)."""
    return account.startswith("provider:") or is_receivable(account)


def is_escrow(account: str) -> bool:
    """An account that holds one invitation's money until it is resolved once (escrow, claim)."""
    return account.startswith(("escrow:", "claim:"))
