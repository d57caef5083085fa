"""Payment orders: opened for what they pay for, followed until the provider says paid or closed.

The order number (``out_trade_no``) is ``PI<invitation id>``: an invitation has one order,
so a client that retries ``POST /v1/payments`` gets the same order and the same client
parameters back, and the provider never sees two orders for one invitation. The order is
stored before the provider is called; the amount is the invitation's fee snapshot,
never a client value. Tips and membership purchases are opened by ``purchases`` and then
followed, closed and settled here like any other order.

A pending order sits in the sparse ``WORK#payment`` queue: the follow-up job queries the
provider with backoff (a callback may never come) and, when the payment window ends,
closes the order at the provider and then the invitation. A payment that wins that race
is applied, and refunded, by ``settlement``.

Example
-------
>>> open_order(principal, OrderRequest("invitation", "3f…", "sandbox"), utc_now())  # doctest: +SKIP
(201, {'order_id': 'PI3f…', 'status': 'pending', 'amount_fen': 50000, 'client_params': {...}, ...})
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.accounts.roles import ADMIN
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.invitations import engine
from chalicelib.invitations.machine import AWAITING_PAYMENT, SYSTEM
from chalicelib.models.invitations import Invitation
from chalicelib.models.ledger import PaymentOrder, PaymentSlot
from chalicelib.models.transactions import Batch, TransactionCancelledError, busy
from chalicelib.observability import logger

if TYPE_CHECKING:
    from chalicelib.accounts.roles import Principal

QUEUE = "WORK#payment"
POLL_SECONDS = (60, 120, 300, 600)
LATE_CHECK = timedelta(minutes=15)
"""A closed order is queried once more this long after its payment window ended (``close_actions``)."""
LATE_CHECKS = 4
"""A closed order the provider still reports in progress is asked again at most this many times."""
NOT_FOUND = ApiError(
    404, "payment_order_not_found", "No payment order with this id is yours to see", "找不到该支付订单"
)
DESCRIPTIONS = {"invitation": "麻醉邀请", "consultation": "麻醉咨询"}
SCENE_APPS = {"jsapi_oa": "oa", "jsapi_mp": "mp"}
PAYER_IP: ContextVar[str | None] = ContextVar("payer_ip", default=None)
"""The address of the request that opens an order, set by the handler (never taken from the body)."""
CLIENT_PARAMS_SECONDS = {("wechat", "h5"): 240, ("alipay", "h5"): 600, ("alipay", "app"): 600}
"""How long what the front end needs to pay stays usable, where shorter than the payment window
(WeChat's ``h5_url`` lives 5 minutes; Alipay refuses a signed order whose timestamp is old).
Asking for the order again gives fresh ones for the same order number."""
SCENES = {
    "wechat": ("jsapi_oa", "jsapi_mp", "h5", "app"),
    "alipay": ("h5", "app"),  # Alipay cannot be opened inside WeChat
    "unionpay": ("h5", "app"),
    "sandbox": ("jsapi_oa", "jsapi_mp", "h5", "app"),
}
REFUSALS = {
    "scene_unsupported": ("This channel cannot pay in this scene", "该支付方式不支持当前场景"),
    "payer_openid_required": ("Sign in with WeChat in this app to pay with WeChat Pay", "请先使用微信登录"),
}


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    purpose: Literal["invitation", "tip", "membership"]
    reference: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    channel: Literal["wechat", "alipay", "unionpay", "sandbox"]
    scene: Literal["jsapi_oa", "jsapi_mp", "h5", "app"] = "jsapi_mp"
    amount_fen: int | None = None
    """Tips only: what the requester gives (within the configured bounds)."""


def order_number(invitation_id: str) -> str:
    return f"PI{invitation_id}"


def get(order_id: str) -> PaymentOrder | None:
    try:
        return PaymentOrder.get(f"ORDER#{order_id}", "ORDER", consistent_read=True)
    except (DoesNotExist, ValueError):  # ValueError: the number is another kind of order (a refund)
        return None


def payment_window_end(invitation: Invitation) -> datetime:
    """When the time to pay ends (to the second, as shown)."""
    created = datetime.fromisoformat(invitation.created_at).replace(microsecond=0)
    return created + timedelta(minutes=get_settings().payment_window_minutes)


def view(order: PaymentOrder, viewer: Principal) -> dict[str, Any]:
    """The order as its payer (or an admin) sees it; client parameters only while it can be paid."""
    body: dict[str, Any] = {
        "order_id": order.order_id,
        "purpose": order.purpose,
        "reference": order.reference,
        "channel": order.channel,
        "scene": order.scene,
        "amount_fen": int(order.amount_fen),
        "currency": order.currency,
        "status": order.status,
        "created_at": order.created_at,
        "expires_at": order.expires_at,
        "paid_at": order.paid_at,
        "closed_at": order.closed_at,
        "client_params": order.client_params.as_dict() if order.client_params and order.status == "pending" else None,
    }
    if viewer.role == ADMIN:
        body.update(provider_ref=order.provider_ref, flags=list(order.flags or []))
    return body


def read(order_id: str, viewer: Principal) -> dict[str, Any]:
    """``GET /v1/payments/{id}``: the payer's own order, or any for an admin."""
    order = get(order_id)
    if order is None or (order.payer_id != viewer.user_id and viewer.role != ADMIN):
        raise NOT_FOUND
    return view(order, viewer)


def open_order(principal: Principal, request: OrderRequest, now: datetime) -> tuple[int, dict[str, Any]]:
    """Open (or return the open) payment order for what ``request`` pays, with what the front end needs to pay."""
    from chalicelib.payments.registry import get_provider

    provider = get_provider(request.channel)
    check_payable(principal, request.channel, request.scene)
    if request.purpose != "invitation":
        from chalicelib.payments import purchases

        return purchases.open_order(provider, principal, request, now)
    if request.amount_fen is not None:
        raise ApiError(
            422,
            "validation_failed",
            "amount_fen is sent only for tips: an invitation costs its fee",
            "仅打赏需要填写金额",
            {"field": "amount_fen"},
        )
    invitation = engine.load(request.reference)
    if invitation.requester_id != principal.user_id:
        raise engine.NOT_FOUND
    if invitation.status != AWAITING_PAYMENT:
        raise ApiError(
            409,
            "invitation_not_payable",
            "This invitation is not waiting for payment",
            "该邀请当前无需支付",
            {"status": invitation.status},
        )
    expires_at = payment_window_end(invitation)
    if now >= expires_at:
        raise ApiError(
            409,
            "payment_window_closed",
            "The time to pay for this invitation is over",
            "支付时间已过",
            {"expired_at": iso(expires_at)},
        )
    order, created = _order_for(invitation, request, expires_at, now)
    if needs_client_params(order, now):
        description = DESCRIPTIONS.get(invitation.kind, DESCRIPTIONS["invitation"])
        order = create_at_provider(provider, order, description, principal, now)
    return (201 if created else 200), view(order, principal)


def _order_for(
    invitation: Invitation, request: OrderRequest, expires_at: datetime, now: datetime
) -> tuple[PaymentOrder, bool]:
    """The invitation's order: the one already open (same channel and scene), or a new one stored now."""
    if invitation.payment_order_id:
        existing = get(invitation.payment_order_id)
        if existing is None:
            raise busy()
        if existing.channel != request.channel or existing.scene != request.scene:
            raise ApiError(
                409,
                "payment_order_open",
                "This invitation already has an open payment order on another channel or scene",
                "该邀请已有未完成的支付订单",
                {"order_id": existing.order_id, "channel": existing.channel, "scene": existing.scene},
            )
        return existing, False
    order = PaymentOrder(f"ORDER#{order_number(invitation.invitation_id)}", "ORDER")
    order.order_id, order.purpose, order.reference = (
        order_number(invitation.invitation_id),
        "invitation",
        invitation.invitation_id,
    )
    order.payer_id, order.channel, order.scene = invitation.requester_id, request.channel, request.scene
    order.amount_fen, order.currency, order.status = int(invitation.fee_fen), "CNY", "pending"
    order.expires_at, order.created_at, order.updated_at = iso(expires_at), iso(now), iso(now)
    order.owner_key, order.work_queue, order.due_at = (
        f"OWNER#{invitation.requester_id}",
        QUEUE,
        iso(now + timedelta(seconds=POLL_SECONDS[0])),
    )
    batch = Batch()
    batch.put("order", order, condition=PaymentOrder.pk.does_not_exist())
    batch.update(
        "invitation",
        invitation,
        actions=[
            Invitation.payment_order_id.set(order.order_id),
            Invitation.updated_at.set(iso(now)),
            Invitation.due_queue.remove(),  # off DUE#payment: the order's follow-up closes it if unpaid
            Invitation.due_at.remove(),
        ],
        condition=(Invitation.status == AWAITING_PAYMENT) & Invitation.payment_order_id.does_not_exist(),
    )
    try:
        batch.commit(PaymentOrder._get_connection().connection)
    except TransactionCancelledError:
        current = engine.load(invitation.invitation_id)
        if current.payment_order_id:  # a concurrent request opened it first
            return _order_for(current, request, expires_at, now)
        if current.status == AWAITING_PAYMENT:  # met a concurrent write, or a stale read: retrying is safe
            raise busy() from None
        raise ApiError(
            409,
            "invitation_not_payable",
            "This invitation is not waiting for payment",
            "该邀请当前无需支付",
            {"status": current.status},
        ) from None
    return order, True


def _refusal(code: str, channel: str, scene: str) -> ApiError:
    english, chinese = REFUSALS[code]
    return ApiError(422, code, english, chinese, {"channel": channel, "scene": scene})


def _payer_openid(principal: Principal, scene: str) -> str | None:
    """The payer's openid in the WeChat app of a JSAPI ``scene`` (as sign-in keeps them, by app id)."""
    from chalicelib.accounts.profiles import load_account

    openids = load_account(principal.user_id).wechat_openids
    app_id = get_settings().wechat_app_ids[SCENE_APPS[scene]]
    return (openids.as_dict() if openids else {}).get(app_id)


def check_payable(principal: Principal, channel: str, scene: str) -> None:
    """Refuse, before any order is stored, what the channel cannot take: a scene it has no payment
    for, a WeChat JSAPI payer who never signed in with WeChat in that app."""
    wechat_app = channel == "wechat" and scene == "app" and not get_settings().payment_channels["wechat"]["app_appid"]
    if scene not in SCENES[channel] or wechat_app:
        raise _refusal("scene_unsupported", channel, scene)
    if channel == "wechat" and scene in SCENE_APPS and not _payer_openid(principal, scene):
        raise _refusal("payer_openid_required", channel, scene)


def needs_client_params(order: PaymentOrder, now: datetime) -> bool:
    """A pending order without what the front end needs to pay, or with parameters the provider no longer takes."""
    if order.status != "pending":
        return False
    if order.client_params is None:
        return True
    lifetime = CLIENT_PARAMS_SECONDS.get((order.channel, order.scene))
    if lifetime is None:
        return False
    given = datetime.fromisoformat(order.client_params_at) if order.client_params_at else None
    return given is None or now - given >= timedelta(seconds=lifetime)


def create_at_provider(
    provider: Any, order: PaymentOrder, description: str, principal: Principal, now: datetime
) -> PaymentOrder:
    """Open ``order`` (already stored) at the provider, or again for fresh parameters, and keep what the
    front end needs to pay. The request repeats the first one (same number, amount and payer address)."""
    from chalicelib.payments.provider import PaymentRequest, ProviderError

    openid = _payer_openid(principal, order.scene) if order.scene in SCENE_APPS else None
    request = PaymentRequest(
        order.order_id,
        int(order.amount_fen),
        description,
        order.scene,  # type: ignore[arg-type]
        openid,
        datetime.fromisoformat(order.expires_at),
        order.payer_ip or PAYER_IP.get(),
    )
    try:
        intent = provider.create_payment(request)
    except ProviderError as error:
        if error.code in REFUSALS:  # checked before the order was stored; the provider may still say so
            raise _refusal(error.code, order.channel, order.scene) from None
        logger.warning(
            "payment order not opened at the provider", extra={"order_id": order.order_id, "code": error.code}
        )
        raise ApiError(
            502,
            "provider_unavailable",
            "The payment provider did not answer; retry (the same order is used)",
            "支付服务暂不可用，请重试",
            {"order_id": order.order_id},
        ) from None
    try:  # the update leaves ``order`` as stored (DynamoDB's answer carries the whole item)
        order.update(
            actions=[
                PaymentOrder.client_params.set(intent.client_params),
                PaymentOrder.client_params_at.set(iso(now)),
                PaymentOrder.provider_ref.set(intent.provider_ref),
                *([PaymentOrder.payer_ip.set(request.payer_ip)] if request.payer_ip and not order.payer_ip else []),
            ],
            condition=PaymentOrder.status == "pending",
        )
    except UpdateError:  # paid or closed meanwhile: the view shows its state
        return get(order.order_id) or order
    return order


def close_actions(order: PaymentOrder, now: datetime) -> list[Any]:
    """The update that closes a pending order (conditional on ``status == pending`` by the caller).

    The order stays in the queue for one last query ``LATE_CHECK`` after its payment window:
    Alipay and UnionPay cannot take back an order the payer already holds, so a payment may
    still land after our close, and its notifications may all be lost.
    """
    last = max(datetime.fromisoformat(order.expires_at), now) + LATE_CHECK
    return [
        PaymentOrder.status.set("closed"),
        PaymentOrder.closed_at.set(iso(now)),
        PaymentOrder.updated_at.set(iso(now)),
        PaymentOrder.due_at.set(iso(last)),
    ]


def close(order: PaymentOrder, now: datetime) -> str:
    """Close our order (the provider's side is closed) and what waited on it, in one transaction.

    An invitation order closes the unpaid invitation; a tip or membership order frees its slot.
    """
    batch = Batch()
    batch.update("order", order, actions=close_actions(order, now), condition=PaymentOrder.status == "pending")
    try:
        if order.purpose != "invitation":
            free_slot(batch, order)
            batch.commit(PaymentOrder._get_connection().connection)
            return "applied"
        invitation = engine.load(order.reference)
        if invitation.status == AWAITING_PAYMENT:
            engine.move(
                invitation,
                "lapse_unpaid",
                actor=SYSTEM,
                actor_id=None,
                now=now,
                batch=batch,
                actions=[Invitation.ended_at.set(iso(now))],
            )
        else:
            batch.commit(PaymentOrder._get_connection().connection)
    except (ApiError, TransactionCancelledError):
        return "duplicate"
    return "applied"


def free_slot(batch: Batch, order: PaymentOrder) -> None:
    """Delete the slot of a tip or membership order that becomes final (if it still names this order)."""
    if order.slot_key:
        batch.delete(
            "slot",
            PaymentSlot(order.slot_key, "SLOT"),
            condition=PaymentSlot.pk.does_not_exist() | (PaymentSlot.order_id == order.order_id),
        )


def follow_up(order: PaymentOrder, now: datetime) -> str:
    """One step of the follow-up job for a pending order (query; apply; close when its window ended),
    or the last check of a closed one."""
    from chalicelib.payments import settlement
    from chalicelib.payments.provider import ProviderError
    from chalicelib.payments.registry import get_provider

    if order.status == "closed":
        return _last_check(order, now)
    provider = get_provider(order.channel)
    expired = now >= datetime.fromisoformat(order.expires_at)
    try:
        status = provider.query_payment(order.order_id)
    except ProviderError as error:
        if error.retryable or not expired:
            return _reschedule(order, now)
        status = None  # the provider never opened it: nothing to close there
    if status is not None and status.state == "succeeded":
        return settlement.apply_payment(
            settlement.Outcome(order.order_id, "succeeded", status.transaction_id, status.amount_fen, status.currency),
            now,
        )
    if status is not None and status.state == "closed":
        return close(order, now)
    if not expired:
        return _reschedule(order, now)
    if status is not None:
        try:
            provider.close_payment(order.order_id)
        except ProviderError as error:
            if error.code == "order_paid":  # paid at the last moment: the query tells how much
                return follow_up_paid(order, now)
            if error.retryable:
                return _reschedule(order, now)
    return close(order, now)


def _last_check(order: PaymentOrder, now: datetime) -> str:
    """A closed order's last query: a payment that landed anyway is applied (an invitation's is refunded,
    a tip or membership honoured, by ``settlement``); otherwise the order leaves the queue. While the
    provider cannot tell (an error, a payment in progress) it asks again, up to ``LATE_CHECKS`` times."""
    from chalicelib.payments import settlement
    from chalicelib.payments.provider import PaymentStatus, ProviderError
    from chalicelib.payments.registry import get_provider

    try:
        status = get_provider(order.channel).query_payment(order.order_id)
    except ProviderError as error:  # never seen by the provider: nothing can land; else: cannot tell yet
        status = PaymentStatus(order.order_id, "pending") if error.retryable else None
    if status is not None and status.state == "succeeded":
        logger.warning("payment landed after the order closed", extra={"order_id": order.order_id})
        return settlement.apply_payment(
            settlement.Outcome(order.order_id, "succeeded", status.transaction_id, status.amount_fen, status.currency),
            now,
        )
    unsure = status is not None and status.state == "pending"
    again = unsure and now < datetime.fromisoformat(order.expires_at) + LATE_CHECK * LATE_CHECKS
    if unsure and not again:
        logger.error("closed order still unsettled at the provider", extra={"order_id": order.order_id})
    actions = (
        [PaymentOrder.due_at.set(iso(now + LATE_CHECK))]
        if again
        else [PaymentOrder.work_queue.remove(), PaymentOrder.due_at.remove()]
    )
    try:
        unchanged = (PaymentOrder.status == "closed") & (PaymentOrder.due_at == order.due_at)
        order.update(actions=actions, condition=unchanged)
    except UpdateError:  # paid or checked by another run meanwhile
        return "duplicate"
    return "waiting" if again else "done"


def follow_up_paid(order: PaymentOrder, now: datetime) -> str:
    from chalicelib.payments import settlement
    from chalicelib.payments.registry import get_provider

    status = get_provider(order.channel).query_payment(order.order_id)
    return settlement.apply_payment(
        settlement.Outcome(order.order_id, status.state, status.transaction_id, status.amount_fen, status.currency), now
    )


def _reschedule(order: PaymentOrder, now: datetime) -> str:
    checks = int(order.checks) + 1
    next_at = min(
        now + timedelta(seconds=POLL_SECONDS[min(checks, len(POLL_SECONDS) - 1)]),
        datetime.fromisoformat(order.expires_at),
    )
    try:
        order.update(
            actions=[PaymentOrder.checks.set(checks), PaymentOrder.due_at.set(iso(max(next_at, now)))],
            condition=(PaymentOrder.status == "pending") & (PaymentOrder.checks == order.checks),
        )
    except UpdateError:
        return "duplicate"
    return "waiting"


def due(now: datetime, limit: int) -> list[PaymentOrder]:
    """Pending orders whose next check is due (a Query on the sparse ``work_due`` index)."""
    return list(PaymentOrder.by_work_due.query(QUEUE, PaymentOrder.due_at <= iso(now), limit=limit))
