"""Money: payment orders, provider callbacks, the sandbox provider's pay button, statements, the wallet (M-e, M-g, M-j).

Views import their domain modules when first called (see ``handlers.accounts``).
"""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.accounts.roles import ANON, DOCTOR, HOSPITAL, PATIENT, SIGNED_IN
from chalicelib.clock import utc_now
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.handlers.access import current_principal, route
from chalicelib.handlers.replay import once
from chalicelib.validation import parse, parse_query, path_id

bp = Blueprint(__name__)

ORDER_NOT_FOUND = ApiError(
    404, "payment_order_not_found", "No payment order with this id is yours to see", "找不到该支付订单"
)
CALLBACK_CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain"]


@route(bp, "/v1/payments", methods=["POST"], roles=[PATIENT, HOSPITAL])
def open_payment() -> Response:
    """Open the payment order of an invitation: the amount is the invitation's, the answer what the front end needs."""
    from chalicelib.payments import orders

    request = parse(bp.current_request.json_body, orders.OrderRequest)
    orders.PAYER_IP.set((bp.current_request.context.get("identity") or {}).get("sourceIp"))
    return once(bp, "POST /v1/payments", lambda: orders.open_order(current_principal(), request, utc_now()))


@route(bp, "/v1/payments/{order_id}", methods=["GET"], roles=SIGNED_IN)
def read_payment(order_id: str) -> dict[str, Any]:
    """The order and its status (its payer, or an admin)."""
    from chalicelib.payments import orders

    return orders.read(path_id(order_id, orders.NOT_FOUND), current_principal())


@route(bp, "/v1/payments/callbacks/{provider}", methods=["POST"], roles=[ANON], content_types=CALLBACK_CONTENT_TYPES)
def provider_callback(provider: str) -> Response:
    """A provider's notification, verified on the raw body before anything else; answered as the provider expects."""
    from chalicelib.payments import callbacks

    request = bp.current_request
    reply = callbacks.handle(provider, dict(request.headers or {}), request.raw_body or b"", utc_now())
    return Response(body=reply.body, status_code=reply.status, headers={"Content-Type": reply.content_type})


@route(bp, "/v1/sandbox/orders/{order_id}/pay", methods=["POST"], roles=[ANON])
def sandbox_pay(order_id: str) -> dict[str, Any]:
    """Local stage only: the sandbox provider pays (or closes) an order and sends its signed callback(s)."""
    settings = get_settings()
    if not (settings.is_local and settings.sandbox_payments):
        raise ApiError(404, "route_not_found", "No such route", "请求的路径不存在")
    from chalicelib.payments import orders, sandbox

    request = bp.current_request
    instruction = parse(request.json_body if request.raw_body else {}, sandbox.PayInstruction)
    return sandbox.pay(path_id(order_id, orders.NOT_FOUND), instruction, utc_now())


@route(bp, "/v1/me/transactions", methods=["GET"], roles=SIGNED_IN)
def my_transactions() -> dict[str, Any]:
    """The caller's money movements, newest first: payments, refunds, earnings, tips, memberships, withdrawals."""
    from chalicelib.ledger.records import StatementQuery, statement

    query = parse_query(bp.current_request.query_params, StatementQuery)
    return statement(current_principal().user_id, query)


@route(bp, "/v1/me/wallet", methods=["GET"], roles=[DOCTOR])
def my_wallet() -> dict[str, Any]:
    """The doctor's balances: pending (accepted, not confirmed), available, being paid out."""
    from chalicelib.ledger.wallet import wallet

    return wallet(current_principal().user_id)
