"""The sandbox provider's payout side: WeChat's merchant transfers played locally (reference/payments.md §1.7, §6.4).

A transfer bill stays non-final until the sandbox route (:func:`pay`) says what the payee
did; each final state is announced by a MCHTRANSFER.BILL.FINISHED notification that the
production verifier accepts and ``payment_event`` normalises.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.models.sandbox import PAYOUT_SK, SandboxPayment, SandboxPayout, SandboxRefund, sandbox_pk
from chalicelib.payments import sandbox
from chalicelib.payments.provider import PaymentRequest, PayoutRequest
from chalicelib.payments.sandbox import SANDBOX_MCHID, PayInstruction, SandboxProvider, notify_keys, pay
from chalicelib.payments.wechat_notify import verify_notification
from chalicelib.validation import parse
from tests.unit.actors import call, expect
from tests.unit.test_sandbox_provider import NOW, WAIT_S, Recorder, api_error, event_of, provider_error, reason_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from chalice.test import Client

    from chalicelib.payments.wechat_notify import Notification

AMOUNT = 30_000
OPENID = "o-doctor-1"
FINISHED_ZH = "\u5546\u5bb6\u8f6c\u8d26\u5355\u636e\u7ec8\u6001\u901a\u77e5"


@pytest.fixture
def tables(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's tables, and its clock at NOW (so bills' times and background notifications are known)."""
    for model in (SandboxPayment, SandboxRefund, SandboxPayout):
        model._connection = None  # a connection made outside this mock must not leak in
    monkeypatch.setattr(sandbox, "utc_now", lambda: NOW)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def provider(tables: None, recorder: Recorder) -> SandboxProvider:
    return SandboxProvider(deliver=recorder)


def to_wechat(no: str = "WD1", amount: int = AMOUNT, **payee: str) -> PayoutRequest:
    return PayoutRequest(no, amount, "wechat", {"openid": OPENID, "app": "mp", "real_name": "Li Lei", **payee}, "Fee")


def to_alipay(no: str = "WD2", amount: int = AMOUNT, **payee: str) -> PayoutRequest:
    return PayoutRequest(no, amount, "alipay", {"account": "doctor.li@example.com", "real_name": "Li", **payee}, "Fee")


def to_bank(no: str = "WD3", amount: int = AMOUNT, **payee: str) -> PayoutRequest:
    card = {"holder_name": "Li Lei", "bank": "ICBC", "card_number": "6222020200001234567", **payee}
    return PayoutRequest(no, amount, "bank_card", card, "Fee")


def stored(no: str) -> SandboxPayout:
    return SandboxPayout.get(sandbox_pk(no), PAYOUT_SK, consistent_read=True)


def finished(headers: dict[str, str], body: bytes, at: Any = NOW) -> Notification:
    return verify_notification(headers, body, notify_keys(), at.timestamp())


def no_background(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], None]]:
    """Keep the sandbox's background work instead of running it: a test runs it when it wants."""
    kept: list[Callable[[], None]] = []
    monkeypatch.setattr(sandbox, "_in_background", lambda delay, work, what: kept.append(work))
    return kept


# --- payout, query -------------------------------------------------------------------------------


def test_a_wechat_payee_must_confirm_the_transfer(provider: SandboxProvider, recorder: Recorder) -> None:
    # WHEN a transfer to a WeChat payee is sent
    status = provider.payout(to_wechat())

    # THEN it waits for the payee, with what their WeChat needs to confirm it, and nothing is notified
    assert (status.out_bill_no, status.state, status.amount_fen, status.fail_reason) == (
        "WD1",
        "wait_user_confirm",
        AMOUNT,
        None,
    )
    assert status.bill_id and status.bill_id.startswith("sbx_tb_")
    assert status.package_info and status.package_info.startswith("sbx_pkg_")
    transfer = stored("WD1")
    assert (transfer.state, transfer.payee_kind, transfer.payee_openid, transfer.payee_account) == (
        "WAIT_USER_CONFIRM",
        "wechat",
        OPENID,
        None,
    )
    assert (transfer.transfer_bill_no, transfer.package_info, transfer.remark) == (
        status.bill_id,
        status.package_info,
        "Fee",
    )
    assert transfer.event_id is None
    # the sandbox's own records stay out of the Ledger table's indexes
    assert (transfer.owner_key, transfer.work_queue, transfer.due_at) == (None, None, None)
    assert recorder.sent == []


@pytest.mark.parametrize(
    ("request_", "secret", "masked"),
    [
        (to_alipay(), "doctor.li@", "d***@example.com"),
        (to_alipay(account="13800138000"), "13800138000", "138****8000"),
        (to_bank(), "6222020200001234567", "ICBC ****4567"),
    ],
)
def test_alipay_and_bank_card_payees_are_processing_and_kept_masked(
    provider: SandboxProvider, request_: PayoutRequest, secret: str, masked: str
) -> None:
    status = provider.payout(request_)

    assert (status.state, status.package_info) == ("processing", None)
    transfer = stored(request_.out_bill_no)
    assert (transfer.state, transfer.payee_openid, transfer.payee_account) == ("PROCESSING", None, masked)
    assert secret not in str(transfer.attribute_values)


def test_a_transfer_never_completes_on_its_own(provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = no_background(monkeypatch)

    provider.payout(to_wechat())
    provider.payout(to_alipay())

    assert kept == []
    assert (provider.query_payout("WD1").state, provider.query_payout("WD2").state) == (
        "wait_user_confirm",
        "processing",
    )


def test_the_same_number_again_answers_the_same_transfer_and_another_amount_is_refused(
    provider: SandboxProvider,
) -> None:
    # GIVEN a transfer WD1
    first = provider.payout(to_wechat())

    # WHEN it is sent again (a retry) and then with another amount or payee kind
    again = provider.payout(to_wechat())
    other_amount = provider_error(lambda: provider.payout(to_wechat(amount=AMOUNT + 1)))
    other_kind = provider_error(lambda: provider.payout(to_alipay("WD1")))

    # THEN the retry answers the same bill, the others are refused, and the bill is unchanged
    assert again == first
    assert (other_amount.code, other_amount.retryable) == ("out_bill_no_used", False)
    assert (other_kind.code, other_kind.retryable) == ("out_bill_no_used", False)
    transfer = stored("WD1")
    assert (transfer.amount_fen, transfer.transfer_bill_no, transfer.payee_kind) == (AMOUNT, first.bill_id, "wechat")


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (to_wechat(amount=0), "invalid_amount"),
        (to_wechat(amount=-100), "invalid_amount"),
        (to_wechat(openid=""), "invalid_payee"),
        (PayoutRequest("WD1", AMOUNT, "wechat", {"app": "mp"}, "Fee"), "invalid_payee"),
        (to_alipay("WD1", account=""), "invalid_payee"),
        (to_bank("WD1", card_number=""), "invalid_payee"),
    ],
)
def test_transfers_wechat_would_refuse_are_refused_and_not_kept(
    provider: SandboxProvider, request_: PayoutRequest, code: str
) -> None:
    error = provider_error(lambda: provider.payout(request_))

    assert (error.code, error.retryable) == (code, False)
    assert provider_error(lambda: provider.query_payout("WD1")).code == "payout_not_found"


def test_a_one_fen_transfer_is_accepted(provider: SandboxProvider) -> None:
    assert provider.payout(to_wechat(amount=1)).amount_fen == 1


def test_query_of_a_transfer_never_received_is_payout_not_found(provider: SandboxProvider) -> None:
    error = provider_error(lambda: provider.query_payout("WD-NONE"))

    assert (error.code, error.retryable) == ("payout_not_found", False)


# --- pay: the payee decides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "outcome", "state", "reason", "kind", "payout_state"),
    [
        (to_wechat(), "success", "SUCCESS", None, "payout_succeeded", "succeeded"),
        (to_alipay(), "success", "SUCCESS", None, "payout_succeeded", "succeeded"),
        (to_bank(), "success", "SUCCESS", None, "payout_succeeded", "succeeded"),
        (to_wechat(), "fail", "FAIL", "PAYEE_ACCOUNT_ABNORMAL", "payout_failed", "failed"),
        (to_bank(), "fail", "FAIL", "PAYEE_ACCOUNT_ABNORMAL", "payout_failed", "failed"),
        (to_wechat(), "cancel", "CANCELLED", "MERCHANT_REVOCATION", "payout_cancelled", "cancelled"),
        (to_alipay(), "cancel", "CANCELLED", "MERCHANT_REVOCATION", "payout_cancelled", "cancelled"),
        (to_wechat(), "expire", "FAIL", "OVERDUE_CLOSE", "payout_failed", "failed"),
    ],
)
def test_each_outcome_moves_the_transfer_and_sends_a_verifiable_finished_notification(
    provider: SandboxProvider,
    request_: PayoutRequest,
    outcome: str,
    state: str,
    reason: str | None,
    kind: str,
    payout_state: str,
) -> None:
    # GIVEN a transfer waiting for its payee (or its bank)
    no = request_.out_bill_no
    bill_id = provider.payout(request_).bill_id
    sent = Recorder()

    # WHEN the sandbox plays the payee
    report = pay(no, PayInstruction(outcome=outcome), NOW, deliver=sent)  # type: ignore[arg-type]

    # THEN the bill is final, and one MCHTRANSFER.BILL.FINISHED went out that verifies and normalises
    assert report == {
        "order_id": no,
        "state": state,
        "transaction_id": bill_id,
        "deliveries": [{"status": 204, "body": ""}],
        "scheduled": 0,
        "dropped": False,
        "tampered": None,
    }
    [(headers, body)] = sent.sent
    notification = finished(headers, body)
    assert (notification.event_type, notification.original_type, notification.summary) == (
        "MCHTRANSFER.BILL.FINISHED",
        "mch_payment",
        FINISHED_ZH,
    )
    assert notification.resource["state"] == state
    event = event_of(headers, body)
    transfer = stored(no)
    assert (event.channel, event.kind, event.merchant_ref, event.provider_ref) == ("sandbox", kind, no, bill_id)
    assert (event.amount_fen, event.currency, event.reason) == (AMOUNT, "CNY", reason)
    assert (event.event_id, event.occurred_at) == (transfer.event_id, "2026-11-25T16:00:00+08:00")
    status = provider.query_payout(no)
    assert (status.state, status.fail_reason, status.package_info) == (payout_state, reason, None)


def test_the_decrypted_resource_looks_like_wechats(provider: SandboxProvider) -> None:
    # GIVEN a WeChat transfer made at NOW, and an Alipay one
    provider.payout(to_wechat())
    provider.payout(to_alipay())
    succeeded, failed = Recorder(), Recorder()

    # WHEN the payee confirms one an hour later and the other fails
    pay("WD1", PayInstruction(), NOW + timedelta(hours=1), deliver=succeeded)
    pay("WD2", PayInstruction(outcome="fail"), NOW + timedelta(hours=1), deliver=failed)

    # THEN the resources carry WeChat's fields: openid only for a WeChat payee, fail_reason only when failed
    later = NOW + timedelta(hours=1)
    assert finished(*succeeded.sent[0], later).resource == {
        "out_bill_no": "WD1",
        "transfer_bill_no": stored("WD1").transfer_bill_no,
        "state": "SUCCESS",
        "mch_id": SANDBOX_MCHID,
        "transfer_amount": AMOUNT,
        "openid": OPENID,
        "create_time": "2026-11-25T16:00:00+08:00",
        "update_time": "2026-11-25T17:00:00+08:00",
    }
    assert finished(*failed.sent[0], later).resource == {
        "out_bill_no": "WD2",
        "transfer_bill_no": stored("WD2").transfer_bill_no,
        "state": "FAIL",
        "mch_id": SANDBOX_MCHID,
        "transfer_amount": AMOUNT,
        "fail_reason": "PAYEE_ACCOUNT_ABNORMAL",
        "create_time": "2026-11-25T16:00:00+08:00",
        "update_time": "2026-11-25T17:00:00+08:00",
    }


def test_expire_applies_only_to_a_transfer_waiting_for_its_payee(provider: SandboxProvider) -> None:
    # GIVEN an Alipay transfer, PROCESSING (nobody has to confirm it)
    provider.payout(to_alipay())
    sent = Recorder()

    # WHEN it is told to expire THEN 409, and it is still processing with nothing sent
    refused = api_error(lambda: pay("WD2", PayInstruction(outcome="expire"), NOW, deliver=sent))
    assert (refused.status, refused.code, refused.details) == (
        409,
        "sandbox_transfer_not_waiting",
        {"order_id": "WD2", "state": "PROCESSING"},
    )
    assert refused.message_zh
    assert provider.query_payout("WD2").state == "processing"
    assert sent.sent == []


def test_success_again_resends_the_same_notification_and_other_outcomes_are_refused(
    provider: SandboxProvider,
) -> None:
    # GIVEN a transfer the payee confirmed
    provider.payout(to_wechat())
    first, again = Recorder(), Recorder()
    pay("WD1", PayInstruction(), NOW, deliver=first)

    # WHEN "success" is played again (a provider retry), three minutes later
    later = NOW + timedelta(minutes=3)
    pay("WD1", PayInstruction(), later, deliver=again)

    # THEN the same event, freshly signed
    original, resent = event_of(*first.sent[0]), event_of(*again.sent[0], later)
    assert (resent.event_id, resent.provider_ref, resent.occurred_at) == (
        original.event_id,
        original.provider_ref,
        original.occurred_at,
    )
    assert again.sent[0][0]["Wechatpay-Timestamp"] == str(int(later.timestamp()))

    # WHEN anything else is played THEN 409 sandbox_transfer_final, and the bill stays SUCCESS
    for outcome in ("fail", "cancel", "expire"):
        refused = api_error(lambda o=outcome: pay("WD1", PayInstruction(outcome=o), NOW, deliver=Recorder()))
        assert (refused.status, refused.code) == (409, "sandbox_transfer_final")
        assert refused.details == {"order_id": "WD1", "state": "SUCCESS", "fail_reason": None}
    assert (stored("WD1").state, stored("WD1").event_id) == ("SUCCESS", original.event_id)


def test_a_failed_transfer_resends_only_for_the_outcome_that_failed_it(provider: SandboxProvider) -> None:
    # GIVEN a transfer that expired unconfirmed
    provider.payout(to_wechat())
    first, again = Recorder(), Recorder()
    pay("WD1", PayInstruction(outcome="expire"), NOW, deliver=first)

    # WHEN "expire" is played again THEN the same notification; "fail" (another reason) or "success" are refused
    pay("WD1", PayInstruction(outcome="expire"), NOW, deliver=again)
    assert event_of(*again.sent[0]).event_id == event_of(*first.sent[0]).event_id
    for outcome in ("fail", "success", "cancel"):
        refused = api_error(lambda o=outcome: pay("WD1", PayInstruction(outcome=o), NOW, deliver=Recorder()))
        assert (refused.status, refused.code) == (409, "sandbox_transfer_final")
    assert (stored("WD1").state, stored("WD1").fail_reason) == ("FAIL", "OVERDUE_CLOSE")


def test_duplicates_carry_one_event_id_and_concurrent_ones_are_sent_together(provider: SandboxProvider) -> None:
    # GIVEN a receiver that answers only when all three copies are in flight together
    provider.payout(to_wechat())
    together = threading.Barrier(3, timeout=WAIT_S)
    sent = Recorder(expect=3)

    def deliver(headers: dict[str, str], body: bytes) -> tuple[int, str]:
        together.wait()  # sequential sends would break the barrier and answer status 0
        return sent(headers, body)

    # WHEN three concurrent copies are asked for
    report = pay("WD1", PayInstruction(deliveries=3, concurrent=True), NOW, deliver=deliver)

    # THEN all three arrived at once, each signed anew, with one event id
    assert report["deliveries"] == [{"status": 204, "body": ""}] * 3
    assert len({event_of(headers, body).event_id for headers, body in sent.sent}) == 1
    assert len({headers["Wechatpay-Nonce"] for headers, _ in sent.sent}) == 3


def test_a_delayed_notification_is_scheduled_and_arrives_from_a_thread(provider: SandboxProvider) -> None:
    provider.payout(to_wechat())
    sent = Recorder()

    report = pay("WD1", PayInstruction(outcome="fail", delay_seconds=1), NOW, deliver=sent)

    assert (report["deliveries"], report["scheduled"], report["state"]) == ([], 1, "FAIL")
    sent.wait()
    event = event_of(*sent.sent[0], NOW + timedelta(seconds=1))
    assert (event.kind, event.merchant_ref) == ("payout_failed", "WD1")


def test_a_dropped_notification_moves_the_transfer_but_sends_nothing(provider: SandboxProvider) -> None:
    # GIVEN a transfer confirmed with its notification dropped
    provider.payout(to_wechat())
    dropped = Recorder()
    report = pay("WD1", PayInstruction(drop=True, deliveries=3), NOW, deliver=dropped)

    # THEN nothing was sent, but a query finds it succeeded
    assert (report["dropped"], report["deliveries"], report["scheduled"], report["state"]) == (True, [], 0, "SUCCESS")
    assert dropped.sent == []
    assert provider.query_payout("WD1").state == "succeeded"

    # WHEN the provider later retries THEN the notification carries the event id it had all along
    retry = Recorder()
    pay("WD1", PayInstruction(), NOW, deliver=retry)
    assert event_of(*retry.sent[0]).event_id == stored("WD1").event_id


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
    provider.payout(to_wechat())
    sent = Recorder()

    report = pay("WD1", PayInstruction(tamper=tamper), NOW, deliver=sent)  # type: ignore[arg-type]

    assert (report["tampered"], report["state"]) == (tamper, "SUCCESS")
    assert reason_of(*sent.sent[0]) == reason


def test_a_tampered_amount_verifies_but_reports_one_fen_more(provider: SandboxProvider) -> None:
    provider.payout(to_alipay())
    sent = Recorder()

    pay("WD2", PayInstruction(tamper="amount"), NOW, deliver=sent)

    notification = finished(*sent.sent[0])
    event = event_of(*sent.sent[0])
    assert notification.resource["transfer_amount"] == AMOUNT + 1
    assert (event.kind, event.amount_fen) == ("payout_succeeded", AMOUNT + 1)
    assert provider.query_payout("WD2").amount_fen == AMOUNT


def test_a_pay_that_lost_a_race_decides_again_on_the_stored_state(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a transfer already confirmed, but read as WAIT_USER_CONFIRM (a concurrent pay won meanwhile)
    provider.payout(to_wechat())
    stale = stored("WD1")
    pay("WD1", PayInstruction(), NOW, deliver=Recorder())
    reads = iter([stale])
    fresh = sandbox._get_payout
    monkeypatch.setattr(sandbox, "_get_payout", lambda no: next(reads, None) or fresh(no))

    # WHEN "fail" runs on the stale read THEN its conditional write failed and it is refused on what is stored
    refused = api_error(lambda: pay("WD1", PayInstruction(outcome="fail"), NOW, deliver=Recorder()))
    assert (refused.status, refused.code) == (409, "sandbox_transfer_final")
    assert (stored("WD1").state, stored("WD1").fail_reason) == ("SUCCESS", None)


# --- outcomes and instructions that do not fit -------------------------------------------------------


def test_close_does_not_apply_to_a_transfer(provider: SandboxProvider) -> None:
    provider.payout(to_wechat())

    refused = api_error(lambda: pay("WD1", PayInstruction(outcome="close"), NOW, deliver=Recorder()))

    assert (refused.status, refused.code) == (422, "sandbox_outcome_invalid")
    assert refused.details == {
        "order_id": "WD1",
        "outcome": "close",
        "allowed": ["success", "fail", "cancel", "expire"],
    }
    assert provider.query_payout("WD1").state == "wait_user_confirm"


@pytest.mark.parametrize("outcome", ["fail", "cancel", "expire"])
def test_transfer_outcomes_do_not_apply_to_a_payment_order(provider: SandboxProvider, outcome: str) -> None:
    provider.create_payment(
        PaymentRequest("PAY1", AMOUNT, "Invitation", "jsapi_mp", "o-payer-1", NOW + timedelta(minutes=30))
    )
    sent = Recorder()

    refused = api_error(lambda: pay("PAY1", PayInstruction(outcome=outcome), NOW, deliver=sent))  # type: ignore[arg-type]

    assert (refused.status, refused.code) == (422, "sandbox_outcome_invalid")
    assert refused.details["allowed"] == ["success", "close"]
    assert provider.query_payment("PAY1").state == "pending"
    assert sent.sent == []


@pytest.mark.parametrize("instruction", [PayInstruction(late=True), PayInstruction(refund_behaviour="processing")])
def test_payment_only_instructions_are_refused_for_a_transfer(
    provider: SandboxProvider, instruction: PayInstruction
) -> None:
    provider.payout(to_wechat())

    refused = api_error(lambda: pay("WD1", instruction, NOW, deliver=Recorder()))

    assert (refused.status, refused.code) == (422, "sandbox_instruction_invalid")
    assert provider.query_payout("WD1").state == "wait_user_confirm"


def test_the_instruction_takes_the_transfer_outcomes() -> None:
    assert {parse({"outcome": outcome}, PayInstruction).outcome for outcome in ("fail", "cancel", "expire")} == {
        "fail",
        "cancel",
        "expire",
    }


# --- cancel_payout -------------------------------------------------------------------------------------


def test_cancel_payout_cancels_and_notifies_in_the_background(tables: None) -> None:
    # GIVEN a transfer waiting for its payee
    sent = Recorder()
    provider = SandboxProvider(deliver=sent)
    provider.payout(to_wechat())

    # WHEN our side cancels it
    status = provider.cancel_payout("WD1")

    # THEN it is cancelled at once, and its notification follows
    assert (status.state, status.fail_reason, status.package_info) == ("cancelled", "MERCHANT_REVOCATION", None)
    assert provider.query_payout("WD1").state == "cancelled"
    sent.wait()
    event = event_of(*sent.sent[0])
    assert (event.kind, event.merchant_ref, event.reason, event.amount_fen) == (
        "payout_cancelled",
        "WD1",
        "MERCHANT_REVOCATION",
        AMOUNT,
    )
    assert event.event_id == stored("WD1").event_id


def test_cancelling_a_cancelled_transfer_answers_cancelled_and_sends_nothing_more(
    provider: SandboxProvider, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = no_background(monkeypatch)
    provider.payout(to_alipay())

    first = provider.cancel_payout("WD2")
    again = provider.cancel_payout("WD2")
    for work in kept:
        work()

    assert first == again
    assert len(kept) == 1 and len(recorder.sent) == 1
    assert event_of(*recorder.sent[0]).kind == "payout_cancelled"


@pytest.mark.parametrize("outcome", ["success", "fail"])
def test_a_succeeded_or_failed_transfer_cannot_be_cancelled(provider: SandboxProvider, outcome: str) -> None:
    provider.payout(to_wechat())
    pay("WD1", PayInstruction(outcome=outcome), NOW, deliver=Recorder())  # type: ignore[arg-type]

    error = provider_error(lambda: provider.cancel_payout("WD1"))

    assert (error.code, error.retryable) == ("invalid_state", False)
    assert provider.query_payout("WD1").state in ("succeeded", "failed")


def test_cancelling_an_unknown_transfer_is_payout_not_found(provider: SandboxProvider) -> None:
    error = provider_error(lambda: provider.cancel_payout("WD-NONE"))

    assert (error.code, error.retryable) == ("payout_not_found", False)


def test_a_cancel_that_lost_a_race_decides_again_on_the_stored_state(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a transfer the payee confirmed, but read as WAIT_USER_CONFIRM
    kept = no_background(monkeypatch)
    provider.payout(to_wechat())
    stale = stored("WD1")
    pay("WD1", PayInstruction(), NOW, deliver=Recorder())
    reads = iter([stale])
    fresh = sandbox._get_payout
    monkeypatch.setattr(sandbox, "_get_payout", lambda no: next(reads, None) or fresh(no))

    # WHEN it is cancelled THEN the conditional write failed, and the stored SUCCESS refuses the cancel
    error = provider_error(lambda: provider.cancel_payout("WD1"))
    assert error.code == "invalid_state"
    assert stored("WD1").state == "SUCCESS"
    assert kept == []


def test_pay_cancel_on_a_cancelled_transfer_resends_its_notification(
    provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_background(monkeypatch)
    provider.payout(to_wechat())
    provider.cancel_payout("WD1")
    sent = Recorder()

    pay("WD1", PayInstruction(outcome="cancel"), NOW, deliver=sent)

    assert event_of(*sent.sent[0]).event_id == stored("WD1").event_id
    refused = api_error(lambda: pay("WD1", PayInstruction(), NOW, deliver=Recorder()))
    assert (refused.status, refused.code) == (409, "sandbox_transfer_final")


# --- the route ---------------------------------------------------------------------------------------


def test_the_sandbox_route_plays_a_transfers_payee(tables: None, client: Client) -> None:
    # GIVEN a transfer waiting for its payee and an open payment order
    provider = SandboxProvider(deliver=Recorder())
    provider.payout(to_wechat())
    provider.create_payment(
        PaymentRequest("PAY1", AMOUNT, "Invitation", "jsapi_mp", "o-payer-1", NOW + timedelta(minutes=30))
    )

    # WHEN the route is told the payee let it expire (notification dropped: no callback server here)
    body = expect(call(client, "POST", "/v1/sandbox/orders/WD1/pay", body={"outcome": "expire", "drop": True}), 200)

    # THEN the bill failed; and a transfer outcome on the payment order is refused
    assert (body["state"], body["transaction_id"], body["dropped"]) == ("FAIL", stored("WD1").transfer_bill_no, True)
    expect(
        call(client, "POST", "/v1/sandbox/orders/PAY1/pay", body={"outcome": "cancel"}), 422, "sandbox_outcome_invalid"
    )
    assert provider.query_payout("WD1").fail_reason == "OVERDUE_CLOSE"
