"""``make run``: the whole product on this machine, stopped as a whole by Ctrl-C.

Starts DynamoDB Local (data on disk), creates the tables from the models, starts the API
(``chalice local --stage local``) and the event pump, prints what runs where, and waits.
SIGINT or SIGTERM stops every process it started; so does any of them exiting.

Commands
--------
``python -m devstack.stack run``          the stack (``make run``)
``python -m devstack.stack job NAME``     run one scheduled function now against it (``make job``)
``python -m devstack.stack tables``       create missing tables in a running DynamoDB Local

Example
-------
>>> env = local_environment(ddb_port=8001)
>>> env["AWS_ENDPOINT_URL_DYNAMODB"]
'http://127.0.0.1:8001'
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devstack import dynamodb_local
from devstack.errors import StackError
from devstack.processes import ProcessGroup, ensure_port_free

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOCAL_DIR = PROJECT_DIR / ".local"
HOST = "127.0.0.1"


def stage_environment(stage: str) -> dict[str, str]:
    """The stage's variables from ``.chalice/config.json``, merged as Chalice merges them."""
    config = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    if stage not in config.get("stages", {}):
        raise StackError(f"stage {stage!r} is not in .chalice/config.json")
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def local_environment(ddb_port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that points every AWS SDK in a process at DynamoDB Local."""
    endpoint = f"http://{HOST}:{ddb_port}"
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": endpoint,
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "cn-north-1"),
            # DynamoDB Local accepts any alphanumeric key; -sharedDb ignores it.
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    return env


def sandbox_callback_url(api_port: int) -> str:
    """Where the sandbox payment provider posts its callbacks: our own API."""
    return f"http://{HOST}:{api_port}/v1/payments/callbacks/sandbox"


def create_tables(stage: str, ddb_port: int) -> list[str]:
    """Create the stage's missing tables in DynamoDB Local and seed the hospital directory (in this process)."""
    os.environ.update(local_environment(ddb_port))
    os.environ.update(stage_environment(stage))
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import TableDriftError, ensure_tables

    deadline = time.monotonic() + 30
    while True:
        try:
            lines = ensure_tables(TABLE_MODELS)
            break
        except TableDriftError as error:
            raise StackError(f"{error}; delete the local data with `make clean` and start again") from error
        except Exception as error:  # DynamoDB Local listens a moment before it serves
            if time.monotonic() > deadline:
                raise StackError(f"could not create the tables in DynamoDB Local: {error}") from error
            time.sleep(0.3)
    from chalicelib.clock import utc_now
    from chalicelib.directory.hospitals import seed_directory

    added = seed_directory(utc_now())
    return [*lines, f"hospital directory: {added} hospitals added from the seed file"]


class StartupInterruptedError(Exception):
    """Ctrl-C arrived while the stack was starting."""


def wait_for_api(port: int, group: ProcessGroup, stop: threading.Event, timeout: float = 60.0) -> None:
    """Wait until the API answers ``GET /health`` with any HTTP status."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():
            raise StartupInterruptedError
        exited = group.exited()
        if exited:
            name, status = exited
            raise StackError(f"{name} exited with status {status} while starting; see its output above")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise StackError(f"the API did not answer on port {port} within {timeout:.0f} s")


def _start_doubles(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """WeChat Pay, Alipay and UnionPay doubles in this process, with fresh keys; the API is pointed at them."""
    from devstack.doubles.loopback import start_doubles

    keys_dir = args.state_dir / "payment-keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    doubles = start_doubles(keys_dir)
    env.update(doubles.settings(f"http://{HOST}:{args.api_port}"))
    return doubles.urls()


def start_stack(args: argparse.Namespace, group: ProcessGroup, stop: threading.Event) -> None:
    """Start every part; raise StackError or StartupInterruptedError (the caller then stops what started)."""

    def checkpoint() -> None:
        if stop.is_set():
            raise StartupInterruptedError

    java = dynamodb_local.check_java()
    ensure_port_free(args.api_port, "the API", "API_PORT")
    ensure_port_free(args.ddb_port, "DynamoDB Local", "DDB_PORT")
    jar_dir = dynamodb_local.install(args.install_dir)
    checkpoint()
    data_dir = None if args.in_memory else args.data_dir
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    dynamodb_local.start(group, java, jar_dir, args.ddb_port, data_dir)
    checkpoint()
    for line in create_tables(args.stage, args.ddb_port):
        print(f"[tables] {line}", flush=True)
    checkpoint()
    env = local_environment(args.ddb_port)
    env["SANDBOX_CALLBACK_URL"] = sandbox_callback_url(args.api_port)
    doubles = _start_doubles(args, env) if args.with_doubles else {}
    python = sys.executable
    api = ["-m", "devstack.api_server", "--stage", args.stage, "--host", HOST, "--port", str(args.api_port)]
    group.start("api", [python, *api], env, cwd=str(PROJECT_DIR))
    wait_for_api(args.api_port, group, stop)
    checkpoint()
    pump = ["-m", "devstack.event_pump", "--stage", args.stage, "--state-dir", str(args.state_dir)]
    group.start("pump", [python, *pump], env, cwd=str(PROJECT_DIR))
    storage = "in memory" if data_dir is None else f"data in {data_dir}"
    print(
        "\n".join(
            [
                "",
                f"Local stack is up (stage {args.stage}):",
                f"  API             http://{HOST}:{args.api_port}   (chalice local; GET /health, GET /openapi.json)",
                f"  DynamoDB Local  http://{HOST}:{args.ddb_port}   ({storage})",
                f"  event pump      schedules and stream consumers (state in {args.state_dir})",
                *(f"  {channel:<15} provider double at {url}" for channel, url in doubles.items()),
                *(
                    [f"  DynamoDB faults {env['DDB_FAULTS']}   (devstack.faults, in the API and the pump)"]
                    if env.get("DDB_FAULTS")
                    else []
                ),
                "Press Ctrl-C to stop everything.",
                "",
            ]
        ),
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    group = ProcessGroup()
    stop = threading.Event()
    reason: dict[str, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        reason.setdefault("signal", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    parent = os.getppid()
    try:
        start_stack(args, group, stop)
        while not stop.wait(0.5):
            if os.getppid() != parent:  # whoever started us (make, a shell) is gone
                break
            exited = group.exited()
            if exited:
                print(f"error: {exited[0]} exited with status {exited[1]}; stopping the stack", file=sys.stderr)
                status = 1
                break
    except StackError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        status = 1
    except (StartupInterruptedError, KeyboardInterrupt):
        pass
    finally:
        if group.processes:
            print("stopping: " + ", ".join(reversed(group.processes)), flush=True)
        group.stop_all()
    return status


def use_stage(args: argparse.Namespace) -> bool:
    """Point this process at the stage's tables: the running DynamoDB Local for ``local``, AWS otherwise."""
    if args.stage == "local":
        from devstack.processes import port_is_open

        if not port_is_open(HOST, args.ddb_port):
            print(f"error: DynamoDB Local is not running on port {args.ddb_port}; start the stack with `make run`")
            return False
        os.environ.update(local_environment(args.ddb_port))
        api_port = getattr(args, "api_port", int(os.environ.get("API_PORT", "8000")))
        os.environ["SANDBOX_CALLBACK_URL"] = sandbox_callback_url(api_port)
    os.environ.update(stage_environment(args.stage))
    return True


def job(args: argparse.Namespace) -> int:
    if not use_stage(args):
        return 1
    from devstack.event_pump import main as pump_main

    return pump_main(["--stage", args.stage, "--job", args.name])


def tables(args: argparse.Namespace) -> int:
    try:
        for line in create_tables(args.stage, args.ddb_port):
            print(line)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def admin(args: argparse.Namespace) -> int:
    """Create an admin account (the only way to make one); the password is asked for, or read from ADMIN_PASSWORD."""
    import getpass

    if not use_stage(args):
        return 1
    password = os.environ.get("ADMIN_PASSWORD") or getpass.getpass("password for the new admin: ")
    if "ADMIN_PASSWORD" not in os.environ and getpass.getpass("again: ") != password:
        print("error: the passwords differ", file=sys.stderr)
        return 1
    from chalicelib.accounts.identifiers import mainland_mobile
    from chalicelib.accounts.signin import create_admin
    from chalicelib.clock import utc_now
    from chalicelib.errors import ApiError

    if len(password) < 8:
        print("error: the password needs at least 8 characters", file=sys.stderr)
        return 1
    try:
        user_id = create_admin(mainland_mobile(args.phone), password, args.name, utc_now())
    except ApiError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"admin {args.name} created: user_id {user_id}; sign in with POST /v1/auth/login")
    return 0


def check_ledger(args: argparse.Namespace) -> int:
    """Run the ledger's invariants over the stage's whole ledger; exit 1 on any violation."""
    if not use_stage(args):
        return 1
    from chalicelib.ledger.audit import check_ledger as audit

    report = audit()
    print(f"ledger: {report.transactions} transactions, {report.accounts} accounts, {report.entries} entries")
    for violation in report.violations:
        print(f"violation: {violation}")
    for note in report.attention:
        print(f"attention: {note}")
    print("ledger: ok" if report.ok else f"ledger: {len(report.violations)} violations")
    return 0 if report.ok else 1


def recompute_stars(args: argparse.Namespace) -> int:
    """Rebuild every doctor's reputation from the source items; exit 1 when a stored one differs."""
    if not use_stage(args):
        return 1
    from chalicelib.clock import utc_now
    from chalicelib.models.users import Account
    from chalicelib.reputation.audit import recompute

    # every doctor, whatever their verification status: an operator's audit reads everything
    doctors = Account.scan(Account.role == "doctor", consistent_read=True)
    report = recompute(doctors, fix=args.fix, now=utc_now())
    for found in report.differences:
        fields = ", ".join(
            f"{name} {change['stored']} -> {change['rebuilt']}" for name, change in found["fields"].items()
        )
        print(f"differs: doctor {found['doctor_id']}: {fields}")
    print(
        f"stars: {report.doctors} doctors, {len(report.differences)} differ"
        + (f", {report.fixed} fixed" if args.fix else "")
    )
    return 0 if report.ok or (args.fix and report.fixed == len(report.differences)) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="local")
    parser.add_argument("--ddb-port", type=int, default=int(os.environ.get("DDB_PORT", "8001")))
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start the whole stack")
    run_parser.add_argument("--api-port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    run_parser.add_argument("--data-dir", type=Path, default=LOCAL_DIR / "dynamodb")
    run_parser.add_argument("--in-memory", action="store_true", help="keep DynamoDB Local's data in memory")
    run_parser.add_argument("--state-dir", type=Path, default=LOCAL_DIR / "pump")
    run_parser.add_argument("--install-dir", type=Path, default=LOCAL_DIR / "dynamodb-local")
    run_parser.add_argument(
        "--with-doubles", action="store_true", help="also offer wechat, alipay and unionpay, played by local doubles"
    )
    run_parser.set_defaults(handler=run)
    job_parser = commands.add_parser("job", help="run one scheduled function now")
    job_parser.add_argument("name")
    job_parser.add_argument("--api-port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    job_parser.set_defaults(handler=job)
    commands.add_parser("tables", help="create missing tables, seed the directory").set_defaults(handler=tables)
    admin_parser = commands.add_parser("admin", help="create an admin account")
    admin_parser.add_argument("--phone", required=True)
    admin_parser.add_argument("--name", required=True)
    admin_parser.set_defaults(handler=admin)
    commands.add_parser("check-ledger", help="check the ledger's invariants").set_defaults(handler=check_ledger)
    stars_parser = commands.add_parser("recompute-stars", help="rebuild every doctor's reputation and compare")
    stars_parser.add_argument("--fix", action="store_true", help="write the rebuilt reputation where it differs")
    stars_parser.set_defaults(handler=recompute_stars)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
