"""The event pump's pure helpers: schedules, stream ARNs, Lambda's JSON and the checkpoints file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from chalice import Cron, Rate

from devstack.errors import StackError
from devstack.event_pump import Checkpoints, lambda_record, rate_seconds, table_of_stream_arn, to_lambda_json

if TYPE_CHECKING:
    from pathlib import Path

# --- rate_seconds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        (Rate(1, unit=Rate.MINUTES), 60.0),
        (Rate(2, unit=Rate.HOURS), 7200.0),
        (Rate(1, unit=Rate.DAYS), 86400.0),
        ("rate(5 minutes)", 300.0),
        ("rate(1 hour)", 3600.0),
        ("  rate(3 days) ", 259200.0),
    ],
)
def test_rate_seconds(expression: Any, seconds: float) -> None:
    assert rate_seconds(expression) == seconds


@pytest.mark.parametrize(
    "expression",
    [Cron(0, 10, "*", "*", "?", "*"), "cron(0 10 * * ? *)", "rate(5 weeks)", "rate(-1 minutes)", "every 5 minutes"],
)
def test_rate_seconds_rejects_anything_but_a_rate(expression: Any) -> None:
    with pytest.raises(StackError, match="rate schedules only"):
        rate_seconds(expression)


# --- table_of_stream_arn ------------------------------------------------------------------------


def test_table_of_a_dynamodb_local_stream_arn() -> None:
    arn = "arn:aws:dynamodb:ddblocal:000000000000:table/anes-local-invitations/stream/2026-01-01T00:00:00.000"

    assert table_of_stream_arn(arn) == "anes-local-invitations"


def test_table_of_the_local_stand_in_stream_arn() -> None:
    from chalicelib.config import local_stream_arn

    assert table_of_stream_arn(local_stream_arn("anes-local-invitations")) == "anes-local-invitations"


def test_table_of_an_aws_cn_stream_arn() -> None:
    arn = "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/anes-prod-invitations/stream/2026-01-01T08:00:00.123"

    assert table_of_stream_arn(arn) == "anes-prod-invitations"


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/anes-prod-invitations",
        "arn:aws-cn:sqs:cn-north-1:123456789012:queue-name",
        "",
    ],
)
def test_a_non_stream_arn_is_rejected(arn: str) -> None:
    with pytest.raises(StackError, match="not a DynamoDB stream ARN"):
        table_of_stream_arn(arn)


# --- to_lambda_json / lambda_record ---------------------------------------------------------------


def test_to_lambda_json_encodes_binary_recursively() -> None:
    value = {
        "B": b"\x00\xffhi",
        "BS": [b"a", bytearray(b"b")],
        "M": {"inner": {"B": b"xyz"}, "S": "text", "N": "12"},
        "BOOL": True,
        "NULL": None,
    }

    assert to_lambda_json(value) == {
        "B": "AP9oaQ==",
        "BS": ["YQ==", "Yg=="],
        "M": {"inner": {"B": "eHl6"}, "S": "text", "N": "12"},
        "BOOL": True,
        "NULL": None,
    }


def test_to_lambda_json_turns_datetimes_into_epoch_seconds() -> None:
    created = datetime(2026, 11, 24, 12, 35, 41, 900000, tzinfo=UTC)
    beijing = created.astimezone(timezone(timedelta(hours=8)))

    shaped = to_lambda_json({"dynamodb": {"ApproximateCreationDateTime": created, "Other": [beijing]}})

    assert shaped == {"dynamodb": {"ApproximateCreationDateTime": 1795523741, "Other": [1795523741]}}
    assert type(shaped["dynamodb"]["ApproximateCreationDateTime"]) is int
    json.dumps(shaped)  # fractions are dropped; what the pump hands to the handler must be plain JSON


def test_to_lambda_json_leaves_its_input_alone() -> None:
    value = {"B": b"x", "L": [b"y"]}

    to_lambda_json(value)

    assert value == {"B": b"x", "L": [b"y"]}


def test_lambda_record_adds_the_event_source_arn() -> None:
    arn = "arn:aws:dynamodb:ddblocal:000000000000:table/t-1/stream/2026-01-01T00:00:00.000"
    record = {
        "eventID": "e-1",
        "eventName": "INSERT",
        "dynamodb": {
            "ApproximateCreationDateTime": datetime(2026, 1, 1, tzinfo=UTC),
            "Keys": {"pk": {"B": b"k"}},
            "SequenceNumber": "100",
        },
    }

    shaped = lambda_record(record, arn)

    assert shaped["eventSourceARN"] == arn
    assert shaped["dynamodb"] == {
        "ApproximateCreationDateTime": int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()),
        "Keys": {"pk": {"B": "aw=="}},
        "SequenceNumber": "100",
    }
    assert "eventSourceARN" not in record


# --- Checkpoints ----------------------------------------------------------------------------------

ARN = "arn:aws:dynamodb:ddblocal:000000000000:table/t-1/stream/2026-01-01T00:00:00.000"


def test_checkpoints_start_empty(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "checkpoints.json")

    assert checkpoints.shards("count_invitation_changes", ARN) is None


def test_checkpoints_round_trip_through_the_file(tmp_path: Path) -> None:
    # GIVEN positions set for two shards and a second function
    path = tmp_path / "state" / "checkpoints.json"
    checkpoints = Checkpoints(path)
    checkpoints.set("count_invitation_changes", ARN, "shard-1", {"after": "100"})
    checkpoints.set("count_invitation_changes", ARN, "shard-2", {"at": "205"})
    checkpoints.set("count_invitation_changes", ARN, "shard-1", {"closed": True})
    checkpoints.set("other", ARN, "shard-1", {"latest": True})

    # WHEN a new process reads the file
    reread = Checkpoints(path)

    # THEN it sees the last position of each
    assert reread.shards("count_invitation_changes", ARN) == {"shard-1": {"closed": True}, "shard-2": {"at": "205"}}
    assert reread.shards("other", ARN) == {"shard-1": {"latest": True}}
    assert reread.shards("other", "arn:another") is None
    assert json.loads(path.read_text()) == reread.data


def test_checkpoints_write_atomically(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    checkpoints = Checkpoints(path)

    checkpoints.set("f", ARN, "shard-1", {"after": "1"})
    checkpoints.set("f", ARN, "shard-1", {"after": "2"})

    assert sorted(child.name for child in tmp_path.iterdir()) == ["checkpoints.json"]
    assert not path.with_suffix(".partial").exists()
    assert Checkpoints(path).shards("f", ARN) == {"shard-1": {"after": "2"}}


def test_checkpoints_never_write_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a saved position, and a write of the next one that dies before the rename
    path = tmp_path / "checkpoints.json"
    Checkpoints(path).set("f", ARN, "shard-1", {"after": "1"})
    checkpoints = Checkpoints(path)

    def crash(self: Path, target: Path) -> Path:
        raise OSError("power cut")

    monkeypatch.setattr(type(path), "replace", crash)

    with pytest.raises(OSError, match="power cut"):
        checkpoints.set("f", ARN, "shard-1", {"after": "2"})

    # THEN the file still holds the previous, complete position
    assert json.loads(path.read_text()) == {"f": {ARN: {"shard-1": {"after": "1"}}}}
