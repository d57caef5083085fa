"""The sandbox payment provider's own records, kept in the Ledger table under ``SANDBOX#``.

They are the *provider's* side of a payment, refund or transfer (what WeChat Pay would
hold), never ours: the payment and payout flows read our ``PaymentOrder``/``RefundOrder``/
``PayoutOrder`` and learn the sandbox's state only through its callbacks and queries,
exactly as with a real provider.

Keys (``pk``/``sk``): ``SANDBOX#<out_trade_no>`` / ``PAYMENT`` a payment (``state`` NOTPAY →
SUCCESS | CLOSED, and CLOSED → SUCCESS only when a test asks for a late payment);
``SANDBOX#<out_trade_no>`` / ``REFUND#<out_refund_no>`` a refund of it (``state`` PROCESSING →
SUCCESS, or ABNORMAL); ``SANDBOX#<out_bill_no>`` / ``PAYOUT`` a transfer to a payee (WeChat's
商家转账 bill: ``state`` WAIT_USER_CONFIRM | PROCESSING → SUCCESS | FAIL | CANCELLED).
None of them sets an index attribute (``owner_key``, ``work_queue``…), so they never appear
in ``by_owner`` or ``work_due``. Every state change is a conditional write on the state it
leaves (``chalicelib.payments.sandbox``).
"""

from __future__ import annotations

from pynamodb.attributes import NumberAttribute, UnicodeAttribute

from chalicelib.models.ledger import LedgerTable

PAYMENT_SK = "PAYMENT"
PAYOUT_SK = "PAYOUT"
REFUND_PREFIX = "REFUND#"

PAYMENT_STATES = ("NOTPAY", "SUCCESS", "CLOSED")
"""WeChat Pay's ``trade_state`` values the sandbox uses."""
REFUND_STATES = ("PROCESSING", "SUCCESS", "ABNORMAL")
"""WeChat Pay's ``refund_status`` values the sandbox uses."""
PAYOUT_STATES = ("WAIT_USER_CONFIRM", "PROCESSING", "SUCCESS", "FAIL", "CANCELLED")
"""WeChat Pay's transfer-bill ``state`` values the sandbox uses (of ACCEPTED, PROCESSING, WAIT_USER_CONFIRM,
TRANSFERING, SUCCESS, FAIL, CANCELING, CANCELLED)."""
FINAL_PAYOUT_STATES = ("SUCCESS", "FAIL", "CANCELLED")
"""The transfer-bill states WeChat never leaves (each announced by MCHTRANSFER.BILL.FINISHED)."""
REFUND_BEHAVIOURS = ("succeed", "processing", "fail", "abnormal")
"""What the sandbox does with a payment's later refunds (``SandboxPayment.refund_behaviour``)."""


def sandbox_pk(out_trade_no: str) -> str:
    return f"SANDBOX#{out_trade_no}"


def refund_sk(out_refund_no: str) -> str:
    return f"{REFUND_PREFIX}{out_refund_no}"


class SandboxPayment(LedgerTable, discriminator="sandbox_payment"):
    """A payment as the sandbox provider holds it: ``SANDBOX#<out_trade_no>`` / ``PAYMENT``.

    ``event_id`` is the id of its last terminal notification (TRANSACTION.SUCCESS, or the
    CLOSED one): every re-send carries it, as a provider retry does. ``refunded_fen`` is what
    its refunds took so far, moved with the refund's creation in one transaction, so two
    refunds can never take more than ``amount_fen``.
    """

    out_trade_no = UnicodeAttribute()
    amount_fen = NumberAttribute()
    description = UnicodeAttribute()
    scene = UnicodeAttribute()
    appid = UnicodeAttribute()
    payer_openid = UnicodeAttribute(null=True)
    prepay_id = UnicodeAttribute()
    expires_at = UnicodeAttribute()
    state = UnicodeAttribute()
    transaction_id = UnicodeAttribute(null=True)
    success_time = UnicodeAttribute(null=True)
    closed_time = UnicodeAttribute(null=True)
    event_id = UnicodeAttribute(null=True)
    event_time = UnicodeAttribute(null=True)
    refund_behaviour = UnicodeAttribute(default="succeed")
    refunded_fen = NumberAttribute(default=0)
    updated_at = UnicodeAttribute()


class SandboxRefund(LedgerTable, discriminator="sandbox_refund"):
    """A refund as the sandbox provider holds it: ``SANDBOX#<out_trade_no>`` / ``REFUND#<out_refund_no>``.

    ``state``: PROCESSING → SUCCESS, or ABNORMAL (the refund could not reach the payer).
    ``event_id`` is the id of its result notification, once there is one.
    """

    out_trade_no = UnicodeAttribute()
    out_refund_no = UnicodeAttribute()
    refund_id = UnicodeAttribute()
    transaction_id = UnicodeAttribute()
    amount_fen = NumberAttribute()
    total_fen = NumberAttribute()
    reason = UnicodeAttribute()
    state = UnicodeAttribute()
    success_time = UnicodeAttribute(null=True)
    event_id = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute()


class SandboxPayout(LedgerTable, discriminator="sandbox_payout"):
    """A transfer as the sandbox provider holds it: ``SANDBOX#<out_bill_no>`` / ``PAYOUT``.

    ``state``: WAIT_USER_CONFIRM (a WeChat payee must confirm it with ``package_info``) or
    PROCESSING (Alipay, bank card) → SUCCESS | FAIL (``fail_reason``, e.g.
    PAYEE_ACCOUNT_ABNORMAL, OVERDUE_CLOSE) | CANCELLED (MERCHANT_REVOCATION). It stores
    only what the provider would: a WeChat payee's ``payee_openid``, otherwise a masked
    ``payee_account``. ``event_id`` is the id of its MCHTRANSFER.BILL.FINISHED
    notification, once final: every re-send carries it. ``create_time``/``update_time`` are
    WeChat's (Beijing time), ``created_at``/``updated_at`` ours (UTC).
    """

    out_bill_no = UnicodeAttribute()
    transfer_bill_no = UnicodeAttribute()
    amount_fen = NumberAttribute()
    payee_kind = UnicodeAttribute()
    payee_openid = UnicodeAttribute(null=True)
    payee_account = UnicodeAttribute(null=True)
    remark = UnicodeAttribute()
    state = UnicodeAttribute()
    package_info = UnicodeAttribute(null=True)
    fail_reason = UnicodeAttribute(null=True)
    event_id = UnicodeAttribute(null=True)
    create_time = UnicodeAttribute()
    update_time = UnicodeAttribute()
    updated_at = UnicodeAttribute()
