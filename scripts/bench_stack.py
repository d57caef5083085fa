"""The benchmark's stack: DynamoDB Local in memory and the API served in this process, instrumented.

``make bench`` needs to see inside the API while it serves real HTTP (so the sandbox's
callbacks arrive over loopback as they do under ``make run``): it runs ``chalice local``'s
server in a thread of its own process and adds, for the bench only,

- a botocore hook on every DynamoDB client (PynamoDB's and the idempotency layer's) that
  counts calls by operation and by the API route being served (a thread-local label),
  and the items each read returns, and another that can record each request
  (``bench_replay``: the throughput figure's raw reference);
- a Chalice middleware that labels each request with its route, times it, and lets a
  request move its own clock forward (``X-Bench-Clock-Offset``: seconds), so a flow can
  reach an operation's scheduled time without waiting for it. Only this process's copy of
  ``utc_now`` is patched; nothing of it is deployed.

Example
-------
>>> with BenchStack() as stack:  # doctest: +SKIP
...     requests.get(f"{stack.url}/health")
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.bench_replay import Recording

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT_DIR = Path(__file__).resolve().parent.parent
OFFSET_HEADER = "X-Bench-Clock-Offset"
PROVIDER_KEY = "SANDBOX#"
PROVIDER_SUFFIX = " [sandbox provider]"
READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})

_local = threading.local()


def current_label() -> str:
    """The route this thread is serving (``-`` outside a request: the bench itself or a job)."""
    return getattr(_local, "label", None) or "-"


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Count the DynamoDB calls this thread makes meanwhile under ``label`` (a job run, say)."""
    previous = getattr(_local, "label", None)
    _local.label = label
    try:
        yield
    finally:
        _local.label = previous


def bench_now() -> datetime:
    """``utc_now`` as the API sees it in the bench: real time plus the request's own offset."""
    return datetime.now(UTC) + timedelta(seconds=getattr(_local, "offset", 0.0))


@dataclass
class Counter:
    """DynamoDB calls by label and operation, and the items the reads returned."""

    calls: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    items_read: collections.Counter[str] = field(default_factory=collections.Counter)
    index_reads: collections.Counter[str] = field(default_factory=collections.Counter)
    """Items read through secondary indexes (a job's selection of due work)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def before_call(self, model: Any, params: Any, context: dict[str, Any], **_: Any) -> None:
        body = params.get("body", b"") if isinstance(params, dict) else b""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        label = current_label()
        if PROVIDER_KEY in text:
            label += PROVIDER_SUFFIX  # the sandbox provider's own records: a real provider's, not ours
        context["bench_label"] = label
        context["bench_index"] = '"IndexName"' in text
        with self._lock:
            self.calls[label][model.name] += 1

    def after_call(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if model.name not in READS:
            return
        if model.name == "GetItem":
            read = 1 if parsed.get("Item") else 0
        elif model.name in ("Query", "Scan"):
            read = int(parsed.get("Count", 0))
        elif model.name == "BatchGetItem":
            read = sum(len(items) for items in parsed.get("Responses", {}).values())
        else:
            read = sum(1 for response in parsed.get("Responses", []) if response.get("Item"))
        label = context.get("bench_label", current_label())
        with self._lock:
            self.items_read[label] += read
            if context.get("bench_index"):
                self.index_reads[label] += read

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.items_read.clear()
            self.index_reads.clear()

    def snapshot(self) -> dict[str, collections.Counter[str]]:
        with self._lock:
            return {label: collections.Counter(ops) for label, ops in self.calls.items()}


@dataclass
class RouteTimes:
    """Server-side milliseconds per route, from the request's arrival in the app to its answer."""

    times: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, label: str, ms: float) -> None:
        with self._lock:
            self.times[label].append(ms)

    def reset(self) -> None:
        with self._lock:
            self.times.clear()


def _install_counter(counter: Counter, recording: Recording) -> None:
    """Register the counter and the recording on every botocore client made from now on (PynamoDB makes
    its own on first use)."""
    import botocore.session

    original = botocore.session.Session.create_client

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            client.meta.events.register("before-call.dynamodb", counter.before_call)
            client.meta.events.register("after-call.dynamodb", counter.after_call)
            client.meta.events.register("before-parameter-build.dynamodb", recording.before_parameter_build)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def _patch_clocks() -> None:
    """Every ``utc_now`` the app's modules imported becomes :func:`bench_now`."""
    from chalicelib import clock

    original = clock.utc_now
    for name, module in list(sys.modules.items()):
        if (name == "chalicelib" or name.startswith("chalicelib.")) and getattr(module, "utc_now", None) is original:
            module.utc_now = bench_now  # type: ignore[attr-defined]


def _import_everything() -> None:
    """Import the modules the views import lazily, so their ``utc_now`` can be patched before serving."""
    import importlib
    import pkgutil

    import chalicelib

    for info in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
        importlib.import_module(info.name)


class BenchStack:
    """DynamoDB Local (in memory), the tables, and the API on a free port in this process."""

    def __init__(self, **settings: str) -> None:
        self.settings = settings
        self.counter = Counter()
        self.recording = Recording()
        self.route_times = RouteTimes()
        self.url = ""
        self.ddb_port = 0
        self._group: Any = None
        self._server: Any = None

    def __enter__(self) -> BenchStack:
        from devstack import dynamodb_local
        from devstack.processes import ProcessGroup, free_port
        from devstack.stack import HOST, create_tables, local_environment, sandbox_callback_url, stage_environment

        self.ddb_port, api_port = free_port(), free_port()
        self._group = ProcessGroup()
        java = dynamodb_local.check_java()
        jar_dir = dynamodb_local.install(PROJECT_DIR / ".local" / "dynamodb-local")
        dynamodb_local.start(self._group, java, jar_dir, self.ddb_port, None)
        os.environ.update(local_environment(self.ddb_port))
        os.environ.update(stage_environment("local"))
        os.environ["SANDBOX_CALLBACK_URL"] = sandbox_callback_url(api_port)
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # no metric lines in the bench's table
        os.environ.update(self.settings)
        _install_counter(self.counter, self.recording)
        create_tables("local", self.ddb_port)
        self._server = self._serve(HOST, api_port)
        self.url = f"http://{HOST}:{api_port}"
        return self

    def _serve(self, host: str, port: int) -> Any:
        import logging

        from chalice.cli import create_local_server
        from chalice.cli.factory import CLIFactory

        sys.path.insert(0, str(PROJECT_DIR))
        factory = CLIFactory(project_dir=str(PROJECT_DIR), environ=os.environ)
        server = create_local_server(factory, host, port, "local")
        _import_everything()
        _patch_clocks()
        server.app_object.register_middleware(self._middleware, "http")
        from chalice import local

        from devstack.api_server import patch_local_server

        patch_local_server()  # the error shape and no Nagle delay, as make run
        from chalicelib.observability import logger

        # the bench's output is its table: no line per request from chalice local or the app
        logging.getLogger("chalice").setLevel(logging.ERROR)
        logger.setLevel("ERROR")
        local.ChaliceRequestHandler.log_message = lambda *_args, **_kwargs: None  # type: ignore[method-assign]
        threading.Thread(target=server.serve_forever, name="bench-api", daemon=True).start()
        return server

    def _middleware(self, event: Any, get_response: Any) -> Any:
        label = f"{event.method} {event.context.get('resourcePath', event.path)}"
        _local.label = label
        _local.offset = float(event.headers.get(OFFSET_HEADER, 0) or 0)
        started = time.perf_counter()
        try:
            return get_response(event)
        finally:
            self.route_times.add(label, (time.perf_counter() - started) * 1000)
            _local.label, _local.offset = None, 0.0

    def bare_client(self) -> Any:
        """A DynamoDB client of DynamoDB Local without the bench's hooks (the raw reference's)."""
        import boto3

        client = boto3.client("dynamodb")
        client.meta.events.unregister("before-call.dynamodb", self.counter.before_call)
        client.meta.events.unregister("after-call.dynamodb", self.counter.after_call)
        client.meta.events.unregister("before-parameter-build.dynamodb", self.recording.before_parameter_build)
        return client

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.server.shutdown()
        if self._group is not None:
            self._group.stop_all()


def new_key() -> str:
    """An ``Idempotency-Key``."""
    return f"bench-{uuid.uuid4().hex}"
