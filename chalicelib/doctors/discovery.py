"""Finding an anesthesiologist: a hospital's doctors, the whole catalogue (VIP), the storefront.

Only verified doctors carry the discovery keys, so an unverified doctor can never be
listed. Lists are index queries in rank order (star level, then rating); the storefront
is three reads (the account, the next 60 days of the calendar, the latest reviews). Phone numbers are
never part of what others see.

Example
-------
>>> doctors_of_hospital("h-1a2b3c", limit=20, cursor=None, now=utc_now())  # doctest: +SKIP
{'hospital': {...}, 'items': [{'doctor_id': '…', 'star_level': 4.5, …}], 'next_cursor': None}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts.roles import DOCTOR, Principal
from chalicelib.clock import shanghai_date
from chalicelib.config import get_settings
from chalicelib.directory import hospitals
from chalicelib.doctors import calendar
from chalicelib.doctors.ranking import DOCTOR_CATALOGUE
from chalicelib.doctors.vocabulary import TITLES
from chalicelib.errors import ApiError
from chalicelib.models.users import Account
from chalicelib.pagination import decode_cursor, encode_cursor, read_page
from chalicelib.reputation.formula import ratings

if TYPE_CHECKING:
    from datetime import date, datetime

NEXT_DATES_SHOWN = 5


def reputation(account: Account) -> dict[str, Any]:
    """The stored level and counts, with the average and the Bayesian score derived from the counts."""
    average, score = ratings(int(account.rating_count or 0), int(account.rating_sum or 0), get_settings().star_rules)
    return {
        "star_level": float(account.star_level or 0),
        "rating_average": average,
        "rating_score": score,
        "rating_count": int(account.rating_count or 0),
    }


def card(account: Account, today: date) -> dict[str, Any]:
    """A doctor as a list shows them."""
    upcoming = [day for day in (account.accepting_dates or []) if day >= today.isoformat()]
    return {
        "doctor_id": account.user_id,
        "name": account.name,
        "title": account.title,
        "title_label": TITLES[account.title]["zh"] if account.title else None,
        "hospital": {"hospital_id": account.hospital_id, "name": account.hospital_name},
        "city": account.city,
        "specialties": list(account.specialties or []),
        **reputation(account),
        "anesthesia_count": int(account.anesthesia_count),
        "invitation_fee": account.invitation_fee,
        "consultation_fee": account.consultation_fee,
        "next_accepting_dates": upcoming[:NEXT_DATES_SHOWN],
    }


def doctors_of_hospital(hospital_id: str, limit: int, cursor: str | None, now: datetime) -> dict[str, Any]:
    """Verified anesthesiologists registered at ``hospital_id``, best first (M-d)."""
    hospital = hospitals.require_hospital(hospital_id)
    scope = f"hospital-doctors:{hospital_id}"
    items, last_key = read_page(
        lambda **page: Account.by_hospital.query(f"HOSPITAL#{hospital_id}", **page),
        Account,
        limit=limit,
        start=decode_cursor(cursor, scope),
    )
    today = shanghai_date(now)
    return {
        "hospital": hospitals.hospital_view(hospital),
        "items": [card(item, today) for item in items],
        "next_cursor": encode_cursor(last_key, scope),
    }


def all_doctors(filters: dict[str, str | date | None], limit: int, cursor: str | None, now: datetime) -> dict[str, Any]:
    """Every verified anesthesiologist (VIP hospitals and admins, C2), filtered, best first."""
    condition = None
    parts = []
    if filters.get("city"):
        parts.append(Account.city == hospitals.canonical_city(str(filters["city"])))
    if filters.get("title"):
        parts.append(Account.title == filters["title"])
    if filters.get("specialty"):
        parts.append(Account.specialties.contains(filters["specialty"]))
    if filters.get("date"):
        parts.append(Account.accepting_dates.contains(str(filters["date"])))
    for part in parts:
        condition = part if condition is None else condition & part
    scope = "all-doctors:" + json.dumps({k: str(v) for k, v in filters.items() if v}, sort_keys=True)
    items, last_key = read_page(
        lambda **page: Account.by_catalogue.query(DOCTOR_CATALOGUE, filter_condition=condition, **page),
        Account,
        limit=limit,
        start=decode_cursor(cursor, scope),
    )
    today = shanghai_date(now)
    return {"items": [card(item, today) for item in items], "next_cursor": encode_cursor(last_key, scope)}


def storefront(doctor_id: str, viewer: Principal, now: datetime, reviews_cursor: str | None = None) -> dict[str, Any]:
    """The doctor's public display (C3): reputation, the latest reviews (reviewers masked; page on with
    ``reviews_cursor``), accepting days. Unverified doctors are visible only to themselves and admins."""
    from chalicelib.reputation import reviews

    try:
        account = Account.get(f"USER#{doctor_id}", "PROFILE")
    except DoesNotExist:
        account = None
    own = viewer.user_id == doctor_id
    if (
        account is None
        or account.role != DOCTOR
        or (account.verification_status != "verified" and not (own or viewer.is_admin))
    ):
        raise ApiError(404, "doctor_not_found", "No verified anesthesiologist has this id", "找不到该麻醉医生")
    view = card(account, shanghai_date(now))
    view.update(
        introduction=account.introduction,
        verified=account.verification_status == "verified",
        accepting_days=calendar.open_days(doctor_id, now),
        reviews=reviews.latest(doctor_id, cursor=reviews_cursor),
    )
    return view
