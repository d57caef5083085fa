"""Tips and VIP memberships: payment orders that pay for something other than an invitation.

- A **tip** (M-j) is given by an invitation's requester once the service is confirmed, any
  number of times, each within the configured bounds. It is ``PT<id>``; on payment the
  doctor's available balance receives it (minus the tip fee, none by default). Tips are
  never shown publicly and never feed the star level.
- A **membership** (M-g) is bought by a hospital account for one of the configured plans.
  It is ``PM<id>``; on payment the membership is created or extended from its current
  end (``settlement``).

Each purpose keeps at most one *open* order per invitation (tip) or per hospital
(membership), held by a ``PaymentSlot``: a retried request gets the open order back. A
request that differs (another amount, plan, channel or scene) first closes the open one
at the provider — unless it was paid meanwhile, which is then applied — and opens anew.

Example
-------
>>> open_order(provider, principal, OrderRequest("tip", "3f…", "sandbox", amount_fen=2000), utc_now())  # doctest: +SKIP
(201, {'order_id': 'PT…', 'purpose': 'tip', 'amount_fen': 2000, 'status': 'pending', ...})
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist

from chalicelib.accounts.roles import HOSPITAL
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import CONFIRMED
from chalicelib.models.ledger import PaymentOrder, PaymentSlot
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.payments import orders

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal
    from chalicelib.payments.orders import OrderRequest
    from chalicelib.payments.provider import Provider

PREFIXES = {"tip": "PT", "membership": "PM"}
DESCRIPTIONS = {"tip": "\u6253\u8d4f\u9ebb\u9189\u533b\u751f", "membership": "VIP\u4f1a\u5458"}  # 打赏麻醉医生, VIP会员
ATTEMPTS = 3


def open_order(
    provider: Provider, principal: Principal, request: OrderRequest, now: datetime
) -> tuple[int, dict[str, Any]]:
    """Open (or return the open) tip or membership order of ``principal``."""
    if request.purpose == "tip":
        slot_key, amount, beneficiary = _tip(principal, request)
        days = None
    else:
        slot_key, amount, days = _membership(principal, request)
        beneficiary = None
    for _attempt in range(ATTEMPTS):
        existing = _open_order_in(slot_key)
        if existing is not None:
            if _same(existing, request, amount, now):
                return 200, _ready(provider, existing, principal, now)
            _retire(existing, now)
            continue
        order = _new_order(principal, request, slot_key, amount, now, beneficiary=beneficiary, days=days)
        if order is not None:
            return 201, _ready(provider, order, principal, now)
    raise busy()


def _tip(principal: Principal, request: OrderRequest) -> tuple[str, int, str]:
    invitation = engine.load(request.reference)
    if invitation.requester_id != principal.user_id:
        raise engine.NOT_FOUND
    if invitation.status != CONFIRMED:
        raise ApiError(
            409,
            "invitation_not_tippable",
            "A tip can be given once the service is confirmed",
            "服务确认后才能打赏",
            {"status": invitation.status},
        )
    low, high = get_settings().tip_bounds_fen
    if request.amount_fen is None or not low <= request.amount_fen <= high:
        raise ApiError(
            422,
            "tip_out_of_bounds",
            f"A tip is from {low} to {high} fen",
            f"打赏金额须在 {low} 至 {high} 分之间",
            {"field": "amount_fen", "min_fen": low, "max_fen": high},
        )
    return f"SLOT#tip#{invitation.invitation_id}", request.amount_fen, invitation.doctor_id


def _membership(principal: Principal, request: OrderRequest) -> tuple[str, int, int]:
    from chalicelib.accounts.profiles import load_account

    if principal.role != HOSPITAL:
        raise ApiError(403, "forbidden", "Only hospital accounts buy memberships", "仅医院账号可购买会员")
    if load_account(principal.user_id).verification_status != "verified":
        raise ApiError(
            403,
            "verification_required",
            "A hospital account is verified before it buys a membership",
            "医院账号通过认证后才能购买会员",
        )
    if request.amount_fen is not None:
        raise ApiError(
            422,
            "validation_failed",
            "A membership costs its plan's price",
            "会员价格由套餐决定",
            {"field": "amount_fen"},
        )
    plans = get_settings().membership_plans
    plan = plans.get(request.reference)
    if plan is None:
        raise ApiError(
            422,
            "unknown_plan",
            f"No membership plan {request.reference!r}",
            "没有该会员套餐",
            {"field": "reference", "plans": sorted(plans)},
        )
    return f"SLOT#membership#{principal.user_id}", plan.price_fen, plan.days


def _open_order_in(slot_key: str) -> PaymentOrder | None:
    try:
        slot = PaymentSlot.get(slot_key, "SLOT", consistent_read=True)
    except DoesNotExist:
        return None
    order = orders.get(slot.order_id)
    if order is None:  # the slot is written with its order: a missing order is a race, retry
        raise busy()
    return order


def _same(order: PaymentOrder, request: OrderRequest, amount: int, now: datetime) -> bool:
    return (
        order.status == "pending"
        and now < datetime.fromisoformat(order.expires_at)
        and order.reference == request.reference
        and (order.channel, order.scene, int(order.amount_fen)) == (request.channel, request.scene, amount)
    )


def _retire(order: PaymentOrder, now: datetime) -> None:
    """Make room for a different order: close the open one at the provider and ours (or apply its payment)."""
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    if order.status != "pending":  # final already: only its slot is left
        batch = Batch()
        orders.free_slot(batch, order)
        try:
            batch.commit(PaymentSlot._get_connection().connection)
        except TransactionCancelledError:
            raise busy() from None
        return
    try:
        get_provider(order.channel).close_payment(order.order_id)
    except ProviderError as error:
        if error.code == "order_paid":  # paid at the last moment: apply it; the next attempt opens anew
            orders.follow_up_paid(order, now)
            return
        if error.code != "order_not_found":
            raise ApiError(
                409,
                "payment_order_open",
                "An earlier payment order is still open at the provider; retry shortly",
                "上一笔支付订单尚未关闭，请稍后重试",
                {"order_id": order.order_id},
            ) from None
    orders.close(order, now)


def _new_order(
    principal: Principal,
    request: OrderRequest,
    slot_key: str,
    amount: int,
    now: datetime,
    *,
    beneficiary: str | None,
    days: int | None,
) -> PaymentOrder | None:
    """Store a new order and its slot at once; None when another request took the slot first."""
    number = f"{PREFIXES[request.purpose]}{secrets.token_hex(13)}"
    order = PaymentOrder(f"ORDER#{number}", "ORDER")
    order.order_id, order.purpose, order.reference = number, request.purpose, request.reference
    order.payer_id, order.channel, order.scene = principal.user_id, request.channel, request.scene
    order.amount_fen, order.currency, order.status = amount, "CNY", "pending"
    order.beneficiary_id, order.slot_key, order.plan_days = beneficiary, slot_key, days
    expires_at = now.replace(microsecond=0) + timedelta(minutes=get_settings().payment_window_minutes)
    order.expires_at, order.created_at, order.updated_at = iso(expires_at), iso(now), iso(now)
    order.owner_key, order.work_queue = f"OWNER#{principal.user_id}", orders.QUEUE
    order.due_at = iso(now + timedelta(seconds=orders.POLL_SECONDS[0]))
    slot = PaymentSlot(slot_key, "SLOT")
    slot.order_id, slot.created_at = number, iso(now)
    batch = Batch()
    batch.put("order", order, condition=PaymentOrder.pk.does_not_exist())
    batch.put("slot", slot, condition=PaymentSlot.pk.does_not_exist())
    try:
        batch.commit(PaymentOrder._get_connection().connection)
    except TransactionCancelledError as cancelled:
        if "slot" in cancelled.failed:
            return None
        raise busy() from None
    return order


def _ready(provider: Provider, order: PaymentOrder, principal: Principal, now: datetime) -> dict[str, Any]:
    if orders.needs_client_params(order, now):
        order = orders.create_at_provider(provider, order, DESCRIPTIONS[order.purpose], principal, now)
    return orders.view(order, principal)
