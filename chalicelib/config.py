"""Every setting the application reads, read from the environment in one place.

Per-stage values live in ``.chalice/config.json`` (``environment_variables``); Chalice
loads them into the environment before ``app.py`` is imported, so reading them here
at import time is safe. Nothing else in the code base reads ``os.environ``.

Example
-------
>>> settings = load_settings({"STAGE": "local", "TABLE_PREFIX": "anes-local",
...     "POWERTOOLS_SERVICE_NAME": "anes", "POWERTOOLS_METRICS_NAMESPACE": "Anes",
...     "FRONTEND_URL": "http://127.0.0.1:5173", "SECRETS_NAME": "anes/local/keys"})
>>> settings.users_table
'anes-local-users'
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

STAGES = ("local", "dev", "prod")
WECHAT_MODES = ("sandbox", "live")
WECHAT_APPS = ("oa", "mp")
INLINE_KEY_VARIABLES = ("JWT_SIGNING_KEY", "PII_ENCRYPTION_KEY", "LOOKUP_HASH_KEY")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class MembershipPlan:
    """A VIP membership a hospital can buy: its price in fen and how many days it adds."""

    plan_id: str
    price_fen: int
    days: int


DEFAULT_PLANS = {"year": MembershipPlan("year", 1_980_000, 365)}
"""One year for 19,800 yuan unless ``MEMBERSHIP_PLANS`` says otherwise."""
PLAN_ID = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class StarRules:
    """The published star-level formula's parameters (see ``reputation.formula``).

    ``tiers`` are ``(completed invitations, highest level)`` pairs, ascending: below the
    first tier a doctor has no level yet (0 stars).
    """

    prior_mean: float = 4.0
    prior_weight: int = 10
    tiers: tuple[tuple[int, float], ...] = ((1, 3.0), (10, 4.0), (30, 4.5), (100, 5.0))
    penalty_stars: float = 1.0
    penalty_days: int = 90


CHANNEL_VARIABLES: dict[str, dict[str, tuple[str, str | None]]] = {
    # channel → setting → (environment variable, default; None: required once the channel is on)
    "wechat": {
        "mchid": ("WECHATPAY_MCHID", None),
        "merchant_serial": ("WECHATPAY_MERCHANT_SERIAL", None),
        "public_key_id": ("WECHATPAY_PUBLIC_KEY_ID", None),
        "app_appid": ("WECHATPAY_APP_APPID", ""),
        "transfer_scene_id": ("WECHATPAY_TRANSFER_SCENE_ID", "1005"),
        "api_base": ("WECHATPAY_API_BASE", "https://api.mch.weixin.qq.com"),
    },
    "alipay": {
        "app_id": ("ALIPAY_APP_ID", None),
        "seller_id": ("ALIPAY_SELLER_ID", None),
        "gateway": ("ALIPAY_GATEWAY", "https://openapi.alipay.com/gateway.do"),
        "bank_card_product_code": ("ALIPAY_BANKCARD_PRODUCT_CODE", "TRANS_BANKCARD_NO_PWD"),
    },
    "unionpay": {
        "merchant_id": ("UNIONPAY_MERCHANT_ID", None),
        "gateway": ("UNIONPAY_GATEWAY", "https://gateway.95516.com"),
    },
}
"""A live channel is on when its first variable is set; its keys come from its secret (``payments.channels``)."""
CHANNEL_URLS = {"wechat": "api_base", "alipay": "gateway", "unionpay": "gateway"}
PAYEE_KINDS = ("wechat", "alipay", "bank_card")


@dataclass(frozen=True)
class Settings:
    """Typed settings of one stage."""

    stage: str
    table_prefix: str
    invitations_stream_arn: str
    service_name: str
    metrics_namespace: str
    schedule_speedup: float
    frontend_url: str = "http://127.0.0.1:5173"
    wechat_mode: str = "sandbox"
    wechat_app_ids: dict[str, str] = field(default_factory=lambda: {"oa": "wx-sandbox-oa", "mp": "wx-sandbox-mp"})
    secrets_name: str = ""
    inline_keys: dict[str, str] = field(default_factory=dict, repr=False)
    access_token_seconds: int = 15 * 60
    refresh_token_seconds: int = 30 * 24 * 3600
    login_max_failures: int = 5
    login_window_seconds: int = 15 * 60
    fee_bounds_fen: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"invitation": (10_000, 2_000_000), "consultation": (1_000, 200_000)}
    )
    platform_fee_bps: int = 1000
    payment_window_minutes: int = 30
    response_hours: int = 24
    response_margin_hours: int = 12
    confirm_hold_hours: int = 72
    chat_days_after_end: int = 7
    late_cancel_hours: int = 24
    late_cancel_refund_bps: int = 5000
    ledger_shards: int = 8
    sandbox_payments: bool = True
    sandbox_callback_url: str = "http://127.0.0.1:8000/v1/payments/callbacks/sandbox"
    payment_channels: dict[str, dict[str, str]] = field(default_factory=dict)
    """Live channels configured on this stage (``CHANNEL_VARIABLES``), by channel."""
    public_api_url: str = "http://127.0.0.1:8000"
    """Where providers reach our callbacks: ``{public_api_url}/v1/payments/callbacks/{channel}``."""
    payment_secrets_prefix: str = ""
    """Deployed stages: the Secrets Manager name of a channel's keys is this prefix plus the channel."""
    payment_keys_dir: str = ""
    """Local stage only: a directory of ``<channel>.json`` files holding each channel's keys."""
    payout_channels: dict[str, str] = field(default_factory=dict)
    """Which live channel pays each payee kind (bank cards: ``PAYOUT_BANK_CARD_CHANNEL``, Alipay by default)."""
    notifier: str = "log"
    wechat_notice_template_id: str = ""
    tip_bounds_fen: tuple[int, int] = (100, 50_000)
    tip_fee_bps: int = 0
    membership_plans: dict[str, MembershipPlan] = field(default_factory=lambda: dict(DEFAULT_PLANS))
    withdrawal_min_fen: int = 1_000
    withdrawal_daily_limit_fen: int = 2_000_000
    review_window_days: int = 30
    complaint_window_days: int = 30
    star_rules: StarRules = field(default_factory=StarRules)

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


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"environment variable {name} must be a positive whole number, got {raw!r}")
    return int(raw)


def _non_negative_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"environment variable {name} must be a whole number, got {raw!r}")
    return int(raw)


def _bps(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """Basis points (1/100 of a percent) within ``low``..``high``."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"environment variable {name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def _sandbox(environ: Mapping[str, str], stage: str) -> bool:
    """The sandbox payment provider: on by default locally, never on prod."""
    raw = environ.get("SANDBOX_PAYMENTS", "").strip().lower()
    if raw not in ("", "on", "off"):
        raise ConfigError(f"environment variable SANDBOX_PAYMENTS must be on or off, got {raw!r}")
    enabled = raw == "on" or (raw == "" and stage == "local")
    if enabled and stage == "prod":
        raise ConfigError("environment variable SANDBOX_PAYMENTS=on is refused on the prod stage")
    return enabled


def _notifier(environ: Mapping[str, str], stage: str) -> tuple[str, str]:
    """How users hear of events: ``log`` (local) or ``wechat`` template messages (needs a template id)."""
    notifier = environ.get("NOTIFIER", "").strip() or ("log" if stage == "local" else "wechat")
    if notifier not in ("log", "wechat"):
        raise ConfigError(f"environment variable NOTIFIER must be log or wechat, got {notifier!r}")
    template = environ.get("WECHAT_NOTICE_TEMPLATE_ID", "").strip()
    if notifier == "wechat" and not template:
        raise ConfigError("environment variable WECHAT_NOTICE_TEMPLATE_ID is required when NOTIFIER=wechat")
    return notifier, template


def _membership_plans(environ: Mapping[str, str]) -> dict[str, MembershipPlan]:
    """``MEMBERSHIP_PLANS``: ``id:price_fen:days`` entries separated by commas, e.g. ``year:1980000:365``."""
    raw = environ.get("MEMBERSHIP_PLANS", "").strip()
    if not raw:
        return dict(DEFAULT_PLANS)
    plans: dict[str, MembershipPlan] = {}
    for entry in raw.split(","):
        parts = entry.strip().split(":")
        if (
            len(parts) != 3
            or not PLAN_ID.fullmatch(parts[0])
            or not all(part.isdigit() and int(part) > 0 for part in parts[1:])
            or int(parts[2]) > 3653
            or parts[0] in plans
        ):
            raise ConfigError(
                "environment variable MEMBERSHIP_PLANS must be id:price_fen:days entries separated by commas "
                f"(distinct ids, 1 to 3653 days), got {entry.strip()!r}"
            )
        plans[parts[0]] = MembershipPlan(parts[0], int(parts[1]), int(parts[2]))
    return plans


def _bounds(environ: Mapping[str, str], prefix: str, default: tuple[int, int]) -> tuple[int, int]:
    low = _positive_int(environ, f"{prefix}_MIN_FEN", default[0])
    high = _positive_int(environ, f"{prefix}_MAX_FEN", default[1])
    if low > high:
        raise ConfigError(f"environment variable {prefix}_MIN_FEN must not exceed {prefix}_MAX_FEN")
    return low, high


def _half_stars(raw: str) -> float | None:
    """A number of stars from 0.5 to 5 in half steps, or None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0.5 <= value <= 5 and (value * 2).is_integer() else None


def _star_tiers(environ: Mapping[str, str]) -> tuple[tuple[int, float], ...]:
    """``STAR_TIERS``: ``completed:stars`` entries, both ascending, e.g. ``1:3,10:4,30:4.5,100:5``."""
    raw = environ.get("STAR_TIERS", "").strip()
    if not raw:
        return StarRules().tiers
    tiers: list[tuple[int, float]] = []
    for entry in raw.split(","):
        count, _, stars = entry.strip().partition(":")
        level = _half_stars(stars)
        if (
            not count.isdigit()
            or int(count) == 0
            or level is None
            or (tiers and (int(count) <= tiers[-1][0] or level <= tiers[-1][1]))
        ):
            raise ConfigError(
                "environment variable STAR_TIERS must be completed:stars entries separated by commas, both "
                f"ascending, stars from 0.5 to 5 in half steps, got {entry.strip()!r}"
            )
        tiers.append((int(count), level))
    return tuple(tiers)


def _star_rules(environ: Mapping[str, str]) -> StarRules:
    defaults = StarRules()
    mean = _positive_float(environ, "STAR_PRIOR_MEAN", defaults.prior_mean)
    if not 1 <= mean <= 5:
        raise ConfigError(f"environment variable STAR_PRIOR_MEAN must be from 1 to 5, got {mean!r}")
    raw_step = environ.get("COMPLAINT_PENALTY_STARS", "").strip()
    step = _half_stars(raw_step) if raw_step else defaults.penalty_stars
    if step is None:
        raise ConfigError(
            f"environment variable COMPLAINT_PENALTY_STARS must be from 0.5 to 5 in half steps, got {raw_step!r}"
        )
    return StarRules(
        prior_mean=mean,
        prior_weight=_positive_int(environ, "STAR_PRIOR_WEIGHT", defaults.prior_weight),
        tiers=_star_tiers(environ),
        penalty_stars=step,
        penalty_days=_positive_int(environ, "COMPLAINT_PENALTY_DAYS", defaults.penalty_days),
    )


def _wechat(environ: Mapping[str, str], stage: str) -> tuple[str, dict[str, str]]:
    mode = environ.get("WECHAT_MODE", "").strip() or ("sandbox" if stage == "local" else "live")
    if mode not in WECHAT_MODES:
        raise ConfigError(f"environment variable WECHAT_MODE must be sandbox or live, got {mode!r}")
    if mode == "sandbox":
        if stage == "prod":
            raise ConfigError("environment variable WECHAT_MODE=sandbox is refused on the prod stage")
        return mode, {app: f"wx-sandbox-{app}" for app in WECHAT_APPS}
    return mode, {app: _required(environ, f"WECHAT_{app.upper()}_APPID") for app in WECHAT_APPS}


def _keys(environ: Mapping[str, str], stage: str) -> tuple[str, dict[str, str]]:
    """Where the signing, encryption and lookup keys come from.

    Deployed stages name a Secrets Manager secret (KMS-encrypted); only the local stage
    may carry keys in its environment.
    """
    secrets_name = environ.get("SECRETS_NAME", "").strip()
    inline = {name: environ[name].strip() for name in INLINE_KEY_VARIABLES if environ.get(name, "").strip()}
    if stage != "local":
        if inline:
            raise ConfigError(
                f"environment variable {sorted(inline)[0]} is refused on deployed stages; use SECRETS_NAME"
            )
        return _required(environ, "SECRETS_NAME"), {}
    if not secrets_name:
        for name in INLINE_KEY_VARIABLES:
            _required(environ, name)
    return secrets_name, inline


def _payment_channels(environ: Mapping[str, str], stage: str) -> dict[str, dict[str, str]]:
    """The live channels this stage offers: those whose first variable is set, complete and well-formed."""
    channels: dict[str, dict[str, str]] = {}
    for channel, variables in CHANNEL_VARIABLES.items():
        first = next(iter(variables.values()))[0]
        if not environ.get(first, "").strip():
            continue
        values: dict[str, str] = {}
        for setting, (name, default) in variables.items():
            value = environ.get(name, "").strip()
            values[setting] = value if value else (_required(environ, name) if default is None else default)
        url = values[CHANNEL_URLS[channel]]
        if not url.startswith("https://") and not (stage == "local" and url.startswith("http://")):
            raise ConfigError(f"the {channel} provider address must use https://, got {url!r}")
        channels[channel] = values
    return channels


def _payout_channels(environ: Mapping[str, str], live: Mapping[str, object]) -> dict[str, str]:
    """Which live channel pays WeChat change, Alipay accounts and bank cards (only those configured)."""
    bank_card = environ.get("PAYOUT_BANK_CARD_CHANNEL", "").strip() or "alipay"
    if bank_card != "alipay":
        raise ConfigError(f"environment variable PAYOUT_BANK_CARD_CHANNEL must be alipay, got {bank_card!r}")
    wanted = {"wechat": "wechat", "alipay": "alipay", "bank_card": bank_card}
    return {kind: channel for kind, channel in wanted.items() if channel in live}


def _public_api_url(environ: Mapping[str, str], stage: str, live: Mapping[str, object]) -> str:
    url = environ.get("PUBLIC_API_URL", "").strip().rstrip("/")
    if not url:
        if stage != "local" and live:
            raise ConfigError("environment variable PUBLIC_API_URL is required when a payment channel is configured")
        return "http://127.0.0.1:8000"
    if not url.startswith("https://") and not (stage == "local" and url.startswith("http://")):
        raise ConfigError(f"environment variable PUBLIC_API_URL must use https://, got {url!r}")
    return url


def _payment_keys(environ: Mapping[str, str], stage: str) -> tuple[str, str]:
    """Where each live channel's keys live: Secrets Manager (prefix) on deployed stages, files locally."""
    keys_dir = environ.get("PAYMENT_KEYS_DIR", "").strip()
    if keys_dir and stage != "local":
        raise ConfigError("environment variable PAYMENT_KEYS_DIR is refused on deployed stages; use Secrets Manager")
    prefix = environ.get("PAYMENT_SECRETS_PREFIX", "").strip() or f"anes/{stage}/payments/"
    return prefix, keys_dir


def local_stream_arn(table_name: str) -> str:
    """The stand-in stream ARN of a DynamoDB Local table.

    DynamoDB Local gives a table a new stream label whenever it is created, so the
    local stage names the table only; the event pump resolves the table's latest
    stream. Deployed stages get the real ARN from the tables stack.

    >>> local_stream_arn("anes-local-invitations")
    'arn:aws:dynamodb:ddblocal:000000000000:table/anes-local-invitations/stream/latest'
    """
    return f"arn:aws:dynamodb:ddblocal:000000000000:table/{table_name}/stream/latest"


def _frontend_url(environ: Mapping[str, str], stage: str) -> str:
    url = _required(environ, "FRONTEND_URL").rstrip("/")
    allowed = ("https://",) if stage != "local" else ("https://", "http://")
    if not url.startswith(allowed):
        raise ConfigError(f"environment variable FRONTEND_URL must start with {' or '.join(allowed)}, got {url!r}")
    return url


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
    wechat_mode, wechat_app_ids = _wechat(environ, stage)
    secrets_name, inline_keys = _keys(environ, stage)
    notifier, notice_template = _notifier(environ, stage)
    withdrawal_min = _positive_int(environ, "WITHDRAWAL_MIN_FEN", 1_000)
    withdrawal_limit = _positive_int(environ, "WITHDRAWAL_DAILY_LIMIT_FEN", 2_000_000)
    channels = _payment_channels(environ, stage)
    secrets_prefix, keys_dir = _payment_keys(environ, stage)
    if withdrawal_min > withdrawal_limit:
        raise ConfigError("environment variable WITHDRAWAL_MIN_FEN must not exceed WITHDRAWAL_DAILY_LIMIT_FEN")
    return Settings(
        stage=stage,
        table_prefix=table_prefix,
        invitations_stream_arn=stream_arn,
        service_name=_required(environ, "POWERTOOLS_SERVICE_NAME"),
        # Powertools Metrics fails every request *after* its writes without a namespace,
        # so a missing one must stop the function at import instead.
        metrics_namespace=_required(environ, "POWERTOOLS_METRICS_NAMESPACE"),
        schedule_speedup=_positive_float(environ, "SCHEDULE_SPEEDUP", 1.0),
        frontend_url=_frontend_url(environ, stage),
        wechat_mode=wechat_mode,
        wechat_app_ids=wechat_app_ids,
        secrets_name=secrets_name,
        inline_keys=inline_keys,
        access_token_seconds=60 * _positive_int(environ, "ACCESS_TOKEN_MINUTES", 15),
        refresh_token_seconds=24 * 3600 * _positive_int(environ, "REFRESH_TOKEN_DAYS", 30),
        login_max_failures=_positive_int(environ, "LOGIN_MAX_FAILURES", 5),
        login_window_seconds=60 * _positive_int(environ, "LOGIN_WINDOW_MINUTES", 15),
        fee_bounds_fen={
            "invitation": _bounds(environ, "INVITATION_FEE", (10_000, 2_000_000)),
            "consultation": _bounds(environ, "CONSULTATION_FEE", (1_000, 200_000)),
        },
        platform_fee_bps=_bps(environ, "PLATFORM_FEE_BPS", 1000, 0, 5000),
        payment_window_minutes=_positive_int(environ, "PAYMENT_WINDOW_MINUTES", 30),
        response_hours=_positive_int(environ, "RESPONSE_HOURS", 24),
        response_margin_hours=_non_negative_int(environ, "RESPONSE_MARGIN_HOURS", 12),
        confirm_hold_hours=_positive_int(environ, "CONFIRM_HOLD_HOURS", 72),
        chat_days_after_end=_positive_int(environ, "CHAT_DAYS_AFTER_END", 7),
        late_cancel_hours=_positive_int(environ, "LATE_CANCEL_HOURS", 24),
        late_cancel_refund_bps=_bps(environ, "LATE_CANCEL_REFUND_BPS", 5000, 100, 10000),
        ledger_shards=_bps(environ, "LEDGER_SHARDS", 8, 1, 64),
        sandbox_payments=_sandbox(environ, stage),
        sandbox_callback_url=environ.get("SANDBOX_CALLBACK_URL", "").strip()
        or "http://127.0.0.1:8000/v1/payments/callbacks/sandbox",
        payment_channels=channels,
        public_api_url=_public_api_url(environ, stage, channels),
        payment_secrets_prefix=secrets_prefix,
        payment_keys_dir=keys_dir,
        payout_channels=_payout_channels(environ, channels),
        notifier=notifier,
        wechat_notice_template_id=notice_template,
        tip_bounds_fen=_bounds(environ, "TIP", (100, 50_000)),
        tip_fee_bps=_bps(environ, "TIP_FEE_BPS", 0, 0, 5000),
        membership_plans=_membership_plans(environ),
        withdrawal_min_fen=withdrawal_min,
        withdrawal_daily_limit_fen=withdrawal_limit,
        review_window_days=_positive_int(environ, "REVIEW_WINDOW_DAYS", 30),
        complaint_window_days=_positive_int(environ, "COMPLAINT_WINDOW_DAYS", 30),
        star_rules=_star_rules(environ),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
