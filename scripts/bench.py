"""``make bench``: figures measured on this machine, each next to its reference from the same run.

Cold start: a fresh Python process doing what Lambda's init does (``import app``) against
the floor app (``scripts/floor_app.py``), run alternately so machine noise hits both alike;
median of ``--runs`` processes each. Target: app/floor <= 1.3.

Run: ``make bench`` (or ``python -m scripts.bench --runs 15``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
COLD_START_TARGET = 1.3


def lambda_like_environment(stage: str = "dev") -> dict[str, str]:
    """The stage's variables plus what Lambda sets, with no AWS endpoint overrides."""
    config = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_ENDPOINT_URL")}
    env.update(config.get("environment_variables", {}))
    env.update(config["stages"][stage].get("environment_variables", {}))
    env.update(
        {
            "AWS_DEFAULT_REGION": "cn-north-1",
            "AWS_REGION": "cn-north-1",
            "LAMBDA_TASK_ROOT": str(PROJECT_DIR),
            "AWS_LAMBDA_FUNCTION_NAME": "anes-dev",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def time_import(module: str, path: Path, env: dict[str, str]) -> float:
    """Milliseconds a fresh interpreter spends importing ``module`` (Lambda's init), timed inside it."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=path,
        env={**env, "PYTHONPATH": str(path)},
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip().splitlines()[-1]) * 1000


def cold_start(runs: int) -> tuple[float, float]:
    """Median import milliseconds of the app and of the floor app, measured alternately."""
    env = lambda_like_environment()
    time_import("app", PROJECT_DIR, env)  # warm the page cache and bytecode once
    time_import("floor_app", PROJECT_DIR / "scripts", env)
    app_times, floor_times = [], []
    for _ in range(runs):
        app_times.append(time_import("app", PROJECT_DIR, env))
        floor_times.append(time_import("floor_app", PROJECT_DIR / "scripts", env))
    return statistics.median(app_times), statistics.median(floor_times)


ARTEFACT_LIMIT_MB = 50.0
"""Lambda's limit for a zipped deployment package (function code or a layer)."""


def artefact_sizes(out: Path) -> dict[str, float]:
    """``chalice package --stage prod``: megabytes of each zip (function code, and the shared layer)."""
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "cn-north-1")}
    chalice = Path(sys.executable).with_name("chalice")
    subprocess.run(
        [str(chalice), "package", "--stage", "prod", str(out)],
        cwd=PROJECT_DIR,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return {path.name: path.stat().st_size / 1_048_576 for path in sorted(out.glob("*.zip"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the project's figures.")
    parser.add_argument("--runs", type=int, default=15, help="processes per cold-start median (at least 9)")
    args = parser.parse_args(argv)
    runs = max(9, args.runs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    app_ms, floor_ms = cold_start(runs)
    ratio = app_ms / floor_ms
    verdict = "ok" if ratio <= COLD_START_TARGET else "OVER TARGET"
    print()
    print("| figure | measured | reference | ratio | target | verdict |")
    print("|---|---:|---:|---:|---:|---|")
    print(
        f"| cold start: import app (median of {runs}) | {app_ms:.1f} ms | floor app {floor_ms:.1f} ms "
        f"| {ratio:.2f} | <= {COLD_START_TARGET} | {verdict} |"
    )
    with tempfile.TemporaryDirectory() as out:
        for name, size in artefact_sizes(Path(out) / "package").items():
            fits = "ok" if size <= ARTEFACT_LIMIT_MB else "OVER LIMIT"
            limit = f"Lambda limit {ARTEFACT_LIMIT_MB:g} MB zipped"
            print(f"| artefact: {name} (prod) | {size:.1f} MB | {limit} | | | {fits} |")
    return 0 if ratio <= COLD_START_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
