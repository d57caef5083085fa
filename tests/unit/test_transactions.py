"""``Batch``: named actions, and the names of those that stopped a transaction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.models.transactions import Batch, TransactionCancelledError
from chalicelib.models.users import JobHeartbeat, UsersTable


def beat(job: str) -> JobHeartbeat:
    item = JobHeartbeat("SYSTEM#heartbeat", job)
    item.runs, item.last_run_at = 1, datetime(2026, 11, 25, tzinfo=UTC)
    return item


def test_the_names_follow_dynamodbs_order_whatever_the_order_added() -> None:
    batch = Batch()
    batch.update("u", beat("a"), actions=[JobHeartbeat.runs.add(1)])
    batch.put("p", beat("b"))
    batch.check("c", JobHeartbeat, "SYSTEM#heartbeat", "c", JobHeartbeat.pk.exists())
    batch.delete("d", beat("d"))

    assert batch.names == ["c", "d", "p", "u"]


def test_a_cancelled_batch_names_the_actions_that_failed(aws: None) -> None:
    beat("exists").save()
    beat("also-exists").save()
    batch = Batch()
    batch.update("bump", beat("exists"), actions=[JobHeartbeat.runs.add(1)], condition=JobHeartbeat.runs == 1)
    batch.put("again", beat("also-exists"), condition=JobHeartbeat.pk.does_not_exist())
    batch.check("missing", JobHeartbeat, "SYSTEM#heartbeat", "missing", JobHeartbeat.pk.exists())

    with pytest.raises(TransactionCancelledError) as raised:
        batch.commit(UsersTable._get_connection().connection)

    assert sorted(raised.value.failed) == ["again", "missing"]
    assert JobHeartbeat.get("SYSTEM#heartbeat", "exists").runs == 1  # nothing was written


def test_a_batch_holds_one_to_a_hundred_actions(aws: None) -> None:
    with pytest.raises(ValueError, match="1 to 100 actions"):
        Batch().commit(UsersTable._get_connection().connection)


def test_two_actions_cannot_share_a_name() -> None:
    batch = Batch()
    batch.put("same", beat("a"))

    with pytest.raises(ValueError, match="named 'same'"):
        batch.update("same", beat("b"), actions=[JobHeartbeat.runs.add(1)])


def test_throttling_is_a_retryable_cancellation(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pynamodb.exceptions import CancellationReason, TransactWriteError, VerboseClientError

    def throttled(self: object) -> None:
        cause = VerboseClientError(
            {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}},
            "TransactWriteItems",
            cancellation_reasons=[CancellationReason(code="ThrottlingError")],
        )
        raise TransactWriteError("Failed to write transaction items", cause=cause)

    monkeypatch.setattr("pynamodb.transactions.TransactWrite._commit", throttled)
    batch = Batch()
    batch.put("only", beat("t"))

    with pytest.raises(TransactionCancelledError) as raised:
        batch.commit(UsersTable._get_connection().connection)

    assert (raised.value.failed, raised.value.conflicted) == ([], ["only"])
