"""The Alipay adapter against the Alipay double: signatures checked at the wire, in both directions.

``responses`` routes every gateway call to ``AlipayDouble.handle``, which verifies our RSA2
request signature with our app certificate and the certificate serial numbers as Alipay does,
and answers signed with the "Alipay" key, so the SDK's verification of synchronous answers runs
for real. Notifications go from the double straight into ``parse_callback``.

Example
-------
>>> # .venv/bin/pytest tests/unit/test_alipay_provider.py -q -p no:cacheprovider  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, quote_plus, urlencode, urlsplit

import pytest
import requests
import responses

from chalicelib.clock import SHANGHAI
from chalicelib.payments.alipay import AlipayConfig, AlipayProvider
from chalicelib.payments.provider import (
    PaymentRequest,
    PayoutRequest,
    ProviderError,
    ProviderEvent,
    RefundRequest,
)
from chalicelib.payments.wechat_notify import NotificationRejected
from devstack.doubles.alipay import (
    AlipayCredentials,
    AlipayDouble,
    AlipayDoubleError,
    make_credentials,
    root_cert_sn,
)
from tests.unit.conftest import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

GATEWAY = "https://openapi.alipay.test/gateway.do"
NOTIFY_URL = "https://api.example.test/v1/payments/callbacks/alipay"
RETURN_URL = "https://app.example.test/paid"
TIMEOUT = 7.5
EXPIRES = datetime(2031, 5, 6, 4, 30, tzinfo=UTC)  # 12:30:00 in Beijing
ALIPAY_PAYEE = {"account": "doctor@example.com", "real_name": "张三"}
CARD_PAYEE = {"holder_name": "李四", "bank": "招商银行", "card_number": "6225880137654321"}


@pytest.fixture(scope="module")
def credentials() -> AlipayCredentials:
    return make_credentials(gateway=GATEWAY)


def config_of(credentials: AlipayCredentials, **overrides: Any) -> AlipayConfig:
    env, secret = credentials.config_env, credentials.secret
    values: dict[str, Any] = {
        "app_id": env["ALIPAY_APP_ID"],
        "seller_id": env["ALIPAY_SELLER_ID"],
        "app_private_key": secret["app_private_key"],
        "app_cert": secret["app_cert"],
        "alipay_cert": secret["alipay_cert"],
        "alipay_root_cert": secret["alipay_root_cert"],
        "notify_url": NOTIFY_URL,
        "return_url": RETURN_URL,
        "gateway": env["ALIPAY_GATEWAY"],
        "timeout": TIMEOUT,
        "bank_card_product_code": env["ALIPAY_BANKCARD_PRODUCT_CODE"],
    }
    values.update(overrides)
    return AlipayConfig(**values)


def route(double: AlipayDouble) -> Callable[[requests.PreparedRequest], tuple[int, dict[str, str], bytes]]:
    def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        return double.handle(request.method or "GET", request.url or "", dict(request.headers), body)

    return callback


GATEWAY_URL = re.compile(re.escape(GATEWAY) + r"(\?.*)?$")


@dataclass
class World:
    provider: AlipayProvider
    double: AlipayDouble
    rsps: responses.RequestsMock
    events: list[ProviderEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def _deliverer(world_ref: list[World]) -> Callable[[str, dict[str, str], bytes], tuple[int, str]]:
    def deliver(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        world = world_ref[0]
        assert url == NOTIFY_URL
        assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        try:
            event = world.provider.parse_callback(headers, body, datetime.now(UTC))
        except NotificationRejected as rejected:
            world.rejected.append(rejected.reason)
            reply = world.provider.acknowledge(False)
        else:
            if event is not None:
                world.events.append(event)
            reply = world.provider.acknowledge(True)
        return reply.status, reply.body

    return deliver


def _world(credentials: AlipayCredentials, *, synchronous: bool = True, delay: float = 0.0) -> Iterator[World]:
    holder: list[World] = []
    double = AlipayDouble(credentials, _deliverer(holder), result_delay_s=delay, synchronous=synchronous)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.POST, GATEWAY_URL, callback=route(double))
        rsps.add_callback(responses.GET, GATEWAY_URL, callback=route(double))
        holder.append(World(AlipayProvider(config_of(credentials)), double, rsps))
        yield holder[0]
        for call in rsps.calls:  # every call of ours (POST): our timeout, and nothing signed in the URL
            if call.request.method == "GET":
                continue  # the payer's browser opening the cashier
            assert call.request.req_kwargs["timeout"] == TIMEOUT
            assert call.request.url == f"{GATEWAY}?charset=utf-8"


@pytest.fixture
def world(credentials: AlipayCredentials) -> Iterator[World]:
    yield from _world(credentials)


def payment(number: str = "PI0001", amount_fen: int = 100, scene: str = "h5") -> PaymentRequest:
    return PaymentRequest(number, amount_fen, "麻醉会诊费", scene, None, EXPIRES)  # type: ignore[arg-type]


def paid(world: World, number: str = "PI0001", amount_fen: int = 100) -> ProviderEvent:
    world.double.pay(world.provider.create_payment(payment(number, amount_fen)).client_params)
    return world.events[-1]


def biz_of(params: dict[str, str]) -> dict[str, Any]:
    return json.loads(params["biz_content"])


def form_of(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


# --- configuration and certificates -------------------------------------------------------------


def test_config_is_frozen_with_the_documented_defaults(credentials: AlipayCredentials) -> None:
    config = config_of(credentials, return_url=None, gateway=AlipayConfig.gateway, timeout=AlipayConfig.timeout)
    assert (config.gateway, config.timeout, config.bank_card_product_code) == (
        "https://openapi.alipay.com/gateway.do",
        10.0,
        "TRANS_BANKCARD_NO_PWD",
    )
    assert "PRIVATE KEY" not in repr(config)
    with pytest.raises(AttributeError):
        config.app_id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="2088"):
        config_of(credentials, seller_id="1234")


def test_credentials_carry_what_the_lead_maps(credentials: AlipayCredentials) -> None:
    assert set(credentials.config_env) == {
        "ALIPAY_APP_ID",
        "ALIPAY_SELLER_ID",
        "ALIPAY_GATEWAY",
        "ALIPAY_BANKCARD_PRODUCT_CODE",
    }
    assert set(credentials.secret) == {"app_private_key", "app_cert", "alipay_cert", "alipay_root_cert"}
    assert credentials.config_env["ALIPAY_GATEWAY"] == GATEWAY


def test_the_sdk_accepts_the_generated_certificates(credentials: AlipayCredentials) -> None:
    from alipay import DCAliPay

    chain = credentials.secret["alipay_root_cert"]
    assert chain.count("BEGIN CERTIFICATE") == 2  # an RSA root and an ECDSA one, as in Alipay's file
    with warnings.catch_warnings():  # pyOpenSSL flags the X509 getters the SDK uses
        warnings.simplefilter("ignore", DeprecationWarning)
        sdk_sn = DCAliPay.get_root_cert_sn(chain)
    assert sdk_sn == root_cert_sn(chain)
    assert "_" not in sdk_sn  # the ECDSA root is not counted


def test_a_crlf_root_chain_still_gives_alipays_serial(world: World, credentials: AlipayCredentials) -> None:
    rsa_root, ecdsa_root = credentials.secret["alipay_root_cert"].split("\n\n")
    crlf = (ecdsa_root.strip() + "\n" + rsa_root.strip() + "\n").replace("\n", "\r\n")  # no blank line, CRLF
    world.provider = AlipayProvider(config_of(credentials, alipay_root_cert=crlf))
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0404")
    assert error.value.code == "order_not_found"
    assert world.double.rejections == []


def test_importing_the_adapter_loads_no_sdk() -> None:
    code = (
        "import sys, chalicelib.payments.alipay as a; "
        "print(sorted(m for m in ('alipay', 'OpenSSL', 'Cryptodome', 'requests', 'cryptography') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- creating payments --------------------------------------------------------------------------


def test_h5_payment_is_a_signed_wap_url_alipay_accepts(world: World) -> None:
    intent = world.provider.create_payment(payment("PI0001", 100))
    assert intent.provider_ref == "PI0001"
    url = intent.client_params["url"]
    assert url.startswith(GATEWAY + "?")
    params = dict(parse_qsl(urlsplit(url).query))
    assert params["method"] == "alipay.trade.wap.pay"
    assert (params["notify_url"], params["return_url"]) == (NOTIFY_URL, RETURN_URL)
    assert params["sign_type"] == "RSA2"
    assert params["app_cert_sn"] == world.double.app_cert_sn
    assert params["alipay_root_cert_sn"] == world.double.alipay_root_cert_sn
    stamped = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
    assert abs(stamped - datetime.now(UTC)) < timedelta(minutes=1)  # Beijing time, not the server's
    biz = biz_of(params)
    assert biz == {
        "subject": "麻醉会诊费",
        "out_trade_no": "PI0001",
        "total_amount": "1.00",
        "product_code": "QUICK_WAP_PAY",
        "time_expire": "2031-05-06 12:30:00",
        "quit_url": RETURN_URL,
    }
    assert len(world.rsps.calls) == 0  # no server call
    world.double.pay(intent.client_params)
    assert world.double.rejections == []
    assert world.events[-1].kind == "payment_succeeded"
    assert world.double.deliveries[-1].answer == "success"


def test_app_payment_is_a_signed_order_string(world: World) -> None:
    intent = world.provider.create_payment(payment("PA0001", 2500, scene="app"))
    params = dict(parse_qsl(intent.client_params["order_string"]))
    assert params["method"] == "alipay.trade.app.pay"
    assert biz_of(params)["product_code"] == "QUICK_MSECURITY_PAY"
    assert "return_url" not in params
    world.double.pay(intent.client_params)
    assert (world.events[-1].merchant_ref, world.events[-1].amount_fen) == ("PA0001", 2500)


def test_a_tampered_order_is_refused_by_alipay(world: World) -> None:
    url = world.provider.create_payment(payment("PI0002", 100)).client_params["url"]
    tampered = url.replace(quote_plus('"total_amount":"1.00"'), quote_plus('"total_amount":"0.01"'))
    assert tampered != url
    with pytest.raises(AlipayDoubleError, match="invalid-signature"):
        world.double.pay({"url": tampered})
    assert world.events == []


@pytest.mark.parametrize("scene", ["jsapi_oa", "jsapi_mp"])
def test_alipay_cannot_be_opened_inside_wechat(world: World, scene: str) -> None:
    with pytest.raises(ProviderError) as error:
        world.provider.create_payment(payment(scene=scene))
    assert (error.value.code, error.value.retryable) == ("scene_unsupported", False)


def test_a_zero_amount_is_refused_before_alipay(world: World) -> None:
    with pytest.raises(ProviderError) as error:
        world.provider.create_payment(payment(amount_fen=0))
    assert (error.value.code, error.value.retryable) == ("invalid_amount", False)


@pytest.mark.parametrize(("fen", "yuan"), [(1, "0.01"), (10, "0.10"), (1234567, "12345.67")])
def test_yuan_and_fen_are_exact_at_the_boundary(world: World, fen: int, yuan: str) -> None:
    intent = world.provider.create_payment(payment("PI0003", fen))
    assert biz_of(dict(parse_qsl(urlsplit(intent.client_params["url"]).query)))["total_amount"] == yuan
    world.double.pay(intent.client_params)
    assert world.double.deliveries[-1].params["total_amount"] == yuan
    assert world.events[-1].amount_fen == fen
    assert world.provider.query_payment("PI0003").amount_fen == fen
    status = world.provider.refund(RefundRequest("RF0003", "PI0003", fen, fen, "医生未接单"))
    assert (status.state, status.amount_fen) == ("succeeded", fen)
    assert biz_of(world.double.requests[-1])["refund_amount"] == yuan
    assert world.events[-1].amount_fen == fen
    if fen >= 10:  # Alipay's smallest transfer is 0.10 yuan
        world.provider.payout(PayoutRequest("WD0003", fen, "alipay", ALIPAY_PAYEE, "提现"))
        assert biz_of(world.double.requests[-1])["trans_amount"] == yuan
        assert world.provider.query_payout("WD0003").amount_fen == fen


# --- query and close ----------------------------------------------------------------------------


def test_query_follows_the_trade(world: World) -> None:
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0010")
    assert (error.value.code, error.value.retryable) == ("order_not_found", False)
    intent = world.provider.create_payment(payment("PI0010", 4200))
    cashier = requests.get(intent.client_params["url"], timeout=5)  # the payer's browser opens the wap url
    assert (cashier.status_code, world.double.rejections) == (200, [])
    assert world.provider.query_payment("PI0010").state == "pending"
    world.double.pay(intent.client_params)
    status = world.provider.query_payment("PI0010")
    assert (status.state, status.amount_fen, status.currency) == ("succeeded", 4200, "CNY")
    assert status.transaction_id == world.double.trade("PI0010")["trade_no"]  # type: ignore[index]
    assert status.paid_at is not None and status.paid_at.endswith("+08:00")
    assert world.double.requests[-1]["method"] == "alipay.trade.query"


def test_close(world: World) -> None:
    world.provider.close_payment("PI0020")  # never opened: nothing to close
    intent = world.provider.create_payment(payment("PI0021"))
    world.double.open_page(intent.client_params)
    world.provider.close_payment("PI0021")
    assert world.provider.query_payment("PI0021").state == "closed"
    world.provider.close_payment("PI0021")  # closed already: fine
    paid(world, "PI0022")
    with pytest.raises(ProviderError) as error:
        world.provider.close_payment("PI0022")
    assert (error.value.code, error.value.retryable) == ("order_paid", False)


@pytest.mark.parametrize(("code", "sub_code"), [("40004", "ACQ.SYSTEM_ERROR"), ("20000", "isp.unknow-error")])
def test_system_errors_are_retryable(world: World, code: str, sub_code: str) -> None:
    for method in ("alipay.trade.query", "alipay.trade.close"):
        world.double.plan_error(method, code, sub_code)
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0030")
    assert error.value.retryable
    with pytest.raises(ProviderError) as error:
        world.provider.close_payment("PI0030")
    assert error.value.retryable


# --- refunds ------------------------------------------------------------------------------------


def test_refund_with_fund_change_y_succeeded(world: World) -> None:
    paid(world, "PI0040", 1000)
    status = world.provider.refund(RefundRequest("RF0040", "PI0040", 1000, 1000, "declined"))
    assert (status.state, status.amount_fen) == ("succeeded", 1000)
    sent = biz_of(world.double.requests[-1])
    assert (sent["out_request_no"], sent["refund_amount"], sent["out_trade_no"]) == ("RF0040", "10.00", "PI0040")
    event = world.events[-1]
    assert (event.kind, event.merchant_ref, event.order_ref, event.amount_fen) == (
        "refund_succeeded",
        "RF0040",
        "PI0040",
        1000,
    )


def test_a_repeat_answers_fund_change_n_and_the_query_settles_it(world: World) -> None:
    paid(world, "PI0041", 1000)
    world.provider.refund(RefundRequest("RF0041", "PI0041", 1000, 1000, "declined"))
    again = world.provider.refund(RefundRequest("RF0041", "PI0041", 1000, 1000, "declined"))
    assert again.state == "succeeded"
    assert [r["method"] for r in world.double.requests[-2:]] == [
        "alipay.trade.refund",
        "alipay.trade.fastpay.refund.query",
    ]
    assert biz_of(world.double.requests[-1])["out_request_no"] == "RF0041"
    assert world.provider.query_refund("RF0041", "PI0041").amount_fen == 1000


def test_refund_not_done_yet_is_processing_then_notified(credentials: AlipayCredentials) -> None:
    for world in _world(credentials, synchronous=False, delay=0.2):
        paid(world, "PI0042", 1000)
        world.double.plan_refund("pending")
        status = world.provider.refund(RefundRequest("RF0042", "PI0042", 300, 1000, "policy"))
        assert status.state == "processing"
        world.double.wait_idle()
        assert world.provider.query_refund("RF0042", "PI0042").state == "succeeded"
        assert world.events[-1].kind == "refund_succeeded"


@pytest.mark.parametrize(("code", "sub_code"), [("40004", "ACQ.SYSTEM_ERROR"), ("20000", "isp.unknow-error")])
def test_refund_system_error_is_retryable_and_the_same_number_refunds_once(
    world: World, code: str, sub_code: str
) -> None:
    paid(world, "PI0043", 1000)
    world.double.plan_error("alipay.trade.refund", code, sub_code)
    request = RefundRequest("RF0043", "PI0043", 1000, 1000, "declined")
    with pytest.raises(ProviderError) as error:
        world.provider.refund(request)
    assert error.value.retryable
    with pytest.raises(ProviderError) as error:
        world.provider.query_refund("RF0043", "PI0043")
    assert (error.value.code, error.value.retryable) == ("refund_not_found", False)
    assert world.provider.refund(request).state == "succeeded"
    assert world.provider.refund(request).state == "succeeded"
    assert world.double.trade("PI0043")["refunded_fen"] == 1000  # type: ignore[index]


def test_refund_refusals(world: World) -> None:
    with pytest.raises(ProviderError) as error:
        world.provider.refund(RefundRequest("RF0044", "PI0044", 100, 100, "x"))
    assert (error.value.code, error.value.retryable) == ("order_not_found", False)
    paid(world, "PI0045", 1000)
    world.provider.refund(RefundRequest("RF0045", "PI0045", 500, 1000, "x"))
    with pytest.raises(ProviderError) as error:  # the same number with another amount
        world.provider.refund(RefundRequest("RF0045", "PI0045", 600, 1000, "x"))
    assert (error.value.code, error.value.retryable) == ("ACQ.DISCORDANT_REPEAT_REQUEST", False)
    with pytest.raises(ProviderError) as error:
        world.provider.query_refund("RF0404", "PI0404")
    assert (error.value.code, error.value.retryable) == ("refund_not_found", False)


# --- payouts ------------------------------------------------------------------------------------


def test_payout_to_an_alipay_account(world: World) -> None:
    status = world.provider.payout(PayoutRequest("WD0001", 12345, "alipay", ALIPAY_PAYEE, "提现"))
    assert (status.state, status.amount_fen) == ("succeeded", 12345)
    assert status.bill_id
    biz = biz_of(world.double.requests[-1])
    assert world.double.requests[-1]["method"] == "alipay.fund.trans.uni.transfer"
    assert (biz["out_biz_no"], biz["trans_amount"], biz["product_code"], biz["biz_scene"]) == (
        "WD0001",
        "123.45",
        "TRANS_ACCOUNT_NO_PWD",
        "DIRECT_TRANSFER",
    )
    assert biz["payee_info"] == {"identity": "doctor@example.com", "identity_type": "ALIPAY_LOGON_ID", "name": "张三"}
    again = world.provider.payout(PayoutRequest("WD0001", 12345, "alipay", ALIPAY_PAYEE, "提现"))
    assert (again.state, again.bill_id) == ("succeeded", status.bill_id)  # idempotent by out_biz_no
    assert world.provider.query_payout("WD0001").state == "succeeded"
    assert world.provider.cancel_payout("WD0001").state == "succeeded"  # final: reported as it is
    with pytest.raises(ProviderError) as error:  # the same number with other content: query, never "failed"
        world.provider.payout(PayoutRequest("WD0001", 100, "alipay", ALIPAY_PAYEE, "提现"))
    assert (error.value.code, error.value.retryable) == ("system_error", True)


def test_a_refused_payout_is_a_refusal_named_by_the_sub_code_and_the_query_tells_the_outcome(world: World) -> None:
    world.double.plan_payout("fail")
    with pytest.raises(ProviderError) as refused:
        world.provider.payout(PayoutRequest("WD0002", 1000, "alipay", ALIPAY_PAYEE, "提现"))
    assert (refused.value.code, refused.value.retryable) == ("PAYEE_USER_INFO_ERROR", False)
    queried = world.provider.query_payout("WD0002")
    assert (queried.state, queried.fail_reason) == ("failed", "PAYEE_USER_INFO_ERROR")
    with pytest.raises(ProviderError) as below:
        world.provider.payout(PayoutRequest("WD0003", 1, "alipay", ALIPAY_PAYEE, "提现"))
    assert (below.value.code, below.value.retryable) == ("EXCEED_LIMIT_SM_MIN_AMOUNT", False)


@pytest.mark.parametrize(("code", "sub_code"), [("40004", "SYSTEM_ERROR"), ("20000", "isp.unknow-error")])
def test_payout_system_error_is_retryable(world: World, code: str, sub_code: str) -> None:
    world.double.plan_error("alipay.fund.trans.uni.transfer", code, sub_code)
    request = PayoutRequest("WD0004", 1000, "alipay", ALIPAY_PAYEE, "提现")
    with pytest.raises(ProviderError) as error:
        world.provider.payout(request)
    assert error.value.retryable
    with pytest.raises(ProviderError) as error:
        world.provider.query_payout("WD0004")
    assert (error.value.code, error.value.retryable) == ("payout_not_found", False)
    assert world.provider.payout(request).state == "succeeded"


def test_payout_to_a_bank_card_is_dealing_until_the_bank_answers(world: World, credentials: AlipayCredentials) -> None:
    status = world.provider.payout(PayoutRequest("WD0005", 50000, "bank_card", CARD_PAYEE, "提现"))
    assert status.state == "processing"
    biz = biz_of(world.double.requests[-1])
    assert biz["product_code"] == "TRANS_BANKCARD_NO_PWD"
    assert biz["payee_info"] == {
        "identity": "6225880137654321",
        "identity_type": "BANKCARD_ACCOUNT",
        "name": "李四",
        "bankcard_ext_info": {"inst_name": "招商银行", "account_type": "2"},
    }
    assert world.provider.query_payout("WD0005").state == "processing"
    with pytest.raises(ProviderError) as error:
        world.provider.cancel_payout("WD0005")
    assert (error.value.code, error.value.retryable) == ("payout_not_cancellable", False)
    world.double.finish_payout("WD0005", "success")
    fresh = AlipayProvider(config_of(credentials))  # another container: the product code is not remembered
    queried = fresh.query_payout("WD0005")
    assert (queried.state, queried.amount_fen, queried.bill_id) == ("succeeded", 50000, status.bill_id)


def test_a_bank_card_the_bank_refuses_fails(world: World) -> None:
    world.provider.payout(PayoutRequest("WD0006", 50000, "bank_card", CARD_PAYEE, "提现"))
    world.double.finish_payout("WD0006", "fail")
    status = world.provider.cancel_payout("WD0006")
    assert (status.state, status.fail_reason) == ("failed", "PAYEE_CARD_INFO_ERROR")


def test_payout_refusals_before_alipay(world: World) -> None:
    with pytest.raises(ProviderError) as error:
        world.provider.payout(PayoutRequest("WD0007", 1000, "wechat", {"openid": "o-1"}, "提现"))
    assert (error.value.code, error.value.retryable) == ("payee_kind_unsupported", False)
    with pytest.raises(ProviderError) as error:
        world.provider.query_payout("WD0404")
    assert (error.value.code, error.value.retryable) == ("payout_not_found", False)


# --- transport: timeouts, verification ----------------------------------------------------------

CALLS: dict[str, Callable[[AlipayProvider], object]] = {
    "query_payment": lambda p: p.query_payment("PI0100"),
    "close_payment": lambda p: p.close_payment("PI0100"),
    "refund": lambda p: p.refund(RefundRequest("RF0100", "PI0100", 100, 100, "x")),
    "query_refund": lambda p: p.query_refund("RF0100", "PI0100"),
    "payout_alipay": lambda p: p.payout(PayoutRequest("WD0100", 100, "alipay", ALIPAY_PAYEE, "x")),
    "payout_bank_card": lambda p: p.payout(PayoutRequest("WD0100", 100, "bank_card", CARD_PAYEE, "x")),
    "query_payout": lambda p: p.query_payout("WD0100"),
    "cancel_payout": lambda p: p.cancel_payout("WD0100"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    ("failure", "code"),
    [(requests.exceptions.ReadTimeout(), "timeout"), (requests.exceptions.ConnectionError(), "connection_error")],
)
def test_every_call_times_out_retryably_with_our_timeout(
    credentials: AlipayCredentials, call: str, failure: Exception, code: str
) -> None:
    provider = AlipayProvider(config_of(credentials))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, GATEWAY_URL, body=failure)
        with pytest.raises(ProviderError) as error:
            CALLS[call](provider)
        assert (error.value.code, error.value.retryable) == (code, True)
        assert GATEWAY not in str(error.value)
        assert rsps.calls[0].request.req_kwargs["timeout"] == TIMEOUT


def test_an_answer_that_does_not_verify_is_retryable(world: World) -> None:
    paid(world, "PI0110", 1000)
    genuine = route(world.double)

    def altered(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = genuine(request)
        assert b'"total_amount":"10.00"' in body
        return status, headers, body.replace(b'"total_amount":"10.00"', b'"total_amount":"0.01"')

    world.rsps.remove(responses.POST, GATEWAY_URL)
    world.rsps.add_callback(responses.POST, GATEWAY_URL, callback=altered)
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0110")
    assert (error.value.code, error.value.retryable) == ("response_unverified", True)


def test_an_unsigned_business_answer_is_never_read(credentials: AlipayCredentials) -> None:
    provider = AlipayProvider(config_of(credentials))
    unsigned = {"alipay_fund_trans_uni_transfer_response": {"code": "40004", "sub_code": "PAYEE_NOT_EXIST"}}
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, GATEWAY_URL, json=unsigned)
        with pytest.raises(ProviderError) as error:
            provider.payout(PayoutRequest("WD0130", 1000, "alipay", ALIPAY_PAYEE, "提现"))
    assert (error.value.code, error.value.retryable) == ("response_unverified", True)


def test_a_request_signed_with_another_key_is_refused(world: World, credentials: AlipayCredentials) -> None:
    other = make_credentials(gateway=GATEWAY).secret["app_private_key"]
    world.provider = AlipayProvider(config_of(credentials, app_private_key=other))
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0120")
    assert (error.value.code, error.value.retryable) == ("isv.invalid-signature", False)
    assert world.double.rejections == ["isv.invalid-signature"]


def test_another_app_certificate_is_refused(world: World, credentials: AlipayCredentials) -> None:
    other = make_credentials(gateway=GATEWAY).secret["app_cert"]
    world.provider = AlipayProvider(config_of(credentials, app_cert=other))
    with pytest.raises(ProviderError) as error:
        world.provider.query_payment("PI0121")
    assert error.value.retryable is False
    assert world.double.rejections == ["isv.app-cert-sn-mismatch"]


# --- notifications ------------------------------------------------------------------------------


def test_the_payment_notification_is_accepted(world: World) -> None:
    event = paid(world, "PI0200", 8800)
    delivery = world.double.deliveries[-1]
    assert (delivery.status, delivery.answer) == (200, "success")
    assert world.rejected == []
    assert event.kind == "payment_succeeded"
    assert (event.merchant_ref, event.amount_fen, event.currency) == ("PI0200", 8800, "CNY")
    assert event.provider_ref == delivery.params["trade_no"]
    assert event.event_id == delivery.params["notify_id"]
    assert event.occurred_at is not None and event.occurred_at.endswith("+08:00")
    assert "sign" not in event.raw
    world.double.redeliver(event.event_id)
    assert world.events[-1].event_id == event.event_id  # Alipay's retry: the same notify_id


def test_acknowledgements_are_alipays_literals(world: World) -> None:
    ok, no = world.provider.acknowledge(True), world.provider.acknowledge(False)
    assert (ok.status, ok.body, ok.content_type) == (200, "success", "text/plain")
    assert (no.status, no.body, no.content_type) == (200, "fail", "text/plain")


@pytest.fixture
def genuine(world: World) -> dict[str, str]:
    """The fields of a genuine TRADE_SUCCESS notification, ``sign`` left out."""
    paid(world, "PI0300", 1234567)
    return dict(world.double.deliveries[-1].params)


def reject(world: World, body: bytes) -> str:
    with pytest.raises(NotificationRejected) as rejected:
        world.provider.parse_callback({"Content-Type": "application/x-www-form-urlencoded"}, body, datetime.now(UTC))
    return rejected.value.reason


def signed_over(world: World, params: dict[str, str], content: str, key: str | None = None) -> bytes:
    return urlencode({**params, "sign": world.double.sign(content, key)}).encode()


def test_a_genuine_notification_round_trips(world: World, genuine: dict[str, str]) -> None:
    event = world.provider.parse_callback({}, world.double.signed_notification(genuine), datetime.now(UTC))
    assert event is not None and event.amount_fen == 1234567


def test_forged_altered_total_amount(world: World, genuine: dict[str, str]) -> None:
    fields = form_of(world.double.signed_notification(genuine))
    fields["total_amount"] = "0.01"
    assert reject(world, urlencode(fields).encode()) == "bad_signature"


def test_forged_altered_fund_bill_list(world: World, genuine: dict[str, str]) -> None:
    fields = form_of(world.double.signed_notification(genuine))
    fields["fund_bill_list"] = fields["fund_bill_list"].replace("ALIPAYACCOUNT", "PCREDIT")
    assert reject(world, urlencode(fields).encode()) == "bad_signature"


def test_forged_sign_type_included_in_the_signed_content(world: World, genuine: dict[str, str]) -> None:
    content = "&".join(f"{k}={v}" for k, v in sorted(genuine.items()))
    assert "sign_type=RSA2" in content
    assert reject(world, signed_over(world, genuine, content)) == "bad_signature"


def test_forged_values_parsed_as_lists(world: World, genuine: dict[str, str]) -> None:
    as_lists = parse_qs(urlencode(genuine))  # what Django-style parsing hands a naive verifier
    content = "&".join(f"{k}={v}" for k, v in sorted(as_lists.items()) if k not in ("sign", "sign_type"))
    assert "total_amount=['12345.67']" in content
    assert reject(world, signed_over(world, genuine, content)) == "bad_signature"
    repeated = world.double.signed_notification(genuine) + b"&total_amount=0.01"
    assert reject(world, repeated) == "malformed_body"


def test_forged_url_encoding_left_in(world: World, genuine: dict[str, str]) -> None:
    content = "&".join(f"{k}={quote_plus(v)}" for k, v in sorted(genuine.items()) if k not in ("sign", "sign_type"))
    assert reject(world, signed_over(world, genuine, content)) == "bad_signature"


def test_forged_with_our_own_key(world: World, genuine: dict[str, str], credentials: AlipayCredentials) -> None:
    content = world.double.notification_content(genuine)
    ours = credentials.secret["app_private_key"]
    assert reject(world, signed_over(world, genuine, content, ours)) == "bad_signature"
    # and our own certificate configured where Alipay's belongs: the genuine one does not verify
    world.provider = AlipayProvider(config_of(credentials, alipay_cert=credentials.secret["app_cert"]))
    assert reject(world, world.double.signed_notification(genuine)) == "bad_signature"


@pytest.mark.parametrize("name", ["app_id", "seller_id"])
def test_correctly_signed_for_another_merchant(world: World, genuine: dict[str, str], name: str) -> None:
    other = {**genuine, name: "2088999999999999" if name == "seller_id" else "2021999999999999"}
    assert reject(world, world.double.signed_notification(other)) == "wrong_merchant"


def test_unsigned_or_unreadable_notifications(world: World, genuine: dict[str, str]) -> None:
    assert reject(world, urlencode(genuine).encode()) == "missing_header"
    assert reject(world, b"") == "missing_header"
    fields = form_of(world.double.signed_notification(genuine))
    assert reject(world, urlencode({**fields, "sign_type": "RSA"}).encode()) == "unsupported_algorithm"
    assert reject(world, b"sign=\xff\xfe&total_amount=1") == "malformed_body"
    assert reject(world, urlencode({**fields, "sign": "not base64!"}).encode()) == "bad_signature"


def test_a_partial_refund_notification_is_a_refund_not_a_payment(world: World) -> None:
    paid(world, "PI0400", 1000)
    world.provider.refund(RefundRequest("RF0400", "PI0400", 300, 1000, "policy"))
    delivery = world.double.deliveries[-1]
    assert delivery.params["trade_status"] == "TRADE_SUCCESS"
    assert (delivery.params["out_biz_no"], delivery.params["refund_fee"]) == ("RF0400", "3.00")
    event = world.events[-1]
    assert (event.kind, event.merchant_ref, event.order_ref, event.amount_fen, event.currency) == (
        "refund_succeeded",
        "RF0400",
        "PI0400",
        300,
        "CNY",
    )
    assert event.occurred_at is not None and event.occurred_at.endswith("+08:00")


def test_trade_closed_with_refund_fee_is_a_refund_without_it_a_close(world: World) -> None:
    paid(world, "PI0401", 1000)
    world.provider.refund(RefundRequest("RF0401", "PI0401", 1000, 1000, "declined"))
    full = world.double.deliveries[-1].params
    assert (full["trade_status"], full["refund_fee"]) == ("TRADE_CLOSED", "10.00")
    assert (world.events[-1].kind, world.events[-1].merchant_ref, world.events[-1].amount_fen) == (
        "refund_succeeded",
        "RF0401",
        1000,
    )
    timeout_close = {
        k: v for k, v in full.items() if k not in ("out_biz_no", "refund_fee", "gmt_refund", "gmt_payment")
    }
    event = world.provider.parse_callback({}, world.double.signed_notification(timeout_close), datetime.now(UTC))
    assert event is not None
    assert (event.kind, event.merchant_ref, event.amount_fen) == ("payment_closed", "PI0401", 1000)


def test_wait_buyer_pay_is_acknowledged_and_ignored(world: World, genuine: dict[str, str]) -> None:
    waiting = {**genuine, "trade_status": "WAIT_BUYER_PAY"}
    assert world.provider.parse_callback({}, world.double.signed_notification(waiting), datetime.now(UTC)) is None


def test_a_verified_notification_without_its_fields_is_malformed(world: World, genuine: dict[str, str]) -> None:
    from chalicelib.payments.wechat_events import MalformedEventError

    broken = {**genuine, "total_amount": "12.345"}
    with pytest.raises(MalformedEventError):
        world.provider.parse_callback({}, world.double.signed_notification(broken), datetime.now(UTC))
    refund_without_number = {**genuine, "refund_fee": "1.00"}
    with pytest.raises(MalformedEventError):
        world.provider.parse_callback({}, world.double.signed_notification(refund_without_number), datetime.now(UTC))


def test_replace_keeps_the_config_valid(credentials: AlipayCredentials) -> None:
    config = replace(config_of(credentials), timeout=3.0)
    assert config.timeout == 3.0
    with pytest.raises(ValueError, match="timeout"):
        replace(config, timeout=0)
