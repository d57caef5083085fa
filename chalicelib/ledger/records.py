"""Each party's side of a ledger transaction: the statement behind ``GET /v1/me/transactions``.

A posting names accounts, not people. This module says whom a posting concerns and how
it looks to them: every doctor whose balances it moves (``doctor:<id>:<balance>``), and
the payer whose money came from or went back to a provider (``Posting.payer``: the
change of the provider's clearing accounts, seen from the payer's pocket). The records
are written in the posting's own transaction, so a statement never disagrees with the
ledger. ``statement`` lists them for ``GET /v1/me/transactions``.

Example
-------
>>> pay = Posting("pay:PIi1", "payment", {"provider:sandbox:0": -500, "escrow:i1": 500}, "invitation:i1", payer="u1")
>>> [(r.user_id, r.direction, r.amount_fen, r.status) for r in records_of(pay)]
[('u1', 'out', 500, 'paid')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

if TYPE_CHECKING:
    from chalicelib.ledger.journal import Posting
    from chalicelib.models.ledger import MoneyRecord

STATUS = {
    "payment": "paid",
    "acceptance": "held",
    "release": "available",
    "refund": "refunded",
    "tip": "paid",
    "membership": "paid",
    "withdrawal": "requested",
    "payout": "paid_out",
    "payout_return": "returned",
    "claim": "taken_back",
}
"""Where the money of each kind of movement stands once it is posted."""
DOCTOR_ACCOUNT = re.compile(r"doctor:(?P<doctor>[A-Za-z0-9_-]{1,64}):(?P<balance>pending|available|payout|receivable)")
ORDER_NUMBER = re.compile(r"(PI|RF|PT|PM|WD)[A-Za-z0-9]{1,64}")


@dataclass(frozen=True)
class Record:
    """How one posting looks to one user: ``in``, ``out`` or ``internal`` (between their own balances)."""

    user_id: str
    direction: str
    amount_fen: int
    status: str
    balances: dict[str, int] | None = None


def records_of(posting: Posting) -> list[Record]:
    """The records of ``posting``: one per doctor it moves, and one for its payer."""
    status = STATUS.get(posting.kind, "completed")
    doctors: dict[str, dict[str, int]] = {}
    for account, amount in sorted(posting.entries.items()):
        match = DOCTOR_ACCOUNT.fullmatch(account)
        if match:
            doctors.setdefault(match["doctor"], {})[match["balance"]] = amount
    records = [_record(doctor, balances, status) for doctor, balances in doctors.items()]
    if posting.payer:
        paid = sum(amount for account, amount in posting.entries.items() if account.startswith("provider:"))
        if paid:
            records.append(Record(posting.payer, "in" if paid > 0 else "out", abs(paid), status))
    return records


def _record(user_id: str, balances: dict[str, int], status: str) -> Record:
    net = sum(balances.values())
    if net:
        return Record(user_id, "in" if net > 0 else "out", abs(net), status, balances)
    return Record(user_id, "internal", sum(amount for amount in balances.values() if amount > 0), status, balances)


def order_of(tx_id: str) -> str | None:
    """The payment, refund or payout order a transaction settles, when its id names one (``pay:PI…`` → ``PI…``)."""
    _, _, rest = tx_id.partition(":")
    return rest if ORDER_NUMBER.fullmatch(rest) else None


class StatementQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``GET /v1/me/transactions`` query: page size and cursor."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: str | None = None


def statement(user_id: str, query: StatementQuery) -> dict[str, Any]:
    """The user's money movements, newest first (one Query of their ``RECORD#`` partition).

    >>> statement("u1", StatementQuery(limit=1))["items"][0]["type"]  # doctest: +SKIP
    'payment'
    """
    from chalicelib.models.ledger import MoneyRecord
    from chalicelib.pagination import decode_cursor, encode_cursor, read_page

    scope = f"transactions:{user_id}"

    def page(**kwargs: Any) -> Any:
        return MoneyRecord.query(f"RECORD#{user_id}", scan_index_forward=False, **kwargs)

    items, last = read_page(page, MoneyRecord, limit=query.limit, start=decode_cursor(query.cursor, scope))
    return {"items": [_view(item) for item in items], "next_cursor": encode_cursor(last, scope)}


def _view(record: MoneyRecord) -> dict[str, Any]:
    kind, _, ref = record.reference.partition(":")
    return {
        "transaction_id": record.tx_id,
        "type": record.kind,
        "direction": record.direction,
        "amount_fen": int(record.amount_fen),
        "currency": "CNY",
        "status": record.status,
        "balances": {name: int(amount) for name, amount in record.balances.as_dict().items()}
        if record.balances
        else None,
        "invitation_id": ref if kind == "invitation" else None,
        "order_id": order_of(record.tx_id),
        "created_at": record.created_at,
    }
