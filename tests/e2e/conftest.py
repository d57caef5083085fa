"""End-to-end tests: HTTP against the whole stack, started exactly as ``make run`` starts it.

The session fixture runs ``python -m devstack.stack run`` on free ports with DynamoDB Local
in memory and schedules sped up 60 times, and stops it (SIGINT, like Ctrl-C) at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from devstack.processes import free_port
from devstack.stack import local_environment

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.doubles.loopback import Doubles

PROJECT_DIR = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """A running stack: its URLs and its launcher process."""

    base_url: str
    ddb_port: int
    process: subprocess.Popen[str]
    log_path: Path

    def dynamodb(self):
        import boto3

        env = local_environment(self.ddb_port, base={})
        return boto3.client(
            "dynamodb",
            endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"],
            region_name="cn-north-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )


def start_stack(
    tmp: Path, *extra: str, speedup: str = "60", settings: dict[str, str] | None = None, api_port: int = 0
) -> Stack:
    """Start the launcher (with ``settings`` as extra environment); return once ``GET /health`` answers 200."""
    api_port, ddb_port = api_port or free_port(), free_port()
    log_path = tmp / "stack.log"
    env = {
        **os.environ,
        "SCHEDULE_SPEEDUP": speedup,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        **(settings or {}),
    }
    argv = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(ddb_port), "run", "--api-port", str(api_port)]
    argv += ["--state-dir", str(tmp / "pump"), *extra]
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    stack = Stack(f"http://127.0.0.1:{api_port}", ddb_port, process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stack exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{stack.base_url}/health", timeout=2).status_code == 200:
                return stack
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    stop_stack(stack)
    raise RuntimeError(f"the stack did not come up:\n{log_path.read_text()}")


def stop_stack(stack: Stack) -> int:
    """Ctrl-C the launcher and wait for it."""
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
    try:
        return stack.process.wait(30)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"), "--in-memory")
    yield running
    stop_stack(running)


@pytest.fixture(scope="session")
def api(stack: Stack) -> str:
    return stack.base_url


@pytest.fixture(scope="session")
def channel_doubles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doubles]:
    """WeChat Pay, Alipay and UnionPay doubles on loopback ports.

    Each generates its merchant's keys offline; ``flow_stack`` is configured with them, so the
    stack runs the production adapters against the doubles (``PAYMENT_KEYS_DIR`` holds our keys).
    """
    from devstack.doubles.loopback import start_doubles

    doubles = start_doubles(tmp_path_factory.mktemp("payment-keys"))
    yield doubles
    doubles.stop()


@pytest.fixture(scope="session")
def flow_stack(tmp_path_factory: pytest.TempPathFactory, channel_doubles: Doubles) -> Iterator[Stack]:
    """A stack for the money flows: no answer margin and a one-minute payment window (invitations minutes
    ahead); the sandbox and the three live channels, each live one against its double."""
    api_port = free_port()
    settings = {"PAYMENT_WINDOW_MINUTES": "1", "RESPONSE_MARGIN_HOURS": "0"}
    settings.update(channel_doubles.settings(f"http://127.0.0.1:{api_port}"))
    running = start_stack(tmp_path_factory.mktemp("flow-stack"), "--in-memory", settings=settings, api_port=api_port)
    yield running
    stop_stack(running)


ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}
ADMIN_PASSWORD = "admin-pass-e2e-1"


def phone_number() -> str:
    return f"139{uuid.uuid4().int % 10**8:08d}"


@dataclass
class Caller:
    """Calls the API as one user; checks the status, the request id and, on errors, the error shape."""

    api: str
    token: str | None = None

    def call(
        self,
        method: str,
        path: str,
        status: int,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = requests.request(method, f"{self.api}{path}", json=body, params=params, headers=headers, timeout=30)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        request_id = response.headers.get("X-Request-Id")
        assert request_id, f"{method} {path} has no X-Request-Id"
        answer: dict[str, Any] = response.json() if response.content else {}
        if status >= 400:
            assert set(answer) == {"error"}, answer
            assert set(answer["error"]) == ERROR_KEYS, answer
            assert answer["error"]["request_id"] == request_id
            assert isinstance(answer["error"]["details"], dict)
            if code is not None:
                assert answer["error"]["code"] == code, answer
        return answer


def make_admin(stack: Stack, phone: str) -> None:
    """The operator command, against the stack's DynamoDB Local."""
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(stack.ddb_port)]
    command += ["admin", "--phone", phone, "--name", "Ops"]
    env = {**os.environ, "ADMIN_PASSWORD": ADMIN_PASSWORD}
    result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "created" in result.stdout
