"""The live WeChat Pay v3 adapter against its double, on the wire (reference/payments.md §1, §4.1).

Every outgoing call is captured by ``responses`` and handed to ``WeChatPayDouble.handle``, which
checks our request signature with our merchant public key exactly as WeChat does and signs its
answers with the WeChat Pay key (so ``wechatpayv3`` verifies them in public-key mode). The
double's notifications go straight into ``parse_callback``. No network, no DynamoDB.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import requests
import responses

from chalicelib.payments.provider import (
    PaymentRequest,
    PayoutRequest,
    ProviderError,
    ProviderEvent,
    RefundRequest,
)
from chalicelib.payments.wechat_notify import NotificationRejected, generate_sandbox_keys, sign_notification
from chalicelib.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from devstack.doubles.wechatpay import WeChatPayCredentials, WeChatPayDouble, make_credentials

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from requests import PreparedRequest

API_BASE = "https://wechatpay.double.test"
NOTIFY_URL = "https://api.example.test/v1/payments/callbacks/wechat"
TIMEOUT = (3.0, 10.0)
STRANGER_PRIVATE, _STRANGER_PUBLIC = generate_sandbox_keys()


@dataclass(frozen=True)
class Request(PaymentRequest):
    """``PaymentRequest`` with the ``payer_ip`` field the lead adds (harmless once it exists)."""

    payer_ip: str | None = None


@dataclass
class World:
    credentials: WeChatPayCredentials
    double: WeChatPayDouble
    provider: WeChatPayProvider
    rsps: responses.RequestsMock
    events: list[ProviderEvent | None] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    tamper: Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]] | None = None
    """Rewrites the double's answer before the SDK sees it (a forger on the wire)."""

    def deliver(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """The double's notification, straight into the adapter (what our callback route does)."""
        assert url == NOTIFY_URL
        try:
            event = self.provider.parse_callback(headers, body, datetime.now(UTC))
        except NotificationRejected as rejected:
            self.rejections.append(rejected.reason)
            reply = self.provider.acknowledge(False)
        else:
            self.events.append(event)
            reply = self.provider.acknowledge(True)
        return reply.status, reply.body

    def route(self, request: PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        body = request.body or b""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        status, headers, out = self.double.handle(str(request.method), str(request.url), dict(request.headers), raw)
        if self.tamper is not None:
            status, headers, out = self.tamper(status, headers, out)
        return status, headers, out

    def sent(self, path_part: str) -> list[dict[str, Any]]:
        """The JSON bodies of our calls whose URL contains ``path_part``."""
        return [
            json.loads(call.request.body or b"{}")
            for call in self.rsps.calls
            if path_part in str(call.request.url) and call.request.method == "POST"
        ]


@pytest.fixture(scope="module")
def credentials() -> WeChatPayCredentials:
    return make_credentials(api_base=API_BASE)


def make_world(credentials: WeChatPayCredentials, rsps: responses.RequestsMock, **config: Any) -> World:
    holder: dict[str, World] = {}
    double = WeChatPayDouble(
        credentials.double, deliver=lambda url, h, b: holder["world"].deliver(url, h, b), result_delay_s=0
    )
    provider = WeChatPayProvider(credentials.config(NOTIFY_URL, **config))
    world = World(credentials, double, provider, rsps)
    holder["world"] = world
    pattern = re.compile(re.escape(API_BASE) + r"/v3/.*")
    for method in (responses.GET, responses.POST):
        rsps.add_callback(method, pattern, callback=world.route, content_type=None)
    return world


@pytest.fixture
def world(credentials: WeChatPayCredentials) -> Iterator[World]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield make_world(credentials, rsps)


def order(number: str, scene: str = "jsapi_mp", *, openid: str | None = "o-payer", ip: str | None = None) -> Request:
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    return Request(number, 50_000, "Invitation 麻醉会诊", scene, openid, expires, payer_ip=ip)  # type: ignore[arg-type]


def verifies(public_pem: str, message: str, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_pem.encode("ascii"))
    try:
        key.verify(base64.b64decode(signature), message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    except InvalidSignature:
        return False
    return True


def error_of(call: Callable[[], Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


def paid_order(world: World, number: str = "PI1") -> dict[str, Any]:
    intent = world.provider.create_payment(order(number))
    world.double.pay(intent.client_params)
    return intent.client_params


# -- creating payments -------------------------------------------------------------------------------


@pytest.mark.parametrize(("scene", "app"), [("jsapi_oa", "oa"), ("jsapi_mp", "mp")])
def test_a_jsapi_order_answers_client_params_signed_with_our_merchant_key(world: World, scene: str, app: str) -> None:
    intent = world.provider.create_payment(order("PI100", scene, openid="o-abc"))

    params = intent.client_params
    appid = world.credentials.double.app_ids[app]
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert params["appId"] == appid
    assert params["package"] == f"prepay_id={intent.provider_ref}"
    assert intent.provider_ref.startswith("wx")
    assert params["signType"] == "RSA"
    assert abs(int(params["timeStamp"]) - time.time()) < 60
    message = f"{appid}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    assert verifies(world.credentials.double.merchant_public_key, message, params["paySign"])
    # what reached WeChat: a signed JSAPI order for that appid and payer, Beijing time_expire
    [sent] = world.sent("/v3/pay/transactions/jsapi")
    assert sent["appid"] == appid
    assert sent["mchid"] == world.credentials.double.mchid
    assert sent["payer"] == {"openid": "o-abc"}
    assert sent["amount"] == {"total": 50_000, "currency": "CNY"}
    assert sent["time_expire"] == "2031-05-06T15:08:09+08:00"
    assert sent["notify_url"] == NOTIFY_URL
    assert [r["verified"] for r in world.double.requests] == [True]


@pytest.mark.parametrize("scene", ["jsapi_oa", "jsapi_mp"])
def test_a_jsapi_order_without_the_payers_openid_is_refused_before_any_call(world: World, scene: str) -> None:
    error = error_of(lambda: world.provider.create_payment(order("PI101", scene, openid=None)))

    assert (error.code, error.retryable) == ("payer_openid_required", False)
    assert len(world.rsps.calls) == 0


@pytest.mark.parametrize(("ip", "expected"), [("203.0.113.7", "203.0.113.7"), (None, "127.0.0.1")])
def test_an_h5_order_answers_the_h5_url_and_sends_the_payers_ip(world: World, ip: str | None, expected: str) -> None:
    intent = world.provider.create_payment(order("PI102", "h5", openid=None, ip=ip))

    assert set(intent.client_params) == {"h5_url"}
    assert intent.client_params["h5_url"].startswith("https://wx.tenpay.com/")
    assert f"prepay_id={intent.provider_ref}" in intent.client_params["h5_url"]
    [sent] = world.sent("/v3/pay/transactions/h5")
    assert sent["scene_info"] == {"payer_client_ip": expected, "h5_info": {"type": "Wap"}}
    assert sent["appid"] == world.credentials.double.app_ids["oa"]


def test_an_app_order_answers_opensdk_payreq_fields_signed_with_our_merchant_key(world: World) -> None:
    intent = world.provider.create_payment(order("PI103", "app", openid=None))

    params = intent.client_params
    appid = world.credentials.double.app_ids["app"]
    assert set(params) == {"appId", "partnerId", "prepayId", "packageValue", "nonceStr", "timeStamp", "sign"}
    assert (params["appId"], params["partnerId"], params["prepayId"], params["packageValue"]) == (
        appid,
        world.credentials.double.mchid,
        intent.provider_ref,
        "Sign=WXPay",
    )
    message = f"{appid}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['prepayId']}\n"
    assert verifies(world.credentials.double.merchant_public_key, message, params["sign"])
    assert world.sent("/v3/pay/transactions/app")[0]["appid"] == appid


def test_an_app_order_without_an_app_appid_is_an_unsupported_scene(credentials: WeChatPayCredentials) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        world = make_world(credentials, rsps, app_ids={"oa": credentials.double.app_ids["oa"]})
        error = error_of(lambda: world.provider.create_payment(order("PI104", "app", openid=None)))
        assert (error.code, error.retryable) == ("scene_unsupported", False)
        assert len(rsps.calls) == 0


def test_the_same_order_again_answers_the_same_prepay_id(world: World) -> None:
    first = world.provider.create_payment(order("PI105"))
    again = world.provider.create_payment(order("PI105"))

    assert again.provider_ref == first.provider_ref


# -- querying, paying, closing -------------------------------------------------------------------------


def test_an_order_is_pending_until_paid_then_succeeded_and_its_callback_is_accepted(world: World) -> None:
    intent = world.provider.create_payment(order("PI200"))
    assert world.provider.query_payment("PI200").state == "pending"

    world.double.pay(intent.client_params)

    [delivery] = world.double.deliveries
    assert (delivery["event_type"], delivery["status"], delivery["answer"]) == ("TRANSACTION.SUCCESS", 204, "")
    [event] = world.events
    assert event is not None
    assert (event.channel, event.kind, event.merchant_ref) == ("wechat", "payment_succeeded", "PI200")
    assert (event.amount_fen, event.currency, event.event_id) == (50_000, "CNY", delivery["event_id"])
    status = world.provider.query_payment("PI200")
    assert (status.state, status.amount_fen, status.currency) == ("succeeded", 50_000, "CNY")
    assert status.transaction_id == event.provider_ref
    assert status.paid_at is not None
    assert status.paid_at.endswith("+08:00")


def test_a_payer_cannot_pay_with_client_params_we_did_not_sign(world: World) -> None:
    params = dict(world.provider.create_payment(order("PI201")).client_params)
    # the nonce is random: flip its first character to one it cannot already be
    first = params["nonceStr"][0]
    params["nonceStr"] = ("y" if first == "x" else "x") + params["nonceStr"][1:]

    with pytest.raises(ValueError, match="signature"):
        world.double.pay(params)


def test_an_unknown_order_is_order_not_found(world: World) -> None:
    error = error_of(lambda: world.provider.query_payment("PI404"))

    assert (error.code, error.retryable) == ("order_not_found", False)


def test_closing_an_open_order_closes_it_and_closing_again_is_fine(world: World) -> None:
    world.provider.create_payment(order("PI300"))

    world.provider.close_payment("PI300")
    world.provider.close_payment("PI300")  # WeChat answers ORDER_CLOSED: already what we want

    assert world.provider.query_payment("PI300").state == "closed"
    assert world.sent("/close")[0] == {"mchid": world.credentials.double.mchid}


def test_closing_a_paid_order_is_order_paid_and_not_retryable(world: World) -> None:
    paid_order(world, "PI301")

    error = error_of(lambda: world.provider.close_payment("PI301"))

    assert (error.code, error.retryable) == ("order_paid", False)


# -- refunds ---------------------------------------------------------------------------------------------


def test_a_refund_is_processing_then_its_success_notification_is_accepted(world: World) -> None:
    paid_order(world, "PI400")

    status = world.provider.refund(RefundRequest("RF400", "PI400", 20_000, 50_000, "医生未接受邀请"))

    assert (status.out_refund_no, status.state, status.amount_fen) == ("RF400", "processing", 20_000)
    [sent] = world.sent("/v3/refund/domestic/refunds")
    assert sent["amount"] == {"refund": 20_000, "total": 50_000, "currency": "CNY"}
    assert (sent["out_trade_no"], sent["out_refund_no"], sent["notify_url"]) == ("PI400", "RF400", NOTIFY_URL)
    refund_event = world.events[-1]
    assert refund_event is not None
    assert (refund_event.kind, refund_event.merchant_ref, refund_event.order_ref) == (
        "refund_succeeded",
        "RF400",
        "PI400",
    )
    assert (refund_event.amount_fen, refund_event.currency, refund_event.provider_ref) == (
        20_000,
        "CNY",
        status.refund_id,
    )
    assert world.provider.query_refund("RF400", "PI400").state == "succeeded"
    assert world.provider.query_payment("PI400").state == "succeeded"  # trade_state REFUND: it was paid


def test_the_same_refund_number_refunds_once_and_another_amount_is_refused(world: World) -> None:
    paid_order(world, "PI401")
    world.double.plan_refund("hold")
    first = world.provider.refund(RefundRequest("RF401", "PI401", 10_000, 50_000, "r"))

    again = world.provider.refund(RefundRequest("RF401", "PI401", 10_000, 50_000, "r"))
    error = error_of(lambda: world.provider.refund(RefundRequest("RF401", "PI401", 12_000, 50_000, "r")))

    assert again == first
    assert (error.code, error.retryable) == ("invalid_request", False)
    assert world.double.orders["PI401"]["refunded"] == 10_000


def test_a_refund_past_what_is_left_is_not_enough(world: World) -> None:
    paid_order(world, "PI402")
    world.provider.refund(RefundRequest("RF402a", "PI402", 40_000, 50_000, "r"))

    error = error_of(lambda: world.provider.refund(RefundRequest("RF402b", "PI402", 20_000, 50_000, "r")))

    assert (error.code, error.retryable) == ("not_enough", False)


def test_an_abnormal_refund_is_failed(world: World) -> None:
    paid_order(world, "PI403")
    world.double.plan_refund("abnormal")

    world.provider.refund(RefundRequest("RF403", "PI403", 1_000, 50_000, "r"))

    assert world.provider.query_refund("RF403", "PI403").state == "failed"
    event = world.events[-1]
    assert event is not None
    assert event.kind == "refund_failed"


def test_an_unknown_refund_is_refund_not_found(world: World) -> None:
    error = error_of(lambda: world.provider.query_refund("RF404", "PI404"))

    assert (error.code, error.retryable) == ("refund_not_found", False)


def test_a_refund_result_arrives_from_a_thread_after_the_delay(credentials: WeChatPayCredentials) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        world = make_world(credentials, rsps)
        world.double.result_delay_s = 0.05
        paid_order(world, "PI405")

        assert world.provider.refund(RefundRequest("RF405", "PI405", 500, 50_000, "r")).state == "processing"

        deadline = time.monotonic() + 5
        while len(world.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [e.kind for e in world.events if e] == ["payment_succeeded", "refund_succeeded"]


# -- payouts (商家转账) ------------------------------------------------------------------------------------


def payout(number: str = "WD1", amount: int = 12_345, **payee: str) -> PayoutRequest:
    return PayoutRequest(number, amount, "wechat", {"openid": "o-doctor", "app": "mp", **payee}, "提现")


def test_a_payout_waits_for_the_payee_with_a_package_and_an_encrypted_name(world: World) -> None:
    status = world.provider.payout(payout("WD100", real_name="张三"))

    assert (status.out_bill_no, status.state, status.amount_fen) == ("WD100", "wait_user_confirm", 12_345)
    assert status.package_info
    assert status.bill_id
    [sent] = world.sent("/v3/fund-app/mch-transfer/transfer-bills")
    assert sent["appid"] == world.credentials.double.app_ids["mp"]
    assert (sent["openid"], sent["transfer_amount"], sent["transfer_scene_id"]) == ("o-doctor", 12_345, "1005")
    assert sent["notify_url"] == NOTIFY_URL
    assert {info["info_type"] for info in sent["transfer_scene_report_infos"]} == {"岗位类型", "报酬说明"}
    assert sent["user_name"] != "张三"  # RSA-OAEP under the WeChat Pay public key ...
    assert world.double.transfers["WD100"]["user_name"] == "张三"  # ... which only WeChat's private key opens
    call = next(c for c in world.rsps.calls if "transfer-bills" in str(c.request.url))
    assert call.request.headers["Wechatpay-Serial"] == world.credentials.double.public_key_id

    queried = world.provider.query_payout("WD100")  # WeChat's query does not repeat package_info ...
    assert (queried.state, queried.package_info, queried.bill_id) == ("wait_user_confirm", None, status.bill_id)
    again = world.provider.payout(payout("WD100", real_name="张三"))  # ... the same bill sent again does
    assert (again.state, again.package_info, again.bill_id) == (
        "wait_user_confirm",
        status.package_info,
        status.bill_id,
    )


def test_the_same_payout_number_answers_the_same_bill(world: World) -> None:
    first = world.provider.payout(payout("WD101"))

    assert world.provider.payout(payout("WD101")) == first
    assert len(world.double.transfers) == 1


@pytest.mark.parametrize(
    ("outcome", "kind", "state", "reason"),
    [
        ("success", "payout_succeeded", "succeeded", None),
        ("fail", "payout_failed", "failed", "PAYEE_ACCOUNT_ABNORMAL"),
    ],
)
def test_a_finished_payout_is_notified_and_queried(
    world: World, outcome: str, kind: str, state: str, reason: str | None
) -> None:
    world.provider.payout(payout("WD102"))

    world.double.finish_payout("WD102", outcome)

    event = world.events[-1]
    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen, event.currency, event.reason) == (
        kind,
        "WD102",
        12_345,
        "CNY",
        reason,
    )
    status = world.provider.query_payout("WD102")
    assert (status.state, status.fail_reason, status.package_info) == (state, reason, None)


def test_a_cancelled_payout_is_canceling_then_cancelled(world: World) -> None:
    world.provider.payout(payout("WD103"))

    status = world.provider.cancel_payout("WD103")

    assert status.state == "processing"  # CANCELING
    event = world.events[-1]
    assert event is not None
    assert event.kind == "payout_cancelled"
    assert world.provider.query_payout("WD103").state == "cancelled"
    assert world.provider.cancel_payout("WD103").state == "cancelled"


def test_an_unknown_payout_is_payout_not_found(world: World) -> None:
    for call in (lambda: world.provider.query_payout("WD404"), lambda: world.provider.cancel_payout("WD404")):
        error = error_of(call)
        assert (error.code, error.retryable) == ("payout_not_found", False)


@pytest.mark.parametrize("kind", ["alipay", "bank_card"])
def test_wechat_pays_only_wechat_payees(world: World, kind: str) -> None:
    request = PayoutRequest("WD104", 100, kind, {"account": "a@example.com"}, "提现")  # type: ignore[arg-type]

    error = error_of(lambda: world.provider.payout(request))

    assert (error.code, error.retryable) == ("payee_kind_unsupported", False)
    assert len(world.rsps.calls) == 0


# -- every call has a timeout; failures map to retryable or not --------------------------------------------


def test_every_outgoing_call_carries_the_configured_timeout(world: World) -> None:
    world.provider.create_payment(order("PI500", "jsapi_oa"))
    world.provider.create_payment(order("PI501", "h5"))
    world.provider.create_payment(order("PI502", "app"))
    paid_order(world, "PI503")
    world.provider.query_payment("PI500")
    world.provider.close_payment("PI500")
    world.provider.refund(RefundRequest("RF500", "PI503", 100, 50_000, "r"))
    world.provider.query_refund("RF500", "PI503")
    world.provider.payout(payout("WD500"))
    world.provider.query_payout("WD500")
    world.provider.cancel_payout("WD500")

    assert len(world.rsps.calls) == 11
    assert {call.request.req_kwargs["timeout"] for call in world.rsps.calls} == {TIMEOUT}  # type: ignore[attr-defined]
    assert all(record["verified"] for record in world.double.requests)


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (requests.exceptions.ConnectTimeout("connect timed out"), "timeout"),
        (requests.exceptions.ReadTimeout("read timed out"), "timeout"),
        (requests.exceptions.ConnectionError("connection refused"), "network_error"),
    ],
)
def test_timeouts_and_connection_errors_are_retryable(
    credentials: WeChatPayCredentials, raised: Exception, code: str
) -> None:
    provider = WeChatPayProvider(credentials.config(NOTIFY_URL))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, re.compile(re.escape(API_BASE) + r"/.*"), body=raised)
        error = error_of(lambda: provider.query_payment("PI600"))

    assert (error.code, error.retryable) == (code, True)


@pytest.mark.parametrize(
    ("status", "wechat_code", "code", "retryable"),
    [
        (500, "SYSTEM_ERROR", "system_error", True),
        (502, "", "http_502", True),
        (429, "FREQUENCY_LIMITED", "frequency_limited", True),
        (403, "FREQUENCY_LIMITED", "frequency_limited", True),
        (400, "SYSTEM_ERROR", "system_error", True),
        (400, "PARAM_ERROR", "param_error", False),
        (403, "NO_AUTH", "no_auth", False),
        (404, "ORDER_NOT_EXIST", "order_not_found", False),
    ],
)
def test_wechat_error_answers_map_to_retryable_or_definitive(
    world: World, status: int, wechat_code: str, code: str, retryable: bool
) -> None:
    world.double.fail_next(status, wechat_code)

    error = error_of(lambda: world.provider.query_payment("PI601"))

    assert (error.code, error.retryable) == (code, retryable)


def test_a_request_signed_with_a_key_wechat_does_not_know_is_sign_error(credentials: WeChatPayCredentials) -> None:
    impostor_key, _ = generate_sandbox_keys()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        world = make_world(credentials, rsps, merchant_private_key=impostor_key)
        error = error_of(lambda: world.provider.query_payment("PI602"))

    assert (error.code, error.retryable) == ("sign_error", False)
    assert [r["verified"] for r in world.double.requests] == [False]


# -- answers that do not verify are rejected by the SDK -----------------------------------------------------


def resign(private_pem: str, serial: str | None = None) -> Any:
    from chalicelib.payments.wechat_notify import sign_message

    def tamper(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        timestamp, nonce = headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"]
        signature = sign_message(body, private_key_pem=private_pem, timestamp=timestamp, nonce=nonce)
        changed = {**headers, "Wechatpay-Signature": signature}
        if serial is not None:
            changed["Wechatpay-Serial"] = serial
        return status, changed, body

    return tamper


def unsigned(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, body


def altered(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    return status, headers, body.replace(b"NOTPAY", b"SUCCESS")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(unsigned, id="unsigned"),
        pytest.param(altered, id="body-changed-after-signing"),
        pytest.param(resign(STRANGER_PRIVATE), id="signed-by-another-key"),
        pytest.param(resign(STRANGER_PRIVATE, "PUB_KEY_ID_0000000000000000000000000000099"), id="unknown-key-id"),
        pytest.param(resign(STRANGER_PRIVATE, "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"), id="unknown-cert-serial"),
    ],
)
def test_an_answer_wechat_did_not_sign_is_rejected_without_fetching_certificates(world: World, tamper: Any) -> None:
    world.provider.create_payment(order("PI700"))
    world.tamper = tamper

    error = error_of(lambda: world.provider.query_payment("PI700"))

    assert (error.code, error.retryable) == ("response_unverified", True)  # unknown outcome: query again later
    assert not any("/v3/certificates" in str(call.request.url) for call in world.rsps.calls)
    assert len(world.rsps.calls) == 2


def platform_certificate(private_pem: str) -> tuple[str, str]:
    """A platform certificate (hex serial, PEM) for ``private_pem``'s key, as WeChat issued before public keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509.oid import NameOID

    key = load_pem_private_key(private_pem.encode("ascii"), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (double)")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return format(cert.serial_number, "X"), cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def test_during_a_switch_answers_and_callbacks_signed_under_a_configured_platform_cert_are_accepted(
    credentials: WeChatPayCredentials,
) -> None:
    serial, pem = platform_certificate(credentials.double.wechat_private_key)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        world = make_world(credentials, rsps, platform_certs={serial: pem})
        intent = world.provider.create_payment(order("PI701"))
        world.tamper = resign(credentials.double.wechat_private_key, serial)

        assert world.provider.query_payment("PI701").state == "pending"
        world.double.pay(intent.client_params)
    headers, body = notification(credentials, {**transaction(credentials), "out_trade_no": "PI701"}, serial=serial)
    event = world.provider.parse_callback(headers, body, datetime.now(UTC))
    assert event is not None
    assert event.merchant_ref == "PI701"


# -- callbacks: forged, stale, probes, another merchant --------------------------------------------------


def transaction(credentials: WeChatPayCredentials, **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "mchid": credentials.double.mchid,
        "appid": credentials.double.app_ids["mp"],
        "out_trade_no": "PI800",
        "transaction_id": "4200000000000000000000000001",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "success_time": "2031-05-06T15:08:09+08:00",
        "payer": {"openid": "o-payer"},
        "amount": {"total": 50_000, "payer_total": 50_000, "currency": "CNY", "payer_currency": "CNY"},
    }
    resource.update(changes)
    return resource


def notification(
    credentials: WeChatPayCredentials,
    resource: dict[str, Any],
    *,
    event_type: str = "TRANSACTION.SUCCESS",
    private_pem: str | None = None,
    serial: str | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    return sign_notification(
        {"id": "EV-800", "create_time": "2031-05-06T15:08:10+08:00", "event_type": event_type, "summary": "支付成功"},
        resource,
        private_key_pem=private_pem or credentials.double.wechat_private_key,
        serial=serial or credentials.double.public_key_id,
        api_v3_key=credentials.double.apiv3_key.encode("utf-8"),
        timestamp=int(time.time()) if timestamp is None else timestamp,
        nonce="n0nceN0nceN0nceN0nceN0nceN0nce12",
    )


@pytest.fixture
def provider(credentials: WeChatPayCredentials) -> WeChatPayProvider:
    return WeChatPayProvider(credentials.config(NOTIFY_URL))


def rejection(provider: WeChatPayProvider, headers: dict[str, str], body: bytes, now: float | None = None) -> str:
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    with pytest.raises(NotificationRejected) as caught:
        provider.parse_callback(headers, body, when)
    return caught.value.reason


def test_a_correct_callback_is_accepted_and_acknowledged_with_204(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    headers, body = notification(credentials, transaction(credentials))

    event = provider.parse_callback(headers, body, datetime.now(UTC))

    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen, event.currency, event.event_id) == (
        "payment_succeeded",
        "PI800",
        50_000,
        "CNY",
        "EV-800",
    )
    assert (provider.acknowledge(True).status, provider.acknowledge(True).body) == (204, "")
    refused = provider.acknowledge(False)
    assert (refused.status, json.loads(refused.body)) == (400, {"code": "FAIL", "message": "失败"})


def test_a_callback_with_its_body_altered_is_bad_signature(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    headers, body = notification(credentials, transaction(credentials))
    marker = b'"ciphertext":"'
    at = body.index(marker) + len(marker) + 5
    forged = body[:at] + (b"B" if body[at : at + 1] == b"A" else b"A") + body[at + 1 :]

    assert rejection(provider, headers, forged) == "bad_signature"


def test_a_callback_signed_with_another_key_is_bad_signature(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    headers, body = notification(credentials, transaction(credentials), private_pem=STRANGER_PRIVATE)

    assert rejection(provider, headers, body) == "bad_signature"


@pytest.mark.parametrize("offset", [-301, 301])
def test_a_callback_more_than_300_seconds_away_is_stale(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials, offset: int
) -> None:
    signed_at = 1_900_000_000
    headers, body = notification(credentials, transaction(credentials), timestamp=signed_at)

    assert rejection(provider, headers, body, now=signed_at + offset) == "stale_timestamp"
    just_inside = signed_at + (300 if offset > 0 else -300)
    assert provider.parse_callback(headers, body, datetime.fromtimestamp(just_inside, UTC)) is not None


def test_a_callback_under_an_unknown_serial_is_rejected_with_no_network_call(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    headers, body = notification(
        credentials, transaction(credentials), private_pem=STRANGER_PRIVATE, serial="5157F09EFDC096DE15EBE81A47057A72"
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:  # nothing registered: no URL answers
        assert rejection(provider, headers, body) == "unknown_serial"
        assert len(rsps.calls) == 0


def test_a_signtest_probe_is_rejected(provider: WeChatPayProvider, credentials: WeChatPayCredentials) -> None:
    headers, body = notification(credentials, transaction(credentials))
    headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]

    assert rejection(provider, headers, body) == "signature_probe"


@pytest.mark.parametrize(
    ("resource", "event_type"),
    [
        pytest.param({"mchid": "1900009999"}, "TRANSACTION.SUCCESS", id="payment-other-mchid"),
        pytest.param({"appid": "wx-someone-else"}, "TRANSACTION.SUCCESS", id="payment-other-appid"),
        pytest.param({"mchid": None}, "TRANSACTION.SUCCESS", id="payment-without-mchid"),
    ],
)
def test_a_correctly_signed_callback_for_another_merchant_is_wrong_merchant(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials, resource: dict[str, Any], event_type: str
) -> None:
    changed = {k: v for k, v in transaction(credentials, **resource).items() if v is not None}
    headers, body = notification(credentials, changed, event_type=event_type)

    assert rejection(provider, headers, body) == "wrong_merchant"


def test_a_transfer_callback_for_another_merchant_is_wrong_merchant(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    resource = {
        "out_bill_no": "WD900",
        "transfer_bill_no": "1330000071100999991182020050700019480001",
        "state": "SUCCESS",
        "mch_id": "1900009999",
        "transfer_amount": 100,
        "openid": "o-doctor",
    }
    headers, body = notification(credentials, resource, event_type="MCHTRANSFER.BILL.FINISHED")
    assert rejection(provider, headers, body) == "wrong_merchant"

    ours = {**resource, "mch_id": credentials.double.mchid}
    headers, body = notification(credentials, ours, event_type="MCHTRANSFER.BILL.FINISHED")
    event = provider.parse_callback(headers, body, datetime.now(UTC))
    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen) == ("payout_succeeded", "WD900", 100)


def test_a_verified_event_we_do_not_act_on_is_none(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials
) -> None:
    headers, body = notification(
        credentials, {"mchid": credentials.double.mchid, "out_contract_code": "C1"}, event_type="PAYSCORE.USER_OPEN"
    )

    assert provider.parse_callback(headers, body, datetime.now(UTC)) is None


def test_callbacks_never_reach_wechatpayv3(
    provider: WeChatPayProvider, credentials: WeChatPayCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wechatpayv3.core import Core

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("wechatpayv3 must not verify callbacks")

    monkeypatch.setattr(Core, "callback", forbidden)
    monkeypatch.setattr(Core, "decrypt_callback", forbidden)
    monkeypatch.setattr(Core, "_verify_signature", forbidden)
    headers, body = notification(credentials, transaction(credentials))

    assert provider.parse_callback(headers, body, datetime.now(UTC)) is not None


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"apiv3_key": "too-short"},
        {"public_key_id": "D7CE59D1F522D701"},
        {"merchant_private_key": "-----BEGIN RSA PRIVATE KEY-----\n..."},
        {"public_key": "-----BEGIN CERTIFICATE-----\n..."},
        {"app_ids": {}},
        {"platform_certs": {"ABC": "not a pem"}},
        {"timeout": (0, 10)},
        {"mchid": ""},
    ],
)
def test_a_config_that_cannot_work_is_refused_at_once(
    credentials: WeChatPayCredentials, change: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="WeChatPayConfig"):
        credentials.config(NOTIFY_URL, **change)


def test_the_config_does_not_show_its_secrets(credentials: WeChatPayCredentials) -> None:
    config: WeChatPayConfig = credentials.config(NOTIFY_URL)

    shown = repr(config)

    assert credentials.secret["apiv3_key"] not in shown
    assert "PRIVATE KEY" not in shown
    assert config.api_base == API_BASE
    assert config.timeout == TIMEOUT


def test_make_credentials_gives_our_side_in_the_lead_s_names(credentials: WeChatPayCredentials) -> None:
    assert set(credentials.config_env) == {
        "WECHATPAY_MCHID",
        "WECHATPAY_MERCHANT_SERIAL",
        "WECHATPAY_PUBLIC_KEY_ID",
        "WECHATPAY_APP_APPID",
        "WECHATPAY_TRANSFER_SCENE_ID",
        "WECHATPAY_API_BASE",
        "WECHAT_OA_APPID",
        "WECHAT_MP_APPID",
    }
    assert set(credentials.secret) == {"merchant_private_key", "apiv3_key", "public_key", "platform_certs"}
    assert len(credentials.secret["apiv3_key"]) == 32
    assert credentials.config_env["WECHATPAY_PUBLIC_KEY_ID"].startswith("PUB_KEY_ID_")
    assert "PRIVATE" not in json.dumps(credentials.config_env)
