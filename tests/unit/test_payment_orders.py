"""What the front end needs to pay: given again when the provider no longer takes the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.clock import iso
from chalicelib.models.ledger import PaymentOrder
from chalicelib.payments import orders

NOW = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)


def _order(channel: str, scene: str, given_seconds_ago: float | None, status: str = "pending") -> PaymentOrder:
    order = PaymentOrder(f"ORDER#PI-{channel}", "ORDER")
    order.channel, order.scene, order.status = channel, scene, status
    if given_seconds_ago is not None:
        order.client_params = {"url": "https://example.invalid/pay"}
        order.client_params_at = iso(NOW - timedelta(seconds=given_seconds_ago))
    return order


@pytest.mark.parametrize(
    ("channel", "scene", "age", "wanted"),
    [
        ("wechat", "jsapi_mp", None, True),  # never opened at the provider
        ("wechat", "jsapi_mp", 1_500, False),  # a prepay_id lives two hours: longer than the window
        ("wechat", "h5", 200, False),
        ("wechat", "h5", 240, True),  # an h5_url lives five minutes
        ("alipay", "h5", 599, False),
        ("alipay", "app", 600, True),  # a signed order is refused once its timestamp is old
        ("unionpay", "h5", 1_700, False),  # the form is fixed for the order (txnTime, payTimeout)
    ],
)
def test_parameters_are_given_again_only_when_the_provider_no_longer_takes_them(
    channel: str, scene: str, age: float | None, wanted: bool
) -> None:
    assert orders.needs_client_params(_order(channel, scene, age), NOW) is wanted


def test_a_final_order_is_never_opened_again() -> None:
    assert orders.needs_client_params(_order("wechat", "h5", None, status="closed"), NOW) is False
    assert orders.needs_client_params(_order("wechat", "h5", 3_600, status="succeeded"), NOW) is False


def test_parameters_given_before_they_were_dated_count_as_old() -> None:
    order = _order("wechat", "h5", 10)
    order.client_params_at = None
    assert orders.needs_client_params(order, NOW) is True


def test_opening_again_repeats_the_first_payer_address_and_dates_the_new_parameters(aws: None) -> None:
    from chalicelib.payments.provider import PaymentIntent, PaymentRequest

    # GIVEN a WeChat H5 order opened from one address
    seen: list[PaymentRequest] = []

    class Recorder:
        def create_payment(self, request: PaymentRequest) -> PaymentIntent:
            seen.append(request)
            return PaymentIntent(f"prepay-{len(seen)}", {"h5_url": f"https://wx.example/{len(seen)}"})

    order = _order("wechat", "h5", None)
    order.order_id, order.purpose, order.reference, order.payer_id = "PI-wechat", "invitation", "inv-1", "u-1"
    order.amount_fen, order.expires_at, order.created_at, order.updated_at = 50_000, iso(NOW), iso(NOW), iso(NOW)
    order.save()
    token = orders.PAYER_IP.set("10.0.0.1")
    try:
        first = orders.create_at_provider(Recorder(), order, "invitation", None, NOW)  # type: ignore[arg-type]

        # WHEN the payer asks again from another address once the h5_url is stale
        orders.PAYER_IP.set("10.0.0.2")
        later = NOW + timedelta(minutes=5)
        assert orders.needs_client_params(first, later)
        second = orders.create_at_provider(Recorder(), first, "invitation", None, later)  # type: ignore[arg-type]
    finally:
        orders.PAYER_IP.reset(token)

    # THEN the provider sees the same request (same address) and the new parameters are dated
    assert [request.payer_ip for request in seen] == ["10.0.0.1", "10.0.0.1"]
    assert (second.client_params.as_dict(), second.client_params_at) == ({"h5_url": "https://wx.example/2"}, iso(later))


def test_an_order_paid_while_the_provider_was_opening_it_is_answered_as_stored(aws: None) -> None:
    from chalicelib.payments.provider import PaymentIntent, PaymentRequest

    # GIVEN a pending order as the request read it, and the same order paid meanwhile (its callback won)
    read = _order("alipay", "h5", None)
    read.order_id, read.purpose, read.reference, read.payer_id = "PI-alipay", "invitation", "inv-1", "u-1"
    read.amount_fen, read.expires_at, read.created_at, read.updated_at = 50_000, iso(NOW), iso(NOW), iso(NOW)
    read.save()
    PaymentOrder.get("ORDER#PI-alipay", "ORDER").update(actions=[PaymentOrder.status.set("succeeded")])

    class Provider:
        def create_payment(self, request: PaymentRequest) -> PaymentIntent:
            return PaymentIntent("trade-1", {"url": "https://alipay.example/pay"})

    # WHEN the provider's parameters come back
    answered = orders.create_at_provider(Provider(), read, "invitation", None, NOW)  # type: ignore[arg-type]

    # THEN the order is answered as stored: paid, without parameters to pay again
    assert (answered.status, answered.client_params) == ("succeeded", None)


@pytest.mark.parametrize(
    ("channel", "scene", "openid", "app_appid", "code"),
    [
        ("alipay", "jsapi_mp", None, "", "scene_unsupported"),  # Alipay cannot be opened inside WeChat
        ("unionpay", "jsapi_oa", None, "", "scene_unsupported"),
        ("wechat", "app", None, "", "scene_unsupported"),  # no app registered with WeChat Pay
        ("wechat", "jsapi_mp", None, "", "payer_openid_required"),  # never signed in with WeChat there
        ("wechat", "jsapi_mp", "o-mp", "", None),
        ("wechat", "app", None, "wx-app", None),
        ("alipay", "h5", None, "", None),
        ("sandbox", "jsapi_mp", None, "", None),  # the sandbox plays any payer
    ],
)
def test_what_a_channel_cannot_take_is_refused_before_any_order_is_stored(
    monkeypatch: pytest.MonkeyPatch, channel: str, scene: str, openid: str | None, app_appid: str, code: str | None
) -> None:
    from chalicelib.config import load_settings
    from chalicelib.errors import ApiError
    from tests.unit.test_config import env

    settings = load_settings(
        env(WECHATPAY_MCHID="1900000001", WECHATPAY_MERCHANT_SERIAL="5157F0", WECHATPAY_PUBLIC_KEY_ID="PUB_KEY_ID_1")
        | ({"WECHATPAY_APP_APPID": app_appid} if app_appid else {})
    )
    monkeypatch.setattr(orders, "get_settings", lambda: settings)
    monkeypatch.setattr(orders, "_payer_openid", lambda principal, scene: openid)

    if code is None:
        orders.check_payable(None, channel, scene)  # type: ignore[arg-type]
        return
    with pytest.raises(ApiError) as refused:
        orders.check_payable(None, channel, scene)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.code, refused.value.details) == (
        422,
        code,
        {"channel": channel, "scene": scene},
    )
