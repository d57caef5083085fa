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


# --- merchant transfers (MCHTRANSFER.BILL.FINISHED) ------------------------------------------------


def transfer(state: str = "SUCCESS", **changes: Any) -> dict[str, Any]:
    return {
        "out_bill_no": "WD1",
        "transfer_bill_no": "1330000071100999991182020050700019480001",
        "state": state,
        "mch_id": "1900000001",
        "transfer_amount": 30_000,
        "openid": "o-doctor-1",
        "create_time": "2026-11-25T16:00:00+08:00",
        "update_time": "2026-11-25T17:00:00+08:00",
        **changes,
    }


def test_a_signed_transfer_callback_becomes_a_payout_succeeded_event() -> None:
    # GIVEN a MCHTRANSFER.BILL.FINISHED notification signed as WeChat signs it (original_type mch_payment)
    private_pem, public_pem = generate_sandbox_keys()
    api_key = os.urandom(32)
    event = {"id": "ev-8", "create_time": "2026-11-25T17:00:02+08:00", "event_type": "MCHTRANSFER.BILL.FINISHED"}
    headers, body = sign_notification(
        event,
        transfer(),
        private_key_pem=private_pem,
        serial=SERIAL,
        api_v3_key=api_key,
        timestamp=NOW,
        nonce="n2",
        associated_data="mch_payment",
    )

    # WHEN it is verified and normalised
    verified = verify_notification(headers, body, NotifyKeys(api_key, {SERIAL: public_pem}), now=NOW)
    found = payment_event("wechat", verified)

    # THEN it names our bill, WeChat's transfer bill and the amount in fen
    assert verified.original_type == "mch_payment"
    assert found is not None
    assert (found.kind, found.event_id, found.merchant_ref, found.provider_ref) == (
        "payout_succeeded",
        "ev-8",
        "WD1",
        "1330000071100999991182020050700019480001",
    )
    assert (found.amount_fen, found.currency, found.reason, found.order_ref) == (30_000, "CNY", None, None)
    assert found.occurred_at == "2026-11-25T17:00:00+08:00"  # the bill's update_time, not the notification's


@pytest.mark.parametrize(
    ("state", "fail_reason", "kind"),
    [
        ("SUCCESS", None, "payout_succeeded"),
        ("FAIL", "PAYEE_ACCOUNT_ABNORMAL", "payout_failed"),
        ("FAIL", "OVERDUE_CLOSE", "payout_failed"),
        ("CANCELLED", "MERCHANT_REVOCATION", "payout_cancelled"),
    ],
)
def test_final_transfer_states(state: str, fail_reason: str | None, kind: str) -> None:
    resource = transfer(state, fail_reason=fail_reason) if fail_reason else transfer(state)

    found = payment_event("sandbox", notification("MCHTRANSFER.BILL.FINISHED", resource))

    assert found is not None
    assert (found.kind, found.merchant_ref, found.amount_fen, found.reason) == (kind, "WD1", 30_000, fail_reason)


def test_a_failed_transfer_without_a_reason_has_none() -> None:
    found = payment_event("wechat", notification("MCHTRANSFER.BILL.FINISHED", transfer("FAIL")))

    assert found is not None and (found.kind, found.reason) == ("payout_failed", None)


def test_the_occurrence_falls_back_to_the_notification_time() -> None:
    resource = transfer()
    del resource["update_time"]

    found = payment_event("wechat", notification("MCHTRANSFER.BILL.FINISHED", resource))

    assert found is not None and found.occurred_at == "2026-11-25T16:00:01+08:00"


@pytest.mark.parametrize(
    "state", ["ACCEPTED", "PROCESSING", "WAIT_USER_CONFIRM", "TRANSFERING", "CANCELING", "REFUND", None]
)
def test_transfer_states_that_are_not_final_are_none(state: str | None) -> None:
    assert payment_event("wechat", notification("MCHTRANSFER.BILL.FINISHED", transfer(str(state)))) is None


@pytest.mark.parametrize(
    "resource",
    [
        {**transfer(), "out_bill_no": None},
        {key: value for key, value in transfer().items() if key != "out_bill_no"},
        {**transfer(), "transfer_bill_no": ""},
        {key: value for key, value in transfer().items() if key != "transfer_amount"},
        transfer(transfer_amount="30000"),
        transfer(transfer_amount=True),
        transfer(transfer_amount=300.0),
    ],
)
def test_a_final_transfer_without_our_number_its_bill_or_an_integer_amount_is_malformed(
    resource: dict[str, Any],
) -> None:
    with pytest.raises(MalformedEventError):
        payment_event("wechat", notification("MCHTRANSFER.BILL.FINISHED", resource))
