"""WeChat Pay API v3 (direct merchant, WeChat Pay public-key mode): the live ``wechat`` channel.

Why it looks like this (reference/payments.md §1, §4.1):

* **Outgoing calls go through ``wechatpayv3``** (``WeChatPay``): it signs each request
  (``Authorization: WECHATPAY2-SHA256-RSA2048 …`` with our merchant key), sends
  ``Wechatpay-Serial: <public_key_id>``, RSA-OAEP-encrypts a payee's ``user_name`` with the WeChat
  Pay public key, and verifies every 2xx answer's ``Wechatpay-Signature`` with that public key
  (an unsigned or forged answer raises; we report it as a retryable ``response_unverified``).
  The client is built on the first call (cold start: nothing of the SDK or ``cryptography`` is
  imported before), always with an explicit ``timeout``.
* **Callbacks never go through ``wechatpayv3``**: its ``callback()`` has no timestamp window and
  fetches ``/v3/certificates`` for an unknown serial. :meth:`WeChatPayProvider.parse_callback`
  uses our ``wechat_notify.verify_notification`` (serial allow-list = ``public_key_id`` plus
  ``platform_certs``, ±300 s, no network) and then checks the resource is ours (``mchid``/
  ``mch_id`` and ``appid``) → ``NotificationRejected("wrong_merchant")`` otherwise.
* **Errors**: timeouts, connection errors, 5xx, 429, ``SYSTEM_ERROR``/``FREQUENCY_LIMITED`` and
  answers that do not verify are retryable ``ProviderError`` (the outcome is unknown: query, then
  repeat with the same merchant number); other 4xx are definitive, with WeChat's ``code``
  lower-cased as ours (``ORDER_NOT_EXIST`` → ``order_not_found`` and similar aliases below).
  WeChat's ``message`` is for humans only: nothing branches on it.

Scenes: ``jsapi_oa`` / ``jsapi_mp`` (``/v3/pay/transactions/jsapi`` with the payer's openid of that
appid → ``getBrandWCPayRequest`` / ``wx.requestPayment`` parameters), ``h5``
(``/v3/pay/transactions/h5`` with the OA appid → ``{"h5_url"}``), ``app`` (``/v3/pay/transactions/app``
→ OpenSDK ``PayReq`` fields). Payouts are 商家转账 (``/v3/fund-app/mch-transfer/transfer-bills``) to a
WeChat payee only.

Example
-------
>>> provider = WeChatPayProvider(WeChatPayConfig(mchid="1900000109", ...))  # doctest: +SKIP
>>> provider.create_payment(request).client_params["package"]  # doctest: +SKIP
'prepay_id=wx201410272009395522657a690389285100'
>>> payee = {"openid": "o-1", "app": "mp", "real_name": "张三"}
>>> provider.payout(PayoutRequest("WD1", 10000, "wechat", payee, "提现")).state  # doctest: +SKIP
'wait_user_confirm'
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from chalicelib.payments.provider import (
    HttpReply,
    PaymentIntent,
    PaymentStatus,
    PayoutStatus,
    ProviderError,
    RefundStatus,
)
from chalicelib.payments.wechat_events import payment_event
from chalicelib.payments.wechat_notify import NotificationRejected, NotifyKeys, verify_notification

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from wechatpayv3 import WeChatPay

    from chalicelib.payments.provider import (
        Channel,
        PaymentRequest,
        PaymentState,
        PayoutRequest,
        PayoutState,
        ProviderEvent,
        RefundRequest,
        RefundState,
    )

__all__ = ["DEFAULT_API_BASE", "WeChatPayConfig", "WeChatPayProvider"]

DEFAULT_API_BASE: Final = "https://api.mch.weixin.qq.com"
BEIJING: Final = timezone(timedelta(hours=8), "Asia/Shanghai")
"""WeChat's times are RFC 3339 in Beijing time (``2026-11-25T16:00:00+08:00``)."""

_NUMBER = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
"""Our merchant numbers go into URL paths: only these characters (ours are alphanumeric)."""
_NONCE_ALPHABET: Final = string.ascii_letters + string.digits
_DEFAULT_REMARK: Final = "提现"
_REMARK_MAX: Final = 32  # transfer_remark: at most 32 characters
_DESCRIPTION_MAX: Final = 127
_REASON_MAX: Final = 80
_REAL_NAME_REQUIRED_FEN: Final = 200_000
"""WeChat requires the payee's real name from 2,000 yuan on (wechatpayv3 refuses without it)."""
_SCENE_REPORT_INFOS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    # 1005 佣金报酬: WeChat requires 岗位类型 (job) and 报酬说明 (what the pay is for)
    "1005": (("岗位类型", "麻醉医生"), ("报酬说明", "麻醉医疗服务劳务报酬")),
}
"""``transfer_scene_report_infos`` per transfer scene; a scene not listed sends none."""

_PAYMENT_STATES: Final[dict[str, PaymentState]] = {
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "PAYERROR": "pending",  # not payable now; our follow-up job closes it when its window ends
    "SUCCESS": "succeeded",
    "REFUND": "succeeded",  # paid, then (partly) refunded: the payment itself succeeded
    "CLOSED": "closed",
    "REVOKED": "closed",
}
_REFUND_STATES: Final[dict[str, RefundState]] = {
    "PROCESSING": "processing",
    "SUCCESS": "succeeded",
    "ABNORMAL": "failed",
    "CLOSED": "closed",
}
_PAYOUT_STATES: Final[dict[str, PayoutState]] = {
    "ACCEPTED": "processing",
    "PROCESSING": "processing",
    "TRANSFERING": "processing",
    "CANCELING": "processing",
    "WAIT_USER_CONFIRM": "wait_user_confirm",
    "SUCCESS": "succeeded",
    "FAIL": "failed",
    "CANCELLED": "cancelled",
}
_RETRYABLE_CODES: Final = frozenset(
    {"SYSTEM_ERROR", "SYSTEMERROR", "FREQUENCY_LIMITED", "FREQUENCY_LIMIT_EXCEED", "RATELIMIT_EXCEEDED", "BANK_ERROR"}
)
"""WeChat codes whose outcome is unknown or temporary: query, then repeat with the same number."""
_CODE_ALIASES: Final[dict[str, str]] = {
    "ORDER_NOT_EXIST": "order_not_found",
    "ORDERNOTEXIST": "order_not_found",
    "ORDER_PAID": "order_paid",
    "ORDERPAID": "order_paid",
    "ORDER_CLOSED": "order_closed",
    "ORDERCLOSED": "order_closed",
}
"""WeChat codes (v3 and their v2-era spellings) → our codes; any other code is lower-cased."""
_FAIL_ZH: Final = "失败"


@dataclass(frozen=True)
class WeChatPayConfig:
    """One WeChat Pay direct merchant in public-key mode. The lead builds it from settings and the secret.

    ``mchid``: the merchant id. ``merchant_serial``: the serial of OUR API certificate (sent in
    ``Authorization``). ``merchant_private_key``: our API private key, PKCS#8 PEM
    (``apiclient_key.pem``). ``apiv3_key``: the 32-character APIv3 key (decrypts callbacks).
    ``public_key_id`` / ``public_key``: the WeChat Pay public key (``PUB_KEY_ID_…``, SPKI PEM
    ``pub_key.pem``) that verifies answers and callbacks and encrypts ``user_name``.
    ``platform_certs``: hex serial → PEM certificate of WeChat Pay platform certificates still
    accepted during a switch to public-key mode (may be empty). ``app_ids``: ``"oa"`` (official
    account; also used for H5), ``"mp"`` (mini program), optionally ``"app"``. ``notify_url``:
    our callback route. ``transfer_scene_id``: the approved 商家转账 scene (1005 佣金报酬).
    ``api_base``: WeChat's API (another value only for a local double). ``timeout``: requests'
    (connect, read) seconds for every call.
    """

    mchid: str
    merchant_serial: str
    merchant_private_key: str = field(repr=False)
    apiv3_key: str = field(repr=False)
    public_key_id: str
    public_key: str = field(repr=False)
    platform_certs: Mapping[str, str]
    app_ids: Mapping[str, str]
    notify_url: str
    transfer_scene_id: str = "1005"
    api_base: str = DEFAULT_API_BASE
    timeout: tuple[float, float] = (3.0, 10.0)

    def __post_init__(self) -> None:
        for name in ("mchid", "merchant_serial", "public_key_id", "notify_url", "transfer_scene_id", "api_base"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"WeChatPayConfig.{name} must be a non-empty string")
        if not isinstance(self.apiv3_key, str) or len(self.apiv3_key.encode("utf-8")) != 32:
            raise ValueError("WeChatPayConfig.apiv3_key must be the 32-character APIv3 key")
        # wechatpayv3 re-wraps the PEM body in PKCS#8 / SPKI armour: other PEM types do not load
        if "-----BEGIN PRIVATE KEY-----" not in str(self.merchant_private_key):
            raise ValueError("WeChatPayConfig.merchant_private_key must be a PKCS#8 PEM (BEGIN PRIVATE KEY)")
        if "-----BEGIN PUBLIC KEY-----" not in str(self.public_key):
            raise ValueError("WeChatPayConfig.public_key must be an SPKI PEM (BEGIN PUBLIC KEY)")
        if not self.public_key_id.startswith("PUB_KEY_ID_"):
            raise ValueError("WeChatPayConfig.public_key_id must be the PUB_KEY_ID_… of the WeChat Pay public key")
        if not isinstance(self.app_ids, Mapping) or not any(self.app_ids.get(app) for app in ("oa", "mp", "app")):
            raise ValueError("WeChatPayConfig.app_ids must name at least one of oa, mp, app")
        if not isinstance(self.platform_certs, Mapping):
            raise ValueError("WeChatPayConfig.platform_certs must be a mapping (may be empty)")
        for serial, pem in self.platform_certs.items():
            if not serial or "-----BEGIN CERTIFICATE-----" not in str(pem):
                raise ValueError(f"WeChatPayConfig.platform_certs[{serial!r}] must be a PEM certificate")
        if len(self.timeout) != 2 or not all(isinstance(t, int | float) and t > 0 for t in self.timeout):
            raise ValueError("WeChatPayConfig.timeout must be (connect seconds, read seconds), both positive")
        object.__setattr__(self, "platform_certs", MappingProxyType(dict(self.platform_certs)))
        object.__setattr__(self, "app_ids", MappingProxyType({k: v for k, v in self.app_ids.items() if v}))
        object.__setattr__(self, "api_base", self.api_base.rstrip("/"))
        object.__setattr__(self, "timeout", (float(self.timeout[0]), float(self.timeout[1])))


class WeChatPayProvider:
    """WeChat Pay v3: the ``Provider`` of channel ``wechat`` (see the module docstring)."""

    channel: Channel = "wechat"

    def __init__(self, config: WeChatPayConfig) -> None:
        self._config = config
        self._notify_keys = NotifyKeys(
            api_v3_key=config.apiv3_key.encode("utf-8"),
            public_keys={config.public_key_id: config.public_key, **config.platform_certs},
        )
        self._our_app_ids = frozenset(config.app_ids.values())
        self._wxpay: WeChatPay | None = None
        self._lock = threading.Lock()

    # -- the SDK client ----------------------------------------------------------------------------

    def _client(self) -> WeChatPay:
        """The ``wechatpayv3`` client, built on first use (cold start) and kept."""
        with self._lock:
            if self._wxpay is None:
                self._wxpay = self._build_client()
            return self._wxpay

    def _build_client(self) -> WeChatPay:
        from cryptography.x509 import load_pem_x509_certificate
        from wechatpayv3 import WeChatPay, WeChatPayType

        config = self._config
        try:
            wxpay = WeChatPay(
                wechatpay_type=WeChatPayType.JSAPI,  # the default only: each call names its type
                mchid=config.mchid,
                private_key=config.merchant_private_key,
                cert_serial_no=config.merchant_serial,
                appid=config.app_ids.get("oa") or config.app_ids.get("mp") or config.app_ids["app"],
                apiv3_key=config.apiv3_key,
                notify_url=config.notify_url,
                timeout=config.timeout,
                public_key=config.public_key,
                public_key_id=config.public_key_id,
            )
            certificates = [load_pem_x509_certificate(pem.encode("ascii")) for pem in config.platform_certs.values()]
        except Exception as error:  # the SDK raises a bare Exception for a key it cannot load
            raise ProviderError(
                "provider_misconfigured", f"the WeChat Pay keys do not load ({type(error).__name__})", retryable=True
            ) from None
        core = wxpay._core
        if config.api_base != DEFAULT_API_BASE:
            # wechatpayv3 2.0.4 takes no gateway argument: Core.__init__ sets
            # self._gate_way = 'https://api.mch.weixin.qq.com' and Core.request() sends every call
            # to self._gate_way + path. A local double (devstack) is reached only by setting it.
            core._gate_way = config.api_base
        # An answer signed under a serial other than public_key_id makes Core._verify_signature look
        # in core._certificates and, when it is not there, call _update_certificates(): an unverified
        # GET /v3/certificates chosen by whoever wrote the answer. Give it the platform certificates we
        # accept and never let it fetch: an unknown serial then fails verification, with no network.
        core._certificates = certificates
        core._update_certificates = _never_fetch_certificates
        return wxpay

    def _call(
        self, what: str, send: Callable[[WeChatPay], tuple[int, Any]], codes: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Send one call; answer its verified JSON object (``{}`` for 204) or raise ``ProviderError``.

        ``codes`` maps WeChat codes to ours for this call (before :data:`_CODE_ALIASES`).
        """
        import requests

        client = self._client()
        try:
            status, text = send(client)
        except requests.Timeout:
            raise ProviderError("timeout", f"{what}: WeChat Pay did not answer in time", retryable=True) from None
        except requests.RequestException as error:
            raise ProviderError(
                "network_error", f"{what}: WeChat Pay unreachable ({type(error).__name__})", retryable=True
            ) from None
        except Exception as error:  # wechatpayv3 raises a bare Exception when a 2xx answer does not verify
            _log_warning("wechat pay answer not verified", what, error=type(error).__name__)
            raise ProviderError(
                "response_unverified",
                f"{what}: the answer does not carry a valid WeChat Pay signature ({type(error).__name__})",
                retryable=True,
            ) from None
        payload = _json_object(text)
        if 200 <= status < 300:
            return payload
        code = payload.get("code") if isinstance(payload.get("code"), str) else ""
        message = str(payload.get("message") or "")[:200]
        detail = f"{what}: WeChat Pay answered {status} {code or '(no code)'} {message}".rstrip()
        # No WeChat code (a proxy's page, say) is not a refusal we can trust: the outcome is unknown.
        if status >= 500 or status == 429 or not code or code in _RETRYABLE_CODES:
            _log_warning("wechat pay call failed, retryable", what, status=status, code=code)
            raise ProviderError(code.lower() if code else f"http_{status}", detail, retryable=True)
        ours = (codes or {}).get(code) or _CODE_ALIASES.get(code) or (code.lower() if code else f"http_{status}")
        _log_warning("wechat pay call refused", what, status=status, code=code)
        raise ProviderError(ours, detail, retryable=False)

    # -- payments ----------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        """Open the order for the scene; answer the prepay id (H5: from ``h5_url``) and the front end's parameters."""
        from wechatpayv3 import WeChatPayType

        _check_number(request.out_trade_no, "out_trade_no")
        amount = _positive_fen(request.amount_fen, "amount")
        description = (request.description or "").strip()[:_DESCRIPTION_MAX]
        if not description:
            raise ProviderError("param_error", "a WeChat Pay order needs a description", retryable=False)
        common: dict[str, Any] = {
            "description": description,
            "out_trade_no": request.out_trade_no,
            "amount": {"total": amount, "currency": "CNY"},
            "time_expire": wechat_time(request.expires_at),
            "notify_url": self._config.notify_url,
        }
        scene = request.scene
        if scene in ("jsapi_oa", "jsapi_mp"):
            appid = self._appid("oa" if scene == "jsapi_oa" else "mp", scene)
            if not request.payer_openid:
                raise ProviderError(
                    "payer_openid_required", f"{scene} needs the payer's openid for {appid}", retryable=False
                )
            pay_type = WeChatPayType.JSAPI if scene == "jsapi_oa" else WeChatPayType.MINIPROG
            payer = {"openid": request.payer_openid}
            answer = self._call(
                "create payment", lambda c: c.pay(**common, payer=payer, appid=appid, pay_type=pay_type)
            )
            prepay_id = _required_str(answer, "prepay_id", "create payment")
            return PaymentIntent(provider_ref=prepay_id, client_params=self._jsapi_params(appid, prepay_id))
        if scene == "h5":
            appid = self._appid("oa", scene)
            scene_info = {"payer_client_ip": request.payer_ip or "127.0.0.1", "h5_info": {"type": "Wap"}}
            answer = self._call(
                "create payment",
                lambda c: c.pay(**common, scene_info=scene_info, appid=appid, pay_type=WeChatPayType.H5),
            )
            h5_url = _required_str(answer, "h5_url", "create payment")
            prepay_ids = parse_qs(urlsplit(h5_url).query).get("prepay_id")
            return PaymentIntent(
                provider_ref=prepay_ids[0] if prepay_ids else request.out_trade_no, client_params={"h5_url": h5_url}
            )
        if scene == "app":
            appid = self._appid("app", scene)
            answer = self._call("create payment", lambda c: c.pay(**common, appid=appid, pay_type=WeChatPayType.APP))
            prepay_id = _required_str(answer, "prepay_id", "create payment")
            return PaymentIntent(provider_ref=prepay_id, client_params=self._app_params(appid, prepay_id))
        raise ProviderError("scene_unsupported", f"WeChat Pay does not pay in scene {scene!r}", retryable=False)

    def _appid(self, app: str, scene: str) -> str:
        appid = self._config.app_ids.get(app)
        if not appid:
            raise ProviderError("scene_unsupported", f"no {app} appid is configured for {scene}", retryable=False)
        return appid

    def _jsapi_params(self, appid: str, prepay_id: str) -> dict[str, Any]:
        """``getBrandWCPayRequest`` / ``wx.requestPayment`` parameters.

        ``paySign``: SHA256withRSA with our merchant key over ``appId\\ntimeStamp\\nnonceStr\\npackage\\n``.
        """
        timestamp, nonce, package = str(int(time.time())), _nonce(), f"prepay_id={prepay_id}"
        return {
            "appId": appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": self._client().sign([appid, timestamp, nonce, package]),
        }

    def _app_params(self, appid: str, prepay_id: str) -> dict[str, Any]:
        """OpenSDK ``PayReq``: sign over ``appId\\ntimeStamp\\nnonceStr\\nprepayId\\n`` with our merchant key."""
        timestamp, nonce = str(int(time.time())), _nonce()
        return {
            "appId": appid,
            "partnerId": self._config.mchid,
            "prepayId": prepay_id,
            "packageValue": "Sign=WXPay",
            "nonceStr": nonce,
            "timeStamp": timestamp,
            "sign": self._client().sign([appid, timestamp, nonce, prepay_id]),
        }

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        """The order by our number (``ORDER_NOT_EXIST`` → ``order_not_found``)."""
        _check_number(out_trade_no, "out_trade_no")
        answer = self._call("query payment", lambda c: c.query(out_trade_no=out_trade_no))
        trade_state = answer.get("trade_state")
        state = _PAYMENT_STATES.get(trade_state) if isinstance(trade_state, str) else None
        if state is None:
            raise ProviderError(
                "unexpected_state", f"query payment: unknown trade_state {str(trade_state)[:32]!r}", retryable=True
            )
        amount = answer.get("amount") if isinstance(answer.get("amount"), dict) else {}
        total = amount.get("total")
        currency = amount.get("currency")
        return PaymentStatus(
            out_trade_no=out_trade_no,
            state=state,
            transaction_id=answer.get("transaction_id") or None,
            amount_fen=total if _is_int(total) else None,
            currency=currency if isinstance(currency, str) else None,
            paid_at=answer.get("success_time") or None,
        )

    def close_payment(self, out_trade_no: str) -> None:
        """Close an unpaid order; a closed one is fine; a paid one is ``order_paid`` (not retryable)."""
        _check_number(out_trade_no, "out_trade_no")
        try:
            self._call("close payment", lambda c: c.close(out_trade_no=out_trade_no))
        except ProviderError as error:
            if error.code != "order_closed":
                raise

    # -- refunds -----------------------------------------------------------------------------------

    def refund(self, request: RefundRequest) -> RefundStatus:
        """Refund by the original path; the same ``out_refund_no`` refunds once (the result follows by callback)."""
        _check_number(request.out_refund_no, "out_refund_no")
        _check_number(request.out_trade_no, "out_trade_no")
        refund, total = _positive_fen(request.amount_fen, "refund"), _positive_fen(request.total_fen, "total")
        if refund > total:
            raise ProviderError("invalid_amount", f"refund {refund} exceeds the order's {total}", retryable=False)
        amount = {"refund": refund, "total": total, "currency": "CNY"}
        reason = (request.reason or "").strip()[:_REASON_MAX] or None
        answer = self._call(
            "refund",
            lambda c: c.refund(
                out_refund_no=request.out_refund_no,
                amount=amount,
                out_trade_no=request.out_trade_no,
                reason=reason,
                notify_url=self._config.notify_url,
            ),
            {"RESOURCE_NOT_EXISTS": "order_not_found"},
        )
        return _refund_status(answer, request.out_refund_no, "refund")

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        """The refund by our number (``RESOURCE_NOT_EXISTS`` → ``refund_not_found``)."""
        _check_number(out_refund_no, "out_refund_no")
        answer = self._call(
            "query refund",
            lambda c: c.query_refund(out_refund_no=out_refund_no),
            {"RESOURCE_NOT_EXISTS": "refund_not_found"},
        )
        return _refund_status(answer, out_refund_no, "query refund")

    # -- payouts (商家转账) ------------------------------------------------------------------------

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        """A transfer bill to a WeChat payee (``openid`` of app ``mp``/``oa``); usually ``wait_user_confirm``.

        ``real_name`` is sent as ``user_name``, RSA-OAEP-encrypted with the WeChat Pay public key
        (wechatpayv3 leaves it out under 0.30 yuan, where WeChat does not take it).
        """
        if request.payee_kind != "wechat":
            raise ProviderError(
                "payee_kind_unsupported", f"WeChat Pay cannot pay a {request.payee_kind} payee", retryable=False
            )
        _check_number(request.out_bill_no, "out_bill_no")
        amount = _positive_fen(request.amount_fen, "transfer")
        openid = request.payee.get("openid")
        if not openid:
            raise ProviderError("invalid_payee", "a WeChat payee needs an openid", retryable=False)
        app = request.payee.get("app") or "mp"
        appid = self._config.app_ids.get(app)
        if not appid:
            raise ProviderError("invalid_payee", f"no {app!r} appid is configured for the payee", retryable=False)
        real_name = request.payee.get("real_name") or None
        if real_name is None and amount >= _REAL_NAME_REQUIRED_FEN:
            raise ProviderError("real_name_required", "WeChat needs the payee's name from 2,000 yuan", retryable=False)
        remark = (request.remark or "").strip()[:_REMARK_MAX] or _DEFAULT_REMARK
        scene = self._config.transfer_scene_id
        infos = [{"info_type": kind, "info_content": text} for kind, text in _SCENE_REPORT_INFOS.get(scene, ())]
        answer = self._call(
            "payout",
            lambda c: c.mch_transfer_bills(
                out_bill_no=request.out_bill_no,
                transfer_scene_id=scene,
                openid=openid,
                transfer_amount=amount,
                transfer_remark=remark,
                user_name=real_name,
                transfer_scene_report_infos=infos,
                appid=appid,
                notify_url=self._config.notify_url,
            ),
        )
        return _payout_status(answer, request.out_bill_no, "payout", amount)

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        """The bill by our number (``NOT_FOUND`` → ``payout_not_found``: it may be sent, same number)."""
        _check_number(out_bill_no, "out_bill_no")
        answer = self._call(
            "query payout",
            lambda c: c.mch_transfer_bills_query(out_bill_no=out_bill_no),
            {"NOT_FOUND": "payout_not_found"},
        )
        return _payout_status(answer, out_bill_no, "query payout")

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        """Revoke a bill that is not final (``CANCELING`` → ``processing``, then ``CANCELLED``)."""
        _check_number(out_bill_no, "out_bill_no")
        answer = self._call(
            "cancel payout",
            lambda c: c.mch_transfer_bills_cancel(out_bill_no=out_bill_no),
            {"NOT_FOUND": "payout_not_found"},
        )
        return _payout_status(answer, out_bill_no, "cancel payout")

    # -- callbacks ---------------------------------------------------------------------------------

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify (``NotificationRejected``), decrypt, normalise (``MalformedEventError``), then check it is ours.

        Never calls ``wechatpayv3`` and never opens a connection. A resource naming another
        ``mchid``/``mch_id``, or an ``appid`` that is not one of ours, is ``wrong_merchant``.
        """
        notification = verify_notification(headers, body, self._notify_keys, now.timestamp())
        event = payment_event("wechat", notification)
        resource = notification.resource
        mchid = resource.get("mchid", resource.get("mch_id"))
        if (event is not None or mchid is not None) and mchid != self._config.mchid:
            raise NotificationRejected("wrong_merchant", "the notification names another merchant id")
        appid = resource.get("appid")
        if appid is not None and appid not in self._our_app_ids:
            raise NotificationRejected("wrong_merchant", "the notification names an appid that is not ours")
        return event

    def acknowledge(self, accepted: bool) -> HttpReply:
        """WeChat's answers: 204 without a body, or 400 ``{"code":"FAIL","message":"失败"}``."""
        if accepted:
            return HttpReply(204, "")
        return HttpReply(
            400, json.dumps({"code": "FAIL", "message": _FAIL_ZH}, ensure_ascii=False, separators=(",", ":"))
        )


# -- helpers ---------------------------------------------------------------------------------------


def wechat_time(instant: datetime) -> str:
    """RFC 3339 in Beijing time to the second, as WeChat takes ``time_expire`` (``…T16:00:00+08:00``)."""
    if instant.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return instant.astimezone(BEIJING).isoformat(timespec="seconds")


def _never_fetch_certificates() -> None:
    """Stands in for ``Core._update_certificates``: no ``GET /v3/certificates``, ever."""


def _nonce(length: int = 32) -> str:
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_fen(value: object, what: str) -> int:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ProviderError("invalid_amount", f"the {what} amount must be a whole number of fen ≥ 1", retryable=False)
    return value  # type: ignore[return-value]


def _check_number(number: object, what: str) -> None:
    if not isinstance(number, str) or not _NUMBER.fullmatch(number):
        raise ProviderError("invalid_number", f"{what} must be 1-64 letters, digits, _ or -", retryable=False)


def _json_object(text: object) -> dict[str, Any]:
    """The answer's JSON object; ``{}`` for an empty (204) or non-JSON body."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _required_str(answer: Mapping[str, Any], name: str, what: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise ProviderError("malformed_response", f"{what}: the answer has no {name}", retryable=True)
    return value


def _refund_status(answer: Mapping[str, Any], out_refund_no: str, what: str) -> RefundStatus:
    status = answer.get("status")
    state = _REFUND_STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise ProviderError("unexpected_state", f"{what}: unknown refund status {str(status)[:32]!r}", retryable=True)
    amount = answer.get("amount") if isinstance(answer.get("amount"), dict) else {}
    refunded = amount.get("refund")
    return RefundStatus(
        out_refund_no=out_refund_no,
        state=state,
        refund_id=answer.get("refund_id") or None,
        amount_fen=refunded if _is_int(refunded) else None,
    )


def _payout_status(answer: Mapping[str, Any], out_bill_no: str, what: str, sent_fen: int | None = None) -> PayoutStatus:
    raw_state = answer.get("state")
    state = _PAYOUT_STATES.get(raw_state) if isinstance(raw_state, str) else None
    if state is None:
        raise ProviderError(
            "unexpected_state", f"{what}: unknown transfer state {str(raw_state)[:32]!r}", retryable=True
        )
    amount = answer.get("transfer_amount")
    package_info = answer.get("package_info")
    fail_reason = answer.get("fail_reason")
    return PayoutStatus(
        out_bill_no=out_bill_no,
        state=state,
        bill_id=answer.get("transfer_bill_no") or None,
        amount_fen=amount if _is_int(amount) else sent_fen,
        package_info=package_info if state == "wait_user_confirm" and isinstance(package_info, str) else None,
        fail_reason=fail_reason if isinstance(fail_reason, str) and fail_reason else None,
    )


def _log_warning(message: str, what: str, **extra: Any) -> None:
    from chalicelib.observability import logger

    logger.warning(message, extra={"channel": "wechat", "call": what, **extra})
