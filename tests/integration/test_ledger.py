"""The ledger on the real engine: concurrent postings, replays and a lost response never move money twice."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.errors import ApiError
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.ledger.journal import Posting, balance, post
from chalicelib.models.ledger import LedgerTable

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SANDBOX = accounts.provider("sandbox")


def together(count: int, action: Any) -> list[Any]:
    """Run ``action(index)`` on ``count`` threads released at once; each result or raised error."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return action(index)
        except ApiError as error:
            return error.code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def settled(action: Any) -> Any:
    """Retry what DynamoDB answered with a race (409 ``conflict``), as a client would."""
    while True:
        try:
            return action()
        except ApiError as error:
            if error.code != "conflict":
                raise


def test_concurrent_withdrawals_never_overdraw(tables: list[str]) -> None:
    # GIVEN a doctor holding 10,000 fen
    doctor = uuid.uuid4().hex
    available, payout = accounts.doctor_available(doctor), accounts.doctor_payout(doctor)
    post(Posting(f"tip:{doctor}", "tip", {SANDBOX: -10_000, available: 10_000}, f"doctor:{doctor}"), NOW)

    # WHEN 20 withdrawals of 1,000 fen race
    def withdraw(index: int) -> Any:
        entries = {available: -1_000, payout: 1_000}
        return settled(lambda: post(Posting(f"wd:{doctor}:{index}", "withdrawal", entries, f"doctor:{doctor}"), NOW))

    results = together(20, withdraw)

    # THEN exactly ten go through, the balance ends at zero, never below
    assert results.count(True) == 10
    assert results.count("insufficient_funds") == 10
    assert (balance(available), balance(payout)) == (0, 10_000)
    report = check_ledger()
    assert report.ok, report.violations


def test_one_posting_sent_by_many_at_once_moves_money_once(tables: list[str]) -> None:
    invitation = uuid.uuid4().hex
    posting = Posting(f"pay:{invitation}", "payment", {SANDBOX: -50_000, accounts.escrow(invitation): 50_000}, "x")

    results = together(10, lambda index: settled(lambda: post(posting, NOW)))

    assert sorted(results) == [False] * 9 + [True]
    assert balance(accounts.escrow(invitation)) == 50_000


def test_an_escrow_is_released_or_refunded_never_both(tables: list[str]) -> None:
    # GIVEN a paid invitation
    invitation, doctor = uuid.uuid4().hex, uuid.uuid4().hex
    escrow = accounts.escrow(invitation)
    post(Posting(f"pay:{invitation}", "payment", {SANDBOX: -30_000, escrow: 30_000}, "x"), NOW)
    release = Posting(
        f"accept:{invitation}",
        "acceptance",
        {escrow: -30_000, accounts.doctor_pending(doctor): 27_000, accounts.PLATFORM_FEES: 3_000},
        "x",
    )
    refund = Posting(f"refund:{invitation}", "refund", {escrow: -30_000, SANDBOX: 30_000}, "x")

    # WHEN the doctor's acceptance and the requester's refund race, many times over
    results = together(10, lambda index: settled(lambda: post(release if index % 2 else refund, NOW)))

    # THEN one of them moved the money, once; the escrow is empty, not negative
    assert results.count(True) == 1
    assert balance(escrow) == 0
    report = check_ledger()
    assert report.ok, report.violations


def test_a_lost_response_and_a_retry_do_not_post_twice(tables: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN DynamoDB commits the next transaction but its answer is lost on the way back
    invitation = uuid.uuid4().hex
    posting = Posting(f"pay:{invitation}", "payment", {SANDBOX: -7_000, accounts.escrow(invitation): 7_000}, "x")
    client = LedgerTable._get_connection().connection.client
    lost: list[str] = []

    def lose_answer(**kwargs: Any) -> None:
        if not lost:
            lost.append("once")
            raise ConnectionError("the answer never arrived")

    client.meta.events.register("after-call.dynamodb.TransactWriteItems", lose_answer)
    try:
        with pytest.raises(Exception, match="the answer never arrived"):
            post(posting, NOW)
    finally:
        client.meta.events.unregister("after-call.dynamodb.TransactWriteItems", lose_answer)

    # WHEN the caller retries the same posting
    retried = post(posting, NOW)

    # THEN the money moved exactly once
    assert retried is False
    assert balance(accounts.escrow(invitation)) == 7_000
    report = check_ledger()
    assert report.ok, report.violations
