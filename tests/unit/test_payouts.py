"""Payout accounts, withdrawals and the payout settlement (C10), against moto.

The provider is ``FakePayouts``, installed as the ``sandbox`` channel: it keeps the
transfers it accepted, answers queries from them, records every call, and can be told to
answer ``processing``/``wait_user_confirm``, to time out before or after accepting, or to
refuse the payee. Doctors get money with a balanced posting from a provider clearing
account to ``doctor:available``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from chalice.test import Client

from chalicelib.accounts.roles import DOCTOR, PATIENT, Principal
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import deadlines
from chalicelib.ledger import accounts as ledger_accounts
from chalicelib.ledger.journal import Posting, balance, post, transaction
from chalicelib.ledger.wallet import wallet
from chalicelib.models.ledger import PayoutOrder, ProviderSeen
from chalicelib.models.users import Account, PayoutAccount
from chalicelib.observability import logger
from chalicelib.payments.provider import PayoutRequest, PayoutStatus, ProviderError, ProviderEvent
from chalicelib.payments.settlement import seen_key
from chalicelib.payouts import accounts, transfers, withdrawals
from chalicelib.payouts.accounts import AlipayPayee, BankCardPayee, WeChatPayee
from chalicelib.payouts.withdrawals import WithdrawalRequest
from chalicelib.validation import parse
from tests.unit.conftest import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Iterator

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
"""01:00 on 26 November in Shanghai: the withdrawal counts against the 26th."""
NAME = "\u674e\u96f7"  # 李雷
OTHER_NAME = "\u97e9\u6885\u6885"  # 韩梅梅
CARD = "6222 0212 3456 7890 128"
"""A Luhn-valid 19-digit card number, as a person types it."""
CARD_DIGITS = CARD.replace(" ", "")
MP_APP_ID = "wx-sandbox-mp"
LIMIT = 2_000_000
MINIMUM = 1_000


# --- the fake provider ------------------------------------------------------------------------------


@dataclass
class FakePayouts:
    """An in-memory payout provider for channel ``sandbox``.

    ``mode`` is what ``payout`` does: ``processing`` / ``wait_user_confirm`` / ``succeeded``
    (accepts and answers that state), ``timeout`` (never reaches the provider: a retryable
    error), ``lost`` (accepts, then the answer is lost: a retryable error), ``refuse``
    (a non-retryable ``invalid_payee``), ``crash`` (accepts, then our process dies).
    """

    channel: str = "sandbox"
    mode: str = "processing"
    transfers: dict[str, PayoutStatus] = field(default_factory=dict)
    requests: list[PayoutRequest] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    query_error: ProviderError | None = None
    lose_next_answer: bool = False
    """The next accepted transfer's answer is lost on the way back (a retryable error)."""
    package_in_query: bool = True
    """False as on WeChat: a transfer query does not carry ``package_info``."""
    refuse_resends: bool = False
    """A transfer asked again is refused with a code we do not know (the first one goes on)."""
    not_visible_once: bool = False
    """The next query does not see the transfer yet (``payout_not_found``)."""

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        self.calls.append(("payout", request.out_bill_no))
        self.requests.append(request)
        if self.mode == "timeout":
            raise ProviderError("SYSTEM_ERROR", "timed out", retryable=True)
        if self.mode == "refuse":
            raise ProviderError("invalid_payee", "the payee account is not valid", retryable=False)
        existing = self.transfers.get(request.out_bill_no)
        if existing is not None and self.refuse_resends:
            raise ProviderError("invalid_request", "the number is already in use", retryable=False)
        if existing is None:
            state = "processing" if self.mode in ("lost", "crash") else self.mode
            package = f"pkg-{request.out_bill_no}" if state == "wait_user_confirm" else None
            existing = PayoutStatus(
                request.out_bill_no,
                state,
                f"bill-{request.out_bill_no}",
                request.amount_fen,
                package,  # type: ignore[arg-type]
            )
            self.transfers[request.out_bill_no] = existing
        if self.mode == "lost" or self.lose_next_answer:
            self.lose_next_answer = False
            raise ProviderError("SYSTEM_ERROR", "the answer was lost", retryable=True)
        if self.mode == "crash":
            raise RuntimeError("the Lambda died mid-call")
        return existing

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        self.calls.append(("query", out_bill_no))
        if self.query_error is not None:
            raise self.query_error
        if self.not_visible_once:
            self.not_visible_once = False
            raise ProviderError("payout_not_found", "not visible yet", retryable=False)
        if out_bill_no not in self.transfers:
            raise ProviderError("payout_not_found", "no such transfer", retryable=False)
        found = self.transfers[out_bill_no]
        return found if self.package_in_query else dataclasses.replace(found, package_info=None)

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        self.calls.append(("cancel", out_bill_no))
        return self.finish(out_bill_no, "cancelled", "MERCHANT_REVOCATION")

    def finish(self, out_bill_no: str, state: str, reason: str | None = None) -> PayoutStatus:
        """The transfer reaches ``state`` at the provider (the payee confirmed, it expired...)."""
        old = self.transfers[out_bill_no]
        self.transfers[out_bill_no] = PayoutStatus(out_bill_no, state, old.bill_id, old.amount_fen, None, reason)  # type: ignore[arg-type]
        return self.transfers[out_bill_no]

    def payout_calls(self) -> list[str]:
        return [number for kind, number in self.calls if kind == "payout"]


@pytest.fixture
def provider(aws: None) -> Iterator[FakePayouts]:
    from chalicelib.payments.registry import use_provider

    fake = FakePayouts()
    use_provider("sandbox", fake)  # type: ignore[arg-type]
    try:
        yield fake
    finally:
        use_provider("sandbox", None)


# --- people and money ---------------------------------------------------------------------------------


def make_doctor(*, verified: bool = True, name: str | None = NAME, openids: dict[str, str] | None = None) -> Principal:
    """A doctor account as the accounts module stores it (verified unless told otherwise)."""
    user_id = uuid.uuid4().hex
    account = Account(f"USER#{user_id}", "PROFILE")
    account.user_id, account.role, account.revision = user_id, DOCTOR, 3
    account.created_at = account.updated_at = iso(NOW)
    account.name = name
    account.verification_status = "verified" if verified else "pending"
    account.wechat_openids = openids
    account.save()
    return Principal(user_id, DOCTOR)


def fund(doctor: Principal, amount: int) -> None:
    """Money for the doctor: provider clearing → ``doctor:available``."""
    key = uuid.uuid4().hex
    clearing = ledger_accounts.clearing_account("sandbox", key, get_settings().ledger_shards)
    post(
        Posting(
            f"seed:{key}",
            "test_funding",
            {clearing: -amount, ledger_accounts.doctor_available(doctor.user_id): amount},
            "test:seed",
        ),
        NOW,
    )


def card_account(doctor: Principal) -> str:
    status, body = accounts.register(doctor, BankCardPayee(NAME, "ICBC", CARD), NOW)
    assert status == 201, body
    return body["account_id"]


def withdraw(doctor: Principal, account_id: str, amount: int, now: datetime = NOW) -> dict[str, Any]:
    status, body = withdrawals.request(doctor, WithdrawalRequest(amount, account_id), now)
    assert status == 201
    return body


def funded_withdrawal(amount: int = 50_000, balance_fen: int = 100_000) -> tuple[Principal, str]:
    """A doctor holding ``balance_fen`` who asked to withdraw ``amount``; the withdrawal's number."""
    doctor = make_doctor()
    fund(doctor, balance_fen)
    return doctor, withdraw(doctor, card_account(doctor), amount)["withdrawal_id"]


def order(number: str) -> PayoutOrder:
    found = withdrawals.get(number)
    assert found is not None, number
    return found


def step(number: str, now: datetime) -> str:
    """One run of the job for this payout (as ``settle_payouts`` would, when it is due)."""
    return transfers.follow_up(order(number), now)


def due_numbers(now: datetime) -> list[str]:
    return [item.out_bill_no for item in transfers.due(now, 1000)]


def expect_error(status: int, code: str, call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args)
    assert (raised.value.status, raised.value.code) == (status, code), raised.value.details
    return raised.value


# --- payout accounts: each kind ---------------------------------------------------------------------


def test_wechat_account_pays_the_doctors_own_openid_under_the_profile_name(aws: None) -> None:
    doctor = make_doctor(openids={MP_APP_ID: "o-mp-doctor"})

    status, body = accounts.register(doctor, WeChatPayee("mp"), NOW)

    assert status == 201
    assert body == {
        "account_id": body["account_id"],
        "kind": "wechat",
        "label": "WeChat change (mp)",
        "created_at": iso(NOW),
    }
    _, payee = accounts.load_payee(doctor.user_id, body["account_id"])
    assert payee == {"openid": "o-mp-doctor", "app": "mp", "real_name": NAME}


def test_wechat_account_needs_a_wechat_sign_in_in_that_app(aws: None) -> None:
    linked_to_mp_only = make_doctor(openids={MP_APP_ID: "o-mp-doctor"})
    never_linked = make_doctor()

    error = expect_error(422, "wechat_not_linked", accounts.register, linked_to_mp_only, WeChatPayee("oa"), NOW)
    expect_error(422, "wechat_not_linked", accounts.register, never_linked, WeChatPayee("mp"), NOW)

    assert error.details == {"app": "oa"}
    assert accounts.list_own(linked_to_mp_only)["items"] == []


@pytest.mark.parametrize(
    ("typed", "stored", "label"),
    [
        ("13812345678", "13812345678", "138****5678"),
        ("+86 138 1234 5678", "13812345678", "138****5678"),
        ("Alice.Wang@Example.com", "alice.wang@example.com", "a***@example.com"),
    ],
)
def test_alipay_account_is_a_mobile_or_an_email_shown_masked(aws: None, typed: str, stored: str, label: str) -> None:
    doctor = make_doctor()

    status, body = accounts.register(doctor, AlipayPayee(typed, NAME), NOW)

    assert (status, body["kind"], body["label"]) == (201, "alipay", label)
    assert accounts.load_payee(doctor.user_id, body["account_id"])[1] == {"account": stored, "real_name": NAME}


@pytest.mark.parametrize("typed", ["12345678901", "not-an-account", "alice@", "@example.com", "alice@example"])
def test_alipay_account_that_is_neither_mobile_nor_email_is_refused(aws: None, typed: str) -> None:
    error = expect_error(422, "validation_failed", accounts.register, make_doctor(), AlipayPayee(typed, NAME), NOW)

    assert error.details["field"] == "account"


def test_bank_card_is_stored_encrypted_and_shown_as_bank_and_last_four(aws: None) -> None:
    doctor = make_doctor()

    status, body = accounts.register(doctor, BankCardPayee(NAME, " ICBC ", CARD), NOW)

    assert (status, body["label"]) == (201, "ICBC **** 0128")
    assert CARD_DIGITS not in json.dumps(body)
    stored = PayoutAccount.get(f"USER#{doctor.user_id}", f"PAYOUT#{body['account_id']}")
    assert CARD_DIGITS not in json.dumps(stored.attribute_values, default=str)
    assert CARD_DIGITS[-8:] not in stored.details_cipher
    assert accounts.load_payee(doctor.user_id, body["account_id"])[1] == {
        "holder_name": NAME,
        "bank": "ICBC",
        "card_number": CARD_DIGITS,
    }


@pytest.mark.parametrize(
    "number",
    [
        "6222021234567890127",  # check digit wrong
        "62220212345678901280",  # 20 digits
        "12345678903",  # 11 digits
        "6222-0212-3456-7890-128",  # dashes are not spaces
        "\uff16222021234567890128",  # a full-width digit
    ],
)
def test_bank_card_number_must_be_12_to_19_digits_and_luhn_valid(aws: None, number: str) -> None:
    error = expect_error(
        422, "validation_failed", accounts.register, make_doctor(), BankCardPayee(NAME, "ICBC", number), NOW
    )

    assert error.details == {"field": "card_number"}


def test_luhn_check() -> None:
    assert accounts.luhn_valid("4111111111111111")
    assert accounts.luhn_valid("6222021234567890128")
    assert not accounts.luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (AlipayPayee("13812345678", OTHER_NAME), "real_name"),
        (BankCardPayee(OTHER_NAME, "ICBC", CARD), "holder_name"),
    ],
)
def test_payouts_go_only_to_accounts_in_the_doctors_own_name(aws: None, body: Any, field: str) -> None:
    doctor = make_doctor()

    error = expect_error(422, "payee_name_mismatch", accounts.register, doctor, body, NOW)

    assert error.details == {"field": field}
    assert accounts.list_own(doctor)["items"] == []


def test_a_doctor_without_verification_cannot_add_a_payout_account(aws: None) -> None:
    doctor = make_doctor(verified=False)

    expect_error(403, "verification_required", accounts.register, doctor, BankCardPayee(NAME, "ICBC", CARD), NOW)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "wechat", "app": "mp", "openid": "o-someone-else"}, "openid"),
        ({"kind": "bank_card", "holder_name": NAME, "bank": "ICBC", "card_number": CARD, "cvv": "123"}, "cvv"),
        ({"kind": "alipay", "account": "13812345678"}, "real_name"),
        ({"kind": "paypal", "account": "x"}, "kind"),
        ({"kind": "bank_card", "holder_name": NAME, "bank": "I", "card_number": CARD}, "bank"),
        ({"kind": "wechat", "app": "web"}, "app"),
    ],
)
def test_the_body_is_refused_field_by_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse(body, accounts.PayoutAccountRequest)  # type: ignore[arg-type]

    assert (raised.value.status, raised.value.code, raised.value.details.get("field")) == (
        422,
        "validation_failed",
        field,
    )


def test_the_same_account_again_is_the_same_account(aws: None) -> None:
    doctor = make_doctor()
    first = card_account(doctor)

    status, again = accounts.register(doctor, BankCardPayee(NAME, "ICBC", CARD_DIGITS), NOW + timedelta(hours=1))

    assert (status, again["account_id"]) == (200, first)
    assert [item["account_id"] for item in accounts.list_own(doctor)["items"]] == [first]


def test_another_doctors_same_card_is_their_own_account(aws: None) -> None:
    one, other = make_doctor(), make_doctor()

    first, second = card_account(one), card_account(other)

    assert first != second
    expect_error(404, "payout_account_not_found", accounts.load_payee, other.user_id, first)


def test_at_most_five_payout_accounts(aws: None) -> None:
    doctor = make_doctor(openids={MP_APP_ID: "o-mp"})
    for body in (
        WeChatPayee("mp"),
        AlipayPayee("13812345678", NAME),
        AlipayPayee("li@example.com", NAME),
        BankCardPayee(NAME, "ICBC", CARD),
        BankCardPayee(NAME, "CMB", "4111 1111 1111 1111"),
    ):
        assert accounts.register(doctor, body, NOW)[0] == 201

    error = expect_error(409, "payout_accounts_full", accounts.register, doctor, AlipayPayee("13912345678", NAME), NOW)

    assert error.details == {"limit": 5}
    assert accounts.register(doctor, BankCardPayee(NAME, "ICBC", CARD), NOW)[0] == 200  # an existing one still answers
    listed = accounts.list_own(doctor)
    assert len(listed["items"]) == 5
    assert listed["max_accounts"] == 5


def test_registration_bumps_the_doctors_revision_so_a_concurrent_change_is_seen(aws: None) -> None:
    doctor = make_doctor()
    before = Account.get(f"USER#{doctor.user_id}", "PROFILE").revision

    card_account(doctor)

    assert Account.get(f"USER#{doctor.user_id}", "PROFILE").revision == before + 1


# --- withdrawals ----------------------------------------------------------------------------------------


def test_a_withdrawal_moves_available_to_payout_and_waits_for_the_job(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 100_000)
    account_id = card_account(doctor)

    body = withdraw(doctor, account_id, 30_000)

    number = body["withdrawal_id"]
    assert re.fullmatch(r"WD[0-9a-f]{28}", number)
    assert body == {
        "withdrawal_id": number,
        "amount_fen": 30_000,
        "status": "requested",
        "payee": {"kind": "bank_card", "label": "ICBC **** 0128"},
        "channel": "sandbox",
        "package_info": None,
        "fail_reason": None,
        "fail_message": None,
        "fail_message_zh": None,
        "created_at": iso(NOW),
        "settled_at": None,
    }
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 70_000,
        "payout_fen": 30_000,
        "owed_fen": 0,
    }
    stored = order(number)
    assert (stored.requested_on, stored.attempts, stored.work_queue, stored.due_at) == (
        "2026-11-26",
        0,
        "WORK#payout",
        iso(NOW),
    )
    assert CARD_DIGITS not in stored.payee_cipher
    assert withdrawals.payee_of(stored)["card_number"] == CARD_DIGITS
    assert due_numbers(NOW) == [number]
    assert withdrawals.withdrawn_on(doctor.user_id, "2026-11-26") == 30_000
    assert transaction(f"withdrawal:{number}") == {
        "tx_id": f"withdrawal:{number}",
        "kind": "withdrawal",
        "reference": f"withdrawal:{number}",
        "entries": {
            ledger_accounts.doctor_available(doctor.user_id): -30_000,
            ledger_accounts.doctor_payout(doctor.user_id): 30_000,
        },
    }


def test_a_withdrawal_below_the_minimum_is_refused(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 100_000)
    account_id = card_account(doctor)

    for amount in (MINIMUM - 1, 0, -5_000):
        error = expect_error(
            422, "amount_below_minimum", withdrawals.request, doctor, WithdrawalRequest(amount, account_id), NOW
        )
        assert error.details == {"minimum_fen": MINIMUM}
    withdraw(doctor, account_id, MINIMUM)


def test_an_absurd_amount_is_refused_by_the_schema() -> None:
    error = expect_error(
        422, "validation_failed", parse, {"amount_fen": 10**10 + 1, "payout_account_id": "pa1"}, WithdrawalRequest
    )
    assert error.details["field"] == "amount_fen"
    for bad in ({"amount_fen": 1000.5, "payout_account_id": "pa1"}, {"amount_fen": True, "payout_account_id": "pa1"}):
        expect_error(422, "validation_failed", parse, bad, WithdrawalRequest)


def test_a_withdrawal_to_someone_elses_account_is_not_found(aws: None) -> None:
    doctor, other = make_doctor(), make_doctor()
    fund(doctor, 100_000)
    others_account = card_account(other)

    expect_error(
        404, "payout_account_not_found", withdrawals.request, doctor, WithdrawalRequest(5_000, others_account), NOW
    )
    expect_error(
        404, "payout_account_not_found", withdrawals.request, doctor, WithdrawalRequest(5_000, "pa-nothing"), NOW
    )
    assert balance(ledger_accounts.doctor_available(doctor.user_id)) == 100_000


def test_a_withdrawal_over_the_balance_writes_nothing(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 20_000)
    account_id = card_account(doctor)

    expect_error(409, "insufficient_funds", withdrawals.request, doctor, WithdrawalRequest(20_001, account_id), NOW)

    assert wallet(doctor.user_id)["available_fen"] == 20_000
    assert wallet(doctor.user_id)["payout_fen"] == 0
    assert withdrawals.list_own(doctor, 20, None)["items"] == []
    assert withdrawals.withdrawn_on(doctor.user_id, "2026-11-26") == 0
    assert due_numbers(NOW + timedelta(days=1)) == []
    withdraw(doctor, account_id, 20_000)  # all of it is fine


def test_the_daily_limit_counts_each_shanghai_day(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 5_000_000)
    account_id = card_account(doctor)
    withdraw(doctor, account_id, 1_500_000)

    error = expect_error(
        409, "daily_limit_reached", withdrawals.request, doctor, WithdrawalRequest(500_001, account_id), NOW
    )

    assert error.details == {"limit_fen": LIMIT, "remaining_fen": 500_000}
    assert wallet(doctor.user_id)["available_fen"] == 3_500_000  # nothing half written
    assert len(withdrawals.list_own(doctor, 20, None)["items"]) == 1
    withdraw(doctor, account_id, 500_000)  # exactly up to the limit
    expect_error(409, "daily_limit_reached", withdrawals.request, doctor, WithdrawalRequest(MINIMUM, account_id), NOW)
    # 16:00 UTC is midnight in Shanghai: a new day, a new limit
    next_day = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
    assert withdraw(doctor, account_id, 1_000_000, next_day)["status"] == "requested"
    assert withdrawals.withdrawn_on(doctor.user_id, "2026-11-27") == 1_000_000


def test_one_withdrawal_over_the_daily_limit_is_refused_at_once(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 5_000_000)
    account_id = card_account(doctor)

    error = expect_error(
        409, "daily_limit_reached", withdrawals.request, doctor, WithdrawalRequest(LIMIT + 1, account_id), NOW
    )

    assert error.details == {"limit_fen": LIMIT, "remaining_fen": LIMIT}
    assert wallet(doctor.user_id)["payout_fen"] == 0


def test_withdrawals_are_listed_newest_first_page_by_page(aws: None) -> None:
    doctor = make_doctor()
    fund(doctor, 100_000)
    account_id = card_account(doctor)
    numbers = [
        withdraw(doctor, account_id, 1_000 * (i + 1), NOW + timedelta(minutes=i))["withdrawal_id"] for i in range(3)
    ]

    first = withdrawals.list_own(doctor, 2, None)
    second = withdrawals.list_own(doctor, 2, first["next_cursor"])

    assert [item["withdrawal_id"] for item in first["items"]] == numbers[::-1][:2]
    assert [item["withdrawal_id"] for item in second["items"]] == numbers[:1]
    assert second["next_cursor"] is None
    assert withdrawals.list_own(make_doctor(), 20, None)["items"] == []
    expect_error(400, "invalid_cursor", withdrawals.list_own, make_doctor(), 2, first["next_cursor"])


# --- the settlement: follow_up and apply_status ------------------------------------------------------


def test_a_payout_is_sent_once_followed_and_settled(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)

    # WHEN the job sends it: the provider accepts it (processing)
    assert step(number, NOW) == "waiting"

    sent = order(number)
    assert (sent.status, sent.attempts, sent.provider_ref, sent.due_at) == (
        "processing",
        1,
        f"bill-{number}",
        iso(NOW + timedelta(seconds=60)),
    )
    request = provider.requests[0]
    assert (request.out_bill_no, request.amount_fen, request.payee_kind) == (number, 50_000, "bank_card")
    assert dict(request.payee) == {"holder_name": NAME, "bank": "ICBC", "card_number": CARD_DIGITS}
    assert due_numbers(NOW + timedelta(seconds=59)) == []

    # AND a check while it is still processing backs off
    assert step(number, NOW + timedelta(seconds=60)) == "waiting"
    assert order(number).due_at == iso(NOW + timedelta(seconds=60 + 300))

    # WHEN the provider has paid it
    provider.finish(number, "succeeded")
    assert step(number, NOW + timedelta(seconds=360)) == "applied"

    # THEN the money has left: doctor:payout → provider, the order is final and off the queue
    settled = order(number)
    assert (settled.status, settled.settled_at, settled.work_queue) == (
        "succeeded",
        iso(NOW + timedelta(seconds=360)),
        None,
    )
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 50_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    clearing = ledger_accounts.clearing_account("sandbox", number, get_settings().ledger_shards)
    assert transaction(f"payout:{number}")["entries"] == {  # type: ignore[index]
        ledger_accounts.doctor_payout(doctor.user_id): -50_000,
        clearing: 50_000,
    }
    assert provider.payout_calls() == [number]
    assert due_numbers(NOW + timedelta(days=30)) == []
    assert step(number, NOW + timedelta(days=1)) == "duplicate"  # a stale queue copy does nothing
    assert withdrawals.list_own(doctor, 20, None)["items"][0]["status"] == "succeeded"


def test_a_failed_payout_returns_the_money_visibly(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)
    provider.finish(number, "failed", "PAYEE_ACCOUNT_ABNORMAL")

    assert step(number, NOW + timedelta(minutes=1)) == "applied"

    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 100_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    shown = withdrawals.list_own(doctor, 20, None)["items"][0]
    assert (shown["status"], shown["fail_reason"]) == ("failed", "PAYEE_ACCOUNT_ABNORMAL")
    assert shown["fail_message"] == (
        "The receiving account cannot take payments. The money is back in your available balance."
    )
    assert "\u6b3e\u9879\u5df2\u9000\u56de" in shown["fail_message_zh"]  # 款项已退回
    assert transaction(f"payout_return:{number}")["entries"] == {  # type: ignore[index]
        ledger_accounts.doctor_payout(doctor.user_id): -50_000,
        ledger_accounts.doctor_available(doctor.user_id): 50_000,
    }
    assert transaction(f"payout:{number}") is None
    # AND the day's limit comes back with the money
    assert withdrawals.withdrawn_on(doctor.user_id, "2026-11-26") == 0
    assert due_numbers(NOW + timedelta(days=30)) == []


def test_an_unknown_outcome_is_queried_and_never_sent_twice(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal()
    # GIVEN the provider accepts the transfer but its answer is lost (a timeout)
    provider.mode = "lost"

    assert step(number, NOW) == "retry"

    lost = order(number)
    assert (lost.status, lost.attempts, lost.checks) == ("requested", 1, 1)
    assert lost.last_error == "SYSTEM_ERROR: the answer was lost"
    assert due_numbers(NOW + timedelta(seconds=59)) == []
    assert due_numbers(NOW + timedelta(seconds=60)) == [number]

    # WHEN the job comes back: it asks first, finds the transfer, and follows it
    provider.mode = "processing"
    assert step(number, NOW + timedelta(seconds=60)) == "waiting"

    assert provider.calls == [("payout", number), ("query", number)]
    assert order(number).status == "processing"
    assert wallet(doctor.user_id)["payout_fen"] == 50_000


def test_a_call_that_never_reached_the_provider_is_sent_again_with_the_same_number(provider: FakePayouts) -> None:
    _, number = funded_withdrawal()
    provider.mode = "timeout"
    assert step(number, NOW) == "retry"
    provider.mode = "processing"

    # WHEN the job comes back: the query says not found, so it sends again, same number
    assert step(number, NOW + timedelta(minutes=1)) == "waiting"

    assert provider.calls == [("payout", number), ("query", number), ("payout", number)]
    assert [request.out_bill_no for request in provider.requests] == [number, number]
    assert provider.requests[0] == provider.requests[1]
    assert (order(number).status, order(number).attempts) == ("processing", 2)


def test_a_crash_after_the_call_leads_to_a_query_not_a_resend(provider: FakePayouts) -> None:
    _, number = funded_withdrawal()
    provider.mode = "crash"
    with pytest.raises(RuntimeError):
        step(number, NOW)
    # the claim was written before the call: the order says a call was made
    assert (order(number).status, order(number).attempts) == ("requested", 1)
    provider.mode = "processing"

    assert step(number, NOW + timedelta(minutes=1)) == "waiting"

    assert provider.payout_calls() == [number]
    assert provider.calls[-1] == ("query", number)


def test_two_runs_holding_the_same_stale_copy_send_once(provider: FakePayouts) -> None:
    _, number = funded_withdrawal()
    stale = order(number)
    assert transfers.follow_up(stale, NOW) == "waiting"

    # the second run's copy still says requested, attempts 0: follow_up reads the order again
    assert transfers.follow_up(stale, NOW) == "waiting"
    assert transfers._send(stale, NOW) == "duplicate"  # and the claim itself is conditional

    assert provider.payout_calls() == [number]


def test_a_transfer_waiting_for_the_doctor_shows_package_info_then_expires_and_returns(provider: FakePayouts) -> None:
    doctor = make_doctor(openids={MP_APP_ID: "o-mp-doctor"})
    fund(doctor, 100_000)
    _, account = accounts.register(doctor, WeChatPayee("mp"), NOW)
    number = withdraw(doctor, account["account_id"], 40_000)["withdrawal_id"]
    provider.mode = "wait_user_confirm"

    assert step(number, NOW) == "waiting"

    shown = withdrawals.list_own(doctor, 20, None)["items"][0]
    assert (shown["status"], shown["package_info"]) == ("wait_user_confirm", f"pkg-{number}")
    assert dict(provider.requests[0].payee) == {"openid": "o-mp-doctor", "app": "mp", "real_name": NAME}

    # WHEN 24 hours pass without the doctor confirming: WeChat fails the transfer
    provider.finish(number, "failed", "OVERDUE_CLOSE")
    assert step(number, NOW + timedelta(hours=25)) == "applied"

    shown = withdrawals.list_own(doctor, 20, None)["items"][0]
    assert (shown["status"], shown["package_info"], shown["fail_reason"]) == ("failed", None, "OVERDUE_CLOSE")
    assert shown["fail_message"].startswith("It was not confirmed in WeChat within 24 hours.")
    assert wallet(doctor.user_id)["available_fen"] == 100_000


def test_a_lost_answer_to_a_transfer_waiting_for_the_doctor_is_asked_again_for_its_package(
    provider: FakePayouts,
) -> None:
    # GIVEN a WeChat transfer accepted by the provider whose answer (with package_info) was lost
    doctor = make_doctor(openids={MP_APP_ID: "o-mp-doctor"})
    fund(doctor, 100_000)
    _, account = accounts.register(doctor, WeChatPayee("mp"), NOW)
    number = withdraw(doctor, account["account_id"], 40_000)["withdrawal_id"]
    provider.mode, provider.lose_next_answer, provider.package_in_query = "wait_user_confirm", True, False
    assert step(number, NOW) == "retry"

    # WHEN the job queries it: waiting for the doctor, but a query carries no package
    assert step(number, NOW + timedelta(minutes=1)) == "waiting"

    # THEN the same bill was asked again (same number, paid once) and the doctor can confirm it
    assert provider.calls == [("payout", number), ("query", number), ("payout", number)]
    assert len(provider.transfers) == 1
    shown = withdrawals.list_own(doctor, 20, None)["items"][0]
    assert (shown["status"], shown["package_info"]) == ("wait_user_confirm", f"pkg-{number}")


def test_a_refused_resend_of_a_transfer_that_exists_does_not_give_the_money_back(provider: FakePayouts) -> None:
    # GIVEN a transfer accepted whose answer was lost, not yet visible to the next query
    doctor, number = funded_withdrawal(50_000)
    provider.lose_next_answer = True
    assert step(number, NOW) == "retry"
    provider.not_visible_once, provider.refuse_resends = True, True

    # WHEN the job resends it with the same number and the provider refuses the resend
    assert step(number, NOW + timedelta(minutes=1)) == "waiting"

    # THEN the refusal was checked with a query: the first transfer goes on, the money stays out
    assert provider.calls == [("payout", number), ("query", number), ("payout", number), ("query", number)]
    assert order(number).status == "processing"
    assert wallet(doctor.user_id)["payout_fen"] == 50_000


def test_a_refused_payee_fails_the_payout_and_returns_the_money(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    provider.mode = "refuse"

    assert step(number, NOW) == "applied"

    failed = order(number)
    assert (failed.status, failed.fail_reason, failed.work_queue) == ("failed", "invalid_payee", None)
    assert wallet(doctor.user_id)["available_fen"] == 100_000
    assert withdrawals.view(failed)["fail_message"].startswith("The payout account was refused")


def test_a_provider_that_keeps_failing_is_retried_and_flagged_after_five_checks(provider: FakePayouts) -> None:
    _, number = funded_withdrawal()
    step(number, NOW)  # accepted: processing, one check done
    provider.query_error = ProviderError("SYSTEM_ERROR", "busy", retryable=True)
    flags = []
    for _ in range(4):
        assert step(number, datetime.fromisoformat(order(number).due_at)) == "retry"
        flags.append(order(number).needs_attention)

    flagged = order(number)
    assert flags == [False, False, False, True]
    assert (flagged.status, flagged.checks, flagged.last_error) == ("processing", 5, "SYSTEM_ERROR: busy")
    assert datetime.fromisoformat(flagged.due_at) > NOW  # still due: the job keeps trying
    assert [item.out_bill_no for item in transfers.needing_attention()] == [number]

    # WHEN the provider answers again
    provider.query_error = None
    provider.finish(number, "succeeded")
    assert step(number, datetime.fromisoformat(flagged.due_at)) == "applied"

    # THEN the flag is gone with the order from the queue
    assert order(number).needs_attention is False
    assert transfers.needing_attention() == []


def test_backoff_grows_to_hourly_checks(provider: FakePayouts) -> None:
    _, number = funded_withdrawal()
    step(number, NOW)
    waits = []
    for _ in range(6):
        due_at = datetime.fromisoformat(order(number).due_at)
        assert step(number, due_at) == "waiting"
        waits.append(int((datetime.fromisoformat(order(number).due_at) - due_at).total_seconds()))

    assert waits == [300, 600, 1800, 3600, 3600, 3600]


def test_final_states_never_change(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)
    provider.finish(number, "succeeded")
    assert step(number, NOW + timedelta(minutes=1)) == "applied"
    settled = order(number)

    # a repeat, a stale state and a contradicting final state change nothing
    assert transfers.apply_status(settled, PayoutStatus(number, "succeeded", None, 50_000), NOW) == "duplicate"
    assert transfers.apply_status(settled, PayoutStatus(number, "processing"), NOW) == "ignored"
    assert transfers.apply_status(settled, PayoutStatus(number, "failed", None, 50_000, None, "X"), NOW) == "ignored"
    # even from a copy read before it settled
    assert transfers.apply_status(settled, PayoutStatus(number, "cancelled"), NOW) == "ignored"

    assert order(number).status == "succeeded"
    assert wallet(doctor.user_id) == {
        "currency": "CNY",
        "pending_fen": 0,
        "available_fen": 50_000,
        "payout_fen": 0,
        "owed_fen": 0,
    }
    assert transaction(f"payout_return:{number}") is None


def test_a_stale_copy_cannot_apply_a_second_final_state(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)
    open_copy = order(number)
    assert transfers.apply_status(open_copy, PayoutStatus(number, "failed", None, 50_000, None, "X"), NOW) == "applied"

    outcome = transfers.apply_status(open_copy, PayoutStatus(number, "succeeded", None, 50_000), NOW)

    assert outcome == "ignored"
    assert transfers.apply_status(open_copy, PayoutStatus(number, "failed"), NOW) == "duplicate"
    assert order(number).status == "failed"
    assert transaction(f"payout:{number}") is None
    assert wallet(doctor.user_id)["available_fen"] == 100_000


def test_a_reported_amount_that_differs_is_never_applied(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)

    outcome = transfers.apply_status(order(number), PayoutStatus(number, "succeeded", "b", 50_001), NOW)

    assert outcome == "amount_mismatch"
    assert order(number).status == "processing"
    assert wallet(doctor.user_id)["payout_fen"] == 50_000


def event(
    number: str, kind: str, amount: int | None = 50_000, event_id: str | None = None, reason: str | None = None
) -> ProviderEvent:
    return ProviderEvent(
        "sandbox",
        event_id or uuid.uuid4().hex,
        kind,
        number,
        f"bill-{number}",
        amount,
        None,
        None,
        reason=reason,  # type: ignore[arg-type]
    )


def test_a_callback_settles_once_and_its_event_is_kept(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)
    finished = event(number, "payout_succeeded", event_id="EV-1")

    assert transfers.apply_event(finished, NOW) == "applied"
    assert transfers.apply_event(finished, NOW) == "duplicate"
    assert transfers.apply_event(event(number, "payout_succeeded"), NOW) == "duplicate"
    assert transfers.apply_event(event(number, "payout_failed"), NOW) == "ignored"

    assert ProviderSeen.get(seen_key("sandbox", "event", "EV-1"), "SEEN").order_id == number
    assert wallet(doctor.user_id)["payout_fen"] == 0
    provider.finish(number, "succeeded")
    assert step(number, NOW) == "duplicate"  # the job, later, finds nothing to do


def test_a_cancelled_callback_returns_the_money_with_its_reason(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)

    assert transfers.apply_event(event(number, "payout_cancelled", reason="MERCHANT_REVOCATION"), NOW) == "applied"

    shown = withdrawals.view(order(number))
    assert (shown["status"], shown["fail_reason"]) == ("cancelled", "MERCHANT_REVOCATION")
    assert wallet(doctor.user_id)["available_fen"] == 100_000


def test_callbacks_for_other_orders_or_amounts_are_not_applied(provider: FakePayouts) -> None:
    doctor, number = funded_withdrawal(50_000)
    step(number, NOW)

    assert transfers.apply_event(event("WD" + "0" * 28, "payout_succeeded"), NOW) == "unknown_order"
    assert transfers.apply_event(event(number, "payout_succeeded", amount=5), NOW) == "amount_mismatch"
    assert transfers.apply_event(event(number, "payment_succeeded"), NOW) == "unknown_order"

    assert order(number).status == "processing"
    assert wallet(doctor.user_id)["payout_fen"] == 50_000


def test_the_job_runs_every_due_payout_and_reports(provider: FakePayouts) -> None:
    _, first = funded_withdrawal()
    _, second = funded_withdrawal()
    provider.mode = "succeeded"

    report = deadlines.settle_payouts(NOW)

    assert report == {"due": 2, "done": 2, "skipped": 0, "failed": 0}
    assert {order(first).status, order(second).status} == {"succeeded"}
    assert deadlines.settle_payouts(NOW + timedelta(days=1)) == {"due": 0, "done": 0, "skipped": 0, "failed": 0}


def test_no_card_number_or_openid_reaches_the_logs(
    provider: FakePayouts,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logger.registered_handler, "stream", sys.stdout)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=logger.name)
    doctor = make_doctor(openids={MP_APP_ID: "o-secret-openid"})
    fund(doctor, 100_000)
    card = card_account(doctor)
    wechat = accounts.register(doctor, WeChatPayee("mp"), NOW)[1]["account_id"]
    numbers = [withdraw(doctor, account, 10_000)["withdrawal_id"] for account in (card, wechat)]
    provider.mode = "lost"
    for number in numbers:
        step(number, NOW)
    provider.mode = "refuse"
    for number in numbers:
        provider.transfers.pop(number)
        step(number, NOW + timedelta(minutes=1))
    step(numbers[0], NOW + timedelta(minutes=2))

    captured = capsys.readouterr()
    ours = [line for line in captured.out.splitlines() if line.startswith("{") and '"level"' in line]
    our_records = [r for r in caplog.records if r.name == logger.name]
    every_record = "\n".join(f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in caplog.records)
    assert any("payout call failed" in line for line in ours)  # the logs were captured
    assert any(r.getMessage() == "payout refused" for r in our_records)
    # the card number is nowhere (it is stored encrypted); the openid not in our own lines
    for text in (captured.out, captured.err, every_record):
        assert CARD_DIGITS not in text
        assert CARD_DIGITS[-8:] not in text
    own = "\n".join(ours) + "\n".join(json.dumps(r.__dict__, default=str) for r in our_records)
    assert "o-secret-openid" not in own


# --- the routes -------------------------------------------------------------------------------------------


@functools.cache
def _app_with_payouts() -> Any:
    """The app if it serves the payout routes; else a test app with the same middleware and blueprint."""
    from app import app

    if "/v1/withdrawals" in app.routes:
        return app
    from chalice import Chalice

    from chalicelib.handlers import payouts
    from chalicelib.handlers.middleware import request_envelope

    local = Chalice(app_name="anes-payouts-test")
    local.register_middleware(request_envelope, "http")
    local.register_blueprint(payouts.bp)
    return local


@pytest.fixture
def api(provider: FakePayouts) -> Iterator[Client]:
    with Client(_app_with_payouts(), stage_name="local", project_dir=str(PROJECT_DIR)) as client:
        yield client


def call(client: Client, method: str, path: str, who: Principal, body: Any = None, **headers: str) -> Any:
    from chalicelib.accounts.tokens import issue_access_token

    token, _ = issue_access_token(who, datetime.now(UTC))
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", **headers}
    payload = json.dumps(body).encode() if body is not None else b""
    return client.http.request(method, path, headers=sent, body=payload)


def test_the_routes_add_accounts_and_withdraw_once_per_idempotency_key(api: Client) -> None:
    doctor = make_doctor()
    fund(doctor, 100_000)

    added = call(
        api,
        "POST",
        "/v1/me/payout-accounts",
        doctor,
        {"kind": "bank_card", "holder_name": NAME, "bank": "ICBC", "card_number": CARD},
    )
    again = call(
        api,
        "POST",
        "/v1/me/payout-accounts",
        doctor,
        {"kind": "bank_card", "holder_name": NAME, "bank": "ICBC", "card_number": CARD_DIGITS},
    )
    listed = call(api, "GET", "/v1/me/payout-accounts", doctor)

    assert (added.status_code, again.status_code) == (201, 200)
    assert again.json_body == added.json_body
    assert listed.json_body == {"items": [added.json_body], "max_accounts": 5}
    assert CARD_DIGITS not in added.body.decode() + listed.body.decode()

    body = {"amount_fen": 20_000, "payout_account_id": added.json_body["account_id"]}
    first = call(api, "POST", "/v1/withdrawals", doctor, body, **{"Idempotency-Key": "withdraw-0001"})
    replay = call(api, "POST", "/v1/withdrawals", doctor, body, **{"Idempotency-Key": "withdraw-0001"})
    listed = call(api, "GET", "/v1/withdrawals?limit=5", doctor)

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json_body == first.json_body
    assert [item["withdrawal_id"] for item in listed.json_body["items"]] == [first.json_body["withdrawal_id"]]
    assert wallet(doctor.user_id)["available_fen"] == 80_000


def test_the_routes_refuse_what_they_must(api: Client) -> None:
    doctor, patient = make_doctor(), Principal(uuid.uuid4().hex, PATIENT)

    unknown_field = call(
        api, "POST", "/v1/me/payout-accounts", doctor, {"kind": "wechat", "app": "mp", "openid": "o-x"}
    )
    bad_limit = call(api, "GET", "/v1/withdrawals?limit=0", doctor)
    not_a_doctor = call(api, "GET", "/v1/withdrawals", patient)
    not_a_doctor_either = call(api, "POST", "/v1/me/payout-accounts", patient, {"kind": "wechat", "app": "mp"})
    short = call(api, "POST", "/v1/withdrawals", doctor, {"amount_fen": 999, "payout_account_id": "pa1"})

    assert (unknown_field.status_code, unknown_field.json_body["error"]["details"]) == (422, {"field": "openid"})
    assert (bad_limit.status_code, bad_limit.json_body["error"]["code"]) == (422, "validation_failed")
    assert (not_a_doctor.status_code, not_a_doctor.json_body["error"]["code"]) == (403, "forbidden")
    assert not_a_doctor_either.status_code == 403
    assert (short.status_code, short.json_body["error"]["code"]) == (422, "amount_below_minimum")


# --- the payer's openid ------------------------------------------------------------------------------------


def test_a_jsapi_payment_is_opened_for_the_payers_own_openid(aws: None) -> None:
    from chalicelib.models.ledger import PaymentOrder
    from chalicelib.payments import orders
    from chalicelib.payments.provider import PaymentIntent, PaymentRequest

    # GIVEN a patient who signed in with WeChat in the mini program (stored as signin stores it)
    payer = make_doctor(openids={MP_APP_ID: "o-payer-mp"})
    seen: list[PaymentRequest] = []

    class Recorder:
        def create_payment(self, request: PaymentRequest) -> PaymentIntent:
            seen.append(request)
            return PaymentIntent("prepay-1", {"package": "prepay_id=prepay-1"})

    order = PaymentOrder("ORDER#PI-test", "ORDER")
    order.order_id, order.scene, order.amount_fen = "PI-test", "jsapi_mp", 50_000
    order.expires_at = iso(NOW + timedelta(minutes=30))

    # WHEN the order is opened at the provider for the mini program
    orders.create_at_provider(Recorder(), order, "invitation", payer, NOW)

    # THEN WeChat Pay is told who pays (JSAPI requires the payer's openid of that app)
    assert seen[0].payer_openid == "o-payer-mp"
