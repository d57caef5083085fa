"""The ledger's invariants, checked over the whole ledger (``make check-ledger``).

- L1: every transaction's entries sum to zero, and so do all balances together.
- L2: every balance equals the sum of its account's entries, and every entry matches
  its transaction.
- L3: no account but a provider's clearing account or a doctor's receivable is below zero,
  and no receivable is above zero.
- L6: an escrow (or a complaint's claim) is resolved at most once (money leaves it in one
  transaction at most).

Beside the invariants it lists what an operator must look at (``attention``): refunds the
provider refused or that keep failing, and verified callbacks for orders that are not
ours (quarantined). They are not violations — the money is still where the ledger says.

It reads every transaction, balance and entry through Queries (the ``by_owner`` lists
and each account's partition), never a Scan: an operator command, whose cost grows with
the ledger, not a request path.

Example
-------
>>> check_ledger().violations  # doctest: +SKIP
[]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chalicelib.ledger.accounts import is_escrow, is_receivable, may_overdraw
from chalicelib.ledger.journal import ACCOUNTS_LIST, TRANSACTIONS_LIST
from chalicelib.models.ledger import AccountBalance, JournalTransaction, LedgerEntry


@dataclass
class LedgerReport:
    """What an audit read and what it found wrong (nothing, when ``ok``)."""

    transactions: int = 0
    accounts: int = 0
    entries: int = 0
    violations: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "transactions": self.transactions,
            "accounts": self.accounts,
            "entries": self.entries,
            "violations": self.violations,
            "attention": self.attention,
        }


def check_ledger() -> LedgerReport:
    """Check L1, L2, L3 and L6 over every transaction, balance and entry."""
    report = LedgerReport()
    expected: dict[tuple[str, str], int] = {}
    escrow_releases: Counter[str] = Counter()
    for tx in JournalTransaction.by_owner.query(TRANSACTIONS_LIST):
        report.transactions += 1
        entries = {account: int(amount) for account, amount in tx.entries.as_dict().items()}
        if sum(entries.values()) != 0:
            report.violations.append(f"L1: transaction {tx.tx_id} sums to {sum(entries.values())}")
        for account, amount in entries.items():
            expected[(account, tx.tx_id)] = amount
            if is_escrow(account) and amount < 0:
                escrow_releases[account] += 1
    total = 0
    for held in AccountBalance.by_owner.query(ACCOUNTS_LIST):
        report.accounts += 1
        account, amount = held.account, int(held.balance)
        total += amount
        if amount < 0 and not may_overdraw(account):
            report.violations.append(f"L3: {account} is {amount} fen, below zero")
        if amount > 0 and is_receivable(account):
            report.violations.append(f"L3: {account} is {amount} fen: a receivable above zero")
        entries_sum = 0
        for entry in LedgerEntry.query(f"ACCOUNT#{account}", LedgerEntry.sk.startswith("ENTRY#")):
            report.entries += 1
            entries_sum += int(entry.amount)
            if expected.pop((account, entry.tx_id), None) != int(entry.amount):
                report.violations.append(f"L2: entry {entry.sk} of {account} does not match transaction {entry.tx_id}")
        if entries_sum != amount:
            report.violations.append(f"L2: {account} holds {amount} fen but its entries sum to {entries_sum}")
    if total != 0:
        report.violations.append(f"L1: all balances together are {total} fen, not zero")
    report.violations += [f"L2: transaction {tx_id} has no entry on {account}" for account, tx_id in sorted(expected)]
    report.violations += [
        f"L6: {account} was released or refunded {count} times"
        for account, count in sorted(escrow_releases.items())
        if count > 1
    ]
    report.attention = _attention()
    return report


def _attention() -> list[str]:
    """Refunds needing an operator, and quarantined callbacks (Queries on sparse lists)."""
    from chalicelib.models.ledger import QuarantinedEvent
    from chalicelib.payments.callbacks import QUARANTINE_LIST
    from chalicelib.payments.refunds import needing_attention

    notes = [
        f"refund {refund.refund_no} ({refund.status}, {int(refund.attempts)} tries): {refund.last_error or '-'}"
        for refund in needing_attention()
    ]
    notes += [
        f"callback {item.event_id} on {item.channel} for unknown {item.merchant_ref}: quarantined"
        for item in QuarantinedEvent.by_owner.query(QUARANTINE_LIST, limit=100)
    ]
    return notes
