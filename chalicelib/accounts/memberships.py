"""VIP memberships of hospital accounts (M-g): active while the end date is ahead.

Admins grant or end one by contract; a paid purchase (``payments.settlement``) creates it
or extends it from its current end. Every change is also kept as a ``MembershipChange``.

Example
-------
>>> is_active("u-hospital", utc_now())  # doctest: +SKIP
False
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.accounts.roles import HOSPITAL, Principal
from chalicelib.clock import iso, shanghai_date, start_of_shanghai_day
from chalicelib.errors import ApiError
from chalicelib.models.transactions import CONDITION_FAILED, CONFLICT, Batch, busy, cancellation_codes
from chalicelib.models.users import Account, Membership, MembershipChange, UsersTable

MAX_CONTRACT = timedelta(days=3653)


def _membership(user_id: str) -> Membership | None:
    try:
        return Membership.get(f"USER#{user_id}", "MEMBERSHIP")
    except DoesNotExist:
        return None


def is_active(user_id: str, now: datetime) -> bool:
    """Whether the hospital account ``user_id`` has a membership that has not ended."""
    membership = _membership(user_id)
    return membership is not None and membership.ends_at > iso(now)


def view(user_id: str, now: datetime) -> dict[str, Any]:
    """The membership as its hospital or an admin sees it, with the plans on sale."""
    from chalicelib.config import get_settings

    plans = [
        {"plan_id": plan.plan_id, "price_fen": plan.price_fen, "days": plan.days}
        for plan in get_settings().membership_plans.values()
    ]
    membership = _membership(user_id)
    if membership is None:
        return {
            "hospital_user_id": user_id,
            "active": False,
            "starts_at": None,
            "ends_at": None,
            "source": None,
            "plans": plans,
        }
    return {
        "hospital_user_id": user_id,
        "active": membership.ends_at > iso(now),
        "starts_at": membership.starts_at,
        "ends_at": membership.ends_at,
        "source": membership.source,
        "plans": plans,
    }


def add_purchase(batch: Batch, hospital_user_id: str, *, days: int, order_id: str, now: datetime) -> str:
    """Add to ``batch`` the membership a paid order buys: ``days`` from now, or from the current end if later.

    Conditional on the membership as read, so a concurrent change fails the whole payment
    transaction (retried) instead of losing days. Answers the new end.
    """
    current = _membership(hospital_user_id)
    active = current is not None and current.ends_at > iso(now)
    start = datetime.fromisoformat(current.ends_at) if active and current else now
    ends_at = iso(start + timedelta(days=days))
    record = Membership(f"USER#{hospital_user_id}", "MEMBERSHIP")
    record.starts_at = current.starts_at if active and current else iso(now)
    record.ends_at, record.source, record.reference = ends_at, "purchase", order_id
    record.updated_by, record.updated_at = hospital_user_id, iso(now)
    condition = Membership.pk.does_not_exist() if current is None else Membership.ends_at == current.ends_at
    batch.put("membership", record, condition=condition)
    change = MembershipChange(f"USER#{hospital_user_id}", f"MEMBERSHIP#{now.isoformat()}#{order_id}")
    change.ends_at, change.source, change.reference, change.changed_by = ends_at, "purchase", order_id, hospital_user_id
    batch.put("membership_change", change, condition=MembershipChange.sk.does_not_exist())
    return ends_at


def set_by_contract(
    admin: Principal, hospital_user_id: str, *, active: bool, ends_on: date | None, reference: str, now: datetime
) -> dict[str, Any]:
    """Grant a membership until the end of ``ends_on`` (Asia/Shanghai), or end it now."""
    try:
        account = Account.get(f"USER#{hospital_user_id}", "PROFILE")
    except DoesNotExist:
        account = None
    if account is None or account.role != HOSPITAL:
        raise ApiError(404, "hospital_account_not_found", "No hospital account has this id", "找不到该医院账号")
    if active:
        if ends_on is None:
            raise ApiError(
                422, "validation_failed", "ends_on is required to grant", "开通会员需要结束日期", {"field": "ends_on"}
            )
        if ends_on > shanghai_date(now) + MAX_CONTRACT:
            raise ApiError(
                422, "validation_failed", "A contract runs at most 10 years", "会员合同最长十年", {"field": "ends_on"}
            )
        ends_at = start_of_shanghai_day(ends_on + timedelta(days=1))
        if ends_at <= now:
            raise ApiError(
                422,
                "validation_failed",
                "ends_on must not be in the past",
                "结束日期不能早于今天",
                {"field": "ends_on"},
            )
    else:
        ends_at = now
    current = _membership(hospital_user_id)
    starts_at = current.starts_at if current is not None and current.ends_at > iso(now) else iso(now)
    record = Membership(f"USER#{hospital_user_id}", "MEMBERSHIP")
    record.starts_at, record.ends_at, record.source = starts_at, iso(ends_at), "contract"
    record.reference, record.updated_by, record.updated_at = reference, admin.user_id, iso(now)
    change = MembershipChange(f"USER#{hospital_user_id}", f"MEMBERSHIP#{now.isoformat()}")
    change.ends_at, change.source, change.reference, change.changed_by = (
        iso(ends_at),
        "contract",
        reference,
        admin.user_id,
    )
    try:
        with TransactWrite(connection=UsersTable._get_connection().connection) as transaction:
            # conditional on what was read: a purchase paid meanwhile is not overwritten (409, retry)
            read = Membership.pk.does_not_exist() if current is None else Membership.ends_at == current.ends_at
            transaction.save(record, condition=read)
            transaction.save(change, condition=MembershipChange.sk.does_not_exist())
    except TransactWriteError as error:
        if {CONDITION_FAILED, CONFLICT} & set(cancellation_codes(error)):
            raise busy() from None
        raise
    return view(hospital_user_id, now)
