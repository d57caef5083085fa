"""Start the WeChat Pay, Alipay and UnionPay doubles on loopback and say how to point the stack at them.

Each double gets fresh offline keys; our side of them (private keys, certificates, the APIv3
key) is written as ``<channel>.json`` into a keys directory, which the local stage reads through
``PAYMENT_KEYS_DIR`` exactly as a deployed stage reads Secrets Manager. The merchant ids and the
provider addresses become the stage's environment.

Example
-------
>>> doubles = start_doubles(Path("/tmp/keys"))  # doctest: +SKIP
>>> env = doubles.settings("http://127.0.0.1:8000")  # doctest: +SKIP
>>> env["ALIPAY_GATEWAY"]  # doctest: +SKIP
'http://127.0.0.1:40123/gateway.do'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devstack.doubles.server import http_deliver, serve
from devstack.processes import free_port

if TYPE_CHECKING:
    import http.server
    from pathlib import Path

LOCAL_WECHAT_APPS = {"oa": "wx-sandbox-oa", "mp": "wx-sandbox-mp", "app": "wx-sandbox-app"}
"""The local stage's WeChat app ids (sandbox sign-in), so openids from sign-in can pay and be paid."""
CHANNELS = ("wechat", "alipay", "unionpay")


@dataclass
class RunningDouble:
    channel: str
    double: Any
    server: http.server.ThreadingHTTPServer
    url: str
    settings: dict[str, str]


@dataclass
class Doubles:
    keys_dir: Path
    running: dict[str, RunningDouble] = field(default_factory=dict)

    def settings(self, public_api_url: str) -> dict[str, str]:
        """The environment of a local stage that offers every running double's channel."""
        env = {"PAYMENT_KEYS_DIR": str(self.keys_dir), "PUBLIC_API_URL": public_api_url}
        for running in self.running.values():
            env.update(running.settings)
        return env

    def urls(self) -> dict[str, str]:
        return {channel: running.url for channel, running in self.running.items()}

    def stop(self) -> None:
        for running in self.running.values():
            running.server.shutdown()
            running.server.server_close()


def _start(channel: str, port: int) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """The double of ``channel`` for a server on ``port``; our environment and secret for it."""
    base = f"http://127.0.0.1:{port}"
    if channel == "wechat":
        from devstack.doubles import wechatpay

        credentials = wechatpay.make_credentials(api_base=base, app_ids=LOCAL_WECHAT_APPS)
        double = wechatpay.WeChatPayDouble(credentials.double, deliver=http_deliver)
        return double, {**credentials.config_env, "WECHATPAY_API_BASE": base}, credentials.secret
    if channel == "alipay":
        from devstack.doubles import alipay

        credentials = alipay.make_credentials()
        double = alipay.AlipayDouble(credentials.double, deliver=http_deliver)
        return double, {**credentials.config_env, "ALIPAY_GATEWAY": f"{base}/gateway.do"}, credentials.secret
    from devstack.doubles import unionpay

    credentials = unionpay.make_credentials()
    double = unionpay.UnionPayDouble(credentials.double, deliver=http_deliver)
    return double, {**credentials.config_env, "UNIONPAY_GATEWAY": base}, credentials.secret


def start_doubles(keys_dir: Path, channels: tuple[str, ...] = CHANNELS) -> Doubles:
    """Start a double per channel on a free loopback port; write our keys for each into ``keys_dir``."""
    doubles = Doubles(keys_dir)
    for channel in channels:
        port = free_port()
        double, settings, secret = _start(channel, port)
        (keys_dir / f"{channel}.json").write_text(json.dumps(secret), encoding="utf-8")
        server, url = serve(double, port)
        doubles.running[channel] = RunningDouble(channel, double, server, url, settings)
    return doubles
