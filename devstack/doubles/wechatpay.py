"""WeChat Pay API v3 played on loopback: the double the live ``wechat`` adapter talks to in tests and devstack.

Why: there is no APIv3 sandbox (reference/payments.md §1.10), and the adapter must be
exercised on the real wire format — our request signatures checked exactly as WeChat checks
them, every answer signed as WeChat signs it (so ``wechatpayv3`` verifies it with the WeChat
Pay public key, public-key mode), and callbacks signed and encrypted as WeChat sends them (so
``wechat_notify.verify_notification`` checks them). Keys are generated offline by
:func:`make_credentials`; nothing here talks to WeChat.

What it serves (paths as ``wechatpayv3`` 2.0.4 calls them):

- ``POST /v3/pay/transactions/{jsapi,h5,app}`` → ``prepay_id`` (H5: ``h5_url``); the same
  ``out_trade_no`` with the same order answers the same, with another one ``OUT_TRADE_NO_USED``;
- ``GET /v3/pay/transactions/out-trade-no/{no}?mchid=`` (``ORDER_NOT_EXIST``), ``POST …/close``
  (204; ``ORDER_PAID``; ``ORDER_CLOSED`` when closed already);
- ``POST /v3/refund/domestic/refunds`` → ``PROCESSING``, then ``REFUND.SUCCESS`` after
  ``result_delay_s`` (see :meth:`WeChatPayDouble.plan_refund`); the same ``out_refund_no``
  answers the same, with another amount ``INVALID_REQUEST``; ``NOT_ENOUGH`` past the order;
  ``GET /v3/refund/domestic/refunds/{no}`` (``RESOURCE_NOT_EXISTS``);
- ``POST /v3/fund-app/mch-transfer/transfer-bills`` → ``WAIT_USER_CONFIRM`` with a
  ``package_info`` (``user_name`` is decrypted with the WeChat Pay private key: it must be
  RSA-OAEP under the public key), ``GET …/out-bill-no/{no}`` (``NOT_FOUND``), ``POST
  …/out-bill-no/{no}/cancel`` (``CANCELING``, then ``CANCELLED`` and its notification).

Every request must carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,
timestamp=…,serial_no=…,signature=…`` over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``
verified with OUR merchant public key (401 ``SIGN_ERROR`` otherwise, also for a timestamp more
than 300 s away or another mchid/serial). Every answer carries ``Wechatpay-Timestamp``,
``-Nonce``, ``-Signature`` (SHA256withRSA over ``timestamp\\nnonce\\nbody\\n`` with the WeChat Pay
private key), ``-Serial: <public_key_id>`` and ``-Signature-Type``.

The people on WeChat's side: :meth:`~WeChatPayDouble.pay` (the payer, given our
``client_params``: the double checks our ``paySign``/``sign``), :meth:`~WeChatPayDouble.finish_payout`
(the payee confirms, or the transfer fails). :meth:`~WeChatPayDouble.plan_payout` is a no-op:
a WeChat transfer always waits for the payee (WAIT_USER_CONFIRM), it never ends synchronously.

Example
-------
>>> credentials = make_credentials()
>>> double = WeChatPayDouble(credentials.double, deliver=lambda url, headers, body: (204, ""))
>>> config = credentials.config(notify_url="http://127.0.0.1:8000/v1/payments/callbacks/wechat")
>>> double.pay(provider.create_payment(request).client_params)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from chalicelib.payments.wechat_notify import (
    H_NONCE,
    H_SERIAL,
    H_SIGNATURE,
    H_SIGNATURE_TYPE,
    H_TIMESTAMP,
    SIGNATURE_TYPE,
    sign_message,
    sign_notification,
)

if TYPE_CHECKING:
    from chalicelib.payments.wechatpay import WeChatPayConfig

__all__ = ["WeChatPayCredentials", "WeChatPayDouble", "WeChatPayDoubleKeys", "make_credentials"]

Deliver = Callable[[str, dict[str, str], bytes], tuple[int, str]]
"""POST one notification ``(url, headers, raw body)``; answer ``(status, body text)``."""
Answer = tuple[int, dict[str, str], bytes]

DEFAULT_API_BASE: Final = "http://127.0.0.1:8701"
"""Where ``make_credentials`` says the double is when not told (the lead passes the real loopback URL)."""
REQUEST_TOLERANCE_S: Final = 300
BEIJING: Final = timezone(timedelta(hours=8), "Asia/Shanghai")
_ALNUM: Final = string.ascii_letters + string.digits
_AUTH_SCHEME: Final = "WECHATPAY2-SHA256-RSA2048 "
_AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?[+-]\d{2}:\d{2}")
_FINAL_TRANSFER: Final = frozenset({"SUCCESS", "FAIL", "CANCELLED"})
_PAID: Final = frozenset({"SUCCESS", "REFUND"})
_TRADE_TYPES: Final = {"jsapi": "JSAPI", "h5": "MWEB", "app": "APP"}
_SCENE_APPS: Final = {"jsapi": ("oa", "mp"), "h5": ("oa", "mp"), "app": ("app",)}
_REQUIRED_REPORT_INFOS: Final = {"1005": frozenset({"岗位类型", "报酬说明"})}
_PAYOUT_OUTCOMES: Final = {"success": ("SUCCESS", None), "fail": ("FAIL", "PAYEE_ACCOUNT_ABNORMAL")}


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeChatPayDoubleKeys:
    """What the double needs: our merchant PUBLIC key (checks our signatures), its own WeChat Pay
    private key (signs answers and callbacks, decrypts ``user_name``), the APIv3 key, our ids."""

    mchid: str
    merchant_serial: str
    merchant_public_key: str
    wechat_private_key: str = field(repr=False)
    public_key_id: str
    apiv3_key: str = field(repr=False)
    app_ids: Mapping[str, str]
    transfer_scene_id: str = "1005"


@dataclass(frozen=True)
class WeChatPayCredentials:
    """Both sides of one generated merchant.

    ``double``: for :class:`WeChatPayDouble`. ``config_env``: OUR non-secret environment
    (``WECHATPAY_MCHID``, ``WECHATPAY_MERCHANT_SERIAL``, ``WECHATPAY_PUBLIC_KEY_ID``,
    ``WECHATPAY_APP_APPID``, ``WECHATPAY_TRANSFER_SCENE_ID``, ``WECHATPAY_API_BASE``,
    ``WECHAT_OA_APPID``, ``WECHAT_MP_APPID``). ``secret``: OUR channel secret
    (``merchant_private_key``, ``apiv3_key``, ``public_key``, ``platform_certs``).
    """

    double: WeChatPayDoubleKeys
    config_env: dict[str, str]
    secret: dict[str, Any] = field(repr=False)

    def config(self, notify_url: str, *, api_base: str | None = None, **overrides: Any) -> WeChatPayConfig:
        """OUR adapter's config for this merchant (what the lead builds from env + secret); for tests."""
        from chalicelib.payments.wechatpay import WeChatPayConfig

        env, secret = self.config_env, self.secret
        app_ids = {"oa": env["WECHAT_OA_APPID"], "mp": env["WECHAT_MP_APPID"]}
        if env.get("WECHATPAY_APP_APPID"):
            app_ids["app"] = env["WECHATPAY_APP_APPID"]
        values: dict[str, Any] = {
            "mchid": env["WECHATPAY_MCHID"],
            "merchant_serial": env["WECHATPAY_MERCHANT_SERIAL"],
            "merchant_private_key": secret["merchant_private_key"],
            "apiv3_key": secret["apiv3_key"],
            "public_key_id": env["WECHATPAY_PUBLIC_KEY_ID"],
            "public_key": secret["public_key"],
            "platform_certs": dict(secret["platform_certs"]),
            "app_ids": app_ids,
            "notify_url": notify_url,
            "transfer_scene_id": env["WECHATPAY_TRANSFER_SCENE_ID"],
            "api_base": api_base or env["WECHATPAY_API_BASE"],
        }
        values.update(overrides)
        return WeChatPayConfig(**values)


def _rsa_pair() -> tuple[Any, str, str]:
    """A fresh RSA-2048 key: (key, PKCS#8 private PEM, SPKI public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return key, private_pem, public_pem


def _self_signed_serial(key: Any, common_name: str) -> int:
    """A self-signed certificate for ``key`` (as the merchant API certificate is issued); answer its serial."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=5 * 365))
        .sign(key, hashes.SHA256())
    )
    return certificate.serial_number


def make_credentials(
    *,
    api_base: str = DEFAULT_API_BASE,
    mchid: str = "1900000109",
    app_ids: Mapping[str, str] | None = None,
    transfer_scene_id: str = "1005",
) -> WeChatPayCredentials:
    """Generate one merchant offline: our API key and certificate serial, the WeChat Pay public key
    (``PUB_KEY_ID_…``), a 32-character APIv3 key; answer both sides (:class:`WeChatPayCredentials`).

    ``app_ids`` defaults to an OA, a mini program and an app appid. ``platform_certs`` is empty
    (public-key mode only).
    """
    apps = dict(app_ids or {"oa": "wxd0ub1e0a000000oa", "mp": "wxd0ub1e0a000000mp", "app": "wxd0ub1e0a00000app"})
    merchant_key, merchant_private, merchant_public = _rsa_pair()
    merchant_serial = format(_self_signed_serial(merchant_key, f"{mchid} merchant API certificate (double)"), "X")
    _wechat_key, wechat_private, wechat_public = _rsa_pair()
    public_key_id = "PUB_KEY_ID_" + "".join(secrets.choice(string.digits) for _ in range(36))
    apiv3_key = "".join(secrets.choice(_ALNUM) for _ in range(32))
    double = WeChatPayDoubleKeys(
        mchid=mchid,
        merchant_serial=merchant_serial,
        merchant_public_key=merchant_public,
        wechat_private_key=wechat_private,
        public_key_id=public_key_id,
        apiv3_key=apiv3_key,
        app_ids=apps,
        transfer_scene_id=transfer_scene_id,
    )
    config_env = {
        "WECHATPAY_MCHID": mchid,
        "WECHATPAY_MERCHANT_SERIAL": merchant_serial,
        "WECHATPAY_PUBLIC_KEY_ID": public_key_id,
        "WECHATPAY_APP_APPID": apps.get("app", ""),
        "WECHATPAY_TRANSFER_SCENE_ID": transfer_scene_id,
        "WECHATPAY_API_BASE": api_base,
        "WECHAT_OA_APPID": apps.get("oa", ""),
        "WECHAT_MP_APPID": apps.get("mp", ""),
    }
    secret = {
        "merchant_private_key": merchant_private,
        "apiv3_key": apiv3_key,
        "public_key": wechat_public,
        "platform_certs": {},
    }
    return WeChatPayCredentials(double=double, config_env=config_env, secret=secret)


# -- the double ------------------------------------------------------------------------------------


class _Refused(Exception):  # noqa: N818 - an answer, not a fault
    """An error answer: ``(status, WeChat code, message)``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _wechat_time(at: float | None = None) -> str:
    instant = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return instant.astimezone(BEIJING).isoformat(timespec="seconds")


def _nonce(length: int = 32) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def _digits(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))


def _is_fen(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class WeChatPayDouble:
    """WeChat Pay v3 for one merchant, in memory and thread-safe (see the module docstring).

    ``credentials``: :class:`WeChatPayDoubleKeys` (or the whole :class:`WeChatPayCredentials`).
    ``deliver`` sends notifications to the ``notify_url`` our calls named. ``result_delay_s``: how
    long after answering a refund (or a cancel) its result is sent, from a daemon thread; ``0``
    sends it synchronously right after the answer is computed (before ``handle`` returns).

    Records: ``requests`` (method, path, verified) of every call, ``deliveries`` (url, event
    type, event id, our status and body) of every notification.
    """

    channel = "wechat"

    def __init__(
        self,
        credentials: WeChatPayDoubleKeys | WeChatPayCredentials,
        deliver: Deliver,
        result_delay_s: float = 0.5,
    ) -> None:
        keys = credentials.double if isinstance(credentials, WeChatPayCredentials) else credentials
        self.keys = keys
        self._deliver = deliver
        self.result_delay_s = result_delay_s
        self._lock = threading.RLock()
        self.orders: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}
        self._by_prepay: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self._failures: list[tuple[int, str]] = []
        self._refund_outcome = "success"
        self._merchant_public = self._load_public(keys.merchant_public_key)
        self._wechat_private = self._load_private(keys.wechat_private_key)

    @staticmethod
    def _load_public(pem: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(pem.encode("ascii"))

    @staticmethod
    def _load_private(pem: str) -> Any:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(pem.encode("ascii"), password=None)

    # -- test controls ----------------------------------------------------------------------------

    def fail_next(self, status: int, code: str) -> None:
        """The next API call (after its signature is checked) answers ``status`` ``{"code": code}``."""
        with self._lock:
            self._failures.append((status, code))

    def plan_refund(self, outcome: str) -> None:
        """How the next refunds end: ``success`` (REFUND.SUCCESS), ``abnormal`` (REFUND.ABNORMAL) or
        ``hold`` (they stay PROCESSING)."""
        if outcome not in ("success", "abnormal", "hold"):
            raise ValueError(f"unknown refund outcome {outcome!r}")
        with self._lock:
            self._refund_outcome = outcome

    def plan_payout(self, outcome: str) -> None:
        """A no-op for WeChat: every transfer to a WeChat payee waits for the payee (WAIT_USER_CONFIRM);
        :meth:`finish_payout` ends it. Accepted for the common double interface."""
        if outcome not in _PAYOUT_OUTCOMES:
            raise ValueError(f"unknown payout outcome {outcome!r}")

    # -- the API ----------------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """One API request in (full URL incl. query, raw body), the signed answer out."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = body or b""
        after: list[Callable[[], None]] = []
        record: dict[str, Any] = {"method": method, "path": target, "verified": False}
        try:
            self._verify_request(method.upper(), target, headers, body)
            record["verified"] = True
            with self._lock:
                self.requests.append(record)
                if self._failures:
                    status, code = self._failures.pop(0)
                    raise _Refused(status, code, "injected failure")
                status, payload = self._route(method.upper(), parts.path, parse_qs(parts.query), body, headers, after)
        except _Refused as refused:
            if not record["verified"]:
                with self._lock:
                    self.requests.append(record)
            status, payload = refused.status, {"code": refused.code, "message": refused.message}
        answer = self._signed(status, payload)
        for work in after:  # results that follow the answer (computed already)
            self._later(work)
        return answer

    def _verify_request(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        lower = {str(k).lower(): v for k, v in headers.items()}
        authorization = lower.get("authorization", "")
        if not authorization.startswith(_AUTH_SCHEME):
            raise _Refused(401, "SIGN_ERROR", "签名错误: 缺少 Authorization")
        fields = dict(_AUTH_FIELD.findall(authorization[len(_AUTH_SCHEME) :]))
        if any(name not in fields for name in ("mchid", "nonce_str", "timestamp", "serial_no", "signature")):
            raise _Refused(401, "SIGN_ERROR", "签名错误: Authorization 不完整")
        if fields["mchid"] != self.keys.mchid:
            raise _Refused(401, "SIGN_ERROR", "签名错误: 商户号不符")
        if fields["serial_no"].upper() != self.keys.merchant_serial.upper():
            raise _Refused(401, "SIGN_ERROR", "签名错误: 证书序列号不符")
        if not fields["timestamp"].isdigit() or abs(int(fields["timestamp"]) - time.time()) > REQUEST_TOLERANCE_S:
            raise _Refused(401, "SIGN_ERROR", "签名错误: 时间戳过期")
        message = f"{method}\n{target}\n{fields['timestamp']}\n{fields['nonce_str']}\n".encode() + body + b"\n"
        try:
            signature = base64.b64decode(fields["signature"], validate=True)
            self._merchant_public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise _Refused(401, "SIGN_ERROR", "签名错误") from None
        serial = lower.get("wechatpay-serial")
        if serial is not None and serial != self.keys.public_key_id:
            raise _Refused(400, "INVALID_REQUEST", "Wechatpay-Serial 不是本商户的微信支付公钥ID")

    def _signed(self, status: int, payload: dict[str, Any] | None) -> Answer:
        body = b"" if status == 204 or payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        timestamp, nonce = str(int(time.time())), _nonce()
        headers = {
            "Request-ID": str(uuid.uuid4()),
            H_TIMESTAMP: timestamp,
            H_NONCE: nonce,
            H_SIGNATURE: sign_message(
                body, private_key_pem=self.keys.wechat_private_key, timestamp=timestamp, nonce=nonce
            ),
            H_SERIAL: self.keys.public_key_id,
            H_SIGNATURE_TYPE: SIGNATURE_TYPE,
        }
        if status != 204:
            headers["Content-Type"] = "application/json; charset=utf-8"
        return status, headers, body

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes,
        headers: Mapping[str, str],
        after: list[Callable[[], None]],
    ) -> tuple[int, dict[str, Any] | None]:
        routes: list[tuple[str, str, Callable[..., tuple[int, dict[str, Any] | None]]]] = [
            ("POST", r"/v3/pay/transactions/(jsapi|h5|app)", self._create),
            ("GET", r"/v3/pay/transactions/out-trade-no/([^/]+)", self._query),
            ("POST", r"/v3/pay/transactions/out-trade-no/([^/]+)/close", self._close),
            ("POST", r"/v3/refund/domestic/refunds", self._refund),
            ("GET", r"/v3/refund/domestic/refunds/([^/]+)", self._query_refund),
            ("POST", r"/v3/fund-app/mch-transfer/transfer-bills", self._transfer),
            ("GET", r"/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/([^/]+)", self._query_transfer),
            ("POST", r"/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/([^/]+)/cancel", self._cancel_transfer),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                data = self._json_body(body) if method == "POST" else {}
                return handler(*match.groups(), data=data, query=query, headers=headers, after=after)
        raise _Refused(404, "NOT_FOUND", f"no such API: {method} {path}")

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        try:
            value = json.loads(body)
        except ValueError:
            raise _Refused(400, "PARAM_ERROR", "请求体不是JSON") from None
        if not isinstance(value, dict):
            raise _Refused(400, "PARAM_ERROR", "请求体不是JSON对象")
        return value

    def _check_mchid(self, value: object) -> None:
        if value != self.keys.mchid:
            raise _Refused(400, "MCH_NOT_EXISTS", "商户号不存在或与请求不符")

    # payments

    def _create(self, kind: str, *, data: dict[str, Any], **_: Any) -> tuple[int, dict[str, Any]]:
        self._check_mchid(data.get("mchid"))
        appid = data.get("appid")
        if appid not in {self.keys.app_ids.get(app) for app in _SCENE_APPS[kind]} - {None}:
            raise _Refused(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        out_trade_no = data.get("out_trade_no")
        amount = data.get("amount") or {}
        if not isinstance(out_trade_no, str) or not out_trade_no or not isinstance(amount, dict):
            raise _Refused(400, "PARAM_ERROR", "缺少 out_trade_no 或 amount")
        if not _is_fen(amount.get("total")) or amount.get("currency", "CNY") != "CNY":
            raise _Refused(400, "PARAM_ERROR", "amount.total 必须是正整数（分），currency 为 CNY")
        for name in ("description", "notify_url"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise _Refused(400, "PARAM_ERROR", f"缺少 {name}")
        time_expire = data.get("time_expire")
        if time_expire is not None and not (isinstance(time_expire, str) and _RFC3339.fullmatch(time_expire)):
            raise _Refused(400, "PARAM_ERROR", "time_expire 格式错误")
        payer = data.get("payer") if isinstance(data.get("payer"), dict) else {}
        openid = payer.get("openid")
        if kind == "jsapi" and not openid:
            raise _Refused(400, "PARAM_ERROR", "JSAPI 下单需要 payer.openid")
        if kind == "h5":
            scene_info = data.get("scene_info") if isinstance(data.get("scene_info"), dict) else {}
            h5_info = scene_info.get("h5_info") if isinstance(scene_info.get("h5_info"), dict) else {}
            if not scene_info.get("payer_client_ip") or not h5_info.get("type"):
                raise _Refused(400, "PARAM_ERROR", "H5 下单需要 scene_info.payer_client_ip 和 h5_info.type")
        identity = (kind, appid, amount["total"], openid, data["description"])
        existing = self.orders.get(out_trade_no)
        if existing is not None:
            if existing["state"] in _PAID:
                raise _Refused(400, "ORDER_PAID", "订单已支付")
            if existing["state"] == "CLOSED":
                raise _Refused(400, "ORDER_CLOSED", "订单已关闭")
            if existing["identity"] != identity:
                raise _Refused(403, "OUT_TRADE_NO_USED", "商户订单号重复")
            order = existing
        else:
            prepay_id = "wx" + datetime.now(BEIJING).strftime("%d%H%M%S") + secrets.token_hex(13)
            order = {
                "identity": identity,
                "kind": kind,
                "appid": appid,
                "out_trade_no": out_trade_no,
                "total": amount["total"],
                "description": data["description"],
                "payer_openid": openid or f"o-double-{secrets.token_hex(8)}",
                "notify_url": data["notify_url"],
                "time_expire": time_expire,
                "payer_client_ip": (data.get("scene_info") or {}).get("payer_client_ip"),
                "prepay_id": prepay_id,
                "h5_url": (
                    f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}&package={_digits(10)}"
                    if kind == "h5"
                    else None
                ),
                "state": "NOTPAY",
                "transaction_id": None,
                "success_time": None,
                "refunded": 0,
            }
            self.orders[out_trade_no] = order
            self._by_prepay[prepay_id] = out_trade_no
        return 200, {"h5_url": order["h5_url"]} if kind == "h5" else {"prepay_id": order["prepay_id"]}

    def _order(self, out_trade_no: str) -> dict[str, Any]:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise _Refused(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def _transaction(self, order: dict[str, Any]) -> dict[str, Any]:
        """The ``transaction`` object of a query answer and of a payment notification."""
        paid = order["state"] in _PAID
        transaction: dict[str, Any] = {
            "appid": order["appid"],
            "mchid": self.keys.mchid,
            "out_trade_no": order["out_trade_no"],
            "trade_type": _TRADE_TYPES[order["kind"]],
            "trade_state": order["state"],
            "trade_state_desc": {"NOTPAY": "订单未支付", "CLOSED": "订单已关闭", "REFUND": "转入退款"}.get(
                order["state"], "支付成功"
            ),
            "attach": "",
            "payer": {"openid": order["payer_openid"]},
            "amount": {"total": order["total"], "currency": "CNY", "payer_currency": "CNY"},
        }
        if paid:
            transaction.update(
                transaction_id=order["transaction_id"], bank_type="OTHERS", success_time=order["success_time"]
            )
            transaction["amount"]["payer_total"] = order["total"]
        return transaction

    def _query(self, out_trade_no: str, *, query: dict[str, list[str]], **_: Any) -> tuple[int, dict[str, Any]]:
        self._check_mchid((query.get("mchid") or [None])[0])
        return 200, self._transaction(self._order(out_trade_no))

    def _close(self, out_trade_no: str, *, data: dict[str, Any], **_: Any) -> tuple[int, None]:
        self._check_mchid(data.get("mchid"))
        order = self._order(out_trade_no)
        if order["state"] in _PAID:
            raise _Refused(400, "ORDER_PAID", "订单已支付")
        if order["state"] == "CLOSED":
            raise _Refused(400, "ORDER_CLOSED", "订单已关闭")
        order["state"] = "CLOSED"
        return 204, None

    # refunds

    def _refund(self, *, data: dict[str, Any], after: list[Callable[[], None]], **_: Any) -> tuple[int, dict[str, Any]]:
        out_refund_no, out_trade_no = data.get("out_refund_no"), data.get("out_trade_no")
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        if not isinstance(out_refund_no, str) or not out_refund_no or not isinstance(out_trade_no, str):
            raise _Refused(400, "PARAM_ERROR", "缺少 out_refund_no 或 out_trade_no")
        if not _is_fen(amount.get("refund")) or not _is_fen(amount.get("total")) or amount.get("currency") != "CNY":
            raise _Refused(400, "PARAM_ERROR", "amount.refund/total 必须是正整数（分），currency 为 CNY")
        existing = self.refunds.get(out_refund_no)
        if existing is not None:
            same = (existing["out_trade_no"], existing["amount"], existing["total"]) == (
                out_trade_no,
                amount["refund"],
                amount["total"],
            )
            if not same:
                raise _Refused(400, "INVALID_REQUEST", "同一退款单号的请求参数不一致")
            return 200, self._refund_body(existing)
        order = self.orders.get(out_trade_no)
        if order is None:
            raise _Refused(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        if order["state"] not in _PAID:
            raise _Refused(400, "INVALID_REQUEST", "订单未支付，不能退款")
        if amount["total"] != order["total"]:
            raise _Refused(400, "INVALID_REQUEST", "订单金额与原订单不符")
        if amount["refund"] > order["total"] - order["refunded"]:
            raise _Refused(403, "NOT_ENOUGH", "可退金额不足")
        outcome = self._refund_outcome
        refund = {
            "out_refund_no": out_refund_no,
            "out_trade_no": out_trade_no,
            "transaction_id": order["transaction_id"],
            "refund_id": "50" + _digits(30),
            "amount": amount["refund"],
            "total": order["total"],
            "notify_url": data.get("notify_url") or order["notify_url"],
            "status": "PROCESSING",
            "create_time": _wechat_time(),
            "success_time": None,
        }
        self.refunds[out_refund_no] = refund
        order["refunded"] += amount["refund"]
        order["state"] = "REFUND"
        if outcome != "hold":
            final = "SUCCESS" if outcome == "success" else "ABNORMAL"
            after.append(lambda: self._finish_refund(out_refund_no, final))
        return 200, self._refund_body(refund)

    def _refund_body(self, refund: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "refund_id": refund["refund_id"],
            "out_refund_no": refund["out_refund_no"],
            "transaction_id": refund["transaction_id"],
            "out_trade_no": refund["out_trade_no"],
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": refund["create_time"],
            "status": refund["status"],
            "funds_account": "AVAILABLE",
            "amount": {
                "total": refund["total"],
                "refund": refund["amount"],
                "payer_total": refund["total"],
                "payer_refund": refund["amount"],
                "settlement_total": refund["total"],
                "settlement_refund": refund["amount"],
                "discount_refund": 0,
                "currency": "CNY",
            },
        }
        if refund["success_time"]:
            body["success_time"] = refund["success_time"]
        return body

    def _query_refund(self, out_refund_no: str, **_: Any) -> tuple[int, dict[str, Any]]:
        refund = self.refunds.get(out_refund_no)
        if refund is None:
            raise _Refused(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return 200, self._refund_body(refund)

    def _finish_refund(self, out_refund_no: str, final: str) -> None:
        with self._lock:
            refund = self.refunds[out_refund_no]
            if refund["status"] != "PROCESSING":
                return
            refund["status"] = final
            if final == "SUCCESS":
                refund["success_time"] = _wechat_time()
            resource = {
                "mchid": self.keys.mchid,
                "transaction_id": refund["transaction_id"],
                "out_trade_no": refund["out_trade_no"],
                "refund_id": refund["refund_id"],
                "out_refund_no": out_refund_no,
                "refund_status": final,
                "user_received_account": "支付用户零钱",
                "amount": {
                    "total": refund["total"],
                    "refund": refund["amount"],
                    "payer_total": refund["total"],
                    "payer_refund": refund["amount"],
                },
            }
            if refund["success_time"]:
                resource["success_time"] = refund["success_time"]
            summary = "退款成功" if final == "SUCCESS" else "退款异常"
            url = refund["notify_url"]
        self._notify(url, f"REFUND.{final}", summary, resource, "refund")

    # transfers (商家转账)

    def _transfer(self, *, data: dict[str, Any], headers: Mapping[str, str], **_: Any) -> tuple[int, dict[str, Any]]:
        appid, out_bill_no = data.get("appid"), data.get("out_bill_no")
        if appid not in {v for v in self.keys.app_ids.values() if v}:
            raise _Refused(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        if not isinstance(out_bill_no, str) or not out_bill_no:
            raise _Refused(400, "PARAM_ERROR", "缺少 out_bill_no")
        if data.get("transfer_scene_id") != self.keys.transfer_scene_id:
            raise _Refused(400, "PARAM_ERROR", "转账场景未开通")
        if not _is_fen(data.get("transfer_amount")) or not data.get("openid") or not data.get("transfer_remark"):
            raise _Refused(400, "PARAM_ERROR", "缺少 openid、transfer_amount 或 transfer_remark")
        infos = data.get("transfer_scene_report_infos") or []
        reported = {info.get("info_type") for info in infos if isinstance(info, dict) and info.get("info_content")}
        if not _REQUIRED_REPORT_INFOS.get(self.keys.transfer_scene_id, frozenset()) <= reported:
            raise _Refused(400, "PARAM_ERROR", "转账场景报备信息不完整")
        user_name = self._decrypt_user_name(data.get("user_name"), headers)
        identity = (appid, data["openid"], data["transfer_amount"])
        existing = self.transfers.get(out_bill_no)
        if existing is not None:
            if existing["identity"] != identity:
                raise _Refused(400, "INVALID_REQUEST", "同一商户单号的请求参数不一致")
            transfer = existing
        else:
            now = _wechat_time()
            transfer = {
                "identity": identity,
                "out_bill_no": out_bill_no,
                "transfer_bill_no": "1330000071100" + _digits(27),
                "appid": appid,
                "openid": data["openid"],
                "user_name": user_name,
                "transfer_amount": data["transfer_amount"],
                "transfer_remark": data["transfer_remark"],
                "transfer_scene_report_infos": infos,
                "notify_url": data.get("notify_url"),
                "state": "WAIT_USER_CONFIRM",
                "package_info": base64.b64encode(secrets.token_bytes(48)).decode("ascii"),
                "fail_reason": None,
                "create_time": now,
                "update_time": now,
            }
            self.transfers[out_bill_no] = transfer
        answer = {
            "out_bill_no": out_bill_no,
            "transfer_bill_no": transfer["transfer_bill_no"],
            "create_time": transfer["create_time"],
            "state": transfer["state"],
        }
        if transfer["state"] == "WAIT_USER_CONFIRM":
            answer["package_info"] = transfer["package_info"]
        if transfer["fail_reason"]:
            answer["fail_reason"] = transfer["fail_reason"]
        return 200, answer

    def _decrypt_user_name(self, user_name: object, headers: Mapping[str, str]) -> str | None:
        """``user_name`` must be RSA-OAEP (SHA-1) under the WeChat Pay public key, named by ``Wechatpay-Serial``."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if user_name is None:
            return None
        serial = {str(k).lower(): v for k, v in headers.items()}.get("wechatpay-serial")
        if serial != self.keys.public_key_id:
            raise _Refused(400, "PARAM_ERROR", "敏感信息加密需要 Wechatpay-Serial")
        try:
            plain = self._wechat_private.decrypt(
                base64.b64decode(str(user_name), validate=True),
                padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
            )
            return plain.decode("utf-8")
        except ValueError:
            raise _Refused(400, "PARAM_ERROR", "user_name 解密失败") from None

    def _transfer_body(self, transfer: dict[str, Any]) -> dict[str, Any]:
        body = {
            "mch_id": self.keys.mchid,
            "out_bill_no": transfer["out_bill_no"],
            "transfer_bill_no": transfer["transfer_bill_no"],
            "appid": transfer["appid"],
            "state": transfer["state"],
            "transfer_amount": transfer["transfer_amount"],
            "transfer_remark": transfer["transfer_remark"],
            "openid": transfer["openid"],
            "create_time": transfer["create_time"],
            "update_time": transfer["update_time"],
        }
        if transfer["fail_reason"]:
            body["fail_reason"] = transfer["fail_reason"]
        return body

    def _transfer_of(self, out_bill_no: str) -> dict[str, Any]:
        transfer = self.transfers.get(out_bill_no)
        if transfer is None:
            raise _Refused(404, "NOT_FOUND", "记录不存在")
        return transfer

    def _query_transfer(self, out_bill_no: str, **_: Any) -> tuple[int, dict[str, Any]]:
        return 200, self._transfer_body(self._transfer_of(out_bill_no))

    def _cancel_transfer(
        self, out_bill_no: str, *, after: list[Callable[[], None]], **_: Any
    ) -> tuple[int, dict[str, Any]]:
        transfer = self._transfer_of(out_bill_no)
        if transfer["state"] in ("SUCCESS", "FAIL"):
            raise _Refused(400, "INVALID_REQUEST", "转账单已是终态，不能撤销")
        if transfer["state"] not in ("CANCELLED", "CANCELING"):
            transfer["state"], transfer["update_time"] = "CANCELING", _wechat_time()
            after.append(lambda: self._finish_transfer(out_bill_no, "CANCELLED", None, quiet=True))
        return 200, {
            "out_bill_no": out_bill_no,
            "transfer_bill_no": transfer["transfer_bill_no"],
            "state": transfer["state"],
            "update_time": transfer["update_time"],
        }

    def _finish_transfer(self, out_bill_no: str, state: str, fail_reason: str | None, *, quiet: bool = False) -> None:
        """Move a bill to a final ``state`` and notify; a final bill is a ``ValueError`` (``quiet``: left alone)."""
        with self._lock:
            transfer = self.transfers[out_bill_no]
            if transfer["state"] in _FINAL_TRANSFER:
                if quiet:
                    return
                raise ValueError(f"transfer {out_bill_no} is final already ({transfer['state']})")
            transfer.update(state=state, fail_reason=fail_reason, update_time=_wechat_time())
            resource: dict[str, Any] = {
                "out_bill_no": out_bill_no,
                "transfer_bill_no": transfer["transfer_bill_no"],
                "state": state,
                "mch_id": self.keys.mchid,
                "transfer_amount": transfer["transfer_amount"],
                "openid": transfer["openid"],
            }
            if fail_reason:
                resource["fail_reason"] = fail_reason
            resource.update(create_time=transfer["create_time"], update_time=transfer["update_time"])
            url = transfer["notify_url"]
        if url:
            self._notify(url, "MCHTRANSFER.BILL.FINISHED", "商家转账单据终态通知", resource, "mch_payment")

    # -- the people on WeChat's side -----------------------------------------------------------------

    def pay(self, client_params: Mapping[str, Any]) -> None:
        """The payer pays with exactly what our ``create_payment`` returned; WeChat notifies TRANSACTION.SUCCESS.

        JSAPI (``package``) and APP (``prepayId``) parameters must carry our valid ``paySign``/``sign``
        (the payer's WeChat refuses them otherwise): ``ValueError``. ``KeyError`` for an unknown order.
        """
        prepay_id = self._prepay_id_of(client_params)
        with self._lock:
            out_trade_no = self._by_prepay.get(prepay_id)
            if out_trade_no is None:
                raise KeyError(f"no order with prepay_id {prepay_id}")
            order = self.orders[out_trade_no]
            if order["kind"] != "h5":
                self._check_client_signature(order, client_params)
            if order["state"] != "NOTPAY":
                raise ValueError(f"order {out_trade_no} is {order['state']}, it cannot be paid")
            order.update(state="SUCCESS", transaction_id="4200" + _digits(24), success_time=_wechat_time())
            resource, url = self._transaction(order), order["notify_url"]
        self._notify(url, "TRANSACTION.SUCCESS", "支付成功", resource, "transaction")

    @staticmethod
    def _prepay_id_of(client_params: Mapping[str, Any]) -> str:
        package = client_params.get("package")
        if isinstance(package, str) and package.startswith("prepay_id="):
            return package.removeprefix("prepay_id=")
        for name in ("prepayId", "prepayid"):
            if isinstance(client_params.get(name), str):
                return client_params[name]
        h5_url = client_params.get("h5_url")
        if isinstance(h5_url, str):
            found = parse_qs(urlsplit(h5_url).query).get("prepay_id")
            if found:
                return found[0]
        raise ValueError("client_params name no prepay_id (package, prepayId or h5_url)")

    def _check_client_signature(self, order: dict[str, Any], params: Mapping[str, Any]) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if order["kind"] == "app":
            if params.get("partnerId") != self.keys.mchid or params.get("packageValue") != "Sign=WXPay":
                raise ValueError("PayReq partnerId/packageValue do not match")
            fields, signature = (
                [params.get(n) for n in ("appId", "timeStamp", "nonceStr", "prepayId")],
                params.get("sign"),
            )
        else:
            if params.get("signType") != "RSA":
                raise ValueError("signType must be RSA")
            fields = [params.get(n) for n in ("appId", "timeStamp", "nonceStr", "package")]
            signature = params.get("paySign")
        if fields[0] != order["appid"] or not all(isinstance(f, str) and f for f in fields):
            raise ValueError("client parameters name another appid or lack a field")
        message = "".join(f"{f}\n" for f in fields).encode("utf-8")
        try:
            raw = base64.b64decode(str(signature), validate=True)
            self._merchant_public.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise ValueError("the client parameters' signature does not verify with the merchant key") from None

    def finish_payout(self, out_bill_no: str, outcome: str) -> None:
        """The payee confirms (``success`` → SUCCESS) or the transfer fails (``fail`` → FAIL,
        PAYEE_ACCOUNT_ABNORMAL); WeChat sends MCHTRANSFER.BILL.FINISHED. ``KeyError`` for an
        unknown bill, ``ValueError`` for a final one or another outcome."""
        if outcome not in _PAYOUT_OUTCOMES:
            raise ValueError(f"unknown payout outcome {outcome!r}")
        state, fail_reason = _PAYOUT_OUTCOMES[outcome]
        with self._lock:
            if out_bill_no not in self.transfers:
                raise KeyError(f"no transfer {out_bill_no}")
        self._finish_transfer(out_bill_no, state, fail_reason)

    # -- notifications -------------------------------------------------------------------------------

    def _notify(self, url: str, event_type: str, summary: str, resource: dict[str, Any], associated_data: str) -> None:
        event = {
            "id": str(uuid.uuid4()),
            "create_time": _wechat_time(),
            "event_type": event_type,
            "summary": summary,
        }
        headers, body = sign_notification(
            event,
            resource,
            private_key_pem=self.keys.wechat_private_key,
            serial=self.keys.public_key_id,
            api_v3_key=self.keys.apiv3_key.encode("utf-8"),
            timestamp=int(time.time()),
            nonce=_nonce(),
            associated_data=associated_data,
        )
        try:
            status, text = self._deliver(url, headers, body)
        except Exception as error:  # a notification that fails to leave is what WeChat would retry
            status, text = 0, f"{type(error).__name__}: {error}"
        with self._lock:
            self.deliveries.append(
                {
                    "url": url,
                    "event_type": event_type,
                    "event_id": event["id"],
                    "headers": headers,
                    "body": body,
                    "status": status,
                    "answer": text,
                }
            )

    def _later(self, work: Callable[[], None]) -> None:
        if self.result_delay_s <= 0:
            work()
            return

        def run() -> None:
            threading.Event().wait(self.result_delay_s)
            try:
                work()
            except Exception:  # a background result must not kill the thread loudly
                return

        threading.Thread(target=run, name="wechatpay-double-result", daemon=True).start()
