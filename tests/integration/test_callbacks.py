"""Provider callbacks over HTTP on the real engine: repeats, races, forgeries, strays and late payments.

Callbacks are signed as WeChat Pay v3 signs them (headers, SHA256withRSA over
``timestamp\\nnonce\\nbody\\n``, AES-256-GCM resource) by a fake provider that verifies
them with the production verifier, and posted as raw bytes to
``POST /v1/payments/callbacks/sandbox``.

Concurrent deliveries call ``callbacks.handle`` (what the route calls, with the same raw
bytes and headers) from threads: ``chalice.test.Client`` keeps the current request on the
shared app object, so it cannot serve two requests at once; every retry goes over HTTP.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import utc_now
from chalicelib.invitations import deadlines, service
from chalicelib.models.ledger import PaymentOrder, ProviderSeen, QuarantinedEvent
from chalicelib.payments import callbacks, orders, settlement
from chalicelib.payments.provider import ProviderError
from chalicelib.payments.settlement import seen_key
from tests.integration.flow_helpers import (
    FEE_FEN,
    FakeProvider,
    api_errors,
    assert_ledger_ok,
    assert_ledger_ok_listing,
    assert_paid_once,
    assert_refunded_once,
    drain_jobs,
    exists,
    expect_moved,
    invitation,
    later,
    make_people,
    new_transaction_id,
    order,
    ordered_invitation,
    paid_invitation,
    post_callback,
    postings_of,
    race,
    the_refund,
    transitions,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import Callback, Ordered, People

COPIES = 5


def assert_untouched(unpaid: Ordered) -> None:
    assert transitions(unpaid.invitation_id) == ["create"]
    assert invitation(unpaid.invitation_id).status == "awaiting_payment"
    assert order(unpaid.order_id).status == "pending"
    assert postings_of(unpaid.invitation_id) == {}
    expect_moved(unpaid.balances)


def handle(callback: Callback) -> Any:
    """``callback`` handled as the route handles it (for threads: see the module's docstring)."""
    return callbacks.handle("sandbox", callback.headers, callback.body, utc_now())


def callback_or_follow_up(callback: Callback, order_id: str, job_time: datetime) -> Callable[[int], Any]:
    """For ``race``: even threads deliver ``callback``, odd ones run the order's follow-up job at ``job_time``."""

    def act(index: int) -> Any:
        if index % 2:
            return orders.follow_up(order(order_id), job_time)
        return handle(callback)

    return act


# --- repeats ------------------------------------------------------------------------------------


def test_the_same_callback_five_times_in_a_row_is_applied_once(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN one signed TRANSACTION.SUCCESS callback for the order
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)

    # WHEN the provider delivers it five times
    replies = [post_callback(api, callback) for _ in range(COPIES)]

    # THEN each delivery is acknowledged as WeChat expects (204, no body)
    assert [(reply.status_code, reply.body) for reply in replies] == [(204, b"")] * COPIES
    # AND the payment was applied once
    assert_paid_once(unpaid, callback.transaction_id)


def _deliver_together(callback: Callback) -> list[Any]:
    """``COPIES`` deliveries of ``callback`` at once, each handled as the route handles it."""
    return race(COPIES, lambda _: handle(callback))


def _retry_refused(api: Any, callback: Callback, replies: list[Any]) -> None:
    """A delivery refused with 409 is retried later by the provider: it must be acknowledged then."""
    for reply in replies:
        assert not isinstance(reply, Exception), reply
        assert reply.status in (204, 409), reply
        if reply.status == 409:
            assert post_callback(api, callback).status_code == 204


def test_the_same_callback_five_times_at_once_is_applied_once(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN one signed callback
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)

    # WHEN five copies arrive at the same moment
    replies = _deliver_together(callback)

    # THEN each is acknowledged (a loser may be told to retry, and is acknowledged on retry)
    assert [reply.status for reply in replies].count(204) >= 1, replies
    _retry_refused(api, callback, replies)
    # AND the payment was applied once
    assert_paid_once(unpaid, callback.transaction_id)


def test_five_copies_that_all_read_the_order_as_pending_apply_it_once(
    api: Any, provider: FakeProvider, unpaid: Ordered, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN one signed callback, and five deliveries that each read the order as pending
    # before any of them writes
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)
    all_read = threading.Barrier(COPIES)
    seen = threading.local()
    read = orders.get

    def read_then_wait(wanted: str) -> PaymentOrder | None:
        found = read(wanted)
        if wanted == unpaid.order_id and not getattr(seen, "read", False):
            seen.read = True
            all_read.wait(timeout=30)
        return found

    monkeypatch.setattr(orders, "get", read_then_wait)

    # WHEN they are all handled
    replies = _deliver_together(callback)
    monkeypatch.undo()

    # THEN every one is acknowledged or told to retry, and the payment was applied once
    _retry_refused(api, callback, replies)
    assert_paid_once(unpaid, callback.transaction_id)


def _redeliver_until_acknowledged(api: Any, callback: Callback) -> None:
    replies = [post_callback(api, callback) for _ in range(3)]
    assert replies[-1].status_code == 204, [(reply.status_code, reply.body) for reply in replies]


def test_a_callback_and_the_follow_up_query_reporting_one_payment_apply_it_once(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN a payment the provider has taken; its callback and the follow-up job's query both report it
    transaction_id = new_transaction_id()
    provider.mark_paid(unpaid.order_id, FEE_FEN, transaction_id)
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN, transaction_id=transaction_id)

    # WHEN callbacks and job steps run at the same moment
    outcomes = race(6, callback_or_follow_up(callback, unpaid.order_id, utc_now()))

    # THEN each either applied it, found it applied, or met the race (409, to be retried);
    api_errors(outcomes)
    for outcome in outcomes:
        if isinstance(outcome, str):
            assert outcome in ("applied", "duplicate"), outcome
        elif not isinstance(outcome, Exception):
            assert outcome.status in (204, 409), outcome
    _redeliver_until_acknowledged(api, callback)
    # AND it was applied once
    assert_paid_once(unpaid, transaction_id)


def test_a_copy_that_read_the_order_before_the_payment_landed_is_a_duplicate(
    provider: FakeProvider, unpaid: Ordered, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a copy of the callback that read the order while it was pending
    transaction_id = new_transaction_id()
    outcome = settlement.Outcome(unpaid.order_id, "succeeded", transaction_id, FEE_FEN, "CNY")
    before = orders.get(unpaid.order_id)
    event_id = str(uuid.uuid4())
    # AND another copy applied the payment meanwhile
    assert settlement.apply_payment(outcome, utc_now(), event_id=event_id) == "applied"
    monkeypatch.setattr(orders, "get", lambda wanted: before if wanted == unpaid.order_id else None)

    # WHEN the first copy goes on
    result = settlement.apply_payment(outcome, utc_now(), event_id=event_id)
    monkeypatch.undo()

    # THEN nothing more moved, and it is reported as the duplicate it is
    assert_paid_once(unpaid, transaction_id)
    assert result == "duplicate"


@pytest.mark.parametrize("round_", range(3))
def test_a_callback_racing_the_job_that_closes_the_order_is_either_applied_or_refunded_once(
    api: Any, provider: FakeProvider, unpaid: Ordered, round_: int
) -> None:
    # GIVEN an order at the end of its window; the job (its query says unpaid) closes it while the
    # payment's callback arrives
    callback = provider.payment_callback(unpaid.order_id, FEE_FEN)
    window_end = later(utc_now(), minutes=31)

    # WHEN they run together, and the provider redelivers what was not acknowledged
    outcomes = race(4, callback_or_follow_up(callback, unpaid.order_id, window_end))
    api_errors(outcomes)
    _redeliver_until_acknowledged(api, callback)

    # THEN the payment is in once; if the invitation closed first, it was refunded once
    steps = transitions(unpaid.invitation_id)
    if steps == ["create", "pay"]:
        assert set(postings_of(unpaid.invitation_id)) == {f"pay:{unpaid.order_id}"}
        expect_moved(unpaid.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    else:
        assert steps == ["create", "lapse_unpaid", "pay_after_closing", "refund"], steps
        assert_refunded_once(unpaid, provider)
    assert order(unpaid.order_id).status == "succeeded"
    assert_ledger_ok()


# --- forged or wrong callbacks ------------------------------------------------------------------


def _stale(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN, timestamp=int(time.time()) - 400)


def _future(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN, timestamp=int(time.time()) + 400)


def _one_byte(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN).one_byte_changed()


def _unknown_serial(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN).with_headers({"Wechatpay-Serial": "PUB_KEY_ID_0114232134912"})


def _probe(provider: FakeProvider, order_id: str) -> Callback:
    genuine = provider.payment_callback(order_id, FEE_FEN)
    signature = genuine.headers["Wechatpay-Signature"]
    return genuine.with_headers({"Wechatpay-Signature": f"WECHATPAY/SIGNTEST/{signature}"})


def _unsigned(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN).with_headers({"Wechatpay-Signature": None})


def _wrong_amount(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN - 1)


def _wrong_currency(provider: FakeProvider, order_id: str) -> Callback:
    return provider.payment_callback(order_id, FEE_FEN, currency="USD")


@pytest.mark.parametrize(
    "forge",
    [_one_byte, _stale, _future, _unknown_serial, _probe, _unsigned, _wrong_amount, _wrong_currency],
    ids=lambda forge: forge.__name__.strip("_"),
)
def test_a_forged_or_wrong_callback_is_refused_and_changes_nothing(
    api: Any,
    provider: FakeProvider,
    unpaid: Ordered,
    forge: Callable[[FakeProvider, str], Callback],
) -> None:
    # GIVEN an order waiting for payment, and a callback that must not be believed
    bad = forge(provider, unpaid.order_id)

    # WHEN it is posted (twice, as the provider would retry a refusal)
    replies = [post_callback(api, bad) for _ in range(2)]

    # THEN it is refused with a 4xx in WeChat's error shape, and nothing changed
    for reply in replies:
        assert 400 <= reply.status_code < 500, (reply.status_code, reply.body)
        assert reply.json_body["code"] == "FAIL"
    assert_untouched(unpaid)
    assert not exists(ProviderSeen, seen_key("sandbox", "event", bad.event_id), "SEEN")
    # AND the genuine callback that follows is applied
    genuine = provider.payment_callback(unpaid.order_id, FEE_FEN)
    assert post_callback(api, genuine).status_code == 204
    assert_paid_once(unpaid, genuine.transaction_id)


def test_a_callback_that_does_not_decrypt_asks_for_a_retry_and_changes_nothing(
    api: Any, provider: FakeProvider, unpaid: Ordered
) -> None:
    # GIVEN a callback signed with our allow-listed key but encrypted with another APIv3 key
    stranger = FakeProvider(serial=provider.serial)
    callback = stranger.payment_callback(unpaid.order_id, FEE_FEN)

    reply = post_callback(api, callback)

    # THEN it is not acknowledged (our key or theirs changed: an alert, and WeChat retries)
    assert reply.status_code >= 400
    assert reply.json_body["code"] == "FAIL"
    assert_untouched(unpaid)


# --- strays and stale states --------------------------------------------------------------------


def test_a_callback_for_an_order_that_is_not_ours_is_acknowledged_and_quarantined(
    api: Any, provider: FakeProvider
) -> None:
    # GIVEN a genuine callback for an order number we never issued
    stray_order, event_id = f"PI{uuid.uuid4().hex[:26]}", str(uuid.uuid4())
    callback = provider.payment_callback(stray_order, 12_300, event_id=event_id)

    # WHEN it is delivered, twice
    replies = [post_callback(api, callback) for _ in range(2)]

    # THEN it is acknowledged (WeChat would retry for a day otherwise) and kept for an operator
    assert [reply.status_code for reply in replies] == [204, 204]
    stored = QuarantinedEvent.get(f"QUARANTINE#sandbox#{event_id}", "EVENT", consistent_read=True)
    assert (stored.merchant_ref, stored.kind, stored.reason) == (stray_order, "payment_succeeded", "unknown_order")
    assert not exists(PaymentOrder, f"ORDER#{stray_order}", "ORDER")
    assert_ledger_ok_listing(event_id)


def test_a_closed_after_success_changes_nothing(api: Any, provider: FakeProvider, unpaid: Ordered) -> None:
    # GIVEN an order paid through its callback
    paid = provider.payment_callback(unpaid.order_id, FEE_FEN)
    assert post_callback(api, paid).status_code == 204
    assert order(unpaid.order_id).status == "succeeded"

    # WHEN a TRANSACTION.CLOSED for it arrives late
    closed = provider.payment_callback(unpaid.order_id, FEE_FEN, trade_state="CLOSED")
    reply = post_callback(api, closed)

    # THEN it is acknowledged; the payment stands, flagged for an operator
    assert reply.status_code == 204
    assert_paid_once(unpaid, paid.transaction_id)
    assert list(order(unpaid.order_id).flags or []) == ["closed_after_success"]


@pytest.mark.parametrize("refund_mode", ["succeed", "processing"])
def test_a_payment_after_the_invitation_closed_is_refunded_by_the_original_path(
    api: Any, admin: Principal, provider: FakeProvider, refund_mode: str
) -> None:
    # GIVEN an invitation nobody paid within its window, closed by the follow-up job
    drain_jobs()
    closed = ordered_invitation(make_people(admin))
    now = utc_now()
    window_end = later(now, minutes=31)
    assert orders.follow_up(order(closed.order_id), window_end) == "applied"
    assert (invitation(closed.invitation_id).status, order(closed.order_id).status) == ("closed", "closed")

    # WHEN the payer's payment lands anyway and its callback arrives
    provider.refund_mode = refund_mode
    callback = provider.payment_callback(closed.order_id, FEE_FEN)
    assert post_callback(api, callback).status_code == 204

    # THEN the money is taken in and a refund by the original path is under way
    assert transitions(closed.invitation_id)[:3] == ["create", "lapse_unpaid", "pay_after_closing"]
    refund = the_refund(closed.invitation_id)
    assert (refund.payment_order_id, int(refund.amount_fen)) == (closed.order_id, FEE_FEN)
    assert [request.out_refund_no for request in provider.refunds_of(refund.refund_no)] == [refund.refund_no]
    if refund_mode == "processing":
        assert (invitation(closed.invitation_id).status, refund.status) == ("refunding", "processing")
        assert set(postings_of(closed.invitation_id)) == {f"pay:{closed.order_id}"}
        expect_moved(closed.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
        # AND once the provider has paid it back, the follow-up job settles it
        provider.finish_refunds()
        deadlines.follow_up_refunds(later(now, minutes=5))
    # THEN (at the end) the payer has everything back, once, and the escrow is empty
    assert the_refund(closed.invitation_id).status == "succeeded"
    assert_refunded_once(closed, provider)
    # AND the callback delivered again changes nothing
    assert post_callback(api, callback).status_code == 204
    assert_refunded_once(closed, provider)


def _closed_unpaid(admin: Principal) -> tuple[Ordered, datetime]:
    """An invitation nobody paid within its window, closed by the follow-up job; and when it was made."""
    drain_jobs()
    closed = ordered_invitation(make_people(admin))
    now = utc_now()
    assert orders.follow_up(order(closed.order_id), later(now, minutes=31)) == "applied"
    assert order(closed.order_id).work_queue == orders.QUEUE  # kept for one last check
    return closed, now


def test_a_payment_that_lands_after_the_close_with_every_callback_lost_is_found_and_refunded(
    admin: Principal, provider: FakeProvider
) -> None:
    # GIVEN an invitation nobody paid within its window, closed by the follow-up job
    closed, now = _closed_unpaid(admin)

    # WHEN the payer pays anyway (a signed order the provider could not take back) and no callback comes
    provider.mark_paid(closed.order_id, FEE_FEN, "4200000000000000000000000001")
    assert closed.order_id not in [due.order_id for due in orders.due(later(now, minutes=40), 100)]

    # THEN the last check after the window finds the payment and refunds it by the original path
    last_check = later(now, minutes=31) + orders.LATE_CHECK
    assert closed.order_id in [due.order_id for due in orders.due(last_check, 100)]
    assert orders.follow_up(order(closed.order_id), last_check) == "applied"
    assert transitions(closed.invitation_id)[:3] == ["create", "lapse_unpaid", "pay_after_closing"]
    assert the_refund(closed.invitation_id).status == "succeeded"
    assert_refunded_once(closed, provider)
    assert order(closed.order_id).work_queue is None


def test_a_closed_order_nobody_paid_leaves_the_queue_after_its_last_check(
    admin: Principal, provider: FakeProvider
) -> None:
    closed, now = _closed_unpaid(admin)

    # WHEN the last check finds the order closed at the provider
    last_check = later(now, minutes=31) + orders.LATE_CHECK
    assert orders.follow_up(order(closed.order_id), last_check) == "done"

    # THEN it leaves the queue and nothing moved
    assert (order(closed.order_id).status, order(closed.order_id).work_queue) == ("closed", None)
    assert closed.order_id not in [due.order_id for due in orders.due(later(last_check, days=1), 100)]
    assert set(postings_of(closed.invitation_id)) == set()


# --- refund callbacks ---------------------------------------------------------------------------


def test_a_refund_callback_settles_a_processing_refund_once(api: Any, people: People, provider: FakeProvider) -> None:
    # GIVEN a declined invitation whose refund the provider is still processing
    paid = paid_invitation(people)
    provider.refund_mode = "processing"
    service.decline(people.doctor, paid.invitation_id, "On leave that week", utc_now())
    refund = the_refund(paid.invitation_id)
    assert (invitation(paid.invitation_id).status, refund.status) == ("refunding", "processing")

    # WHEN a refund callback with another amount arrives, then the genuine one, twice
    wrong = provider.refund_callback(refund.refund_no, paid.order_id, FEE_FEN - 100, FEE_FEN)
    refused = post_callback(api, wrong)
    assert 400 <= refused.status_code < 500
    assert the_refund(paid.invitation_id).status == "processing"
    provider.finish_refunds()
    genuine = provider.refund_callback(refund.refund_no, paid.order_id, FEE_FEN, FEE_FEN)
    replies = [post_callback(api, genuine) for _ in range(2)]

    # THEN both are acknowledged and the refund was posted once
    assert [reply.status_code for reply in replies] == [204, 204], [reply.body for reply in replies]
    assert_refunded_once(paid, provider)
    # AND the follow-up job has nothing left to do for it
    deadlines.follow_up_refunds(later(utc_now(), hours=1))
    assert_refunded_once(paid, provider)


def test_a_processing_refund_the_provider_never_kept_is_sent_again_with_the_same_number(
    people: People, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a declined invitation whose refund was accepted "processing", then lost by the provider
    # (Alipay answers fund_change N and keeps nothing under the number)
    paid = paid_invitation(people)
    provider.refund_mode = "processing"
    service.decline(people.doctor, paid.invitation_id, "On leave that week", utc_now())
    refund = the_refund(paid.invitation_id)
    assert refund.status == "processing"
    provider.refund_states.clear()
    original = provider.query_refund

    def not_kept(out_refund_no: str, out_trade_no: str) -> Any:
        if out_refund_no not in provider.refund_states:
            raise ProviderError("refund_not_found", "no such refund", retryable=False)
        return original(out_refund_no, out_trade_no)

    monkeypatch.setattr(provider, "query_refund", not_kept)
    provider.refund_mode = "succeed"

    # WHEN the follow-up job looks at it
    deadlines.follow_up_refunds(later(utc_now(), hours=1))

    # THEN it was asked again with the same number and amount, and the payer is refunded once
    assert [request.out_refund_no for request in provider.refunds_of(refund.refund_no)] == [refund.refund_no] * 2
    assert the_refund(paid.invitation_id).status == "succeeded"
    assert_refunded_once(paid, provider, calls=2)


def test_a_refund_callback_for_a_refund_that_is_not_ours_is_quarantined(api: Any, provider: FakeProvider) -> None:
    refund_no = f"RF{uuid.uuid4().hex[:26]}"
    callback = provider.refund_callback(refund_no, f"PI{uuid.uuid4().hex[:26]}", 5_000, 5_000)

    reply = post_callback(api, callback)

    assert reply.status_code == 204
    assert exists(QuarantinedEvent, f"QUARANTINE#sandbox#{callback.event_id}", "EVENT")
