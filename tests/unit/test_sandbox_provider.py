"""The sandbox payment provider: WeChat Pay v3 played locally (reference/payments.md §1.1–§1.6, §6.4).

Every notification the sandbox sends is checked with the production verifier
(``verify_notification`` behind ``SandboxProvider.parse_callback``): what passes here passes
the callback route, and each tamper fails it for the stated reason.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from chalicelib.clock import utc_now
from chalicelib.config import load_settings
from chalicelib.errors import ApiError
from chalicelib.models.sandbox import PAYMENT_SK, SandboxPayment, SandboxRefund, refund_sk, sandbox_pk
from chalicelib.payments import sandbox
from chalicelib.payments.provider import PaymentIntent, PaymentRequest, ProviderError, RefundRequest
from chalicelib.payments.sandbox import (
    SANDBOX_API_V3_KEY,
    SANDBOX_SERIAL,
    PayInstruction,
    SandboxProvider,
    deliver_http,
    finish_refund,
    notify_keys,
    pay,
)
from chalicelib.payments.wechat_events import MalformedEventError
from chalicelib.payments.wechat_notify import NotificationRejected, sign_notification, verify_notification
from chalicelib.validation import parse

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from chalicelib.payments.provider import ProviderEvent

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
AMOUNT = 50_000
WAIT_S = 10.0


class Recorder:
    """A ``deliver`` fake: keeps what was sent, answers ``answer``; ``done`` is set once ``expect`` arrived."""

    def __init__(self, expect: int = 1, answer: tuple[int, str] = (204, "")) -> None:
        self.sent: list[tuple[dict[str, str], bytes]] = []
        self.expect = expect
        self.answer = answer
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        with self._lock:
            self.sent.append((dict(headers), body))
            if len(self.sent) >= self.expect:
                self.done.set()
        return self.answer

    def wait(self) -> None:
        assert self.done.wait(WAIT_S), f"expected {self.expect} deliveries, got {len(self.sent)}"


@pytest.fixture
def tables(aws: None) -> None:
    for model in (SandboxPayment, SandboxRefund):
        model._connection = None  # a connection made outside this mock must not leak in


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def provider(tables: None, recorder: Recorder) -> SandboxProvider:
    return SandboxProvider(deliver=recorder)


def open_order(
    provider: SandboxProvider, no: str = "PAY-1", amount: int = AMOUNT, scene: str = "jsapi_mp"
) -> PaymentIntent:
    request = PaymentRequest(no, amount, "Invitation", scene, "o-payer-1", NOW + timedelta(minutes=30))  # type: ignore[arg-type]
    return provider.create_payment(request)


def paid_order(provider: SandboxProvider, no: str = "PAY-1", amount: int = AMOUNT, **instruction: Any) -> dict:
    open_order(provider, no, amount)
    return pay(no, PayInstruction(**instruction), NOW, deliver=Recorder())


def event_of(headers: dict[str, str], body: bytes, at: datetime = NOW) -> ProviderEvent:
    found = SandboxProvider().parse_callback(headers, body, at)
    assert found is not None
    return found


def reason_of(headers: dict[str, str], body: bytes, at: datetime = NOW) -> str:
    with pytest.raises(NotificationRejected) as rejected:
        SandboxProvider().parse_callback(headers, body, at)
    return rejected.value.reason


def refund_request(no: str = "RF-1", amount: int = AMOUNT, order: str = "PAY-1", total: int = AMOUNT) -> RefundRequest:
    return RefundRequest(no, order, amount, total, "declined")


def provider_error(call: Callable[[], object]) -> ProviderError:
    with pytest.raises(ProviderError) as raised:
        call()
    return raised.value


def api_error(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value


# --- keys and switch ---------------------------------------------------------------------------


def test_the_committed_key_is_rsa_2048_and_notify_keys_hold_its_public_half() -> None:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    private_key = load_pem_private_key(sandbox.PRIVATE_KEY_PATH.read_bytes(), password=None)
    assert isinstance(private_key, RSAPrivateKey)
    assert private_key.key_size == 2048
    keys = notify_keys()
    assert list(keys.public_keys) == [SANDBOX_SERIAL]
    public_key = load_pem_public_key(keys.public_keys[SANDBOX_SERIAL].encode())
    assert public_key.public_numbers() == private_key.public_key().public_numbers()  # type: ignore[union-attr]
    assert keys.api_v3_key == SANDBOX_API_V3_KEY
    assert len(SANDBOX_API_V3_KEY) == 32


def test_the_provider_and_pay_refuse_to_run_when_sandbox_payments_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN settings of a stage with the sandbox switched off
    settings = load_settings({**os.environ, "SANDBOX_PAYMENTS": "off"})
    assert settings.sandbox_payments is False
    monkeypatch.setattr(sandbox, "get_settings", lambda: settings)

    # WHEN the provider is built, or an order is paid THEN both refuse
    with pytest.raises(RuntimeError, match="sandbox payment provider is off"):
        SandboxProvider()
    with pytest.raises(RuntimeError, match="sandbox payment provider is off"):
        pay("PAY-1", PayInstruction(), NOW, deliver=Recorder())


def test_the_provider_is_built_when_sandbox_payments_are_on() -> None:
    assert SandboxProvider().channel == "sandbox"


# --- create, query, close ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "app_id"),
    [("jsapi_mp", "wx-sandbox-mp"), ("jsapi_oa", "wx-sandbox-oa"), ("h5", "wx-sandbox-app"), ("app", "wx-sandbox-app")],
)
def test_create_payment_answers_jsapi_parameters_signed_with_the_sandbox_key(
    provider: SandboxProvider, scene: str, app_id: str
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    intent = open_order(provider, scene=scene)

    params = intent.client_params
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert (params["appId"], params["signType"]) == (app_id, "RSA")
    assert params["package"] == f"prepay_id={intent.provider_ref}"
    assert params["timeStamp"].isdigit() and len(params["nonceStr"]) == 32
    message = f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
    public_key = load_pem_public_key(notify_keys().public_keys[SANDBOX_SERIAL].encode())
    public_key.verify(base64.b64decode(params["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    stored = SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK)
    assert (stored.state, stored.amount_fen, stored.prepay_id, stored.refund_behaviour) == (
        "NOTPAY",
        AMOUNT,
        intent.provider_ref,
        "succeed",
    )
    # the sandbox's own records stay out of the Ledger table's indexes
    assert (stored.owner_key, stored.work_queue, stored.due_at) == (None, None, None)


def test_the_same_order_again_answers_the_same_prepay_id_and_another_amount_is_refused(
    provider: SandboxProvider,
) -> None:
    first = open_order(provider)

    again = open_order(provider)
    error = provider_error(lambda: open_order(provider, amount=AMOUNT + 1))

    assert again.provider_ref == first.provider_ref
    assert (error.code, error.retryable) == ("out_trade_no_used", False)
    assert SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).amount_fen == AMOUNT


def test_reopening_a_paid_or_closed_order_is_refused(provider: SandboxProvider) -> None:
    paid_order(provider, "PAY-PAID")
    open_order(provider, "PAY-CLOSED")
    provider.close_payment("PAY-CLOSED")

    paid = provider_error(lambda: open_order(provider, "PAY-PAID"))
    closed = provider_error(lambda: open_order(provider, "PAY-CLOSED"))

    assert (paid.code, paid.retryable) == ("order_paid", False)
    assert (closed.code, closed.retryable) == ("order_closed", False)


def test_query_payment_follows_the_order(provider: SandboxProvider) -> None:
    open_order(provider)
    pending = provider.query_payment("PAY-1")

    report = pay("PAY-1", PayInstruction(), NOW, deliver=Recorder())
    succeeded = provider.query_payment("PAY-1")

    assert (pending.state, pending.transaction_id, pending.amount_fen, pending.paid_at) == (
        "pending",
        None,
        AMOUNT,
        None,
    )
    assert succeeded.state == "succeeded"
    assert succeeded.transaction_id == report["transaction_id"]
    assert succeeded.transaction_id.startswith("sbx_tx_")
    assert (succeeded.amount_fen, succeeded.currency) == (AMOUNT, "CNY")
    assert succeeded.paid_at == "2026-11-25T16:00:00+08:00"


def test_query_payment_of_an_unknown_order_is_order_not_found(provider: SandboxProvider) -> None:
    error = provider_error(lambda: provider.query_payment("PAY-NONE"))

    assert (error.code, error.retryable) == ("order_not_found", False)


def test_close_payment_closes_once_and_sends_nothing(provider: SandboxProvider, recorder: Recorder) -> None:
    open_order(provider)

    provider.close_payment("PAY-1")
    provider.close_payment("PAY-1")  # a closed order: nothing to do

    assert provider.query_payment("PAY-1").state == "closed"
    assert recorder.sent == []


def test_close_payment_of_a_paid_or_unknown_order_is_refused(provider: SandboxProvider) -> None:
    paid_order(provider)

    paid = provider_error(lambda: provider.close_payment("PAY-1"))
    unknown = provider_error(lambda: provider.close_payment("PAY-NONE"))

    assert (paid.code, paid.retryable) == ("order_paid", False)
    assert (unknown.code, unknown.retryable) == ("order_not_found", False)
    assert provider.query_payment("PAY-1").state == "succeeded"


# --- pay: the notification -----------------------------------------------------------------------


def test_paying_sends_a_transaction_success_that_the_verifier_accepts(provider: SandboxProvider) -> None:
    # GIVEN an open order
    open_order(provider)
    sent = Recorder()

    # WHEN the sandbox payer pays it
    report = pay("PAY-1", PayInstruction(), NOW, deliver=sent)

    # THEN one notification went out, in WeChat's wire format, and it verifies and normalises
    assert report == {
        "order_id": "PAY-1",
        "state": "SUCCESS",
        "transaction_id": report["transaction_id"],
        "deliveries": [{"status": 204, "body": ""}],
        "scheduled": 0,
        "dropped": False,
        "tampered": None,
    }
    [(headers, body)] = sent.sent
    assert headers["Wechatpay-Serial"] == SANDBOX_SERIAL
    assert headers["Wechatpay-Timestamp"] == str(int(NOW.timestamp()))
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    event = event_of(headers, body)
    stored = SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK)
    assert (event.channel, event.kind, event.merchant_ref, event.provider_ref) == (
        "sandbox",
        "payment_succeeded",
        "PAY-1",
        report["transaction_id"],
    )
    assert (event.event_id, event.amount_fen, event.currency) == (stored.event_id, AMOUNT, "CNY")
    assert event.occurred_at == "2026-11-25T16:00:00+08:00"


def test_the_decrypted_resource_looks_like_wechats(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder()
    report = pay("PAY-1", PayInstruction(), NOW, deliver=sent)

    notification = verify_notification(*sent.sent[0], notify_keys(), NOW.timestamp())

    assert (notification.event_type, notification.resource_type, notification.original_type) == (
        "TRANSACTION.SUCCESS",
        "encrypt-resource",
        "transaction",
    )
    assert notification.summary == "\u652f\u4ed8\u6210\u529f"
    resource = notification.resource
    assert resource["mchid"] == sandbox.SANDBOX_MCHID
    assert resource["appid"] == "wx-sandbox-mp"
    assert (resource["out_trade_no"], resource["transaction_id"]) == ("PAY-1", report["transaction_id"])
    assert (resource["trade_type"], resource["trade_state"]) == ("JSAPI", "SUCCESS")
    assert resource["success_time"] == "2026-11-25T16:00:00+08:00"
    assert resource["payer"] == {"openid": "o-payer-1"}
    assert resource["amount"] == {"total": AMOUNT, "payer_total": AMOUNT, "currency": "CNY", "payer_currency": "CNY"}


def test_closing_through_pay_sends_a_closed_notification(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder()

    report = pay("PAY-1", PayInstruction(outcome="close"), NOW, deliver=sent)

    notification = verify_notification(*sent.sent[0], notify_keys(), NOW.timestamp())
    event = event_of(*sent.sent[0])
    assert (report["state"], report["transaction_id"]) == ("CLOSED", None)
    assert (notification.event_type, notification.resource["trade_state"]) == ("TRANSACTION.CLOSED", "CLOSED")
    assert (event.kind, event.merchant_ref, event.amount_fen) == ("payment_closed", "PAY-1", AMOUNT)
    assert provider.query_payment("PAY-1").state == "closed"


def test_duplicates_carry_the_same_event_id_and_each_verifies(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder()

    report = pay("PAY-1", PayInstruction(deliveries=3), NOW, deliver=sent)

    events = [event_of(headers, body) for headers, body in sent.sent]
    assert len(report["deliveries"]) == 3
    assert len({event.event_id for event in events}) == 1
    assert len({headers["Wechatpay-Nonce"] for headers, _ in sent.sent}) == 3  # each copy signed anew


def test_paying_a_paid_order_again_resends_the_same_notification(provider: SandboxProvider) -> None:
    # GIVEN a paid order whose notification was delivered
    open_order(provider)
    first, again = Recorder(), Recorder()
    report = pay("PAY-1", PayInstruction(), NOW, deliver=first)

    # WHEN it is "paid" again: a provider retry / replay
    replay = pay("PAY-1", PayInstruction(), NOW + timedelta(minutes=3), deliver=again)

    # THEN the same event and transaction, freshly signed at the new time
    original, resent = event_of(*first.sent[0]), event_of(*again.sent[0], NOW + timedelta(minutes=3))
    assert resent.event_id == original.event_id
    assert resent.provider_ref == original.provider_ref == report["transaction_id"] == replay["transaction_id"]
    assert resent.occurred_at == original.occurred_at


def test_concurrent_duplicates_are_sent_at_the_same_moment(provider: SandboxProvider) -> None:
    # GIVEN a receiver that answers only when all three copies are in flight together
    open_order(provider)
    together = threading.Barrier(3, timeout=WAIT_S)
    sent = Recorder(expect=3)

    def deliver(headers: dict[str, str], body: bytes) -> tuple[int, str]:
        together.wait()  # sequential sends would break the barrier and answer status 0
        return sent(headers, body)

    # WHEN three concurrent copies are asked for
    report = pay("PAY-1", PayInstruction(deliveries=3, concurrent=True), NOW, deliver=deliver)

    # THEN all three arrived, at once, with one event id
    assert report["deliveries"] == [{"status": 204, "body": ""}] * 3
    assert len({event_of(headers, body).event_id for headers, body in sent.sent}) == 1


def test_a_delayed_delivery_is_scheduled_and_arrives_from_a_thread(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder(expect=2)

    report = pay("PAY-1", PayInstruction(deliveries=2, delay_seconds=1), NOW, deliver=sent)

    assert (report["deliveries"], report["scheduled"], report["state"]) == ([], 2, "SUCCESS")
    sent.wait()
    later = NOW + timedelta(seconds=1)  # signed at now plus the time spent waiting
    assert {event_of(headers, body, later).merchant_ref for headers, body in sent.sent} == {"PAY-1"}
    assert int(sent.sent[0][0]["Wechatpay-Timestamp"]) >= int(later.timestamp())


def test_a_dropped_notification_changes_the_order_but_sends_nothing(provider: SandboxProvider) -> None:
    # GIVEN an open order paid with the notification dropped
    open_order(provider)
    dropped = Recorder()
    report = pay("PAY-1", PayInstruction(drop=True, deliveries=3), NOW, deliver=dropped)

    # THEN nothing was sent, but a query finds it paid
    assert (report["dropped"], report["deliveries"], report["scheduled"]) == (True, [], 0)
    assert dropped.sent == []
    assert provider.query_payment("PAY-1").state == "succeeded"

    # WHEN the provider later retries THEN the notification carries the event id it had all along
    retry = Recorder()
    pay("PAY-1", PayInstruction(), NOW, deliver=retry)
    assert event_of(*retry.sent[0]).event_id == SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).event_id


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("body", "bad_signature"),
        ("timestamp", "stale_timestamp"),
        ("serial", "unknown_serial"),
        ("signtest", "signature_probe"),
        ("signature", "bad_signature"),
    ],
)
def test_each_tamper_is_rejected_by_the_verifier_for_its_reason(
    provider: SandboxProvider, tamper: str, reason: str
) -> None:
    open_order(provider)
    sent = Recorder()

    report = pay("PAY-1", PayInstruction(tamper=tamper), NOW, deliver=sent)  # type: ignore[arg-type]

    assert report["tampered"] == tamper
    assert reason_of(*sent.sent[0]) == reason


def test_a_tampered_body_is_one_byte_off_and_still_json(provider: SandboxProvider) -> None:
    # GIVEN a genuine notification
    open_order(provider)
    sent = Recorder()
    pay("PAY-1", PayInstruction(), NOW, deliver=sent)
    genuine = sent.sent[0][1]

    # WHEN the body tamper is applied to it
    tampered = sandbox._flip_one_byte(genuine)

    # THEN exactly one byte differs, and the body still parses: only the signature gives it away
    assert len(tampered) == len(genuine)
    assert sum(a != b for a, b in zip(genuine, tampered, strict=True)) == 1
    assert json.loads(tampered)["event_type"] == "TRANSACTION.SUCCESS"


def test_a_tampered_amount_verifies_but_reports_another_amount(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder()

    pay("PAY-1", PayInstruction(tamper="amount"), NOW, deliver=sent)

    event = event_of(*sent.sent[0])
    assert (event.kind, event.amount_fen) == ("payment_succeeded", AMOUNT + 1)
    assert provider.query_payment("PAY-1").amount_fen == AMOUNT


def test_after_a_tampered_notification_a_retry_sends_a_genuine_one(provider: SandboxProvider) -> None:
    # GIVEN a payment whose notification was forged (the order is paid all the same)
    open_order(provider)
    pay("PAY-1", PayInstruction(tamper="signature"), NOW, deliver=Recorder())

    # WHEN the provider retries
    retry = Recorder()
    report = pay("PAY-1", PayInstruction(), NOW, deliver=retry)

    # THEN the retry verifies
    assert report["tampered"] is None
    assert event_of(*retry.sent[0]).kind == "payment_succeeded"


def test_a_closed_order_is_paid_only_when_late(provider: SandboxProvider) -> None:
    # GIVEN a closed order
    open_order(provider)
    provider.close_payment("PAY-1")

    # WHEN it is paid without late THEN 409 and nothing changes
    refused = api_error(lambda: pay("PAY-1", PayInstruction(), NOW, deliver=Recorder()))
    assert (refused.status, refused.code, refused.details) == (409, "sandbox_order_closed", {"order_id": "PAY-1"})
    assert refused.message and refused.message_zh == "\u8be5\u6c99\u7bb1\u8ba2\u5355\u5df2\u5173\u95ed"
    assert provider.query_payment("PAY-1").state == "closed"

    # WHEN it is paid late THEN it is paid and a success notification goes out
    sent = Recorder()
    report = pay("PAY-1", PayInstruction(late=True), NOW, deliver=sent)
    assert report["state"] == "SUCCESS"
    assert event_of(*sent.sent[0]).kind == "payment_succeeded"
    assert provider.query_payment("PAY-1").state == "succeeded"


def test_closing_a_paid_order_through_pay_is_refused(provider: SandboxProvider) -> None:
    paid_order(provider)

    refused = api_error(lambda: pay("PAY-1", PayInstruction(outcome="close"), NOW, deliver=Recorder()))

    assert (refused.status, refused.code) == (409, "sandbox_order_paid")
    assert provider.query_payment("PAY-1").state == "succeeded"


def test_paying_an_unknown_order_is_404(tables: None) -> None:
    refused = api_error(lambda: pay("PAY-NONE", PayInstruction(), NOW, deliver=Recorder()))

    assert (refused.status, refused.code) == (404, "sandbox_order_not_found")
    assert refused.message_zh == "\u6c99\u7bb1\u8ba2\u5355\u4e0d\u5b58\u5728"


def test_a_pay_that_lost_a_race_decides_again_on_the_stored_state(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an order already paid, but read as NOTPAY (a concurrent pay won meanwhile)
    open_order(provider)
    stale = SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK)
    first = pay("PAY-1", PayInstruction(), NOW, deliver=Recorder())
    reads = iter([stale])
    fresh = sandbox._get_payment
    monkeypatch.setattr(sandbox, "_get_payment", lambda no: next(reads, None) or fresh(no))

    # WHEN pay runs on the stale read
    sent = Recorder()
    second = pay("PAY-1", PayInstruction(), NOW, deliver=sent)

    # THEN its conditional write failed, and it re-sent the winner's notification instead of paying twice
    assert second["transaction_id"] == first["transaction_id"]
    assert event_of(*sent.sent[0]).event_id == SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).event_id


# --- the instruction -----------------------------------------------------------------------------


def test_the_instruction_defaults() -> None:
    assert parse({}, PayInstruction) == PayInstruction(
        outcome="success",
        deliveries=1,
        concurrent=False,
        delay_seconds=0,
        drop=False,
        tamper=None,
        late=False,
        refund_behaviour=None,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"deliveries": 0},
        {"deliveries": 6},
        {"delay_seconds": -1},
        {"delay_seconds": 31},
        {"outcome": "refund"},
        {"tamper": "header"},
        {"refund_behaviour": "later"},
        {"surprise": True},
    ],
)
def test_the_instruction_refuses_bad_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as refused:
        parse(body, PayInstruction)

    assert (refused.value.status, refused.value.code) == (422, "validation_failed")


def test_the_instruction_refuses_out_of_range_numbers_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="deliveries"):
        PayInstruction(deliveries=9)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"delay_seconds": 40}, PayInstruction)


# --- refunds -------------------------------------------------------------------------------------


def test_a_refund_succeeds_in_the_background_after_its_state_is_recorded(tables: None) -> None:
    # GIVEN a paid order, and a receiver that looks up the refund when its notification arrives
    states_seen: list[str] = []
    sent = Recorder()

    def deliver(headers: dict[str, str], body: bytes) -> tuple[int, str]:
        states_seen.append(SandboxProvider().query_refund("RF-1", "PAY-1").state)
        return sent(headers, body)

    provider = SandboxProvider(deliver=deliver)
    report = paid_order(provider)

    # WHEN it is refunded in full
    status = provider.refund(refund_request())

    # THEN it is processing at once, then succeeded, and the REFUND.SUCCESS notification follows
    assert (status.out_refund_no, status.state, status.amount_fen) == ("RF-1", "processing", AMOUNT)
    assert status.refund_id and status.refund_id.startswith("sbx_rf_")
    sent.wait()
    assert states_seen == ["succeeded"]
    notification = verify_notification(*sent.sent[0], notify_keys(), utc_now().timestamp())
    assert (notification.event_type, notification.original_type) == ("REFUND.SUCCESS", "refund")
    assert notification.resource["transaction_id"] == report["transaction_id"]
    assert notification.resource["amount"] == {
        "total": AMOUNT,
        "refund": AMOUNT,
        "payer_total": AMOUNT,
        "payer_refund": AMOUNT,
    }
    event = event_of(*sent.sent[0], utc_now())
    assert (event.kind, event.merchant_ref, event.order_ref, event.provider_ref, event.amount_fen) == (
        "refund_succeeded",
        "RF-1",
        "PAY-1",
        status.refund_id,
        AMOUNT,
    )
    assert event.event_id == SandboxRefund.get(sandbox_pk("PAY-1"), refund_sk("RF-1")).event_id
    assert provider.query_refund("RF-1", "PAY-1").state == "succeeded"


def test_a_refund_told_to_stay_processing_stays_until_finished(
    provider: SandboxProvider, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a paid order whose refunds stay processing
    paid_order(provider, refund_behaviour="processing")
    scheduled: list[str] = []
    monkeypatch.setattr(sandbox, "_in_background", lambda delay, work, what: scheduled.append(what))

    # WHEN it is refunded
    status = provider.refund(refund_request())

    # THEN it is processing, nothing is scheduled, and a query agrees
    assert status.state == "processing"
    assert scheduled == []
    assert provider.query_refund("RF-1", "PAY-1").state == "processing"

    # WHEN a test finishes it THEN it succeeds and its notification goes out once
    answer = finish_refund("PAY-1", "RF-1", deliver=recorder)
    assert answer == (204, "")
    assert event_of(*recorder.sent[0], utc_now()).kind == "refund_succeeded"
    assert finish_refund("PAY-1", "RF-1", deliver=recorder) is None
    assert len(recorder.sent) == 1


def test_a_refund_outage_records_nothing_and_the_same_number_works_later(
    provider: SandboxProvider, recorder: Recorder
) -> None:
    # GIVEN a paid order whose refunds fail as an outage
    paid_order(provider, refund_behaviour="fail")

    # WHEN it is refunded THEN a retryable SYSTEM_ERROR, and no refund exists
    error = provider_error(lambda: provider.refund(refund_request()))
    assert (error.code, error.retryable) == ("SYSTEM_ERROR", True)
    missing = provider_error(lambda: provider.query_refund("RF-1", "PAY-1"))
    assert (missing.code, missing.retryable) == ("refund_not_found", False)

    # WHEN the outage ends (behaviour sent alone: nothing is re-sent) and our side retries with the same number
    report = pay("PAY-1", PayInstruction(refund_behaviour="succeed"), NOW, deliver=recorder)
    assert report["deliveries"] == [] and recorder.sent == []
    status = provider.refund(refund_request())

    # THEN the refund goes through
    assert status.state == "processing"
    recorder.wait()
    assert event_of(*recorder.sent[0], utc_now()).kind == "refund_succeeded"


def test_an_abnormal_refund_is_recorded_and_notified_as_failed(tables: None) -> None:
    sent = Recorder()
    provider = SandboxProvider(deliver=sent)
    paid_order(provider, refund_behaviour="abnormal")

    status = provider.refund(refund_request())

    assert status.state == "failed"
    assert provider.query_refund("RF-1", "PAY-1").state == "failed"
    sent.wait()
    notification = verify_notification(*sent.sent[0], notify_keys(), utc_now().timestamp())
    assert (notification.event_type, notification.resource["refund_status"]) == ("REFUND.ABNORMAL", "ABNORMAL")
    event = event_of(*sent.sent[0], utc_now())
    assert (event.kind, event.merchant_ref, event.order_ref) == ("refund_failed", "RF-1", "PAY-1")


def test_a_refund_is_idempotent_on_its_number(provider: SandboxProvider) -> None:
    paid_order(provider, refund_behaviour="processing")
    first = provider.refund(refund_request(amount=20_000))

    again = provider.refund(refund_request(amount=20_000))
    reused = provider_error(lambda: provider.refund(refund_request(amount=30_000)))

    assert again == first
    assert (reused.code, reused.retryable) == ("out_refund_no_used", False)
    assert SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).refunded_fen == 20_000


def test_a_reused_refund_number_is_refused_by_the_conditional_write(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a refund RF-1 of 20 000, and a second request for it with another amount that does not see it
    paid_order(provider, refund_behaviour="processing")
    provider.refund(refund_request(amount=20_000))
    fresh, blind = sandbox._get_refund, [True]

    def first_read_misses(order: str, no: str) -> SandboxRefund | None:
        return None if blind and blind.pop() else fresh(order, no)

    monkeypatch.setattr(sandbox, "_get_refund", first_read_misses)

    # WHEN it is made
    reused = provider_error(lambda: provider.refund(refund_request(amount=30_000)))

    # THEN the put's condition refused it, and the order's refunded amount did not move
    assert (reused.code, reused.retryable) == ("out_refund_no_used", False)
    assert SandboxRefund.get(sandbox_pk("PAY-1"), refund_sk("RF-1")).amount_fen == 20_000
    assert SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).refunded_fen == 20_000


def test_partial_refunds_never_take_more_than_the_order(provider: SandboxProvider) -> None:
    paid_order(provider, refund_behaviour="processing")

    provider.refund(refund_request("RF-1", 30_000))
    provider.refund(refund_request("RF-2", 20_000))
    error = provider_error(lambda: provider.refund(refund_request("RF-3", 1)))

    assert (error.code, error.retryable) == ("not_enough", False)
    assert SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).refunded_fen == AMOUNT


def test_a_refund_on_a_stale_read_of_the_order_is_refused_by_the_conditional_write(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 30 000 of 50 000 refunded, and a second refund of 30 000 that reads the order as not yet refunded
    paid_order(provider, refund_behaviour="processing")
    stale = SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK)
    provider.refund(refund_request("RF-1", 30_000))
    reads = iter([stale])
    fresh = sandbox._get_payment
    monkeypatch.setattr(sandbox, "_get_payment", lambda no: next(reads, None) or fresh(no))

    # WHEN it is made
    error = provider_error(lambda: provider.refund(refund_request("RF-2", 30_000)))

    # THEN the transaction's condition refused it, and no refund RF-2 exists
    assert (error.code, error.retryable) == ("not_enough", False)
    assert provider_error(lambda: provider.query_refund("RF-2", "PAY-1")).code == "refund_not_found"
    assert SandboxPayment.get(sandbox_pk("PAY-1"), PAYMENT_SK).refunded_fen == 30_000


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (refund_request(order="PAY-NONE"), "order_not_found"),
        (refund_request(order="PAY-OPEN"), "order_not_paid"),
        (refund_request(amount=0), "invalid_amount"),
        (refund_request(amount=AMOUNT + 1), "invalid_amount"),
        (refund_request(total=AMOUNT + 1), "invalid_amount"),
    ],
)
def test_refunds_that_cannot_be_made_are_refused(provider: SandboxProvider, request_: RefundRequest, code: str) -> None:
    paid_order(provider, refund_behaviour="processing")
    open_order(provider, "PAY-OPEN")

    error = provider_error(lambda: provider.refund(request_))

    assert (error.code, error.retryable) == (code, False)


def test_query_refund_of_an_unknown_refund_is_refund_not_found(provider: SandboxProvider) -> None:
    error = provider_error(lambda: provider.query_refund("RF-NONE", "PAY-1"))

    assert (error.code, error.retryable) == ("refund_not_found", False)


# --- callbacks -----------------------------------------------------------------------------------


def test_parse_callback_lets_a_malformed_event_through_as_an_error(provider: SandboxProvider) -> None:
    # GIVEN a correctly signed TRANSACTION.SUCCESS whose resource has no amount
    headers, body = sign_notification(
        {"id": "EV-1", "create_time": "2026-11-25T16:00:00+08:00", "event_type": "TRANSACTION.SUCCESS"},
        {"out_trade_no": "PAY-1", "trade_state": "SUCCESS"},
        private_key_pem=sandbox.PRIVATE_KEY_PATH.read_text(),
        serial=SANDBOX_SERIAL,
        api_v3_key=SANDBOX_API_V3_KEY,
        timestamp=int(NOW.timestamp()),
        nonce="n0nce",
    )

    with pytest.raises(MalformedEventError):
        provider.parse_callback(headers, body, NOW)


def test_parse_callback_answers_none_for_an_event_we_do_not_act_on(provider: SandboxProvider) -> None:
    headers, body = sign_notification(
        {"id": "EV-2", "create_time": "2026-11-25T16:00:00+08:00", "event_type": "TRANSACTION.SUCCESS"},
        {"out_trade_no": "PAY-1", "trade_state": "USERPAYING"},
        private_key_pem=sandbox.PRIVATE_KEY_PATH.read_text(),
        serial=SANDBOX_SERIAL,
        api_v3_key=SANDBOX_API_V3_KEY,
        timestamp=int(NOW.timestamp()),
        nonce="n0nce",
    )

    assert provider.parse_callback(headers, body, NOW) is None


def test_parse_callback_checks_the_time_against_now(provider: SandboxProvider) -> None:
    open_order(provider)
    sent = Recorder()
    pay("PAY-1", PayInstruction(), NOW, deliver=sent)

    assert reason_of(*sent.sent[0], NOW + timedelta(seconds=301)) == "stale_timestamp"


def test_acknowledge_answers_as_wechat_expects(provider: SandboxProvider) -> None:
    accepted, refused = provider.acknowledge(True), provider.acknowledge(False)

    assert (accepted.status, accepted.body) == (204, "")
    assert refused.status == 400
    assert refused.body == '{"code":"FAIL","message":"\u5931\u8d25"}'
    assert refused.content_type == "application/json"


# --- the default deliver -------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    answer: tuple[int, bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        status, reply = self.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Receiver]]:
    """A local HTTP server standing in for the callback route; the settings point the sandbox at it."""
    handler = type("Receiver", (_Receiver,), {"received": [], "answer": (204, b"")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/payments/callbacks/sandbox"
    settings = load_settings({**os.environ, "SANDBOX_CALLBACK_URL": url})
    monkeypatch.setattr(sandbox, "get_settings", lambda: settings)
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_deliver_posts_the_notification_to_the_callback_url(
    tables: None, receiver: type[_Receiver]
) -> None:
    SandboxProvider().create_payment(
        PaymentRequest("PAY-1", AMOUNT, "Invitation", "jsapi_mp", "o-payer-1", NOW + timedelta(minutes=30))
    )

    report = pay("PAY-1", PayInstruction(), NOW)

    assert report["deliveries"] == [{"status": 204, "body": ""}]
    [(headers, body)] = receiver.received
    assert event_of(headers, body).merchant_ref == "PAY-1"


def test_the_default_deliver_returns_an_error_answer(receiver: type[_Receiver]) -> None:
    receiver.answer = (400, b'{"code":"FAIL"}')

    assert deliver_http({"Content-Type": "application/json"}, b"{}") == (400, '{"code":"FAIL"}')


def test_the_default_deliver_never_raises_when_nobody_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}/v1/payments/callbacks/sandbox"
    settings = load_settings({**os.environ, "SANDBOX_CALLBACK_URL": url})
    monkeypatch.setattr(sandbox, "get_settings", lambda: settings)

    status, text = deliver_http({"Content-Type": "application/json"}, b"{}")

    assert status == 0
    assert text
