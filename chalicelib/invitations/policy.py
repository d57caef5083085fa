"""The money and time rules of an invitation, as pure functions (no I/O, no clock).

- **Platform fee.** ``fee × bps / 10 000`` rounded half up to the fen; the doctor gets the
  rest, so the two always add up to the fee exactly.
- **Response deadline.** The doctor answers within ``response_hours`` of payment, and never
  later than ``response_margin_hours`` before the scheduled time.
- **Cancellation.** Before the doctor accepts, the requester gets everything back. After
  acceptance, everything back up to ``late_cancel_hours`` before the scheduled time; later
  than that, ``late_cancel_refund_bps`` of the fee, and the doctor keeps the rest (split
  with the platform like a fee).

Example
-------
>>> split_fee(50_000, 1000)
(45000, 5000)
>>> split_fee(10_005, 1000)  # 1000.5 rounds half up
(9004, 1001)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from chalicelib.ledger import accounts

if TYPE_CHECKING:
    from chalicelib.config import Settings

BPS = 10_000


def share(amount_fen: int, bps: int) -> int:
    """``amount × bps / 10 000`` rounded half up to the fen."""
    return (amount_fen * bps + BPS // 2) // BPS


def split_fee(fee_fen: int, fee_bps: int) -> tuple[int, int]:
    """``(doctor's share, platform fee)`` of ``fee_fen``; they sum to ``fee_fen``."""
    platform_fee = share(fee_fen, fee_bps)
    return fee_fen - platform_fee, platform_fee


def response_deadline(paid_at: datetime, scheduled_at: datetime, settings: Settings) -> datetime:
    """When an unanswered invitation expires."""
    return min(
        paid_at + timedelta(hours=settings.response_hours),
        scheduled_at - timedelta(hours=settings.response_margin_hours),
    )


def latest_start_to_request(now: datetime, settings: Settings) -> datetime:
    """The earliest scheduled time a new request may name: time to pay, then to answer."""
    return now + timedelta(minutes=settings.payment_window_minutes, hours=settings.response_margin_hours)


@dataclass(frozen=True)
class RefundQuote:
    """What a cancellation refunds now, why, and where the money comes from.

    ``entries`` is the ledger posting made when the provider confirms the refund:
    money back to the provider's clearing account from escrow (not yet accepted) or
    from the doctor's pending share and the platform fee (accepted); the part the
    doctor keeps becomes available to them at once.
    """

    refund_fen: int
    kept_fen: int
    rule: str
    entries: dict[str, int]


def refund_quote(
    *,
    invitation_id: str,
    doctor_id: str,
    channel: str,
    fee_fen: int,
    accepted: bool,
    doctor_share_fen: int,
    platform_fee_fen: int,
    scheduled_at: datetime,
    now: datetime,
    settings: Settings,
) -> RefundQuote:
    """The refund a cancellation at ``now`` gives under the configured policy."""
    shards = settings.ledger_shards
    clearing = accounts.clearing_account(channel, invitation_id, shards)
    if not accepted:
        return RefundQuote(fee_fen, 0, "not_accepted", {accounts.escrow(invitation_id): -fee_fen, clearing: fee_fen})
    if now <= scheduled_at - timedelta(hours=settings.late_cancel_hours):
        refund, rule = fee_fen, "early_cancellation"
    else:
        refund, rule = share(fee_fen, settings.late_cancel_refund_bps), "late_cancellation"
    kept = fee_fen - refund
    kept_doctor, kept_platform = split_fee(kept, settings.platform_fee_bps)
    kept_platform = min(kept_platform, platform_fee_fen)
    kept_doctor = kept - kept_platform
    entries = {
        accounts.doctor_pending(doctor_id): -doctor_share_fen,
        accounts.doctor_available(doctor_id): kept_doctor,
        accounts.fee_account(invitation_id, shards): -(platform_fee_fen - kept_platform),
        clearing: refund,
    }
    return RefundQuote(refund, kept, rule, {account: amount for account, amount in entries.items() if amount})


def full_refund(invitation_id: str, channel: str, fee_fen: int, settings: Settings) -> dict[str, int]:
    """The posting of a refund of everything still in escrow (decline, expiry, a payment after closing)."""
    clearing = accounts.clearing_account(channel, invitation_id, settings.ledger_shards)
    return {accounts.escrow(invitation_id): -fee_fen, clearing: fee_fen}
