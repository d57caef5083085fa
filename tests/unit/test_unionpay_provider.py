"""The UnionPay ACP 5.1.0 adapter against the UnionPay double, every request checked at the wire.

``responses`` routes each gateway call to ``UnionPayDouble.handle``, which verifies our
signature with our certificate (by ``certId``) and answers raw, signed ``k=v`` text; its back
notifications go straight into ``parse_callback``. Forged notifications and answers are built
from the double's genuine ones. No network, no DynamoDB.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
import requests
import responses

from chalicelib.clock import SHANGHAI
from chalicelib.payments.provider import (
    PaymentRequest,
    PayoutRequest,
    ProviderError,
    ProviderEvent,
    RefundRequest,
)
from chalicelib.payments.unionpay import (
    BACK_PATH,
    FRONT_PATH,
    QUERY_PATH,
    UnionPayConfig,
    UnionPayProvider,
    parse_answer,
    sign_string,
)
from chalicelib.payments.wechat_notify import NotificationRejected
from devstack.doubles.unionpay import (
    SIGNER_CN,
    UnionPayCredentials,
    UnionPayDouble,
    cert_pem,
    issue_cert,
    key_pem,
    make_credentials,
    new_key,
    sign_with,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MERCHANT = "777290058110048"
GATEWAY = "https://gateway.test.95516.com"
BACK_URL = "https://api.example.com/v1/payments/callbacks/unionpay"
FRONT_URL = "https://app.example.com/paid"
TIMEOUT = 7.5


@pytest.fixture(scope="module")
def credentials() -> UnionPayCredentials:
    return make_credentials(merchant_id=MERCHANT, gateway=GATEWAY)


@pytest.fixture(scope="module")
def spare() -> list[Any]:
    """Three RSA keys for certificates UnionPay never issued (generated once: RSA key generation is slow)."""
    return [new_key() for _ in range(3)]


@dataclass
class World:
    provider: UnionPayProvider
    double: UnionPayDouble
    mock: responses.RequestsMock
    credentials: UnionPayCredentials
    times: dict[str, datetime]
    events: list[ProviderEvent | None] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    fault: Exception | None = None
    """Raised instead of calling the double (a timeout, a refused connection)."""
    lose_answer: bool = False
    """The double does the work, then the answer is lost on the way back (once)."""
    tamper: Callable[[bytes], bytes] | None = None
    http_status: int | None = None
    """Answered instead of the double's answer (a load balancer's 5xx)."""

    def number(self, prefix: str, created: datetime | None = None) -> str:
        value = prefix + uuid.uuid4().hex
        self.times[value] = created or datetime.now(UTC) - timedelta(minutes=1)
        return value


def _config(credentials: UnionPayCredentials, times: dict[str, datetime], **overrides: Any) -> UnionPayConfig:
    def txn_time_of(number: str) -> datetime:
        if number not in times:
            raise ProviderError("unknown_number", number, retryable=False)
        return times[number]

    values: dict[str, Any] = {
        "merchant_id": credentials.config_env["UNIONPAY_MERCHANT_ID"],
        **credentials.secret,
        "back_url": BACK_URL,
        "front_url": FRONT_URL,
        "gateway": credentials.config_env["UNIONPAY_GATEWAY"],
        "timeout": TIMEOUT,
        "txn_time_of": txn_time_of,
    }
    values.update(overrides)
    return UnionPayConfig(**values)


@pytest.fixture
def world(credentials: UnionPayCredentials) -> Iterator[World]:
    times: dict[str, datetime] = {}
    provider = UnionPayProvider(_config(credentials, times))
    box: dict[str, World] = {}

    def deliver(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        assert url == BACK_URL
        assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        current = box["world"]
        try:
            event = provider.parse_callback(headers, body, datetime.now(UTC))
        except NotificationRejected as rejected:
            current.rejections.append(rejected.reason)
            reply = provider.acknowledge(False)
        else:
            current.events.append(event)
            reply = provider.acknowledge(True)
        return reply.status, reply.body

    double = UnionPayDouble(credentials, deliver, result_delay_s=None)

    def route(request: Any) -> tuple[int, dict[str, str], bytes]:
        current = box["world"]
        if current.fault is not None:
            raise current.fault
        if current.http_status is not None:
            return current.http_status, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        status, headers, out = double.handle(request.method, request.url, dict(request.headers), body)
        if current.lose_answer:
            current.lose_answer = False
            raise requests.ConnectionError("connection reset after the gateway did the work")
        if current.tamper is not None:
            out = current.tamper(out)
        return status, headers, out

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, re.compile(re.escape(GATEWAY) + r"/gateway/api/.*"), callback=route)
        box["world"] = World(provider, double, mock, credentials, times)
        yield box["world"]
    assert all(call.request.req_kwargs["timeout"] == TIMEOUT for call in mock.calls)


def _payment(world: World, amount: int = 5000, scene: str = "h5") -> tuple[str, dict[str, Any]]:
    number = world.number("PI")
    request = PaymentRequest(number, amount, "Invitation", scene, None, datetime.now(UTC) + timedelta(minutes=15))  # type: ignore[arg-type]
    return number, world.provider.create_payment(request).client_params


def _paid(world: World, amount: int = 5000) -> tuple[str, str]:
    number, client_params = _payment(world, amount)
    world.double.pay(client_params)
    event = world.events[-1]
    assert event is not None
    assert event.provider_ref is not None
    return number, event.provider_ref


def _verify_ours(fields: dict[str, str], cert: str) -> None:
    """Our 5.1.0 signature, checked the way UnionPay's acpsdk checks it (written out here once more)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    text = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "signature")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")
    public_key = x509.load_pem_x509_certificate(cert.encode()).public_key()
    public_key.verify(base64.b64decode(fields["signature"]), digest, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg]


def _shanghai(instant: datetime) -> str:
    return instant.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S")


# --- create_payment ----------------------------------------------------------------------------


def test_create_payment_returns_a_signed_front_form_and_makes_no_call(world: World) -> None:
    number, client_params = _payment(world, 5000)

    assert client_params["action"] == GATEWAY + FRONT_PATH
    assert client_params["method"] == "POST"
    fields = client_params["fields"]
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(world.credentials.secret["sign_cert"].encode())
    assert fields["certId"] == str(cert.serial_number)
    assert {k: fields[k] for k in ("version", "encoding", "signMethod", "txnType", "txnSubType", "bizType")} == {
        "version": "5.1.0",
        "encoding": "UTF-8",
        "signMethod": "01",
        "txnType": "01",
        "txnSubType": "01",
        "bizType": "000201",
    }
    assert fields["accessType"] == "0"
    assert fields["channelType"] == "08"
    assert fields["currencyCode"] == "156"
    assert fields["txnAmt"] == "5000"
    assert fields["merId"] == MERCHANT
    assert fields["orderId"] == number
    assert fields["txnTime"] == _shanghai(world.times[number])
    assert re.fullmatch(r"[0-9]{14}", fields["payTimeout"])
    assert fields["backUrl"] == BACK_URL
    assert fields["frontUrl"] == FRONT_URL
    _verify_ours(fields, world.credentials.secret["sign_cert"])
    assert len(world.mock.calls) == 0


def test_create_payment_sends_the_pay_window_as_pay_timeout(world: World) -> None:
    number = world.number("PI")
    expires = datetime(2030, 1, 1, 0, 30, tzinfo=UTC)
    intent = world.provider.create_payment(PaymentRequest(number, 100, "x", "app", None, expires))
    assert intent.provider_ref == number
    assert intent.client_params["fields"]["payTimeout"] == "20300101083000"


@pytest.mark.parametrize("scene", ["jsapi_mp", "jsapi_oa"])
def test_create_payment_refuses_wechat_scenes(world: World, scene: str) -> None:
    with pytest.raises(ProviderError) as caught:
        _payment(world, scene=scene)
    assert (caught.value.code, caught.value.retryable) == ("scene_unsupported", False)


def test_create_payment_refuses_an_order_number_unionpay_does_not_take(world: World) -> None:
    world.times["PI-1234-5678"] = datetime.now(UTC)
    request = PaymentRequest("PI-1234-5678", 100, "x", "h5", None, datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(ProviderError) as caught:
        world.provider.create_payment(request)
    assert (caught.value.code, caught.value.retryable) == ("invalid_number", False)


def test_the_double_refuses_a_form_we_did_not_sign(world: World) -> None:
    _, client_params = _payment(world, 5000)
    forged = {**client_params, "fields": {**client_params["fields"], "txnAmt": "1"}}
    with pytest.raises(ValueError, match="签名"):
        world.double.pay(forged)
    assert world.events == []


# --- paying and the payment notification ------------------------------------------------------------


def test_paying_sends_a_notification_we_accept_with_http_200(world: World) -> None:
    number, client_params = _payment(world, 5000)
    world.double.pay(client_params)

    [event] = world.events
    assert event is not None
    assert (event.channel, event.kind, event.merchant_ref) == ("unionpay", "payment_succeeded", number)
    assert (event.amount_fen, event.currency) == (5000, "CNY")
    assert event.provider_ref and re.fullmatch(r"[0-9]{21}", event.provider_ref)
    assert event.event_id == f"01:{number}:{_shanghai(world.times[number])}:00"
    assert event.occurred_at and event.occurred_at.endswith("+08:00")
    assert "signature" not in event.raw and "signPubKeyCert" not in event.raw
    [delivery] = world.double.deliveries
    assert (delivery["status"], delivery["body"]) == (200, "ok")


def test_a_resent_notification_has_the_same_event_id(world: World) -> None:
    number, _ = _paid(world)
    world.double.resend(number)
    first, second = world.events
    assert first is not None and second is not None
    assert first.event_id == second.event_id


def test_a_browser_post_to_front_trans_req_pays_too(world: World) -> None:
    _, client_params = _payment(world, 800)
    answer = requests.post(client_params["action"], data=client_params["fields"], timeout=TIMEOUT)
    assert answer.status_code == 200 and "支付成功" in answer.text
    [event] = world.events
    assert event is not None and event.amount_fen == 800


def test_acknowledgements(world: World) -> None:
    accepted, refused = world.provider.acknowledge(True), world.provider.acknowledge(False)
    assert (accepted.status, accepted.body, accepted.content_type) == (200, "ok", "text/plain")
    assert refused.status != 200


# --- query and close ---------------------------------------------------------------------------------


def test_query_follows_the_order_through_its_states(world: World) -> None:
    number, client_params = _payment(world, 5000)

    with pytest.raises(ProviderError) as caught:  # the payer has not posted the form: UnionPay has no order
        world.provider.query_payment(number)
    assert (caught.value.code, caught.value.retryable) == ("order_not_found", False)

    world.double.pay(client_params, outcome="processing")
    assert world.provider.query_payment(number).state == "pending"

    world.double.pay(client_params, outcome="fail")  # a failed attempt: the payer may still pay
    assert world.provider.query_payment(number).state == "pending"

    world.double.pay(client_params)
    status = world.provider.query_payment(number)
    event = world.events[-1]
    assert event is not None
    assert (status.state, status.amount_fen, status.currency) == ("succeeded", 5000, "CNY")
    assert status.transaction_id == event.provider_ref
    assert status.paid_at and status.paid_at.endswith("+08:00")

    query = world.double.requests[-1]
    assert (query["txnType"], query["txnSubType"], query["orderId"]) == ("00", "00", number)
    assert query["txnTime"] == _shanghai(world.times[number])


def test_close_does_nothing_for_an_unpaid_order_and_waits_for_one_being_paid(world: World) -> None:
    # GIVEN an order the payer never submitted: nothing to close (it lapses at payTimeout)
    number, client_params = _payment(world)
    assert world.provider.close_payment(number) is None

    # WHEN the payer is paying right now THEN closing is refused for now (retryable), never "closed"
    world.double.pay(client_params, outcome="processing")
    with pytest.raises(ProviderError) as caught:
        world.provider.close_payment(number)
    assert (caught.value.code, caught.value.retryable) == ("payment_pending", True)


def test_close_refuses_a_paid_order(world: World) -> None:
    number, _ = _paid(world)
    with pytest.raises(ProviderError) as caught:
        world.provider.close_payment(number)
    assert (caught.value.code, caught.value.retryable) == ("order_paid", False)


# --- refunds -----------------------------------------------------------------------------------------


def test_refund_is_processing_then_notified_then_succeeded(world: World) -> None:
    order, query_id = _paid(world, 5000)
    refund_no = world.number("RF")

    status = world.provider.refund(RefundRequest(refund_no, order, 3000, 5000, "declined"))
    assert (status.out_refund_no, status.state, status.amount_fen) == (refund_no, "processing", 3000)
    sent = world.double.requests[-1]
    assert {k: sent[k] for k in ("txnType", "txnSubType", "bizType", "channelType", "txnAmt", "currencyCode")} == {
        "txnType": "04",
        "txnSubType": "00",
        "bizType": "000201",
        "channelType": "07",
        "txnAmt": "3000",
        "currencyCode": "156",
    }
    assert (sent["orderId"], sent["origQryId"], sent["backUrl"]) == (refund_no, query_id, BACK_URL)
    assert sent["txnTime"] == _shanghai(world.times[refund_no])
    _verify_ours(sent, world.credentials.secret["sign_cert"])
    assert world.provider.query_refund(refund_no, order).state == "processing"

    world.double.settle_refunds()
    event = world.events[-1]
    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen, event.order_ref) == (
        "refund_succeeded",
        refund_no,
        3000,
        None,
    )
    assert event.provider_ref == status.refund_id
    assert event.event_id == f"04:{refund_no}:{_shanghai(world.times[refund_no])}:00"
    assert world.double.deliveries[-1]["status"] == 200

    done = world.provider.query_refund(refund_no, order)
    assert (done.state, done.amount_fen, done.refund_id) == ("succeeded", 3000, status.refund_id)


def test_the_refund_result_comes_from_a_background_thread(world: World) -> None:
    order, _ = _paid(world, 5000)
    refund_no = world.number("RF")
    world.double.result_delay_s = 0.0
    world.provider.refund(RefundRequest(refund_no, order, 1000, 5000, "declined"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and world.events[-1] is not None and world.events[-1].kind != "refund_succeeded":
        time.sleep(0.01)
    event = world.events[-1]
    assert event is not None and (event.kind, event.merchant_ref) == ("refund_succeeded", refund_no)


def test_a_failed_refund_is_notified_and_queried_as_failed(world: World) -> None:
    order, _ = _paid(world, 5000)
    refund_no = world.number("RF")
    world.provider.refund(RefundRequest(refund_no, order, 5000, 5000, "declined"))
    world.double.settle_refund(refund_no, outcome="fail")
    event = world.events[-1]
    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen, event.reason) == ("refund_failed", refund_no, 5000, "01")
    assert world.provider.query_refund(refund_no, order).state == "failed"


def test_query_of_an_unknown_refund(world: World) -> None:
    order, _ = _paid(world)
    with pytest.raises(ProviderError) as caught:
        world.provider.query_refund(world.number("RF"), order)
    assert (caught.value.code, caught.value.retryable) == ("refund_not_found", False)


def test_a_resent_refund_whose_answer_was_lost_answers_its_state(world: World) -> None:
    order, _ = _paid(world, 5000)
    refund_no = world.number("RF")
    world.lose_answer = True
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(refund_no, order, 2000, 5000, "declined"))
    assert (caught.value.code, caught.value.retryable) == ("network_error", True)

    again = world.provider.refund(RefundRequest(refund_no, order, 2000, 5000, "declined"))  # UnionPay: 12 重复交易
    assert (again.state, again.amount_fen) == ("processing", 2000)

    with pytest.raises(ProviderError) as conflict:
        world.provider.refund(RefundRequest(refund_no, order, 2500, 5000, "declined"))
    assert (conflict.value.code, conflict.value.retryable) == ("refund_conflict", False)


def test_refund_of_an_order_that_is_not_paid(world: World) -> None:
    number, client_params = _payment(world)
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(world.number("RF"), number, 100, 5000, "x"))
    assert caught.value.code == "order_not_found"

    world.double.pay(client_params, outcome="processing")
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(world.number("RF"), number, 100, 5000, "x"))
    assert (caught.value.code, caught.value.retryable) == ("payment_pending", True)

    world.double.pay(client_params, outcome="fail")
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(world.number("RF"), number, 100, 5000, "x"))
    assert (caught.value.code, caught.value.retryable) == ("order_not_paid", False)


def test_refund_refused_by_unionpay_is_not_retryable(world: World) -> None:
    order, _ = _paid(world, 5000)
    world.double.plan_answer("36", path=BACK_PATH)
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(world.number("RF"), order, 100, 5000, "x"))
    assert (caught.value.code, caught.value.retryable) == ("unionpay_36", False)


# --- retryable answers and transport failures ---------------------------------------------------------


@pytest.mark.parametrize("code", ["03", "04", "05", "06"])
def test_unknown_outcomes_are_retryable(world: World, code: str) -> None:
    order, _ = _paid(world, 5000)
    world.double.plan_answer(code, path=BACK_PATH)
    with pytest.raises(ProviderError) as caught:
        world.provider.refund(RefundRequest(world.number("RF"), order, 100, 5000, "x"))
    assert (caught.value.code, caught.value.retryable) == (f"unionpay_{code}", True)

    world.double.plan_answer(code, path=QUERY_PATH)
    with pytest.raises(ProviderError) as caught:
        world.provider.query_payment(order)
    assert (caught.value.code, caught.value.retryable) == (f"unionpay_{code}", True)


def test_a_refund_query_in_progress_is_processing(world: World) -> None:
    order, _ = _paid(world, 5000)
    refund_no = world.number("RF")
    world.provider.refund(RefundRequest(refund_no, order, 100, 5000, "x"))
    assert world.provider.query_refund(refund_no, order).state == "processing"  # origRespCode 05


@pytest.mark.parametrize(
    "fault", [requests.ConnectTimeout("connect"), requests.ReadTimeout("read")], ids=["connect", "read"]
)
def test_timeouts_are_retryable_and_the_timeout_reaches_requests(world: World, fault: Exception) -> None:
    world.fault = fault
    with pytest.raises(ProviderError) as caught:
        world.provider.query_payment(world.number("PI"))
    assert (caught.value.code, caught.value.retryable) == ("timeout", True)
    assert world.mock.calls[-1].request.req_kwargs["timeout"] == TIMEOUT


def test_a_refused_connection_is_retryable(world: World) -> None:
    world.fault = requests.ConnectionError("refused")
    with pytest.raises(ProviderError) as caught:
        world.provider.query_payment(world.number("PI"))
    assert (caught.value.code, caught.value.retryable) == ("network_error", True)


def test_http_errors_are_retryable(world: World) -> None:
    world.http_status = 502
    with pytest.raises(ProviderError) as caught:
        world.provider.query_payment(world.number("PI"))
    assert (caught.value.code, caught.value.retryable) == ("http_502", True)


# --- synchronous answers are verified before use ---------------------------------------------------------


def _answer_retryable(world: World, order: str, code: str = "bad_response_signature") -> None:
    with pytest.raises(ProviderError) as caught:
        world.provider.query_payment(order)
    assert (caught.value.code, caught.value.retryable) == (code, True)


def test_an_answer_with_an_altered_amount_is_refused(world: World) -> None:
    order, _ = _paid(world, 5000)
    world.tamper = lambda out: out.replace(b"txnAmt=5000", b"txnAmt=1")
    _answer_retryable(world, order)


def test_an_unsigned_answer_is_refused(world: World) -> None:
    order, _ = _paid(world, 5000)
    world.tamper = lambda out: re.sub(rb"&signature=[^&]*", b"", out)
    _answer_retryable(world, order)


def test_an_answer_signed_outside_our_chain_is_refused(world: World, spare: list[Any]) -> None:
    order, _ = _paid(world, 5000)
    key = spare[0]
    cert = issue_cert(key, SIGNER_CN)  # self-signed, with UnionPay's name

    def resign(out: bytes) -> bytes:
        fields = parse_answer(out.decode())
        return "&".join(f"{k}={v}" for k, v in sign_with(fields, key_pem(key), cert_pem(cert)).items()).encode()

    world.tamper = resign
    _answer_retryable(world, order)


def test_an_unparseable_answer_is_retryable(world: World) -> None:
    order, _ = _paid(world, 5000)
    world.tamper = lambda out: b"&&" + out
    _answer_retryable(world, order, "bad_response")


def test_a_request_unionpay_cannot_verify_is_refused(
    world: World, credentials: UnionPayCredentials, spare: list[Any]
) -> None:
    key = spare[0]
    stranger = issue_cert(key, "not registered with UnionPay")
    provider = UnionPayProvider(_config(credentials, world.times, sign_key=key_pem(key), sign_cert=cert_pem(stranger)))
    with pytest.raises(ProviderError) as caught:
        provider.query_payment(world.number("PI"))
    assert (caught.value.code, caught.value.retryable) == ("unionpay_11", False)


# --- forged back notifications ----------------------------------------------------------------------------


def _notification(world: World) -> dict[str, str]:
    _paid(world, 5000)
    return dict(world.double.deliveries[-1]["fields"])


def _rejected(world: World, body: bytes, now: datetime | None = None) -> str:
    with pytest.raises(NotificationRejected) as caught:
        world.provider.parse_callback(
            {"Content-Type": "application/x-www-form-urlencoded"}, body, now or datetime.now(UTC)
        )
    return caught.value.reason


def _middle(world: World) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    keys = world.credentials.double
    return (
        serialization.load_pem_private_key(keys.middle_key.encode(), password=None),
        x509.load_pem_x509_certificate(keys.middle_cert.encode()),
    )


def test_the_genuine_notification_verifies(world: World) -> None:
    fields = _notification(world)
    event = world.provider.parse_callback({}, urlencode(fields).encode(), datetime.now(UTC))
    assert event is not None and event.kind == "payment_succeeded"


def test_an_altered_amount_is_a_bad_signature(world: World) -> None:
    fields = _notification(world)
    fields["txnAmt"] = "1"
    assert _rejected(world, urlencode(fields).encode()) == "bad_signature"


def test_a_certificate_outside_our_chain_with_unionpays_name_is_refused(world: World, spare: list[Any]) -> None:
    fields = _notification(world)
    root_key, middle_key, leaf_key = spare
    root = issue_cert(root_key, "UnionPay Double Root CA", ca=True)  # same names as the real chain
    middle = issue_cert(middle_key, "UnionPay Double Middle CA", issuer=(root_key, root), ca=True)
    leaf = issue_cert(leaf_key, SIGNER_CN, issuer=(middle_key, middle))
    forged = sign_with(fields, key_pem(leaf_key), cert_pem(leaf))
    assert _rejected(world, urlencode(forged).encode()) == "unknown_serial"

    self_signed = issue_cert(leaf_key, SIGNER_CN)
    forged = sign_with(fields, key_pem(leaf_key), cert_pem(self_signed))
    assert _rejected(world, urlencode(forged).encode()) == "unknown_serial"


@pytest.mark.parametrize(
    "common_name", ["041@Z12400000000001@某某支付有限公司@00000001", "某某支付有限公司", "041@中国银联股份有限公司"]
)
def test_a_certificate_of_our_chain_with_another_name_is_refused(
    world: World, common_name: str, spare: list[Any]
) -> None:
    fields = _notification(world)
    key = spare[0]
    cert = issue_cert(key, common_name, issuer=_middle(world))
    forged = sign_with(fields, key_pem(key), cert_pem(cert))
    assert _rejected(world, urlencode(forged).encode()) == "unknown_serial"


def test_a_plain_common_name_of_unionpay_is_accepted(world: World, spare: list[Any]) -> None:
    fields = _notification(world)
    key = spare[1]
    cert = issue_cert(key, "中国银联股份有限公司", issuer=_middle(world))
    resigned = sign_with(fields, key_pem(key), cert_pem(cert))
    event = world.provider.parse_callback({}, urlencode(resigned).encode(), datetime.now(UTC))
    assert event is not None and event.kind == "payment_succeeded"


def test_an_expired_certificate_is_refused(world: World, spare: list[Any]) -> None:
    fields = _notification(world)
    key = spare[2]
    now = datetime.now(UTC)
    expired = issue_cert(
        key, SIGNER_CN, issuer=_middle(world), not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)
    )
    forged = sign_with(fields, key_pem(key), cert_pem(expired))
    assert _rejected(world, urlencode(forged).encode()) == "unknown_serial"
    # the genuine certificate, at a time it is no longer valid
    assert _rejected(world, urlencode(fields).encode(), now + timedelta(days=3700)) == "unknown_serial"


def test_a_missing_signature_or_certificate_is_refused(world: World) -> None:
    fields = _notification(world)
    unsigned = {k: v for k, v in fields.items() if k != "signature"}
    assert _rejected(world, urlencode(unsigned).encode()) == "missing_header"
    without_cert = {k: v for k, v in fields.items() if k != "signPubKeyCert"}
    assert _rejected(world, urlencode(without_cert).encode()) == "missing_header"
    assert _rejected(world, b"") == "missing_header"


def test_another_merchant_is_refused(world: World) -> None:
    fields = _notification(world)
    fields["merId"] = "777290058110099"
    assert _rejected(world, urlencode(world.double.sign(fields)).encode()) == "wrong_merchant"


def test_another_version_is_refused(world: World) -> None:
    fields = _notification(world)
    fields["version"] = "5.0.0"
    assert _rejected(world, urlencode(world.double.sign(fields)).encode()) == "unsupported_algorithm"


def test_lists_and_repeated_fields_are_malformed(world: World) -> None:
    fields = _notification(world)
    as_lists = {k: [v] for k, v in fields.items()}
    as_lists["txnAmt"] = ["5000", "1"]
    assert _rejected(world, urlencode(as_lists, doseq=True).encode()) == "malformed_body"
    repeated = urlencode(fields) + "&txnAmt=5000"
    assert _rejected(world, repeated.encode()) == "malformed_body"
    assert _rejected(world, b"\xff\xfe=1") == "malformed_body"
    assert _rejected(world, b'{"respCode": "00"}') == "malformed_body"


def test_verified_notifications_we_do_not_act_on(world: World) -> None:
    fields = _notification(world)
    failed = world.double.sign({**fields, "respCode": "01"})
    assert world.provider.parse_callback({}, urlencode(failed).encode(), datetime.now(UTC)) is None
    void = world.double.sign({**fields, "txnType": "31"})
    assert world.provider.parse_callback({}, urlencode(void).encode(), datetime.now(UTC)) is None
    pending_refund = world.double.sign({**fields, "txnType": "04", "txnSubType": "00", "respCode": "05"})
    assert world.provider.parse_callback({}, urlencode(pending_refund).encode(), datetime.now(UTC)) is None


def test_a_payment_opened_on_new_years_eve_and_paid_after_midnight(world: World) -> None:
    fields = _notification(world)
    late = world.double.sign({**fields, "txnTime": "20241231235900", "traceTime": "0101000130"})
    event = world.provider.parse_callback({}, urlencode(late).encode(), datetime.now(UTC))
    assert event is not None and event.occurred_at == "2025-01-01T00:01:30+08:00"


def test_a_payment_notification_in_another_currency_keeps_it(world: World) -> None:
    fields = _notification(world)
    usd = world.double.sign({**fields, "currencyCode": "840"})
    event = world.provider.parse_callback({}, urlencode(usd).encode(), datetime.now(UTC))
    assert event is not None and event.currency == "840"  # settlement refuses it: not CNY


# --- payouts, config and message rules ----------------------------------------------------------------------


def test_unionpay_pays_no_payouts(world: World) -> None:
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: world.provider.payout(PayoutRequest("WD1", 100, "bank_card", {}, "x")), "payee_kind_unsupported"),
        (lambda: world.provider.query_payout("WD1"), "payout_not_found"),
        (lambda: world.provider.cancel_payout("WD1"), "payout_not_cancellable"),
    ]
    for call, code in cases:
        with pytest.raises(ProviderError) as caught:
            call()
        assert (caught.value.code, caught.value.retryable) == (code, False)
    assert world.double.finish_payout("WD1", "success") is None
    assert world.double.plan_payout("fail") is None


def test_config_is_checked(credentials: UnionPayCredentials, spare: list[Any]) -> None:
    with pytest.raises(ValueError, match="merchant_id"):
        _config(credentials, {}, merchant_id="123")
    with pytest.raises(ValueError, match="query string"):
        _config(credentials, {}, back_url=BACK_URL + "?a=b")
    other = key_pem(spare[0])
    with pytest.raises(ValueError, match="sign_cert"):
        UnionPayProvider(_config(credentials, {}, sign_key=other))
    with pytest.raises(ValueError, match="middle"):
        UnionPayProvider(_config(credentials, {}, middle_cert=credentials.secret["sign_cert"]))
    assert "BEGIN" not in repr(_config(credentials, {}))


def test_sign_string_and_answer_parsing() -> None:
    assert sign_string({"b": "2", "a": "1", "signature": "x", "c": "="}) == "a=1&b=2&c=="
    assert parse_answer("respMsg=成功[0000000]&signature=ab+/c==&reqReserved={a=1&b=2}&v=\r\n") == {
        "respMsg": "成功[0000000]",
        "signature": "ab+/c==",
        "reqReserved": "{a=1&b=2}",
        "v": "",
    }
    for bad in ("a=1&a=2", "=1", "a=1&b", "a&b=1"):
        with pytest.raises(ValueError, match="field"):
            parse_answer(bad)
