"""Shared pieces of the invitation-flow integration tests (DynamoDB Local, no mocks of our own code).

- ``FakeProvider``: an in-memory payment provider of channel ``sandbox`` (installed with
  ``registry.use_provider``) that verifies callbacks with keys it generated, exactly as the
  WeChat Pay adapter does, signs real-format WeChat Pay v3 callbacks for the tests, and
  can be told to refund, leave a refund processing, or fail with a retryable error;
- ``People``, ``ordered_invitation`` and ``paid_invitation``: a verified doctor with a working
  day, a patient, an invitation with its payment order opened, or paid through the same
  settlement path a callback takes;
- checks shared by the test modules: ``assert_paid_once``, ``assert_accepted_once``,
  ``assert_refunded_once``, ``assert_ledger_ok``;
- ``race``: threads released together at a barrier;
- ``transact_write_hook``: a botocore event hook on every PynamoDB client, for faults;
- ledger readers: postings of one invitation, the fee and clearing shards it uses.

The HTTP tests use ``api_client``: ``chalice.test.Client`` over a project folder whose
``local`` stage sets no variables, so requests see this run's table prefix (the real
``.chalice/config.json`` would point them at ``anes-local``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts import profiles, signin, tokens, verification
from chalicelib.accounts.profiles import ProfilePatch
from chalicelib.accounts.roles import ADMIN, DOCTOR, PATIENT, Principal
from chalicelib.accounts.verification import Credentials
from chalicelib.clock import SHANGHAI, shanghai_date, utc_now
from chalicelib.config import get_settings
from chalicelib.directory.hospitals import hospital_id_for, seed_directory
from chalicelib.doctors import calendar
from chalicelib.doctors.calendar import CalendarUpdate, DaySetting
from chalicelib.errors import ApiError
from chalicelib.invitations import engine, service
from chalicelib.invitations.requests import Airway, AnesthesiaSummary, InvitationRequest, Operation
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.ledger.journal import TRANSACTIONS_LIST, balance
from chalicelib.models import TABLE_MODELS
from chalicelib.models.invitations import CalendarDay, Invitation
from chalicelib.models.ledger import JournalTransaction, PaymentOrder, ProviderSeen, RefundOrder
from chalicelib.payments import orders, refunds, settlement
from chalicelib.payments.orders import OrderRequest
from chalicelib.payments.provider import HttpReply, PaymentIntent, PaymentStatus, ProviderError, RefundStatus
from chalicelib.payments.settlement import seen_key
from chalicelib.payments.wechat_events import payment_event
from chalicelib.payments.wechat_notify import NotifyKeys, generate_sandbox_keys, sign_notification, verify_notification

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

    from chalicelib.payments.provider import Channel, PaymentRequest, ProviderEvent, RefundRequest

PASSWORD = "correct-horse-9"
XIEHE = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
BEIJING = "\u5317\u4eac"  # 北京
PAID_ZH = "\u652f\u4ed8\u6210\u529f"  # 支付成功
CLOSED_ZH = "\u5df2\u5173\u95ed"  # 已关闭
REFUNDED_ZH = "\u9000\u6b3e\u6210\u529f"  # 退款成功
DOCTOR_CREDENTIALS = Credentials(
    practising_certificate_no="110110000012345",
    qualification_certificate_no="QC20260001",
    id_number="11010519491231002X",
)
FEE_FEN = 50_005
"""The doctor's invitation fee: its 10 % platform fee (5000.5) rounds half up to 5001."""
PLATFORM_FEE_FEN = 5_001
DOCTOR_SHARE_FEN = FEE_FEN - PLATFORM_FEE_FEN
SUMMARY = AnesthesiaSummary(
    asa_class="II",
    emergency=False,
    airway=Airway(mallampati=2),
    fasting="fasted",
    anticoagulants=[],
    allergies=["penicillin"],
    latex_allergy=False,
    malignant_hyperthermia_family_history="no",
    age_years=58,
    weight_kg=71.5,
)
_phones = itertools.count(1)
T = TypeVar("T")


# --- time ---------------------------------------------------------------------------------------


def later(now: datetime, **delta: float) -> datetime:
    return now + timedelta(**delta)


def wechat_time(instant: datetime) -> str:
    return instant.astimezone(SHANGHAI).isoformat(timespec="seconds")


# --- the payment provider -----------------------------------------------------------------------


@functools.cache
def _sandbox_keys() -> tuple[str, str]:
    """One RSA pair per test process (generating one costs tens of milliseconds)."""
    return generate_sandbox_keys()


def new_transaction_id() -> str:
    """A WeChat Pay transaction id (``4200`` and 24 digits) no other call returns."""
    return f"4200{uuid.uuid4().int % 10**24:024d}"


@dataclass(frozen=True)
class Callback:
    """A callback as the provider posts it: headers and the raw body, byte for byte.

    ``transaction_id``: the provider's id of the payment a ``TRANSACTION.SUCCESS`` reports
    (None for other events); it is inside the encrypted body, kept here for the checks.
    """

    headers: dict[str, str]
    body: bytes
    transaction_id: str | None = None

    @property
    def event_id(self) -> str:
        return str(json.loads(self.body)["id"])

    def with_headers(self, changes: Mapping[str, str | None]) -> Callback:
        """The same body with headers replaced (or, for None, removed)."""
        headers = {name: value for name, value in self.headers.items() if name not in changes}
        headers.update({name: value for name, value in changes.items() if value is not None})
        return dataclasses.replace(self, headers=headers)

    def one_byte_changed(self) -> Callback:
        """The body with one byte altered (in the event id, so it stays printable JSON)."""
        position = self.body.index(b'"id":"') + len(b'"id":"')
        changed = bytearray(self.body)
        changed[position] = ord("X") if changed[position] != ord("X") else ord("Y")
        return dataclasses.replace(self, body=bytes(changed))


@dataclass
class FakeProvider:
    """An in-memory ``Provider`` for channel ``sandbox``; thread-safe.

    ``refund_mode``: ``succeed`` (the refund is done at once), ``processing`` (done when
    ``finish_refunds`` is called; queries say processing until then) or ``fail`` (a
    retryable ``ProviderError``, as a timeout or a 5xx would be).
    """

    channel: Channel = "sandbox"
    refund_mode: str = "succeed"
    serial: str = field(default_factory=lambda: f"PUB_KEY_ID_{uuid.uuid4().hex[:20].upper()}")
    api_v3_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    payments: dict[str, PaymentStatus] = field(default_factory=dict)
    amounts: dict[str, int] = field(default_factory=dict)
    refund_requests: list[RefundRequest] = field(default_factory=list)
    refund_states: dict[str, RefundStatus] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def keys(self) -> NotifyKeys:
        return NotifyKeys(api_v3_key=self.api_v3_key, public_keys={self.serial: _sandbox_keys()[1]})

    # -- Provider ---------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        with self._lock:
            self.amounts[request.out_trade_no] = request.amount_fen
            self.payments.setdefault(request.out_trade_no, PaymentStatus(request.out_trade_no, "pending"))
        prepay = f"wx{request.out_trade_no[-20:]}"
        return PaymentIntent(prepay, {"appId": "wx-sandbox-mp", "package": f"prepay_id={prepay}", "signType": "RSA"})

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        with self._lock:
            return self.payments.get(out_trade_no, PaymentStatus(out_trade_no, "pending"))

    def close_payment(self, out_trade_no: str) -> None:
        with self._lock:
            if self.query_state(out_trade_no) == "succeeded":
                raise ProviderError("order_paid", "the order is paid", retryable=False)
            self.payments[out_trade_no] = PaymentStatus(out_trade_no, "closed")

    def refund(self, request: RefundRequest) -> RefundStatus:
        with self._lock:
            self.refund_requests.append(request)
            if self.refund_mode == "fail":
                raise ProviderError("SYSTEM_ERROR", "the provider timed out", retryable=True)
            existing = self.refund_states.get(request.out_refund_no)
            if existing is not None:
                return existing
            state = "succeeded" if self.refund_mode == "succeed" else "processing"
            status = RefundStatus(request.out_refund_no, state, f"50{request.out_refund_no[-20:]}", request.amount_fen)
            self.refund_states[request.out_refund_no] = status
            return status

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        with self._lock:
            status = self.refund_states.get(out_refund_no)
        if status is None:
            raise ProviderError("RESOURCE_NOT_EXISTS", "no such refund", retryable=False)
        return status

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        notification = verify_notification(headers, body, self.keys, now.timestamp())
        return payment_event("sandbox", notification)

    def acknowledge(self, accepted: bool) -> HttpReply:
        if accepted:
            return HttpReply(204, "")
        return HttpReply(400, json.dumps({"code": "FAIL", "message": "\u5931\u8d25"}, ensure_ascii=False))

    # -- what the tests tell it -------------------------------------------------------------------

    def query_state(self, out_trade_no: str) -> str:
        status = self.payments.get(out_trade_no)
        return status.state if status else "pending"

    def mark_paid(self, out_trade_no: str, amount_fen: int, transaction_id: str) -> None:
        with self._lock:
            self.payments[out_trade_no] = PaymentStatus(out_trade_no, "succeeded", transaction_id, amount_fen, "CNY")

    def finish_refunds(self) -> None:
        """Every processing refund succeeds (the bank has paid it back)."""
        with self._lock:
            for number, status in list(self.refund_states.items()):
                if status.state == "processing":
                    self.refund_states[number] = RefundStatus(number, "succeeded", status.refund_id, status.amount_fen)

    def refunds_of(self, refund_no: str) -> list[RefundRequest]:
        with self._lock:
            return [request for request in self.refund_requests if request.out_refund_no == refund_no]

    # -- callbacks as WeChat Pay v3 sends them ----------------------------------------------------

    def sign(
        self,
        event: dict[str, str],
        resource: dict[str, Any],
        *,
        associated_data: str,
        timestamp: int | None = None,
        transaction_id: str | None = None,
    ) -> Callback:
        headers, body = sign_notification(
            event,
            resource,
            private_key_pem=_sandbox_keys()[0],
            serial=self.serial,
            api_v3_key=self.api_v3_key,
            timestamp=int(time.time()) if timestamp is None else timestamp,
            nonce=secrets.token_hex(16),
            associated_data=associated_data,
        )
        return Callback(headers, body, transaction_id)

    def payment_callback(
        self,
        out_trade_no: str,
        amount_fen: int,
        *,
        trade_state: str = "SUCCESS",
        transaction_id: str | None = None,
        event_id: str | None = None,
        currency: str = "CNY",
        timestamp: int | None = None,
    ) -> Callback:
        """A ``TRANSACTION.SUCCESS`` (or ``.CLOSED``) notification for ``out_trade_no``.

        A success reports ``transaction_id`` (a new one by default) as the payment's id.
        """
        now = utc_now()
        resource: dict[str, Any] = {
            "mchid": "1900000109",
            "appid": "wx-sandbox-mp",
            "out_trade_no": out_trade_no,
            "trade_type": "JSAPI",
            "trade_state": trade_state,
            "attach": "",
            "payer": {"openid": "oSandboxPayer"},
        }
        if trade_state == "SUCCESS":
            transaction_id = transaction_id or new_transaction_id()
            resource.update(
                transaction_id=transaction_id,
                trade_state_desc=PAID_ZH,
                bank_type="OTHERS",
                success_time=wechat_time(now),
                amount={
                    "total": amount_fen,
                    "payer_total": amount_fen,
                    "currency": currency,
                    "payer_currency": currency,
                },
            )
            summary = PAID_ZH
        else:
            resource.update(trade_state_desc=CLOSED_ZH, amount={"total": amount_fen, "currency": currency})
            summary = CLOSED_ZH
            transaction_id = None
        event = {
            "id": event_id or str(uuid.uuid4()),
            "create_time": wechat_time(now),
            "event_type": f"TRANSACTION.{trade_state}",
            "summary": summary,
        }
        return self.sign(
            event, resource, associated_data="transaction", timestamp=timestamp, transaction_id=transaction_id
        )

    def refund_callback(self, refund_no: str, out_trade_no: str, amount_fen: int, total_fen: int) -> Callback:
        """A ``REFUND.SUCCESS`` notification for our refund ``refund_no``."""
        now = utc_now()
        status = self.refund_states.get(refund_no)
        resource = {
            "mchid": "1900000109",
            "transaction_id": new_transaction_id(),
            "out_trade_no": out_trade_no,
            "refund_id": status.refund_id if status and status.refund_id else f"50{refund_no[-20:]}",
            "out_refund_no": refund_no,
            "refund_status": "SUCCESS",
            "success_time": wechat_time(now),
            "user_received_account": "\u652f\u4ed8\u7528\u6237\u96f6\u94b1",  # 支付用户零钱
            "amount": {"total": total_fen, "refund": amount_fen, "payer_total": total_fen, "payer_refund": amount_fen},
        }
        event = {
            "id": str(uuid.uuid4()),
            "create_time": wechat_time(now),
            "event_type": "REFUND.SUCCESS",
            "summary": REFUNDED_ZH,
        }
        return self.sign(event, resource, associated_data="refund")


@contextlib.contextmanager
def installed(provider: FakeProvider) -> Iterator[FakeProvider]:
    """``provider`` serves channel ``sandbox`` until the block ends."""
    from chalicelib.payments.registry import use_provider

    use_provider("sandbox", provider)
    try:
        yield provider
    finally:
        use_provider("sandbox", None)


# --- people, invitations, payments --------------------------------------------------------------


def phone() -> str:
    return f"137{(uuid.uuid4().int + next(_phones)) % 10**8:08d}"


@dataclass(frozen=True)
class People:
    """A verified doctor working ``day`` (capacity as asked), a patient, and an admin."""

    doctor: Principal
    patient: Principal
    admin: Principal
    hospital_id: str
    day: date


def make_admin(now: datetime) -> Principal:
    return Principal(signin.create_admin(phone(), PASSWORD, "Ops", now), ADMIN)


def make_people(admin: Principal, *, capacity: int = 5, days_ahead: int = 3, fee_fen: int = FEE_FEN) -> People:
    """A fresh doctor (so balances start at zero) and patient; the doctor works ``days_ahead`` from today."""
    now = utc_now()
    seed_directory(now)
    hospital_id = hospital_id_for(XIEHE, BEIJING)
    doctor = signin.register_with_phone(phone(), PASSWORD, DOCTOR, None, now).principal
    profiles.update_profile(
        doctor,
        ProfilePatch(
            name="Dr Zhou",
            hospital_id=hospital_id,
            title="attending",
            invitation_fee=fee_fen,
            consultation_fee=10_000,
            specialties=["cardiac"],
        ),
        now,
    )
    verification.submit(doctor, DOCTOR_CREDENTIALS, now)
    verification.decide(admin, doctor.user_id, True, None, now)
    day = shanghai_date(now) + timedelta(days=days_ahead)
    calendar.set_days(doctor.user_id, CalendarUpdate(days=[DaySetting(day, True, capacity, 1)]), now)
    patient = signin.register_with_phone(phone(), PASSWORD, PATIENT, None, now).principal
    return People(doctor, patient, admin, hospital_id, day)


def invitation_json(people: People, summary: AnesthesiaSummary = SUMMARY) -> dict[str, Any]:
    """The body of ``POST /v1/invitations`` from the patient to the doctor on the doctor's working day."""
    import msgspec

    return {
        "kind": "invitation",
        "doctor_id": people.doctor.user_id,
        "hospital_id": people.hospital_id,
        "date": people.day.isoformat(),
        "time": "09:00",
        "operation": {"procedure": "Laparoscopic cholecystectomy", "expected_minutes": 90},
        "summary": msgspec.to_builtins(summary),
    }


def invite(people: People, now: datetime | None = None) -> str:
    """A new invitation from the patient to the doctor on the doctor's working day; its id."""
    request = InvitationRequest(
        kind="invitation",
        doctor_id=people.doctor.user_id,
        hospital_id=people.hospital_id,
        date=people.day,
        time="09:00",
        operation=Operation(procedure="Laparoscopic cholecystectomy", expected_minutes=90),
        summary=SUMMARY,
    )
    status, body = service.create(people.patient, request, now or utc_now())
    assert status == 201, body
    return body["invitation_id"]


def open_order(people: People, invitation_id: str, now: datetime | None = None) -> str:
    """The invitation's payment order (through the provider installed now); its number."""
    _, body = orders.open_order(people.patient, OrderRequest("invitation", invitation_id, "sandbox"), now or utc_now())
    return body["order_id"]


def pay(order_id: str, amount_fen: int = FEE_FEN, now: datetime | None = None) -> str:
    """Apply a verified payment as a callback would (the settlement path both share)."""
    transaction_id = new_transaction_id()
    return settlement.apply_payment(
        settlement.Outcome(order_id, "succeeded", transaction_id, amount_fen, "CNY"),
        now or utc_now(),
        event_id=str(uuid.uuid4()),
    )


@dataclass(frozen=True)
class Ordered:
    """An invitation, its payment order (paid or not), and its accounts' balances from before any payment."""

    invitation_id: str
    order_id: str
    balances: Balances

    @property
    def refund_no(self) -> str:
        """The number of its refund (one per invitation)."""
        return f"RF{self.invitation_id}"


def ordered_invitation(people: People, now: datetime | None = None) -> Ordered:
    """An invitation with its payment order opened, not paid (``awaiting_payment``)."""
    invitation_id = invite(people, now)
    tracked = Balances(invitation_id, people.doctor.user_id)
    return Ordered(invitation_id, open_order(people, invitation_id, now), tracked)


def paid_invitation(people: People, now: datetime | None = None) -> Ordered:
    """An invitation the patient has paid (``pending_response``)."""
    ordered = ordered_invitation(people, now)
    assert pay(ordered.order_id, now=now) == "applied"
    return ordered


def invitation(invitation_id: str) -> Invitation:
    return engine.load(invitation_id)


def order(order_id: str) -> PaymentOrder:
    found = orders.get(order_id)
    assert found is not None, order_id
    return found


def refund_order(invitation_id: str) -> RefundOrder | None:
    return refunds.get(refunds.refund_number(invitation_id))


def the_refund(invitation_id: str) -> RefundOrder:
    """The invitation's refund order, which must exist."""
    found = refund_order(invitation_id)
    assert found is not None, invitation_id
    return found


def booked(people: People) -> int:
    day = CalendarDay.get(f"CALENDAR#{people.doctor.user_id}", people.day.isoformat(), consistent_read=True)
    return int(day.invitations_booked or 0)


def transitions(invitation_id: str) -> list[str]:
    """The names of the transitions in the invitation's history, in order."""
    return [step.transition for step in invitation(invitation_id).history]


# --- the ledger ---------------------------------------------------------------------------------


def fee_shard(invitation_id: str) -> str:
    return accounts.fee_account(invitation_id, get_settings().ledger_shards)


def clearing_shard(invitation_id: str) -> str:
    return accounts.clearing_account("sandbox", invitation_id, get_settings().ledger_shards)


def postings_of(invitation_id: str) -> dict[str, dict[str, int]]:
    """Every journal transaction about the invitation: tx id → entries."""
    found: dict[str, dict[str, int]] = {}
    for tx in JournalTransaction.by_owner.query(
        TRANSACTIONS_LIST, filter_condition=JournalTransaction.reference == f"invitation:{invitation_id}"
    ):
        assert tx.tx_id not in found, f"{tx.tx_id} listed twice"
        found[tx.tx_id] = {account: int(amount) for account, amount in tx.entries.as_dict().items()}
    return found


@dataclass
class Balances:
    """Balances of the accounts one invitation touches, read at creation, to compare deltas later.

    The fee and clearing accounts are shards shared with other invitations of the run,
    so they are compared as deltas; escrow and the doctor's accounts start at zero.
    """

    invitation_id: str
    doctor_id: str
    start: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start = {account: balance(account) for account in self.accounts}

    @property
    def accounts(self) -> list[str]:
        return [
            accounts.escrow(self.invitation_id),
            accounts.doctor_pending(self.doctor_id),
            accounts.doctor_available(self.doctor_id),
            fee_shard(self.invitation_id),
            clearing_shard(self.invitation_id),
        ]

    def moved(self) -> dict[str, int]:
        """What each account moved since creation (``escrow``, ``pending``, ``available``, ``fee``, ``clearing``)."""
        names = ("escrow", "pending", "available", "fee", "clearing")
        return {
            name: balance(account) - self.start[account] for name, account in zip(names, self.accounts, strict=True)
        }


def expect_moved(
    tracked: Balances, *, escrow: int = 0, pending: int = 0, available: int = 0, fee: int = 0, clearing: int = 0
) -> None:
    assert tracked.moved() == {
        "escrow": escrow,
        "pending": pending,
        "available": available,
        "fee": fee,
        "clearing": clearing,
    }


def drain_jobs() -> None:
    """Run the expiry and refund jobs far ahead, so invitations earlier tests left behind are settled.

    The jobs read whole queues, and the fee and clearing shards are shared: a test that
    runs a job and compares shard balances drains the queues first, with its own provider.
    """
    from chalicelib.invitations import deadlines

    far = utc_now() + timedelta(days=120)
    deadlines.expire_due(far, limit=1000)
    deadlines.follow_up_refunds(far, limit=1000)


# --- threads ------------------------------------------------------------------------------------


def race(count: int, call: Callable[[int], T], *, timeout: float = 60) -> list[T | Exception]:
    """Run ``call(0..count-1)`` on ``count`` threads released together; each result or raised exception."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T | Exception:
        barrier.wait(timeout=timeout)
        try:
            return call(index)
        except Exception as error:  # the outcome under test
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def api_errors(outcomes: list[Any]) -> list[ApiError]:
    """The ``ApiError`` outcomes; any other exception is raised (a 500 in the making)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, ApiError):
            raise outcome
    return [outcome for outcome in outcomes if isinstance(outcome, ApiError)]


def until_settled(action: Callable[[], Any], attempts: int = 20) -> Any:
    """Retry ``action`` while it answers 409 ``conflict`` (as a client told to retry would)."""
    for _ in range(attempts - 1):
        try:
            return action()
        except ApiError as error:
            if error.code != "conflict":
                raise
    return action()


# --- faults -------------------------------------------------------------------------------------


def _model_classes() -> list[type]:
    found: list[type] = []
    pending: list[type] = list(TABLE_MODELS)
    while pending:
        model = pending.pop()
        found.append(model)
        pending.extend(model.__subclasses__())
    return found


def pynamodb_clients() -> list[Any]:
    """The botocore clients of every PynamoDB model (one per connection), each once."""
    clients: dict[int, Any] = {}
    for model in _model_classes():
        client = model._get_connection().connection.client  # type: ignore[attr-defined]
        clients[id(client)] = client
    return list(clients.values())


@contextlib.contextmanager
def transact_write_hook(stage: str, handler: Callable[..., Any]) -> Iterator[None]:
    """Register ``handler`` for ``<stage>.dynamodb.TransactWriteItems`` on every PynamoDB client.

    ``stage`` is ``before-call`` (may answer instead of DynamoDB: return ``(http, parsed)``),
    ``after-call`` (after the real call: raise to lose its answer) or ``before-send`` (return
    an ``AWSResponse`` in place of the HTTP exchange: botocore's retries still apply).
    """
    event = f"{stage}.dynamodb.TransactWriteItems"
    clients = pynamodb_clients()
    for client in clients:
        client.meta.events.register(event, handler)
    try:
        yield
    finally:
        for client in clients:
            client.meta.events.unregister(event, handler)


@dataclass(frozen=True)
class _Http:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


def cancelled_reply(params: dict[str, Any], code: str = "TransactionConflict") -> tuple[_Http, dict[str, Any]]:
    """DynamoDB's answer to a ``TransactWriteItems`` it cancelled: ``code`` on the first item."""
    items = json.loads(params["body"])["TransactItems"] if isinstance(params.get("body"), (bytes, str)) else []
    reasons = [{"Code": "None"} for _ in items] or [{"Code": "None"}]
    reasons[0] = {"Code": code, "Message": "Transaction is ongoing for the item"}
    parsed = {
        "Error": {"Code": "TransactionCanceledException", "Message": f"Transaction cancelled [{code}]"},
        "CancellationReasons": reasons,
        "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
    }
    return _Http(400), parsed


def throttled_reply() -> tuple[_Http, dict[str, Any]]:
    """DynamoDB's answer when the request rate is too high (after botocore's retries gave up)."""
    parsed = {
        "Error": {"Code": "ThrottlingException", "Message": "Rate of requests exceeds the allowed throughput."},
        "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
    }
    return _Http(400), parsed


def throttled_wire_response(request: Any) -> Any:
    """The raw HTTP answer of a throttled request, for a ``before-send`` hook (botocore retries it)."""
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def stream(self, **_: Any) -> Iterator[bytes]:
            yield self._data

    body = json.dumps(
        {
            "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
            "message": "Rate of requests exceeds the allowed throughput.",
        }
    ).encode()
    return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))


class Budget:
    """Counts down: ``take()`` is True the first ``n`` times (thread-safe)."""

    def __init__(self, n: int) -> None:
        self._left = n
        self._lock = threading.Lock()
        self.spent = 0

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            self.spent += 1
            return True


# --- HTTP ---------------------------------------------------------------------------------------


def project_without_stage_variables(folder: Path) -> Path:
    """A Chalice project folder whose ``local`` stage sets no environment variables."""
    (folder / ".chalice").mkdir(exist_ok=True)
    config = {"version": "2.0", "app_name": "anes", "stages": {"local": {"api_gateway_stage": "api"}}}
    (folder / ".chalice" / "config.json").write_text(json.dumps(config))
    return folder


@contextlib.contextmanager
def api_client(folder: Path) -> Iterator[Any]:
    """``chalice.test.Client`` of the app on the ``local`` stage, against this run's tables."""
    from chalice.test import Client

    from app import app
    from chalicelib import idempotency

    get_settings()  # read (and cached) before any request
    idempotency.reset()  # its client is made after the SDKs point at DynamoDB Local
    try:
        with Client(app, stage_name="local", project_dir=str(project_without_stage_variables(folder))) as client:
            yield client
    finally:
        idempotency.reset()


def bearer(principal: Principal) -> dict[str, str]:
    token, _ = tokens.issue_access_token(principal, datetime.now(UTC))
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def http(
    client: Any,
    method: str,
    path: str,
    principal: Principal | None = None,
    body: Any = None,
    *,
    key: str | None = None,
) -> Any:
    """One JSON request as ``principal`` (anonymous when None), with an ``Idempotency-Key`` when given."""
    headers = bearer(principal) if principal is not None else {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = json.dumps(body).encode() if body is not None else b""
    return client.http.request(method, path, headers=headers, body=payload)


def post_callback(client: Any, callback: Callback) -> Any:
    """POST the callback's raw bytes and headers to ``/v1/payments/callbacks/sandbox``."""
    return client.http.request("POST", "/v1/payments/callbacks/sandbox", headers=callback.headers, body=callback.body)


def error_code(response: Any) -> str | None:
    body = response.json_body
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


def exists(model: type, hash_key: str, range_key: str) -> bool:
    try:
        model.get(hash_key, range_key, consistent_read=True)  # type: ignore[attr-defined]
    except DoesNotExist:
        return False
    return True


# --- checks -------------------------------------------------------------------------------------


def assert_ledger_ok() -> None:
    """The ledger's invariants hold."""
    report = check_ledger()
    assert report.ok, report.violations


def assert_ledger_ok_listing(reference: str) -> None:
    """The ledger's invariants hold, and a note for an operator names ``reference``."""
    report = check_ledger()
    assert report.ok, report.violations
    assert any(reference in note for note in report.attention), report.attention


def assert_paid_once(ordered: Ordered, transaction_id: str | None) -> None:
    """The payment ``transaction_id`` was taken in once: paid, in escrow, its id remembered."""
    assert transaction_id is not None
    assert transitions(ordered.invitation_id) == ["create", "pay"]
    assert invitation(ordered.invitation_id).status == "pending_response"
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}"}
    paid = order(ordered.order_id)
    assert (paid.status, paid.provider_ref) == ("succeeded", transaction_id)
    expect_moved(ordered.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    assert exists(ProviderSeen, seen_key("sandbox", "txn", transaction_id), "SEEN")
    assert_ledger_ok()


def assert_accepted_once(people: People, ordered: Ordered) -> None:
    """The invitation was accepted once: the fee split once, one place of the day booked."""
    assert transitions(ordered.invitation_id) == ["create", "pay", "accept"]
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}", f"accept:{ordered.invitation_id}"}
    expect_moved(ordered.balances, pending=DOCTOR_SHARE_FEN, fee=PLATFORM_FEE_FEN, clearing=-FEE_FEN)
    assert booked(people) == 1
    assert_ledger_ok()


def assert_refunded_once(ordered: Ordered, provider: FakeProvider, calls: int = 1) -> None:
    """The payment was taken in once and refunded in full once; the provider was asked ``calls`` times."""
    assert invitation(ordered.invitation_id).status == "refunded"
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}", f"refund:{ordered.refund_no}"}
    expect_moved(ordered.balances)
    requests = provider.refunds_of(ordered.refund_no)
    assert len(requests) == calls
    assert {(request.out_trade_no, request.amount_fen) for request in requests} == {(ordered.order_id, FEE_FEN)}
    assert_ledger_ok()
