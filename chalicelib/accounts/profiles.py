"""The personal centre: what an account holder sees of themself and may change.

Each role may change its own fields only (``ALLOWED_FIELDS``); anything else — role,
verification, star level, balances, another user's id — is refused, never ignored. A
verified doctor (or hospital) who changes hospital or title goes back to review and
leaves discovery until approved again.

Example
-------
>>> update_profile(principal, ProfilePatch(introduction="Cardiac cases"), utc_now())  # doctest: +SKIP
{'user_id': '…', 'role': 'doctor', 'introduction': 'Cardiac cases', …}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts import signin
from chalicelib.accounts.identifiers import mainland_mobile, resident_id_is_valid
from chalicelib.accounts.roles import ADMIN, DOCTOR, HOSPITAL, PATIENT, Principal
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.directory import hospitals
from chalicelib.doctors.ranking import DISCOVERY_ATTRIBUTES
from chalicelib.doctors.vocabulary import TITLES, Specialty, Title
from chalicelib.errors import ApiError
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import Account, LoginAlias
from chalicelib.reputation.formula import ratings
from chalicelib.security import privacy
from chalicelib.validation import invalid

if TYPE_CHECKING:
    from datetime import datetime

UNSET = msgspec.UNSET
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
Phone = Annotated[str, msgspec.Meta(min_length=5, max_length=20)]
Fen = Annotated[int, msgspec.Meta(ge=0)]


class ProfilePatch(msgspec.Struct, forbid_unknown_fields=True):
    """The fields a profile update may carry; which of them a role may set is ``ALLOWED_FIELDS``."""

    name: Name | msgspec.UnsetType = UNSET
    phone: Phone | msgspec.UnsetType = UNSET
    id_number: Annotated[str, msgspec.Meta(min_length=18, max_length=18)] | msgspec.UnsetType | None = UNSET
    hospital_id: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | msgspec.UnsetType = UNSET
    title: Title | msgspec.UnsetType = UNSET
    introduction: Annotated[str, msgspec.Meta(max_length=1000)] | msgspec.UnsetType | None = UNSET
    specialties: Annotated[list[Specialty], msgspec.Meta(max_length=9)] | msgspec.UnsetType = UNSET
    invitation_fee: Fen | msgspec.UnsetType = UNSET
    consultation_fee: Fen | msgspec.UnsetType = UNSET
    contact_name: Name | msgspec.UnsetType = UNSET
    contact_phone: Phone | msgspec.UnsetType = UNSET


ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    PATIENT: frozenset({"name", "phone", "id_number"}),
    DOCTOR: frozenset(
        {"name", "phone", "hospital_id", "title", "introduction", "specialties", "invitation_fee", "consultation_fee"}
    ),
    HOSPITAL: frozenset({"hospital_id", "contact_name", "contact_phone"}),
    ADMIN: frozenset({"name"}),
}
REVIEWED_FIELDS = frozenset({"name", "hospital_id", "title"})
"""What the back office checks against the credentials: a change on a verified account
sends it back to review, and is refused while a review is pending (the admin would
approve what they never saw)."""


def load_account(user_id: str) -> Account:
    """The account ``user_id``; 404 when it does not exist (e.g. deleted after the token was issued)."""
    try:
        return Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)
    except DoesNotExist:
        raise ApiError(404, "account_not_found", "The account does not exist", "账号不存在") from None


def _plain(field: str, cipher: str | None) -> str | None:
    return privacy.decrypt(field, cipher) if cipher else None


def verification_view(account: Account) -> dict[str, Any]:
    return {
        "status": account.verification_status,
        "submitted_at": account.submitted_at,
        "verified_at": account.verified_at,
        "rejection_reason": account.rejection_reason,
    }


def own_view(account: Account) -> dict[str, Any]:
    """Everything the owner may see of their account (personal numbers in full)."""
    view: dict[str, Any] = {
        "user_id": account.user_id,
        "role": account.role,
        "name": account.name,
        "phone": _plain("phone", account.phone_cipher),
        "wechat_linked": bool(account.wechat_openids),
        "created_at": account.created_at,
        "updated_at": account.updated_at,
    }
    hospital = {"hospital_id": account.hospital_id, "name": account.hospital_name} if account.hospital_id else None
    if account.role == PATIENT:
        view["id_number"] = _plain("id_number", account.id_number_cipher)
    elif account.role == DOCTOR:
        view.update(
            hospital=hospital,
            title=account.title,
            title_label=TITLES[account.title]["zh"] if account.title else None,
            introduction=account.introduction,
            specialties=list(account.specialties or []),
            invitation_fee=account.invitation_fee,
            consultation_fee=account.consultation_fee,
            star_level=float(account.star_level),
            rating_average=ratings(int(account.rating_count), int(account.rating_sum), get_settings().star_rules)[0],
            rating_count=int(account.rating_count),
            anesthesia_count=int(account.anesthesia_count),
            verification=verification_view(account),
        )
    elif account.role == HOSPITAL:
        view.update(
            hospital=hospital,
            contact_name=account.contact_name,
            contact_phone=_plain("contact_phone", account.contact_phone_cipher),
            verification=verification_view(account),
        )
    return view


def _fee(kind: str, value: int) -> int:
    low, high = get_settings().fee_bounds_fen[kind]
    if not low <= value <= high:
        raise invalid(f"The {kind} fee must be between {low} and {high} fen", f"{kind}_fee", minimum=low, maximum=high)
    return value


def _actions(account: Account, changes: dict[str, Any]) -> list[Any]:
    """Validate each change and turn it into an update action."""
    actions: list[Any] = []
    for field, value in changes.items():
        if field in ("phone", "contact_phone"):
            number = mainland_mobile(value, field)
            actions += [
                getattr(Account, f"{field}_cipher").set(privacy.encrypt(field, number)),
                getattr(Account, f"{field}_masked").set(privacy.mask_phone(number)),
            ]
        elif field == "id_number":
            if value is None:
                actions.append(Account.id_number_cipher.remove())
            elif not resident_id_is_valid(value):
                raise invalid("Not a valid resident ID number", "id_number")
            else:
                actions.append(Account.id_number_cipher.set(privacy.encrypt("id_number", value.upper())))
        elif field == "hospital_id":
            hospital = hospitals.get_hospital(value)
            if hospital is None:
                raise invalid("No hospital in the directory has this id", "hospital_id")
            actions += [
                Account.hospital_id.set(value),
                Account.hospital_name.set(hospital.name),
                Account.city.set(hospital.city),
            ]
            if account.role == HOSPITAL:
                actions.append(Account.name.set(hospital.name))
        elif field in ("invitation_fee", "consultation_fee"):
            actions.append(getattr(Account, field).set(_fee(field.removesuffix("_fee"), value)))
        elif field == "specialties":
            if len(set(value)) != len(value):
                raise invalid("Specialties must not repeat", "specialties")
            actions.append(Account.specialties.set(value))
        elif field == "introduction" and value is None:
            actions.append(Account.introduction.remove())
        else:
            actions.append(getattr(Account, field).set(value))
    return actions


def back_to_review_actions(now: datetime) -> list[Any]:
    """Leave discovery and re-enter the review queue."""
    return [
        Account.verification_status.set("pending"),
        Account.review_queue.set("PENDING"),
        Account.submitted_at.set(iso(now)),
        Account.verified_at.remove(),
        *(getattr(Account, name).remove() for name in DISCOVERY_ATTRIBUTES),
    ]


def _phone_move(account: Account, raw_phone: str | None) -> tuple[str | None, str] | None:
    """The (old, new) login alias keys when a phone-login account's phone changes, else None.

    An account that signs in by WeChat keeps its phone as a contact number only: giving
    it a login alias would let anyone claim a number they have not proved is theirs.
    """
    if raw_phone is None or account.password_hash is None:
        return None
    new_key = signin.phone_alias_key(mainland_mobile(raw_phone))
    old_phone = _plain("phone", account.phone_cipher)
    old_key = signin.phone_alias_key(old_phone) if old_phone else None
    return None if old_key == new_key else (old_key, new_key)


def _write(account: Account, actions: list[Any], phone_move: tuple[str | None, str] | None, now: datetime) -> None:
    """The profile update, and the move of its phone alias, as one transaction.

    A phone is one person's: the new number's alias is written only if no account holds
    it (409 ``phone_taken``), and the old one is released, so the new number signs in.
    """
    conflict = ApiError(
        409, "conflict", "The profile changed meanwhile; reload and retry", "资料已被修改，请刷新后重试"
    )
    batch = Batch()
    batch.update("profile", account, actions=actions, condition=Account.revision == account.revision)
    if phone_move is not None:
        old_key, new_key = phone_move
        batch.put(
            "new_phone", signin.login_alias(new_key, account.user_id, now), condition=LoginAlias.pk.does_not_exist()
        )
        if old_key is not None:
            old_alias = LoginAlias(old_key, "LOGIN")
            batch.delete("old_phone", old_alias, condition=LoginAlias.user_id == account.user_id)
    try:
        batch.commit(Account._get_connection().connection)
    except TransactionCancelledError as cancelled:
        if "new_phone" in cancelled.failed:
            raise ApiError(409, "phone_taken", "This phone number already has an account", "该手机号已注册") from None
        if cancelled.failed:
            raise conflict from None
        raise busy() from None


def update_profile(principal: Principal, patch: ProfilePatch, now: datetime) -> dict[str, Any]:
    """Apply the caller's own changes; 422 for a field their role may not set, 409 on a concurrent change."""
    changes = {field: getattr(patch, field) for field in patch.__struct_fields__ if getattr(patch, field) is not UNSET}
    if not changes:
        raise invalid("Send at least one field to change")
    refused = sorted(set(changes) - ALLOWED_FIELDS[principal.role])
    if refused:
        raise ApiError(
            422,
            "field_not_allowed",
            f"A {principal.role} may not set {', '.join(refused)}",
            "您的角色不能修改这些字段",
            {"fields": refused},
        )
    account = load_account(principal.user_id)
    actions = _actions(account, changes)
    reviewed = sorted(
        field for field, value in changes.items() if field in REVIEWED_FIELDS and getattr(account, field) != value
    )
    if reviewed and account.verification_status == "pending":
        raise ApiError(
            409,
            "verification_pending",
            f"{', '.join(reviewed)} cannot change while the account is under review",
            "审核期间不能修改这些资料",
            {"fields": reviewed},
        )
    if reviewed and account.verification_status == "verified":
        actions += back_to_review_actions(now)
    actions += [Account.revision.add(1), Account.updated_at.set(iso(now))]
    _write(account, actions, _phone_move(account, changes.get("phone")), now)
    account.refresh(consistent_read=True)
    return own_view(account)
