"""Platform records that prove the machinery runs: job heartbeats and stream change counts.

These back ``GET /health``, the heartbeat job and the change-count stream consumer. Each
write is conditional, so a retried job or a redelivered stream record changes nothing.

Example
-------
>>> record_heartbeat("heartbeat", datetime.now(timezone.utc))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.models.users import AppliedStreamRecord, JobHeartbeat, StreamChangeCount

if TYPE_CHECKING:
    from collections.abc import Mapping

HEARTBEAT_PK = "SYSTEM#heartbeat"
CHANGES_PK = "SYSTEM#stream-changes"
APPLIED_PK_PREFIX = "SYSTEM#stream-record#"
APPLIED_MARKER_LIFETIME = timedelta(days=2)
_COUNTERS = {"INSERT": "inserts", "MODIFY": "modifies", "REMOVE": "removes"}


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


def change_counts(table: str) -> dict[str, int]:
    """The applied INSERT/MODIFY/REMOVE counts of ``table``'s stream."""
    try:
        item = StreamChangeCount.get(CHANGES_PK, table, consistent_read=True)
    except DoesNotExist:
        return {"inserts": 0, "modifies": 0, "removes": 0}
    return {"inserts": int(item.inserts), "modifies": int(item.modifies), "removes": int(item.removes)}


def apply_stream_record(table: str, record: Mapping[str, Any], now: datetime | None = None) -> bool:
    """Count one stream record exactly once; False when it had been applied before.

    The applied-marker put (``attribute_not_exists``) and the counter increment are one
    transaction, so a redelivered record can never be counted twice.
    """
    event_name = record["eventName"]
    if event_name not in _COUNTERS:
        raise ValueError(f"unknown stream event {event_name!r}")
    now = now or datetime.now(UTC)
    marker = AppliedStreamRecord(APPLIED_PK_PREFIX + record["eventID"], table)
    marker.expires_at = now + APPLIED_MARKER_LIFETIME
    counter = getattr(StreamChangeCount, _COUNTERS[event_name])
    try:
        # the models' own connection: one botocore client per container, not one per record
        with TransactWrite(connection=StreamChangeCount._get_connection().connection) as transaction:
            transaction.save(marker, condition=AppliedStreamRecord.pk.does_not_exist())
            transaction.update(
                StreamChangeCount(CHANGES_PK, table),
                actions=[StreamChangeCount.item_type.set(StreamChangeCount), counter.add(1)],
            )
    except TransactWriteError as error:
        reasons = [reason.code if reason else None for reason in error.cancellation_reasons or []]
        if reasons and reasons[0] == "ConditionalCheckFailed":
            return False
        raise
    return True
