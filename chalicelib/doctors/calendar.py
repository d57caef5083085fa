"""A doctor's calendar: working days and the capacity offered per day, up to 90 days ahead.

Days are Asia/Shanghai dates. A write never lowers a capacity below what is already
booked (a conditional update per day), and the profile keeps the list of accepting
dates, so discovery can show and filter by them without reading the calendar.

Example
-------
>>> set_days(doctor, CalendarUpdate(days=[DaySetting(date(2026, 12, 1), True, 2, 4)]), utc_now())  # doctest: +SKIP
{'from': '2026-11-25', 'to': '2027-02-23', 'days': [...]}
"""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from chalicelib.accounts.profiles import load_account
from chalicelib.clock import iso, shanghai_date
from chalicelib.errors import ApiError
from chalicelib.models.invitations import CalendarDay
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.models.users import Account
from chalicelib.validation import invalid

HORIZON_DAYS = 90
STOREFRONT_DAYS = 60
Capacity = Annotated[int, msgspec.Meta(ge=0, le=20)]
Weekday = Literal[1, 2, 3, 4, 5, 6, 7]


class DaySetting(msgspec.Struct, forbid_unknown_fields=True):
    """One day: whether the doctor works, and how many invitations and consultations they take."""

    date: dt.date
    working: bool
    invitation_capacity: Capacity = 0
    consultation_capacity: Capacity = 0


class RangeSetting(msgspec.Struct, forbid_unknown_fields=True, rename={"start": "from", "end": "to"}):
    """The same setting for every day from ``from`` to ``to`` (inclusive), optionally on some weekdays only."""

    start: date
    end: date
    working: bool
    invitation_capacity: Capacity = 0
    consultation_capacity: Capacity = 0
    weekdays: Annotated[list[Weekday], msgspec.Meta(min_length=1, max_length=7)] | None = None


class CalendarUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Ranges first, then single days (a day overrides the range that covers it)."""

    days: Annotated[list[DaySetting], msgspec.Meta(max_length=HORIZON_DAYS + 1)] = []
    ranges: Annotated[list[RangeSetting], msgspec.Meta(max_length=20)] = []


def is_accepting(working: bool, invitation_capacity: int, consultation_capacity: int) -> bool:
    """A day is open to requests when the doctor works and offers some capacity."""
    return bool(working) and (invitation_capacity > 0 or consultation_capacity > 0)


def _pk(doctor_id: str) -> str:
    return f"CALENDAR#{doctor_id}"


def _within_horizon(day: date, today: date, field: str) -> None:
    """422 unless ``day`` is today or up to 90 days ahead."""
    last = today + timedelta(days=HORIZON_DAYS)
    if day < today:
        raise invalid("Past dates cannot be set", field, reason="past")
    if day > last:
        raise invalid(
            f"Dates can be set up to {HORIZON_DAYS} days ahead",
            field,
            reason="beyond_horizon",
            last_date=last.isoformat(),
        )


def _expand(update: CalendarUpdate, today: date) -> dict[date, DaySetting]:
    """Every day the update sets, checked against today and the 90-day horizon."""
    settings: dict[date, DaySetting] = {}
    for index, span in enumerate(update.ranges):
        field = f"ranges[{index}]"
        if span.end < span.start:
            raise invalid("'to' must not be before 'from'", field)
        _within_horizon(span.start, today, f"{field}.from")
        _within_horizon(span.end, today, f"{field}.to")
        day = span.start
        while day <= span.end:
            if span.weekdays is None or day.isoweekday() in span.weekdays:
                settings[day] = DaySetting(day, span.working, span.invitation_capacity, span.consultation_capacity)
            day += timedelta(days=1)
    for index, setting in enumerate(update.days):
        _within_horizon(setting.date, today, f"days[{index}].date")
        settings[setting.date] = setting
    if not settings:
        raise invalid("Send at least one day or range")
    return settings


def _day_view(day: CalendarDay) -> dict[str, Any]:
    return {
        "date": day.sk,
        "working": bool(day.working),
        "invitation_capacity": int(day.invitation_capacity),
        "consultation_capacity": int(day.consultation_capacity),
        "invitations_booked": int(day.invitations_booked),
        "consultations_booked": int(day.consultations_booked),
    }


def read_days(doctor_id: str, first: date, last: date) -> list[CalendarDay]:
    """The doctor's stored days from ``first`` to ``last`` (one Query)."""
    return list(CalendarDay.query(_pk(doctor_id), CalendarDay.sk.between(first.isoformat(), last.isoformat())))


def view(doctor_id: str, first: date | None, last: date | None, now: datetime) -> dict[str, Any]:
    """The doctor's own calendar; by default today to the horizon."""
    today = shanghai_date(now)
    first = first or today
    last = last or today + timedelta(days=HORIZON_DAYS)
    if last < first:
        raise invalid("'to' must not be before 'from'", "to")
    if (last - first).days > 366:
        raise invalid("Ask for at most a year at a time", "to")
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": [_day_view(d) for d in read_days(doctor_id, first, last)],
    }


def _keeps_bookings(setting: DaySetting) -> Any:
    """The day's bookings still fit: no capacity below what is booked, no booked day made a day off."""
    invitations = setting.invitation_capacity if setting.working else 0
    consultations = setting.consultation_capacity if setting.working else 0
    return (CalendarDay.invitations_booked.does_not_exist() | (CalendarDay.invitations_booked <= invitations)) & (
        CalendarDay.consultations_booked.does_not_exist() | (CalendarDay.consultations_booked <= consultations)
    )


def set_days(doctor_id: str, update: CalendarUpdate, now: datetime) -> dict[str, Any]:
    """Write the days of ``update`` and refresh the profile's accepting dates, in one transaction."""
    today = shanghai_date(now)
    settings = _expand(update, today)
    account = load_account(doctor_id)
    horizon = today + timedelta(days=HORIZON_DAYS)
    accepting = {
        day.sk: is_accepting(day.working, day.invitation_capacity, day.consultation_capacity)
        for day in read_days(doctor_id, today, horizon)
    }
    for day, setting in settings.items():
        accepting[day.isoformat()] = is_accepting(
            setting.working, setting.invitation_capacity, setting.consultation_capacity
        )
    ordered = sorted(settings)
    batch = Batch()
    for day in ordered:
        setting = settings[day]
        batch.update(
            day.isoformat(),
            CalendarDay(_pk(doctor_id), day.isoformat()),
            actions=[
                CalendarDay.item_type.set(CalendarDay),
                CalendarDay.working.set(setting.working),
                CalendarDay.invitation_capacity.set(setting.invitation_capacity),
                CalendarDay.consultation_capacity.set(setting.consultation_capacity),
                CalendarDay.updated_at.set(iso(now)),
            ],
            condition=_keeps_bookings(setting),
        )
    batch.update(
        "profile",
        account,
        actions=[
            Account.accepting_dates.set(sorted(date_ for date_, open_ in accepting.items() if open_)),
            Account.revision.add(1),
            Account.updated_at.set(iso(now)),
        ],
        condition=Account.revision == account.revision,
    )
    try:
        batch.commit(CalendarDay._get_connection().connection)
    except TransactionCancelledError as cancelled:
        refused = sorted(name for name in cancelled.failed if name != "profile")
        if refused:
            raise ApiError(
                409,
                "capacity_below_booked",
                "A capacity cannot go below what is already booked, nor a booked day become a day off",
                "容量不能低于已预约数量",
                {"dates": refused},
            ) from None
        if cancelled.failed:
            raise ApiError(409, "conflict", "The calendar changed meanwhile; retry", "日程已被修改，请重试") from None
        raise busy() from None
    return view(doctor_id, min(ordered), max(ordered), now)


def open_days(doctor_id: str, now: datetime) -> list[dict[str, Any]]:
    """Days of the next 60 with capacity left, as the storefront shows them."""
    today = shanghai_date(now)
    result = []
    for day in read_days(doctor_id, today, today + timedelta(days=STOREFRONT_DAYS - 1)):
        invitations = int(day.invitation_capacity) - int(day.invitations_booked)
        consultations = int(day.consultation_capacity) - int(day.consultations_booked)
        if day.working and (invitations > 0 or consultations > 0):
            result.append(
                {"date": day.sk, "invitation_slots": max(0, invitations), "consultation_slots": max(0, consultations)}
            )
    return result
