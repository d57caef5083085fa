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


def _job(name: str, run: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"job": name, "at": now.isoformat(), **run(now)}


@bp.schedule(Rate(2, unit=Rate.MINUTES), name="expire_invitations", description="Expire unanswered invitations")
def expire_invitations(event: CloudWatchEvent) -> dict[str, Any]:
    """Paid invitations past their answer deadline: expired and refunded in full."""
    from chalicelib.invitations import deadlines

    return _job("expire_invitations", deadlines.expire_due)


@bp.schedule(Rate(10, unit=Rate.MINUTES), name="auto_confirm", description="Confirm services after the hold")
def auto_confirm(event: CloudWatchEvent) -> dict[str, Any]:
    """Completed invitations whose confirmation hold ended: confirmed, the doctor's share released."""
    from chalicelib.invitations import deadlines

    return _job("auto_confirm", deadlines.confirm_due)


@bp.schedule(Rate(1, unit=Rate.MINUTES), name="follow_up_payments", description="Query and close open payments")
def follow_up_payments(event: CloudWatchEvent) -> dict[str, Any]:
    """Pending payment orders: query the provider (a callback may be lost); close them when the window ends."""
    from chalicelib.invitations import deadlines

    return _job("follow_up_payments", deadlines.follow_up_payments)


@bp.schedule(Rate(1, unit=Rate.MINUTES), name="follow_up_refunds", description="Send and follow refunds")
def follow_up_refunds(event: CloudWatchEvent) -> dict[str, Any]:
    """Refunds: sent again with the same number after a failure, queried until final."""
    from chalicelib.invitations import deadlines

    return _job("follow_up_refunds", deadlines.follow_up_refunds)


@bp.schedule(Rate(1, unit=Rate.MINUTES), name="settle_payouts", description="Pay out and follow withdrawals")
def settle_payouts(event: CloudWatchEvent) -> dict[str, Any]:
    """Withdrawals: sent to the provider with a stable number, queried until paid out or returned."""
    from chalicelib.invitations import deadlines

    return _job("settle_payouts", deadlines.settle_payouts)


@bp.schedule(Rate(1, unit=Rate.HOURS), name="lift_penalties", description="End complaint penalties that ran out")
def lift_penalties(event: CloudWatchEvent) -> dict[str, Any]:
    """Confirmed complaints whose penalty period passed: lifted, so the stream gives the star level back."""
    from chalicelib.invitations import deadlines

    return _job("lift_penalties", deadlines.lift_penalties)
