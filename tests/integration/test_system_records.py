"""Heartbeats under concurrency, on the real engine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from chalicelib import system


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
