"""DynamoDB Local: fetch it from npm, start it with Java, wait until it answers.

The npm package ``amplify-dynamodb-simulator`` bundles ``DynamoDBLocal.jar``. Only the
jar is needed, not the package's Node.js wrapper (and its ~300 MB of dependencies), so
the package is fetched with ``npm pack`` into a git-ignored folder, checked against its
pinned integrity, and unpacked there.

Example
-------
>>> jar_dir = install(Path(".local/dynamodb-local"))  # doctest: +SKIP
>>> start(ProcessGroup(), check_java(), jar_dir, 8001, Path(".local/dynamodb"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from typing import TYPE_CHECKING

from devstack.errors import StackError
from devstack.processes import ProcessGroup, port_is_open

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

PACKAGE = "amplify-dynamodb-simulator"
VERSION = "2.9.30"
INTEGRITY = "sha512-xTeeRLvzEfqyd5lh3bH4c0kHvSHHmmhD5ZDsHFKAQ5g2Zl6JqlFdutaQhCLHzxEp6Ry1o7TB6niIoXuQAnSewQ=="
MIN_JAVA = 17


def emulator_dir(install_dir: Path) -> Path:
    """Where the jar and its native libraries are once installed."""
    return install_dir / VERSION / "package" / "emulator"


def install(install_dir: Path) -> Path:
    """Fetch and unpack the pinned package unless it is already there; return the jar's folder."""
    target = emulator_dir(install_dir)
    if (target / "DynamoDBLocal.jar").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise StackError("npm is not on PATH; install Node.js with npm (needed once, to fetch DynamoDB Local)")
    staging = install_dir / f"{VERSION}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination", str(staging)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackError(
            f"npm could not fetch {PACKAGE}@{VERSION} (exit {result.returncode}: {last}); "
            "check access to the npm registry and run again"
        )
    packed = json.loads(result.stdout)[0]
    if packed.get("integrity") != INTEGRITY:
        raise StackError(f"{PACKAGE}@{VERSION} from npm does not match its pinned integrity; refusing to run it")
    with tarfile.open(staging / packed["filename"]) as archive:
        archive.extractall(staging, filter="data")
    (staging / packed["filename"]).unlink()
    final = install_dir / VERSION
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # the folder appears whole or not at all
    return target


def check_java() -> str:
    """Return the java executable, or fail with how to get Java 17+."""
    java = shutil.which("java")
    if java is None:
        raise StackError(
            f"Java {MIN_JAVA}+ is required to run DynamoDB Local but `java` is not on PATH; "
            "install a JRE (e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    banner = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', banner)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StackError(
            f"Java {MIN_JAVA}+ is required to run DynamoDB Local, found {major or 'unknown'}; install a newer JRE"
        )
    return java


def command(java: str, jar_dir: Path, port: int, data_dir: Path | None) -> list[str]:
    """The java command line; ``data_dir`` None keeps the data in memory."""
    storage = ["-inMemory"] if data_dir is None else ["-dbPath", str(data_dir)]
    return [
        java,
        f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
        "-jar",
        str(jar_dir / "DynamoDBLocal.jar"),
        "-sharedDb",
        *storage,
        "-port",
        str(port),
        "-disableTelemetry",
    ]


def start(group: ProcessGroup, java: str, jar_dir: Path, port: int, data_dir: Path | None) -> subprocess.Popen[str]:
    """Start DynamoDB Local in ``group`` and wait until it listens.

    Its working folder is the jar's (it drops a metadata file there when in memory).
    """
    process = group.start("dynamodb", command(java, jar_dir, port, data_dir), os.environ, cwd=str(jar_dir))
    wait_until_listening("127.0.0.1", port, 60, lambda: process.poll() is None)
    return process


def wait_until_listening(host: str, port: int, timeout: float, is_alive: Callable[[], bool]) -> None:
    """Wait until DynamoDB Local accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive():
            raise StackError(f"DynamoDB Local exited while starting on port {port}; see its output above")
        if port_is_open(host, port):
            return
        time.sleep(0.2)
    raise StackError(f"DynamoDB Local did not open port {port} within {timeout:.0f} s")
