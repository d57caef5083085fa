"""``chalice local`` with API Gateway's own errors in the API's error shape, without Nagle's delay.

API Gateway itself answers an unknown route or a denied authoriser; so does the local
gateway of ``chalice local``. This module gives those answers the one error shape (the
deployed stages' gateway responses must be configured to match), turns off Nagle's
algorithm on its connections (below), then runs the unchanged ``chalice local`` command.

Run: ``python -m devstack.api_server --stage local --port 8000`` (what ``make run`` does).
"""

from __future__ import annotations

import json
import sys
import uuid

from chalice import local
from chalice.cli import cli

from chalicelib.errors import error_body

_NO_ROUTE_MARKERS = (b"Missing Authentication Token", b"Authorization header requires")


def gateway_error(error: local.LocalGatewayException) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a gateway-made error, in the error shape.

    An unknown route is a 404 ``route_not_found`` (API Gateway's "Missing Authentication
    Token" 403 is a famously misleading way to say so).
    """
    headers = dict(error.headers or {})
    headers.pop("x-amzn-ErrorType", None)  # the error shape says it, accurately
    request_id = headers.get("x-amzn-RequestId") or str(uuid.uuid4())
    raw = error.body or b""
    if error.CODE == 403 and any(marker in raw for marker in _NO_ROUTE_MARKERS):
        status, body = 404, error_body("route_not_found", "No such route", "请求的路径不存在", request_id=request_id)
    elif error.CODE == 403:
        status, body = 403, error_body("forbidden", "Access denied", "无权访问", request_id=request_id)
    elif error.CODE == 401:
        status, body = 401, error_body("unauthorized", "Sign in first", "请先登录", request_id=request_id)
    else:
        status, body = (
            error.CODE,
            error_body("gateway_error", "The gateway failed", "网关错误", request_id=request_id),
        )
    headers["X-Request-Id"] = request_id
    headers["Content-Type"] = "application/json"
    return status, headers, json.dumps(body).encode()


def _send_error_response(self: local.ChaliceRequestHandler, error: local.LocalGatewayException) -> None:
    status, headers, body = gateway_error(error)
    self._send_http_response(status, headers, body)


def patch_local_server() -> None:
    """The error shape for the gateway's own errors, and ``TCP_NODELAY`` on every connection.

    ``chalice local`` writes an answer's headers and its body in two sends. With Nagle's
    algorithm on, the body waits for the client to acknowledge the headers, which a client on
    a kept-alive connection delays (about 40 ms on Linux): every request took 40 ms more than
    its work (``GET /health``: 48 ms with Nagle, 3 ms without; ``make bench``).
    """
    local.ChaliceRequestHandler._send_error_response = _send_error_response
    local.ChaliceRequestHandler.disable_nagle_algorithm = True


def main(argv: list[str]) -> int:
    from devstack.faults import install

    install("api")  # only when DDB_FAULTS is set (make soak)
    patch_local_server()
    return cli.main(args=["local", "--no-autoreload", *argv], prog_name="chalice", obj={}, standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
