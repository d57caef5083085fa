"""Posting money movements: one journal transaction, its entries and the balances, at once.

A ``Posting`` is written in one ``TransactWriteItems`` with the business change it belongs
to (the caller's ``Batch``): the journal item (``attribute_not_exists``: its id is the
idempotency key), one entry per account, and each balance moved with ``ADD`` — safe
because the journal condition makes a repeated transaction fail as a whole — under a
condition that a non-overdraft account never goes below zero.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.clock import iso
from chalicelib.errors import ApiError
from chalicelib.ledger.accounts import ACCOUNT_NAME, may_overdraw
from chalicelib.models.ledger import AccountBalance, JournalTransaction, LedgerEntry, LedgerTable
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy

if TYPE_CHECKING:
    from datetime import datetime

TRANSACTIONS_LIST = "LEDGER#TX"
ACCOUNTS_LIST = "LEDGER#ACCOUNTS"
MAX_ACCOUNTS = 20
"""Accounts one posting may touch: with their entries and balances, within a transaction's 100 actions."""


@dataclass(frozen=True)
class Posting:
    """A balanced money movement: signed fen per account, summing to zero."""

    tx_id: str
    kind: str
    entries: dict[str, int]
    reference: str

    def __post_init__(self) -> None:
        if not self.entries or len(self.entries) > MAX_ACCOUNTS:
            raise ValueError(f"a posting touches 1 to {MAX_ACCOUNTS} accounts")
        for account, amount in self.entries.items():
            if not ACCOUNT_NAME.match(account):
                raise ValueError(f"not an account name: {account!r}")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
                raise ValueError(f"an entry is a non-zero whole number of fen, got {amount!r} for {account}")
        if sum(self.entries.values()) != 0:
            raise ValueError(f"entries must sum to zero, got {sum(self.entries.values())}")

    @property
    def fingerprint(self) -> str:
        """What makes two postings with one id the same posting."""
        body = json.dumps([self.kind, self.reference, sorted(self.entries.items())], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


def add_posting(batch: Batch, posting: Posting, now: datetime) -> None:
    """Add the posting's journal item, entries and balance moves to ``batch``."""
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
        guard = None if amount > 0 or may_overdraw(account) else AccountBalance.balance >= -amount
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


def post(posting: Posting, now: datetime, batch: Batch | None = None) -> bool:
    """Write ``posting`` (with ``batch``'s business change); False when it was already written.

    409 ``ledger_transaction_conflict`` when the id was used for another movement,
    409 ``insufficient_funds`` when an account would go below zero, 409 ``conflict``
    when a concurrent transaction held an item (retry). Any other cancelled action of
    ``batch`` raises ``TransactionCancelledError`` for the caller to explain.
    """
    batch = batch or Batch()
    add_posting(batch, posting, now)
    # No ClientRequestToken: a retry must meet the journal's own condition and learn that
    # the posting exists (a token would replay "success" for 10 minutes, and make
    # concurrent senders of one posting fail with TransactionInProgressException).
    try:
        batch.commit(LedgerTable._get_connection().connection)
    except TransactionCancelledError as cancelled:
        if "journal" in cancelled.failed:
            return _already_posted(posting)
        overdrawn = [name.removeprefix("balance:") for name in cancelled.failed if name.startswith("balance:")]
        if overdrawn:
            raise ApiError(
                409,
                "insufficient_funds",
                "The balance does not cover this movement",
                "余额不足",
                {"accounts": overdrawn},
            ) from None
        if cancelled.conflicted and not cancelled.failed:
            raise busy() from None
        raise
    return True


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
