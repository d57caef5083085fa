"""Money out (C10): a doctor's payout accounts and withdrawals.

Views import their domain modules when first called (see ``handlers.accounts``). The
settlement that pays withdrawals out is the scheduled job ``settle_payouts``.
"""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib.accounts.roles import DOCTOR
from chalicelib.clock import utc_now
from chalicelib.handlers.access import current_principal, route
from chalicelib.handlers.replay import once
from chalicelib.validation import PageQuery, parse, parse_query

bp = Blueprint(__name__)


@route(bp, "/v1/me/payout-accounts", methods=["GET"], roles=[DOCTOR])
def list_payout_accounts() -> dict[str, Any]:
    """The caller's payout accounts (masked)."""
    from chalicelib.payouts import accounts

    return accounts.list_own(current_principal())


@route(bp, "/v1/me/payout-accounts", methods=["POST"], roles=[DOCTOR])
def add_payout_account() -> Response:
    """Add a WeChat, Alipay or bank-card payout account (201), or get the same one again (200)."""
    from chalicelib.payouts import accounts

    body = parse(bp.current_request.json_body, accounts.PayoutAccountRequest)  # type: ignore[arg-type]
    status, view = accounts.register(current_principal(), body, utc_now())
    return Response(body=view, status_code=status)


@route(bp, "/v1/withdrawals", methods=["GET"], roles=[DOCTOR])
def list_withdrawals() -> dict[str, Any]:
    """The caller's withdrawals, newest first, with their payout state."""
    from chalicelib.payouts import withdrawals

    query = parse_query(bp.current_request.query_params, PageQuery)
    return withdrawals.list_own(current_principal(), query.limit, query.cursor)


@route(bp, "/v1/withdrawals", methods=["POST"], roles=[DOCTOR])
def request_withdrawal() -> Response:
    """Move available money to a payout to one of the caller's accounts; paid by the settlement job."""
    from chalicelib.payouts import withdrawals

    body = parse(bp.current_request.json_body, withdrawals.WithdrawalRequest)
    return once(bp, "POST /v1/withdrawals", lambda: withdrawals.request(current_principal(), body, utc_now()))
