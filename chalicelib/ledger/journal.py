"""Posting money movements: one journal transaction, its entries and the balances, at once.

A ``Posting`` is written in one ``TransactWriteItems`` with the business change it belongs
to (the caller's ``Batch``): the journal item (``attribute_not_exists``: its id is the
idempotency key), one entry per account, and each balance moved with ``ADD`` — safe
because the journal condition makes a repeated transaction fail as a whole — under a
condition that a non-overdraft account never goes below zero (and a receivable never
above it).

Example
-------
>>> pay = Posting("pay:o-1", "payment", {provider("sandbox"): -50000, escrow("i-1"): 50000}, "invitation:i-1")
>>> post(pay, utc_now())  # doctest: +SKIP
True
>>> post(pay, utc_now())  # the same posting again: nothing moves  # doctest: +SKIP
False
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.ledger.accounts import ACCOUNT_NAME, is_receivable, may_overdraw
from chalicelib.ledger.records import records_of
from chalicelib.models.ledger import AccountBalance, JournalTransaction, LedgerEntry, LedgerTable, MoneyRecord
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

TRANSACTIONS_LIST = "LEDGER#TX"
ACCOUNTS_LIST = "LEDGER#ACCOUNTS"
TX_ID = re.compile(r"[a-z_]+:[A-Za-z0-9:_-]{1,200}")
MAX_FEN = 10**12
"""Ten billion yuan: far above any real movement, far below DynamoDB's 38 digits."""
MAX_ACCOUNTS = 20
"""Accounts one posting may touch: with their entries and balances, within a transaction's 100 actions."""


@dataclass(frozen=True)
class Posting:
    """A balanced money movement: signed fen per account, summing to zero."""

    tx_id: str
    kind: str
    entries: Mapping[str, int]
    reference: str
    payer: str | None = None
    """The user whose own money the provider accounts stand for here (who paid, or is refunded)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))  # no change after the checks
        if not TX_ID.fullmatch(self.tx_id):
            raise ValueError(f"not a transaction id: {self.tx_id!r}")
        if not self.entries or len(self.entries) > MAX_ACCOUNTS:
            raise ValueError(f"a posting touches 1 to {MAX_ACCOUNTS} accounts")
        for account, amount in self.entries.items():
            if not ACCOUNT_NAME.fullmatch(account):
                raise ValueError(f"not an account name: {account!r}")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0 or abs(amount) > MAX_FEN:
                raise ValueError(f"an entry is a non-zero whole number of fen up to {MAX_FEN}, got {amount!r}")
        if sum(self.entries.values()) != 0:
            raise ValueError(f"entries must sum to zero, got {sum(self.entries.values())}")

    @property
    def fingerprint(self) -> str:
        """What makes two postings with one id the same posting."""
        parts: list[Any] = [self.kind, self.reference, sorted(self.entries.items())]
        if self.payer:
            parts.append(self.payer)
        body = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


def add_posting(batch: Batch, posting: Posting, now: datetime) -> None:
    """Add the posting's journal item, entries, balance moves and its parties' records to ``batch``."""
    at = iso(now)
    journal = JournalTransaction(f"TX#{posting.tx_id}", "TX")
    journal.tx_id, journal.kind, journal.reference = posting.tx_id, posting.kind, posting.reference
    journal.entries, journal.fingerprint = dict(posting.entries), posting.fingerprint
    journal.owner_key, journal.created_at = TRANSACTIONS_LIST, f"{at}#{posting.tx_id}"
    batch.put("journal", journal, condition=JournalTransaction.pk.does_not_exist())
    for account, amount in sorted(posting.entries.items()):
        entry = LedgerEntry(f"ACCOUNT#{account}", f"ENTRY#{at}#{posting.tx_id}")
        entry.tx_id, entry.amount, entry.created_at = posting.tx_id, amount, at
        batch.put(f"entry:{account}", entry, condition=LedgerEntry.pk.does_not_exist())
        guard = _guard(account, amount)
        batch.update(
            f"balance:{account}",
            AccountBalance(f"ACCOUNT#{account}", "BALANCE"),
            actions=[
                AccountBalance.item_type.set(AccountBalance),
                AccountBalance.account.set(account),
                AccountBalance.owner_key.set(ACCOUNTS_LIST),
                AccountBalance.created_at.set(AccountBalance.created_at | f"{at}#{account}"),
                AccountBalance.balance.add(amount),
            ],
            condition=guard,
        )
    for party in records_of(posting):
        record = MoneyRecord(f"RECORD#{party.user_id}", f"{at}#{posting.tx_id}")
        record.tx_id, record.kind, record.reference = posting.tx_id, posting.kind, posting.reference
        record.created_at = at
        record.direction, record.amount_fen, record.status = party.direction, party.amount_fen, party.status
        record.balances = party.balances
        batch.put(f"record:{party.user_id}", record, condition=MoneyRecord.pk.does_not_exist())


def _guard(account: str, amount: int) -> Any:
    """Non-overdraft accounts never go below zero; a receivable never goes above zero."""
    if is_receivable(account):
        return AccountBalance.balance <= -amount if amount > 0 else None
    if amount > 0 or may_overdraw(account):
        return None
    return AccountBalance.balance >= -amount


def post(posting: Posting, now: datetime, batch: Batch | None = None) -> bool:
    """Write ``posting`` (with ``batch``'s business change); False when it was already written.

    When one of ``batch``'s own actions failed, ``TransactionCancelledError`` goes to the
    caller first, whatever else failed (its ``already_posted`` says whether the posting
    exists): only the caller can explain its condition. Otherwise 409
    ``ledger_transaction_conflict`` when the id was used for another movement, 409
    ``insufficient_funds`` when an account would go below zero, and 409 ``conflict`` when
    a concurrent transaction or throttling stopped it (retry).
    """
    batch = batch or Batch()
    if any(_is_ledger_action(name) for name in batch.names):
        raise ValueError("the business actions of a posting must not use the ledger's action names")
    add_posting(batch, posting, now)
    # botocore's own retries of this call reuse its ClientRequestToken, so a retry after a
    # lost answer replays the committed result; a later call of post() meets the journal's
    # condition instead and learns that the posting exists.
    try:
        batch.commit(LedgerTable._get_connection().connection)
    except TransactionCancelledError as cancelled:
        business = [name for name in cancelled.failed if not _is_ledger_action(name)]
        if business:
            cancelled.already_posted = "journal" in cancelled.failed
            raise  # the caller's own condition failed: only it can say why
        if "journal" in cancelled.failed:
            return _already_posted(posting)
        if any(is_receivable(name.removeprefix("balance:")) for name in cancelled.failed):
            raise busy() from None  # another posting paid the debt back meanwhile: read it again
        if cancelled.failed:  # a balance guard: the account would go below zero
            raise ApiError(409, "insufficient_funds", "The balance does not cover this movement", "余额不足") from None
        raise busy() from None
    return True


def _is_ledger_action(name: str) -> bool:
    return name == "journal" or name.startswith(("entry:", "balance:", "record:"))


def _already_posted(posting: Posting) -> bool:
    try:
        existing = JournalTransaction.get(f"TX#{posting.tx_id}", "TX", consistent_read=True)
    except DoesNotExist:  # a conflicting write vanished: nothing to compare against
        raise busy() from None
    if existing.fingerprint != posting.fingerprint:
        raise ApiError(
            409,
            "ledger_transaction_conflict",
            "This transaction id was already used for another movement",
            "该交易编号已用于另一笔资金变动",
            {"tx_id": posting.tx_id},
        )
    return False


def balance(account: str) -> int:
    """The balance of ``account`` in fen (0 for an account never posted to), read consistently."""
    try:
        return int(AccountBalance.get(f"ACCOUNT#{account}", "BALANCE", consistent_read=True).balance)
    except DoesNotExist:
        return 0


def transaction(tx_id: str) -> dict[str, Any] | None:
    """A posted transaction as stored (None when it was never posted)."""
    try:
        item = JournalTransaction.get(f"TX#{tx_id}", "TX", consistent_read=True)
    except DoesNotExist:
        return None
    return {"tx_id": item.tx_id, "kind": item.kind, "reference": item.reference, "entries": item.entries.as_dict()}
