"""Platform records that prove the machinery runs: job heartbeats.

These back ``GET /health`` and the heartbeat job. Each write is conditional, so a
retried job changes nothing.

Example
-------
>>> record_heartbeat("heartbeat", datetime.now(timezone.utc))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, UpdateError

from chalicelib.models.users import JobHeartbeat

if TYPE_CHECKING:
    from datetime import datetime

HEARTBEAT_PK = "SYSTEM#heartbeat"


def record_heartbeat(job: str, now: datetime) -> bool:
    """Store that ``job`` ran at ``now``; False when a later run was already recorded.

    The condition keeps the record monotonic: a delayed retry never moves it back.
    """
    beat = JobHeartbeat(HEARTBEAT_PK, job)
    try:
        beat.update(
            actions=[
                JobHeartbeat.item_type.set(JobHeartbeat),
                JobHeartbeat.last_run_at.set(now),
                JobHeartbeat.runs.add(1),
            ],
            condition=JobHeartbeat.last_run_at.does_not_exist() | (JobHeartbeat.last_run_at < now),
        )
    except UpdateError as error:
        if error.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def last_heartbeat(job: str) -> datetime | None:
    """When ``job`` last ran, read strongly consistent; None if never.

    It is also what ``GET /health`` reads: one GetItem that proves DynamoDB answers.
    """
    try:
        return JobHeartbeat.get(HEARTBEAT_PK, job, consistent_read=True).last_run_at
    except DoesNotExist:
        return None


@dataclass(frozen=True)
class DatabaseProbe:
    """What ``probe_database`` saw: whether DynamoDB answered, and the last heartbeat."""

    ok: bool
    reason: str = ""
    heartbeat_at: datetime | None = None


def probe_database() -> DatabaseProbe:
    """One GetItem (the heartbeat record): proves DynamoDB answers, never raises."""
    try:
        return DatabaseProbe(ok=True, heartbeat_at=last_heartbeat("heartbeat"))
    except (PynamoDBException, BotoCoreError) as error:
        cause = getattr(error, "cause", None) or error
        return DatabaseProbe(ok=False, reason=type(cause).__name__)
