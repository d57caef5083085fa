"""Service routes: ``GET /health`` and ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from chalice import Blueprint, Response

from chalicelib import openapi, system
from chalicelib.accounts.roles import ANON
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.handlers.access import route

bp = Blueprint(__name__)


@route(bp, "/health", methods=["GET"], roles=[ANON])
def health() -> dict[str, Any]:
    """200 when DynamoDB answers (with the heartbeat job's last run), 503 otherwise."""
    probe = system.probe_database()
    if not probe.ok:
        raise ApiError(
            503,
            "dependency_unavailable",
            "DynamoDB does not answer",
            "数据库暂不可用",
            details={"dependency": "dynamodb", "reason": probe.reason},
        )
    last_run = probe.heartbeat_at.isoformat() if probe.heartbeat_at else None
    return {"status": "ok", "stage": get_settings().stage, "dynamodb": "ok", "heartbeat_at": last_run}


@route(bp, "/openapi.json", methods=["GET"], roles=[ANON])
def openapi_json() -> Response:
    """The OpenAPI document of every route."""
    return Response(openapi.document(), headers={"Cache-Control": "max-age=300"})
