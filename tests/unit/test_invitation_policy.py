"""The money and time rules of an invitation (``invitations.policy``): pure functions, no AWS."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.config import get_settings
from chalicelib.invitations import policy
from chalicelib.ledger import accounts

if TYPE_CHECKING:
    from chalicelib.config import Settings

SCHEDULED = datetime(2026, 12, 10, 1, 0, tzinfo=UTC)
FEES = [*range(0, 2_000), 9_999, 10_000, 10_005, 12_345, 50_000, 300_000, 1_999_999, 2_000_000]
RATES = [0, 1, 7, 333, 1_000, 1_250, 2_500, 5_000, 6_667, 9_999, 10_000]


def settings(**changes: Any) -> Settings:
    return dataclasses.replace(get_settings(), **changes)


def half_up(fee: int, bps: int) -> int:
    """The reference rule, in decimal arithmetic: ``fee × bps / 10 000`` rounded half up."""
    return int((Decimal(fee) * bps / 10_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- the platform fee ------------------------------------------------------------------------


def test_split_fee_rounds_half_up_and_always_sums_to_the_fee() -> None:
    # GIVEN every fee up to 20 yuan, some large ones, and rates from 0 to 100 %
    for bps in RATES:
        for fee in FEES:
            # WHEN the fee is split
            doctor, platform = policy.split_fee(fee, bps)
            # THEN the platform takes its rate rounded half up, the doctor the rest, to the fen
            assert platform == half_up(fee, bps), (fee, bps)
            assert doctor + platform == fee, (fee, bps)
            assert 0 <= platform <= fee and 0 <= doctor <= fee, (fee, bps)


@pytest.mark.parametrize(
    ("fee", "bps", "expected"),
    [
        (10_005, 1_000, (9_004, 1_001)),  # 1000.5 → 1001 (half up, not half even)
        (10_015, 1_000, (9_013, 1_002)),  # 1001.5 → 1002
        (10_004, 1_000, (9_004, 1_000)),  # 1000.4 → 1000
        (5, 1_000, (4, 1)),  # 0.5 → 1
        (4, 1_000, (4, 0)),  # 0.4 → 0
        (50_000, 0, (50_000, 0)),
        (50_000, 10_000, (0, 50_000)),
    ],
)
def test_split_fee_examples(fee: int, bps: int, expected: tuple[int, int]) -> None:
    assert policy.split_fee(fee, bps) == expected


# --- the response deadline -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid_before", "deadline"),
    [
        # the operation is far: the answer window (24 h after payment)
        (timedelta(days=5), SCHEDULED - timedelta(days=5) + timedelta(hours=24)),
        # the margin before the operation comes first (12 h before it)
        (timedelta(hours=20), SCHEDULED - timedelta(hours=12)),
    ],
    ids=["answer_window", "margin_before_the_operation"],
)
def test_response_deadline_is_the_answer_window_or_the_margin_before_the_operation_whichever_is_first(
    paid_before: timedelta, deadline: datetime
) -> None:
    rules = settings(response_hours=24, response_margin_hours=12)
    assert policy.response_deadline(SCHEDULED - paid_before, SCHEDULED, rules) == deadline


def test_response_deadline_at_the_crossover_and_under_other_settings() -> None:
    rules = settings(response_hours=6, response_margin_hours=2)
    # exactly where both rules give the same instant
    paid = SCHEDULED - timedelta(hours=8)
    assert policy.response_deadline(paid, SCHEDULED, rules) == SCHEDULED - timedelta(hours=2)
    for hours_before in range(0, 72):
        paid = SCHEDULED - timedelta(hours=hours_before)
        deadline = policy.response_deadline(paid, SCHEDULED, rules)
        assert deadline == min(paid + timedelta(hours=6), SCHEDULED - timedelta(hours=2))
        assert deadline <= SCHEDULED - timedelta(hours=2)


# --- cancellation refunds --------------------------------------------------------------------


def quote(
    *,
    fee: int = 300_000,
    accepted: bool,
    now: datetime,
    accept_bps: int = 1_000,
    rules: Settings | None = None,
) -> policy.RefundQuote:
    rules = rules or settings(platform_fee_bps=1_000, late_cancel_hours=24, late_cancel_refund_bps=5_000)
    doctor_share, platform_fee = policy.split_fee(fee, accept_bps) if accepted else (0, 0)
    return policy.refund_quote(
        invitation_id="inv1",
        doctor_id="doc1",
        channel="sandbox",
        fee_fen=fee,
        accepted=accepted,
        doctor_share_fen=doctor_share,
        platform_fee_fen=platform_fee,
        scheduled_at=SCHEDULED,
        now=now,
        settings=rules,
    )


def names(rules: Settings | None = None) -> dict[str, str]:
    rules = rules or get_settings()
    return {
        "escrow": accounts.escrow("inv1"),
        "clearing": accounts.clearing_account("sandbox", "inv1", rules.ledger_shards),
        "pending": accounts.doctor_pending("doc1"),
        "available": accounts.doctor_available("doc1"),
        "fees": accounts.fee_account("inv1", rules.ledger_shards),
    }


FROM_ESCROW = {"escrow": -300_000, "clearing": 300_000}
FROM_DOCTOR_AND_FEE = {"pending": -270_000, "fees": -30_000, "clearing": 300_000}


@pytest.mark.parametrize(
    ("accepted", "before", "rule", "entries"),
    [
        # before acceptance everything comes back from escrow, even at the last minute
        (False, timedelta(days=10), "not_accepted", FROM_ESCROW),
        (False, timedelta(minutes=1), "not_accepted", FROM_ESCROW),
        # an early cancellation after acceptance takes everything back from the doctor and the fee
        (True, timedelta(days=3), "early_cancellation", FROM_DOCTOR_AND_FEE),
        # exactly late_cancel_hours before the operation still counts as early
        (True, timedelta(hours=24), "early_cancellation", FROM_DOCTOR_AND_FEE),
    ],
    ids=["not_accepted_days_ahead", "not_accepted_last_minute", "early_days_ahead", "early_exactly_24h_ahead"],
)
def test_before_acceptance_or_early_after_it_everything_is_refunded(
    accepted: bool, before: timedelta, rule: str, entries: dict[str, int]
) -> None:
    account = names()
    refund = quote(accepted=accepted, now=SCHEDULED - before)
    assert (refund.refund_fen, refund.kept_fen, refund.rule) == (300_000, 0, rule)
    assert refund.entries == {account[name]: amount for name, amount in entries.items()}


def test_a_late_cancellation_refunds_the_configured_share_and_the_doctor_keeps_the_rest() -> None:
    account = names()
    refund = quote(accepted=True, now=SCHEDULED - timedelta(hours=23, minutes=59))
    # 50 % back; the kept 150 000 split like a fee: 135 000 to the doctor, 15 000 to the platform
    assert (refund.refund_fen, refund.kept_fen, refund.rule) == (150_000, 150_000, "late_cancellation")
    assert refund.entries == {
        account["pending"]: -270_000,
        account["available"]: 135_000,
        account["fees"]: -15_000,
        account["clearing"]: 150_000,
    }


def test_late_cancellation_entries_balance_and_never_take_more_than_was_given() -> None:
    # GIVEN many fees, late-refund rates and platform rates (also a rate changed since acceptance)
    cases = 0
    for fee in [1, 2, 3, 99, 101, 10_005, 12_345, 300_000, 1_999_999]:
        for refund_bps in [0, 1, 2_500, 3_333, 5_000, 9_999, 10_000]:
            for accept_bps in [0, 1_000, 3_000]:
                for cancel_bps in [0, 1_000, 3_000]:
                    rules = settings(platform_fee_bps=cancel_bps, late_cancel_refund_bps=refund_bps)
                    account = names(rules)
                    doctor_share, platform_fee = policy.split_fee(fee, accept_bps)
                    # WHEN the requester cancels an hour before the operation
                    refund = quote(
                        fee=fee, accepted=True, now=SCHEDULED - timedelta(hours=1), accept_bps=accept_bps, rules=rules
                    )
                    entries = refund.entries
                    # THEN the posting balances and has no zero entry
                    assert sum(entries.values()) == 0 and 0 not in entries.values()
                    assert refund.refund_fen == policy.share(fee, refund_bps)
                    assert refund.refund_fen + refund.kept_fen == fee
                    # the payer gets at most what was paid, the doctor's pending share is emptied exactly,
                    # the platform gives back at most the fee it took, nobody ends below zero
                    assert 0 <= entries.get(account["clearing"], 0) <= fee
                    assert -entries.get(account["pending"], 0) == doctor_share
                    assert 0 <= -entries.get(account["fees"], 0) <= platform_fee
                    assert entries.get(account["available"], 0) >= 0
                    assert account["escrow"] not in entries
                    cases += 1
    assert cases == 9 * 7 * 3 * 3


def test_full_refund_moves_the_whole_fee_from_escrow_to_the_provider() -> None:
    rules = settings(ledger_shards=8)
    entries = policy.full_refund("inv1", "sandbox", 12_345, rules)
    assert entries == {accounts.escrow("inv1"): -12_345, accounts.clearing_account("sandbox", "inv1", 8): 12_345}
    assert sum(entries.values()) == 0


def test_latest_start_to_request_leaves_time_to_pay_and_to_answer() -> None:
    rules = settings(payment_window_minutes=30, response_margin_hours=12)
    assert policy.latest_start_to_request(SCHEDULED, rules) == SCHEDULED + timedelta(hours=12, minutes=30)
