"""``make soak``: many clients, random complete flows, injected DynamoDB faults; then the money must add up.

N client threads drive random complete flows over HTTP against the local stack for a set time:
invite, pay, accept, complete, confirm, review, tip; decline and refund; an unanswered
invitation that expires and is refunded; an unpaid one that lapses (sometimes paid late, then
refunded); an accepted one cancelled; a consultation; a hospital's VIP membership; a doctor's
withdrawal, paid out or failed by the sandbox. At least a fifth of the traffic goes to a few
"hot" doctors. About one POST in ten is sent twice with the same ``Idempotency-Key`` (half of
those at the same moment); sandbox callbacks are duplicated, sent concurrently, delayed, and
old ones are re-sent after the flow moved on. Clients retry 409 ``conflict`` /
``idempotency_key_in_use`` and 429 as a real client would. Meanwhile ``devstack.faults``
makes a share of the DynamoDB calls of the API and of the event pump fail: transaction
conflicts, throttling, and writes that commit but lose their answer.

Then flows started in the window are finished, the pump is given time to settle, and the run
passes only if: no 5xx answer (to the clients or to a sandbox callback); ``check-ledger``
passes; every sandbox payment, refund and payout is in the journal exactly once with its
amount, and the journal holds nothing the sandbox did not do; no invitation is stuck (each is
final or legitimately waiting); ``recompute-stars`` finds no difference; replays of one
``Idempotency-Key`` got the same answer, and so did up to 1,000 successful POSTs resent with
their keys once the flows are done (creating nothing); the hot doctors had at least 20 % of
the requests.

Run: ``python -m devstack.soak --clients 20 --seconds 300`` (starts its own in-memory stack
on free ports), or ``--url http://127.0.0.1:8000 --ddb-port 8001`` against a running
``make run`` stack (whose processes then inject faults only if it was started with
``DDB_FAULTS`` set). Exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from devstack.faults import ENV_DIR, ENV_SPEC, read_reports
from devstack.processes import free_port
from devstack.stack import local_environment, stage_environment

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    Flow = Generator[float, None, None]

PROJECT_DIR = Path(__file__).resolve().parent.parent
SHANGHAI_OFFSET = timedelta(hours=8)
DEFAULT_FAULTS = "conflict=0.05,throttle=0.02,ambiguous=0.01"
ADMIN_PASSWORD = "soak-admin-pass-1"
PASSWORD = "soak-pass-word-1"
INVITATION_FEE = 30_000
CONSULTATION_FEE = 5_000
HOT_SHARE = 0.45
"""The share of flows that go to a hot doctor (the hot doctors' share of the requests must reach 20 %)."""
DUPLICATE_SHARE = 0.10
"""The share of POSTs with an Idempotency-Key that are sent twice with the same key."""
STACK_SETTINGS = {"SCHEDULE_SPEEDUP": "60", "PAYMENT_WINDOW_MINUTES": "1", "RESPONSE_MARGIN_HOURS": "0"}
FLOW_WEIGHTS = {
    "accept": 26,
    "decline": 12,
    "lapse": 8,
    "unpaid": 6,
    "cancel": 8,
    "consultation": 10,
    "membership": 6,
    "withdrawal": 14,
    "browse": 10,
}
RETRY_CODES = {"conflict", "idempotency_key_in_use", "rate_limited", "too_many_requests"}
SUMMARY = {
    "asa_class": "II",
    "emergency": False,
    "airway": {"mallampati": 2},
    "fasting": "fasted",
    "fasting_hours": 8,
    "anticoagulants": [],
    "allergies": [],
    "latex_allergy": False,
    "malignant_hyperthermia_family_history": "no",
    "age_years": 52,
    "weight_kg": 68.0,
}
CREDENTIALS = {
    "practising_certificate_no": "110101199001",
    "qualification_certificate_no": "220202199002",
    "id_number": "11010519491231002X",
}
LICENCE = {"institution_licence_no": "PDY00001X11010517A1001", "unified_social_credit_code": "91440300708461136T"}
FINAL_INVITATION = {"confirmed", "refunded", "closed"}
TRANSIENT_INVITATION = {"declined", "expired", "cancelled", "not_delivered", "refunding"}
ACCESS_LOG = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d{3})')


class FlowAbortedError(Exception):
    """A flow met an answer it cannot go on from (counted by reason; not a violation by itself)."""


# --- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything counted during the run; thread-safe through ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    flows: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    aborted: Counter[str] = field(default_factory=Counter)
    callbacks: Counter[str] = field(default_factory=Counter)
    hot_requests: int = 0
    violations: list[str] = field(default_factory=list)

    def record(self, method: str, route: str, status: int, code: str | None, seconds: float, hot: bool) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1
            if code:
                self.codes[f"{status} {code}"] += 1
            self.latencies.append(seconds)
            self.hot_requests += int(hot)
            if status >= 500:
                self.violations.append(f"5xx: {method} {route} answered {status} {code or ''}")

    def count(self, counter: str, key: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += n

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


def _route(path: str) -> str:
    """A path with its ids replaced: ``/v1/invitations/IV1/accept`` → ``/v1/invitations/{id}/accept``."""
    parts = path.split("?")[0].split("/")
    return "/".join(part if not any(ch.isdigit() for ch in part) or part == "v1" else "{id}" for part in parts)


# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class User:
    """A signed-up account; its token is renewed by signing in again when it expires."""

    phone: str
    role: str
    user_id: str = ""
    token: str = ""
    password: str = PASSWORD
    lock: threading.Lock = field(default_factory=threading.Lock)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: Any
    code: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Sent:
    """A POST that succeeded with an ``Idempotency-Key``: a late retry of it must get the same answer."""

    method: str
    path: str
    user: User | None
    body: Any
    key: str
    answer: Answer


class Api:
    """The clients' HTTP: records every request, retries what a real client retries, duplicates POSTs."""

    def __init__(self, base_url: str, figures: Figures, seed: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.figures = figures
        self._local = threading.local()
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="soak-dup")
        self.sent: list[Sent] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def chance(self, share: float) -> bool:
        with self._random_lock:
            return self._random.random() < share

    def once(
        self,
        method: str,
        path: str,
        user: User | None = None,
        body: Any = None,
        params: dict[str, Any] | None = None,
        key: str | None = None,
        hot: bool = False,
    ) -> Answer:
        """One HTTP exchange, recorded."""
        headers = {}
        if user is not None and user.token:
            headers["Authorization"] = f"Bearer {user.token}"
        if key:
            headers["Idempotency-Key"] = key
        started = time.perf_counter()
        try:
            response = self._session().request(
                method, f"{self.base_url}{path}", json=body, params=params, headers=headers, timeout=60
            )
        except requests.RequestException as error:
            self.figures.violation(f"no answer: {method} {_route(path)}: {type(error).__name__}")
            self.figures.record(method, _route(path), 599, "no_answer", time.perf_counter() - started, hot)
            raise FlowAbortedError("no_answer") from error
        elapsed = time.perf_counter() - started
        try:
            parsed = response.json() if response.content else {}
        except ValueError:
            parsed = {"raw": response.text[:200]}
        code = parsed.get("error", {}).get("code") if isinstance(parsed, dict) and response.status_code >= 400 else None
        self.figures.record(method, _route(path), response.status_code, code, elapsed, hot)
        return Answer(response.status_code, parsed, code)

    def call(
        self,
        method: str,
        path: str,
        user: User | None = None,
        body: Any = None,
        params: dict[str, Any] | None = None,
        *,
        idempotent: bool = False,
        hot: bool = False,
        attempts: int = 12,
    ) -> Answer:
        """A request as a careful client sends it: re-signs in on 401, retries 409 conflict and 429 with backoff.

        ``idempotent``: sends an ``Idempotency-Key`` (kept over the retries); one call in ten is
        then duplicated with the same key (half at the same moment) and both answers compared.
        """
        key = f"soak-{uuid.uuid4().hex}" if idempotent else None
        duplicate = idempotent and self.chance(DUPLICATE_SHARE)
        if duplicate and self.chance(0.5):
            self.figures.count("duplicates", "concurrent")
            twin = self._pool.submit(self._retrying, method, path, user, body, params, key, hot, attempts)
            answer = self._retrying(method, path, user, body, params, key, hot, attempts)
            self._compare(method, path, answer, twin.result())
        else:
            answer = self._retrying(method, path, user, body, params, key, hot, attempts)
            if duplicate:
                self.figures.count("duplicates", "sequential")
                again = self._retrying(method, path, user, body, params, key, hot, attempts)
                self._compare(method, path, answer, again)
        if key and answer.ok:
            with self._random_lock:
                self.sent.append(Sent(method, path, user, body, key, answer))
        return answer

    def _retrying(
        self,
        method: str,
        path: str,
        user: User | None,
        body: Any,
        params: dict[str, Any] | None,
        key: str | None,
        hot: bool,
        attempts: int,
    ) -> Answer:
        answer = Answer(0, {}, None)
        for attempt in range(attempts):
            answer = self.once(method, path, user, body, params, key, hot)
            if answer.status == 401 and user is not None and attempt < attempts - 1:
                self.sign_in(user)
                continue
            if answer.status == 429 or (answer.status == 409 and answer.code in RETRY_CODES):
                self.figures.count("retries", f"{answer.status} {answer.code}")
                with self._random_lock:
                    pause = min(2.0, 0.05 * 2**attempt) * (0.5 + self._random.random())
                time.sleep(pause)
                continue
            return answer
        return answer

    def _compare(self, method: str, path: str, first: Answer, second: Answer) -> None:
        """Two sends of one key must agree: both done or both refused alike (a 409 still in use after the
        retries is tolerated). Bodies may differ: a transition answers with the invitation as it is now."""
        if first.ok == second.ok and (first.ok or first.code == second.code):
            return
        if {first.code, second.code} & RETRY_CODES:
            self.figures.count("duplicates", "unresolved_after_retries")
            return
        self.figures.violation(
            f"idempotency: {method} {_route(path)} answered {first.status} {first.code or ''} "
            f"and {second.status} {second.code or ''} to one key"
        )

    def sign_in(self, user: User) -> None:
        with user.lock:
            answer = self.once("POST", "/v1/auth/login", None, {"phone": user.phone, "password": user.password})
            if answer.ok:
                user.token = answer.body["access_token"]

    def sign_up(self, role: str) -> User:
        user = User(phone=_phone(), role=role)
        body = {"phone": user.phone, "password": user.password, "role": role}
        answer = self.call("POST", "/v1/auth/register", None, body)
        _expect(answer, 201, "register")
        user.user_id, user.token = answer.body["user_id"], answer.body["access_token"]
        return user


def _phone() -> str:
    return f"137{uuid.uuid4().int % 10**8:08d}"


def _expect(answer: Answer, status: int | tuple[int, ...], what: str) -> Answer:
    wanted = (status,) if isinstance(status, int) else status
    if answer.status not in wanted:
        raise FlowAbortedError(f"{what}: {answer.status} {answer.code or ''}".strip())
    return answer


# --- the population -----------------------------------------------------------------------------


@dataclass
class Population:
    admin: User
    hospital_id: str
    doctors: list[User]
    hot: list[User]
    patients: list[User]
    hospitals: list[User]


def shanghai_now() -> datetime:
    return datetime.now(UTC) + SHANGHAI_OFFSET


def make_admin(ddb_port: int, phone: str) -> None:
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(ddb_port), "admin"]
    command += ["--phone", phone, "--name", "Soak"]
    env = {**os.environ, "ADMIN_PASSWORD": ADMIN_PASSWORD}
    for key in (ENV_SPEC, ENV_DIR):
        env.pop(key, None)
    result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"could not create the admin: {result.stdout}{result.stderr}")


def populate(api: Api, ddb_port: int, doctors: int, hot: int, patients: int) -> Population:
    """An admin, verified doctors (working for 60 days) with payout accounts, patients, verified hospitals."""
    admin = User(phone=_phone(), role="admin", password=ADMIN_PASSWORD)
    make_admin(ddb_port, admin.phone)
    api.sign_in(admin)
    if not admin.token:
        raise RuntimeError("the admin cannot sign in")
    hospitals_found = _expect(api.call("GET", "/v1/hospitals", params={"q": "xh"}), 200, "hospitals").body["items"]
    hospital_id = hospitals_found[0]["hospital_id"]
    today = shanghai_now().date()
    days = {
        "ranges": [
            {
                "from": today.isoformat(),
                "to": (today + timedelta(days=60)).isoformat(),
                "working": True,
                "invitation_capacity": 20,
                "consultation_capacity": 20,
            }
        ]
    }

    def doctor(number: int) -> User:
        user = api.sign_up("doctor")
        profile = {
            "name": f"Dr Soak {number}",
            "hospital_id": hospital_id,
            "title": "attending",
            "invitation_fee": INVITATION_FEE + 1_000 * number,
            "consultation_fee": CONSULTATION_FEE,
        }
        _expect(api.call("PATCH", "/v1/me", user, profile), 200, "doctor profile")
        _expect(api.call("POST", "/v1/me/verification", user, CREDENTIALS), 202, "doctor verification")
        _expect(api.call("POST", f"/v1/admin/verifications/{user.user_id}/approve", admin), 200, "approve doctor")
        _expect(api.call("PUT", "/v1/me/calendar", user, days), 200, "calendar")
        payee = {"kind": "alipay", "account": f"139{number:08d}", "real_name": profile["name"]}
        account = _expect(api.call("POST", "/v1/me/payout-accounts", user, payee), 201, "payout account")
        user.extra["payout_account_id"] = account.body["account_id"]
        return user

    def hospital(_: int) -> User:
        user = api.sign_up("hospital")
        patch = {"hospital_id": hospital_id, "contact_name": "Wang", "contact_phone": _phone()}
        _expect(api.call("PATCH", "/v1/me", user, patch), 200, "hospital profile")
        _expect(api.call("POST", "/v1/me/verification", user, LICENCE), 202, "hospital verification")
        _expect(api.call("POST", f"/v1/admin/verifications/{user.user_id}/approve", admin), 200, "approve hospital")
        return user

    with ThreadPoolExecutor(max_workers=4) as pool:
        made_doctors = list(pool.map(doctor, range(doctors)))
        made_patients = list(pool.map(lambda _: api.sign_up("patient"), range(patients)))
        made_hospitals = list(pool.map(hospital, range(2)))
    return Population(admin, hospital_id, made_doctors, made_doctors[:hot], made_patients, made_hospitals)


# --- flows --------------------------------------------------------------------------------------


class Flows:
    """The random complete flows; each a generator that yields how long to wait before its next step."""

    def __init__(self, api: Api, people: Population, figures: Figures, seed: int) -> None:
        self.api = api
        self.people = people
        self.figures = figures
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def pick(self, choices: list[Any]) -> Any:
        with self._lock:
            return self._random.choice(choices)

    def roll(self, share: float) -> bool:
        with self._lock:
            return self._random.random() < share

    def number(self, low: int, high: int) -> int:
        with self._lock:
            return self._random.randint(low, high)

    def kind(self) -> str:
        with self._lock:
            return self._random.choices(list(FLOW_WEIGHTS), weights=list(FLOW_WEIGHTS.values()))[0]

    def doctor(self) -> tuple[User, bool]:
        if self.roll(HOT_SHARE):
            return self.pick(self.people.hot), True
        return self.pick(self.people.doctors[len(self.people.hot) :]), False

    def start(self, kind: str) -> Flow:
        return getattr(self, f"flow_{kind}")()

    # -- shared steps -----------------------------------------------------------------------------

    def invite(self, patient: User, doctor: User, hot: bool, kind: str, soon: bool) -> str:
        """A new invitation (or consultation) for a slot in about two minutes (``soon``) or days ahead."""
        now = shanghai_now()
        if soon:
            start = (now + timedelta(seconds=90)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        else:
            start = (now + timedelta(days=self.number(2, 55))).replace(hour=self.number(8, 17), minute=0, second=0)
        body: dict[str, Any] = {
            "kind": kind,
            "doctor_id": doctor.user_id,
            "hospital_id": self.people.hospital_id,
            "date": start.date().isoformat(),
            "time": start.strftime("%H:%M"),
        }
        if kind == "invitation":
            body |= {"operation": {"procedure": "Appendectomy", "expected_minutes": 60}, "summary": SUMMARY}
        else:
            body["note"] = "Pre-operative assessment"
        answer = self.api.call("POST", "/v1/invitations", patient, body, idempotent=True, hot=hot)
        _expect(answer, 201, "invite")
        return str(answer.body["invitation_id"])

    def order(self, payer: User, body: dict[str, Any], hot: bool) -> dict[str, Any]:
        """Open (or get back) the payment order; a payer told "not payable" while the invitation still
        waits for payment reads it again and tries again, as a person tapping "pay" would."""
        for _attempt in range(5):
            answer = self.api.call("POST", "/v1/payments", payer, body, idempotent=True, hot=hot)
            refused = answer.status == 409 and answer.code == "invitation_not_payable"
            if refused and self.status(payer, body["reference"], hot)["status"] == "awaiting_payment":
                self.figures.count("outcomes", "FINDING: 409 invitation_not_payable while awaiting_payment")
                time.sleep(0.2)
                continue
            return _expect(answer, (200, 201), f"order {body['purpose']}").body
        raise FlowAbortedError("order: invitation_not_payable while awaiting_payment, 5 times")

    def sandbox_pay(self, order_id: str, hot: bool, **instruction: Any) -> Flow:
        """The provider: pays (or settles a transfer) with duplicated, concurrent or delayed callbacks;
        re-sends until our endpoint acknowledges, as WeChat Pay does."""
        instruction.setdefault("outcome", "success")
        instruction["deliveries"] = self.number(1, 3)
        instruction["concurrent"] = instruction["deliveries"] > 1 and self.roll(0.5)
        if self.roll(0.2):
            instruction["delay_seconds"] = self.number(1, 3)
        self.figures.count("callbacks", "delayed" if instruction.get("delay_seconds") else "immediate")
        for attempt in range(8):
            answer = self.api.call("POST", f"/v1/sandbox/orders/{order_id}/pay", None, instruction, hot=hot)
            _expect(answer, 200, "sandbox pay")
            statuses = [delivery["status"] for delivery in answer.body.get("deliveries", [])]
            self.figures.count("callbacks", "sent", len(statuses) + int(answer.body.get("scheduled", 0) or 0))
            for status in statuses:
                self.figures.count("callbacks", f"answered {status}")
                if status >= 500:
                    self.figures.violation(f"5xx: a sandbox callback for {order_id} was answered {status}")
            if not statuses or any(200 <= status < 300 for status in statuses):
                return
            instruction = {"outcome": instruction["outcome"], "deliveries": 1}
            yield min(8.0, 0.5 * 2**attempt)  # not acknowledged: the provider tries again later
        raise FlowAbortedError("callback never acknowledged")

    def resend_old_callback(self, order_id: str, hot: bool, outcome: str = "success") -> None:
        """A stale duplicate of a notification, arriving after the flow moved on (its effect must be none)."""
        if self.roll(0.15):
            self.figures.count("callbacks", "stale re-sent")
            body = {"outcome": outcome, "deliveries": self.number(1, 2)}
            self.api.call("POST", f"/v1/sandbox/orders/{order_id}/pay", None, body, hot=hot)

    def status(self, user: User, invitation_id: str, hot: bool) -> dict[str, Any]:
        answer = self.api.call("GET", f"/v1/invitations/{invitation_id}", user, hot=hot)
        return _expect(answer, 200, "read invitation").body

    def until(self, check: Callable[[], bool], what: str, timeout: float = 150.0) -> Flow:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise FlowAbortedError(f"timed out waiting for {what}")
            yield 1.0

    def paid_invitation(self, kind: str = "invitation", *, soon: bool) -> Generator[float, None, tuple[Any, ...]]:
        patient = self.pick(self.people.patients)
        doctor, hot = self.doctor()
        invitation_id = self.invite(patient, doctor, hot, kind, soon)
        order = self.order(patient, {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox"}, hot)
        yield from self.sandbox_pay(order["order_id"], hot)
        yield from self.until(
            lambda: self.status(patient, invitation_id, hot)["status"] != "awaiting_payment", "the payment"
        )
        return patient, doctor, hot, invitation_id, order["order_id"]

    def wait_refunded(self, patient: User, invitation_id: str, hot: bool) -> Flow:
        yield from self.until(lambda: self.status(patient, invitation_id, hot)["status"] == "refunded", "the refund")

    def act(self, user: User, invitation_id: str, action: str, hot: bool, body: Any = None) -> Answer:
        path = f"/v1/invitations/{invitation_id}/{action}"
        return self.api.call("POST", path, user, body, idempotent=True, hot=hot)

    # -- the flows --------------------------------------------------------------------------------

    def flow_accept(self) -> Flow:
        """Invite, pay, accept, complete, confirm, review, tip (or decline when the day is full)."""
        patient, doctor, hot, invitation_id, order_id = yield from self.paid_invitation(soon=True)
        accepted = self.act(doctor, invitation_id, "accept", hot)
        if accepted.status == 409 and accepted.code in ("date_full", "invalid_transition", "response_deadline_passed"):
            self.figures.count("outcomes", f"accept {accepted.code}")
            if self.status(patient, invitation_id, hot)["status"] == "pending_response":
                _expect(self.act(doctor, invitation_id, "decline", hot, {"reason": "Fully booked"}), 200, "decline")
            yield from self.wait_refunded(patient, invitation_id, hot)
            return
        _expect(accepted, 200, "accept")
        scheduled = datetime.fromisoformat(accepted.body["scheduled_at"])
        yield max(0.0, (scheduled - datetime.now(UTC)).total_seconds()) + 1.0
        _expect(self.act(doctor, invitation_id, "complete", hot), 200, "complete")
        _expect(self.act(patient, invitation_id, "confirm", hot), 200, "confirm")
        review = {"rating": self.number(1, 5), "comment": "Calm and careful"}
        _expect(self.act(patient, invitation_id, "review", hot, review), (200, 201), "review")
        self.resend_old_callback(order_id, hot)
        if self.roll(0.5):
            tip = {"purpose": "tip", "reference": invitation_id, "channel": "sandbox", "amount_fen": 500}
            tip_order = self.order(patient, tip, hot)
            yield from self.sandbox_pay(tip_order["order_id"], hot)
            self.figures.count("outcomes", "tipped")
        self.figures.count("outcomes", "confirmed")

    def flow_decline(self) -> Flow:
        patient, doctor, hot, invitation_id, order_id = yield from self.paid_invitation(soon=self.roll(0.3))
        _expect(self.act(doctor, invitation_id, "decline", hot, {"reason": "In theatre"}), 200, "decline")
        yield from self.wait_refunded(patient, invitation_id, hot)
        self.resend_old_callback(order_id, hot)
        self.figures.count("outcomes", "declined+refunded")

    def flow_lapse(self) -> Flow:
        """Paid, never answered: the expiry job refunds it at the scheduled time."""
        patient, _doctor, hot, invitation_id, order_id = yield from self.paid_invitation(soon=True)
        yield 60.0
        yield from self.until(
            lambda: self.status(patient, invitation_id, hot)["status"] == "refunded", "the expiry refund", 180
        )
        self.resend_old_callback(order_id, hot)
        self.figures.count("outcomes", "expired+refunded")

    def flow_unpaid(self) -> Flow:
        """Ordered, never paid: the invitation closes when the payment window passes; sometimes paid late."""
        patient = self.pick(self.people.patients)
        doctor, hot = self.doctor()
        invitation_id = self.invite(patient, doctor, hot, "invitation", soon=True)
        order = self.order(patient, {"purpose": "invitation", "reference": invitation_id, "channel": "sandbox"}, hot)
        if self.roll(0.3):
            _expect(self.act(patient, invitation_id, "cancel", hot, {"reason": "Changed my mind"}), 200, "withdraw")
        yield 60.0
        yield from self.until(lambda: self.status(patient, invitation_id, hot)["status"] == "closed", "the lapse", 120)
        if self.roll(0.4):  # the payer's money arrived just before the close: paid, then refunded at once
            yield from self.sandbox_pay(order["order_id"], hot, late=True)
            yield from self.wait_refunded(patient, invitation_id, hot)
            self.figures.count("outcomes", "paid late+refunded")
        else:
            self.figures.count("outcomes", "lapsed unpaid")

    def flow_cancel(self) -> Flow:
        """Accepted days ahead, then cancelled by the patient: refunded by the policy."""
        patient, doctor, hot, invitation_id, order_id = yield from self.paid_invitation(soon=False)
        accepted = self.act(doctor, invitation_id, "accept", hot)
        if accepted.status == 409:
            self.figures.count("outcomes", f"accept {accepted.code}")
            _expect(self.act(doctor, invitation_id, "decline", hot, {"reason": "Fully booked"}), 200, "decline")
        else:
            _expect(accepted, 200, "accept")
            _expect(self.api.call("GET", f"/v1/invitations/{invitation_id}/refund-preview", patient), 200, "preview")
            _expect(self.act(patient, invitation_id, "cancel", hot, {"reason": "Surgery moved"}), 200, "cancel")
        yield from self.wait_refunded(patient, invitation_id, hot)
        self.resend_old_callback(order_id, hot)
        self.figures.count("outcomes", "cancelled+refunded")

    def flow_consultation(self) -> Flow:
        patient, doctor, hot, invitation_id, _order = yield from self.paid_invitation("consultation", soon=True)
        accepted = self.act(doctor, invitation_id, "accept", hot)
        if accepted.status == 409:
            self.figures.count("outcomes", f"consultation accept {accepted.code}")
            _expect(self.act(doctor, invitation_id, "decline", hot, {"reason": "Fully booked"}), 200, "decline")
            yield from self.wait_refunded(patient, invitation_id, hot)
            return
        _expect(accepted, 200, "accept consultation")
        scheduled = datetime.fromisoformat(accepted.body["scheduled_at"])
        yield max(0.0, (scheduled - datetime.now(UTC)).total_seconds()) + 1.0
        _expect(self.act(doctor, invitation_id, "complete", hot), 200, "complete consultation")
        _expect(self.act(patient, invitation_id, "confirm", hot), 200, "confirm consultation")
        self.figures.count("outcomes", "consultation confirmed")

    def flow_membership(self) -> Flow:
        hospital = self.pick(self.people.hospitals)
        body = {"purpose": "membership", "reference": "year", "channel": "sandbox"}
        answer = self.api.call("POST", "/v1/payments", hospital, body, idempotent=True)
        if answer.status == 409:  # another purchase of this hospital is open: its slot is taken
            self.figures.count("outcomes", f"membership {answer.code}")
            return
        order = _expect(answer, (200, 201), "membership order").body
        yield from self.sandbox_pay(order["order_id"], False)
        yield from self.until(
            lambda: _expect(self.api.call("GET", "/v1/me/membership", hospital), 200, "membership").body["active"],
            "the membership",
        )
        _expect(self.api.call("GET", "/v1/anesthesiologists", hospital, params={"limit": 20}), 200, "list doctors")
        self.resend_old_callback(order["order_id"], False)
        self.figures.count("outcomes", "membership bought")

    def flow_withdrawal(self) -> Flow:
        doctor, hot = self.doctor()
        deadline = time.monotonic() + 180.0
        while True:  # early in a run no doctor has earned anything yet: wait for a confirmed invitation
            wallet = _expect(self.api.call("GET", "/v1/me/wallet", doctor, hot=hot), 200, "wallet").body
            if wallet["available_fen"] >= 1_000:
                break
            if time.monotonic() > deadline:
                self.figures.count("outcomes", "withdrawal: nothing available")
                return
            yield 10.0
        amount = self.number(1_000, min(int(wallet["available_fen"]), 40_000))
        request = {"amount_fen": amount, "payout_account_id": doctor.extra["payout_account_id"]}
        answer = self.api.call("POST", "/v1/withdrawals", doctor, request, idempotent=True, hot=hot)
        if answer.status == 409:  # a concurrent withdrawal took the money first
            self.figures.count("outcomes", f"withdrawal {answer.code}")
            return
        withdrawal_id = _expect(answer, 201, "withdraw").body["withdrawal_id"]

        def state() -> str:
            items = _expect(self.api.call("GET", "/v1/withdrawals", doctor, hot=hot), 200, "withdrawals").body["items"]
            return next((item["status"] for item in items if item["withdrawal_id"] == withdrawal_id), "missing")

        yield from self.until(lambda: state() != "requested", "the payout to be sent")
        outcome = "success" if self.roll(0.7) else "fail"
        yield from self.sandbox_pay(withdrawal_id, hot, outcome=outcome)
        yield from self.until(lambda: state() in ("succeeded", "failed", "cancelled"), "the payout's end")
        self.resend_old_callback(withdrawal_id, hot, outcome)
        self.figures.count("outcomes", f"payout {outcome}")

    def flow_browse(self) -> Flow:
        patient = self.pick(self.people.patients)
        doctor, hot = self.doctor()
        _expect(self.api.call("GET", f"/v1/anesthesiologists/{doctor.user_id}", patient, hot=hot), 200, "storefront")
        path = f"/v1/hospitals/{self.people.hospital_id}/anesthesiologists"
        _expect(self.api.call("GET", path, patient), 200, "hospital doctors")
        _expect(self.api.call("GET", "/v1/invitations", patient), 200, "my invitations")
        _expect(self.api.call("GET", "/v1/me/transactions", doctor, hot=hot), 200, "statement")
        yield 0.0


# --- the clients --------------------------------------------------------------------------------


@dataclass(order=True)
class _Parked:
    due: float
    number: int
    kind: str = field(compare=False)
    flow: Flow = field(compare=False)


class Scheduler:
    """Client threads: each runs the next due step of a parked flow, or starts a new flow while the window is open."""

    def __init__(self, flows: Flows, figures: Figures, seconds: float, drain_seconds: float) -> None:
        self.flows = flows
        self.figures = figures
        self.window_ends = time.monotonic() + seconds
        self.drain_ends = self.window_ends + drain_seconds
        self._parked: list[_Parked] = []
        self._live = 0
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def run(self, clients: int) -> None:
        threads = [threading.Thread(target=self._client, name=f"soak-client-{n}") for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self._lock:
            for parked in self._parked:
                self.figures.count("aborted", f"{parked.kind}: not finished by the end of the drain")

    def _next(self) -> tuple[str, Flow] | float | None:
        """A step to run, or seconds to sleep, or None when the client may stop."""
        now = time.monotonic()
        with self._lock:
            if self._parked and self._parked[0].due <= now:
                parked = heapq.heappop(self._parked)
                return parked.kind, parked.flow
            if now < self.window_ends:
                self._live += 1
                kind = self.flows.kind()
                self.figures.count("flows", f"{kind} started")
                return kind, self.flows.start(kind)
            if (self._live == 0 and not self._parked) or now > self.drain_ends:
                return None
            return min(0.2, self._parked[0].due - now) if self._parked else 0.2

    def _client(self) -> None:
        while True:
            step = self._next()
            if step is None:
                return
            if isinstance(step, float):
                time.sleep(max(0.01, step))
                continue
            kind, flow = step
            try:
                delay = next(flow)
            except StopIteration:
                self.figures.count("flows", f"{kind} completed")
                self._finished()
                continue
            except FlowAbortedError as error:
                self.figures.count("aborted", f"{kind}: {error}")
                self._finished()
                continue
            except Exception as error:  # a bug of the soak itself: shown, counted
                traceback.print_exc()
                self.figures.count("aborted", f"{kind}: {type(error).__name__}: {error}")
                self._finished()
                continue
            with self._lock:
                heapq.heappush(self._parked, _Parked(time.monotonic() + delay, next(self._numbers), kind, flow))

    def _finished(self) -> None:
        with self._lock:
            self._live -= 1


# --- the checks ---------------------------------------------------------------------------------


def _dynamodb(ddb_port: int) -> Any:
    import boto3

    env = local_environment(ddb_port, base={})
    return boto3.client(
        "dynamodb",
        endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name="cn-north-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def _scan(client: Any, table: str) -> list[dict[str, Any]]:
    """Every item of ``table`` (an operator's audit; the product never scans)."""
    from boto3.dynamodb.types import TypeDeserializer

    plain = TypeDeserializer()
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items += [{name: plain.deserialize(value) for name, value in item.items()} for item in page["Items"]]
    return items


def _table_prefix() -> str:
    return stage_environment("local")["TABLE_PREFIX"]


def reconcile(ledger_items: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
    """Every sandbox payment, refund and payout against the journal: each exactly once, with its amount.

    The journal's transaction ids are its keys (``pay:<order>``, ``tip:<order>``,
    ``membership:<order>``, ``refund:<refund no>``, ``payout:<bill>``, ``payout_return:<bill>``), so
    "once" means: present with the sandbox's amount on the sandbox clearing account, and no
    journal transaction of these kinds without its sandbox counterpart.
    """
    problems: list[str] = []
    journal = {item["tx_id"]: item for item in ledger_items if item.get("type") == "journal_transaction"}
    payments = {i["out_trade_no"]: i for i in ledger_items if i.get("type") == "sandbox_payment"}
    refunds = {i["out_refund_no"]: i for i in ledger_items if i.get("type") == "sandbox_refund"}
    payouts = {i["out_bill_no"]: i for i in ledger_items if i.get("type") == "sandbox_payout"}

    def clearing(tx: dict[str, Any]) -> int:
        return sum(int(amount) for account, amount in tx["entries"].items() if account.startswith("provider:sandbox"))

    matched: set[str] = set()
    figures = Counter[str]()
    for number, payment in payments.items():
        ids = [f"{kind}:{number}" for kind in ("pay", "tip", "membership") if f"{kind}:{number}" in journal]
        if payment["state"] != "SUCCESS":
            if ids:
                problems.append(f"sandbox payment {number} is {payment['state']} but the journal has {ids}")
            continue
        figures["payments"] += 1
        if len(ids) != 1:
            problems.append(f"sandbox payment {number} (paid {payment['amount_fen']}) is in the journal {len(ids)}x")
            continue
        matched.add(ids[0])
        if clearing(journal[ids[0]]) != -int(payment["amount_fen"]):
            problems.append(f"{ids[0]}: the journal moved {clearing(journal[ids[0]])}, paid {payment['amount_fen']}")
    for number, refund in refunds.items():
        tx_id = f"refund:{number}"
        if refund["state"] != "SUCCESS":
            figures[f"refunds {refund['state']}"] += 1
            if tx_id in journal:
                problems.append(f"sandbox refund {number} is {refund['state']} but the journal has it")
            continue
        figures["refunds"] += 1
        if tx_id not in journal:
            problems.append(f"sandbox refund {number} ({refund['amount_fen']}) is not in the journal")
            continue
        matched.add(tx_id)
        if clearing(journal[tx_id]) != int(refund["amount_fen"]):
            problems.append(f"{tx_id}: the journal moved {clearing(journal[tx_id])}, refunded {refund['amount_fen']}")
    for number, payout in payouts.items():
        done, returned = f"payout:{number}" in journal, f"payout_return:{number}" in journal
        state = payout["state"]
        figures[f"payouts {state}"] += 1
        expected = (state == "SUCCESS", state in ("FAIL", "CANCELLED"))
        if (done, returned) != expected:
            problems.append(f"sandbox payout {number} is {state}; journal payout {done}, return {returned}")
        if done:
            matched.add(f"payout:{number}")
            if clearing(journal[f"payout:{number}"]) != int(payout["amount_fen"]):
                problems.append(f"payout:{number}: moved {clearing(journal[f'payout:{number}'])}, paid out {state}")
        if returned:
            matched.add(f"payout_return:{number}")
    for tx_id, tx in journal.items():
        if tx_id.split(":")[0] in ("pay", "tip", "membership", "refund", "payout", "payout_return"):
            if tx_id not in matched:
                problems.append(f"journal {tx_id} ({tx.get('kind')}) has no sandbox counterpart")
        elif clearing(tx):
            problems.append(f"journal {tx_id} ({tx.get('kind')}) moves the sandbox clearing account")
    figures["journal transactions"] = len(journal)
    return problems, dict(figures)


def stuck_invitations(items: list[dict[str, Any]], now: datetime, grace: timedelta) -> tuple[list[str], Counter[str]]:
    """Invitations neither final nor legitimately waiting (for the payer, the doctor, the day, or confirmation)."""
    stuck: list[str] = []
    states = Counter[str]()
    for item in items:
        if item.get("type") != "invitation":
            continue
        status = str(item["status"])
        states[status] += 1
        ident = f"{item['invitation_id']} ({status}, updated {item.get('updated_at')})"
        if status in FINAL_INVITATION or status == "accepted":
            continue
        if status in TRANSIENT_INVITATION:
            stuck.append(ident)
        elif status == "awaiting_payment":
            created = datetime.fromisoformat(item["history"][0]["at"]) if item.get("history") else now
            if now - created > timedelta(minutes=1) + grace:
                stuck.append(ident)
        elif status == "pending_response":
            if item.get("response_deadline") and now - datetime.fromisoformat(item["response_deadline"]) > grace:
                stuck.append(ident)
        elif status == "completed":
            if item.get("hold_until") and now - datetime.fromisoformat(item["hold_until"]) > grace:
                stuck.append(ident)
        else:
            stuck.append(ident)
    return stuck, states


def _operator(ddb_port: int, command: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(ddb_port), command]
    env = {key: value for key, value in os.environ.items() if key not in (ENV_SPEC, ENV_DIR)}
    result = subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def settle(client: Any, prefix: str, timeout: float) -> None:
    """Wait until no invitation is between states the pump moves on (refunds on their way), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _transient(_scan(client, f"{prefix}-invitations")):
            return
        time.sleep(2.0)


def _transient(items: list[dict[str, Any]]) -> bool:
    return any(item.get("type") == "invitation" and item["status"] in TRANSIENT_INVITATION for item in items)


@dataclass
class Report:
    ok: bool
    lines: list[str]
    figures: Figures
    faults: dict[str, Any]
    reconciliation: dict[str, int]


CATCH_UP_AHEAD = timedelta(hours=1)
"""How far ahead the catch-up runs the follow-up jobs: past the longest retry backoff (30 min)."""


def catch_up(ddb_port: int, url: str, ahead: timedelta = CATCH_UP_AHEAD) -> tuple[int, str]:
    """Run the refund and payout follow-ups once as if ``ahead`` later, in a process of their own.

    A refund or payout whose answer met a fault waits for its retry on a real-time backoff
    (1 to 30 minutes): legitimately waiting, but the soak wants to see it end. The jobs' own
    code runs, with the clock moved; nothing else is touched.
    """
    argv = [sys.executable, "-m", "devstack.soak", "--catch-up", str(int(ahead.total_seconds()))]
    argv += ["--ddb-port", str(ddb_port), "--url", url]
    env = {key: value for key, value in os.environ.items() if key not in (ENV_SPEC, ENV_DIR)}
    result = subprocess.run(
        argv, cwd=PROJECT_DIR, env={**env, **STACK_SETTINGS}, capture_output=True, text=True, timeout=600, check=False
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def _run_catch_up(ddb_port: int, url: str, ahead_seconds: int) -> int:
    """``--catch-up``: this process points at the stack's tables and runs the follow-ups ahead."""
    from urllib.parse import urlsplit

    from devstack.stack import sandbox_callback_url

    os.environ.update(local_environment(ddb_port))
    os.environ["SANDBOX_CALLBACK_URL"] = sandbox_callback_url(urlsplit(url).port or 8000)
    os.environ.update(stage_environment("local"))
    from chalicelib.clock import utc_now
    from chalicelib.invitations import deadlines

    later = utc_now() + timedelta(seconds=ahead_seconds)
    for job in (deadlines.follow_up_refunds, deadlines.settle_payouts):
        print(f"{job.__name__}: {job(later, limit=1000)}")
    return 0


REPLAY_LIMIT = 1000
"""How many earlier successful POSTs the late replay resends (all of them when fewer)."""
CREATED_BY_POSTS = ("invitation", "payment_order", "payout_order")
"""Item types only a client's POST creates (no job does): a replay must add none."""


def _created_by_posts(client: Any, prefix: str) -> Counter[str]:
    items = _scan(client, f"{prefix}-invitations") + _scan(client, f"{prefix}-ledger")
    return Counter(str(item["type"]) for item in items if item.get("type") in CREATED_BY_POSTS)


def same_answer(path: str, first: Answer, again: Answer) -> bool:
    """Whether a late replay got the first answer: the same status and body, or, for an invitation's
    POSTs (which answer with the invitation as it is now), the same status and invitation. A review
    keeps no answer: the same review sent again answers 200 with it.

    >>> paid = Answer(201, {"withdrawal_id": "W1"}, None)
    >>> same_answer("/v1/withdrawals", paid, Answer(201, {"withdrawal_id": "W1"}, None))
    True
    >>> same_answer("/v1/invitations/IV1/accept", Answer(200, {"invitation_id": "IV1", "status": "accepted"}, None),
    ...             Answer(200, {"invitation_id": "IV1", "status": "completed"}, None))
    True
    >>> same_answer("/v1/payments", Answer(201, {"order_id": "P1"}, None), Answer(201, {"order_id": "P2"}, None))
    False
    """
    if path.endswith("/review"):  # answered by its natural key, not a stored answer: the same review again is 200
        return again.status == 200 and bool(again.body == first.body)
    if again.status != first.status:
        return False
    if path.startswith("/v1/invitations"):
        return isinstance(again.body, dict) and again.body.get("invitation_id") == first.body.get("invitation_id")
    return bool(again.body == first.body)


def replay_late(api: Api, ddb_port: int, seed: int, limit: int = REPLAY_LIMIT) -> list[str]:
    """Resend up to ``limit`` POSTs that succeeded during the run, with their keys, after the flows are done.

    Each must get its first answer again: the same status and, for payments and withdrawals, the
    same body; an invitation's transitions answer with the invitation as it is now, so theirs must
    name the same invitation. And nothing may be created: no invitation, payment order or payout.
    """
    client = _dynamodb(ddb_port)
    prefix = _table_prefix()
    sent = random.Random(seed).sample(api.sent, min(limit, len(api.sent)))
    before = _created_by_posts(client, prefix)
    violations: list[str] = []
    for earlier in sent:
        again = api._retrying(earlier.method, earlier.path, earlier.user, earlier.body, None, earlier.key, False, 12)
        first = earlier.answer
        same = same_answer(earlier.path, first, again)
        api.figures.count("duplicates", "late replays" if same else "late replays answered otherwise")
        if not same:
            violations.append(
                f"late replay: {earlier.method} {_route(earlier.path)} answered {again.status} {again.code or ''}, "
                f"first {first.status}"
            )
    after = _created_by_posts(client, prefix)
    if after != before:
        violations.append(f"late replays created items: before {dict(before)}, after {dict(after)}")
    return violations


def check(
    ddb_port: int, url: str, figures: Figures, log_path: Path | None, settle_seconds: float
) -> tuple[list[str], dict]:
    client = _dynamodb(ddb_port)
    prefix = _table_prefix()
    settle(client, prefix, settle_seconds)
    if _transient(_scan(client, f"{prefix}-invitations")):  # some wait on a retry backoff: run it now
        status, output = catch_up(ddb_port, url)
        figures.count("outcomes", "catch-up of follow-ups waiting on a backoff")
        if status != 0:
            figures.violation(f"the catch-up failed:\n{output}")
        settle(client, prefix, settle_seconds)
    time.sleep(2.0)  # the last job runs; fault reports are written
    violations: list[str] = []
    status, output = _operator(ddb_port, "check-ledger")
    if status != 0:
        violations.append(f"check-ledger failed:\n{output}")
    problems, money = reconcile(_scan(client, f"{prefix}-ledger"))
    violations += [f"reconciliation: {problem}" for problem in problems]
    stuck, states = stuck_invitations(_scan(client, f"{prefix}-invitations"), datetime.now(UTC), timedelta(minutes=2))
    violations += [f"stuck invitation: {line}" for line in stuck]
    money.update({f"invitations {state}": count for state, count in states.items()})
    status, output = _operator(ddb_port, "recompute-stars")
    if status != 0:
        violations.append(f"recompute-stars found differences:\n{output}")
    if log_path is not None and log_path.exists():
        for line in log_path.read_text(errors="replace").splitlines():
            match = ACCESS_LOG.search(line)
            if match and match.group(3).startswith("5"):
                violations.append(f"5xx in the API's log: {line.strip()[:200]}")
            if '"level":"ERROR"' in line:
                message = re.search(r'"message":"([^"]{0,80})', line)
                figures.count("outcomes", f"ERROR logged: {message.group(1) if message else '?'}")
    return violations, money


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def render(figures: Figures, faults: dict[str, Any], money: dict[str, int], seconds: float, clients: int) -> list[str]:
    hot_share = figures.hot_requests / figures.requests if figures.requests else 0.0
    completed = sum(count for name, count in figures.flows.items() if name.endswith("completed"))
    lines = [
        f"soak: {clients} clients, {seconds:.0f} s of new flows",
        f"requests: {figures.requests}  (hot doctors {hot_share:.0%}; "
        f"p50 {_percentile(figures.latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {_percentile(figures.latencies, 0.99) * 1000:.0f} ms)",
        f"flows completed: {completed}",
        *(f"  {name:<28} {count}" for name, count in sorted(figures.flows.items())),
        "outcomes:",
        *(f"  {name:<36} {count}" for name, count in sorted(figures.outcomes.items())),
        "flows aborted:" + ("" if figures.aborted else " none"),
        *(f"  {name:<60} {count}" for name, count in sorted(figures.aborted.items())),
        f"DynamoDB calls seen by the injector: {faults.get('calls', 0)} in {faults.get('processes', 0)} processes",
        "faults injected: " + ", ".join(f"{kind} {count}" for kind, count in faults.get("faults", {}).items()),
        "responses by status: " + ", ".join(f"{status} {count}" for status, count in sorted(figures.statuses.items())),
        "errors by code:",
        *(f"  {name:<40} {count}" for name, count in sorted(figures.codes.items())),
        "client retries: " + (", ".join(f"{k} {v}" for k, v in sorted(figures.retries.items())) or "none"),
        "duplicate Idempotency-Keys: "
        + (", ".join(f"{k} {v}" for k, v in sorted(figures.duplicates.items())) or "none"),
        "sandbox callbacks: " + ", ".join(f"{k} {v}" for k, v in sorted(figures.callbacks.items())),
        "money and invitations: " + ", ".join(f"{k} {v}" for k, v in sorted(money.items())),
    ]
    return lines


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class OwnStack:
    base_url: str
    ddb_port: int
    process: subprocess.Popen[str]
    log_path: Path
    faults_dir: Path


def start_own_stack(folder: Path, faults: str, seed: int) -> OwnStack:
    """``python -m devstack.stack run`` in memory on free ports, schedules 60x faster, faults on."""
    api_port, ddb_port = free_port(), free_port()
    faults_dir = folder / "faults"
    faults_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **STACK_SETTINGS, "PYTHONUNBUFFERED": "1", ENV_DIR: str(faults_dir)}
    if faults:
        env[ENV_SPEC] = f"{faults},seed={seed}" if "seed=" not in faults else faults
    argv = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(ddb_port), "run", "--api-port", str(api_port)]
    argv += ["--in-memory", "--state-dir", str(folder / "pump")]
    log_path = folder / "stack.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    stack = OwnStack(f"http://127.0.0.1:{api_port}", ddb_port, process, log_path, faults_dir)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stack exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{stack.base_url}/health", timeout=2).status_code == 200 and "pump: ready" in (
                log_path.read_text(errors="replace")
            ):
                return stack
        time.sleep(0.3)
    stop_own_stack(stack)
    raise RuntimeError(f"the stack did not come up:\n{log_path.read_text()}")


def stop_own_stack(stack: OwnStack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
    try:
        stack.process.wait(60)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        stack.process.wait()


# --- the run ------------------------------------------------------------------------------------


def run_soak(
    *,
    clients: int = 20,
    seconds: float = 300.0,
    url: str | None = None,
    ddb_port: int = 8001,
    faults: str = DEFAULT_FAULTS,
    seed: int = 7,
    workdir: Path | None = None,
    doctors: int = 10,
    hot: int = 3,
    drain_seconds: float = 240.0,
    settle_seconds: float = 90.0,
    out: Callable[[str], None] = print,
) -> Report:
    """The whole soak; ``Report.ok`` is False on any violation (listed in ``Report.lines``)."""
    folder = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    stack = None
    faults_dir: Path | None = None
    log_path: Path | None = None
    if url is None:
        out(f"soak: starting a stack in {folder} (faults: {faults or 'none'})")
        stack = start_own_stack(folder, faults, seed)
        url, ddb_port, faults_dir, log_path = stack.base_url, stack.ddb_port, stack.faults_dir, stack.log_path
    elif os.environ.get(ENV_DIR):
        faults_dir = Path(os.environ[ENV_DIR])
    figures = Figures()
    try:
        api = Api(url, figures, seed)
        out(f"soak: population ({doctors} doctors, {hot} hot, {clients * 2} patients) on {url}")
        people = populate(api, ddb_port, doctors, hot, clients * 2)
        setup_requests = figures.requests
        figures.requests, figures.hot_requests = 0, 0
        figures.latencies.clear()
        out(f"soak: {setup_requests} requests of set-up; {clients} clients for {seconds:.0f} s")
        scheduler = Scheduler(Flows(api, people, figures, seed + 1), figures, seconds, drain_seconds)
        scheduler.run(clients)
        out(f"soak: flows done; replaying up to {REPLAY_LIMIT} of the {len(api.sent)} successful POSTs late")
        replayed = replay_late(api, ddb_port, seed)
        out("soak: letting the pump settle, then checking")
        violations, money = check(ddb_port, url, figures, log_path, settle_seconds)
        violations = replayed + violations
        faults_seen = read_reports(faults_dir) if faults_dir else {"calls": 0, "faults": {}, "processes": 0}
    finally:
        if stack is not None:
            stop_own_stack(stack)
    if figures.requests and figures.hot_requests / figures.requests < 0.2:
        violations.append(f"the hot doctors had {figures.hot_requests / figures.requests:.0%} of the requests (< 20 %)")
    violations = figures.violations + violations
    lines = render(figures, faults_seen, money, seconds, clients)
    lines.append(f"violations: {len(violations)}")
    lines += [f"  {violation}" for violation in violations[:100]]
    lines.append("soak: " + ("PASS" if not violations else "FAIL"))
    if stack is not None:
        lines.append(f"stack log: {stack.log_path}")
    for line in lines:
        out(line)
    return Report(not violations, lines, figures, faults_seen, money)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long new flows start")
    parser.add_argument("--url", help="a running stack (default: start one in memory on free ports)")
    parser.add_argument("--ddb-port", type=int, default=int(os.environ.get("DDB_PORT", "8001")))
    parser.add_argument("--faults", default=DEFAULT_FAULTS, help=f"DDB_FAULTS for the stack (default {DEFAULT_FAULTS})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="where the stack's log and fault reports go")
    parser.add_argument("--catch-up", type=int, metavar="SECONDS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.catch_up is not None:
        return _run_catch_up(args.ddb_port, args.url or "http://127.0.0.1:8000", args.catch_up)
    report = run_soak(
        clients=args.clients,
        seconds=args.seconds,
        url=args.url,
        ddb_port=args.ddb_port,
        faults=args.faults,
        seed=args.seed,
        workdir=args.workdir,
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
