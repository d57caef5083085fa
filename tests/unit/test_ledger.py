"""The ledger: balanced postings written once, balances that cannot go below zero, and its audit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from chalicelib.errors import ApiError
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.ledger.journal import Posting, balance, post, transaction
from chalicelib.models.ledger import AccountBalance, JournalTransaction, LedgerEntry
from chalicelib.models.transactions import Batch, TransactionCancelledError
from chalicelib.models.users import JobHeartbeat

if TYPE_CHECKING:
    from chalice.test import Client

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
SANDBOX = accounts.provider("sandbox")


def pay(tx_id: str, invitation: str, amount: int) -> Posting:
    return Posting(
        tx_id, "payment", {SANDBOX: -amount, accounts.escrow(invitation): amount}, f"invitation:{invitation}"
    )


def accept(tx_id: str, invitation: str, doctor: str, amount: int, fee: int) -> Posting:
    entries = {
        accounts.escrow(invitation): -amount,
        accounts.doctor_pending(doctor): amount - fee,
        accounts.PLATFORM_FEES: fee,
    }
    return Posting(tx_id, "acceptance", entries, f"invitation:{invitation}")


# --- postings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ({}, "1 to 20 accounts"),
        ({SANDBOX: -100, "escrow:i1": 99}, "sum to zero"),
        ({SANDBOX: -100.0, "escrow:i1": 100.0}, "whole number"),
        ({SANDBOX: 0}, "non-zero"),
        ({"Not An Account": -1, "escrow:i1": 1}, "not an account name"),
        ({SANDBOX: True, "escrow:i1": -1}, "whole number"),
        ({SANDBOX: -(10**40), "escrow:i1": 10**40}, "whole number of fen up to"),
        ({"escrow:i1\n": 1, SANDBOX: -1}, "not an account name"),
        ({"escrow:" + "x" * 65: 1, SANDBOX: -1}, "not an account name"),
    ],
)
def test_a_posting_must_balance_in_whole_fen(entries: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Posting("pay:tx", "payment", entries, "ref")


@pytest.mark.parametrize("tx_id", ["tx", "pay:", "Pay:o1", "pay:o 1", "pay:" + "x" * 201, "pay:o1\n"])
def test_a_transaction_id_is_a_kind_and_a_reference(tx_id: str) -> None:
    with pytest.raises(ValueError, match="not a transaction id"):
        Posting(tx_id, "payment", {SANDBOX: -1, "escrow:i1": 1}, "ref")


def test_a_posting_cannot_change_after_its_checks() -> None:
    entries = {SANDBOX: -1_000, "escrow:i1": 1_000}
    posting = Posting("pay:o0", "payment", entries, "ref")

    entries["escrow:i1"] = 900

    assert dict(posting.entries) == {SANDBOX: -1_000, "escrow:i1": 1_000}
    with pytest.raises(TypeError):
        posting.entries["escrow:i1"] = 900  # type: ignore[index]


def test_a_payment_moves_money_from_the_provider_into_escrow(aws: None) -> None:
    assert post(pay("pay:o1", "i1", 50_000), NOW) is True

    assert balance(SANDBOX) == -50_000
    assert balance(accounts.escrow("i1")) == 50_000
    assert transaction("pay:o1") == {
        "tx_id": "pay:o1",
        "kind": "payment",
        "reference": "invitation:i1",
        "entries": {SANDBOX: -50_000, "escrow:i1": 50_000},
    }
    assert check_ledger().ok


def test_the_same_posting_twice_moves_money_once(aws: None) -> None:
    assert post(pay("pay:o2", "i2", 30_000), NOW) is True

    assert post(pay("pay:o2", "i2", 30_000), NOW) is False

    assert balance(accounts.escrow("i2")) == 30_000
    assert len(list(LedgerEntry.query("ACCOUNT#escrow:i2"))) == 1


def test_one_id_for_another_movement_is_a_409(aws: None) -> None:
    post(pay("pay:o3", "i3", 30_000), NOW)

    with pytest.raises(ApiError) as raised:
        post(pay("pay:o3", "i3", 30_001), NOW)

    assert (raised.value.status, raised.value.code) == (409, "ledger_transaction_conflict")
    assert balance(accounts.escrow("i3")) == 30_000


def test_an_account_cannot_pay_out_more_than_it_holds(aws: None) -> None:
    post(pay("pay:o4", "i4", 10_000), NOW)

    # WHEN the escrow is asked to release more than it holds
    with pytest.raises(ApiError) as raised:
        post(accept("accept:i4", "i4", "d4", 10_001, 1_000), NOW)

    # THEN nothing moves
    assert (raised.value.status, raised.value.code) == (409, "insufficient_funds")
    assert raised.value.details == {}  # internal account names stay inside
    assert balance(accounts.escrow("i4")) == 10_000
    assert balance(accounts.doctor_pending("d4")) == 0
    assert transaction("accept:i4") is None
    assert check_ledger().ok


def test_an_account_never_posted_to_cannot_be_debited(aws: None) -> None:
    with pytest.raises(ApiError) as raised:
        post(accept("accept:i5", "i5", "d5", 1_000, 100), NOW)

    assert raised.value.code == "insufficient_funds"


def test_the_posting_and_the_business_change_commit_together(aws: None) -> None:
    # GIVEN a business change whose condition fails (here: a record that must exist, and does not)
    batch = Batch()
    batch.update(
        "invitation",
        JobHeartbeat("SYSTEM#heartbeat", "nobody"),
        actions=[JobHeartbeat.runs.add(1)],
        condition=JobHeartbeat.pk.exists(),
    )

    # WHEN it is posted with a payment
    with pytest.raises(TransactionCancelledError) as raised:
        post(pay("pay:o6", "i6", 5_000), NOW, batch)

    # THEN neither is written, and the caller learns which action stopped it
    assert raised.value.failed == ["invitation"]
    assert balance(accounts.escrow("i6")) == 0
    assert transaction("pay:o6") is None


def test_a_refused_business_change_is_never_reported_as_already_posted(aws: None) -> None:
    # GIVEN a refund already posted with its state change
    post(pay("pay:o11", "i11", 5_000), NOW)
    refund = Posting("refund:i11", "refund", {accounts.escrow("i11"): -5_000, SANDBOX: 5_000}, "invitation:i11")
    post(refund, NOW)

    # WHEN a racing transition posts the same refund with its own state check, which fails
    batch = Batch()
    batch.update(
        "invitation",
        JobHeartbeat("SYSTEM#heartbeat", "nobody-11"),
        actions=[JobHeartbeat.runs.add(1)],
        condition=JobHeartbeat.pk.exists(),
    )
    with pytest.raises(TransactionCancelledError) as raised:
        post(refund, NOW, batch)

    # THEN the caller hears that its own condition failed (and that the refund exists)
    assert "invitation" in raised.value.failed
    assert raised.value.already_posted is True


def test_business_actions_cannot_borrow_the_ledgers_names(aws: None) -> None:
    batch = Batch()
    batch.update("journal", JobHeartbeat("SYSTEM#heartbeat", "x"), actions=[JobHeartbeat.runs.add(1)])

    with pytest.raises(ValueError, match="ledger's action names"):
        post(pay("pay:o12", "i12", 1_000), NOW, batch)


def test_a_full_flow_keeps_every_invariant(aws: None) -> None:
    post(pay("pay:o7", "i7", 80_000), NOW)
    post(accept("accept:i7", "i7", "d7", 80_000, 8_000), NOW)
    release = {accounts.doctor_pending("d7"): -72_000, accounts.doctor_available("d7"): 72_000}
    post(Posting("confirm:i7", "confirmation", release, "invitation:i7"), NOW)

    report = check_ledger()

    assert report.ok, report.violations
    assert (report.transactions, report.accounts, report.entries) == (3, 5, 7)
    assert balance(accounts.doctor_available("d7")) == 72_000
    assert balance(accounts.PLATFORM_FEES) == 8_000


# --- the audit finds what is wrong ------------------------------------------------------------------


def test_the_audit_finds_a_balance_that_drifted_from_its_entries(aws: None) -> None:
    post(pay("pay:o8", "i8", 20_000), NOW)
    AccountBalance("ACCOUNT#escrow:i8", "BALANCE").update(actions=[AccountBalance.balance.add(1)])

    report = check_ledger()

    assert not report.ok
    assert "L2: escrow:i8 holds 20001 fen but its entries sum to 20000" in report.violations
    assert "L1: all balances together are 1 fen, not zero" in report.violations


def test_the_audit_finds_a_negative_account_and_a_double_release(aws: None) -> None:
    # GIVEN an escrow released twice by postings that bypassed the balance guard (a forged history)
    post(pay("pay:o9", "i9", 10_000), NOW)
    for tx_id in ("accept:i9", "refund:i9"):
        entries = {accounts.escrow("i9"): -10_000, SANDBOX: 10_000}
        post_unguarded(Posting(tx_id, "refund", entries, "invitation:i9"))

    report = check_ledger()

    assert "L3: escrow:i9 is -10000 fen, below zero" in report.violations
    assert "L6: escrow:i9 was released or refunded 2 times" in report.violations


def post_unguarded(posting: Posting) -> None:
    """Write a posting's items one by one, without the overdraft guard: a forged history for the audit."""
    journal = JournalTransaction(f"TX#{posting.tx_id}", "TX")
    journal.tx_id, journal.kind, journal.reference = posting.tx_id, posting.kind, posting.reference
    journal.entries, journal.fingerprint = dict(posting.entries), posting.fingerprint
    journal.owner_key, journal.created_at = "LEDGER#TX", f"forged#{posting.tx_id}"
    journal.save()
    for account, amount in posting.entries.items():
        entry = LedgerEntry(f"ACCOUNT#{account}", f"ENTRY#forged#{posting.tx_id}")
        entry.tx_id, entry.amount = posting.tx_id, amount
        entry.save()
        AccountBalance(f"ACCOUNT#{account}", "BALANCE").update(actions=[AccountBalance.balance.add(amount)])


def test_the_admin_route_reports_the_audit(client: Client) -> None:
    from tests.unit import actors

    admin = actors.make_admin(client)
    post(pay("pay:o10", "i10", 1_000), NOW)

    body = actors.expect(actors.call(client, "GET", "/v1/admin/ledger/check", admin), 200)

    assert body == {"ok": True, "transactions": 1, "accounts": 2, "entries": 2, "violations": [], "attention": []}
