"""HTTP middleware: a request id on every response and log line, and one error shape for every error.

Chalice answers some errors itself (bad JSON, wrong method, unsupported media type, an
unexpected exception) with a ``{"Code", "Message"}`` body; this middleware rewrites
those, and turns ``ApiError`` (escalated by the route wrapper) into the same shape, so a client only ever parses one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalice.app import Request, Response

from chalicelib.errors import INTERNAL_ERROR, error_body, from_chalice_body
from chalicelib.handlers.access import EscalatedApiError
from chalicelib.observability import logger

if TYPE_CHECKING:
    from collections.abc import Callable

REQUEST_ID_HEADER = "X-Request-Id"


def request_id_of(request: Request) -> str:
    """API Gateway's request id; under ``chalice local``, the invocation's id."""
    request_id = (request.context or {}).get("requestId")
    if not request_id and request.lambda_context is not None:
        request_id = request.lambda_context.aws_request_id
    return request_id or "unknown"


def _is_chalice_error(response: Response) -> bool:
    body = response.body
    return response.status_code >= 400 and isinstance(body, dict) and set(body) == {"Code", "Message"}


def request_envelope(request: Request, get_response: Callable[[Request], Response]) -> Response:
    """Tag the request with its id; shape every error response."""
    request_id = request_id_of(request)
    logger.set_correlation_id(request_id)
    try:
        response = get_response(request)
    except EscalatedApiError as escalated:
        error = escalated.error
        response = Response(
            error_body(error.code, error.message, error.message_zh, details=error.details, request_id=request_id),
            status_code=error.status,
        )
    except Exception:
        logger.exception("unhandled error", extra={"path": request.path})
        response = Response(error_body(*INTERNAL_ERROR, request_id=request_id), status_code=500)
    if _is_chalice_error(response):
        code, message, message_zh = from_chalice_body(response.body, response.status_code)
        if response.status_code >= 500:
            logger.error("unhandled error", extra={"path": request.path})
        response.body = error_body(code, message, message_zh, request_id=request_id)
        response.headers.pop("Content-Type", None)
    response.headers[REQUEST_ID_HEADER] = request_id
    logger.info(
        "request",
        extra={"method": request.method, "path": request.path, "status": response.status_code},
    )
    return response
