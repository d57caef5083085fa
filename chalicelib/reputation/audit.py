"""``make recompute-stars``: rebuild every doctor's reputation from the source items and compare.

For each doctor account it counts again, from the Invitations table, the confirmed
invitations, the reviews and the active penalties of confirmed complaints, derives the
level with the published formula, and reports every doctor whose stored reputation
differs. With ``fix`` it also writes the rebuilt values (and the marks of the facts, so
the stream cannot count them again).

The caller lists the doctors (``make recompute-stars`` scans the Users table for them: an
operator's audit that by definition reads everything, never a request or a scheduled job).

Example
-------
>>> recompute(doctor_accounts, fix=False, now=utc_now()).as_dict()  # doctest: +SKIP
{'ok': True, 'doctors': 12, 'differences': [], 'fixed': 0}
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chalicelib.clock import iso
from chalicelib.models.transactions import Batch, TransactionCancelledError
from chalicelib.models.users import Account, ReputationMark
from chalicelib.reputation import aggregates

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime


@dataclass
class StarsReport:
    doctors: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    fixed: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "doctors": self.doctors, "differences": self.differences, "fixed": self.fixed}


def difference(account: Account) -> dict[str, Any] | None:
    """How the doctor's stored reputation differs from the rebuilt one (None when it does not)."""
    have = aggregates.stored(account)
    want = aggregates.expected(account, aggregates.rebuild(account.user_id))
    changed = {name: {"stored": have[name], "rebuilt": want[name]} for name in want if have[name] != want[name]}
    return {"doctor_id": account.user_id, "fields": changed} if changed else None


def recompute(doctors: Iterable[Account], *, fix: bool, now: datetime) -> StarsReport:
    """Compare each of ``doctors`` (and, with ``fix``, repair the ones that differ)."""
    report = StarsReport()
    for account in doctors:
        report.doctors += 1
        found = difference(account)
        if found is None:
            continue
        report.differences.append(found)
        if fix and _fix(account.user_id, now):
            report.fixed += 1
    return report


def _fix(doctor_id: str, now: datetime) -> bool:
    """Mark every source fact as applied, then write the rebuilt reputation (conditional on what was read)."""
    for key in aggregates.source_facts(doctor_id):
        mark = ReputationMark(f"USER#{doctor_id}", f"REPUTATION#{key}")
        mark.applied_at = iso(now)
        batch = Batch()
        batch.put("mark", mark, condition=ReputationMark.sk.does_not_exist())
        with contextlib.suppress(TransactionCancelledError):  # applied already
            batch.commit(ReputationMark._get_connection().connection)
    account = Account.get(f"USER#{doctor_id}", "PROFILE", consistent_read=True)
    values = aggregates.expected(account, aggregates.rebuild(doctor_id))
    actions = [*aggregates.update_actions(values, now), Account.anesthesia_count.set(values["anesthesia_count"])]
    batch = Batch()
    batch.update(
        "doctor",
        account,
        actions=actions,
        condition=Account.revision == account.revision,  # a confirmation moves the revision with the count
    )
    try:
        batch.commit(Account._get_connection().connection)
    except TransactionCancelledError:
        return False  # changed meanwhile: run the command again
    return True
