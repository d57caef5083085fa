"""Every setting the application reads, read from the environment in one place.

Per-stage values live in ``.chalice/config.json`` (``environment_variables``); Chalice
loads them into the environment before ``app.py`` is imported, so reading them here
at import time is safe. Nothing else in the code base reads ``os.environ``.

Example
-------
>>> settings = load_settings({"STAGE": "local", "TABLE_PREFIX": "anes-local",
...     "POWERTOOLS_SERVICE_NAME": "anes", "POWERTOOLS_METRICS_NAMESPACE": "Anes"})
>>> settings.users_table
'anes-local-users'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

STAGES = ("local", "dev", "prod")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Typed settings of one stage."""

    stage: str
    table_prefix: str
    invitations_stream_arn: str
    service_name: str
    metrics_namespace: str
    schedule_speedup: float

    @property
    def users_table(self) -> str:
        return f"{self.table_prefix}-users"

    @property
    def invitations_table(self) -> str:
        return f"{self.table_prefix}-invitations"

    @property
    def ledger_table(self) -> str:
        return f"{self.table_prefix}-ledger"

    @property
    def idempotency_table(self) -> str:
        return f"{self.table_prefix}-idempotency"

    @property
    def is_local(self) -> bool:
        return self.stage == "local"


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required (set it in .chalice/config.json)")
    return value


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"environment variable {name} must be a positive finite number, got {raw!r}")
    return value


def local_stream_arn(table_name: str) -> str:
    """The stand-in stream ARN of a DynamoDB Local table.

    DynamoDB Local gives a table a new stream label whenever it is created, so the
    local stage names the table only; the event pump resolves the table's latest
    stream. Deployed stages get the real ARN from the tables stack.

    >>> local_stream_arn("anes-local-invitations")
    'arn:aws:dynamodb:ddblocal:000000000000:table/anes-local-invitations/stream/latest'
    """
    return f"arn:aws:dynamodb:ddblocal:000000000000:table/{table_name}/stream/latest"


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate the settings; raise ``ConfigError`` naming the first bad one."""
    stage = _required(environ, "STAGE")
    if stage not in STAGES:
        raise ConfigError(f"environment variable STAGE must be one of {', '.join(STAGES)}, got {stage!r}")
    table_prefix = _required(environ, "TABLE_PREFIX")
    stream_arn = environ.get("INVITATIONS_STREAM_ARN", "").strip()
    if not stream_arn:
        if stage != "local":
            raise ConfigError("environment variable INVITATIONS_STREAM_ARN is required on deployed stages")
        stream_arn = local_stream_arn(f"{table_prefix}-invitations")
    return Settings(
        stage=stage,
        table_prefix=table_prefix,
        invitations_stream_arn=stream_arn,
        service_name=_required(environ, "POWERTOOLS_SERVICE_NAME"),
        # Powertools Metrics fails every request *after* its writes without a namespace,
        # so a missing one must stop the function at import instead.
        metrics_namespace=_required(environ, "POWERTOOLS_METRICS_NAMESPACE"),
        schedule_speedup=_positive_float(environ, "SCHEDULE_SPEEDUP", 1.0),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
