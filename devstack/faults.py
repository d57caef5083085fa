"""DynamoDB fault injection for the local stack: what DynamoDB Local never does, done on purpose.

DynamoDB Local never throttles and never reports a transaction conflict, and its answers are
never lost on the way back. ``make soak`` needs all three, so this module adds them with
botocore event hooks on every DynamoDB client a process creates (PynamoDB's included: it
creates its clients with ``botocore.session.Session.create_client``, which is wrapped here).

Fault kinds (each a share of the eligible calls, drawn independently):

- ``conflict``: a ``TransactWriteItems`` is cancelled with a ``TransactionConflict`` reason
  (``before-call``: the application sees it, as it would in AWS);
- ``throttle``: one HTTP attempt of any data-plane call gets DynamoDB's ``ThrottlingException``
  (``before-send``: botocore backs off and retries it, as it does in AWS);
- ``ambiguous``: a write (PutItem, UpdateItem, DeleteItem, TransactWriteItems) is really sent
  and commits, then its answer is lost (``ReadTimeoutError`` in ``before-send``): botocore
  sends the same request again, which must then find the work already done;
- ``lost``: a write commits, then the application gets the ``ReadTimeoutError`` itself
  (``after-call``: botocore's retries were spent). Off unless asked for.

The sandbox payment provider keeps its own records (``SANDBOX#...`` keys) in the local tables;
they play a provider's storage, not ours, so calls that touch them never get a fault (a real
provider's outage is a different test: the provider doubles).

Installed only by the local stack's processes (``devstack.api_server``, ``devstack.event_pump``)
when ``DDB_FAULTS`` is set, e.g. ``DDB_FAULTS="conflict=0.05,throttle=0.02,ambiguous=0.01,seed=7"``.
``DDB_FAULTS_DIR`` names a folder where each process writes its counts to
``faults-<name>-<pid>.json`` (every half second while they change, and at exit). Never
imported by ``chalicelib``: the Lambda code stays clean.

Example
-------
>>> spec = parse_spec("conflict=0.05,throttle=0.02,seed=7")
>>> (spec.rates["conflict"], spec.rates["ambiguous"], spec.seed)
(0.05, 0.0, 7)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ENV_SPEC = "DDB_FAULTS"
ENV_DIR = "DDB_FAULTS_DIR"
KINDS = ("conflict", "throttle", "ambiguous", "lost")
DATA_PLANE = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
"""Calls that get faults; table management (CreateTable, DescribeTable...) and Scan never do."""
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})
PROVIDER_KEY = b"SANDBOX#"
"""The key prefix of the sandbox provider's own records: never faulted."""
_THROTTLE_BODY = {
    "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
    "message": "Rate of requests exceeds the allowed throughput.",
}


class FaultSpecError(ValueError):
    """``DDB_FAULTS`` does not parse."""


@dataclass(frozen=True)
class FaultSpec:
    """The share of eligible calls that get each kind of fault, and the random seed."""

    rates: dict[str, float]
    seed: int = 0


def parse_spec(text: str) -> FaultSpec:
    """``kind=rate`` pairs (kinds of ``KINDS``, rates from 0 to 1) and ``seed=<int>``, separated by commas."""
    rates = dict.fromkeys(KINDS, 0.0)
    seed = 0
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            if name == "seed":
                seed = int(value)
                continue
            rate = float(value)
        except ValueError:
            raise FaultSpecError(f"{ENV_SPEC}: {part!r} is not name=number") from None
        if name not in rates:
            raise FaultSpecError(f"{ENV_SPEC}: unknown fault {name!r}; the faults are {', '.join(KINDS)}")
        if not 0.0 <= rate <= 1.0:
            raise FaultSpecError(f"{ENV_SPEC}: the rate of {name} must be from 0 to 1, got {value!r}")
        rates[name] = rate
    return FaultSpec(rates, seed)


class _RawBody:
    """What botocore's ``AWSResponse`` reads a body from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def throttled_response(request: Any) -> Any:
    """DynamoDB's raw answer to a throttled HTTP attempt (botocore retries it)."""
    from botocore.awsrequest import AWSResponse

    body = json.dumps(_THROTTLE_BODY).encode()
    return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _RawBody(body))


@dataclass(frozen=True)
class _Http:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def cancelled_reply(params: dict[str, Any]) -> tuple[_Http, dict[str, Any]]:
    """DynamoDB's parsed answer to a ``TransactWriteItems`` it cancelled for a conflict on its first item."""
    body = params.get("body")
    items = json.loads(body).get("TransactItems", []) if isinstance(body, (bytes, str)) and body else []
    reasons: list[dict[str, str]] = [{"Code": "None"} for _ in items] or [{"Code": "None"}]
    reasons[0] = {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    parsed = {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled [TransactionConflict]"},
        "CancellationReasons": reasons,
        "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
    }
    return _Http(400), parsed


class FaultInjector:
    """Decides, injects and counts faults; thread-safe. ``register(client)`` hooks one botocore client."""

    def __init__(self, spec: FaultSpec, report_path: Path | None = None) -> None:
        self.spec = spec
        self.report_path = report_path
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.calls = 0
        self._random = random.Random(spec.seed)
        self._lock = threading.Lock()
        self._dirty = False
        self._http: Any = None

    # -- decisions --------------------------------------------------------------------------------

    def _roll(self, kind: str) -> bool:
        rate = self.spec.rates.get(kind, 0.0)
        if rate <= 0.0:
            return False
        with self._lock:
            hit = self._random.random() < rate
            if hit:
                self.counts[kind] += 1
                self._dirty = True
            return hit

    def _count_call(self) -> None:
        with self._lock:
            self.calls += 1
            self._dirty = True

    # -- hooks ------------------------------------------------------------------------------------

    def before_call(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        """Count the call; cancel a transaction for a conflict (the application sees it)."""
        if model.name not in DATA_PLANE or _touches_provider(params.get("body")):
            context["devstack_faults_exempt"] = True
            return None
        self._count_call()
        if model.name == "TransactWriteItems" and self._roll("conflict"):
            return cancelled_reply(params)
        return None

    def before_send(self, request: Any, **kwargs: Any) -> Any:
        """One HTTP attempt: throttle it, or send it and lose the answer (botocore retries both)."""
        from botocore.exceptions import ReadTimeoutError

        operation = _operation(request)
        if operation not in DATA_PLANE or _touches_provider(request.body):
            return None
        if self._roll("throttle"):
            return throttled_response(request)
        if operation in WRITES and self._roll("ambiguous"):
            self._send(request)  # it commits in DynamoDB...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...and the answer never arrives
        return None

    def after_call(self, model: Any, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        """A write that committed, whose answer the application never gets (after botocore's retries)."""
        from botocore.exceptions import ReadTimeoutError

        status = getattr(http_response, "status_code", 500)
        if context.get("devstack_faults_exempt"):
            return
        if model.name in WRITES and status < 300 and self._roll("lost"):
            raise ReadTimeoutError(endpoint_url="http://dynamodb (answer lost by devstack.faults)")

    def _send(self, request: Any) -> None:
        from botocore.httpsession import URLLib3Session

        with self._lock:
            if self._http is None:
                self._http = URLLib3Session(timeout=30)
            http = self._http
        http.send(request)

    def register(self, client: Any) -> None:
        """Hook ``client`` (a botocore DynamoDB client)."""
        events = client.meta.events
        events.register("before-call.dynamodb", self.before_call, unique_id="devstack-faults-before-call")
        events.register("before-send.dynamodb", self.before_send, unique_id="devstack-faults-before-send")
        events.register("after-call.dynamodb", self.after_call, unique_id="devstack-faults-after-call")

    # -- the report -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"pid": os.getpid(), "calls": self.calls, "faults": dict(self.counts), "spec": self.spec.rates}

    def write_report(self) -> None:
        if self.report_path is None:
            return
        with self._lock:
            self._dirty = False
        text = json.dumps(self.snapshot())
        temporary = self.report_path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.report_path)

    def _report_loop(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            if self._dirty:
                with contextlib.suppress(OSError):
                    self.write_report()


def _touches_provider(body: Any) -> bool:
    """Whether a request body names a record of the sandbox provider."""
    if isinstance(body, str):
        body = body.encode()
    return isinstance(body, bytes) and PROVIDER_KEY in body


def _operation(request: Any) -> str | None:
    """The DynamoDB operation of a prepared request (``X-Amz-Target: DynamoDB_20120810.PutItem``)."""
    target = request.headers.get("X-Amz-Target")
    if isinstance(target, bytes):
        target = target.decode()
    return target.rpartition(".")[2] if target else None


_installed: FaultInjector | None = None


def install(name: str, environ: dict[str, str] | None = None) -> FaultInjector | None:
    """Hook every DynamoDB client this process creates from now on, when ``DDB_FAULTS`` is set.

    ``name`` labels the report file (``api``, ``pump``). Idempotent: a second call returns the
    first injector. Returns None (and changes nothing) when the variable is absent or empty.
    """
    global _installed
    environ = dict(os.environ if environ is None else environ)
    text = environ.get(ENV_SPEC, "").strip()
    if not text:
        return None
    if _installed is not None:
        return _installed
    spec = parse_spec(text)
    report = None
    if environ.get(ENV_DIR):
        folder = Path(environ[ENV_DIR])
        folder.mkdir(parents=True, exist_ok=True)
        report = folder / f"faults-{name}-{os.getpid()}.json"
    # a different stream of faults per process, reproducible from the seed
    spec = FaultSpec(spec.rates, spec.seed * 1_000 + sum(map(ord, name)))
    injector = FaultInjector(spec, report)
    _patch_create_client(injector)
    if report is not None:
        injector.write_report()
        atexit.register(injector.write_report)
        threading.Thread(target=injector._report_loop, args=(0.5,), daemon=True, name="faults-report").start()
    _installed = injector
    print(f"faults: injecting {text} into DynamoDB calls ({name}, pid {os.getpid()})", flush=True)
    return injector


def _patch_create_client(injector: FaultInjector) -> None:
    from botocore.session import Session

    original = Session.create_client

    def create_client(self: Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            injector.register(client)
        return client

    create_client.__wrapped__ = original  # type: ignore[attr-defined]
    Session.create_client = create_client  # type: ignore[method-assign]


def read_reports(folder: Path) -> dict[str, Any]:
    """The counts of every process that reported into ``folder``, summed: calls, faults by kind, processes."""
    total: dict[str, Any] = {"calls": 0, "faults": dict.fromkeys(KINDS, 0), "processes": 0}
    for path in sorted(folder.glob("faults-*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        total["processes"] += 1
        total["calls"] += int(report.get("calls", 0))
        for kind, count in report.get("faults", {}).items():
            total["faults"][kind] = total["faults"].get(kind, 0) + int(count)
    return total
