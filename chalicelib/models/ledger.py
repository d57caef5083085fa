"""The Ledger table: the double-entry journal and the payment orders behind it.

Keys (``pk``/``sk``): ``TX#<id>`` / ``TX`` a journal transaction (its entries inside,
summing to zero); ``ACCOUNT#<account>`` / ``BALANCE`` an account's balance and
``ACCOUNT#<account>`` / ``ENTRY#<time>#<tx>`` its entries; ``RECORD#<user>`` /
``<time>#<tx>`` a user's side of a transaction (their statement); ``ORDER#<id>`` / ``ORDER``
a payment, refund or payout order; ``SLOT#<purpose>#<key>`` / ``SLOT`` the one open
payment order of a tip or membership purchase; ``WITHDRAWN#<doctor>`` / ``<date>`` what a
doctor withdrew that day (the daily limit); ``PROVIDER#<channel>#<kind>#<ref>`` / ``SEEN`` the
permanent dedupe key of a provider event or provider object; ``QUARANTINE#<channel>#<event>``
/ ``EVENT`` a verified callback for an order that is not ours. The sandbox provider keeps
its own side under ``SANDBOX#`` (``chalicelib.models.sandbox``). Items are appended, never edited, except balances
and order states, which move only by conditional writes.

Indexes:

- ``work_due``: *sparse*; orders a job must follow up (payouts to send, payments to
  poll, refunds to retry), by queue and time due.
- ``by_owner``: a user's orders (``OWNER#<user>``), a doctor's withdrawals
  (``WITHDRAWALS#<doctor>``), and the ledger's own lists, by time.
"""

from __future__ import annotations

from pynamodb.attributes import (
    BooleanAttribute,
    DiscriminatorAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from chalicelib.config import get_settings


class WorkDueIndex(GlobalSecondaryIndex):
    """Orders a job must follow up, by queue and time due."""

    class Meta:
        index_name = "work_due"
        projection = AllProjection()

    work_queue = UnicodeAttribute(hash_key=True)
    due_at = UnicodeAttribute(range_key=True)


class ByOwnerIndex(GlobalSecondaryIndex):
    """A user's payment, refund and payout orders."""

    class Meta:
        index_name = "by_owner"
        projection = AllProjection()

    owner_key = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class LedgerTable(Model):
    """Base of every item in the Ledger table."""

    class Meta:
        table_name = get_settings().ledger_table
        billing_mode = "PAY_PER_REQUEST"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    item_type = DiscriminatorAttribute(attr_name="type")

    work_queue = UnicodeAttribute(null=True)
    due_at = UnicodeAttribute(null=True)
    owner_key = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute(null=True)

    by_work_due = WorkDueIndex()
    by_owner = ByOwnerIndex()


class JournalTransaction(LedgerTable, discriminator="journal_transaction"):
    """One money movement: ``TX#<id>`` / ``TX``. Written once (its id is the idempotency key), never edited.

    ``entries`` maps each account to its signed amount in fen; they sum to zero. Listed
    under ``by_owner`` ``LEDGER#TX``, so an audit reads every transaction without a Scan.
    """

    tx_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    reference = UnicodeAttribute()
    entries = MapAttribute()
    fingerprint = UnicodeAttribute()


class LedgerEntry(LedgerTable, discriminator="ledger_entry"):
    """One account's side of a transaction: ``ACCOUNT#<account>`` / ``ENTRY#<time>#<tx id>``."""

    tx_id = UnicodeAttribute()
    amount = NumberAttribute()


class AccountBalance(LedgerTable, discriminator="account_balance"):
    """An account's balance: ``ACCOUNT#<account>`` / ``BALANCE``; listed under ``by_owner`` ``LEDGER#ACCOUNTS``.

    Moved only inside the transaction that writes the entries, with a condition that
    keeps non-overdraft accounts from going below zero.
    """

    account = UnicodeAttribute()
    balance = NumberAttribute(default=0)


class PaymentOrder(LedgerTable, discriminator="payment_order"):
    """A payment order: ``ORDER#<out_trade_no>`` / ``ORDER``; ``status`` pending → succeeded | closed.

    The amount is copied from what it pays for (never from the client). While pending it
    sits in ``work_due`` ``WORK#payment`` so the follow-up job polls the provider (a lost
    callback) and closes it when its window ends.
    """

    order_id = UnicodeAttribute()
    purpose = UnicodeAttribute()
    reference = UnicodeAttribute()
    payer_id = UnicodeAttribute()
    channel = UnicodeAttribute()
    scene = UnicodeAttribute()
    amount_fen = NumberAttribute()
    currency = UnicodeAttribute(default="CNY")
    status = UnicodeAttribute()
    expires_at = UnicodeAttribute()
    client_params = MapAttribute(null=True)
    client_params_at = UnicodeAttribute(null=True)
    """When the provider gave ``client_params`` (some expire before the window: ``orders.CLIENT_PARAMS_SECONDS``)."""
    payer_ip = UnicodeAttribute(null=True)
    """The payer's address the order was first opened with; asking again repeats it (WeChat H5)."""
    provider_ref = UnicodeAttribute(null=True)
    paid_at = UnicodeAttribute(null=True)
    closed_at = UnicodeAttribute(null=True)
    checks = NumberAttribute(default=0)
    flags = ListAttribute(of=UnicodeAttribute, null=True)
    beneficiary_id = UnicodeAttribute(null=True)
    """For a tip: the doctor who receives it."""
    slot_key = UnicodeAttribute(null=True)
    """For a tip or membership order: its ``PaymentSlot`` (removed when the order is final)."""
    plan_days = NumberAttribute(null=True)
    """For a membership order: the days its plan adds (the plan as it was when the order opened)."""
    updated_at = UnicodeAttribute()


class RefundOrder(LedgerTable, discriminator="refund_order"):
    """A refund by the original path: ``ORDER#<out_refund_no>`` / ``ORDER``.

    Stored, with its number, before the provider is called; every retry reuses the
    number, so the provider refunds once. ``entries`` is the posting made when the
    provider confirms (money back to ``provider:<channel>``). ``status``: requested →
    processing → succeeded, or failed (an admin must look: ``needs_attention``).
    """

    refund_no = UnicodeAttribute()
    payment_order_id = UnicodeAttribute()
    reference = UnicodeAttribute()
    payer_id = UnicodeAttribute()
    channel = UnicodeAttribute()
    amount_fen = NumberAttribute()
    total_fen = NumberAttribute()
    reason = UnicodeAttribute()
    entries = MapAttribute()
    status = UnicodeAttribute()
    attempts = NumberAttribute(default=0)
    last_error = UnicodeAttribute(null=True)
    provider_ref = UnicodeAttribute(null=True)
    needs_attention = BooleanAttribute(default=False)
    refunded_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute()


class ProviderSeen(LedgerTable, discriminator="provider_seen"):
    """A provider event or object already applied: ``PROVIDER#<channel>#<kind>#<ref>`` / ``SEEN``. Kept forever."""

    order_id = UnicodeAttribute()


class QuarantinedEvent(LedgerTable, discriminator="quarantined_event"):
    """A verified callback we could not apply (an order that is not ours): kept for an operator, listed under
    ``by_owner`` ``LEDGER#QUARANTINE``."""

    channel = UnicodeAttribute()
    event_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    merchant_ref = UnicodeAttribute()
    reason = UnicodeAttribute()


class PaymentSlot(LedgerTable, discriminator="payment_slot"):
    """The one open payment order of a tip (per invitation) or a membership purchase (per hospital):
    ``SLOT#<purpose>#<key>`` / ``SLOT``. Put with the order (``attribute_not_exists``), deleted when the
    order succeeds or closes, so a retried request finds the open order instead of opening another."""

    order_id = UnicodeAttribute()


class MoneyRecord(LedgerTable, discriminator="money_record"):
    """One user's side of a ledger transaction: ``RECORD#<user>`` / ``<time>#<tx id>``.

    Written in the same transaction as the journal entries (so a statement can never
    disagree with the ledger), never edited. ``direction``: ``in`` (the user gained),
    ``out`` (paid or paid out), ``internal`` (moved between the user's own balances).
    ``balances``: a doctor's change per balance (``pending``, ``available``, ``payout``).
    """

    tx_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    direction = UnicodeAttribute()
    amount_fen = NumberAttribute()
    balances = MapAttribute(null=True)
    reference = UnicodeAttribute()
    status = UnicodeAttribute()


class PayoutOrder(LedgerTable, discriminator="payout_order"):
    """A withdrawal and its payout: ``ORDER#<out_bill_no>`` / ``ORDER``.

    Written with the posting ``doctor:available → doctor:payout``. ``status``: requested
    (not yet accepted by the provider, or its outcome unknown) → processing |
    wait_user_confirm → succeeded | failed | cancelled. While not final it sits in
    ``work_due`` ``WORK#payout``; listed under ``by_owner`` ``WITHDRAWALS#<doctor>``.
    ``payee_cipher`` is the payee's details (JSON), encrypted; ``payee_masked`` what is shown.
    """

    out_bill_no = UnicodeAttribute()
    doctor_id = UnicodeAttribute()
    payout_account_id = UnicodeAttribute()
    payee_kind = UnicodeAttribute()
    payee_masked = UnicodeAttribute()
    payee_cipher = UnicodeAttribute()
    channel = UnicodeAttribute()
    amount_fen = NumberAttribute()
    requested_on = UnicodeAttribute()
    """The Asia/Shanghai date it counts against the daily limit."""
    status = UnicodeAttribute()
    attempts = NumberAttribute(default=0)
    """Payout calls made (the first one only after this is 1: a crash mid-call is queried, never resent blind)."""
    checks = NumberAttribute(default=0)
    provider_ref = UnicodeAttribute(null=True)
    package_info = UnicodeAttribute(null=True)
    fail_reason = UnicodeAttribute(null=True)
    last_error = UnicodeAttribute(null=True)
    needs_attention = BooleanAttribute(default=False)
    settled_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute()


class WithdrawalDay(LedgerTable, discriminator="withdrawal_day"):
    """What a doctor withdrew on one Asia/Shanghai date: ``WITHDRAWN#<doctor>`` / ``<date>``.

    Raised with each withdrawal under the condition that it stays within the daily limit
    (in the withdrawal's transaction), lowered again when a payout fails.
    """

    total_fen = NumberAttribute(default=0)
