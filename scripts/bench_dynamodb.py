"""The bench's DynamoDB figures: calls per operation, flow throughput vs the raw rate, sweeps, callbacks.

All against one DynamoDB Local in memory and the API served in this process
(``bench_stack.BenchStack``), so each figure sits next to its reference from the same run:

- **calls per operation**: one complete flow, each step's DynamoDB calls counted by a
  botocore hook, next to the fewest the design needs (``DESIGN_MINIMUM``);
- **throughput**: complete flows one after another, against the rate DynamoDB Local itself
  allows for the same call mix (the flows' own requests replayed alone: ``bench_replay``);
- **sweeps**: the expiry job (which refunds) and the payout job with 100 due items among
  1,000 and then 100,000 others, items read per run and time;
- **callbacks**: server-side milliseconds from a provider callback's arrival to its answer.

Run: ``make bench`` (``python -m scripts.bench``).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from scripts import bench_flows as flows
from scripts.bench_replay import Replay, replay
from scripts.bench_stack import PROVIDER_SUFFIX, BenchStack, labelled

if TYPE_CHECKING:
    from collections.abc import Iterator

DESIGN_MINIMUM: dict[str, tuple[int, str]] = {
    "register": (2, "the account and its phone number's claim, in one transaction; the refresh token"),
    "search: hospitals": (1, "a Query on the pinyin/name index"),
    "search: a hospital's anesthesiologists": (1, "a Query on the hospital's star-ordered index"),
    "storefront": (2, "the profile with its aggregates; a Query for the latest reviews"),
    "invite": (5, "idempotency claim and record; the doctor; the day; the invitation (conditional)"),
    "payment order": (4, "idempotency claim and record; the invitation; order + link in one transaction"),
    "pay callback": (2, "the order; one transaction: dedupe mark, order, invitation, journal, balances"),
    "accept": (4, "idempotency claim and record; the invitation; one transaction with the posting"),
    "complete": (4, "idempotency claim and record; the invitation; one transaction"),
    "confirm": (4, "idempotency claim and record; the invitation; one transaction with the release"),
    "review": (2, "the invitation; review + its mark in one transaction"),
    "tip order": (4, "as a payment order"),
    "tip callback": (2, "as a pay callback"),
    "withdraw": (5, "idempotency claim and record; the payout account; the receivable; one transaction"),
}
"""The fewest DynamoDB calls each operation can make under the design (its tables, its guarantees)."""

ORDER = list(DESIGN_MINIMUM)


def _ours(diff: dict[str, collections.Counter[str]]) -> collections.Counter[str]:
    """The calls our code made: the sandbox provider's own records and its pay button are a provider's work."""
    total: collections.Counter[str] = collections.Counter()
    for label, ops in diff.items():
        if not label.endswith(PROVIDER_SUFFIX) and not label.startswith("POST /v1/sandbox/"):
            total.update(ops)
    return total


def _diff(after: dict[str, collections.Counter[str]], before: dict[str, collections.Counter[str]]) -> dict[str, Any]:
    return {label: ops - before.get(label, collections.Counter()) for label, ops in after.items()}


def calls_per_operation(stack: BenchStack) -> dict[str, collections.Counter[str]]:
    """One complete flow (and a sign-up and a hospital search): each step's DynamoDB calls by kind."""
    people = flows.Population.create(stack.url, stack.ddb_port, doctors=1)
    steps: dict[str, collections.Counter[str]] = {}

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        before = stack.counter.snapshot()
        yield
        steps[name] = _ours(_diff(stack.counter.snapshot(), before))

    with step("register"):
        flows.register(stack.url, "patient")
    with step("search: hospitals"):
        flows.Caller(stack.url).call("GET", "/v1/hospitals", 200, q="xh")
    flows.complete_flow(people.patients[0], people.doctors[0], people.hospital_id, withdraw=True, step=step)
    return steps


@dataclass
class Throughput:
    flows: int
    seconds: float
    calls_per_flow: dict[str, float]
    raw: Replay
    """The same requests replayed alone (``bench_replay``)."""

    @property
    def achieved(self) -> float:
        return self.flows / self.seconds

    @property
    def allowed(self) -> float:
        """Flows/s that DynamoDB Local alone allows for this call mix: the flows' requests at their replayed time."""
        return self.flows / self.raw.seconds


def throughput(stack: BenchStack, count: int, people: flows.Population) -> Throughput:
    """``count`` complete flows one after another, then their requests replayed alone.

    As many flows go first to warm up: DynamoDB Local is a JVM, whose compiler works through the
    first thousands of requests (on both cores, beside the API); measured cold, the flows would pay
    for it and the replay, coming later, would not. One measured round only: DynamoDB Local keeps
    every stream record in memory and its writes slow down as they pile up, so later rounds would
    each find the store slower than the round before (the flows' tables have streams, and so do
    the replay's copies).
    """
    pairs = [(people.patients[n % len(people.patients)], people.doctors[n % len(people.doctors)]) for n in range(count)]
    for patient, doctor in pairs:
        flows.complete_flow(patient, doctor, people.hospital_id)
    before = stack.counter.snapshot()
    stack.recording.on = True
    started = time.perf_counter()
    for patient, doctor in pairs:
        flows.complete_flow(patient, doctor, people.hospital_id)
    seconds = time.perf_counter() - started
    stack.recording.on = False
    total: collections.Counter[str] = collections.Counter()
    for ops in _diff(stack.counter.snapshot(), before).values():
        total.update(ops)
    per_flow = {op: calls / count for op, calls in total.items() if calls}
    recorded, stack.recording.calls = stack.recording.calls, []
    return Throughput(count, seconds, per_flow, replay(recorded, stack.bare_client()))


@dataclass
class Sweep:
    job: str
    others: int
    due: int
    selected: int
    """Items the job's selection read (its Query on the due index): what must not grow with the table."""
    items_read: int
    """Every item the run read, the work on each due item included."""
    seconds: float
    report: dict[str, int]


def _seed_copies(stack: BenchStack, table: str, template: dict[str, Any], key: str, index: str, count: int) -> None:
    """``count`` copies of ``template`` under new ids: a tenth waiting in the job's queue far in the future, the
    rest out of it (finished work). Written with BatchWriteItem from 4 threads."""
    import boto3

    client = boto3.client("dynamodb")
    description = client.describe_table(TableName=table)["Table"]
    [gsi] = [gsi for gsi in description["GlobalSecondaryIndexes"] if gsi["IndexName"] == index]
    queue_attr = next(part["AttributeName"] for part in gsi["KeySchema"] if part["KeyType"] == "HASH")
    due_attr = next(part["AttributeName"] for part in gsi["KeySchema"] if part["KeyType"] == "RANGE")
    from chalicelib.clock import iso, utc_now

    far = iso(utc_now() + timedelta(days=30))

    def copy(n: int) -> dict[str, Any]:
        item = dict(template)
        item["pk"] = {"S": f"{key}#bench{uuid.uuid4().hex}"}
        if n % 10:
            item.pop(queue_attr, None)
            item.pop(due_attr, None)
        else:
            item[due_attr] = {"S": far}
        return item

    def write(start: int, stop: int) -> None:
        local = boto3.client("dynamodb")
        for first in range(start, stop, 25):
            requests = [{"PutRequest": {"Item": copy(n)}} for n in range(first, min(first + 25, stop))]
            while requests:
                answer = local.batch_write_item(RequestItems={table: requests})
                requests = answer.get("UnprocessedItems", {}).get(table, [])

    share = (count + 3) // 4
    threads = [threading.Thread(target=write, args=(n * share, min(count, (n + 1) * share))) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _template(table: str, pk: str, sk: str) -> dict[str, Any]:
    import boto3

    return boto3.client("dynamodb").get_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": sk}})["Item"]


def sweeps(stack: BenchStack, people: flows.Population, due: int, sizes: tuple[int, ...]) -> list[Sweep]:
    """For each size: ``due`` invitations past their answer deadline and ``due`` withdrawals to pay out, among
    ``size`` other invitations (and a tenth as many other payout orders); one run of each job."""
    from chalicelib.clock import utc_now
    from chalicelib.config import get_settings
    from chalicelib.invitations import deadlines

    settings = get_settings()
    results: list[Sweep] = []
    seeded = 0
    funded = [
        doctor for doctor in people.doctors if doctor.call("GET", "/v1/me/wallet", 200)["available_fen"] >= 100_000
    ]
    for size in sizes:
        # earlier work still queued (the counted flow's withdrawal) is done first, so a run finds only its own
        deadlines.expire_due(utc_now() + timedelta(hours=1))
        deadlines.settle_payouts(utc_now() + timedelta(hours=1))
        invitation_ids = [
            flows.invite_and_pay(people.patients[n % len(people.patients)], doctor, people.hospital_id)[0]
            for n, doctor in enumerate(people.doctors[n % len(people.doctors)] for n in range(due))
        ]
        payout_ids = [_withdraw(funded[n % len(funded)]) for n in range(due)]
        invitation = _template(settings.invitations_table, f"INVITATION#{invitation_ids[0]}", "META")
        payout = _template(settings.ledger_table, f"ORDER#{payout_ids[0]}", "ORDER")
        _seed_copies(stack, settings.invitations_table, invitation, "INVITATION", "due", size - seeded)
        _seed_copies(stack, settings.ledger_table, payout, "ORDER", "work_due", (size - seeded) // 10)
        seeded = size
        # the answer deadlines (minutes ahead) have passed; the withdrawals are due at once
        later = utc_now() + timedelta(hours=1)
        for job, run, count in (
            ("expire_invitations", deadlines.expire_due, size),
            ("settle_payouts", deadlines.settle_payouts, size // 10),
        ):
            before, selected_before = stack.counter.items_read[job], stack.counter.index_reads[job]
            started = time.perf_counter()
            with labelled(job):
                report = run(later)
            seconds = time.perf_counter() - started
            if report["done"] != due:
                raise RuntimeError(f"{job} did {report} of {due} due items")
            selected = stack.counter.index_reads[job] - selected_before
            results.append(Sweep(job, count, due, selected, stack.counter.items_read[job] - before, seconds, report))
    return results


def _withdraw(doctor: flows.Caller) -> str:
    accounts = doctor.call("GET", "/v1/me/payout-accounts", 200)["items"]
    if not accounts:
        payee = {"kind": "alipay", "account": "13912345678", "real_name": "Dr Bench"}
        accounts = [doctor.call("POST", "/v1/me/payout-accounts", 201, payee)]
    request = {"amount_fen": 1_000, "payout_account_id": accounts[0]["account_id"]}
    return doctor.call("POST", "/v1/withdrawals", 201, request, key=True)["withdrawal_id"]


def callback_times(stack: BenchStack) -> list[float]:
    """Server-side milliseconds of every provider callback this run handled."""
    return sorted(stack.route_times.times.get("POST /v1/payments/callbacks/{provider}", []))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]
