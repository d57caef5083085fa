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


THROUGHPUT_TARGET = 0.7
SWEEP_READ_FACTOR = 2
SWEEP_GROWTH_TARGET = 1.5
CALLBACK_DEADLINE_MS = 5000
"""WeChat Pay's deadline for our answer to a callback."""


def _row(figure: str, measured: str, reference: str, ratio: str, target: str, ok: bool | None) -> bool:
    verdict = "" if ok is None else ("ok" if ok else "OVER TARGET")
    print(f"| {figure} | {measured} | {reference} | {ratio} | {target} | {verdict} |")
    return ok is not False


def data_plane(flow_count: int, due: int, sizes: tuple[int, ...]) -> bool:
    """The DynamoDB figures (``scripts.bench_dynamodb``); True when every one meets its target."""
    from scripts import bench_dynamodb as ddb
    from scripts import bench_flows as flows
    from scripts.bench_stack import BenchStack

    ok = True
    with BenchStack(**flows.SETTINGS) as stack:
        steps = ddb.calls_per_operation(stack)
        people = flows.Population.create(stack.url, stack.ddb_port, doctors=15, patients=4, capacity=20)
        measured = ddb.throughput(stack, flow_count, people)
        swept = ddb.sweeps(stack, people, due, sizes)
        callbacks = ddb.callback_times(stack)
        scans = {label: ops["Scan"] for label, ops in stack.counter.snapshot().items() if ops.get("Scan")}
    for name in ddb.ORDER:
        calls = steps[name]
        minimum, why = ddb.DESIGN_MINIMUM[name]
        kinds = ", ".join(f"{op} {count}" for op, count in sorted(calls.items()))
        ok &= _row(
            f"DynamoDB calls: {name} ({kinds})",
            str(sum(calls.values())),
            f"design minimum {minimum}: {why}",
            f"{sum(calls.values()) / minimum:.1f}",
            "no Scan",
            "Scan" not in calls,
        )
    ok &= _row("Scans in the whole run (requests and jobs)", str(sum(scans.values())), "", "", "0", not scans)
    ratio = measured.achieved / measured.allowed
    mix = ", ".join(f"{op} {count:.1f}" for op, count in sorted(measured.calls_per_flow.items()))
    raw = ", ".join(f"{op} {ms:.1f} ms" for op, ms in sorted(measured.raw.median_ms.items()))
    if measured.raw.failed:
        raw += "; refused on replay: " + ", ".join(f"{op} {n}" for op, n in sorted(measured.raw.failed.items()))
    ok &= _row(
        f"complete flows, one after another ({measured.flows}, after as many to warm up; calls per flow: {mix})",
        f"{measured.achieved:.2f} flows/s",
        f"the same requests replayed alone allow {measured.allowed:.2f} flows/s (median {raw})",
        f"{ratio:.2f}",
        f">= {THROUGHPUT_TARGET}",
        ratio >= THROUGHPUT_TARGET,
    )
    by_job: dict[str, list[ddb.Sweep]] = {}
    for sweep in swept:
        by_job.setdefault(sweep.job, []).append(sweep)
        ok &= _row(
            f"sweep {sweep.job}: {sweep.due} due among {sweep.others:,} others, items selected (the due index)",
            str(sweep.selected),
            f"{SWEEP_READ_FACTOR} x due = {SWEEP_READ_FACTOR * sweep.due}",
            f"{sweep.selected / sweep.due:.2f} per due",
            f"<= {SWEEP_READ_FACTOR}",
            sweep.selected <= SWEEP_READ_FACTOR * sweep.due,
        )
        _row(
            f"sweep {sweep.job}: items read in all, the work on each due item included",
            str(sweep.items_read),
            f"{sweep.due} due",
            f"{sweep.items_read / sweep.due:.2f} per due",
            "",
            None,
        )
    for job, runs in by_job.items():
        small, large = runs[0], runs[-1]
        growth = large.seconds / small.seconds
        ok &= _row(
            f"sweep {job}: time with {large.others:,} others",
            f"{large.seconds:.2f} s",
            f"{small.seconds:.2f} s with {small.others:,} others",
            f"{growth:.2f}",
            f"<= {SWEEP_GROWTH_TARGET}",
            growth <= SWEEP_GROWTH_TARGET,
        )
    p50, p99 = ddb.percentile(callbacks, 0.5), ddb.percentile(callbacks, 0.99)
    ok &= _row(
        f"provider callback, arrival to answer ({len(callbacks)} callbacks, server side)",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        f"WeChat Pay deadline {CALLBACK_DEADLINE_MS} ms",
        f"{p99 / CALLBACK_DEADLINE_MS:.3f}",
        "p99 well under",
        p99 <= CALLBACK_DEADLINE_MS / 10,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the project's figures.")
    parser.add_argument("--runs", type=int, default=15, help="processes per cold-start median (at least 9)")
    parser.add_argument("--flows", type=int, default=40, help="complete flows measured (after as many to warm up)")
    parser.add_argument("--due", type=int, default=100, help="due items per sweep")
    parser.add_argument("--sizes", default="1000,100000", help="other items per sweep, smallest first")
    parser.add_argument("--skip-package", action="store_true", help="leave out the artefact size (chalice package)")
    args = parser.parse_args(argv)
    runs = max(9, args.runs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| figure | measured | reference | ratio | target | verdict |")
    print("|---|---:|---:|---:|---:|---|")
    app_ms, floor_ms = cold_start(runs)
    ratio = app_ms / floor_ms
    ok = _row(
        f"cold start: import app (median of {runs})",
        f"{app_ms:.1f} ms",
        f"floor app {floor_ms:.1f} ms",
        f"{ratio:.2f}",
        f"<= {COLD_START_TARGET}",
        ratio <= COLD_START_TARGET,
    )
    if not args.skip_package:  # before the data plane, which points this process at DynamoDB Local
        with tempfile.TemporaryDirectory() as out:
            for name, size in artefact_sizes(Path(out) / "package").items():
                limit = f"Lambda limit {ARTEFACT_LIMIT_MB:g} MB zipped"
                ok &= _row(f"artefact: {name} (prod)", f"{size:.1f} MB", limit, "", "", size <= ARTEFACT_LIMIT_MB)
    ok &= data_plane(args.flows, args.due, tuple(int(size) for size in args.sizes.split(",")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
