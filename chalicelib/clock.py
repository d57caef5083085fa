"""Time as the business sees it: instants in UTC, business dates in Asia/Shanghai.

China has kept UTC+8 without daylight saving since 1991, so a fixed offset is exact and
needs no time-zone database (which the Lambda runtime does not ship).

Example
-------
>>> shanghai_date(datetime(2026, 11, 25, 17, 0, tzinfo=UTC)).isoformat()
'2026-11-26'
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(instant: datetime) -> str:
    """ISO 8601 with offset, to the second, in UTC (sortable as text)."""
    return instant.astimezone(UTC).isoformat(timespec="seconds")


def iso_precise(instant: datetime) -> str:
    """ISO 8601 in UTC to the microsecond: a sort key that keeps the order of events within a second."""
    return instant.astimezone(UTC).isoformat(timespec="microseconds")


def shanghai_date(instant: datetime) -> date:
    """The Asia/Shanghai calendar date of ``instant``."""
    return instant.astimezone(SHANGHAI).date()


def start_of_shanghai_day(day: date) -> datetime:
    """The first instant of ``day`` in Asia/Shanghai, in UTC."""
    return datetime.combine(day, time(0), SHANGHAI).astimezone(UTC)
