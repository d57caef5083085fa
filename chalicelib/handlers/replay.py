"""Money-moving POSTs answer a retried request (same ``Idempotency-Key``) with the first answer.

Example
-------
>>> @route(bp, "/v1/payments", methods=["POST"], roles=[PATIENT])  # doctest: +SKIP
... def open_payment() -> Response:
...     return once(bp, "POST /v1/payments", lambda: orders.open_order(...))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice import Response

from chalicelib.handlers.access import current_principal

if TYPE_CHECKING:
    from collections.abc import Callable

    from chalice import Blueprint


def once(bp: Blueprint, scope: str, run: Callable[[], tuple[int, dict[str, Any]]]) -> Response:
    """Run ``run`` once per caller, ``scope`` and ``Idempotency-Key``; replay its answer to retries."""
    from chalicelib.idempotency import replay_or_run

    request = bp.current_request
    status, body = replay_or_run(
        (request.headers or {}).get("idempotency-key"),
        scope=scope,
        caller=current_principal().user_id,
        body=request.json_body if request.raw_body else None,
        run=run,
        lambda_context=bp.lambda_context,
    )
    return Response(body=body, status_code=status)
