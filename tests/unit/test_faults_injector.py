"""``devstack.faults``: the spec parses, each fault looks to botocore as DynamoDB's own would, and
an ambiguous write really reaches DynamoDB before its answer is lost (so botocore sends it twice)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.faults import FaultInjector, FaultSpec, FaultSpecError, install, parse_spec, read_reports

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def test_the_spec_reads_rates_and_seed_and_refuses_nonsense() -> None:
    spec = parse_spec("conflict=0.05, throttle=0.02,ambiguous=0.01,seed=7")
    assert spec.rates == {"conflict": 0.05, "throttle": 0.02, "ambiguous": 0.01, "lost": 0.0}
    assert spec.seed == 7
    for bad in ("conflict=2", "explode=0.1", "conflict=lots", "seed=x"):
        with pytest.raises(FaultSpecError):
            parse_spec(bad)


def test_install_does_nothing_without_the_variable() -> None:
    assert install("api", environ={}) is None


class _FakeDynamoDB(BaseHTTPRequestHandler):
    """Answers every call with ``{}`` and remembers the operations it received."""

    received: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(self.headers["X-Amz-Target"].rpartition(".")[2])  # type: ignore[attr-defined]
        self.server.after_each()  # type: ignore[attr-defined]
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def fake_dynamodb() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _FakeDynamoDB)
    server.received = []  # type: ignore[attr-defined]
    server.after_each = lambda: None  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _client(server: HTTPServer, injector: FaultInjector) -> Any:
    session = botocore.session.get_session()
    client = session.create_client(
        "dynamodb",
        region_name="cn-north-1",
        endpoint_url=f"http://127.0.0.1:{server.server_port}",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )
    injector.register(client)
    return client


def _injector(**rates: float) -> FaultInjector:
    return FaultInjector(FaultSpec({"conflict": 0.0, "throttle": 0.0, "ambiguous": 0.0, "lost": 0.0, **rates}, 1))


def test_a_conflict_cancels_a_transaction_as_dynamodb_does(fake_dynamodb: HTTPServer) -> None:
    # GIVEN every transaction conflicts
    injector = _injector(conflict=1.0)
    client = _client(fake_dynamodb, injector)
    items = [{"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}}}}, {"Put": {"TableName": "t", "Item": {}}}]
    # WHEN a transaction is sent THEN it is cancelled with a TransactionConflict reason and never reaches DynamoDB
    with pytest.raises(ClientError) as raised:
        client.transact_write_items(TransactItems=items)
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [reason["Code"] for reason in raised.value.response["CancellationReasons"]] == [
        "TransactionConflict",
        "None",
    ]
    assert fake_dynamodb.received == []  # type: ignore[attr-defined]
    # AND a plain read is not touched, and both calls are counted
    client.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert injector.counts["conflict"] == 1 and injector.calls == 2


def test_a_throttled_attempt_is_retried_by_botocore(fake_dynamodb: HTTPServer) -> None:
    # GIVEN every attempt is throttled: botocore retries, then gives up with DynamoDB's throttling error
    injector = _injector(throttle=1.0)
    client = _client(fake_dynamodb, injector)
    with pytest.raises(ClientError) as raised:
        client.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert injector.counts["throttle"] > 1  # every attempt botocore made, retries included
    assert fake_dynamodb.received == []  # type: ignore[attr-defined]


def test_an_ambiguous_write_commits_then_is_sent_again(fake_dynamodb: HTTPServer) -> None:
    # GIVEN the first attempt of a write is ambiguous (the server then stops the faults)
    injector = _injector(ambiguous=1.0)
    fake_dynamodb.after_each = lambda: injector.spec.rates.update(ambiguous=0.0)  # type: ignore[attr-defined]
    client = _client(fake_dynamodb, injector)
    # WHEN the write is made THEN DynamoDB received it twice: once committed (answer lost), once retried
    client.put_item(TableName="t", Item={"pk": {"S": "a"}})
    assert fake_dynamodb.received == ["PutItem", "PutItem"]  # type: ignore[attr-defined]
    assert injector.counts["ambiguous"] == 1
    # AND a read is never ambiguous
    injector.spec.rates["ambiguous"] = 1.0
    client.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert fake_dynamodb.received[-1] == "GetItem" and injector.counts["ambiguous"] == 1  # type: ignore[attr-defined]


def test_the_sandbox_providers_own_records_never_get_a_fault(fake_dynamodb: HTTPServer) -> None:
    # GIVEN every call would get every fault
    injector = _injector(conflict=1.0, throttle=1.0, ambiguous=1.0, lost=1.0)
    client = _client(fake_dynamodb, injector)
    provider = {"pk": {"S": "SANDBOX#PAYMENT#P1"}, "sk": {"S": "META"}}
    # WHEN the sandbox provider writes and reads its records (it plays a provider's storage, not ours)
    client.transact_write_items(TransactItems=[{"Put": {"TableName": "t", "Item": provider}}])
    client.put_item(TableName="t", Item=provider)
    client.get_item(TableName="t", Key=provider)
    # THEN each call reached DynamoDB once, untouched and uncounted
    assert fake_dynamodb.received == ["TransactWriteItems", "PutItem", "GetItem"]  # type: ignore[attr-defined]
    assert injector.calls == 0 and sum(injector.counts.values()) == 0


def test_reports_of_every_process_are_summed(tmp_path: Path) -> None:
    for pid, counts in ((1, {"conflict": 2, "throttle": 1}), (2, {"conflict": 3, "ambiguous": 4})):
        report = {"pid": pid, "calls": 10 * pid, "faults": counts}
        (tmp_path / f"faults-x-{pid}.json").write_text(json.dumps(report))
    total = read_reports(tmp_path)
    assert total["processes"] == 2 and total["calls"] == 30
    assert total["faults"] == {"conflict": 5, "throttle": 1, "ambiguous": 4, "lost": 0}


def test_an_injector_writes_its_counts(tmp_path: Path) -> None:
    injector = FaultInjector(parse_spec("conflict=1"), tmp_path / "faults-api-9.json")
    injector.counts["conflict"] = 4
    injector.write_report()
    assert read_reports(tmp_path)["faults"]["conflict"] == 4
