"""Scheduled functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalice import Blueprint, Rate

from chalicelib import system
from chalicelib.observability import logger

if TYPE_CHECKING:
    from chalice.app import CloudWatchEvent

bp = Blueprint(__name__)


@bp.schedule(Rate(1, unit=Rate.MINUTES), name="heartbeat", description="Proves the scheduler runs")
def heartbeat(event: CloudWatchEvent) -> dict[str, Any]:
    """Record that the scheduler ran; ``GET /health`` shows the time."""
    now = datetime.now(UTC)
    recorded = system.record_heartbeat("heartbeat", now)
    logger.info("heartbeat", extra={"recorded": recorded, "at": now.isoformat()})
    return {"job": "heartbeat", "recorded": recorded, "at": now.isoformat()}
