"""Helpers for the invitation-flow unit tests: a fake payment provider and a paid invitation in a few calls.

``FakeProvider`` stands in for the sandbox provider (``registry.use_provider``): it records
every call and answers a refund with the state the test chooses. ``installed`` puts it in
place for a block and always takes it out again. ``make_flow`` builds the people (an
admin, a verified doctor with a working day, a patient); ``paid_invitation`` creates an
invitation over HTTP, opens its payment order and applies the provider's success through
``settlement.apply_payment`` — the path a verified callback takes.

The fixtures ``fake`` (the provider, installed) and ``flow`` (the people) are defined here
for the flow test modules, which import ``fake_provider_fixture`` and ``flow_fixture``.

Example
-------
>>> with installed() as fake:  # doctest: +SKIP
...     flow = make_flow(client)
...     invitation = paid_invitation(client, flow)
...     invitation["status"]
'pending_response'
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import SHANGHAI, shanghai_date
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance
from chalicelib.models.invitations import Notice
from chalicelib.payments import registry, settlement
from chalicelib.payments.provider import (
    Channel,
    HttpReply,
    PaymentIntent,
    PaymentRequest,
    PaymentStatus,
    ProviderError,
    RefundRequest,
    RefundState,
    RefundStatus,
)
from tests.unit.actors import call, expect, freeze_clock, make_admin, make_verified_doctor, register, seed_hospitals

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from chalice.test import Client

    from tests.unit.actors import Actor, Hospitals

DAYS_AHEAD = 3
"""The invitation day, counted from today in Asia/Shanghai: far enough for the 24 h answer window."""
FEE = 300_000
"""``actors.DOCTOR_PROFILE``'s invitation fee (fen)."""
CONSULTATION_FEE = 20_000
_refs = itertools.count(1)


@dataclass
class FakeProvider:
    """An in-memory ``Provider``: records calls; answers refunds with ``refund_state``."""

    channel: Channel = "sandbox"
    refund_state: RefundState = "succeeded"
    close_error: ProviderError | None = None
    created: list[PaymentRequest] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    refunds: list[RefundRequest] = field(default_factory=list)

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        self.created.append(request)
        ref = f"prepay-{next(_refs)}"
        return PaymentIntent(ref, {"package": f"prepay_id={ref}"})

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        return PaymentStatus(out_trade_no, "pending")

    def close_payment(self, out_trade_no: str) -> None:
        if self.close_error is not None:
            raise self.close_error
        self.closed.append(out_trade_no)

    def refund(self, request: RefundRequest) -> RefundStatus:
        self.refunds.append(request)
        return RefundStatus(request.out_refund_no, self.refund_state, f"rf-{next(_refs)}", request.amount_fen)

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        return RefundStatus(out_refund_no, self.refund_state, None, None)

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        raise NotImplementedError("the fake provider takes no callbacks")

    def acknowledge(self, accepted: bool) -> HttpReply:
        return HttpReply(204 if accepted else 400)


@contextlib.contextmanager
def installed(fake: FakeProvider | None = None) -> Iterator[FakeProvider]:
    """``fake`` (a new one by default) as the adapter of its channel for the block."""
    fake = fake or FakeProvider()
    registry.use_provider(fake.channel, fake)
    try:
        yield fake
    finally:
        registry.use_provider(fake.channel, None)


@dataclass(frozen=True)
class Flow:
    """The people of a flow test and the doctor's working day (``YYYY-MM-DD``)."""

    admin: Actor
    hospitals: Hospitals
    doctor: Actor
    patient: Actor
    day: str


@pytest.fixture(name="fake")
def fake_provider_fixture(client: Client) -> Iterator[FakeProvider]:
    """A ``FakeProvider`` installed as the sandbox channel for the test."""
    with installed() as provider:
        yield provider


@pytest.fixture(name="flow")
def flow_fixture(client: Client, fake: FakeProvider) -> Flow:
    """``make_flow``'s people, with ``fake`` installed."""
    return make_flow(client)


def day_ahead(days: int = DAYS_AHEAD) -> str:
    return (shanghai_date(datetime.now(UTC)) + timedelta(days=days)).isoformat()


def evening_before(day: str, hour: int) -> datetime:
    """``hour``:00 in Shanghai on the day before ``day`` (``YYYY-MM-DD``)."""
    date = datetime.fromisoformat(day).date()
    return datetime(date.year, date.month, date.day, hour, 0, tzinfo=SHANGHAI) - timedelta(days=1)


def set_day(
    client: Client,
    doctor: Actor,
    day: str,
    *,
    working: bool = True,
    invitation_capacity: int = 3,
    consultation_capacity: int = 2,
) -> None:
    """PUT one calendar day of ``doctor``."""
    setting = {
        "date": day,
        "working": working,
        "invitation_capacity": invitation_capacity,
        "consultation_capacity": consultation_capacity,
    }
    expect(call(client, "PUT", "/v1/me/calendar", doctor, {"days": [setting]}), 200)


def make_flow(client: Client, *, invitation_capacity: int = 3, consultation_capacity: int = 2) -> Flow:
    """Seeded hospitals, an admin, a verified doctor at PUMCH working ``DAYS_AHEAD`` days from now, a patient."""
    hospitals = seed_hospitals()
    admin = make_admin(client)
    doctor = make_verified_doctor(client, admin, hospitals.pumch)
    day = day_ahead()
    set_day(client, doctor, day, invitation_capacity=invitation_capacity, consultation_capacity=consultation_capacity)
    return Flow(admin, hospitals, doctor, register(client, "patient"), day)


def summary(**changes: Any) -> dict[str, Any]:
    """A valid pre-anesthesia summary."""
    return {
        "asa_class": "II",
        "emergency": False,
        "airway": {"mallampati": 2},
        "fasting": "fasted",
        "anticoagulants": ["aspirin"],
        "allergies": ["penicillin"],
        "latex_allergy": False,
        "malignant_hyperthermia_family_history": "no",
        "age_years": 58,
        "weight_kg": 72.5,
        **changes,
    }


def request_body(flow: Flow, *, kind: str = "invitation", time: str = "09:00", **changes: Any) -> dict[str, Any]:
    """A valid ``POST /v1/invitations`` body for ``flow``'s doctor and day (a consultation has no operation)."""
    body: dict[str, Any] = {
        "kind": kind,
        "doctor_id": flow.doctor.user_id,
        "hospital_id": flow.hospitals.pumch,
        "date": flow.day,
        "time": time,
    }
    if kind == "invitation":
        body.update(operation={"procedure": "Hip replacement", "expected_minutes": 120}, summary=summary())
    else:
        body["note"] = "Questions about anesthesia for my father"
    body.update(changes)
    return body


def create_invitation(client: Client, requester: Actor, body: dict[str, Any]) -> dict[str, Any]:
    return expect(call(client, "POST", "/v1/invitations", requester, body), 201)


def open_order(
    client: Client, payer: Actor, invitation_id: str, *, channel: str = "sandbox", **changes: Any
) -> dict[str, Any]:
    body = {"purpose": "invitation", "reference": invitation_id, "channel": channel, **changes}
    return expect(call(client, "POST", "/v1/payments", payer, body), 201)


def pay(
    order_id: str, amount_fen: int, *, now: datetime | None = None, txn: str | None = None, event_id: str | None = None
) -> str:
    """What a verified ``SUCCESS`` callback does: ``settlement.apply_payment``."""
    ref = next(_refs)
    outcome = settlement.Outcome(order_id, "succeeded", txn or f"txn-{ref}", amount_fen, "CNY")
    return settlement.apply_payment(outcome, now or datetime.now(UTC), event_id=event_id or f"event-{ref}")


def paid_invitation(
    client: Client,
    flow: Flow,
    *,
    requester: Actor | None = None,
    kind: str = "invitation",
    now: datetime | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Create, order and pay an invitation; the requester's view of it afterwards."""
    requester = requester or flow.patient
    invitation = create_invitation(client, requester, request_body(flow, kind=kind, **changes))
    order = open_order(client, requester, invitation["invitation_id"])
    assert pay(order["order_id"], order["amount_fen"], now=now) == "applied"
    return read(client, requester, invitation["invitation_id"])


def accepted(client: Client, flow: Flow, **changes: Any) -> dict[str, Any]:
    """A paid invitation (``paid_invitation``'s ``changes``) the doctor has accepted; the doctor's answer."""
    invitation = paid_invitation(client, flow, **changes)
    return expect(act(client, flow.doctor, invitation["invitation_id"], "accept"), 200)


def read(client: Client, actor: Actor, invitation_id: str) -> dict[str, Any]:
    return expect(call(client, "GET", f"/v1/invitations/{invitation_id}", actor), 200)


def act(client: Client, actor: Actor, invitation_id: str, action: str, body: dict[str, Any] | None = None) -> Any:
    """``POST /v1/invitations/{id}/{action}`` (the raw response)."""
    return call(client, "POST", f"/v1/invitations/{invitation_id}/{action}", actor, body)


def scheduled_at(invitation: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(invitation["scheduled_at"])


def complete_after(
    client: Client, flow: Flow, invitation: dict[str, Any], monkeypatch: pytest.MonkeyPatch, after: timedelta
) -> tuple[dict[str, Any], datetime]:
    """The doctor completes the accepted ``invitation`` ``after`` its scheduled time; the answer, and that instant.

    The handlers' clock stays frozen at that instant.
    """
    done_at = scheduled_at(invitation) + after
    freeze_clock(monkeypatch, done_at)
    return expect(act(client, flow.doctor, invitation["invitation_id"], "complete"), 200), done_at


def completed(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, after: timedelta, **changes: Any
) -> tuple[dict[str, Any], datetime]:
    """An ``accepted`` invitation (``changes`` as for ``paid_invitation``) completed ``after`` its scheduled time.

    The doctor's answer to the completion, and that instant (the handlers' clock stays frozen there).
    """
    return complete_after(client, flow, accepted(client, flow, **changes), monkeypatch, after)


def every_page(fetch: Callable[[str], dict[str, Any]], limit: int, key: str) -> list[str]:
    """``key`` of every item of a list read ``limit`` at a time, following ``next_cursor`` to the end.

    ``fetch(query)`` answers one page for a query string such as ``?limit=2&cursor=...``.
    """
    seen: list[str] = []
    cursor = None
    for _ in range(5):  # the tests' lists are a few pages long
        page = fetch(f"?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["items"]) <= limit
        seen += [item[key] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None, "more pages than expected"
    return seen


def notices(invitation_id: str) -> list[tuple[str, str]]:
    """The outbox of an invitation: ``(event, recipient id)`` in the order written."""
    items = Notice.query(f"INVITATION#{invitation_id}", Notice.sk.startswith("NOTICE#"), consistent_read=True)
    return [(item.event, item.recipient_id) for item in items]


def clearing(invitation_id: str) -> str:
    """The sandbox clearing-account shard an invitation's money goes through."""
    from chalicelib.config import get_settings

    return accounts.clearing_account("sandbox", invitation_id, get_settings().ledger_shards)


def fees(invitation_id: str) -> str:
    from chalicelib.config import get_settings

    return accounts.fee_account(invitation_id, get_settings().ledger_shards)


__all__ = [
    "CONSULTATION_FEE",
    "DAYS_AHEAD",
    "FEE",
    "FakeProvider",
    "Flow",
    "accepted",
    "act",
    "balance",
    "clearing",
    "complete_after",
    "completed",
    "create_invitation",
    "day_ahead",
    "evening_before",
    "every_page",
    "fake_provider_fixture",
    "fees",
    "flow_fixture",
    "installed",
    "make_flow",
    "notices",
    "open_order",
    "paid_invitation",
    "pay",
    "read",
    "request_body",
    "scheduled_at",
    "set_day",
    "summary",
]
