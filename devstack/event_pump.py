"""The event pump: what Lambda's schedulers and stream pollers do, on this machine.

``chalice local`` serves HTTP only. The pump loads the app the way the Chalice CLI
does, walks ``app.event_sources`` and

- ticks every ``@schedule`` on its rate (``SCHEDULE_SPEEDUP`` divides every period);
- reads the DynamoDB Local stream of every table a ``@on_dynamodb_record`` handler
  subscribes to and invokes the handler with records shaped as Lambda delivers them,
  in order per shard, checkpointing after success. A handler that raises is retried
  (with backoff) from the same record; a returned ``batchItemFailures`` checkpoints
  before the first failed record and redelivers from there, as Lambda does. After
  ``--max-retries`` failed attempts the batch is written to ``failed-records.jsonl`` in
  the state folder and skipped, as Lambda's on-failure destination would.

Handlers run through ``chalice.test.Client`` so middleware and stage variables apply.
Its state (checkpoints, failed records) lives in ``--state-dir``, outside the code that
``chalice local`` serves.

Run: ``python -m devstack.event_pump`` (started by ``make run``) or
``python -m devstack.event_pump --job heartbeat`` to run one scheduled job now.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.errors import StackError

if TYPE_CHECKING:
    from chalice import Chalice
    from chalice.app import DynamoDBEventConfig, ScheduledEventConfig
    from chalice.test import Client

PROJECT_DIR = Path(__file__).resolve().parent.parent
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
STREAM_RESCAN_SECONDS = 5.0
_ITERATOR_TYPES = {"after": "AFTER_SEQUENCE_NUMBER", "at": "AT_SEQUENCE_NUMBER"}


def log(message: str) -> None:
    print(f"pump: {message}", flush=True)


def rate_seconds(expression: Any) -> float:
    """Seconds between runs of a rate schedule (``Rate`` or ``"rate(5 minutes)"``).

    >>> rate_seconds("rate(5 minutes)")
    300.0
    """
    text = expression.to_string() if hasattr(expression, "to_string") else str(expression)
    match = _RATE.match(text.strip())
    if match is None:
        raise StackError(f"the event pump runs rate schedules only, not {text!r}; run such a job with `make job`")
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")])


def table_of_stream_arn(stream_arn: str) -> str:
    """The table a stream ARN belongs to (only the table part is read, never region or account).

    >>> table_of_stream_arn("arn:aws:dynamodb:ddblocal:000000000000:table/t-1/stream/latest")
    't-1'
    """
    match = re.search(r":table/([^/]+)/stream/", stream_arn)
    if match is None:
        raise StackError(f"{stream_arn!r} is not a DynamoDB stream ARN")
    return match.group(1)


def to_lambda_json(value: Any) -> Any:
    """Turn a DynamoDB Streams API value into what Lambda delivers (binary as base64)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {key: to_lambda_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_lambda_json(item) for item in value]
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def lambda_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """One GetRecords record in Lambda's event shape."""
    shaped = to_lambda_json(record)
    shaped["eventSourceARN"] = stream_arn
    return shaped


class Checkpoints:
    """Positions per function, stream and shard, written atomically to a JSON file.

    A position is ``{"after": seq}`` (resume after it), ``{"at": seq}`` (redeliver it) or
    ``{}`` (from the shard's start); ``{"closed": true}`` marks a shard read to its end.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, dict[str, dict[str, Any]]]] = (
            json.loads(path.read_text()) if path.is_file() else {}
        )

    def shards(self, function: str, stream_arn: str) -> dict[str, dict[str, Any]] | None:
        return self.data.get(function, {}).get(stream_arn)

    def set(self, function: str, stream_arn: str, shard: str, position: dict[str, Any]) -> None:
        self.data.setdefault(function, {}).setdefault(stream_arn, {})[shard] = position
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1))
        partial.replace(self.path)


@dataclass
class ScheduleTicker:
    """One ``@schedule`` function and when it is next due."""

    config: ScheduledEventConfig
    period: float
    next_due: float

    def run_if_due(self, now: float, client: Client) -> None:
        if now < self.next_due:
            return
        self.next_due = now + self.period
        try:
            invoke_job(client, self.config.name)
        except Exception as error:  # a failed run is logged; the next tick runs again
            log(f"job {self.config.name} failed: {type(error).__name__}: {error}")


@dataclass
class StreamReader:
    """One ``@on_dynamodb_record`` function reading one table's stream."""

    config: DynamoDBEventConfig
    table: str
    max_retries: int
    state_dir: Path
    stream_arn: str = ""
    iterators: dict[str, str | None] = field(default_factory=dict)
    parents: dict[str, str | None] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    next_rescan: float = 0.0

    def refresh(self, streams: Any, dynamodb: Any, checkpoints: Checkpoints, now: float) -> None:
        """Find the table's latest stream and its shards (new shards appear over time)."""
        if now < self.next_rescan:
            return
        self.next_rescan = now + STREAM_RESCAN_SECONDS
        table = dynamodb.describe_table(TableName=self.table)["Table"]
        latest = table.get("LatestStreamArn")
        if not latest:
            raise StackError(f"table {self.table} has no stream, but {self.config.name} subscribes to it")
        if latest != self.stream_arn:
            self.stream_arn, self.iterators, self.parents = latest, {}, {}
            first_start = checkpoints.shards(self.config.name, latest) is None
            description = self._describe(streams)
            for shard in description:
                self.parents[shard["ShardId"]] = shard.get("ParentShardId")
                if first_start and self.config.starting_position == "LATEST":
                    self._start_at_latest(streams, checkpoints, shard["ShardId"])
            return
        for shard in self._describe(streams):
            self.parents.setdefault(shard["ShardId"], shard.get("ParentShardId"))

    def _describe(self, streams: Any) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        start: dict[str, str] = {}
        while True:
            page = streams.describe_stream(StreamArn=self.stream_arn, **start)["StreamDescription"]
            shards.extend(page.get("Shards", []))
            if not page.get("LastEvaluatedShardId"):
                return shards
            start = {"ExclusiveStartShardId": page["LastEvaluatedShardId"]}

    def _start_at_latest(self, streams: Any, checkpoints: Checkpoints, shard: str) -> None:
        """Skip what the shard holds now, as a new LATEST mapping does, and remember that position.

        Storing the position (not "LATEST") keeps records written while the pump is down.
        """
        request = {"StreamArn": self.stream_arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}
        iterator = streams.get_shard_iterator(**request)["ShardIterator"]
        last = None
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page.get("Records"):
                break
            last = page["Records"][-1]["dynamodb"]["SequenceNumber"]
            iterator = page.get("NextShardIterator")
        self.iterators[shard] = iterator
        checkpoints.set(self.config.name, self.stream_arn, shard, {"after": last} if last else {})

    def _iterator(self, streams: Any, checkpoints: Checkpoints, shard: str) -> str | None:
        if self.iterators.get(shard):
            return self.iterators[shard]
        position = (checkpoints.shards(self.config.name, self.stream_arn) or {}).get(shard, {})
        request: dict[str, str] = {"StreamArn": self.stream_arn, "ShardId": shard}
        kind = next((key for key in _ITERATOR_TYPES if key in position), None)
        if kind:
            request.update(ShardIteratorType=_ITERATOR_TYPES[kind], SequenceNumber=position[kind])
        else:
            request["ShardIteratorType"] = "TRIM_HORIZON"
        try:
            self.iterators[shard] = streams.get_shard_iterator(**request)["ShardIterator"]
        except streams.exceptions.TrimmedDataAccessException:
            log(f"{self.config.name}: checkpoint in {shard} is past the stream's retention; reading from its start")
            request.pop("SequenceNumber", None)
            request["ShardIteratorType"] = "TRIM_HORIZON"
            self.iterators[shard] = streams.get_shard_iterator(**request)["ShardIterator"]
        return self.iterators[shard]

    def _readable(self, shard: str, checkpoints: Checkpoints) -> bool:
        """A child shard waits until its parent is read to the end (order per key)."""
        done = checkpoints.shards(self.config.name, self.stream_arn) or {}
        if done.get(shard, {}).get("closed"):
            return False
        parent = self.parents.get(shard)
        return parent is None or parent not in self.parents or bool(done.get(parent, {}).get("closed"))

    def poll(self, streams: Any, client: Client, checkpoints: Checkpoints, now: float) -> int:
        """Deliver at most one batch per readable shard; return how many records were delivered."""
        delivered = 0
        for shard in list(self.parents):
            if not self._readable(shard, checkpoints) or now < self.retry_at.get(shard, 0.0):
                continue
            iterator = self._iterator(streams, checkpoints, shard)
            page = streams.get_records(ShardIterator=iterator, Limit=self.config.batch_size)
            records = [lambda_record(record, self.stream_arn) for record in page.get("Records", [])]
            if records:
                delivered += len(records)
                if not self._deliver(client, checkpoints, shard, records, now):
                    continue
            self.iterators[shard] = page.get("NextShardIterator")
            if self.iterators[shard] is None:
                checkpoints.set(self.config.name, self.stream_arn, shard, {"closed": True})
        return delivered

    def _deliver(
        self, client: Client, checkpoints: Checkpoints, shard: str, records: list[dict[str, Any]], now: float
    ) -> bool:
        """Invoke the handler; True when the shard may read on past these records."""
        name = self.config.name
        try:
            payload = client.lambda_.invoke(name, {"Records": records}).payload
            failures = [item["itemIdentifier"] for item in (payload or {}).get("batchItemFailures", [])]
        except Exception as error:
            log(f"{name} raised {type(error).__name__}: {error}")
            failures = [records[0]["dynamodb"]["SequenceNumber"]]
        if not failures:
            self.attempts.pop(shard, None)
            last = records[-1]["dynamodb"]["SequenceNumber"]
            checkpoints.set(name, self.stream_arn, shard, {"after": last})
            return True
        numeric = [failure for failure in failures if isinstance(failure, str) and failure.isdigit()]
        # Lambda treats a missing or malformed identifier as a failure of the whole batch
        first_failed = (
            min(numeric, key=int) if len(numeric) == len(failures) else records[0]["dynamodb"]["SequenceNumber"]
        )
        retry_from = [record for record in records if int(record["dynamodb"]["SequenceNumber"]) >= int(first_failed)]
        attempt = self.attempts.get(shard, 0) + 1
        self.iterators[shard] = None  # re-read from the checkpoint
        if attempt > self.max_retries:
            self._give_up(shard, retry_from)
            checkpoints.set(name, self.stream_arn, shard, {"after": records[-1]["dynamodb"]["SequenceNumber"]})
            self.attempts.pop(shard, None)
            return False
        self.attempts[shard] = attempt
        self.retry_at[shard] = now + min(30.0, 0.5 * 2 ** (attempt - 1))
        checkpoints.set(name, self.stream_arn, shard, {"at": first_failed})
        log(f"{name}: redelivering from {first_failed} (attempt {attempt + 1} of {self.max_retries + 1})")
        return False

    def _give_up(self, shard: str, records: list[dict[str, Any]]) -> None:
        path = self.state_dir / "failed-records.jsonl"
        with path.open("a", encoding="utf-8") as sink:
            for record in records:
                sink.write(json.dumps({"function": self.config.name, "shard": shard, "record": record}) + "\n")
        log(f"{self.config.name}: gave up on {len(records)} record(s) after {self.max_retries} retries; see {path}")


def load_app(stage: str) -> tuple[Chalice, Client]:
    """Import the app exactly as the Chalice CLI does for ``stage``."""
    from chalice.cli.factory import CLIFactory
    from chalice.test import Client

    factory = CLIFactory(str(PROJECT_DIR), environ=os.environ)
    app = factory.create_config_obj(chalice_stage_name=stage).chalice_app
    return app, Client(app, stage_name=stage, project_dir=str(PROJECT_DIR))


def invoke_job(client: Client, name: str) -> Any:
    """Run one scheduled function now with an EventBridge scheduled event."""
    event = client.events.generate_cw_event(
        source="aws.events",
        detail_type="Scheduled Event",
        detail={},
        resources=[f"arn:aws:events:local:000000000000:rule/{name}"],
    )
    payload = client.lambda_.invoke(name, event).payload
    log(f"job {name} ran: {json.dumps(payload, default=str)}")
    return payload


class Pump:
    """Every schedule and stream consumer of one app."""

    def __init__(self, app: Chalice, client: Client, state_dir: Path, speedup: float, max_retries: int) -> None:
        from chalice.app import DynamoDBEventConfig, ScheduledEventConfig

        self.client = client
        self.state_dir = state_dir
        self.checkpoints = Checkpoints(state_dir / "checkpoints.json")
        start = time.monotonic()
        self.tickers = []
        for source in app.event_sources:
            if not isinstance(source, ScheduledEventConfig):
                continue
            try:
                self.tickers.append(ScheduleTicker(source, rate_seconds(source.schedule_expression) / speedup, 0.0))
            except StackError as error:
                log(f"schedule {source.name} not ticked: {error}")
        for ticker in self.tickers:
            ticker.next_due = start + ticker.period
        self.readers = [
            StreamReader(source, table_of_stream_arn(source.stream_arn), max_retries, state_dir)
            for source in app.event_sources
            if isinstance(source, DynamoDBEventConfig)
        ]
        self._stopping = False

    def describe(self) -> list[str]:
        lines = [f"schedule {t.config.name}: every {t.period:g} s" for t in self.tickers]
        lines += [f"stream {r.config.name}: table {r.table}" for r in self.readers]
        return lines

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self, poll_interval: float) -> None:
        import boto3

        dynamodb = boto3.client("dynamodb")
        streams = boto3.client("dynamodbstreams")
        while not self._stopping:
            now = time.monotonic()
            for ticker in self.tickers:
                ticker.run_if_due(now, self.client)
            delivered = 0
            for reader in self.readers:
                try:
                    reader.refresh(streams, dynamodb, self.checkpoints, now)
                    delivered += reader.poll(streams, self.client, self.checkpoints, now)
                except StackError:
                    raise
                except Exception as error:  # DynamoDB Local restarting, an expired iterator...
                    log(f"stream {reader.config.name}: {type(error).__name__}: {error}; retrying")
                    reader.iterators.clear()
                    reader.next_rescan = 0.0
            if not delivered:
                time.sleep(poll_interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="local")
    parser.add_argument("--state-dir", type=Path, default=PROJECT_DIR / ".local" / "pump")
    parser.add_argument("--poll-interval", type=float, default=0.25, help="seconds between idle stream polls")
    parser.add_argument("--max-retries", type=int, default=5, help="failed deliveries before a batch is set aside")
    parser.add_argument("--job", help="run this scheduled function once, now, and exit")
    args = parser.parse_args(argv)
    if not args.job:
        from devstack.faults import install

        install("pump")  # only when DDB_FAULTS is set (make soak)
    try:
        app, client = load_app(args.stage)
        if args.job:
            from chalice.app import ScheduledEventConfig

            jobs = sorted(s.name for s in app.event_sources if isinstance(s, ScheduledEventConfig))
            if args.job not in jobs:
                raise StackError(f"no scheduled function named {args.job!r}; the jobs are: {', '.join(jobs)}")
            try:
                invoke_job(client, args.job)
            except Exception as error:
                raise StackError(f"job {args.job} failed: {type(error).__name__}: {error}") from error
            return 0
        from chalicelib.config import get_settings

        pump = Pump(app, client, args.state_dir, get_settings().schedule_speedup, args.max_retries)
        signal.signal(signal.SIGTERM, pump.stop)
        signal.signal(signal.SIGINT, pump.stop)
        for line in pump.describe():
            log(line)
        log("ready")
        pump.run(args.poll_interval)
        log("stopped")
        return 0
    except StackError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
