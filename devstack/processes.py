"""Child processes of the local stack: started in their own process group, their output
prefixed with a name, and stopped as a group so nothing is left holding a port.

Example
-------
>>> group = ProcessGroup()
>>> group.start("api", ["python", "-m", "devstack.api_server"], env={})  # doctest: +SKIP
>>> group.stop_all()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from devstack.errors import StackError

if TYPE_CHECKING:
    from collections.abc import Mapping

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the launcher dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def ensure_port_free(port: int, what: str, setting: str) -> None:
    """Fail with one line when ``port`` is taken (on any interface: DynamoDB Local binds them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as servers do: a TIME-WAIT left by the last run must not count, a listener must
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            raise StackError(
                f"port {port} (for {what}) is already in use; stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another with {setting}=<port>"
            ) from None


def port_is_open(host: str, port: int) -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port nothing listens on right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _relay(name: str, stream: IO[str], sink: IO[str]) -> None:
    for line in stream:
        sink.write(f"[{name}] {line}" if line.endswith("\n") else f"[{name}] {line}\n")
        sink.flush()


@dataclass
class ProcessGroup:
    """The processes one launcher started, in start order."""

    sink: IO[str] = field(default_factory=lambda: sys.stdout)
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], cwd: str | None = None
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, stopped as one
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=_relay, args=(name, process.stdout, self.sink), daemon=True).start()
        self.processes[name] = process
        return process

    def exited(self) -> tuple[str, int] | None:
        """The first process that has exited, with its status, if any."""
        for name, process in self.processes.items():
            status = process.poll()
            if status is not None:
                return name, status
        return None

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every group (newest first), then SIGKILL what is still there."""
        for process in reversed(self.processes.values()):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in reversed(self.processes.values()):
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for process in self.processes.values():
            _signal_group(process, signal.SIGKILL)  # strays left in a group by an exited leader


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
