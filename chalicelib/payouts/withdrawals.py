"""Withdrawals: a doctor moves available money to a payout, which the settlement job then pays (C10).

``request`` writes ONE transaction: the payout order (its ``out_bill_no`` fixed now, before
any provider sees it, and queued in ``WORK#payout``), the day's total raised under the
daily limit, and the posting ``doctor:available → doctor:payout`` whose balance guard
keeps ``available`` from going below zero. A doctor who owes (``doctor:<id>:receivable``
below zero) pays that back first, in the same posting: only money beyond the debt leaves.
Two withdrawals at once over the balance: exactly one commits, the other is 409
``insufficient_funds``; over the day's limit, 409 ``daily_limit_reached``. Nothing is half written on any failure.

A transaction that met a concurrent one is tried again with the same order number, so a
try whose answer was lost and that did commit is found (its order exists) and answered,
never written twice.

Example
-------
>>> request(doctor, WithdrawalRequest(amount_fen=20_000, payout_account_id="pa3f…"), utc_now())  # doctest: +SKIP
(201, {'withdrawal_id': 'WD…', 'amount_fen': 20000, 'status': 'requested', ...})
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from pynamodb.exceptions import DoesNotExist

from chalicelib.clock import iso, shanghai_date
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.ledger import accounts as ledger_accounts
from chalicelib.ledger.journal import Posting, balance, post
from chalicelib.models.ledger import PayoutOrder, WithdrawalDay
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.observability import logger
from chalicelib.pagination import decode_cursor, encode_cursor, read_page
from chalicelib.payouts import accounts
from chalicelib.security import privacy

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.accounts.roles import Principal

QUEUE = "WORK#payout"
PAYEE_FIELD = "payout_payee"
"""The associated data of ``PayoutOrder.payee_cipher``."""
MAX_FEN = 10**10
ATTEMPTS = 4
"""Tries of the withdrawal's transaction when a concurrent one holds the same items."""
FINAL = ("succeeded", "failed", "cancelled")
NOT_FOUND = ApiError(404, "withdrawal_not_found", "No withdrawal with this id is yours", "找不到该提现记录")

FAIL_REASONS: dict[str, tuple[str, str]] = {
    "OVERDUE_CLOSE": ("It was not confirmed in WeChat within 24 hours", "未在 24 小时内于微信确认收款"),
    "PAYEE_ACCOUNT_ABNORMAL": ("The receiving account cannot take payments", "收款账户异常，无法收款"),
    "MERCHANT_REVOCATION": ("The transfer was cancelled", "转账已撤销"),
    "REAL_NAME_CHECK_FAIL": ("The account holder's real name did not match", "收款人实名校验未通过"),
    "NAME_NOT_CORRECT": ("The account holder's real name did not match", "收款人实名校验未通过"),
    "invalid_payee": ("The payout account was refused by the payment provider", "收款账户被支付机构拒绝"),
    "cancelled": ("The transfer was cancelled", "转账已撤销"),
}
"""Provider reason codes → what the doctor is told (English, Chinese)."""


class WithdrawalRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/withdrawals``: how much, to which of the caller's payout accounts."""

    amount_fen: Annotated[int, msgspec.Meta(le=MAX_FEN)]
    payout_account_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def order_number() -> str:
    """A new ``out_bill_no``: ``WD`` and 28 hex characters (WeChat allows 5 to 32 letters and digits)."""
    return f"WD{uuid.uuid4().hex[:28]}"


def get(out_bill_no: str) -> PayoutOrder | None:
    try:
        return PayoutOrder.get(f"ORDER#{out_bill_no}", "ORDER", consistent_read=True)
    except (DoesNotExist, ValueError):  # ValueError: the number is another kind of order
        return None


def payee_of(order: PayoutOrder) -> dict[str, str]:
    """The payee's details stored with the order (decrypted; never logged)."""
    return json.loads(privacy.decrypt(PAYEE_FIELD, order.payee_cipher))


def fail_messages(reason: str | None) -> tuple[str, str]:
    """What a doctor reads about a payout that failed or was cancelled (English, Chinese)."""
    english, chinese = FAIL_REASONS.get(reason or "", ("The payout did not go through", "提现未成功"))
    return (
        f"{english}. The money is back in your available balance.",
        f"{chinese}，款项已退回可提现余额。",
    )


def view(order: PayoutOrder) -> dict[str, Any]:
    """A withdrawal as its doctor sees it."""
    ended = order.status in ("failed", "cancelled")
    message, message_zh = fail_messages(order.fail_reason) if ended else (None, None)
    return {
        "withdrawal_id": order.out_bill_no,
        "amount_fen": int(order.amount_fen),
        "status": order.status,
        "payee": {"kind": order.payee_kind, "label": order.payee_masked},
        "channel": order.channel,
        "package_info": order.package_info if order.status == "wait_user_confirm" else None,
        "fail_reason": order.fail_reason if ended else None,
        "fail_message": message,
        "fail_message_zh": message_zh,
        "created_at": order.created_at,
        "settled_at": order.settled_at,
    }


def _below_minimum(minimum: int) -> ApiError:
    return ApiError(
        422,
        "amount_below_minimum",
        f"A withdrawal is at least {minimum} fen",
        f"单笔提现金额不能低于 {minimum / 100:.2f} 元",
        {"minimum_fen": minimum},
    )


def withdrawn_on(doctor_id: str, day: str) -> int:
    """What the doctor has withdrawn on ``day`` (Asia/Shanghai), net of payouts that failed."""
    try:
        return int(WithdrawalDay.get(f"WITHDRAWN#{doctor_id}", day, consistent_read=True).total_fen)
    except DoesNotExist:
        return 0


def _limit_reached(doctor_id: str, day: str, limit: int) -> ApiError:
    remaining = max(limit - withdrawn_on(doctor_id, day), 0)
    return ApiError(
        409,
        "daily_limit_reached",
        f"This would exceed the daily withdrawal limit; {remaining} fen remain today",
        f"超出每日提现限额，今日还可提现 {remaining / 100:.2f} 元",
        {"limit_fen": limit, "remaining_fen": remaining},
    )


def _new_order(
    doctor_id: str, account: Any, payee: dict[str, str], channel: str, amount: int, now: datetime
) -> PayoutOrder:
    number = order_number()
    order = PayoutOrder(f"ORDER#{number}", "ORDER")
    order.out_bill_no, order.doctor_id, order.payout_account_id = number, doctor_id, account.account_id
    order.payee_kind, order.payee_masked = account.kind, account.label
    order.payee_cipher = privacy.encrypt(PAYEE_FIELD, json.dumps(payee, ensure_ascii=False))
    order.channel, order.amount_fen, order.requested_on = channel, amount, shanghai_date(now).isoformat()
    order.status, order.attempts, order.checks = "requested", 0, 0
    order.work_queue, order.due_at = QUEUE, iso(now)
    order.owner_key, order.created_at, order.updated_at = f"WITHDRAWALS#{doctor_id}", iso(now), iso(now)
    return order


def _batch(order: PayoutOrder, limit: int) -> Batch:
    amount = int(order.amount_fen)
    batch = Batch()
    batch.put("payout_order", order, condition=PayoutOrder.pk.does_not_exist())
    batch.update(
        "withdrawal_day",
        WithdrawalDay(f"WITHDRAWN#{order.doctor_id}", order.requested_on),
        actions=[WithdrawalDay.item_type.set(WithdrawalDay), WithdrawalDay.total_fen.add(amount)],
        condition=WithdrawalDay.total_fen.does_not_exist() | (WithdrawalDay.total_fen <= limit - amount),
    )
    return batch


def withdrawal_posting(order: PayoutOrder, owed_fen: int) -> Posting:
    """``available → payout``; and first ``available → receivable`` for what the doctor owes (a refund
    took it back after release), so money leaves only beyond the debt. The receivable's guard makes a
    concurrent repayment retry."""
    amount, doctor, number = int(order.amount_fen), order.doctor_id, order.out_bill_no
    entries = {
        ledger_accounts.doctor_available(doctor): -(amount + owed_fen),
        ledger_accounts.doctor_payout(doctor): amount,
        ledger_accounts.doctor_receivable(doctor): owed_fen,
    }
    return Posting(
        f"withdrawal:{number}",
        "withdrawal",
        {account: value for account, value in entries.items() if value},
        f"withdrawal:{number}",
    )


def request(principal: Principal, body: WithdrawalRequest, now: datetime) -> tuple[int, dict[str, Any]]:
    """``POST /v1/withdrawals``: move ``amount_fen`` from available to payout, to be paid to the account."""
    from chalicelib.payments.registry import payout_channel

    settings = get_settings()
    amount, limit = body.amount_fen, settings.withdrawal_daily_limit_fen
    if amount < settings.withdrawal_min_fen:
        raise _below_minimum(settings.withdrawal_min_fen)
    doctor_id = principal.user_id
    account, payee = accounts.load_payee(doctor_id, body.payout_account_id)
    channel = payout_channel(account.kind)
    order = _new_order(doctor_id, account, payee, channel, amount, now)
    if amount > limit:
        raise _limit_reached(doctor_id, order.requested_on, limit)
    for attempt in range(ATTEMPTS):
        try:
            owed = max(0, -balance(ledger_accounts.doctor_receivable(doctor_id)))
            post(withdrawal_posting(order, owed), now, _batch(order, limit))
        except TransactionCancelledError as cancelled:
            if "payout_order" in cancelled.failed:  # an earlier try committed; its answer was lost
                return _committed(order)
            if "withdrawal_day" in cancelled.failed:
                raise _limit_reached(doctor_id, order.requested_on, limit) from None
            raise busy() from None
        except ApiError as error:
            if error.code != "conflict" or attempt == ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # jitter, not a secret
            continue
        logger.info(
            "withdrawal requested",
            extra={"out_bill_no": order.out_bill_no, "doctor_id": doctor_id, "amount_fen": amount},
        )
        return 201, view(order)
    raise busy()


def _committed(order: PayoutOrder) -> tuple[int, dict[str, Any]]:
    stored = get(order.out_bill_no)
    if stored is None or stored.doctor_id != order.doctor_id or int(stored.amount_fen) != int(order.amount_fen):
        raise busy()
    return 201, view(stored)


def list_own(principal: Principal, limit: int, cursor: str | None) -> dict[str, Any]:
    """``GET /v1/withdrawals``: the caller's withdrawals, newest first, paginated."""
    scope = f"withdrawals:{principal.user_id}"
    items, last_key = read_page(
        lambda **page: PayoutOrder.by_owner.query(f"WITHDRAWALS#{principal.user_id}", scan_index_forward=False, **page),
        PayoutOrder,
        limit=limit,
        start=decode_cursor(cursor, scope),
    )
    return {"items": [view(item) for item in items], "next_cursor": encode_cursor(last_key, scope)}
