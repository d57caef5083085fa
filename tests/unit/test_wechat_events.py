"""Verified WeChat Pay notifications as provider-neutral events: sign, verify, normalise."""

from __future__ import annotations

import os
from typing import Any

import pytest

from chalicelib.payments.wechat_events import MalformedEventError, payment_event
from chalicelib.payments.wechat_notify import (
    Notification,
    NotifyKeys,
    generate_sandbox_keys,
    sign_notification,
    verify_notification,
)

NOW = 1_795_000_000
SERIAL = "PUB_KEY_ID_SANDBOX0001"


def transaction(trade_state: str = "SUCCESS", total: Any = 50_000) -> dict[str, Any]:
    return {
        "mchid": "1900000001",
        "appid": "wx-sandbox-mp",
        "out_trade_no": "PAY-1",
        "transaction_id": "4200000001",
        "trade_state": trade_state,
        "success_time": "2026-11-25T16:00:00+08:00",
        "amount": {"total": total, "payer_total": total, "currency": "CNY"},
    }


def refund(status: str = "SUCCESS") -> dict[str, Any]:
    return {
        "out_trade_no": "PAY-1",
        "transaction_id": "4200000001",
        "out_refund_no": "RF-1",
        "refund_id": "5030000001",
        "refund_status": status,
        "success_time": "2026-11-25T17:00:00+08:00",
        "amount": {"total": 50_000, "refund": 50_000, "payer_total": 50_000, "payer_refund": 50_000},
    }


def notification(event_type: str, resource: dict[str, Any]) -> Notification:
    return Notification("ev-1", event_type, "encrypt-resource", "summary", "2026-11-25T16:00:01+08:00", resource)


def test_a_signed_payment_callback_becomes_a_payment_succeeded_event() -> None:
    # GIVEN the sandbox's keys and a payment notification signed as WeChat signs it
    private_pem, public_pem = generate_sandbox_keys()
    api_key = os.urandom(32)
    event = {"id": "ev-7", "create_time": "2026-11-25T16:00:01+08:00", "event_type": "TRANSACTION.SUCCESS"}
    event["summary"] = "ok"
    headers, body = sign_notification(
        event, transaction(), private_key_pem=private_pem, serial=SERIAL, api_v3_key=api_key, timestamp=NOW, nonce="n1"
    )

    # WHEN it is verified and normalised
    verified = verify_notification(headers, body, NotifyKeys(api_key, {SERIAL: public_pem}), now=NOW)
    found = payment_event("sandbox", verified)

    # THEN it names our order, the provider's transaction and the amount in fen
    assert found is not None
    assert (found.kind, found.event_id, found.merchant_ref, found.provider_ref) == (
        "payment_succeeded",
        "ev-7",
        "PAY-1",
        "4200000001",
    )
    assert (found.amount_fen, found.currency, found.channel) == (50_000, "CNY", "sandbox")


@pytest.mark.parametrize(("state", "kind"), [("SUCCESS", "payment_succeeded"), ("CLOSED", "payment_closed")])
def test_payment_states_we_act_on(state: str, kind: str) -> None:
    found = payment_event("wechat", notification("TRANSACTION.SUCCESS", transaction(state)))

    assert found is not None and found.kind == kind


@pytest.mark.parametrize("state", ["NOTPAY", "USERPAYING", "REFUND", "PAYERROR", None])
def test_payment_states_we_do_not_act_on_are_none(state: str | None) -> None:
    assert payment_event("wechat", notification("TRANSACTION.SUCCESS", transaction(str(state)))) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [("SUCCESS", "refund_succeeded"), ("ABNORMAL", "refund_failed"), ("CLOSED", "refund_closed")],
)
def test_refund_states(status: str, kind: str) -> None:
    found = payment_event("wechat", notification("REFUND.SUCCESS", refund(status)))

    assert found is not None
    assert (found.kind, found.merchant_ref, found.order_ref, found.amount_fen) == (kind, "RF-1", "PAY-1", 50_000)


def test_a_refund_still_processing_is_none() -> None:
    assert payment_event("wechat", notification("REFUND.SUCCESS", refund("PROCESSING"))) is None


def test_other_event_types_are_none() -> None:
    assert payment_event("wechat", notification("PAYSCORE.USER_OPEN_SERVICE", transaction())) is None


@pytest.mark.parametrize(
    "resource",
    [
        {**transaction(), "out_trade_no": None},
        {**transaction(), "amount": None},
        transaction(total="50000"),
        transaction(total=True),
        transaction(total=500.0),
    ],
)
def test_a_payment_without_our_number_or_an_integer_amount_is_malformed(resource: dict[str, Any]) -> None:
    with pytest.raises(MalformedEventError):
        payment_event("wechat", notification("TRANSACTION.SUCCESS", resource))
