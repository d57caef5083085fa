"""What ``make run`` promises a user: data survives a restart, Ctrl-C leaves nothing
behind, and a missing prerequisite is one clear line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from devstack.processes import free_port, port_is_open
from devstack.stack import local_environment
from tests.e2e.conftest import PROJECT_DIR, Stack, start_stack, stop_stack


def _launch_failing(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "devstack.stack", *argv]
    return subprocess.run(
        command, cwd=PROJECT_DIR, env=env or dict(os.environ), capture_output=True, text=True, timeout=60
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]


def test_data_survives_a_restart_and_ctrl_c_frees_the_ports(tmp_path: Path) -> None:
    data_dir = tmp_path / "dynamodb"
    # GIVEN a stack with its data on disk and an item written to it
    first = start_stack(tmp_path, "--data-dir", str(data_dir))
    api_port = int(first.base_url.rsplit(":", 1)[1])
    item = {"pk": {"S": "USER#restart"}, "sk": {"S": "PROFILE"}, "type": {"S": "probe"}}
    first.dynamodb().put_item(TableName="anes-local-users", Item=item)
    # WHEN it is stopped with SIGINT (Ctrl-C)
    assert stop_stack(first) == 0
    # THEN nothing listens on its ports any more
    assert not port_is_open("127.0.0.1", api_port)
    assert not port_is_open("127.0.0.1", first.ddb_port)
    # AND after starting again the item is still there
    second = start_stack(tmp_path, "--data-dir", str(data_dir))
    try:
        key = {"pk": item["pk"], "sk": item["sk"]}
        assert second.dynamodb().get_item(TableName="anes-local-users", Key=key)["Item"] == item
    finally:
        stop_stack(second)


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = _launch_failing("--ddb-port", str(free_port()), "run", "--api-port", str(taken))
    assert result.returncode == 1
    (line,) = _error_lines(result)
    assert f"port {taken}" in line and "API_PORT" in line
    assert "Traceback" not in result.stderr


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    # GIVEN a PATH with python's folder but no java
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = _launch_failing("run", "--api-port", str(free_port()), env=env)
    assert result.returncode == 1
    (line,) = _error_lines(result)
    assert "Java 17+" in line and "install" in line


def test_a_failed_npm_fetch_is_one_clear_line(tmp_path: Path) -> None:
    # GIVEN an npm that fails, and no DynamoDB Local installed yet
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    npm = fake_bin / "npm"
    npm.write_text("#!/bin/sh\necho 'npm ERR! network unreachable' >&2\nexit 1\n")
    npm.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    argv = ["--ddb-port", str(free_port()), "run", "--api-port", str(free_port())]
    result = _launch_failing(*argv, "--install-dir", str(tmp_path / "ddb"), env=env)
    assert result.returncode == 1
    (line,) = _error_lines(result)
    assert "npm could not fetch amplify-dynamodb-simulator" in line and "network unreachable" in line


def test_health_is_503_in_the_error_shape_when_dynamodb_is_down(tmp_path: Path) -> None:
    # GIVEN the API pointed at a DynamoDB endpoint where nothing listens
    api_port, dead_port = free_port(), free_port()
    env = {**local_environment(dead_port), "STAGE": "local"}
    argv = [sys.executable, "-m", "devstack.api_server", "--stage", "local", "--port", str(api_port)]
    server = subprocess.Popen(argv, cwd=PROJECT_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_is_open("127.0.0.1", api_port):
            assert time.monotonic() < deadline and server.poll() is None, "the API did not start"
            time.sleep(0.2)
        response = requests.get(f"http://127.0.0.1:{api_port}/health", timeout=30)
    finally:
        server.terminate()
        server.wait(10)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "dependency_unavailable"
    assert error["details"]["dependency"] == "dynamodb"
    assert error["request_id"] == response.headers["X-Request-Id"]


def test_check_ledger_reads_the_running_stacks_ledger(stack: Stack) -> None:
    # GIVEN the running stack; WHEN the operator command audits its ledger
    result = subprocess.run(
        [sys.executable, "-m", "devstack.stack", "--ddb-port", str(stack.ddb_port), "check-ledger"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # THEN it reads it and finds nothing wrong
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ledger: ok"


def test_check_ledger_without_dynamodb_local_is_one_clear_line() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "devstack.stack", "--ddb-port", str(port), "check-ledger"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert (
        result.stdout.strip() == f"error: DynamoDB Local is not running on port {port}; start the stack with `make run`"
    )
