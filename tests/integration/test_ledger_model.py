"""The whole money system against a model, step by step (issue 5 item 7, design.md §4 L1–L6).

A Hypothesis ``RuleBasedStateMachine`` drives the product as its users, the payment
provider and the scheduler do — over HTTP where there is a route (``chalice.test.Client``
on DynamoDB Local), otherwise through the job the scheduler calls, always at an explicit
business time — and keeps a model of what every step must do: the answer (status and
error code), the invitations' statuses, the orders' states, every journal transaction
with its entries, each party's statement and the doctor's wallet.

Complaints (issue 6, C7/C8) are part of it: the requester complains, the back office
confirms (with or without a refund) or rejects. A refund for a service not delivered
takes the money into ``claim:<invitation>`` — the doctor's share from pending before
release, from available after it and, what available no longer holds, as the doctor's
receivable (owed) — and the fee shard's part; the claim goes to the provider when the
refund settles. Releases and tips repay what the doctor owes first; a withdrawal repays
it first too, and only money beyond the debt may leave.

After EVERY step the invariants are checked, over this example's data only:

- L1–L4 and L6 (``ledger_model.LedgerProbe``): transactions sum to zero; each balance moved
  by exactly its entries written since the example started, and every entry matches its
  transaction; no account but a provider's clearing account or a doctor's receivable below
  zero, no receivable above zero; nothing once written changes; an escrow (or a claim) is
  left once at most;
- the model: the example's transactions are exactly the expected ones, with the expected
  entries; its private balances (escrows, claims, the doctor's four) are the expected ones; the
  invitations and the payment, refund and payout orders are in the expected states;
- money in from the provider minus money out (the provider's own records, for what our
  side says it applied) equals what the ledger says left the provider's clearing accounts,
  and equals all the money the example's accounts hold;
- the wallet equals the ledger (``GET /v1/me/wallet``, ``owed_fen`` the receivable negated);
  each party's statement (``GET /v1/me/transactions``) has exactly the expected rows (type,
  direction, amount, status and the doctor's balances moved); a bought membership ends when expected.

L5 has its own rule: a money POST sent again with the same ``Idempotency-Key`` answers the
same and moves nothing; with another body it is 409 ``idempotency_key_reused``. At the end
of every example the scheduler's jobs run until everything that can settle has settled
(modelled too), and the whole ledger is audited once at the end (``check_ledger``).

Size: ``LEDGER_MODEL_EXAMPLES`` (default below) examples of ``LEDGER_MODEL_STEPS`` steps;
``LEDGER_MODEL_SEED`` replays one run (the seed is printed when a run fails).
"""

from __future__ import annotations

import functools
import os
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from hypothesis import HealthCheck, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, initialize, invariant, precondition, rule

from chalicelib.accounts import profiles, signin, verification
from chalicelib.accounts.profiles import ProfilePatch
from chalicelib.accounts.roles import DOCTOR, HOSPITAL, PATIENT, Principal
from chalicelib.accounts.verification import Credentials
from chalicelib.clock import SHANGHAI, iso, shanghai_date
from chalicelib.config import get_settings
from chalicelib.directory.hospitals import hospital_id_for, seed_directory
from chalicelib.doctors import calendar
from chalicelib.doctors.calendar import CalendarUpdate, RangeSetting
from chalicelib.invitations import deadlines
from chalicelib.invitations.machine import (
    ACCEPTED,
    AWAITING_PAYMENT,
    CANCELLED,
    CLOSED,
    COMPLETED,
    CONFIRMED,
    DECLINED,
    EXPIRED,
    NOT_DELIVERED,
    PENDING_RESPONSE,
    REFUNDED,
    REFUNDING,
)
from chalicelib.invitations.requests import InvitationRequest, Operation
from chalicelib.ledger import accounts
from chalicelib.ledger.audit import check_ledger
from chalicelib.payments import settlement
from tests.integration.flow_helpers import (
    BEIJING,
    DOCTOR_CREDENTIALS,
    PASSWORD,
    SUMMARY,
    XIEHE,
    error_code,
    http,
    installed,
    new_transaction_id,
    phone,
    post_callback,
)
from tests.integration.ledger_model import (
    PAYOUT_ANSWERS,
    Clock,
    LedgerProbe,
    ModelProvider,
    World,
    business_clock,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from chalicelib.config import Settings

EXAMPLES = int(os.environ.get("LEDGER_MODEL_EXAMPLES", "200"))
STEPS = int(os.environ.get("LEDGER_MODEL_STEPS", "30"))

FEES = (10_000, 50_005, 333_333, 2_000_000)
"""The doctor's invitation fee, one per example: round, rounding half up, odd, the largest allowed."""
CAPACITY = 2
"""Invitations the doctor takes per day (so ``date_full`` happens)."""
CALENDAR_DAYS = 45
MAX_INVITATIONS = 8
TIME_BUDGET = timedelta(days=40)
"""An example stops advancing the clock by itself after this (deadline jumps still happen)."""
JOB_LIMIT = 1000
USED: list[datetime] = []
"""The business time each run of the machine in this process reached (the next one starts later)."""
SEEN: Counter[str] = Counter()
"""How often each kind of outcome happened over the run (printed at the end: is everything reached?)."""
DOCTOR_NAME = "Zhou Lan"
HOSPITAL_CREDENTIALS = Credentials(
    institution_licence_no="PDY00001-1101", unified_social_credit_code="91440300708461136T"
)
PAYEES: dict[str, dict[str, str]] = {
    "alipay": {"kind": "alipay", "account": "13800138000", "real_name": DOCTOR_NAME},
    "bank_card": {
        "kind": "bank_card",
        "holder_name": DOCTOR_NAME,
        "bank": "ICBC",
        "card_number": "6222 0212 3456 7890 128",
    },
    "wechat": {"kind": "wechat", "app": "mp"},
}
PICK = st.integers(min_value=0, max_value=7)
FITTING = st.integers(min_value=0, max_value=3).map(bool)
"""Mostly pick an invitation the operation fits; sometimes any (the refusals are part of the model too)."""
REFUND_MODES = st.sampled_from(("succeed", "processing", "fail"))
DELIVERIES = st.sampled_from(("callback", "direct", "lost"))
DETOURS = st.sampled_from(("none", "decline", "expire", "cancel_early", "cancel_late"))
WITHDRAWALS = ("below_minimum", "minimum", "half", "all", "one_over", "all_held", "day_left", "over_day_left")
"""``all``: everything beyond what the doctor owes; ``one_over``: a fen more; ``all_held``: all that is available."""
OPEN_PAYOUT = ("requested", "processing", "wait_user_confirm")
PRIVATE_KINDS = ("escrow:", "claim:")
"""Per-invitation accounts only this example's postings touch (with the fresh doctor's own four)."""
COMPLAINABLE = (ACCEPTED, COMPLETED, CONFIRMED)
COMPLAINTS = {"not_delivered": "Nobody came to the theatre", "late": "The anesthesiologist came two hours late"}
"""The two complaint bodies a requester sends (the same one again is answered 200, another 409)."""
GONE_WRONG = 2
"""``a_service_goes_wrong`` runs at most this often per example (it is long; Hypothesis sometimes repeats a rule)."""
DECISIONS = st.sampled_from(("refund", "refund", "confirm", "reject"))
"""The back office's decision: confirmed with a refund (not delivered; the money path, so twice as often),
confirmed without one, or rejected."""
STATEMENT_STATUS = {
    "payment": "paid",
    "acceptance": "held",
    "release": "available",
    "refund": "refunded",
    "tip": "paid",
    "membership": "paid",
    "withdrawal": "requested",
    "payout": "paid_out",
    "payout_return": "returned",
    "claim": "taken_back",
}
"""Where the money of each kind of movement stands, as a statement row says (api.md)."""


def share(amount: int, bps: int) -> int:
    """``amount × bps / 10 000`` rounded half up (the fee rule of design.md, restated)."""
    return (amount * bps + 5_000) // 10_000


# --- the model ---------------------------------------------------------------------------------


@dataclass
class Grievance:
    """A complaint as the model expects it: what was filed, and the back office's decision."""

    category: str
    status: str = "open"
    refund: bool = False


@dataclass
class Inv:
    """An invitation as the model expects it."""

    name: str
    invitation_id: str
    requester: str
    fee: int
    day: date
    scheduled_at: datetime
    created_at: datetime
    window_end: datetime
    status: str = AWAITING_PAYMENT
    order_id: str | None = None
    seen_by_doctor: bool = False
    deadline: datetime | None = None
    share: int = 0
    platform_fee: int = 0
    booked: bool = False
    hold_until: datetime | None = None
    refund_no: str | None = None
    tip_slot: str | None = None
    ended_at: datetime | None = None
    """When it was confirmed (the complaint window counts from then)."""
    complaint: Grievance | None = None

    @property
    def complaint_id(self) -> str:
        return f"CP{self.invitation_id}"

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


@dataclass
class Order:
    """A payment order (invitation, tip or membership): our state and the provider's."""

    order_id: str
    purpose: str
    payer: str
    amount: int
    expires_at: datetime
    inv: Inv | None
    ours: str = "pending"
    at_provider: str = "pending"
    transaction_id: str | None = None
    event_id: str | None = None


@dataclass
class Refund:
    refund_no: str
    inv: Inv
    amount: int
    entries: dict[str, int]
    ours: str = "requested"


@dataclass
class Withdrawal:
    out_bill_no: str
    amount: int
    day: str
    created_at: datetime
    ours: str = "requested"
    sends: int = 0


@dataclass(frozen=True)
class Replayable:
    """A money POST that succeeded: sent again, it must answer the same."""

    who: str
    path: str
    body: Any
    key: str
    status: int
    answer: Any


Row = tuple[str, str, str, int, str, tuple[tuple[str, int], ...]]
"""A statement row: transaction, type, direction, amount, status, and the doctor's balances it moved."""


@dataclass
class Books:
    """The journal transactions the example must have written, and each party's statement rows."""

    doctor_id: str
    txs: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=lambda: {"patient": [], "hospital": [], "doctor": []})

    def post(self, tx_id: str, kind: str, reference: str, entries: dict[str, int], payer: str | None = None) -> None:
        moved = {account: amount for account, amount in entries.items() if amount}
        assert sum(moved.values()) == 0, f"model error: {tx_id} does not balance: {moved}"
        assert tx_id not in self.txs, f"model error: {tx_id} posted twice"
        self.txs[tx_id] = (reference, moved)
        prefix = f"doctor:{self.doctor_id}:"
        doctor = {account: amount for account, amount in moved.items() if account.startswith(prefix)}
        status = STATEMENT_STATUS[kind]
        if doctor:
            net = sum(doctor.values())
            balances = tuple(sorted((account.removeprefix(prefix), amount) for account, amount in doctor.items()))
            if net:
                self.rows["doctor"].append((tx_id, kind, "in" if net > 0 else "out", abs(net), status, balances))
            else:
                moved_in = sum(a for a in doctor.values() if a > 0)
                self.rows["doctor"].append((tx_id, kind, "internal", moved_in, status, balances))
        if payer is not None:
            paid = sum(amount for account, amount in moved.items() if account.startswith("provider:"))
            if paid:
                self.rows[payer].append((tx_id, kind, "in" if paid > 0 else "out", abs(paid), status, ()))

    def balance(self, account: str) -> int:
        return sum(entries.get(account, 0) for _, entries in self.txs.values())


def tracked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the example failed when ``method`` raises, so ``teardown`` does not pile more on it."""

    @functools.wraps(method)
    def run(self: LedgerMachine, *args: Any, **kwargs: Any) -> Any:
        self.step_name = method.__name__
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return run


# --- the machine -------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """One example: a fresh doctor, patient and hospital, and up to ``STEPS`` operations on them."""

    world: World

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.failed = False
        self.step_name = ""
        self.log: list[str] = []

    # -- time ------------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.world.clock.now

    def _advance(self, **delta: float) -> None:
        self._advance_to(self.now + timedelta(**delta))

    def _advance_to(self, instant: datetime) -> None:
        if instant > self.now:
            self.world.clock.now = instant.replace(microsecond=0)
            self.world.used(self.world.clock.now)

    def _say(self, text: str) -> None:
        line = f"[+{self.now - self.start}] {text}"
        self.log.append(line)
        note(line)

    # -- the start -------------------------------------------------------------------------------

    @initialize(fee=st.sampled_from(FEES))
    @tracked
    def open_the_books(self, fee: int) -> None:
        world = self.world
        settle_times, start = world.next_start()
        settle_leftovers(world, settle_times)
        world.clock.now = start
        self.start = start
        self.settings: Settings = get_settings()
        self.provider = world.provider
        self.hospital_id = hospital_id_for(XIEHE, BEIJING)
        self.fee = fee
        self.people = {**make_parties(world.admin, self.hospital_id, fee, start), "admin": world.admin}
        today = shanghai_date(start)
        self.calendar = (today, today + timedelta(days=CALENDAR_DAYS))
        doctor_id = self.people["doctor"].user_id
        self.pending, self.available, self.payout, self.receivable = (
            accounts.doctor_pending(doctor_id),
            accounts.doctor_available(doctor_id),
            accounts.doctor_payout(doctor_id),
            accounts.doctor_receivable(doctor_id),
        )
        self.invs: list[Inv] = []
        self.orders: dict[str, Order] = {}
        self.refunds: dict[str, Refund] = {}
        self.withdrawals: dict[str, Withdrawal] = {}
        self.payout_accounts: dict[str, str] = {}
        self.withdrawn: Counter[str] = Counter()
        self.booked: Counter[date] = Counter()
        self.member_until: datetime | None = None
        self.membership_slot: str | None = None
        self.replayable: list[Replayable] = []
        self.withdraw_tries = self.account_tries = self.gone_wrong = 0
        self.books = Books(doctor_id)
        self.statement_seen = -1
        self.wallet_seen: tuple[int, ...] = ()
        self.membership_seen: datetime | None = None
        shards = range(self.settings.ledger_shards)
        baseline = [f"{accounts.PLATFORM_FEES}:{n}" for n in shards]
        baseline += [f"{accounts.provider('sandbox')}:{n}" for n in shards]
        baseline += [accounts.PLATFORM_MEMBERSHIP, accounts.PLATFORM_TIPS, *self._doctor_accounts()]
        self.probe = LedgerProbe(start, baseline)
        self.ready = True
        self._say(f"a doctor charging {fee} fen, a patient and a hospital")
        self.invite("patient", 2, 9)  # every example has an invitation to move on from

    # -- helpers ---------------------------------------------------------------------------------

    def _doctor_accounts(self) -> tuple[str, str, str, str]:
        return self.pending, self.available, self.payout, self.receivable

    def _owed(self) -> int:
        """What the doctor owes (the receivable, ≤ 0, negated)."""
        return -self.books.balance(self.receivable)

    def _earned(self, kind: str, amount: int) -> dict[str, int]:
        """Where money the doctor earns goes (a release, a tip): first what they owe, the rest available."""
        owed = self._owed()
        repaid = min(owed, amount)
        if repaid:
            SEEN[f"model: a {kind} repays a debt ({'in full' if repaid == owed else 'in part'})"] += 1
        return {self.receivable: repaid, self.available: amount - repaid}

    def _some(self, wanted: Callable[[Inv], bool]) -> bool:
        return self.ready and any(wanted(inv) for inv in self.invs)

    def _payable_now(self, inv: Inv) -> bool:
        return inv.status == AWAITING_PAYMENT and self.now < inv.window_end

    def _answerable(self, inv: Inv) -> bool:
        return inv.status == PENDING_RESPONSE and inv.deadline is not None and self.now < inv.deadline

    def _cancellable(self, inv: Inv) -> bool:
        return inv.status in (AWAITING_PAYMENT, PENDING_RESPONSE) or (
            inv.status == ACCEPTED and self.now < inv.scheduled_at
        )

    def _pick(self, pick: int, fitting: bool, wanted: Callable[[Inv], bool]) -> Inv:
        """An invitation: one in a state the operation fits (when asked and there is one), else any."""
        candidates = [inv for inv in self.invs if wanted(inv)] if fitting else []
        pool = candidates or self.invs
        return pool[pick % len(pool)]

    def _post(self, who: str, path: str, body: Any) -> Any:
        """A money POST with a fresh ``Idempotency-Key``; remembered for replays when it succeeded."""
        key = uuid.uuid4().hex
        response = http(self.world.api, "POST", path, self.people[who], body, key=key)
        if 200 <= response.status_code < 300:
            self.replayable.append(Replayable(who, path, body, key, response.status_code, _json(response)))
        return response

    def _expect(self, what: str, response: Any, status: int, code: str | None = None) -> Any:
        answer = _json(response)
        got = (response.status_code, error_code(response) if code else None)
        self._say(f"{what} -> {response.status_code} {error_code(response) or ''}".rstrip())
        SEEN[f"{self.step_name} -> {response.status_code} {code or ''}".rstrip()] += 1
        if got != (status, code):
            raise AssertionError(f"{what}: expected {status} {code or ''}, got {response.status_code} {answer}")
        return answer

    def _same_status(self, what: str, answer: Any, inv: Inv) -> None:
        assert answer["status"] == inv.status, f"{what}: answered status {answer['status']}, expected {inv}"

    def _job_ok(self, name: str, report: dict[str, int]) -> None:
        self._say(f"job {name}: {report}")
        SEEN[f"job {name}: {'something due' if report['due'] else 'nothing due'}"] += 1
        assert report["failed"] == 0, f"job {name} failed on some item: {report}"

    def _clearing(self, key: str) -> str:
        return accounts.clearing_account("sandbox", key, self.settings.ledger_shards)

    # -- model transitions -----------------------------------------------------------------------

    def _provider_takes_payment(self, order: Order) -> None:
        order.transaction_id = new_transaction_id()
        self.provider.mark_paid(order.order_id, order.amount, order.transaction_id)
        order.at_provider = "succeeded"

    def _deliver(self, order: Order, delivery: str, event_id: str | None = None) -> None:
        """The provider's success reaches us by callback (HTTP), a direct settlement call, or not at all."""
        if delivery == "callback":
            callback = self.provider.payment_callback(
                order.order_id,
                order.amount,
                transaction_id=order.transaction_id,
                event_id=event_id,
                timestamp=int(self.now.timestamp()),
            )
            order.event_id = callback.event_id
            self._expect(f"callback: {order.order_id} paid", post_callback(self.world.api, callback), 204)
            self._payment_applied(order)
        elif delivery == "direct":
            outcome = settlement.Outcome(order.order_id, "succeeded", order.transaction_id, order.amount, "CNY")
            result = settlement.apply_payment(outcome, self.now, event_id=str(uuid.uuid4()))
            expected = "duplicate" if order.ours == "succeeded" else "applied"
            self._say(f"settlement of {order.order_id}: {result}")
            assert result == expected, f"apply_payment({order.order_id}) answered {result}, expected {expected}"
            self._payment_applied(order)
        else:
            self._say(f"the callback for {order.order_id} is lost")

    def _payment_applied(self, order: Order) -> None:
        if order.ours == "succeeded":
            return
        assert order.ours == "pending", f"model error: a payment applied to {order.order_id}, {order.ours}"
        order.ours = "succeeded"
        SEEN[f"model: a {order.purpose} payment applied ({self.step_name})"] += 1
        settings = self.settings
        if order.purpose == "invitation":
            inv = order.inv
            assert inv is not None and inv.status == AWAITING_PAYMENT, f"model error: payment for {inv}"
            inv.status, inv.seen_by_doctor = PENDING_RESPONSE, True
            latest = inv.scheduled_at - timedelta(hours=settings.response_margin_hours)
            inv.deadline = max(min(self.now + timedelta(hours=settings.response_hours), latest), self.now)
            entries = {
                self._clearing(inv.invitation_id): -order.amount,
                accounts.escrow(inv.invitation_id): order.amount,
            }
            self.books.post(f"pay:{order.order_id}", "payment", f"invitation:{inv.invitation_id}", entries, order.payer)
        elif order.purpose == "tip":
            inv = order.inv
            assert inv is not None
            if inv.tip_slot == order.order_id:
                inv.tip_slot = None
            fee = share(order.amount, settings.tip_fee_bps)
            entries = {
                self._clearing(order.order_id): -order.amount,
                **self._earned("tip", order.amount - fee),
                accounts.PLATFORM_TIPS: fee,
            }
            self.books.post(f"tip:{order.order_id}", "tip", f"invitation:{inv.invitation_id}", entries, order.payer)
        else:
            if self.membership_slot == order.order_id:
                self.membership_slot = None
            days = self._plan().days
            base = self.member_until if self.member_until and self.member_until > self.now else self.now
            self.member_until = base + timedelta(days=days)
            entries = {self._clearing(order.order_id): -order.amount, accounts.PLATFORM_MEMBERSHIP: order.amount}
            hospital = self.people["hospital"].user_id
            self.books.post(f"membership:{order.order_id}", "membership", f"membership:{hospital}", entries, "hospital")

    def _order_closed(self, order: Order) -> None:
        order.at_provider, order.ours = "closed", "closed"
        inv = order.inv
        if order.purpose == "invitation" and inv is not None and inv.status == AWAITING_PAYMENT:
            inv.status = CLOSED
        if order.purpose == "tip" and inv is not None and inv.tip_slot == order.order_id:
            inv.tip_slot = None
        if order.purpose == "membership" and self.membership_slot == order.order_id:
            self.membership_slot = None

    def _full_refund(self, inv: Inv) -> dict[str, int]:
        return {accounts.escrow(inv.invitation_id): -inv.fee, self._clearing(inv.invitation_id): inv.fee}

    def _start_refund(self, inv: Inv, status: str, entries: dict[str, int], amount: int, mode: str) -> None:
        inv.status, inv.refund_no = status, f"RF{inv.invitation_id}"
        refund = Refund(inv.refund_no, inv, amount, {a: v for a, v in entries.items() if v})
        self.refunds[refund.refund_no] = refund
        self._send_refund(refund, mode)

    def _send_refund(self, refund: Refund, mode: str) -> None:
        SEEN[f"model: a refund sent, the provider answers {mode}"] += 1
        if mode == "processing":
            refund.ours = "processing"
            if refund.inv.status == NOT_DELIVERED:
                SEEN["model: a complaint's refund: not_delivered -> refunding"] += 1
            if refund.inv.status in (DECLINED, EXPIRED, CANCELLED, NOT_DELIVERED):
                refund.inv.status = REFUNDING
        elif mode == "succeed":
            self._refund_settled(refund)

    def _refund_settled(self, refund: Refund) -> None:
        SEEN[f"model: a refund settled ({refund.ours} before)"] += 1
        if refund.inv.complaint is not None:
            SEEN[f"model: a complaint's refund: {refund.inv.status} -> refunded ({refund.ours} before)"] += 1
        refund.ours, refund.inv.status = "succeeded", REFUNDED
        inv = refund.inv
        self.books.post(
            f"refund:{refund.refund_no}", "refund", f"invitation:{inv.invitation_id}", refund.entries, inv.requester
        )

    def _release(self, inv: Inv) -> None:
        inv.status, inv.ended_at = CONFIRMED, self.now
        entries = {self.pending: -inv.share, **self._earned("release", inv.share)}
        self.books.post(f"release:{inv.invitation_id}", "release", f"invitation:{inv.invitation_id}", entries)

    def _send_payout(self, withdrawal: Withdrawal, answer: str) -> None:
        withdrawal.sends += 1
        SEEN[f"model: a payout sent (try {withdrawal.sends}), the provider answers {answer}"] += 1
        if answer in ("timeout_lost", "timeout_received"):
            return  # the outcome is unknown: it stays requested, to be queried first
        self._payout_reported(withdrawal, "failed" if answer == "refused" else answer)

    def _payout_reported(self, withdrawal: Withdrawal, state: str) -> None:
        if withdrawal.ours not in OPEN_PAYOUT:
            return
        SEEN[f"model: a payout {withdrawal.ours} -> {state}"] += 1
        number, amount = withdrawal.out_bill_no, withdrawal.amount
        if state == "succeeded":
            withdrawal.ours = state
            entries = {self.payout: -amount, self._clearing(number): amount}
            self.books.post(f"payout:{number}", "payout", f"withdrawal:{number}", entries)
        elif state in ("failed", "cancelled"):
            withdrawal.ours = state
            self.withdrawn[withdrawal.day] -= amount
            entries = {self.payout: -amount, self.available: amount}
            self.books.post(f"payout_return:{number}", "payout_return", f"withdrawal:{number}", entries)
        else:
            withdrawal.ours = state

    def _plan(self) -> Any:
        return next(iter(self.settings.membership_plans.values()))

    def _open_slot_order(
        self, what: str, response: Any, slot: str | None, purpose: str, payer: str, amount: int, inv: Inv | None
    ) -> Order:
        """The answer to a tip or membership order request, by the slot rule: the open order again
        when it is the same; otherwise the open one is closed (or, paid meanwhile, applied) and a new one opens."""
        existing = self.orders.get(slot) if slot else None
        if existing is not None and existing.ours == "pending":
            if self.now < existing.expires_at and existing.amount == amount:
                answer = self._expect(what, response, 200)
                assert answer["order_id"] == existing.order_id, f"{what}: another order {answer}"
                return existing
            if existing.at_provider == "succeeded":
                self._payment_applied(existing)
            else:
                self._order_closed(existing)
        answer = self._expect(what, response, 201)
        prefix = {"tip": "PT", "membership": "PM"}[purpose]
        assert answer["order_id"].startswith(prefix) and answer["amount_fen"] == amount, f"{what}: {answer}"
        order = Order(
            answer["order_id"],
            purpose,
            payer,
            amount,
            self.now + timedelta(minutes=self.settings.payment_window_minutes),
            inv,
        )
        self.orders[order.order_id] = order
        return order

    # -- the jobs, as the scheduler runs them, and what they must do ------------------------------

    def _job_payments(self) -> None:
        self._job_ok("follow_up_payments", deadlines.follow_up_payments(self.now, limit=JOB_LIMIT))
        for order in list(self.orders.values()):
            if order.ours != "pending":
                continue
            if order.at_provider == "succeeded":
                self._payment_applied(order)
            elif self.now >= order.expires_at:
                self._order_closed(order)
        for inv in self.invs:  # never ordered: closed when the time to pay ends
            if inv.status == AWAITING_PAYMENT and inv.order_id is None and self.now >= inv.window_end:
                SEEN["model: an invitation never ordered lapses"] += 1
                inv.status = CLOSED

    def _job_expire(self) -> None:
        self._job_ok("expire_invitations", deadlines.expire_due(self.now, limit=JOB_LIMIT))
        for inv in self.invs:
            if inv.status == PENDING_RESPONSE and inv.deadline is not None and inv.deadline <= self.now:
                self._start_refund(inv, EXPIRED, self._full_refund(inv), inv.fee, self.provider.refund_mode)

    def _job_confirm(self) -> None:
        self._job_ok("auto_confirm", deadlines.confirm_due(self.now, limit=JOB_LIMIT))
        for inv in self.invs:
            if inv.status == COMPLETED and inv.hold_until is not None and inv.hold_until <= self.now:
                self._release(inv)

    def _job_refunds(self) -> None:
        self._job_ok("follow_up_refunds", deadlines.follow_up_refunds(self.now, limit=JOB_LIMIT))
        for refund in self.refunds.values():
            if refund.ours == "requested":
                self._send_refund(refund, self.provider.refund_mode)
            elif refund.ours == "processing" and self.provider.refund_state(refund.refund_no) == "succeeded":
                self._refund_settled(refund)

    def _job_payouts(self) -> None:
        answer = self.provider.payout_answer
        before = {number: self.provider.transfer_state(number) for number in self.withdrawals}
        self._job_ok("settle_payouts", deadlines.settle_payouts(self.now, limit=JOB_LIMIT))
        for withdrawal in self.withdrawals.values():
            if withdrawal.ours not in OPEN_PAYOUT:
                continue
            at_provider = before[withdrawal.out_bill_no]  # what the job's query finds (it may send after)
            if (withdrawal.ours == "requested" and withdrawal.sends == 0) or at_provider is None:
                self._send_payout(withdrawal, answer)  # never sent, or never arrived: sent (again, same number)
            else:
                self._payout_reported(withdrawal, at_provider)

    # -- invitations -----------------------------------------------------------------------------

    @precondition(lambda self: self.ready and len(self.invs) < MAX_INVITATIONS)
    @rule(
        requester=st.sampled_from(("patient", "hospital")),
        days_ahead=st.integers(min_value=0, max_value=4),
        hour=st.sampled_from((1, 9, 15, 22)),
    )
    @tracked
    def invite(self, requester: str, days_ahead: int, hour: int) -> None:
        settings = self.settings
        day = shanghai_date(self.now) + timedelta(days=days_ahead)
        at = datetime.combine(day, time(hour), SHANGHAI)
        body = invitation_body(self.people["doctor"].user_id, self.hospital_id, day, f"{hour:02d}:00")
        response = self._post(requester, "/v1/invitations", body)
        what = f"invite by the {requester} for {day} {hour:02d}:00"
        if requester == "hospital" and self.member_until is None:
            self._expect(what, response, 403, "membership_required")
            return
        if at < self.now + timedelta(minutes=settings.payment_window_minutes, hours=settings.response_margin_hours):
            self._expect(what, response, 422, "too_soon")
            return
        if not self.calendar[0] <= day <= self.calendar[1]:
            self._expect(what, response, 409, "date_unavailable")
            return
        if self.booked[day] >= CAPACITY:
            self._expect(what, response, 409, "date_full")
            return
        answer = self._expect(what, response, 201)
        window = self.now + timedelta(minutes=settings.payment_window_minutes)
        inv = Inv(f"i{len(self.invs) + 1}", answer["invitation_id"], requester, self.fee, day, at, self.now, window)
        assert (answer["status"], answer["fee_fen"]) == (AWAITING_PAYMENT, self.fee), f"{what}: {answer}"
        self.invs.append(inv)
        self._say(f"  = {inv.name} {inv.invitation_id}")

    @precondition(lambda self: self._some(self._payable_now))
    @rule(pick=PICK, fitting=FITTING)
    @tracked
    def open_payment(self, pick: int, fitting: bool) -> None:
        self._open_payment(self._pick(pick, fitting, self._payable_now))

    def _open_payment(self, inv: Inv) -> None:
        body = {"purpose": "invitation", "reference": inv.invitation_id, "channel": "sandbox"}
        response = self._post(inv.requester, "/v1/payments", body)
        what = f"open the payment of {inv}"
        if inv.status != AWAITING_PAYMENT:
            self._expect(what, response, 409, "invitation_not_payable")
        elif self.now >= inv.window_end:
            self._expect(what, response, 409, "payment_window_closed")
        elif inv.order_id is not None:
            answer = self._expect(what, response, 200)
            assert answer["order_id"] == inv.order_id, f"{what}: another order {answer}"
        else:
            answer = self._expect(what, response, 201)
            assert (answer["order_id"], answer["amount_fen"]) == (f"PI{inv.invitation_id}", inv.fee), answer
            inv.order_id = answer["order_id"]
            self.orders[inv.order_id] = Order(inv.order_id, "invitation", inv.requester, inv.fee, inv.window_end, inv)

    def _payable(self) -> list[Order]:
        return [o for o in self.orders.values() if o.at_provider == "pending" and self.now < o.expires_at]

    @precondition(lambda self: self.ready and self._payable())
    @rule(pick=PICK, delivery=DELIVERIES)
    @tracked
    def payer_pays(self, pick: int, delivery: str) -> None:
        payable = self._payable()
        order = payable[pick % len(payable)]
        self._say(f"the payer pays {order.order_id} ({order.purpose}, {order.amount} fen)")
        self._provider_takes_payment(order)
        self._deliver(order, delivery)

    @precondition(lambda self: self.ready and any(o.at_provider == "succeeded" for o in self.orders.values()))
    @rule(pick=PICK, same_event=st.booleans())
    @tracked
    def provider_calls_back_again(self, pick: int, same_event: bool) -> None:
        paid = [o for o in self.orders.values() if o.at_provider == "succeeded"]
        order = paid[pick % len(paid)]
        self._deliver(order, "callback", order.event_id if same_event else None)

    @precondition(lambda self: self._some(self._answerable))
    @rule(pick=PICK, fitting=FITTING)
    @tracked
    def doctor_accepts(self, pick: int, fitting: bool) -> None:
        self._accept(self._pick(pick, fitting, self._answerable))

    def _accept(self, inv: Inv) -> None:
        response = self._post("doctor", f"/v1/invitations/{inv.invitation_id}/accept", None)
        what = f"the doctor accepts {inv}"
        if not inv.seen_by_doctor:
            self._expect(what, response, 404, "invitation_not_found")
        elif inv.status != PENDING_RESPONSE:
            self._expect(what, response, 409, "invalid_transition")
        elif inv.deadline is not None and self.now >= inv.deadline:
            self._expect(what, response, 409, "response_deadline_passed")
        elif self.booked[inv.day] >= CAPACITY:
            self._expect(what, response, 409, "date_full")
        else:
            answer = self._expect(what, response, 200)
            inv.platform_fee = share(inv.fee, self.settings.platform_fee_bps)
            inv.share = inv.fee - inv.platform_fee
            inv.status, inv.booked = ACCEPTED, True
            self.booked[inv.day] += 1
            entries = {
                accounts.escrow(inv.invitation_id): -inv.fee,
                self.pending: inv.share,
                accounts.fee_account(inv.invitation_id, self.settings.ledger_shards): inv.platform_fee,
            }
            self.books.post(f"accept:{inv.invitation_id}", "acceptance", f"invitation:{inv.invitation_id}", entries)
            self._same_status(what, answer, inv)

    @precondition(lambda self: self._some(lambda i: i.status == PENDING_RESPONSE))
    @rule(pick=PICK, fitting=FITTING, refund=REFUND_MODES)
    @tracked
    def doctor_declines(self, pick: int, fitting: bool, refund: str) -> None:
        self._decline(self._pick(pick, fitting, lambda i: i.status == PENDING_RESPONSE), refund)

    def _decline(self, inv: Inv, refund: str) -> None:
        self.provider.refund_mode = refund
        response = self._post("doctor", f"/v1/invitations/{inv.invitation_id}/decline", {"reason": "Not free then"})
        what = f"the doctor declines {inv} (the provider's refund: {refund})"
        if not inv.seen_by_doctor:
            self._expect(what, response, 404, "invitation_not_found")
        elif inv.status != PENDING_RESPONSE:
            self._expect(what, response, 409, "invalid_transition")
        else:
            answer = self._expect(what, response, 200)
            self._start_refund(inv, DECLINED, self._full_refund(inv), inv.fee, refund)
            self._same_status(what, answer, inv)

    @precondition(lambda self: self._some(self._cancellable))
    @rule(pick=PICK, fitting=FITTING, refund=REFUND_MODES)
    @tracked
    def requester_cancels(self, pick: int, fitting: bool, refund: str) -> None:
        self._cancel(self._pick(pick, fitting, self._cancellable), refund)

    def _cancel(self, inv: Inv, refund: str) -> None:
        self.provider.refund_mode = refund
        response = self._post(inv.requester, f"/v1/invitations/{inv.invitation_id}/cancel", {"reason": "Plans changed"})
        what = f"the {inv.requester} cancels {inv} (the provider's refund: {refund})"
        settings = self.settings
        if inv.status == AWAITING_PAYMENT:
            order = self.orders.get(inv.order_id) if inv.order_id else None
            if order is not None and order.at_provider == "succeeded":
                self._expect(what, response, 409, "payment_in_progress")
                return
            answer = self._expect(what, response, 200)
            inv.status = CLOSED
            if order is not None:
                self._order_closed(order)
        elif inv.status == PENDING_RESPONSE:
            answer = self._expect(what, response, 200)
            self._start_refund(inv, CANCELLED, self._full_refund(inv), inv.fee, refund)
        elif inv.status == ACCEPTED and self.now >= inv.scheduled_at:
            self._expect(what, response, 409, "service_time_passed")
            return
        elif inv.status == ACCEPTED:
            answer = self._expect(what, response, 200)
            if self.now <= inv.scheduled_at - timedelta(hours=settings.late_cancel_hours):
                back = inv.fee
                SEEN["model: cancelled early after acceptance (full refund)"] += 1
            else:
                back = share(inv.fee, settings.late_cancel_refund_bps)
                SEEN["model: cancelled late after acceptance (part kept)"] += 1
            kept = inv.fee - back
            kept_platform = min(share(kept, settings.platform_fee_bps), inv.platform_fee)
            entries = {
                self.pending: -inv.share,
                self.available: kept - kept_platform,
                accounts.fee_account(inv.invitation_id, settings.ledger_shards): -(inv.platform_fee - kept_platform),
                self._clearing(inv.invitation_id): back,
            }
            inv.booked = False
            self.booked[inv.day] -= 1
            self._start_refund(inv, CANCELLED, entries, back, refund)
        else:
            self._expect(what, response, 409, "invalid_transition")
            return
        self._same_status(what, answer, inv)

    @precondition(lambda self: self.ready and any(i.status == PENDING_RESPONSE for i in self.invs))
    @rule(pick=PICK, refund=REFUND_MODES)
    @tracked
    def answer_deadline_passes(self, pick: int, refund: str) -> None:
        waiting = [i for i in self.invs if i.status == PENDING_RESPONSE]
        inv = waiting[pick % len(waiting)]
        assert inv.deadline is not None
        self._advance_to(inv.deadline)
        self.provider.refund_mode = refund
        self._say(f"the answer deadline of {inv} passes (the provider's refunds: {refund})")
        self._job_expire()

    @precondition(lambda self: self._some(lambda i: i.status == ACCEPTED))
    @rule(pick=PICK, fitting=FITTING, wait=st.booleans())
    @tracked
    def doctor_completes(self, pick: int, fitting: bool, wait: bool) -> None:
        self._complete(self._pick(pick, fitting, lambda i: i.status == ACCEPTED), wait)

    def _complete(self, inv: Inv, wait: bool) -> None:
        if wait and inv.status == ACCEPTED:
            self._advance_to(inv.scheduled_at)
        response = self._post("doctor", f"/v1/invitations/{inv.invitation_id}/complete", None)
        what = f"the doctor completes {inv}"
        if not inv.seen_by_doctor:
            self._expect(what, response, 404, "invitation_not_found")
        elif inv.status != ACCEPTED:
            self._expect(what, response, 409, "invalid_transition")
        elif self.now < inv.scheduled_at:
            self._expect(what, response, 409, "too_early")
        else:
            answer = self._expect(what, response, 200)
            inv.status = COMPLETED
            inv.hold_until = self.now + timedelta(hours=self.settings.confirm_hold_hours)
            self._same_status(what, answer, inv)

    @precondition(lambda self: self._some(lambda i: i.status == COMPLETED))
    @rule(pick=PICK, fitting=FITTING)
    @tracked
    def requester_confirms(self, pick: int, fitting: bool) -> None:
        self._confirm(self._pick(pick, fitting, lambda i: i.status == COMPLETED))

    def _confirm(self, inv: Inv) -> None:
        response = self._post(inv.requester, f"/v1/invitations/{inv.invitation_id}/confirm", None)
        what = f"the {inv.requester} confirms {inv}"
        if inv.status != COMPLETED:
            self._expect(what, response, 409, "invalid_transition")
            return
        answer = self._expect(what, response, 200)
        self._release(inv)
        self._same_status(what, answer, inv)

    @precondition(lambda self: self.ready and any(i.status == COMPLETED for i in self.invs))
    @rule(pick=PICK)
    @tracked
    def confirmation_hold_ends(self, pick: int) -> None:
        completed = [i for i in self.invs if i.status == COMPLETED]
        inv = completed[pick % len(completed)]
        assert inv.hold_until is not None
        self._advance_to(inv.hold_until)
        self._say(f"the confirmation hold of {inv} ends")
        self._job_confirm()

    @precondition(lambda self: self.ready and any(i.status in MOVABLE for i in self.invs))
    @rule(
        pick=PICK,
        stages=st.integers(min_value=1, max_value=6),
        delivery=DELIVERIES,
        detour=DETOURS,
        refund=REFUND_MODES,
    )
    @tracked
    def an_invitation_moves_on(self, pick: int, stages: int, delivery: str, detour: str, refund: str) -> None:
        """Up to ``stages`` next operations of one invitation along its ordinary path (each checked like a step):
        pay, accept, complete when its time comes, confirm, tip — or, at its ``detour``, declined, left to
        expire, or cancelled after acceptance (early, or late: within a day of the operation). Uniform rule
        choice rarely gets that far."""
        movable = [i for i in self.invs if i.status in MOVABLE]
        inv = movable[pick % len(movable)]
        for stage in range(stages):
            if stage:
                self._check()
            if not self._move_on(inv, delivery, detour, refund):
                return

    @precondition(lambda self: self.ready and any(i.status in MOVABLE for i in self.invs))
    @rule(
        pick=PICK,
        stages=st.integers(min_value=1, max_value=6),
        delivery=DELIVERIES,
        detour=DETOURS,
        refund=REFUND_MODES,
    )
    @tracked
    def another_invitation_moves_on(self, pick: int, stages: int, delivery: str, detour: str, refund: str) -> None:
        """The same as ``an_invitation_moves_on``: a second rule, so the ordinary path is chosen twice as often."""
        self.an_invitation_moves_on(pick, stages, delivery, detour, refund)

    def _move_on(self, inv: Inv, delivery: str, detour: str, refund: str) -> bool:
        if inv.status == PENDING_RESPONSE and detour == "decline":
            self._decline(inv, refund)
            return False
        if inv.status == PENDING_RESPONSE and detour == "expire" and inv.deadline is not None:
            self._advance_to(inv.deadline)
            self.provider.refund_mode = refund
            self._say(f"the answer deadline of {inv} passes (the provider's refunds: {refund})")
            self._job_expire()
            return False
        if inv.status == ACCEPTED and detour in ("cancel_early", "cancel_late"):
            if detour == "cancel_late":  # half a day before the operation
                self._advance_to(inv.scheduled_at - timedelta(hours=12))
            self._cancel(inv, refund)
            return False
        return self._go_on(inv, delivery)

    def _go_on(self, inv: Inv, delivery: str) -> bool:
        if inv.status == AWAITING_PAYMENT and inv.order_id is None and self.now < inv.window_end:
            self._open_payment(inv)
        elif inv.status == AWAITING_PAYMENT and inv.order_id is not None:
            order = self.orders[inv.order_id]
            if order.at_provider != "pending" or self.now >= order.expires_at:
                return False
            self._say(f"the payer pays {order.order_id}")
            self._provider_takes_payment(order)
            self._deliver(order, delivery)
        elif inv.status == PENDING_RESPONSE and inv.deadline is not None and self.now < inv.deadline:
            self._accept(inv)
        elif inv.status == ACCEPTED:
            self._complete(inv, wait=True)
        elif inv.status == COMPLETED:
            self._confirm(inv)
        elif inv.status == CONFIRMED:
            self._tip(inv, 2_000, delivery)
            return False
        else:
            return False
        return True

    # -- tips and memberships ----------------------------------------------------------------------

    @precondition(lambda self: self._some(lambda i: i.status == CONFIRMED))
    @rule(
        pick=PICK,
        fitting=FITTING,
        amount=st.sampled_from((99, 100, 2_000, 50_000, 50_001)),
        delivery=st.sampled_from(("callback", "direct", "lost", "unpaid")),
    )
    @tracked
    def requester_tips(self, pick: int, fitting: bool, amount: int, delivery: str) -> None:
        self._tip(self._pick(pick, fitting, lambda i: i.status == CONFIRMED), amount, delivery)

    def _tip(self, inv: Inv, amount: int, delivery: str) -> None:
        body = {"purpose": "tip", "reference": inv.invitation_id, "channel": "sandbox", "amount_fen": amount}
        response = self._post(inv.requester, "/v1/payments", body)
        what = f"the {inv.requester} tips {amount} fen on {inv}"
        low, high = self.settings.tip_bounds_fen
        if inv.status != CONFIRMED:
            self._expect(what, response, 409, "invitation_not_tippable")
            return
        if not low <= amount <= high:
            self._expect(what, response, 422, "tip_out_of_bounds")
            return
        order = self._open_slot_order(what, response, inv.tip_slot, "tip", inv.requester, amount, inv)
        inv.tip_slot = order.order_id
        self._pay_new(order, delivery)

    @precondition(lambda self: self.ready and sum(o.purpose == "membership" for o in self.orders.values()) < 3)
    @rule(delivery=st.sampled_from(("callback", "direct", "lost", "unpaid")))
    @tracked
    def hospital_buys_membership(self, delivery: str) -> None:
        plan = self._plan()
        body = {"purpose": "membership", "reference": plan.plan_id, "channel": "sandbox"}
        response = self._post("hospital", "/v1/payments", body)
        what = f"the hospital buys the {plan.plan_id} membership"
        order = self._open_slot_order(
            what, response, self.membership_slot, "membership", "hospital", plan.price_fen, None
        )
        self.membership_slot = order.order_id
        self._pay_new(order, delivery)

    def _pay_new(self, order: Order, delivery: str) -> None:
        if delivery == "unpaid" or order.at_provider != "pending" or self.now >= order.expires_at:
            return
        self._provider_takes_payment(order)
        self._deliver(order, delivery)

    # -- complaints (issue 6: C7, C8) -------------------------------------------------------------

    def _window_closed(self, inv: Inv) -> bool:
        window = timedelta(days=self.settings.complaint_window_days)
        return inv.status == CONFIRMED and inv.ended_at is not None and self.now > inv.ended_at + window

    def _complainable(self, inv: Inv) -> bool:
        """A complaint would be taken (about an accepted one once its time has come: the rule may wait for it)."""
        return inv.complaint is None and inv.status in COMPLAINABLE and not self._window_closed(inv)

    @precondition(lambda self: self._some(lambda i: i.status in COMPLAINABLE or i.complaint is not None))
    @rule(pick=PICK, fitting=FITTING, category=st.sampled_from(tuple(COMPLAINTS)), wait=st.booleans())
    @tracked
    def requester_complains(self, pick: int, fitting: bool, category: str, wait: bool) -> None:
        self._complain(self._pick(pick, fitting, self._complainable), category, wait)

    def _complain(self, inv: Inv, category: str, wait: bool) -> None:
        if wait and inv.status == ACCEPTED:
            self._advance_to(inv.scheduled_at)
        body = {"category": category, "details": COMPLAINTS[category]}
        path = f"/v1/invitations/{inv.invitation_id}/complaints"
        response = http(self.world.api, "POST", path, self.people[inv.requester], body)
        what = f"the {inv.requester} complains about {inv} ({category})"
        before = inv.complaint.status if inv.complaint else "none"
        SEEN[f"complaint filed: invitation {inv.status}, complaint before {before} -> {_outcome(response)}"] += 1
        filed = inv.complaint
        if filed is not None and filed.category == category:  # the same complaint again: answered as it is now
            self._same_complaint(what, self._expect(what, response, 200), inv)
        elif filed is not None:
            self._expect(what, response, 409, "complaint_exists")
        elif inv.status == ACCEPTED and self.now < inv.scheduled_at:
            self._expect(what, response, 409, "complaint_too_early")
        elif self._window_closed(inv):
            self._expect(what, response, 409, "complaint_window_closed")
        elif inv.status not in COMPLAINABLE:
            self._expect(what, response, 409, "not_complainable")
        else:
            answer = self._expect(what, response, 201)
            inv.complaint = Grievance(category)
            self._same_complaint(what, answer, inv)

    def _same_complaint(self, what: str, answer: Any, inv: Inv) -> None:
        filed = inv.complaint
        assert filed is not None
        refund_fen = inv.fee if filed.refund else None
        expected = (inv.complaint_id, inv.invitation_id, filed.category, filed.status, refund_fen)
        got = tuple(answer[name] for name in ("complaint_id", "invitation_id", "category", "status", "refund_fen"))
        assert got == expected, f"{what}: answered {answer}, expected {expected}"

    @precondition(lambda self: self._some(lambda i: i.complaint is not None))
    @rule(
        pick=PICK,
        fitting=FITTING,
        decision=DECISIONS,
        refund=REFUND_MODES,
        again=st.integers(min_value=0, max_value=3).map(lambda n: n == 0),
    )
    @tracked
    def back_office_decides(self, pick: int, fitting: bool, decision: str, refund: str, again: bool) -> None:
        """Mostly an open complaint; sometimes any invitation's (a decided one: 409; none: 404). ``again``:
        a confirmation is sent again with its ``Idempotency-Key`` (the same answer, nothing moves), then any
        decision is followed by another confirmation (409 ``complaint_decided``, nothing moves)."""
        inv = self._pick(pick, fitting, lambda i: bool(i.complaint and i.complaint.status == "open"))
        if self._decide(inv, decision, refund) and again:
            self._check()
            if decision != "reject":
                self._send_again(self.replayable[-1], same=True)
                self._check()
            self._decide(inv, "refund", refund)

    def _decide(self, inv: Inv, decision: str, refund: str) -> bool:
        """The back office's decision over HTTP (a confirmation with an ``Idempotency-Key``, so it is replayed too)."""
        path = f"/v1/admin/complaints/{inv.complaint_id}"
        if decision == "reject":
            body = {"reason": "The ward says the service was delivered"}
            response = http(self.world.api, "POST", f"{path}/reject", self.people["admin"], body)
        else:
            self.provider.refund_mode = refund
            body = {"reason": "The ward confirms the complaint", "refund": decision == "refund"}
            response = self._post("admin", f"{path}/confirm", body)
        what = f"the back office decides the complaint about {inv}: {decision} (the provider's refund: {refund})"
        filed = inv.complaint
        before = filed.status if filed else "none"
        SEEN[f"complaint {decision}: invitation {inv.status}, complaint {before} -> {_outcome(response)}"] += 1
        if filed is None:
            self._expect(what, response, 404, "complaint_not_found")
            return False
        if filed.status != "open":
            self._expect(what, response, 409, "complaint_decided")
            return False
        if decision == "refund" and inv.status not in COMPLAINABLE:
            self._expect(what, response, 409, "not_refundable")
            return False
        answer = self._expect(what, response, 200)
        filed.status, filed.refund = "rejected" if decision == "reject" else "confirmed", decision == "refund"
        if filed.refund:
            self._not_delivered(inv, refund)
        self._same_complaint(what, answer, inv)
        return True

    def _not_delivered(self, inv: Inv, refund: str) -> None:
        """A refund for a service not delivered: the doctor's share and the fee into ``claim:<invitation>`` now
        (the share from pending before release; after it, from available and, what that no longer holds, owed),
        then the claim to the provider when the refund settles (``complaints.claim_entries``, restated)."""
        if inv.status == CONFIRMED:
            taken = min(inv.share, max(0, self.books.balance(self.available)))
            doctor = {self.available: -taken, self.receivable: taken - inv.share}
            source = "from available" if taken == inv.share else "partly owed" if taken else "all owed"
            SEEN[f"model: a claim after release ({source})"] += 1
        else:
            doctor = {self.pending: -inv.share}
            SEEN[f"model: a claim before release ({inv.status})"] += 1
            if inv.status == ACCEPTED:  # never delivered: the unit of the day that accepting booked is given back
                inv.booked = False
                self.booked[inv.day] -= 1
        entries = {
            **doctor,
            accounts.fee_account(inv.invitation_id, self.settings.ledger_shards): -inv.platform_fee,
            accounts.claim(inv.invitation_id): inv.fee,
        }
        self.books.post(f"claim:{inv.invitation_id}", "claim", f"invitation:{inv.invitation_id}", entries)
        back = {accounts.claim(inv.invitation_id): -inv.fee, self._clearing(inv.invitation_id): inv.fee}
        self._start_refund(inv, NOT_DELIVERED, back, inv.fee, refund)

    def _lead_to(self, inv: Inv, stage: str, delivery: str) -> None:
        """``inv`` along its ordinary path until ``stage`` (from a new invitation: five operations), unless it stops."""
        for _ in range(6):
            if inv.status not in MOVABLE or MOVABLE.index(inv.status) >= MOVABLE.index(stage):
                return
            was = (inv.status, inv.order_id)
            if not self._go_on(inv, delivery) or (inv.status, inv.order_id) == was:  # stopped, or refused
                return

    def _may_go_on(self, inv: Inv) -> bool:
        """Whether the ordinary path may still lead ``inv`` on (a payment window or answer deadline not passed)."""
        if inv.status == AWAITING_PAYMENT:
            order = self.orders.get(inv.order_id) if inv.order_id else None
            if order is None:
                return self.now < inv.window_end
            return order.at_provider == "pending" and self.now < order.expires_at
        if inv.status == PENDING_RESPONSE:
            return inv.deadline is not None and self.now < inv.deadline and self.booked[inv.day] < CAPACITY
        return True

    def _one_to_go_on(self, pick: int) -> Inv | None:
        """An invitation the ordinary path may still lead on, without a complaint: a new one when there is none
        (most of an example's invitations soon wait for a payment whose window has closed)."""
        fresh = [i for i in self.invs if i.status in MOVABLE and i.complaint is None]
        going = [i for i in fresh if self._may_go_on(i)]
        going = [i for i in going if i.status != AWAITING_PAYMENT] or going  # the shorter way, when there is one
        if not going and len(self.invs) < MAX_INVITATIONS:
            step, count = self.step_name, len(self.invs)
            self.invite("patient", 1 + pick % 4, 9)
            self.step_name = step
            going = self.invs[count:]
        candidates = going or fresh
        return candidates[pick % len(candidates)] if candidates else None

    @precondition(
        lambda self: self._some(lambda i: i.status in MOVABLE and i.complaint is None) and self.gone_wrong < GONE_WRONG
    )
    @rule(
        pick=PICK,
        stage=st.sampled_from((*COMPLAINABLE, CONFIRMED)),  # after release: the most money paths
        timing=st.sampled_from(("in_time",) * 7 + ("off",)),
        cash_out=st.sampled_from(("keep", "withdraw", "withdraw_tip_fail")),
        delivery=st.sampled_from(("callback", "direct")),
        category=st.sampled_from(tuple(COMPLAINTS)),
        decision=DECISIONS,
        refund=REFUND_MODES,
    )
    @tracked
    def a_service_goes_wrong(
        self,
        pick: int,
        stage: str,
        timing: str,
        cash_out: str,
        delivery: str,
        category: str,
        decision: str,
        refund: str,
    ) -> None:
        """One invitation goes along its ordinary path to ``stage`` — accepted (then its time comes), completed,
        or confirmed, after which the doctor may first cash out everything beyond what they owe — then its
        requester complains and the back office decides. ``timing`` ``off``: the requester first complains too
        early (accepted), or only after the window closed (confirmed; when the example has the time left).
        ``withdraw``: after a refund that left a debt, another service is confirmed or tipped (repaying it first).
        ``withdraw_tip_fail``: the requester tips after the cash-out (so the claim takes part from available,
        part owed); after the refund the payout fails, so the money is back while the debt stays, and the
        doctor tries to withdraw all of it (refused), then all beyond the debt (the debt repaid first).
        Uniform rule choice rarely gets that far.

        Moving along the ordinary path is what ``an_invitation_moves_on`` checks step by step, and a complaint
        moves no money, so the checks here come only between the money movements that follow (the invariants
        run after the rule as always, and the journal is compared transaction by transaction)."""
        self.gone_wrong += 1
        inv = self._one_to_go_on(pick)
        assert inv is not None  # the precondition: there is one
        self._lead_to(inv, stage, delivery)
        withdrew = cash_out != "keep" and inv.status == CONFIRMED == stage
        if withdrew:
            if "bank_card" not in self.payout_accounts:
                self._add_payout_account("bank_card")
            self._withdraw("all", "bank_card")
            if cash_out == "withdraw_tip_fail":
                self._check()
                self._tip(inv, 2_000, delivery)
            self._check()
        closes = inv.ended_at + timedelta(days=self.settings.complaint_window_days) if inv.ended_at else None
        if timing == "off" and inv.status == ACCEPTED:
            self._complain(inv, category, wait=False)
        elif timing == "off" and closes is not None and closes < self.start + TIME_BUDGET:
            self._advance_to(closes + timedelta(seconds=1))
        self._complain(inv, category, wait=True)
        if inv.complaint is None or inv.complaint.status != "open":
            return
        decided = self._decide(inv, decision, refund)
        if not (withdrew and decided and self._owed()):
            return
        if cash_out == "withdraw":  # the doctor earns again: another service confirmed, or tipped, repays first
            others = [i for i in self.invs if i is not inv and i.status in (COMPLETED, CONFIRMED)]
            other = others[pick % len(others)] if others else self._one_to_go_on(pick)
            if other is None:
                return
            self._check()
            if other.status == CONFIRMED:
                self._tip(other, 2_000, delivery)
            else:
                self._lead_to(other, CONFIRMED, delivery)
            return
        if any(w.ours == "requested" for w in self.withdrawals.values()):
            self._check()
            self._advance(seconds=3600)
            self.provider.payout_answer = "failed"
            self._say("the provider now fails new transfers")
            self._job_payouts()
            self._check()
        for amount in ("all_held", "all"):  # refused (the debt); then only what is beyond it (often below the minimum)
            self._withdraw(amount, "bank_card")

    # -- the follow-up jobs and the provider's own pace ---------------------------------------------

    @precondition(lambda self: self.ready and any(o.ours == "pending" for o in self.orders.values()))
    @rule()
    @tracked
    def payment_follow_up_runs(self) -> None:
        self._advance(seconds=600)  # every pending order's next check is at most 10 minutes away
        self._job_payments()

    @precondition(lambda self: self.ready and any(r.ours != "succeeded" for r in self.refunds.values()))
    @rule(refund=REFUND_MODES)
    @tracked
    def refund_follow_up_runs(self, refund: str) -> None:
        self._advance(seconds=1800)  # the longest refund backoff
        self.provider.refund_mode = refund
        self._say(f"the provider now refunds: {refund}")
        self._job_refunds()

    def _processing_refunds(self) -> list[Refund]:
        return [
            r
            for r in self.refunds.values()
            if r.ours == "processing" and self.provider.refund_state(r.refund_no) == "processing"
        ]

    @precondition(lambda self: self.ready and self._processing_refunds())
    @rule(deliver=st.booleans())
    @tracked
    def bank_returns_refunds(self, deliver: bool) -> None:
        finishing = self._processing_refunds()
        self.provider.finish_refunds()
        self._say(f"the bank returns {[r.refund_no for r in finishing]}")
        if not deliver:
            return
        for refund in finishing:
            inv = refund.inv
            assert inv.order_id is not None
            callback = self.provider.refund_success_callback(refund.refund_no, inv.order_id, refund.amount, self.now)
            self._expect(f"callback: {refund.refund_no} refunded", post_callback(self.world.api, callback), 204)
            self._refund_settled(refund)

    # -- payouts -----------------------------------------------------------------------------------

    @precondition(lambda self: self.ready and self.account_tries < 4)
    @rule(kind=st.sampled_from(("alipay", "bank_card", "wechat")))
    @tracked
    def doctor_adds_payout_account(self, kind: str) -> None:
        self.account_tries += 1
        self._add_payout_account(kind)

    def _add_payout_account(self, kind: str) -> None:
        response = http(self.world.api, "POST", "/v1/me/payout-accounts", self.people["doctor"], PAYEES[kind])
        what = f"the doctor adds a payout account ({kind})"
        if kind == "wechat":
            self._expect(what, response, 422, "wechat_not_linked")
        elif kind in self.payout_accounts:
            answer = self._expect(what, response, 200)
            assert answer["account_id"] == self.payout_accounts[kind], f"{what}: {answer}"
        else:
            self.payout_accounts[kind] = self._expect(what, response, 201)["account_id"]

    @precondition(lambda self: self.ready and (self.books.balance(self.available) > 0 or self.withdraw_tries < 2))
    @rule(amount=st.sampled_from(WITHDRAWALS), kind=st.sampled_from(("alipay", "bank_card")))
    @tracked
    def doctor_withdraws(self, amount: str, kind: str) -> None:
        self._withdraw(amount, kind)

    @precondition(lambda self: self.ready and self.books.balance(self.available) > 0)
    @rule(amount=st.sampled_from(("half", "all", "one_over")), kind=st.sampled_from(("alipay", "bank_card")))
    @tracked
    def doctor_cashes_out(self, amount: str, kind: str) -> None:
        """The doctor's ordinary way out: a payout account (added once), then a withdrawal."""
        if kind not in self.payout_accounts:
            self._add_payout_account(kind)
        self._withdraw(amount, kind)

    def _withdraw(self, amount: str, kind: str) -> None:
        settings = self.settings
        minimum, limit = settings.withdrawal_min_fen, settings.withdrawal_daily_limit_fen
        available, owed = self.books.balance(self.available), self._owed()
        day = shanghai_date(self.now).isoformat()
        left = limit - self.withdrawn[day]
        fen = {
            "below_minimum": minimum - 1,
            "minimum": minimum,
            "half": max(available // 2, minimum),
            "all": max(available - owed, minimum),
            "one_over": available - owed + 1,
            "all_held": max(available, minimum),
            "day_left": left,
            "over_day_left": left + 1,
        }[amount]
        self.withdraw_tries += 1
        account_id = self.payout_accounts.get(kind, "pa000000000000000000000000")
        response = self._post("doctor", "/v1/withdrawals", {"amount_fen": fen, "payout_account_id": account_id})
        state = f"{available} available, {owed} owed, {left} left today"
        what = f"the doctor withdraws {fen} fen ({amount}; {state}) to {kind}"
        if fen < minimum:
            self._expect(what, response, 422, "amount_below_minimum")
        elif kind not in self.payout_accounts:
            self._expect(what, response, 404, "payout_account_not_found")
        elif fen > left:
            self._expect(what, response, 409, "daily_limit_reached")
        elif fen + owed > available:  # only money beyond the debt may leave
            if owed and fen <= available:
                SEEN["model: a withdrawal refused for the debt (available covers the amount, not amount + owed)"] += 1
            self._expect(what, response, 409, "insufficient_funds")
        else:
            answer = self._expect(what, response, 201)
            assert (answer["amount_fen"], answer["status"]) == (fen, "requested"), f"{what}: {answer}"
            number = answer["withdrawal_id"]
            self.withdrawals[number] = Withdrawal(number, fen, day, self.now)
            self.withdrawn[day] += fen
            if owed:
                SEEN["model: a withdrawal repays the debt first"] += 1
            entries = {self.available: -(fen + owed), self.payout: fen, self.receivable: owed}
            self.books.post(f"withdrawal:{number}", "withdrawal", f"withdrawal:{number}", entries)

    @precondition(lambda self: self.ready and any(w.ours in OPEN_PAYOUT for w in self.withdrawals.values()))
    @rule(answer=st.sampled_from(PAYOUT_ANSWERS))
    @tracked
    def payout_job_runs(self, answer: str) -> None:
        self._advance(seconds=3600)  # the longest payout backoff
        self.provider.payout_answer = answer
        self._say(f"the provider now answers new transfers: {answer}")
        self._job_payouts()

    def _open_transfers(self) -> list[Withdrawal]:
        return [
            w
            for w in self.withdrawals.values()
            if self.provider.transfer_state(w.out_bill_no) in ("processing", "wait_user_confirm")
        ]

    @precondition(lambda self: self.ready and self._open_transfers())
    @rule(pick=PICK, outcome=st.sampled_from(("succeeded", "failed", "cancelled", "expired")), deliver=st.booleans())
    @tracked
    def transfer_ends_at_the_provider(self, pick: int, outcome: str, deliver: bool) -> None:
        open_ = self._open_transfers()
        withdrawal = open_[pick % len(open_)]
        number = withdrawal.out_bill_no
        waiting = self.provider.transfer_state(number) == "wait_user_confirm"
        if outcome == "expired" and waiting:  # WeChat fails an unconfirmed transfer after 24 hours
            self._advance_to(withdrawal.created_at + timedelta(hours=24))
            state, reason = "failed", "OVERDUE_CLOSE"
        else:
            state = "failed" if outcome == "expired" else outcome
            reason = {"failed": "PAYEE_ACCOUNT_ABNORMAL", "cancelled": "MERCHANT_REVOCATION"}.get(state)
        self.provider.finish_transfer(number, state, reason)
        self._say(f"the transfer {number} ends at the provider: {state} {reason or ''}".rstrip())
        if deliver:
            callback = self.provider.payout_callback(number, self.now)
            self._expect(f"callback: {number} {state}", post_callback(self.world.api, callback), 204)
            self._payout_reported(withdrawal, state)

    # -- idempotency (L5) and time ----------------------------------------------------------------

    @precondition(lambda self: self.ready and self.replayable)
    @rule(pick=st.integers(min_value=0, max_value=63), same=st.booleans())
    @tracked
    def client_sends_a_money_post_again(self, pick: int, same: bool) -> None:
        self._send_again(self.replayable[pick % len(self.replayable)], same)

    def _send_again(self, sent: Replayable, same: bool) -> None:
        body = sent.body if same else altered(sent.path, sent.body)
        response = http(self.world.api, "POST", sent.path, self.people[sent.who], body, key=sent.key)
        what = f"the {sent.who} sends POST {sent.path} again ({'same' if same else 'another'} body)"
        if not same:
            self._expect(what, response, 409, "idempotency_key_reused")
            return
        answer = self._expect(what, response, sent.status)
        if sent.who == "admin":
            SEEN["model: the back office's confirmation sent again, answered the same"] += 1
        if sent.path.startswith("/v1/invitations"):  # the remembered id, shown as it is now
            assert answer["invitation_id"] == sent.answer["invitation_id"], f"{what}: {answer}"
        else:
            assert answer == sent.answer, f"{what}: answered {answer}, first {sent.answer}"

    @precondition(lambda self: self.ready and self.now < self.start + TIME_BUDGET)
    @rule(minutes=st.sampled_from((5, 60, 13 * 60, 24 * 60, 3 * 24 * 60)))
    @tracked
    def time_passes(self, minutes: int) -> None:
        self._advance(minutes=minutes)
        self._say(f"{minutes} minutes pass")

    # -- the invariants ----------------------------------------------------------------------------

    @invariant()
    @tracked
    def the_books_hold(self) -> None:
        if self.ready:
            self._check()

    def _check(self) -> None:
        violations = self.probe.step(self._order_numbers(), [inv.invitation_id for inv in self.invs])
        assert not violations, self._explain("ledger invariants", violations)
        mine = self._my_transactions()
        self._compare_transactions(mine)
        self._compare_states()
        held = self._compare_balances(mine)
        self._reconcile_with_provider(mine, held)
        if len(mine) != self.statement_seen:
            self._compare_statements()
            self.statement_seen = len(mine)
        if self.member_until != self.membership_seen:
            self._compare_membership()
            self.membership_seen = self.member_until

    def _explain(self, what: str, problems: Sequence[str]) -> str:
        recent = "\n  ".join(self.log[-12:])
        listed = "\n  ".join(problems)
        return f"{what}:\n  {listed}\nlast steps:\n  {recent}"

    def _private(self, account: str) -> bool:
        if account.startswith(PRIVATE_KINDS):
            return account.split(":", 1)[1] in {inv.invitation_id for inv in self.invs}
        return account in self._doctor_accounts()

    def _my_transactions(self) -> dict[str, tuple[str, dict[str, int]]]:
        """This example's journal transactions: by reference, or by touching its private accounts."""
        references = {f"invitation:{inv.invitation_id}" for inv in self.invs}
        references.add(f"membership:{self.people['hospital'].user_id}")
        references |= {f"withdrawal:{number}" for number in self.withdrawals}
        return {
            tx_id: (posted.reference, posted.entries)
            for tx_id, posted in self.probe.journal.items()
            if posted.reference in references or any(self._private(account) for account in posted.entries)
        }

    def _compare_transactions(self, mine: dict[str, tuple[str, dict[str, int]]]) -> None:
        expected = self.books.txs
        problems = [f"expected, not written: {tx} {expected[tx]}" for tx in sorted(set(expected) - set(mine))]
        problems += [f"written, not expected: {tx} {mine[tx]}" for tx in sorted(set(mine) - set(expected))]
        problems += [
            f"{tx}: written {mine[tx]}, expected {expected[tx]}"
            for tx in sorted(set(mine) & set(expected))
            if mine[tx] != expected[tx]
        ]
        assert not problems, self._explain("the journal differs from the model", problems)

    def _order_numbers(self) -> list[str]:
        return [*self.orders, *self.refunds, *self.withdrawals]

    def _compare_states(self) -> None:
        problems: list[str] = []
        stored = self.probe.invitations  # read with the balances
        for inv in self.invs:
            got = stored[inv.invitation_id].status if inv.invitation_id in stored else None
            if got != inv.status:
                problems.append(f"invitation {inv.name} {inv.invitation_id} is {got}, expected {inv.status}")
        wanted: dict[str, str] = {o.order_id: o.ours for o in self.orders.values()}
        wanted |= {r.refund_no: r.ours for r in self.refunds.values()}
        wanted |= {w.out_bill_no: w.ours for w in self.withdrawals.values()}
        orders = self.probe.orders
        for number, state in sorted(wanted.items()):
            got = orders[number].status if number in orders else None
            if got != state:
                problems.append(f"order {number} is {got}, expected {state}")
        assert not problems, self._explain("states differ from the model", problems)
        self.stored_orders = orders

    def _compare_balances(self, mine: dict[str, tuple[str, dict[str, int]]]) -> int:
        """The private accounts hold what the model says, and the wallet shows it; answers all money held."""
        problems: list[str] = []
        private = set(self._doctor_accounts())
        private |= {kind + inv.invitation_id for inv in self.invs for kind in PRIVATE_KINDS}
        for account in sorted(private):
            real, model = self.probe.balances.get(account, 0), self.books.balance(account)
            if real != model:
                problems.append(f"{account} holds {real} fen, the model says {model}")
        real = tuple(self.probe.balances[a] for a in self._doctor_accounts())
        if real != self.wallet_seen:  # the wallet reads these balances: asked again whenever they move
            wallet = _json(http(self.world.api, "GET", "/v1/me/wallet", self.people["doctor"]))
            shown = (wallet["pending_fen"], wallet["available_fen"], wallet["payout_fen"], -wallet["owed_fen"])
            if shown != real:
                problems.append(f"the wallet shows {shown}, the ledger holds {real}")
            self.wallet_seen = real
        assert not problems, self._explain("balances differ", problems)
        shared = sum(
            amount
            for _, entries in mine.values()
            for account, amount in entries.items()
            if not account.startswith("provider:") and not self._private(account)
        )
        return sum(self.probe.balances.get(account, 0) for account in private) + shared

    def _reconcile_with_provider(self, mine: dict[str, tuple[str, dict[str, int]]], held: int) -> None:
        """Money in from the provider minus money out = what left its clearing accounts = all money held."""
        provider, orders = self.provider, self.stored_orders
        problems: list[str] = []
        taken = 0
        for order in self.orders.values():
            if orders[order.order_id].status == "succeeded":
                if provider.query_state(order.order_id) != "succeeded":
                    problems.append(f"{order.order_id} applied, but the provider has no payment")
                taken += provider.amounts[order.order_id]
        given = 0
        for refund in self.refunds.values():
            if orders[refund.refund_no].status == "succeeded":
                status = provider.refund_states.get(refund.refund_no)
                if status is None or status.state != "succeeded":
                    problems.append(f"{refund.refund_no} settled, but the provider has not refunded it")
                else:
                    given += status.amount_fen or 0
        for withdrawal in self.withdrawals.values():
            if orders[withdrawal.out_bill_no].status == "succeeded":
                status = provider.transfers.get(withdrawal.out_bill_no)
                if status is None or status.state != "succeeded":
                    problems.append(f"{withdrawal.out_bill_no} paid out, but the provider has not transferred it")
                else:
                    given += status.amount_fen or 0
        cleared = -sum(
            amount
            for _, entries in mine.values()
            for account, amount in entries.items()
            if account.startswith("provider:")
        )
        if not taken - given == cleared == held:
            problems.append(
                f"in {taken} - out {given} = {taken - given} fen at the provider, "
                f"{cleared} fen left its clearing accounts, {held} fen held"
            )
        assert not problems, self._explain("money in minus money out differs from money held", problems)

    def _compare_statements(self) -> None:
        problems: list[str] = []
        for who, rows in self.books.rows.items():
            shown = sorted(statement_rows(self.world.api, self.people[who]))
            if shown != sorted(rows):
                problems.append(f"the {who}'s statement: shown {shown}, expected {sorted(rows)}")
        assert not problems, self._explain("statements differ", problems)

    def _compare_membership(self) -> None:
        view = _json(http(self.world.api, "GET", "/v1/me/membership", self.people["hospital"]))
        expected = iso(self.member_until) if self.member_until else None
        assert view["ends_at"] == expected, self._explain(
            "membership", [f"ends {view['ends_at']}, expected {expected}"]
        )

    # -- the end of an example ----------------------------------------------------------------------

    def teardown(self) -> None:
        if not self.ready or self.failed:
            return
        self.step_name = "teardown"
        self._settle_everything()

    def _settle_everything(self) -> None:
        """With a provider that now succeeds, the jobs settle every open movement; then nothing is left open."""
        provider = self.provider
        provider.refund_mode, provider.payout_answer = "succeed", "succeeded"
        provider.finish_refunds()
        for withdrawal in self._open_transfers():
            provider.finish_transfer(withdrawal.out_bill_no, "succeeded")
        self._say("the end: the provider settles everything; the jobs run")
        for _ in range(3):
            self._advance(days=4)
            self._job_payments()
            self._job_expire()
            self._job_confirm()
            self._job_refunds()
            self._job_payouts()
            self._check()
        problems = [f"{inv} is still open" for inv in self.invs if inv.status in UNSETTLED]
        problems += [f"{o.order_id} is still {o.ours}" for o in self.orders.values() if o.ours == "pending"]
        problems += [f"{r.refund_no} is still {r.ours}" for r in self.refunds.values() if r.ours != "succeeded"]
        problems += [f"{w.out_bill_no} is still {w.ours}" for w in self.withdrawals.values() if w.ours in OPEN_PAYOUT]
        problems += [
            f"{kind} of {inv} holds {self.probe.balances.get(kind + inv.invitation_id, 0)} fen"
            for inv in self.invs
            for kind in PRIVATE_KINDS
            if self.probe.balances.get(kind + inv.invitation_id, 0)
        ]
        problems += self.probe.deep()
        assert not problems, self._explain("after everything settled", problems)


MOVABLE = (AWAITING_PAYMENT, PENDING_RESPONSE, ACCEPTED, COMPLETED, CONFIRMED)
UNSETTLED = (PENDING_RESPONSE, COMPLETED, DECLINED, EXPIRED, CANCELLED, NOT_DELIVERED, REFUNDING)
"""Statuses a well-behaved provider and the jobs always move on from."""


# --- pieces -------------------------------------------------------------------------------------


def _json(response: Any) -> Any:
    return response.json_body if response.body else None


def _outcome(response: Any) -> str:
    return f"{response.status_code} {error_code(response) or ''}".rstrip()


def invitation_body(doctor_id: str, hospital_id: str, day: date, at: str) -> dict[str, Any]:
    request = InvitationRequest(
        kind="invitation",
        doctor_id=doctor_id,
        hospital_id=hospital_id,
        date=day,
        time=at,
        operation=Operation(procedure="Laparoscopic cholecystectomy", expected_minutes=90),
        summary=SUMMARY,
    )
    return msgspec.to_builtins(request)


def altered(path: str, body: Any) -> Any:
    """Another body for the same route (still valid, so the key is what answers)."""
    if path == "/v1/payments":
        return {**body, "scene": "h5"}
    if path == "/v1/withdrawals":
        return {**body, "amount_fen": body["amount_fen"] + 1}
    if path == "/v1/invitations":
        return {**body, "time": "08:30"}
    if body and "reason" in body:
        return {"reason": body["reason"] + " (again)"}
    return {"note": "the same action, another body"}


def statement_rows(api: Any, principal: Principal) -> list[Row]:
    """``(transaction, type, direction, amount, status, balances)`` of every row of the user's statement (all pages).

    ``balances``: the doctor's balances the row moved, by name, without those it moved by nothing."""
    rows: list[Row] = []
    cursor = None
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = _json(http(api, "GET", f"/v1/me/transactions{query}", principal))
        rows += [
            (
                r["transaction_id"],
                r["type"],
                r["direction"],
                r["amount_fen"],
                r["status"],
                tuple(sorted((name, amount) for name, amount in (r["balances"] or {}).items() if amount)),
            )
            for r in page["items"]
        ]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def make_parties(admin: Principal, hospital_id: str, fee: int, now: datetime) -> dict[str, Principal]:
    """A verified doctor (fee ``fee``, working every day for ``CALENDAR_DAYS``), a patient, a verified hospital."""
    doctor = signin.register_with_phone(phone(), PASSWORD, DOCTOR, None, now).principal
    profile = ProfilePatch(
        name=DOCTOR_NAME,
        hospital_id=hospital_id,
        title="attending",
        invitation_fee=fee,
        consultation_fee=10_000,
        specialties=["cardiac"],
    )
    profiles.update_profile(doctor, profile, now)
    verification.submit(doctor, DOCTOR_CREDENTIALS, now)
    verification.decide(admin, doctor.user_id, True, None, now)
    today = shanghai_date(now)
    working = RangeSetting(today, today + timedelta(days=CALENDAR_DAYS), True, CAPACITY, 1)
    calendar.set_days(doctor.user_id, CalendarUpdate(ranges=[working]), now)
    patient = signin.register_with_phone(phone(), PASSWORD, PATIENT, None, now).principal
    hospital = signin.register_with_phone(phone(), PASSWORD, HOSPITAL, None, now).principal
    profiles.update_profile(
        hospital, ProfilePatch(hospital_id=hospital_id, contact_name="Wang", contact_phone=phone()), now
    )
    verification.submit(hospital, HOSPITAL_CREDENTIALS, now)
    verification.decide(admin, hospital.user_id, True, None, now)
    return {"doctor": doctor, "patient": patient, "hospital": hospital}


def settle_leftovers(world: World, times: list[datetime]) -> None:
    """Before an example: the jobs, with a well-behaved provider, finish whatever earlier tests left due."""
    provider = world.provider
    provider.refund_mode, provider.payout_answer = "succeed", "succeeded"
    provider.finish_refunds()
    for number, status in list(provider.transfers.items()):
        if status.state in ("processing", "wait_user_confirm"):
            provider.finish_transfer(number, "succeeded")
    for at in times:
        world.clock.now = at
        for job in (
            deadlines.follow_up_payments,
            deadlines.expire_due,
            deadlines.confirm_due,
            deadlines.follow_up_refunds,
            deadlines.settle_payouts,
        ):
            job(at, limit=JOB_LIMIT)


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture
def world(tables: list[str], admin: Principal, api: Any) -> Iterator[World]:
    """The shared pieces, with cheap password hashing, the model provider and the business clock installed."""
    from chalicelib.clock import utc_now

    # past any time other tests used, and past what an earlier run of the machine in this process used
    start = max([utc_now().replace(microsecond=0) + timedelta(days=1000), *USED])
    seed_directory(utc_now())
    clock = Clock(start)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("chalicelib.security.passwords.N", 2**4)
        with installed(ModelProvider()) as provider, business_clock(clock):
            shared = World(api, admin, provider, clock, start)  # type: ignore[arg-type]
            try:
                yield shared
            finally:
                USED.append(shared.floor)


@pytest.mark.timeout(600 + EXAMPLES * STEPS // 10)  # the run, and Hypothesis's up to 5 minutes of shrinking
def test_the_money_system_keeps_its_books_under_any_sequence_of_operations(world: World) -> None:
    # GIVEN the product on DynamoDB Local, a provider the model controls, and a business clock
    LedgerMachine.world = world
    run_seed = int(os.environ.get("LEDGER_MODEL_SEED") or random.randrange(2**32))
    machine_test = get_state_machine_test(
        LedgerMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # WHEN random sequences of operations run, each checked against the model after every step
    try:
        seed(run_seed)(machine_test)()
    except BaseException as failure:
        failure.add_note(f"replay this run with LEDGER_MODEL_SEED={run_seed}")
        raise
    print("outcomes seen:\n  " + "\n  ".join(f"{n:6d}  {what}" for what, n in sorted(SEEN.items())))
    # THEN the whole ledger, every example's data together, passes the audit
    report = check_ledger()
    assert report.ok, report.violations
