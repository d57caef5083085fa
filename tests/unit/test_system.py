"""Platform records: the monotonic heartbeat."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib import system

TABLE = "anes-unit-invitations"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


# --- heartbeat ----------------------------------------------------------------------------------


def test_no_heartbeat_before_the_first_run(aws: None) -> None:
    assert system.last_heartbeat("heartbeat") is None


def test_heartbeat_is_monotonic(aws: None) -> None:
    # GIVEN a recorded run
    assert system.record_heartbeat("heartbeat", T0) is True
    assert system.last_heartbeat("heartbeat") == T0

    # WHEN a later run is recorded, THEN it moves the record forward
    later = T0 + timedelta(minutes=1)
    assert system.record_heartbeat("heartbeat", later) is True
    assert system.last_heartbeat("heartbeat") == later

    # WHEN a delayed retry of an earlier run arrives, THEN it is refused and changes nothing
    assert system.record_heartbeat("heartbeat", T0 + timedelta(seconds=30)) is False
    assert system.last_heartbeat("heartbeat") == later


def test_the_same_time_twice_is_recorded_once(aws: None) -> None:
    assert system.record_heartbeat("heartbeat", T0) is True

    assert system.record_heartbeat("heartbeat", T0) is False
    assert system.last_heartbeat("heartbeat") == T0


def test_heartbeats_of_different_jobs_are_independent(aws: None) -> None:
    system.record_heartbeat("heartbeat", T0 + timedelta(hours=1))

    assert system.record_heartbeat("nightly", T0) is True
    assert system.last_heartbeat("nightly") == T0
    assert system.last_heartbeat("heartbeat") == T0 + timedelta(hours=1)


def test_heartbeat_keeps_sub_second_precision(aws: None) -> None:
    precise = T0.replace(microsecond=123456)

    system.record_heartbeat("heartbeat", precise)

    assert system.last_heartbeat("heartbeat") == precise
