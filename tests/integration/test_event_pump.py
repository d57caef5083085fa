"""The event pump against real DynamoDB Local streams: shape, order, checkpoints, retries, schedules.

Each test builds a small Chalice app whose stream handler records what it receives, and
runs the pump in a thread, exactly as ``make run`` runs it for the real app.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from chalice import Chalice, Rate
from chalice.test import Client

from devstack.event_pump import Pump

if TYPE_CHECKING:
    from pathlib import Path

Behaviour = Callable[[list[dict[str, Any]]], Any]


@pytest.fixture
def stream_table(dynamodb_endpoint: str, ddb) -> Iterator[str]:
    name = f"pump-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield name
    ddb.delete_table(TableName=name)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A minimal Chalice project folder for the test client's stage configuration."""
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps({"version": "2.0", "app_name": "pumptest"}))
    return tmp_path


class PumpRun:
    """A test app, its pump in a background thread, and what its handlers saw."""

    def __init__(
        self,
        project: Path,
        table: str,
        behaviour: Behaviour,
        max_retries: int = 3,
        starting_position: str = "TRIM_HORIZON",
    ) -> None:
        self.deliveries: list[list[dict[str, Any]]] = []
        self.ticks: list[float] = []
        app = Chalice(app_name="pumptest")

        @app.on_dynamodb_record(
            stream_arn=f"arn:aws:dynamodb:ddblocal:000000000000:table/{table}/stream/latest",
            name="capture",
            batch_size=10,
            starting_position=starting_position,
        )
        def capture(event: Any) -> Any:
            records = event.to_dict()["Records"]
            self.deliveries.append(records)
            return behaviour(records)

        @app.schedule(Rate(1, unit=Rate.MINUTES), name="tick")
        def tick(event: Any) -> None:
            self.ticks.append(time.monotonic())

        client = Client(app, stage_name="dev", project_dir=str(project))
        self.pump = Pump(app, client, project / "state", speedup=60.0, max_retries=max_retries)
        self.thread = threading.Thread(target=self.pump.run, args=(0.05,), daemon=True)

    def __enter__(self) -> PumpRun:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.pump.stop()
        self.thread.join(10)

    def delivered_keys(self) -> list[str]:
        return [record["dynamodb"]["Keys"]["pk"]["S"] for batch in self.deliveries for record in batch]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _put(ddb: Any, table: str, key: str, **extra: Any) -> None:
    ddb.put_item(TableName=table, Item={"pk": {"S": key}, **extra})


def test_records_arrive_in_order_shaped_as_lambda_delivers_them(project: Path, stream_table: str, ddb: Any) -> None:
    # GIVEN an item inserted, modified and removed
    _put(ddb, stream_table, "a", blob={"B": b"\x00\x01"}, n={"N": "1"})
    ddb.update_item(
        TableName=stream_table,
        Key={"pk": {"S": "a"}},
        UpdateExpression="SET n = :n",
        ExpressionAttributeValues={":n": {"N": "2"}},
    )
    ddb.delete_item(TableName=stream_table, Key={"pk": {"S": "a"}})
    stream_arn = ddb.describe_table(TableName=stream_table)["Table"]["LatestStreamArn"]
    # WHEN the pump runs
    with PumpRun(project, stream_table, lambda records: {"batchItemFailures": []}) as run:
        wait_for(lambda: len(run.delivered_keys()) == 3)
    records = [record for batch in run.deliveries for record in batch]
    # THEN the handler saw the three changes in order, in Lambda's shape
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    sequence = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
    assert sequence == sorted(sequence)
    insert, modify, remove = records
    assert insert["eventSourceARN"] == stream_arn
    assert isinstance(insert["dynamodb"]["ApproximateCreationDateTime"], int)
    assert insert["dynamodb"]["NewImage"]["blob"] == {"B": base64.b64encode(b"\x00\x01").decode()}
    assert insert["dynamodb"]["Keys"] == {"pk": {"S": "a"}}
    assert "OldImage" not in insert["dynamodb"]
    assert modify["dynamodb"]["OldImage"]["n"] == {"N": "1"}
    assert modify["dynamodb"]["NewImage"]["n"] == {"N": "2"}
    assert remove["dynamodb"]["OldImage"]["n"] == {"N": "2"}
    assert "NewImage" not in remove["dynamodb"]
    assert insert["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_batch_item_failures_redeliver_from_the_first_failed_record(project: Path, stream_table: str, ddb: Any) -> None:
    failed_once: set[str] = set()

    def fail_b_once(records: list[dict[str, Any]]) -> dict[str, Any]:
        for record in records:
            key = record["dynamodb"]["Keys"]["pk"]["S"]
            if key == "b" and key not in failed_once:
                failed_once.add(key)
                return {"batchItemFailures": [{"itemIdentifier": record["dynamodb"]["SequenceNumber"]}]}
        return {"batchItemFailures": []}

    for key in ("a", "b", "c"):
        _put(ddb, stream_table, key)
    with PumpRun(project, stream_table, fail_b_once) as run:
        wait_for(lambda: run.delivered_keys().count("c") == 2)
        time.sleep(0.3)
    # THEN "a" (before the failure) was not delivered again; "b" and "c" were
    assert run.delivered_keys() == ["a", "b", "c", "b", "c"]


def test_a_raising_handler_is_retried_then_its_batch_set_aside(project: Path, stream_table: str, ddb: Any) -> None:
    def always_fail_on_x(records: list[dict[str, Any]]) -> None:
        if any(record["dynamodb"]["Keys"]["pk"]["S"] == "x" for record in records):
            raise RuntimeError("poison")

    _put(ddb, stream_table, "x")
    with PumpRun(project, stream_table, always_fail_on_x, max_retries=2) as run:
        failed = project / "state" / "failed-records.jsonl"
        wait_for(failed.exists)
        # AND records after the poison one still flow
        _put(ddb, stream_table, "y")
        wait_for(lambda: "y" in run.delivered_keys())
    assert run.delivered_keys() == ["x", "x", "x", "y"]  # first try + 2 retries, then set aside
    set_aside = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [entry["record"]["dynamodb"]["Keys"]["pk"]["S"] for entry in set_aside] == ["x"]


def test_a_restarted_pump_resumes_after_its_checkpoint(project: Path, stream_table: str, ddb: Any) -> None:
    ok = lambda records: {"batchItemFailures": []}  # noqa: E731
    _put(ddb, stream_table, "first")
    with PumpRun(project, stream_table, ok) as run:
        wait_for(lambda: run.delivered_keys() == ["first"])
    # WHEN a change happens while the pump is down and a new pump starts
    _put(ddb, stream_table, "second")
    with PumpRun(project, stream_table, ok) as again:
        wait_for(lambda: "second" in again.delivered_keys())
        time.sleep(0.3)
    # THEN only the new change is delivered
    assert again.delivered_keys() == ["second"]


def test_schedules_tick_at_their_sped_up_rate(project: Path, stream_table: str) -> None:
    # GIVEN a rate(1 minute) schedule sped up 60 times
    with PumpRun(project, stream_table, lambda records: None) as run:
        wait_for(lambda: len(run.ticks) >= 2, timeout=5)
    # THEN it fired about once a second
    assert 0.8 <= run.ticks[1] - run.ticks[0] <= 1.5


def test_a_malformed_failure_identifier_redelivers_the_whole_batch(project: Path, stream_table: str, ddb: Any) -> None:
    answers = iter([{"batchItemFailures": [{"itemIdentifier": ""}]}])
    for key in ("a", "b"):
        _put(ddb, stream_table, key)
    with PumpRun(project, stream_table, lambda records: next(answers, {"batchItemFailures": []})) as run:
        wait_for(lambda: len(run.delivered_keys()) == 4)
        time.sleep(0.3)
    assert run.delivered_keys() == ["a", "b", "a", "b"]


def test_a_latest_consumer_keeps_changes_made_while_the_pump_was_down(
    project: Path, stream_table: str, ddb: Any
) -> None:
    ok = lambda records: {"batchItemFailures": []}  # noqa: E731
    # GIVEN a change from before the consumer existed, which LATEST skips
    _put(ddb, stream_table, "before")
    with PumpRun(project, stream_table, ok, starting_position="LATEST") as run:
        time.sleep(0.5)
        _put(ddb, stream_table, "during")
        wait_for(lambda: run.delivered_keys() == ["during"])
    # WHEN a change happens while the pump is down
    _put(ddb, stream_table, "while-down")
    with PumpRun(project, stream_table, ok, starting_position="LATEST") as again:
        wait_for(lambda: "while-down" in again.delivered_keys())
        time.sleep(0.3)
    # THEN the restarted pump delivers it, and only it
    assert again.delivered_keys() == ["while-down"]
