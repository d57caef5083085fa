"""The cold-start floor: the least any app on this stack imports (``make bench`` compares).

It imports only chalice and ``pynamodb.models`` and creates a Powertools Logger and
Metrics, like every function of the real app must.
"""

from __future__ import annotations

import chalice
import pynamodb.models  # noqa: F401
from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics()
app = chalice.Chalice(app_name="floor")
