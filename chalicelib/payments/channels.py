"""The live payment channels: each adapter built from its settings and its keys, on first use.

A channel is offered when its merchant ids are configured (``config.CHANNEL_VARIABLES``);
its private keys, certificates and APIv3 key live in one secret per channel — a Secrets
Manager secret ``{PAYMENT_SECRETS_PREFIX}{channel}`` on deployed stages, a
``{PAYMENT_KEYS_DIR}/{channel}.json`` file locally. The secret is read on the first payment
of the container (never at import: no network at cold start), cached, and never logged;
a missing or incomplete secret is a ``ConfigError`` naming the key, not the value.

Secret formats (JSON objects, PEM strings with their newlines)::

    wechat:   {"merchant_private_key", "apiv3_key", "public_key", "platform_certs": {serial: pem}}
    alipay:   {"app_private_key", "app_cert", "alipay_cert", "alipay_root_cert"}
    unionpay: {"sign_key", "sign_cert", "root_cert", "middle_cert"}

Example
-------
>>> build("wechat").channel  # doctest: +SKIP
'wechat'
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chalicelib.config import ConfigError, get_settings

if TYPE_CHECKING:
    from chalicelib.payments.provider import Provider

SECRET_KEYS = {
    "wechat": ("merchant_private_key", "apiv3_key", "public_key"),
    "alipay": ("app_private_key", "app_cert", "alipay_cert", "alipay_root_cert"),
    "unionpay": ("sign_key", "sign_cert", "root_cert", "middle_cert"),
}


def notify_url(channel: str) -> str:
    """Where ``channel`` sends its notifications: our callback route, on the public address."""
    return f"{get_settings().public_api_url}/v1/payments/callbacks/{channel}"


@lru_cache(maxsize=8)
def channel_secret(channel: str) -> dict[str, Any]:
    """The keys of ``channel``, read once per container (a rotated key reaches new containers: redeploy
    or wait for the old ones to retire); a ``ConfigError`` names what is missing."""
    settings = get_settings()
    if settings.payment_keys_dir:
        path = Path(settings.payment_keys_dir) / f"{channel}.json"
        try:
            secret = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"the {channel} keys file {path} cannot be read: {type(error).__name__}") from None
    else:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from botocore.config import Config

        # Short timeouts: a cold container may fetch this while a provider waits for our answer (5 s).
        fetch = Config(connect_timeout=2, read_timeout=3, retries={"max_attempts": 2, "mode": "standard"})
        name = f"{settings.payment_secrets_prefix}{channel}"
        secret = SecretsProvider(boto_config=fetch).get(name, transform="json")
    if not isinstance(secret, dict):
        raise ConfigError(f"the {channel} payment secret must hold a JSON object")
    missing = [key for key in SECRET_KEYS[channel] if not secret.get(key)]
    if missing:
        raise ConfigError(f"the {channel} payment secret lacks {', '.join(missing)}")
    return secret


def build(channel: str) -> Provider:
    """The adapter of a configured live ``channel``; a key or id it cannot use is a ``ConfigError``."""
    try:
        return _build(channel)
    except ValueError as error:  # the adapter's own checks of its configuration (never a secret's value)
        raise ConfigError(f"the {channel} channel is misconfigured: {error}") from None


def _build(channel: str) -> Provider:
    settings = get_settings()
    values, secret = settings.payment_channels[channel], channel_secret(channel)
    if channel == "wechat":
        from chalicelib.payments.wechatpay import WeChatPayConfig, WeChatPayProvider

        app_ids = dict(settings.wechat_app_ids)
        if values["app_appid"]:
            app_ids["app"] = values["app_appid"]
        return WeChatPayProvider(
            WeChatPayConfig(
                mchid=values["mchid"],
                merchant_serial=values["merchant_serial"],
                merchant_private_key=secret["merchant_private_key"],
                apiv3_key=secret["apiv3_key"],
                public_key_id=values["public_key_id"],
                public_key=secret["public_key"],
                platform_certs=dict(secret.get("platform_certs") or {}),
                app_ids=app_ids,
                notify_url=notify_url(channel),
                transfer_scene_id=values["transfer_scene_id"],
                api_base=values["api_base"],
            )
        )
    if channel == "alipay":
        from chalicelib.payments.alipay import AlipayConfig, AlipayProvider

        return AlipayProvider(
            AlipayConfig(
                app_id=values["app_id"],
                seller_id=values["seller_id"],
                app_private_key=secret["app_private_key"],
                app_cert=secret["app_cert"],
                alipay_cert=secret["alipay_cert"],
                alipay_root_cert=secret["alipay_root_cert"],
                notify_url=notify_url(channel),
                return_url=settings.frontend_url,
                gateway=values["gateway"],
                bank_card_product_code=values["bank_card_product_code"],
            )
        )
    from chalicelib.payments.unionpay import UnionPayConfig, UnionPayProvider

    return UnionPayProvider(
        UnionPayConfig(
            merchant_id=values["merchant_id"],
            sign_key=secret["sign_key"],
            sign_cert=secret["sign_cert"],
            root_cert=secret["root_cert"],
            middle_cert=secret["middle_cert"],
            back_url=notify_url(channel),
            front_url=settings.frontend_url,
            gateway=values["gateway"],
            txn_time_of=created_at_of,
        )
    )


def created_at_of(number: str) -> datetime:
    """When our payment order or refund ``number`` was stored: UnionPay names a transaction by
    order number *and* time, so every retry and query repeats this instant."""
    from chalicelib.payments import orders, refunds
    from chalicelib.payments.provider import ProviderError

    record = orders.get(number) or refunds.get(number)
    if record is None:
        raise ProviderError("unknown_number", f"no payment order or refund {number} of ours", retryable=False)
    return datetime.fromisoformat(record.created_at)
