"""Withdrawals and payouts under concurrency, against DynamoDB Local (its real transaction engine).

- withdrawals racing over one balance: exactly as many commit as the balance covers, the
  rest are 409 ``insufficient_funds``, and ``available`` never goes below zero;
- withdrawals racing over one day's limit: the day's total never passes the limit;
- the payout job racing a callback (or a callback delivered many times at once): one
  final state, one posting, the day's limit given back once;
- the ledger's invariants hold after every scenario (``check_ledger``).

Doctors are stored as the accounts module stores them, and funded with a balanced posting
from a provider clearing account to ``doctor:available``. The provider is a small
in-memory fake of the ``sandbox`` channel's payout calls.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.accounts.roles import DOCTOR, Principal
from chalicelib.clock import iso, shanghai_date, utc_now
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import deadlines
from chalicelib.ledger import accounts as ledger_accounts
from chalicelib.ledger.journal import Posting, balance, post, transaction
from chalicelib.ledger.wallet import wallet
from chalicelib.models.users import Account
from chalicelib.payments.provider import PayoutRequest, PayoutStatus, ProviderError, ProviderEvent
from chalicelib.payments.registry import use_provider
from chalicelib.payouts import accounts, transfers, withdrawals
from chalicelib.payouts.accounts import BankCardPayee
from chalicelib.payouts.withdrawals import WithdrawalRequest
from tests.integration.flow_helpers import assert_ledger_ok, race, until_settled

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

NAME = "\u674e\u96f7"  # 李雷
CARD = "6222021234567890128"


@dataclass
class FakePayouts:
    """The ``sandbox`` channel's payout calls, in memory and thread-safe; ``mode`` is what ``payout`` answers."""

    channel: str = "sandbox"
    mode: str = "processing"
    transfers: dict[str, PayoutStatus] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        with self._lock:
            self.calls.append(("payout", request.out_bill_no))
            status = self.transfers.setdefault(
                request.out_bill_no,
                PayoutStatus(request.out_bill_no, self.mode, f"bill-{request.out_bill_no}", request.amount_fen),  # type: ignore[arg-type]
            )
            return status

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        with self._lock:
            self.calls.append(("query", out_bill_no))
            if out_bill_no not in self.transfers:
                raise ProviderError("payout_not_found", "no such transfer", retryable=False)
            return self.transfers[out_bill_no]

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        return self.finish(out_bill_no, "cancelled", "MERCHANT_REVOCATION")

    def finish(self, out_bill_no: str, state: str, reason: str | None = None) -> PayoutStatus:
        with self._lock:
            old = self.transfers[out_bill_no]
            self.transfers[out_bill_no] = PayoutStatus(out_bill_no, state, old.bill_id, old.amount_fen, None, reason)  # type: ignore[arg-type]
            return self.transfers[out_bill_no]


@pytest.fixture
def payouts(tables: list[str]) -> Iterator[FakePayouts]:
    fake = FakePayouts()
    use_provider("sandbox", fake)  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        use_provider("sandbox", None)


def make_doctor(now: datetime) -> Principal:
    user_id = uuid.uuid4().hex
    account = Account(f"USER#{user_id}", "PROFILE")
    account.user_id, account.role, account.revision = user_id, DOCTOR, 1
    account.created_at = account.updated_at = iso(now)
    account.name, account.verification_status = NAME, "verified"
    account.save()
    return Principal(user_id, DOCTOR)


def fund(doctor: Principal, amount: int, now: datetime) -> None:
    key = uuid.uuid4().hex
    clearing = ledger_accounts.clearing_account("sandbox", key, get_settings().ledger_shards)
    entries = {clearing: -amount, ledger_accounts.doctor_available(doctor.user_id): amount}
    assert post(Posting(f"seed:{key}", "test_funding", entries, "test:seed"), now)


def funded_doctor(amount: int, now: datetime) -> tuple[Principal, str]:
    """A verified doctor holding ``amount``, with a bank-card payout account (its id)."""
    doctor = make_doctor(now)
    fund(doctor, amount, now)
    status, body = accounts.register(doctor, BankCardPayee(NAME, "ICBC", CARD), now)
    assert status == 201
    return doctor, body["account_id"]


def withdraw_all_at_once(doctor: Principal, account_id: str, amounts: list[int], now: datetime) -> list[Any]:
    """Each amount withdrawn on its own thread, all released together; a ``conflict`` is retried as a client would."""

    def one(index: int) -> Any:
        return until_settled(lambda: withdrawals.request(doctor, WithdrawalRequest(amounts[index], account_id), now))

    return race(len(amounts), one)


def codes(outcomes: list[Any]) -> list[str]:
    found = []
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            found.append(outcome.code)
        elif isinstance(outcome, Exception):
            raise outcome  # anything but an ApiError would be a 500
        else:
            status, _ = outcome
            found.append(str(status))
    return found


# --- withdrawals racing over the balance ------------------------------------------------------------


@pytest.mark.parametrize("threads", [2, 10])
def test_concurrent_withdrawals_over_the_balance_exactly_one_succeeds(payouts: FakePayouts, threads: int) -> None:
    now = utc_now()
    doctor, account_id = funded_doctor(100_000, now)

    # WHEN several withdrawals of 60 000 race over a balance of 100 000
    outcomes = withdraw_all_at_once(doctor, account_id, [60_000] * threads, now)

    # THEN exactly one commits; every other is told the balance does not cover it
    assert sorted(codes(outcomes)) == ["201"] + ["insufficient_funds"] * (threads - 1)
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 40_000,
        "payout_fen": 60_000,
        "owed_fen": 0,
    }
    listed = withdrawals.list_own(doctor, 100, None)["items"]
    assert [item["amount_fen"] for item in listed] == [60_000]
    assert withdrawals.withdrawn_on(doctor.user_id, shanghai_date(now).isoformat()) == 60_000
    assert_ledger_ok()


def test_ten_concurrent_withdrawals_take_exactly_what_the_balance_covers(payouts: FakePayouts) -> None:
    now = utc_now()
    doctor, account_id = funded_doctor(100_000, now)

    outcomes = withdraw_all_at_once(doctor, account_id, [30_000] * 10, now)

    assert sorted(codes(outcomes)) == ["201"] * 3 + ["insufficient_funds"] * 7
    assert balance(ledger_accounts.doctor_available(doctor.user_id)) == 10_000
    assert balance(ledger_accounts.doctor_payout(doctor.user_id)) == 90_000
    numbers = {body["withdrawal_id"] for status, body in (o for o in outcomes if not isinstance(o, Exception))}
    assert numbers == {item["withdrawal_id"] for item in withdrawals.list_own(doctor, 100, None)["items"]}
    assert all(transaction(f"withdrawal:{number}") is not None for number in numbers)
    assert_ledger_ok()


# --- withdrawals racing over the daily limit ---------------------------------------------------------


def test_concurrent_withdrawals_never_pass_the_daily_limit(payouts: FakePayouts) -> None:
    now = utc_now()
    limit = get_settings().withdrawal_daily_limit_fen
    doctor, account_id = funded_doctor(2 * limit, now)
    each = limit * 3 // 10  # three tenths: three fit in a day, a fourth does not

    outcomes = withdraw_all_at_once(doctor, account_id, [each] * 10, now)

    assert sorted(codes(outcomes)) == ["201"] * 3 + ["daily_limit_reached"] * 7
    day = shanghai_date(now).isoformat()
    assert withdrawals.withdrawn_on(doctor.user_id, day) == 3 * each <= limit
    assert balance(ledger_accounts.doctor_payout(doctor.user_id)) == 3 * each
    refused = [o for o in outcomes if isinstance(o, ApiError)]
    assert {error.details["limit_fen"] for error in refused} == {limit}
    assert all(error.details["remaining_fen"] >= 0 for error in refused)
    assert_ledger_ok()


# --- the job racing a callback -------------------------------------------------------------------------


def requested_and_sent(payouts: FakePayouts, amount: int = 50_000) -> tuple[Principal, str, datetime]:
    """A doctor's withdrawal, sent by the job and accepted by the provider (processing)."""
    now = utc_now()
    doctor, account_id = funded_doctor(100_000, now)
    _, body = withdrawals.request(doctor, WithdrawalRequest(amount, account_id), now)
    number = body["withdrawal_id"]
    assert transfers.follow_up(_order(number), now) == "waiting"
    return doctor, number, now


def _order(number: str) -> Any:
    found = withdrawals.get(number)
    assert found is not None
    return found


def callback(number: str, kind: str, amount: int, event_id: str | None = None) -> ProviderEvent:
    return ProviderEvent(
        "sandbox",
        event_id or uuid.uuid4().hex,
        kind,
        number,
        f"bill-{number}",
        amount,
        None,
        None,
        reason="X",  # type: ignore[arg-type]
    )


def settled_outcomes(outcomes: list[Any]) -> list[str]:
    """Each racer's result; a 409 ``conflict`` (the loser met the winner's transaction) counts as ``conflict``."""
    found = []
    for outcome in outcomes:
        if isinstance(outcome, ApiError) and outcome.code == "conflict":
            found.append("conflict")
        elif isinstance(outcome, Exception):
            raise outcome
        else:
            found.append(outcome)
    return found


@pytest.mark.parametrize("round_", range(3))
def test_the_job_racing_a_success_callback_posts_once(payouts: FakePayouts, round_: int) -> None:
    doctor, number, now = requested_and_sent(payouts)
    payouts.finish(number, "succeeded")
    later = now + timedelta(minutes=1)
    racers = [
        lambda: transfers.follow_up(_order(number), later),
        lambda: transfers.apply_event(callback(number, "payout_succeeded", 50_000), later),
    ]

    outcomes = settled_outcomes(race(2, lambda index: racers[index]()))

    assert outcomes.count("applied") == 1, outcomes
    assert set(outcomes) <= {"applied", "duplicate", "conflict"}
    assert _order(number).status == "succeeded"
    assert transaction(f"payout:{number}") is not None
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 50_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    # a retry of the loser (the provider redelivers, the job runs again) changes nothing
    assert transfers.apply_event(callback(number, "payout_succeeded", 50_000), later) == "duplicate"
    assert transfers.follow_up(_order(number), later) == "duplicate"
    assert_ledger_ok()


def test_the_job_racing_a_failure_callback_returns_the_money_and_the_limit_once(payouts: FakePayouts) -> None:
    doctor, number, now = requested_and_sent(payouts)
    payouts.finish(number, "failed", "OVERDUE_CLOSE")
    later = now + timedelta(hours=25)
    racers = [
        lambda: transfers.follow_up(_order(number), later),
        lambda: transfers.apply_event(callback(number, "payout_failed", 50_000), later),
    ]

    outcomes = settled_outcomes(race(2, lambda index: racers[index]()))

    assert outcomes.count("applied") == 1, outcomes
    assert _order(number).status == "failed"
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 100_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert withdrawals.withdrawn_on(doctor.user_id, _order(number).requested_on) == 0  # given back once, not twice
    assert_ledger_ok()


def test_one_callback_delivered_many_times_at_once_applies_once(payouts: FakePayouts) -> None:
    doctor, number, now = requested_and_sent(payouts)
    delivered = callback(number, "payout_succeeded", 50_000, event_id=f"EV-{uuid.uuid4().hex}")

    outcomes = settled_outcomes(race(8, lambda _: transfers.apply_event(delivered, now)))

    assert outcomes.count("applied") == 1, outcomes
    assert set(outcomes) <= {"applied", "duplicate", "conflict"}
    assert balance(ledger_accounts.doctor_payout(doctor.user_id)) == 0
    assert transfers.apply_event(delivered, now) == "duplicate"
    assert_ledger_ok()


def test_contradicting_final_reports_at_once_settle_one_way(payouts: FakePayouts) -> None:
    doctor, number, now = requested_and_sent(payouts)
    reports = [
        lambda: transfers.apply_event(callback(number, "payout_succeeded", 50_000), now),
        lambda: transfers.apply_event(callback(number, "payout_cancelled", 50_000), now),
    ]

    outcomes = settled_outcomes(race(2, lambda index: reports[index]()))

    assert outcomes.count("applied") == 1, outcomes
    final = _order(number).status
    assert final in ("succeeded", "cancelled")
    posted = [tx for tx in (f"payout:{number}", f"payout_return:{number}") if transaction(tx) is not None]
    assert posted == [f"payout:{number}" if final == "succeeded" else f"payout_return:{number}"]
    assert balance(ledger_accounts.doctor_payout(doctor.user_id)) == 0
    assert_ledger_ok()


def test_the_whole_path_runs_through_the_job(payouts: FakePayouts) -> None:
    # GIVEN two withdrawals: one the provider will pay, one it will fail
    now = utc_now()
    doctor, account_id = funded_doctor(100_000, now)
    numbers = [
        withdrawals.request(doctor, WithdrawalRequest(amount, account_id), now)[1]["withdrawal_id"]
        for amount in (30_000, 20_000)
    ]

    # WHEN the job runs, the provider decides, and the job runs again
    first = deadlines.settle_payouts(now + timedelta(seconds=1), limit=1000)
    payouts.finish(numbers[0], "succeeded")
    payouts.finish(numbers[1], "failed", "PAYEE_ACCOUNT_ABNORMAL")
    second = deadlines.settle_payouts(now + timedelta(minutes=2), limit=1000)

    # THEN one is paid out and one is back in the wallet, and the job's queue holds neither
    assert first["failed"] == second["failed"] == 0
    assert [_order(number).status for number in numbers] == ["succeeded", "failed"]
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 70_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    due = {order.out_bill_no for order in transfers.due(now + timedelta(days=2), 1000)}
    assert not due & set(numbers)
    assert_ledger_ok()
