"""Which payment channels this stage offers, and their ``Provider`` adapters (created on first use).

A live channel (WeChat Pay, Alipay, UnionPay) is offered when its merchant settings are
configured (``payments.channels``); the sandbox where ``SANDBOX_PAYMENTS`` allows it (never on
prod). A channel that is not configured is simply not offered: 422 ``channel_unavailable``.

Example
-------
>>> get_provider("sandbox").channel  # doctest: +SKIP
'sandbox'
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from chalicelib.config import get_settings
from chalicelib.errors import ApiError

if TYPE_CHECKING:
    from chalicelib.payments.provider import Provider

CHANNELS = ("wechat", "alipay", "unionpay", "sandbox")
_providers: dict[str, Provider] = {}
_building = threading.Lock()


class _OneCallAtATime:
    """A live adapter whose calls take turns: the SDKs (and the C libraries under them) are not
    documented as thread-safe. Lambda runs one request per container, so this costs nothing there;
    it matters where one process serves requests on threads (``chalice local``)."""

    def __init__(self, adapter: Provider) -> None:
        self._adapter, self._lock = adapter, threading.RLock()
        self.channel = adapter.channel

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


def available_channels() -> list[str]:
    """The channels a payer may choose on this stage."""
    settings = get_settings()
    live = [channel for channel in CHANNELS if channel in settings.payment_channels]
    return live + (["sandbox"] if settings.sandbox_payments else [])


def get_provider(channel: str) -> Provider:
    """The adapter of ``channel``; 422 ``channel_unavailable`` when this stage does not offer it."""
    if channel not in available_channels():
        raise ApiError(
            422,
            "channel_unavailable",
            f"Payment channel {channel!r} is not available here",
            "该支付方式暂不可用",
            {"channel": channel, "available": available_channels()},
        )
    with _building:  # one adapter per channel and container, even when requests arrive together
        if channel not in _providers:
            if channel == "sandbox":
                from chalicelib.payments.sandbox import SandboxProvider

                _providers[channel] = SandboxProvider()
            else:
                from chalicelib.payments.channels import build

                _providers[channel] = _OneCallAtATime(build(channel))  # type: ignore[assignment]
    return _providers[channel]


def payout_channel(payee_kind: str) -> str:
    """The channel that pays a payee of ``payee_kind``; 422 ``payout_unavailable`` when none here does.

    A live channel pays the kinds it can (WeChat change: WeChat Pay; Alipay accounts and bank
    cards: Alipay); the sandbox plays every kind where it is on and no live channel does.
    """
    settings = get_settings()
    if payee_kind in settings.payout_channels:
        return settings.payout_channels[payee_kind]
    if settings.sandbox_payments:
        return "sandbox"
    raise ApiError(
        422,
        "payout_unavailable",
        f"Payouts to {payee_kind!r} accounts are not available here",
        "暂不支持向该类账户提现",
        {"payee_kind": payee_kind},
    )


def use_provider(channel: str, provider: Provider | None) -> None:
    """Install (or with None, forget) the adapter of ``channel`` — for tests that inject a fake."""
    if provider is None:
        _providers.pop(channel, None)
    else:
        _providers[channel] = provider
