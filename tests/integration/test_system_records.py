"""Heartbeats and stream change counts under concurrency, on the real engine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from chalicelib import system


def _record(event_id: str, event_name: str = "INSERT") -> dict:
    return {
        "eventID": event_id,
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {"SequenceNumber": "1", "Keys": {"pk": {"S": "INVITATION#1"}, "sk": {"S": "META"}}},
    }


def test_a_record_delivered_concurrently_is_counted_once(tables: list[str]) -> None:
    # GIVEN one stream record delivered by eight pollers at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        applied = list(pool.map(lambda _: system.apply_stream_record("t-concurrent", _record("e-1")), range(8)))
    # THEN exactly one application counted it
    assert applied.count(True) == 1
    assert system.change_counts("t-concurrent") == {"inserts": 1, "modifies": 0, "removes": 0}


def test_distinct_records_are_all_counted(tables: list[str]) -> None:
    names = ["INSERT", "MODIFY", "MODIFY", "REMOVE"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: system.apply_stream_record("t-many", _record(f"m-{i}", names[i])), range(4)))
    assert system.change_counts("t-many") == {"inserts": 1, "modifies": 2, "removes": 1}


def test_heartbeat_keeps_the_latest_run_under_races(tables: list[str]) -> None:
    # GIVEN ten runs of one job racing with different times
    base = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    times = [base + timedelta(seconds=i) for i in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(lambda at: system.record_heartbeat("race", at), times))
    # THEN the stored run is the latest, whatever order they landed in
    assert system.last_heartbeat("race") == times[-1]
    # AND a late, older run does not move it back
    assert system.record_heartbeat("race", base) is False
    assert system.last_heartbeat("race") == times[-1]


def test_health_probe_reads_the_heartbeat(tables: list[str]) -> None:
    at = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    system.record_heartbeat("heartbeat", at)
    probe = system.probe_database()
    assert probe.ok
    assert probe.heartbeat_at == at
