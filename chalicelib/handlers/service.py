"""Service routes: ``GET /health`` and ``GET /openapi.json``."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from chalice import Blueprint, Response

from chalicelib import system
from chalicelib.config import get_settings
from chalicelib.errors import ApiError

bp = Blueprint(__name__)

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, read once per container."""
    return json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


@bp.route("/health", methods=["GET"])
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


@bp.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    """The OpenAPI document of every route."""
    return Response(openapi_document(), headers={"Cache-Control": "max-age=300"})
