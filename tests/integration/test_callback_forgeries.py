"""Forged and replayed callbacks on every channel, on DynamoDB Local: forgeries change nothing, replays apply once.

Why: the money path trusts exactly one thing from outside, the provider's notification. Issue 9
item 4 asks for proof, per channel (``sandbox``: the real ``SandboxProvider``; ``wechat``,
``alipay``, ``unionpay``: the adapters against their doubles, as in ``test_channel_callbacks.py``):

1. every forgery family (``forgery_helpers.FAMILIES``) is refused with the channel's rejection
   answer (a 4xx JSON ``FAIL``: for Alipay that is "not ``success``", for UnionPay "not 200",
   so both providers retry), twice, and has no effect: the invitation, the order, the ledger
   postings and balances are unchanged, and no dedupe key was written; the genuine
   notification sent afterwards (1–8 copies) is applied exactly once;
2. valid notifications (payment, refund, payout where the channel notifies one) for many orders,
   each delivered 1–8 times, shuffled across orders, including a refund notification that
   arrives before its payment's notification and a payment that arrives after the invitation
   lapsed: every delivery is acknowledged as the provider requires, each event is applied once
   (one ledger transaction per event), and ``check_ledger`` holds.

Families mapped to a channel's nearest equivalent (``forgery_helpers.PLAN``): Alipay and UnionPay
``probe`` → an algorithm downgrade (``sign_type=RSA``; ``version=5.0.0``); UnionPay
``stale_timestamp`` → a UnionPay certificate that has expired; UnionPay ``unknown_serial`` → a
certificate naming UnionPay but not issued by the configured chain. Not applicable: Alipay
``stale_timestamp`` (Alipay signs no delivery time; ``notify_time`` stays the same over ~25 h of
retries, so replays are stopped by ``notify_id`` dedupe and the order's state: part 2), Alipay
``unknown_serial`` (the verifier pins one certificate and reads no key id from the notification),
UnionPay ``mismatched_app`` (the notification names no app: ``merId`` is its only party field).

Regression: ``sandbox`` ``mismatched_app``/``mismatched_merchant`` failed before
``SandboxProvider.parse_callback`` checked ``mchid``/``appid`` (a sandbox-signed notification for
another merchant moved money).

Size: part 2 opens ``2·s`` plain orders and ``s`` of each other kind per channel, ``s`` =
``FORGERY_SCALE`` (default 1); ``FORGERY_SEED`` picks the shuffle (default: fixed per channel).

Run: .venv/bin/python -m pytest tests/integration/test_callback_forgeries.py -q -p no:cacheprovider
(manual, larger: ``FORGERY_SCALE=5 FORGERY_SEED=7 …``)
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import responses

from chalicelib.clock import utc_now
from chalicelib.config import get_settings
from chalicelib.invitations import service
from chalicelib.ledger import accounts as ledger_accounts
from chalicelib.ledger.accounts import clearing_account
from chalicelib.ledger.journal import balance, transaction
from chalicelib.models.ledger import ProviderSeen
from chalicelib.payments import orders, registry
from chalicelib.payments.sandbox import PayInstruction
from chalicelib.payments.settlement import seen_key
from chalicelib.payouts import transfers, withdrawals
from chalicelib.payouts.withdrawals import WithdrawalRequest
from tests.integration.flow_helpers import (
    FEE_FEN,
    Ordered,
    assert_ledger_ok,
    exists,
    http,
    invitation,
    invite,
    make_people,
    order,
    postings_of,
    the_refund,
    transitions,
)
from tests.integration.forgery_helpers import FAMILIES, FORGERS, PLAN, Forgery, NotApplicable, SandboxWorld
from tests.integration.test_callbacks import assert_untouched
from tests.integration.test_channel_callbacks import (
    ChannelBalances,
    Note,
    World,
    answer_of,
    assert_paid_once,
    post,
)
from tests.integration.test_withdrawals import funded_doctor

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import People

CHANNELS = ("sandbox", "wechat", "alipay", "unionpay")
SCALE = max(1, int(os.environ.get("FORGERY_SCALE", "1")))
MAX_COPIES = 8


def _seed(channel: str) -> int:
    given = os.environ.get("FORGERY_SEED")
    return int(given) if given else 9000 + CHANNELS.index(channel)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def world(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The channel ``request.param``: its adapter installed and offered, its SDK's HTTP routed to its double."""
    built = FORGERS[request.param]()
    monkeypatch.setattr(registry, "available_channels", lambda: list(CHANNELS))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        built.install(rsps)
        registry.use_provider(built.name, built.adapter)
        try:
            yield built
        finally:
            registry.use_provider(built.name, None)


@pytest.fixture
def folks(admin: Principal) -> People:
    """A verified doctor (room for many invitations on the day) and a patient; no fake provider installed."""
    return make_people(admin, capacity=50)


@dataclass
class Opened:
    ordered: Ordered
    client_params: dict[str, Any]


def open_order(api: Any, people: People, world: World) -> Opened:
    """An invitation and its payment order on ``world``'s channel, opened through ``POST /v1/payments``."""
    invitation_id = invite(people)
    balances = ChannelBalances(invitation_id, people.doctor.user_id, channel=world.name)
    body = {"purpose": "invitation", "reference": invitation_id, "channel": world.name, "scene": "h5"}
    response = http(api, "POST", "/v1/payments", people.patient, body)
    assert response.status_code == 201, response.json_body
    return Opened(Ordered(invitation_id, response.json_body["order_id"], balances), response.json_body["client_params"])


def pay(world: World, opened: Opened) -> Note:
    """The payer pays; the provider's genuine payment notification (captured, not delivered)."""
    if isinstance(world, SandboxWorld):
        return world.pay_order(opened.ordered.order_id)
    return world.pay(opened.client_params)


def rejected(world: World, reply: Any) -> bool:
    """The answer makes the provider retry, in the channel's terms (and is a JSON ``FAIL``)."""
    status, body = answer_of(reply)
    if world.acknowledged(reply) or not 400 <= status < 600:
        return False
    return body != "success" and json.loads(body).get("code") == "FAIL"


# --- 1. forgeries -----------------------------------------------------------------------------------

CASES = [
    pytest.param(channel, family, id=f"{channel}-{family}")
    for channel in CHANNELS
    for family in FAMILIES
    if isinstance(PLAN[channel][family], Forgery)
]


def test_every_family_is_forged_or_said_not_to_apply_on_every_channel() -> None:
    for channel in CHANNELS:
        assert set(PLAN[channel]) == set(FAMILIES), channel
        for family, plan in PLAN[channel].items():
            assert isinstance(plan, Forgery | NotApplicable), (channel, family)
            if isinstance(plan, Forgery) and not plan.how.startswith("sandbox:"):
                assert callable(getattr(FORGERS[channel], f"forge_{plan.how}", None)), (channel, family)


@pytest.mark.parametrize(("world", "family"), CASES, indirect=["world"])
def test_a_forged_payment_notification_is_refused_and_changes_nothing(
    api: Any, folks: People, world: World, family: str
) -> None:
    plan = PLAN[world.name][family]
    assert isinstance(plan, Forgery)
    opened = open_order(api, folks, world)
    # GIVEN the genuine notification of a payment, and a forgery of it (the sandbox forges as it is told)
    if plan.how.startswith("sandbox:"):
        assert isinstance(world, SandboxWorld)
        bad = world.forge_sandbox(opened.ordered.order_id, plan.how.removeprefix("sandbox:"))
        genuine = world.pay_order(opened.ordered.order_id)  # the same notification again, untampered
    else:
        genuine = pay(world, opened)
        bad = world.forge(plan.how, genuine)
    event = world.event(genuine)

    # WHEN the forgery is posted twice (a provider retries what it is refused)
    replies = [post(api, world, bad) for _ in range(2)]

    # THEN both are refused in the channel's terms, with the family's status
    assert [answer_of(reply)[0] for reply in replies] == [plan.status] * 2, [answer_of(r) for r in replies]
    assert all(rejected(world, reply) for reply in replies), [answer_of(r) for r in replies]
    # AND nothing changed: invitation, order, postings, balances, dedupe store
    assert_untouched(opened.ordered)
    assert not exists(ProviderSeen, seen_key(world.name, "event", event.event_id), "SEEN")
    assert not exists(ProviderSeen, seen_key(world.name, "txn", event.provider_ref or ""), "SEEN")
    assert_ledger_ok()
    # AND the genuine notification, delivered 1-8 times, is applied once
    copies = random.Random(f"{world.name}-{family}").randint(1, MAX_COPIES)
    for _ in range(copies):
        reply = post(api, world, genuine)
        assert world.acknowledged(reply), answer_of(reply)
    assert_paid_once(world, opened.ordered, event.provider_ref)


# --- 2. valid notifications, repeated and shuffled ---------------------------------------------------


@dataclass
class Case:
    """One order of the shuffled run and what must hold for it at the end."""

    kind: str  # paid | refunded | refund_first | lapsed
    opened: Opened
    payment: Note
    refund: Note | None = None
    copies: dict[str, int] = field(default_factory=dict)

    @property
    def ordered(self) -> Ordered:
        return self.opened.ordered


def refund_note(world: World, refund_no: str) -> Note:
    """The provider's notification that refund ``refund_no`` succeeded (captured, not delivered)."""
    if isinstance(world, SandboxWorld):
        return world.refund_note(refund_no)
    if world.name == "wechat":
        for delivery in world.double.deliveries:
            note = Note(dict(delivery["headers"]), delivery["body"])
            if delivery["event_type"] == "REFUND.SUCCESS" and world.event(note).merchant_ref == refund_no:
                return note
        raise AssertionError(f"WeChat sent no refund notification for {refund_no}")
    if world.name == "alipay":
        world.double.wait_idle()
        [delivery] = [d for d in world.double.deliveries if d.params.get("out_biz_no") == refund_no]
        return Note({"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, delivery.body)
    return world.release_refund(refund_no)


def declined(world: World, people: People, case: Case, *, hold: bool) -> None:
    """The doctor declines the paid invitation: its refund is ordered from the provider."""
    if hold:
        world.hold_refund()
    service.decline(people.doctor, case.ordered.invitation_id, "On leave that week", utc_now())
    assert invitation(case.ordered.invitation_id).status in ("refunding", "refunded")


def deliver_all(api: Any, world: World, schedule: list[tuple[str, Note]]) -> None:
    for label, note in schedule:
        reply = post(api, world, note)
        assert world.acknowledged(reply), (label, answer_of(reply))


def shuffled(rng: random.Random, notes: dict[str, tuple[Note, int]], before: list[tuple[str, str]]) -> list[Any]:
    """Every note ``copies`` times, shuffled; for each ``(first, then)`` the first copy of ``first`` leads."""
    schedule = [(label, note) for label, (note, copies) in notes.items() for _ in range(copies)]
    rng.shuffle(schedule)
    for first, then in before:
        labels = [label for label, _ in schedule]
        lead, follow = labels.index(first), labels.index(then)
        if lead > follow:
            schedule[lead], schedule[follow] = schedule[follow], schedule[lead]
    return schedule


def assert_paid_in_once(world: World, case: Case) -> None:
    """``assert_paid_once`` without its balance deltas: the orders of one run share fee and clearing shards,
    so each order's one posting is checked entry by entry, and its escrow (its own account) by balance."""
    ordered = case.ordered
    assert transitions(ordered.invitation_id) == ["create", "pay"]
    assert invitation(ordered.invitation_id).status == "pending_response"
    clearing = clearing_account(world.name, ordered.invitation_id, get_settings().ledger_shards)
    escrow = ledger_accounts.escrow(ordered.invitation_id)
    assert postings_of(ordered.invitation_id) == {f"pay:{ordered.order_id}": {clearing: -FEE_FEN, escrow: FEE_FEN}}
    assert balance(escrow) == FEE_FEN
    provider_ref = world.event(case.payment).provider_ref
    paid = order(ordered.order_id)
    assert (paid.status, paid.provider_ref, list(paid.flags or [])) == ("succeeded", provider_ref, [])
    assert exists(ProviderSeen, seen_key(world.name, "txn", provider_ref or ""), "SEEN")


def assert_refunded(world: World, case: Case, steps: list[str]) -> None:
    ordered = case.ordered
    # a refund the provider settles in its answer skips ``start_refund`` (its notification is then a repeat)
    assert transitions(ordered.invitation_id) in (steps, [step for step in steps if step != "start_refund"])
    assert invitation(ordered.invitation_id).status == "refunded"
    assert the_refund(ordered.invitation_id).status == "succeeded"
    clearing = clearing_account(world.name, ordered.invitation_id, get_settings().ledger_shards)
    escrow = ledger_accounts.escrow(ordered.invitation_id)
    assert postings_of(ordered.invitation_id) == {
        f"pay:{ordered.order_id}": {clearing: -FEE_FEN, escrow: FEE_FEN},
        f"refund:{ordered.refund_no}": {clearing: FEE_FEN, escrow: -FEE_FEN},
    }
    assert balance(ledger_accounts.escrow(ordered.invitation_id)) == 0
    assert world.refund_calls(ordered.refund_no) == 1
    assert order(ordered.order_id).status == "succeeded"


@pytest.mark.parametrize("world", CHANNELS, indirect=True)
def test_valid_notifications_repeated_and_shuffled_across_orders_are_each_applied_once(
    api: Any, folks: People, world: World
) -> None:
    rng = random.Random(_seed(world.name))
    cases: list[Case] = []
    notes: dict[str, tuple[Note, int]] = {}
    before: list[tuple[str, str]] = []

    def copies() -> int:
        return rng.randint(1, MAX_COPIES)

    # GIVEN plain payments, their notifications not delivered yet
    for _ in range(2 * SCALE):
        opened = open_order(api, folks, world)
        cases.append(Case("paid", opened, pay(world, opened)))
    # AND payments taken in through their notification, then declined: a refund's notification will follow
    for _ in range(SCALE):
        opened = open_order(api, folks, world)
        case = Case("refunded", opened, pay(world, opened))
        assert world.acknowledged(post(api, world, case.payment))  # the first copy, before the decline
        declined(world, folks, case, hold=True)
        case.refund = refund_note(world, case.ordered.refund_no)
        cases.append(case)
    # AND payments the follow-up job found (their notification is late), declined: the refund's notification
    # will arrive before the payment's
    for _ in range(SCALE):
        opened = open_order(api, folks, world)
        case = Case("refund_first", opened, pay(world, opened))
        assert orders.follow_up(order(case.ordered.order_id), utc_now()) == "applied"
        declined(world, folks, case, hold=False)
        case.refund = refund_note(world, case.ordered.refund_no)
        cases.append(case)
    # AND payments that land just after our job closed the unpaid invitation
    for _ in range(SCALE):
        opened = open_order(api, folks, world)
        case = Case("lapsed", opened, pay(world, opened))
        assert orders.close(order(case.ordered.order_id), utc_now()) == "applied"
        assert invitation(case.ordered.invitation_id).status == "closed"
        cases.append(case)
    for index, case in enumerate(cases):
        pay_label, refund_label = f"{index}:{case.kind}:payment", f"{index}:{case.kind}:refund"
        extra = 1 if case.kind == "refunded" else 0  # its first copy was delivered already
        notes[pay_label] = (case.payment, copies() - extra)
        if case.refund is not None:
            notes[refund_label] = (case.refund, copies())
        if case.kind == "refund_first":
            before.append((refund_label, pay_label))
    # AND (where the channel notifies payouts) withdrawals the provider has paid out
    payouts = payout_notes(world, rng)
    for label, note in payouts.items():
        notes[label] = (note, copies())

    # WHEN every notification arrives 1-8 times, shuffled across orders
    schedule = shuffled(rng, notes, before)
    deliver_all(api, world, schedule)
    # AND the refunds of the lapsed payments (ordered when their payment arrived) are notified, 1-8 times,
    # mixed with late copies of their payments
    late: dict[str, tuple[Note, int]] = {}
    for index, case in enumerate(cases):
        if case.kind == "lapsed":
            case.refund = refund_note(world, case.ordered.refund_no)
            late[f"{index}:lapsed:refund"] = (case.refund, copies())
            late[f"{index}:lapsed:payment-again"] = (case.payment, 1)
    deliver_all(api, world, shuffled(rng, late, []))

    # THEN each event was applied once: one ledger transaction per event, every order where it must be
    for case in cases:
        if case.kind == "paid":
            assert_paid_in_once(world, case)
        elif case.kind in ("refunded", "refund_first"):
            assert_refunded(world, case, ["create", "pay", "decline", "start_refund", "refund"])
        else:
            assert_refunded(world, case, ["create", "lapse_unpaid", "pay_after_closing", "refund"])
    for number in payouts:
        assert_paid_out_once(number)
    assert_ledger_ok()


# --- payouts: the channels that notify them ---------------------------------------------------------


def payout_notes(world: World, rng: random.Random) -> dict[str, Note]:
    """Withdrawals sent to the provider and paid out by it: out_bill_no → its notification (sandbox only).

    WeChat notifies payouts too, but a WeChat payee needs a WeChat payout account and channel
    configuration that this stage does not have (local payouts go through the sandbox).
    """
    if not isinstance(world, SandboxWorld):
        return {}
    found: dict[str, Note] = {}
    for _ in range(SCALE):
        number = sent_withdrawal(rng.choice([30_000, 45_000]))
        found[number] = world.pay_order(number, PayInstruction(outcome="success"))
    return found


def sent_withdrawal(amount: int) -> str:
    """A doctor's withdrawal to a bank card, sent by the payout job and accepted by the sandbox; its number."""
    now = utc_now()
    doctor, account_id = funded_doctor(100_000, now)
    _, body = withdrawals.request(doctor, WithdrawalRequest(amount, account_id), now)
    number = body["withdrawal_id"]
    payout = withdrawals.get(number)
    assert payout is not None and payout.channel == "sandbox", payout
    assert transfers.follow_up(payout, now) == "waiting"
    return number


def assert_paid_out_once(number: str) -> None:
    payout = withdrawals.get(number)
    assert payout is not None
    assert payout.status == "succeeded"
    posted = transaction(f"payout:{number}")
    assert posted is not None and posted["reference"] == f"withdrawal:{number}"
    assert balance(ledger_accounts.doctor_payout(payout.doctor_id)) == 0


@pytest.mark.parametrize("tamper", ["body", "timestamp", "serial", "signtest", "amount", "signature"])
@pytest.mark.parametrize("world", ["sandbox"], indirect=True)
def test_a_forged_payout_notification_is_refused_and_the_genuine_one_settles_it_once(
    api: Any, world: SandboxWorld, tamper: str
) -> None:
    # GIVEN a withdrawal the sandbox accepted, and a forgery of its MCHTRANSFER.BILL.FINISHED
    number = sent_withdrawal(40_000)
    bad = world.pay_order(number, PayInstruction(outcome="success", tamper=tamper))  # type: ignore[arg-type]
    genuine = world.pay_order(number, PayInstruction(outcome="success"))
    event = world.event(genuine)

    # WHEN the forgery is posted twice
    replies = [post(api, world, bad) for _ in range(2)]

    # THEN it is refused and the withdrawal has not moved
    assert all(rejected(world, reply) for reply in replies), [answer_of(r) for r in replies]
    payout = withdrawals.get(number)
    assert payout is not None and payout.status not in ("succeeded", "failed", "cancelled"), payout.status
    assert transaction(f"payout:{number}") is None
    assert not exists(ProviderSeen, seen_key("sandbox", "event", event.event_id), "SEEN")
    # AND the genuine notification, three times, settles it once
    for _ in range(3):
        reply = post(api, world, genuine)
        assert world.acknowledged(reply), answer_of(reply)
    assert_paid_out_once(number)
    assert_ledger_ok()
