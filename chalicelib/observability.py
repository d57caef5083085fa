"""Powertools Logger and Metrics singletons.

Both are cheap to create (no AWS client); the X-Ray Tracer is deliberately absent:
it costs ~40 ms of every cold start and Chalice's ``xray`` setting covers tracing on
deployed stages.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics()
