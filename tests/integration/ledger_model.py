"""The machinery of the model-based ledger test (``test_ledger_model.py``), against DynamoDB Local.

- ``ModelProvider``: ``flow_helpers.FakeProvider`` plus payouts (WeChat 商家转账 style: a transfer
  bill that is processing or waits for the payee's confirmation until told its end), with
  every outcome chosen by the test, and signed callbacks whose timestamps follow the
  business clock (the callback route checks them against it);
- ``Clock`` and ``business_clock``: the handlers' ``utc_now`` made to read the test's clock;
- ``LedgerProbe``: the ledger invariants, checked cheaply and only over what one example
  wrote: every journal transaction since the example started (one Query of the journal
  list), the balances of the accounts it saw together with its orders (one BatchGet), and
  the entries since the start of the accounts that moved (one Query each), and the example's
  invitations in the same BatchGet as the balances. Other examples' data stays in the tables
  and is never read whole.

Times: every example runs on its own stretch of business time, later than anything the
test process wrote before (``World.next_start``), so "entries since the start" are exactly
the entries written since the start, and a later example never sees an earlier one's
deadlines as its own.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import iso
from chalicelib.ledger.accounts import is_escrow, is_receivable, may_overdraw
from chalicelib.ledger.journal import TRANSACTIONS_LIST
from chalicelib.models.invitations import Invitation
from chalicelib.models.ledger import JournalTransaction, LedgerEntry, LedgerTable
from chalicelib.payments.provider import PayoutStatus, ProviderError
from tests.integration.flow_helpers import Callback, FakeProvider, wechat_time

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from chalicelib.accounts.roles import Principal
    from chalicelib.payments.provider import PayoutRequest

PAYOUT_ANSWERS = (
    "processing",
    "wait_user_confirm",
    "succeeded",
    "failed",
    "refused",
    "timeout_received",
    "timeout_lost",
)
"""What ``ModelProvider.payout`` does with a transfer it has not seen:

- ``processing`` / ``wait_user_confirm`` / ``succeeded`` / ``failed``: takes it and answers that state;
- ``refused``: a non-retryable error (the payee is refused), nothing taken;
- ``timeout_received``: takes it (processing) but the answer is lost: a retryable error;
- ``timeout_lost``: a retryable error before it got there: nothing taken.
"""
PAYOUT_STATE_NAMES = {"succeeded": "SUCCESS", "failed": "FAIL", "cancelled": "CANCELLED"}


# --- the provider -----------------------------------------------------------------------------------


@dataclass
class ModelProvider(FakeProvider):
    """``FakeProvider`` with payouts whose every outcome the model chooses."""

    payout_answer: str = "processing"
    transfers: dict[str, PayoutStatus] = field(default_factory=dict)
    payout_requests: list[PayoutRequest] = field(default_factory=list)
    _payout_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        with self._payout_lock:
            self.payout_requests.append(request)
            existing = self.transfers.get(request.out_bill_no)
            if existing is not None:  # the same number again: the same transfer
                return existing
            answer = self.payout_answer
            if answer == "timeout_lost":
                raise ProviderError("SYSTEM_ERROR", "timed out before the provider got it", retryable=True)
            if answer == "refused":
                raise ProviderError("INVALID_REQUEST", "the payee cannot take transfers", retryable=False)
            state = "processing" if answer == "timeout_received" else answer
            status = PayoutStatus(
                request.out_bill_no,
                state,  # type: ignore[arg-type]
                f"1330{uuid.uuid4().int % 10**20:020d}",
                request.amount_fen,
                "package-info-for-the-payee" if state == "wait_user_confirm" else None,
                "PAYEE_ACCOUNT_ABNORMAL" if state == "failed" else None,
            )
            self.transfers[request.out_bill_no] = status
            if answer == "timeout_received":
                raise ProviderError("SYSTEM_ERROR", "timed out after the provider took it", retryable=True)
            return status

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        with self._payout_lock:
            status = self.transfers.get(out_bill_no)
        if status is None:
            raise ProviderError("payout_not_found", "no such transfer", retryable=False)
        return status

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        with self._payout_lock:
            status = self.transfers.get(out_bill_no)
            if status is None:
                raise ProviderError("payout_not_found", "no such transfer", retryable=False)
            if status.state in ("processing", "wait_user_confirm"):
                status = self._finished(status, "cancelled", "MERCHANT_REVOCATION")
            return status

    # -- what the tests tell it -------------------------------------------------------------------

    def finish_transfer(self, out_bill_no: str, state: str, reason: str | None = None) -> PayoutStatus:
        """The payee (or WeChat) ends an open transfer: ``succeeded``, ``failed`` or ``cancelled``."""
        with self._payout_lock:
            status = self.transfers[out_bill_no]
            assert status.state in ("processing", "wait_user_confirm"), status
            return self._finished(status, state, reason)

    def _finished(self, status: PayoutStatus, state: str, reason: str | None) -> PayoutStatus:
        ended = PayoutStatus(status.out_bill_no, state, status.bill_id, status.amount_fen, None, reason)  # type: ignore[arg-type]
        self.transfers[status.out_bill_no] = ended
        return ended

    def transfer_state(self, out_bill_no: str) -> str | None:
        with self._payout_lock:
            status = self.transfers.get(out_bill_no)
        return status.state if status else None

    def refund_state(self, refund_no: str) -> str | None:
        status = self.refund_states.get(refund_no)
        return status.state if status else None

    # -- callbacks at the business time ------------------------------------------------------------

    def payout_callback(self, out_bill_no: str, at: datetime) -> Callback:
        """``MCHTRANSFER.BILL.FINISHED`` for a transfer that ended."""
        status = self.transfers[out_bill_no]
        resource: dict[str, Any] = {
            "out_bill_no": out_bill_no,
            "transfer_bill_no": status.bill_id,
            "state": PAYOUT_STATE_NAMES[status.state],
            "mch_id": "1900000109",
            "transfer_amount": status.amount_fen,
            "create_time": wechat_time(at),
            "update_time": wechat_time(at),
        }
        if status.fail_reason:
            resource["fail_reason"] = status.fail_reason
        event = {
            "id": str(uuid.uuid4()),
            "create_time": wechat_time(at),
            "event_type": "MCHTRANSFER.BILL.FINISHED",
            "summary": "\u5546\u5bb6\u8f6c\u8d26\u5355\u636e\u7ec8\u6001\u901a\u77e5",  # 商家转账单据终态通知
        }
        return self.sign(event, resource, associated_data="mch_payment", timestamp=int(at.timestamp()))

    def refund_success_callback(self, refund_no: str, out_trade_no: str, amount_fen: int, at: datetime) -> Callback:
        """``REFUND.SUCCESS`` for a refund the provider has finished."""
        status = self.refund_states[refund_no]
        total = self.amounts.get(out_trade_no, amount_fen)
        resource = {
            "mchid": "1900000109",
            "transaction_id": f"4200{uuid.uuid4().int % 10**24:024d}",
            "out_trade_no": out_trade_no,
            "refund_id": status.refund_id or f"50{refund_no[-20:]}",
            "out_refund_no": refund_no,
            "refund_status": "SUCCESS",
            "success_time": wechat_time(at),
            "user_received_account": "\u652f\u4ed8\u7528\u6237\u96f6\u94b1",  # 支付用户零钱
            "amount": {"total": total, "refund": amount_fen, "payer_total": total, "payer_refund": amount_fen},
        }
        event = {
            "id": str(uuid.uuid4()),
            "create_time": wechat_time(at),
            "event_type": "REFUND.SUCCESS",
            "summary": "\u9000\u6b3e\u6210\u529f",  # 退款成功
        }
        return self.sign(event, resource, associated_data="refund", timestamp=int(at.timestamp()))


# --- the business clock ---------------------------------------------------------------------------


@dataclass
class Clock:
    """The time the handlers see (jobs and domain calls are given it explicitly)."""

    now: datetime


@contextlib.contextmanager
def business_clock(clock: Clock) -> Iterator[None]:
    """Every handler module's ``utc_now`` reads ``clock`` until the block ends.

    The handlers import ``utc_now`` by name, so each module's own binding is replaced
    (as ``tests/unit/actors.freeze_clock`` does). Tokens are still checked against the
    real clock (``handlers.access``), so they are issued at the real time.
    """
    importlib.import_module("app")  # every blueprint, so every handler module, is loaded
    with pytest.MonkeyPatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.startswith("chalicelib.handlers.") and module is not None and hasattr(module, "utc_now"):
                patch.setattr(module, "utc_now", lambda: clock.now)
        yield


@dataclass
class World:
    """What every example shares: the HTTP client, an admin, the provider, the clock, and time used so far."""

    api: Any
    admin: Principal
    provider: ModelProvider
    clock: Clock
    floor: datetime
    """The latest business time any example used: the next one starts after it."""

    def next_start(self) -> tuple[list[datetime], datetime]:
        """``(times to settle leftovers at, the next example's start)``, all past everything so far.

        Every example starts at the same time of day (02:00 UTC, 10:00 in Shanghai): what an
        example does must depend on its steps only, or Hypothesis could not replay and shrink it.
        The leftovers of an example that failed (its own end was skipped) are settled four days
        later, when every deadline, hold and payment window it had has passed.
        """
        start = datetime.combine(self.floor.date() + timedelta(days=5), time(2), UTC)
        self.floor = start
        return [start - timedelta(hours=2), start - timedelta(hours=1)], start

    def used(self, instant: datetime) -> None:
        self.floor = max(self.floor, instant)


# --- reading the ledger -------------------------------------------------------------------------


def read_raw(wanted: dict[str, list[tuple[str, str]]]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Items by table name and key, raw, several tables in the same consistent BatchGetItem calls
    (100 keys a call, unprocessed keys retried): one round trip where there would be one per table.

    Raw, so that an item a bug wrote malformed (say a balance without its type) is read all the same.
    """
    client = LedgerTable._get_connection().connection.client
    found: dict[str, dict[tuple[str, str], dict[str, Any]]] = {table: {} for table in wanted}
    keys = [(table, pk, sk) for table, pairs in wanted.items() for pk, sk in pairs]
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {}
        for table, pk, sk in keys[start : start + 100]:
            request.setdefault(table, {"Keys": [], "ConsistentRead": True})["Keys"].append(
                {"pk": {"S": pk}, "sk": {"S": sk}}
            )
        while request:
            answer = client.batch_get_item(RequestItems=request)
            for table, items in answer["Responses"].items():
                for item in items:
                    found[table][(item["pk"]["S"], item["sk"]["S"])] = item
            request = answer.get("UnprocessedKeys") or {}
    return found


def read_ledger(keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Items of the Ledger table by key, raw (see ``read_raw``)."""
    table = LedgerTable.Meta.table_name
    return read_raw({table: keys})[table]


def _amount(item: dict[str, Any] | None) -> int:
    return int(item["balance"]["N"]) if item and "balance" in item else 0


def read_balances(accounts: Iterable[str]) -> dict[str, int]:
    """The balances of ``accounts`` (0 for one never posted to)."""
    balances, _, _ = read_books(accounts, (), ())
    return balances


def read_books(
    accounts: Iterable[str], orders: Iterable[str], invitation_ids: Iterable[str]
) -> tuple[dict[str, int], dict[str, Any], dict[str, Invitation]]:
    """Balances of ``accounts`` (0 when never posted to), the payment, refund and payout orders numbered
    ``orders`` (each as its own model class) and the invitations ``invitation_ids`` as stored, in the same
    BatchGets of the Ledger and Invitations tables."""
    wanted, numbers, invitations = sorted(set(accounts)), sorted(set(orders)), sorted(set(invitation_ids))
    ledger, table = LedgerTable.Meta.table_name, Invitation.Meta.table_name
    raw = read_raw(
        {
            ledger: [(f"ACCOUNT#{account}", "BALANCE") for account in wanted]
            + [(f"ORDER#{n}", "ORDER") for n in numbers],
            table: [(f"INVITATION#{key}", "META") for key in invitations],
        }
    )
    items = raw[ledger]
    balances = {account: _amount(items.get((f"ACCOUNT#{account}", "BALANCE"))) for account in wanted}
    found = {
        number: LedgerTable.from_raw_data(items[(f"ORDER#{number}", "ORDER")])
        for number in numbers
        if (f"ORDER#{number}", "ORDER") in items
    }
    stored = {
        key: Invitation.from_raw_data(raw[table][(f"INVITATION#{key}", "META")])
        for key in invitations
        if (f"INVITATION#{key}", "META") in raw[table]
    }
    return balances, found, stored


@dataclass
class Posted:
    """A journal transaction as read: its reference, entries and the time it was written."""

    reference: str
    entries: dict[str, int]
    at: str


class LedgerProbe:
    """The ledger invariants over what one example wrote since ``start`` (design.md §4).

    - L1: every transaction since the start sums to zero;
    - L2: each account's balance minus its balance at the start equals the sum of its entries
      written since the start, and every entry matches its transaction (both ways);
    - L3: no account but a provider's clearing account or a doctor's receivable is below zero,
      and no receivable is above zero;
    - L4: a transaction or entry once read never changes or disappears;
    - L6: money leaves an escrow (or a complaint's claim) in one entry at most.

    Accounts known at the start (``baseline``) are measured from their balance then; an
    account first seen in a transaction later (a new escrow, or an account of some other
    test's leftover work the jobs moved meanwhile) is adopted: all its entries are read
    once (L2 over its whole history), and from then on it is measured like the others.
    """

    def __init__(self, start: datetime, baseline: Iterable[str]) -> None:
        self.start_iso = iso(start)
        self.entry_floor = f"ENTRY#{self.start_iso}"
        self.base = read_balances(baseline)
        self.balances = dict(self.base)
        self.journal: dict[str, Posted] = {}
        self.entries: dict[str, dict[str, tuple[str, int]]] = {account: {} for account in self.base}
        self.orders: dict[str, Any] = {}
        self.invitations: dict[str, Invitation] = {}

    # -- each step ------------------------------------------------------------------------------

    def step(self, orders: Iterable[str] = (), invitation_ids: Iterable[str] = ()) -> list[str]:
        """Read what changed since the last step and check it; the violations found.

        ``orders`` (order numbers) and ``invitation_ids`` are read in the same BatchGets as the
        balances (``self.orders``, ``self.invitations``), for the caller to compare.
        """
        violations: list[str] = []
        fresh = self._read_journal(violations)
        touched = {account for posted in fresh.values() for account in posted.entries}
        for account in sorted(touched - set(self.base)):
            self._adopt(account, violations)
        balances, self.orders, self.invitations = read_books(self.base, orders, invitation_ids)
        moved = {account for account, amount in balances.items() if amount != self.balances.get(account)}
        self.balances = balances
        for account in sorted(touched | moved):
            self._check_account(account, violations)
        violations += [
            f"L3: {account} is {amount} fen, below zero"
            for account, amount in sorted(balances.items())
            if amount < 0 and not may_overdraw(account)
        ]
        violations += [
            f"L3: {account} is {amount} fen: a receivable above zero"
            for account, amount in sorted(balances.items())
            if amount > 0 and is_receivable(account)
        ]
        return violations

    def deep(self) -> list[str]:
        """Every account of the example read again in full since the start (L2, L4, L6)."""
        violations: list[str] = []
        self._read_journal(violations)
        self.balances = read_balances(self.base)
        for account in sorted(self.base):
            self._check_account(account, violations)
        return violations

    def moved_since_start(self, account: str) -> int:
        return self.balances.get(account, 0) - self.base.get(account, 0)

    # -- the parts ------------------------------------------------------------------------------

    def _read_journal(self, violations: list[str]) -> dict[str, Posted]:
        fresh: dict[str, Posted] = {}
        seen: set[str] = set()
        query = JournalTransaction.by_owner.query(TRANSACTIONS_LIST, JournalTransaction.created_at >= self.start_iso)
        for tx in query:
            seen.add(tx.tx_id)
            entries = {account: int(amount) for account, amount in tx.entries.as_dict().items()}
            if sum(entries.values()) != 0:
                violations.append(f"L1: transaction {tx.tx_id} sums to {sum(entries.values())}: {entries}")
            known = self.journal.get(tx.tx_id)
            if known is None:
                fresh[tx.tx_id] = Posted(tx.reference, entries, (tx.created_at or "").split("#", 1)[0])
            elif (known.reference, known.entries) != (tx.reference, entries):
                violations.append(
                    f"L4: transaction {tx.tx_id} changed from {known.reference} {known.entries} "
                    f"to {tx.reference} {entries}"
                )
        violations += [f"L4: transaction {tx_id} disappeared" for tx_id in sorted(set(self.journal) - seen)]
        self.journal.update(fresh)
        return fresh

    def _adopt(self, account: str, violations: list[str]) -> None:
        """An account first seen now: L2 over its whole history, then measured from the start."""
        everything = {
            row.sk: (row.tx_id, int(row.amount))
            for row in LedgerEntry.query(
                f"ACCOUNT#{account}", LedgerEntry.sk.startswith("ENTRY#"), consistent_read=True
            )
        }
        held = read_balances([account])[account]
        if sum(amount for _, amount in everything.values()) != held:
            violations.append(f"L2: {account} holds {held} fen but all its entries sum to {sum(everything.values())}")
        since = sum(amount for sk, (_, amount) in everything.items() if sk >= self.entry_floor)
        self.base[account] = held - since
        self.balances[account] = held
        self.entries[account] = {}

    def _check_account(self, account: str, violations: list[str]) -> None:
        rows = {
            row.sk: (row.tx_id, int(row.amount))
            for row in LedgerEntry.query(f"ACCOUNT#{account}", LedgerEntry.sk >= self.entry_floor, consistent_read=True)
        }
        for sk, was in self.entries[account].items():
            if rows.get(sk) != was:
                violations.append(f"L4: entry {sk} of {account} was {was}, now {rows.get(sk)}")
        for sk, (tx_id, amount) in rows.items():
            posted = self.journal.get(tx_id)
            if posted is None or posted.entries.get(account) != amount:
                violations.append(
                    f"L2: entry {sk} of {account} ({amount} fen) does not match transaction {tx_id}: "
                    f"{posted.entries if posted else 'not in the journal'}"
                )
        for tx_id, posted in self.journal.items():
            if account in posted.entries and f"ENTRY#{posted.at}#{tx_id}" not in rows:
                violations.append(f"L2: transaction {tx_id} has no entry on {account}")
        moved = self.balances[account] - self.base[account]
        written = sum(amount for _, amount in rows.values())
        if moved != written:
            violations.append(
                f"L2: {account} moved {moved} fen since the start but its entries since then sum to {written}"
            )
        if is_escrow(account):
            leaving = sorted(tx_id for tx_id, amount in rows.values() if amount < 0)
            if len(leaving) > 1:
                violations.append(f"L6: money left {account} more than once: {leaving}")
        self.entries[account] = rows
