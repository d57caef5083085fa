"""Platform records: the monotonic heartbeat and the exactly-once stream change counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import system
from chalicelib.models.users import AppliedStreamRecord
from tests.unit.stream_records import stream_record

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


# --- stream change counts -----------------------------------------------------------------------


def test_counts_are_zero_for_a_table_never_seen(aws: None) -> None:
    assert system.change_counts(TABLE) == {"inserts": 0, "modifies": 0, "removes": 0}


def test_each_event_kind_is_counted(aws: None) -> None:
    # GIVEN two inserts, a modify and a remove
    records = [
        stream_record("e-1", "INSERT", "100"),
        stream_record("e-2", "INSERT", "101"),
        stream_record("e-3", "MODIFY", "102"),
        stream_record("e-4", "REMOVE", "103"),
    ]

    # WHEN they are applied
    applied = [system.apply_stream_record(TABLE, record, now=T0) for record in records]

    # THEN each is applied once and counted under its kind
    assert applied == [True, True, True, True]
    assert system.change_counts(TABLE) == {"inserts": 2, "modifies": 1, "removes": 1}


def test_a_redelivered_record_is_counted_once(aws: None) -> None:
    record = stream_record("e-1", "MODIFY")
    assert system.apply_stream_record(TABLE, record, now=T0) is True

    assert system.apply_stream_record(TABLE, record, now=T0 + timedelta(minutes=5)) is False
    assert system.change_counts(TABLE) == {"inserts": 0, "modifies": 1, "removes": 0}


def test_counts_are_kept_per_table(aws: None) -> None:
    system.apply_stream_record(TABLE, stream_record("e-1", "INSERT"), now=T0)
    system.apply_stream_record("anes-unit-ledger", stream_record("e-2", "REMOVE"), now=T0)

    assert system.change_counts(TABLE) == {"inserts": 1, "modifies": 0, "removes": 0}
    assert system.change_counts("anes-unit-ledger") == {"inserts": 0, "modifies": 0, "removes": 1}


def test_the_applied_marker_expires_after_the_stream_retention(aws: None) -> None:
    system.apply_stream_record(TABLE, stream_record("e-1", "INSERT"), now=T0)

    marker = AppliedStreamRecord.get(system.APPLIED_PK_PREFIX + "e-1", TABLE)

    assert marker.expires_at == T0 + system.APPLIED_MARKER_LIFETIME
    assert timedelta(hours=24) < system.APPLIED_MARKER_LIFETIME  # stream records live 24 h


@pytest.mark.parametrize("event_name", ["BOGUS", "insert", ""])
def test_an_unknown_event_name_is_rejected(aws: None, event_name: str) -> None:
    with pytest.raises(ValueError, match="unknown stream event"):
        system.apply_stream_record(TABLE, stream_record("e-1", event_name), now=T0)

    assert system.change_counts(TABLE) == {"inserts": 0, "modifies": 0, "removes": 0}


def test_applying_records_reuses_the_dynamodb_client(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.session

    # GIVEN one record applied, so every connection the code keeps exists
    system.apply_stream_record(TABLE, stream_record("warm-up", "INSERT"), now=T0)
    created: list[str] = []
    original = botocore.session.Session.create_client

    def counting_create_client(self: botocore.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        created.append(service_name)
        return original(self, service_name, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", counting_create_client)

    # WHEN three more records are applied
    for number in range(3):
        system.apply_stream_record(TABLE, stream_record(f"e-{number}", "MODIFY"), now=T0)

    # THEN no new client was built for them
    assert system.change_counts(TABLE)["modifies"] == 3
    assert created == []
