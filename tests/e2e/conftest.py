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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from devstack.processes import free_port
from devstack.stack import local_environment

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def start_stack(tmp: Path, *extra: str, speedup: str = "60") -> Stack:
    """Start the launcher; return once ``GET /health`` answers 200."""
    api_port, ddb_port = free_port(), free_port()
    log_path = tmp / "stack.log"
    env = {**os.environ, "SCHEDULE_SPEEDUP": speedup, "PYTHONUNBUFFERED": "1"}
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
