"""Payout accounts: where a verified doctor's withdrawals are paid (WeChat change, Alipay, a bank card).

Payouts are real-name only: an Alipay account's ``real_name`` and a card's ``holder_name``
must be the doctor's profile name (the name the back office checked against the
credentials), and WeChat change goes to the doctor's own openid in one of our apps, with
the profile name as the payee's name. The payee's details are stored encrypted; only a
mask is ever shown (``138****5678``, ``a***@example.com``, ``ICBC **** 1234``) and the
card number is never returned or logged. The same account registered again is the same
account (200); a doctor has at most ``MAX_ACCOUNTS``.

A registration is written together with a bump of the doctor's ``revision``, conditional
on the revision it read: two registrations at once cannot both pass the limit, and a
name changed meanwhile cannot slip past the real-name check.

Example
-------
>>> card = BankCardPayee(holder_name="Li Lei", bank="ICBC", card_number="6222 0212 3456 7890 128")
>>> register(doctor, card, now)  # doctest: +SKIP
(201, {'account_id': 'pa…', 'kind': 'bank_card', 'label': 'ICBC **** 0128', 'created_at': '…'})
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts.identifiers import mainland_mobile
from chalicelib.accounts.profiles import load_account
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import Account, PayoutAccount
from chalicelib.security import privacy
from chalicelib.validation import invalid

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.accounts.roles import Principal

MAX_ACCOUNTS = 5
DETAILS_FIELD = "payout_account"
"""The associated data of ``PayoutAccount.details_cipher``."""
SK_PREFIX = "PAYOUT#"
ATTEMPTS = 3
"""Registrations retried when a concurrent change of the doctor's account wins the race."""
EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,185}\.[A-Za-z]{2,24}")
NOT_FOUND = ApiError(404, "payout_account_not_found", "No payout account with this id is yours", "找不到该提现账户")
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class WeChatPayee(msgspec.Struct, tag_field="kind", tag="wechat", forbid_unknown_fields=True):
    """WeChat change of the doctor's own openid in our mini program (``mp``) or official account (``oa``)."""

    app: Literal["mp", "oa"]


class AlipayPayee(msgspec.Struct, tag_field="kind", tag="alipay", forbid_unknown_fields=True):
    """An Alipay login: a mainland mobile number or an e-mail address, with the holder's real name."""

    account: Annotated[str, msgspec.Meta(min_length=5, max_length=254)]
    real_name: Name


class BankCardPayee(msgspec.Struct, tag_field="kind", tag="bank_card", forbid_unknown_fields=True):
    """A debit card in the doctor's name; spaces in the number are allowed (and dropped)."""

    holder_name: Name
    bank: Annotated[str, msgspec.Meta(min_length=2, max_length=40)]
    card_number: Annotated[str, msgspec.Meta(min_length=12, max_length=40)]


PayoutAccountRequest = WeChatPayee | AlipayPayee | BankCardPayee
"""The body of ``POST /v1/me/payout-accounts``, chosen by ``kind``."""
KINDS: dict[type, str] = {WeChatPayee: "wechat", AlipayPayee: "alipay", BankCardPayee: "bank_card"}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number made of digits only.

    >>> luhn_valid("6222021234567890128"), luhn_valid("6222021234567890127")
    (True, False)
    """
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def mask_email(address: str) -> str:
    """``alice@example.com`` → ``a***@example.com``."""
    name, _, domain = address.partition("@")
    return f"{name[:1]}***@{domain}"


def _card_number(raw: str) -> str:
    digits = raw.replace(" ", "")
    if not digits.isascii() or not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise invalid("A card number is 12 to 19 digits (spaces allowed)", "card_number")
    if not luhn_valid(digits):
        raise invalid("Not a valid card number (check digit)", "card_number")
    return digits


def _alipay_account(raw: str) -> tuple[str, str]:
    """The account as Alipay knows it, and its mask."""
    text = raw.strip()
    if "@" in text:
        if not EMAIL.fullmatch(text):
            raise invalid("An Alipay account is a mainland mobile number or an e-mail address", "account")
        address = text.lower()
        return address, mask_email(address)
    number = mainland_mobile(text, "account")
    return number, privacy.mask_phone(number)


def _same_name(given: str, profile_name: str | None) -> bool:
    return profile_name is not None and " ".join(given.split()) == " ".join(profile_name.split())


def _name_mismatch(field: str) -> ApiError:
    return ApiError(
        422,
        "payee_name_mismatch",
        "Payouts go to accounts in your own name: the name must be your profile name",
        "仅支持提现到本人实名账户：姓名须与个人资料中的姓名一致",
        {"field": field},
    )


def _payee(doctor: Account, body: PayoutAccountRequest) -> tuple[str, str, dict[str, str]]:
    """The account's identifier (what makes it the same account), its label and the payee's details."""
    if isinstance(body, WeChatPayee):
        app_id = get_settings().wechat_app_ids.get(body.app, body.app)
        openids = doctor.wechat_openids.as_dict() if doctor.wechat_openids else {}
        openid = openids.get(app_id) or openids.get(body.app)
        if not openid:
            raise ApiError(
                422,
                "wechat_not_linked",
                f"Sign in with WeChat in the {body.app} app first: the payout goes to that WeChat user",
                "请先在该微信应用中登录，以绑定收款微信",
                {"app": body.app},
            )
        if not doctor.name:
            raise _name_mismatch("name")
        payee = {"openid": str(openid), "app": body.app, "real_name": doctor.name}
        return f"{app_id}:{openid}", f"WeChat change ({body.app})", payee
    if isinstance(body, AlipayPayee):
        account, label = _alipay_account(body.account)
        if not _same_name(body.real_name, doctor.name):
            raise _name_mismatch("real_name")
        return account, label, {"account": account, "real_name": " ".join(body.real_name.split())}
    digits = _card_number(body.card_number)
    if not _same_name(body.holder_name, doctor.name):
        raise _name_mismatch("holder_name")
    bank = " ".join(body.bank.split())
    if len(bank) < 2:
        raise invalid("The bank's name is 2 to 40 characters", "bank")
    payee = {"holder_name": " ".join(body.holder_name.split()), "bank": bank, "card_number": digits}
    return digits, f"{bank} **** {digits[-4:]}", payee


def view(account: PayoutAccount) -> dict[str, Any]:
    """What the doctor sees of a payout account: never the full identifier."""
    return {
        "account_id": account.account_id,
        "kind": account.kind,
        "label": account.label,
        "created_at": account.created_at,
    }


def _accounts_of(doctor_id: str) -> list[PayoutAccount]:
    return list(PayoutAccount.query(f"USER#{doctor_id}", PayoutAccount.sk.startswith(SK_PREFIX), consistent_read=True))


def list_own(principal: Principal) -> dict[str, Any]:
    """``GET /v1/me/payout-accounts``: the caller's accounts, newest first."""
    found = sorted(_accounts_of(principal.user_id), key=lambda item: (item.created_at, item.account_id), reverse=True)
    return {"items": [view(item) for item in found], "max_accounts": MAX_ACCOUNTS}


def _require_verified(doctor: Account) -> None:
    if doctor.verification_status != "verified":
        raise ApiError(
            403,
            "verification_required",
            "Only a verified anesthesiologist can add payout accounts",
            "通过资质认证后才能添加提现账户",
            {"verification_status": doctor.verification_status},
        )


def register(principal: Principal, body: PayoutAccountRequest, now: datetime) -> tuple[int, dict[str, Any]]:
    """Add a payout account (201), or answer the same account already added (200)."""
    for _ in range(ATTEMPTS):
        doctor = load_account(principal.user_id)
        identifier, label, payee = _payee(doctor, body)  # what is wrong with the request is said first
        _require_verified(doctor)
        kind = KINDS[type(body)]
        identity = privacy.lookup_hash("payout_account", f"{kind}:{identifier}")
        existing = _accounts_of(principal.user_id)
        for account in existing:
            if account.identity_hash == identity:
                return 200, view(account)
        if len(existing) >= MAX_ACCOUNTS:
            raise ApiError(
                409,
                "payout_accounts_full",
                f"At most {MAX_ACCOUNTS} payout accounts",
                f"最多可添加 {MAX_ACCOUNTS} 个提现账户",
                {"limit": MAX_ACCOUNTS},
            )
        account_id = f"pa{uuid.uuid4().hex[:24]}"
        item = PayoutAccount(f"USER#{principal.user_id}", f"{SK_PREFIX}{account_id}")
        item.account_id, item.kind, item.label = account_id, kind, label
        item.details_cipher = privacy.encrypt(DETAILS_FIELD, json.dumps(payee, ensure_ascii=False))
        item.identity_hash, item.created_at = identity, iso(now)
        batch = Batch()
        batch.put("payout_account", item, condition=PayoutAccount.pk.does_not_exist())
        batch.update(
            "doctor",
            doctor,
            actions=[Account.revision.add(1)],
            condition=(Account.revision == doctor.revision)
            & (Account.verification_status == "verified")
            & (Account.name == doctor.name),
        )
        try:
            batch.commit(PayoutAccount._get_connection().connection)
        except TransactionCancelledError:
            continue  # the account changed (another registration, a new name): read it again
        return 201, view(item)
    raise busy()


def load_payee(doctor_id: str, account_id: str) -> tuple[PayoutAccount, dict[str, str]]:
    """The doctor's payout account ``account_id`` and its payee's details; 404 when it is not theirs."""
    try:
        account = PayoutAccount.get(f"USER#{doctor_id}", f"{SK_PREFIX}{account_id}", consistent_read=True)
    except (DoesNotExist, ValueError):
        raise NOT_FOUND from None
    return account, json.loads(privacy.decrypt(DETAILS_FIELD, account.details_cipher))
