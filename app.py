"""Wiring only: the Chalice app, its middleware and its blueprints.

Every Lambda function (API, jobs, stream consumers) imports this module, so nothing
here creates a client or does I/O: cold start is a tracked figure (``make bench``).
"""

from __future__ import annotations

from chalice import Chalice, ConvertToMiddleware, CORSConfig

from chalicelib.config import get_settings
from chalicelib.handlers import (
    accounts,
    admin,
    directory,
    discovery,
    invitations,
    jobs,
    payments,
    payouts,
    qrcodes,
    service,
    streams,
)
from chalicelib.handlers.middleware import request_envelope
from chalicelib.observability import logger, metrics

app = Chalice(app_name="anes")
# The front end's origin (FRONTEND_URL) may call the API from a browser; API Gateway answers the preflight.
app.api.cors = CORSConfig(
    allow_origin=get_settings().frontend_url,
    allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
    expose_headers=["X-Request-Id"],
    max_age=600,
)

app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context(clear_state=True)))
app.register_middleware(ConvertToMiddleware(metrics.log_metrics(capture_cold_start_metric=True)))
app.register_middleware(request_envelope, "http")

app.register_blueprint(service.bp)
app.register_blueprint(accounts.bp)
app.register_blueprint(directory.bp)
app.register_blueprint(discovery.bp)
app.register_blueprint(qrcodes.bp)
app.register_blueprint(invitations.bp)
app.register_blueprint(payments.bp)
app.register_blueprint(payouts.bp)
app.register_blueprint(admin.bp)
app.register_blueprint(jobs.bp)
app.register_blueprint(streams.bp)
