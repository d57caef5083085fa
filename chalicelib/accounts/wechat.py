"""WeChat sign-in: turn a one-time ``code`` into the user's openid (per app) and unionid.

``oa`` is the official account (web OAuth ``sns/oauth2/access_token``), ``mp`` the mini
program (``sns/jscode2session``). Live calls go through wechatpy's ``WeChatOAuth`` HTTP
layer with an explicit timeout: its ``WeChatClient.code_to_session`` would first fetch
the app's global access token (a rate-limited call this flow does not need), and
``fetch_access_token`` takes no timeout. ``session_key`` is dropped here and never stored.

The sandbox (local stage and dev only; refused in prod by config) turns any test code
into stable fake ids: the same code gives the same unionid in both apps and an openid
per app, as WeChat does for one person. Codes starting with ``invalid`` fail like an
expired code.

Example
-------
>>> exchange_code("mp", "alice")  # doctest: +SKIP
WeChatIdentity(app='mp', app_id='wx-sandbox-mp', openid='o…', unionid='u…')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.security.keys import get_keys

TIMEOUT_SECONDS = 5
SYSTEM_BUSY = -1
SANDBOX_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENDPOINTS = {"oa": ("sns/oauth2/access_token", "code"), "mp": ("sns/jscode2session", "js_code")}


@dataclass(frozen=True)
class WeChatIdentity:
    """Who WeChat says the user is, for one app."""

    app: str
    app_id: str
    openid: str
    unionid: str | None

    def as_claims(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def code_refused(reason: str) -> ApiError:
    return ApiError(
        401,
        "wechat_code_invalid",
        "WeChat refused the code; sign in again",
        "微信登录凭证无效，请重新登录",
        {"reason": reason},
    )


def wechat_unavailable() -> ApiError:
    return ApiError(
        503, "dependency_unavailable", "WeChat does not answer", "微信服务暂不可用", {"dependency": "wechat"}
    )


def _sandbox(app: str, app_id: str, code: str) -> WeChatIdentity:
    if not SANDBOX_CODE.match(code) or code.startswith("invalid"):
        raise code_refused("40029")
    person = hashlib.sha256(f"sandbox-person:{code}".encode()).hexdigest()
    openid = "o" + hashlib.sha256(f"{app_id}:{person}".encode()).hexdigest()[:27]
    return WeChatIdentity(app, app_id, openid, "u" + person[:27])


def _live(app: str, app_id: str, code: str) -> WeChatIdentity:
    import requests
    from wechatpy.exceptions import WeChatOAuthException
    from wechatpy.oauth import WeChatOAuth

    secret = get_keys().wechat_secrets.get(app)
    if not secret:
        raise RuntimeError(f"the keys secret lacks wechat_{app}_secret")
    endpoint, code_parameter = _ENDPOINTS[app]
    params = {"appid": app_id, "secret": secret, code_parameter: code, "grant_type": "authorization_code"}
    try:
        result: dict[str, Any] = WeChatOAuth(app_id, secret, redirect_uri="")._get(
            endpoint, params=params, timeout=TIMEOUT_SECONDS
        )
    except WeChatOAuthException as error:
        if error.errcode is None or error.errcode == SYSTEM_BUSY:  # no answer, or WeChat asks to retry
            raise wechat_unavailable() from None
        raise code_refused(str(error.errcode)) from None
    except (requests.RequestException, ValueError):  # timeout, refused connection, a body that is not JSON
        raise wechat_unavailable() from None
    openid = result.get("openid")
    if not openid:
        raise code_refused("no_openid")
    return WeChatIdentity(app, app_id, str(openid), str(result["unionid"]) if result.get("unionid") else None)


def exchange_code(app: str, code: str) -> WeChatIdentity:
    """The identity behind a WeChat login ``code`` of ``app`` (``oa`` or ``mp``)."""
    settings = get_settings()
    app_id = settings.wechat_app_ids[app]
    if settings.wechat_mode == "sandbox":
        return _sandbox(app, app_id, code)
    return _live(app, app_id, code)
