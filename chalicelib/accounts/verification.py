"""Verification (M-b): doctors and hospitals submit credentials; admins approve or reject.

A submission is stored encrypted and puts the account in the sparse ``review_queue``
index (oldest first). A decision leaves the queue, is recorded with who and when, and —
for an approved doctor — adds the discovery keys, so only verified doctors are ever
listed or invitable.

Example
-------
>>> submit(doctor, Credentials(practising_certificate_no="110110000012345", ...), utc_now())  # doctest: +SKIP
{'status': 'pending', ...}
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.accounts.identifiers import resident_id_is_valid, uscc_is_valid
from chalicelib.accounts.profiles import load_account, verification_view
from chalicelib.accounts.roles import DOCTOR, HOSPITAL, Principal
from chalicelib.clock import iso
from chalicelib.doctors.ranking import discovery_keys
from chalicelib.doctors.vocabulary import TITLES
from chalicelib.errors import ApiError
from chalicelib.models.users import Account, UsersTable, VerificationDecision
from chalicelib.pagination import decode_cursor, encode_cursor, read_page
from chalicelib.security import privacy
from chalicelib.validation import invalid

if TYPE_CHECKING:
    from datetime import datetime

QUEUE = "PENDING"
CERTIFICATE = re.compile(r"^[0-9A-Za-z]{8,32}$")
LICENCE = re.compile(r"^[0-9A-Za-z-]{8,40}$")
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    """What a doctor (the first three) or a hospital (the last two) submits for review."""

    practising_certificate_no: Code | None = None
    qualification_certificate_no: Code | None = None
    id_number: Code | None = None
    institution_licence_no: Code | None = None
    unified_social_credit_code: Code | None = None


REQUIRED = {
    DOCTOR: ("practising_certificate_no", "qualification_certificate_no", "id_number"),
    HOSPITAL: ("institution_licence_no", "unified_social_credit_code"),
}
PROFILE_NEEDED = {
    DOCTOR: ("name", "hospital_id", "title", "invitation_fee", "consultation_fee"),
    HOSPITAL: ("hospital_id", "contact_name", "contact_phone_cipher"),
}


def _checked(role: str, credentials: Credentials) -> dict[str, str]:
    """The role's credentials, normalised; 422 naming a missing, foreign or malformed one."""
    given = {name: getattr(credentials, name) for name in credentials.__struct_fields__}
    for name, value in given.items():
        if value is not None and name not in REQUIRED[role]:
            raise ApiError(
                422, "field_not_allowed", f"A {role} does not submit {name}", "该角色无需提交此项", {"fields": [name]}
            )
    values = {name: (given[name] or "").strip().upper() for name in REQUIRED[role]}
    for name, value in values.items():
        if not value:
            raise invalid(f"{name} is required", name)
    if role == DOCTOR:
        for name in ("practising_certificate_no", "qualification_certificate_no"):
            if not CERTIFICATE.match(values[name]):
                raise invalid("A certificate number has 8 to 32 letters or digits", name)
        if not resident_id_is_valid(values["id_number"]):
            raise invalid("Not a valid resident ID number", "id_number")
    else:
        if not LICENCE.match(values["institution_licence_no"]):
            raise invalid("A licence number has 8 to 40 letters, digits or dashes", "institution_licence_no")
        if not uscc_is_valid(values["unified_social_credit_code"]):
            raise invalid("The unified social credit code's check character is wrong", "unified_social_credit_code")
    return values


def submit(principal: Principal, credentials: Credentials, now: datetime) -> dict[str, Any]:
    """Submit credentials: the account enters the review queue."""
    values = _checked(principal.role, credentials)
    account = load_account(principal.user_id)
    missing = [
        name.removesuffix("_cipher") for name in PROFILE_NEEDED[principal.role] if getattr(account, name) is None
    ]
    if missing:
        raise ApiError(
            422,
            "profile_incomplete",
            "Complete the profile before asking for review",
            "请先完善个人资料",
            {"missing": missing},
        )
    if account.verification_status in ("pending", "verified"):
        code = "verification_pending" if account.verification_status == "pending" else "already_verified"
        raise ApiError(409, code, f"The account is already {account.verification_status}", "已提交审核或已通过审核")
    try:
        account.update(
            actions=[
                Account.credentials_cipher.set(privacy.encrypt("credentials", json.dumps(values))),
                Account.verification_status.set("pending"),
                Account.review_queue.set(QUEUE),
                Account.submitted_at.set(iso(now)),
                Account.rejection_reason.remove(),
                Account.revision.add(1),
                Account.updated_at.set(iso(now)),
            ],
            condition=(Account.revision == account.revision),
        )
    except UpdateError as error:
        if error.cause_response_code == "ConditionalCheckFailedException":
            raise ApiError(409, "conflict", "The account changed meanwhile; retry", "账号信息已变更，请重试") from None
        raise
    return verification_view(account)


def _queue_entry(account: Account) -> dict[str, Any]:
    """What the back office sees of one submission (credentials in full: admins only)."""
    credentials = (
        json.loads(privacy.decrypt("credentials", account.credentials_cipher)) if account.credentials_cipher else {}
    )
    entry: dict[str, Any] = {
        "user_id": account.user_id,
        "role": account.role,
        "name": account.name,
        "phone": account.phone_masked or account.contact_phone_masked,
        "hospital": {"hospital_id": account.hospital_id, "name": account.hospital_name}
        if account.hospital_id
        else None,
        "submitted_at": account.submitted_at,
        "credentials": credentials,
    }
    if account.role == DOCTOR:
        entry["title"] = account.title
        entry["title_label"] = TITLES[account.title]["zh"] if account.title else None
    else:
        entry["contact_name"] = account.contact_name
    return entry


def queue(limit: int, cursor: str | None) -> dict[str, Any]:
    """The review queue, oldest submission first."""
    scope = "review-queue"
    items, last_key = read_page(
        lambda **page: Account.by_review_queue.query(QUEUE, scan_index_forward=True, **page),
        Account,
        limit=limit,
        start=decode_cursor(cursor, scope),
    )
    return {"items": [_queue_entry(item) for item in items], "next_cursor": encode_cursor(last_key, scope)}


def decide(admin: Principal, user_id: str, approve: bool, reason: str | None, now: datetime) -> dict[str, Any]:
    """Approve or reject a pending submission, recording the decision."""
    account = load_account(user_id)
    if account.verification_status != "pending":
        raise ApiError(409, "not_pending", "The account is not waiting for review", "该账号不在待审核状态")
    actions = [
        Account.review_queue.remove(),
        Account.submitted_at.remove(),
        Account.revision.add(1),
        Account.updated_at.set(iso(now)),
    ]
    if approve:
        actions += [Account.verification_status.set("verified"), Account.verified_at.set(iso(now))]
        actions.append(Account.rejection_reason.remove())
        if account.role == DOCTOR:
            actions += [getattr(Account, name).set(value) for name, value in discovery_keys(account).items()]
    else:
        actions += [Account.verification_status.set("rejected"), Account.rejection_reason.set(reason)]
    decision = VerificationDecision(f"USER#{user_id}", f"DECISION#{now.isoformat()}#{admin.user_id}")
    decision.decision = "approved" if approve else "rejected"
    decision.reason, decision.decided_by, decision.decided_at = reason, admin.user_id, iso(now)
    try:
        with TransactWrite(connection=UsersTable._get_connection().connection) as transaction:
            transaction.update(
                account,
                actions=actions,
                condition=(Account.revision == account.revision) & (Account.verification_status == "pending"),
            )
            transaction.save(decision, condition=VerificationDecision.sk.does_not_exist())
    except TransactWriteError as error:
        if error.cause_response_code == "TransactionCanceledException":
            raise ApiError(
                409, "conflict", "The account changed meanwhile; reload the queue", "账号信息已变更，请刷新"
            ) from None
        raise
    return {
        "user_id": user_id,
        "decision": decision.decision,
        "reason": reason,
        "decided_by": admin.user_id,
        "decided_at": decision.decided_at,
    }
