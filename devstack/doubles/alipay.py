"""Alipay's open-platform gateway (certificate mode, RSA2) and its notifications, played locally.

Why a double and not a mock: the production adapter (``chalicelib.payments.alipay``) signs with
``python-alipay-sdk``'s ``DCAliPay`` and verifies Alipay's answers and notifications. Only a peer
that checks and signs exactly as Alipay does proves that code right without a merchant account:

* **Requests** (GET, or POST form, to ``…/gateway.do``): every parameter except ``sign`` — with
  ``sign_type`` *included* and empty values left out — sorted by key, joined as ``k=v`` with the
  decoded values, verified SHA256withRSA with the public key of OUR app certificate. The
  ``app_cert_sn`` and ``alipay_root_cert_sn`` parameters must be the serial numbers of our app
  certificate and of the RSA-signed members of the root chain (md5 of issuer DN + decimal serial,
  Alipay's rule, computed here independently of the SDK), and ``timestamp`` must be Beijing time
  within 15 minutes.
* **Answers**: ``{"<method, dots as underscores>_response":{…},"alipay_cert_sn":"…","sign":"…"}``
  with ``sign`` over the exact bytes of the response object as it appears in the body, made with
  the "Alipay" private key whose certificate our adapter holds. Gateway-level refusals (signature,
  app id, certificate serials, method) come back as an unsigned ``error_response``.
* **Notifications**: form-encoded POSTs to the order's ``notify_url`` with the fields Alipay sends,
  signed over the sorted ``k=v`` of every field except ``sign`` and ``sign_type``.

Money follows Alipay: yuan strings with two decimals on the wire, integer fen in the double's books.
Implemented: ``alipay.trade.query``, ``.close``, ``.refund`` (idempotent per ``out_request_no``; a
repeat answers ``fund_change=N`` as Alipay does), ``.fastpay.refund.query``,
``alipay.fund.trans.uni.transfer`` (idempotent per ``out_biz_no``) and ``.common.query``.

Example
-------
>>> credentials = make_credentials(gateway="https://openapi.alipay.test/gateway.do")  # doctest: +SKIP
>>> double = AlipayDouble(credentials, deliver=post_form)  # doctest: +SKIP
>>> status, headers, body = double.handle("POST", url, request_headers, request_body)  # doctest: +SKIP
>>> double.pay(intent.client_params)  # the payer pays; the signed TRADE_SUCCESS is POSTed  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from chalicelib.clock import SHANGHAI

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

    Deliver = Callable[[str, dict[str, str], bytes], tuple[int, str]]

__all__ = [
    "AlipayCredentials",
    "AlipayDouble",
    "AlipayDoubleError",
    "AlipayDoubleKeys",
    "Delivery",
    "cert_sn",
    "make_credentials",
    "root_cert_sn",
]

DEFAULT_GATEWAY = "https://openapi.alipay.test/gateway.do"
DEFAULT_APP_ID = "2021000000000001"
DEFAULT_SELLER_ID = "2088000000000001"
TIMESTAMP_TOLERANCE = timedelta(minutes=15)
FORM = "application/x-www-form-urlencoded; charset=utf-8"
_TIME = "%Y-%m-%d %H:%M:%S"
_YUAN = re.compile(r"(0|[1-9][0-9]{0,9})(?:\.([0-9]{1,2}))?")
# Signature algorithms Alipay counts in alipay_root_cert_sn: RSA ones (rsaEncryption, md2/md5/sha1/
# sha256/sha384/sha512 with RSA); the chain's other roots (SM2 in Alipay's real file) are skipped.
_CASHIER_PRODUCTS = {"alipay.trade.wap.pay": "QUICK_WAP_PAY", "alipay.trade.app.pay": "QUICK_MSECURITY_PAY"}
_RSA_SIGNATURE_OIDS = frozenset(f"1.2.840.113549.1.1.{n}" for n in (1, 2, 4, 5, 11, 12, 13))


class AlipayDoubleError(RuntimeError):
    """Something the double was asked to do that Alipay would not (pay a closed order, …)."""


# --- key material -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlipayDoubleKeys:
    """What the double holds: Alipay's private key and certificate, and what Alipay knows of us."""

    app_id: str
    seller_id: str
    gateway: str
    alipay_private_key: str
    alipay_cert: str
    alipay_root_cert: str
    app_cert: str
    bank_card_product_code: str


@dataclass(frozen=True)
class AlipayCredentials:
    """``double`` for :class:`AlipayDouble`; ``config_env`` and ``secret`` for our side."""

    double: AlipayDoubleKeys
    config_env: dict[str, str]
    secret: dict[str, Any]


def _rsa_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_pem(key: RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _name(organization: str, unit: str, common_name: str) -> x509.Name:
    # C, O, OU, CN in this order: the DN string Alipay hashes reads "CN=…,OU=…,O=…,C=CN".
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name,
    public_key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool,
    algorithm: hashes.HashAlgorithm | None = None,
) -> str:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    certificate = builder.sign(issuer_key, algorithm or hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def make_credentials(
    *,
    app_id: str = DEFAULT_APP_ID,
    seller_id: str = DEFAULT_SELLER_ID,
    gateway: str = DEFAULT_GATEWAY,
    bank_card_product_code: str = "TRANS_BANKCARD_NO_PWD",
) -> AlipayCredentials:
    """Generate, offline, everything certificate mode needs: an "Alipay" root CA (self-signed,
    sha256WithRSA) plus an ECDSA root beside it in the chain (Alipay's real chain holds a non-RSA
    root that the root serial number skips), the Alipay public-key certificate and our app
    certificate issued by the RSA root, the app private key and the Alipay private key.

    ``config_env`` holds ALIPAY_APP_ID, ALIPAY_SELLER_ID, ALIPAY_GATEWAY and
    ALIPAY_BANKCARD_PRODUCT_CODE; ``secret`` the JSON object of the alipay channel secret
    (``app_private_key``, ``app_cert``, ``alipay_cert``, ``alipay_root_cert``).
    """
    root_key, alipay_key, app_key = _rsa_key(), _rsa_key(), _rsa_key()
    root_name = _name("Alipay Double", "Certification Authority", "Alipay Double Root CA R1")
    root_pem = _certificate(root_name, root_key.public_key(), root_name, root_key, ca=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_name = _name("Alipay Double", "Certification Authority", "Alipay Double Root CA E1")
    ec_root_pem = _certificate(ec_name, ec_key.public_key(), ec_name, ec_key, ca=True)
    alipay_pem = _certificate(
        _name("Alipay Double", "Alipay", f"Alipay Public Key {seller_id}"),
        alipay_key.public_key(),
        root_name,
        root_key,
        ca=False,
    )
    app_pem = _certificate(
        _name("Alipay Double", "Alipay", app_id), app_key.public_key(), root_name, root_key, ca=False
    )
    chain = f"{root_pem.strip()}\n\n{ec_root_pem.strip()}\n"  # Alipay's file: one blank line between certificates
    keys = AlipayDoubleKeys(
        app_id=app_id,
        seller_id=seller_id,
        gateway=gateway,
        alipay_private_key=_private_pem(alipay_key),
        alipay_cert=alipay_pem,
        alipay_root_cert=chain,
        app_cert=app_pem,
        bank_card_product_code=bank_card_product_code,
    )
    config_env = {
        "ALIPAY_APP_ID": app_id,
        "ALIPAY_SELLER_ID": seller_id,
        "ALIPAY_GATEWAY": gateway,
        "ALIPAY_BANKCARD_PRODUCT_CODE": bank_card_product_code,
    }
    secret = {
        "app_private_key": _private_pem(app_key),
        "app_cert": app_pem,
        "alipay_cert": alipay_pem,
        "alipay_root_cert": chain,
    }
    return AlipayCredentials(double=keys, config_env=config_env, secret=secret)


def _load_certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode("ascii"))


def cert_sn(pem: str) -> str:
    """Alipay's serial number of a certificate: md5 hex of the issuer DN (``CN=…,OU=…,O=…,C=…``)
    followed by the decimal serial."""
    certificate = _load_certs(pem)[0]
    text = certificate.issuer.rfc4514_string() + str(certificate.serial_number)
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def root_cert_sn(pem_chain: str) -> str:
    """Alipay's ``alipay_root_cert_sn``: the serial numbers of the RSA-signed roots, joined by ``_``."""
    parts = []
    for certificate in _load_certs(pem_chain):
        if certificate.signature_algorithm_oid.dotted_string in _RSA_SIGNATURE_OIDS:
            text = certificate.issuer.rfc4514_string() + str(certificate.serial_number)
            parts.append(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest())
    return "_".join(parts)


# --- state --------------------------------------------------------------------------------------


@dataclass
class _Trade:
    out_trade_no: str
    trade_no: str
    total_fen: int
    subject: str
    notify_url: str | None
    status: str
    buyer_id: str
    gmt_create: str
    gmt_payment: str | None = None
    gmt_close: str | None = None
    refunded_fen: int = 0


@dataclass
class _Refund:
    out_request_no: str
    out_trade_no: str
    amount_fen: int
    done: bool
    gmt_refund: str | None = None


@dataclass
class _Transfer:
    out_biz_no: str
    order_id: str
    pay_fund_order_id: str
    amount_fen: int
    product_code: str
    fingerprint: tuple[str, ...]
    status: str
    trans_date: str
    pay_date: str | None = None
    error_code: str | None = None
    fail_reason: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One notification the double POSTed, and what we answered."""

    url: str
    params: dict[str, str]
    body: bytes
    status: int
    answer: str


@dataclass
class _Rejected(Exception):  # noqa: N818 - internal control flow: the gateway refuses the request
    code: str
    sub_code: str
    sub_msg: str
    msg: str = "Invalid Arguments"


def _yuan(fen: int) -> str:
    whole, cents = divmod(fen, 100)
    return f"{whole}.{cents:02d}"


def _fen(text: object) -> int | None:
    match = _YUAN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    return int(match.group(1)) * 100 + int((match.group(2) or "").ljust(2, "0"))


def _now() -> datetime:
    return datetime.now(SHANGHAI)


def _stamp(instant: datetime | None = None) -> str:
    return (instant or _now()).strftime(_TIME)


def _digits(count: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(count))


# --- the double ---------------------------------------------------------------------------------


class AlipayDouble:
    """Alipay as our adapter meets it. Thread-safe: state sits in dicts under one lock, and
    notifications are sent outside it (from a daemon thread after ``result_delay_s`` for
    asynchronous results, or inline when ``synchronous``)."""

    channel = "alipay"

    def __init__(
        self,
        credentials: AlipayCredentials | AlipayDoubleKeys,
        deliver: Deliver,
        result_delay_s: float = 0.5,
        *,
        synchronous: bool = False,
    ) -> None:
        keys = credentials.double if isinstance(credentials, AlipayCredentials) else credentials
        self.keys = keys
        self._deliver = deliver
        self.result_delay_s = result_delay_s
        self.synchronous = synchronous
        self._alipay_key = serialization.load_pem_private_key(keys.alipay_private_key.encode("ascii"), password=None)
        app_public = _load_certs(keys.app_cert)[0].public_key()
        if not isinstance(app_public, rsa.RSAPublicKey):
            raise ValueError("the app certificate must hold an RSA key")
        self._app_public: RSAPublicKey = app_public
        self.alipay_cert_sn = cert_sn(keys.alipay_cert)
        self.app_cert_sn = cert_sn(keys.app_cert)
        self.alipay_root_cert_sn = root_cert_sn(keys.alipay_root_cert)
        self._gateway_path = urlsplit(keys.gateway).path or "/gateway.do"
        self._lock = threading.RLock()
        self._trades: dict[str, _Trade] = {}
        self._refunds: dict[tuple[str, str], _Refund] = {}
        self._transfers: dict[str, _Transfer] = {}
        self._planned_payouts: list[str] = []
        self._planned_refunds: list[str] = []
        self._planned_errors: dict[str, list[tuple[str, str]]] = {}
        self._sent: dict[str, tuple[str, dict[str, str]]] = {}
        self._threads: list[threading.Thread] = []
        self.requests: list[dict[str, str]] = []
        """Every verified request (its decoded parameters), in order."""
        self.rejections: list[str] = []
        """The sub_code of every request the gateway refused before any business logic."""
        self.deliveries: list[Delivery] = []

    # -- test controls ---------------------------------------------------------------------------

    def plan_payout(self, outcome: str) -> None:
        """The outcome the NEXT new transfer to an Alipay account answers: ``success`` (SUCCESS) or
        ``fail`` (40004 PAYEE_USER_INFO_ERROR). Bank-card transfers answer DEALING and end with
        :meth:`finish_payout`, so a plan is never taken by a card transfer running meanwhile."""
        if outcome not in ("success", "fail"):
            raise ValueError(f"unknown payout outcome {outcome!r}")
        with self._lock:
            self._planned_payouts.append(outcome)

    def plan_refund(self, outcome: str) -> None:
        """The outcome the NEXT new refund answers: ``success`` (``fund_change=Y``) or ``pending``
        (``code=10000``, ``fund_change=N``; the money moves ``result_delay_s`` later)."""
        if outcome not in ("success", "pending"):
            raise ValueError(f"unknown refund outcome {outcome!r}")
        with self._lock:
            self._planned_refunds.append(outcome)

    def plan_error(self, method: str, code: str = "40004", sub_code: str = "ACQ.SYSTEM_ERROR") -> None:
        """The next call of ``method`` (e.g. ``alipay.trade.refund``) answers this signed error and
        changes nothing (``code="20000"`` plays "service unavailable")."""
        with self._lock:
            self._planned_errors.setdefault(method, []).append((code, sub_code))

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait for the notifications sent in the background."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [thread for thread in self._threads if thread.is_alive()]
                self._threads = threads
            if not threads:
                return
            threads[0].join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                raise TimeoutError("the Alipay double is still sending notifications")

    def trade(self, out_trade_no: str) -> dict[str, Any] | None:
        """The double's record of a trade (for assertions)."""
        with self._lock:
            found = self._trades.get(out_trade_no)
            return None if found is None else dict(found.__dict__)

    # -- signatures ------------------------------------------------------------------------------

    def sign(self, content: str, private_key_pem: str | None = None) -> str:
        """Base64 SHA256withRSA of ``content`` with Alipay's key (or the given one, to forge)."""
        key = self._alipay_key
        if private_key_pem is not None:
            key = serialization.load_pem_private_key(private_key_pem.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("an RSA private key is needed")
        return base64.b64encode(key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()

    @staticmethod
    def notification_content(params: Mapping[str, str]) -> str:
        """What Alipay signs in a notification: every field but ``sign`` and ``sign_type``, sorted."""
        return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))

    def signed_notification(self, params: Mapping[str, str]) -> bytes:
        """``params`` signed as Alipay signs notifications, form-encoded as Alipay POSTs them."""
        fields = {k: v for k, v in params.items() if k != "sign"}
        fields["sign"] = self.sign(self.notification_content(fields))
        return urlencode(fields).encode("ascii")

    def _verify_request(self, params: Mapping[str, str]) -> None:
        """Check one request as the gateway does; raise ``_Rejected`` with Alipay's sub_code."""
        for name in ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version"):
            if not params.get(name):
                raise _Rejected(
                    "40001", f"isv.missing-{name.replace('_', '-')}", f"缺少{name}参数", "Missing Required Arguments"
                )
        if params["app_id"] != self.keys.app_id:
            raise _Rejected("40002", "isv.invalid-app-id", "无效的AppID参数")
        if params["charset"].lower() != "utf-8":
            raise _Rejected("40002", "isv.invalid-charset", "字符集错误")
        if params["sign_type"] != "RSA2":
            raise _Rejected("40002", "isv.invalid-signature-type", "无效的签名类型")
        if params.get("app_cert_sn") != self.app_cert_sn:
            raise _Rejected("40002", "isv.app-cert-sn-mismatch", "应用公钥证书SN不匹配")
        if params.get("alipay_root_cert_sn") != self.alipay_root_cert_sn:
            raise _Rejected("40002", "isv.alipay-root-cert-sn-mismatch", "支付宝根证书SN不匹配")
        try:
            sent_at = datetime.strptime(params["timestamp"], _TIME).replace(tzinfo=SHANGHAI)
        except ValueError:
            raise _Rejected("40002", "isv.invalid-timestamp", "非法的时间戳参数") from None
        if abs(sent_at - _now()) > TIMESTAMP_TOLERANCE:
            raise _Rejected("40002", "isv.invalid-timestamp", "时间戳与支付宝服务器时间相差过大")
        # Requests: sign_type IS signed; empty values are not.
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")
        try:
            signature = base64.b64decode(params["sign"], validate=True)
            self._app_public.verify(signature, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            raise _Rejected("40002", "isv.invalid-signature", "验签出错") from None

    # -- the gateway -----------------------------------------------------------------------------

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Alipay's gateway: one HTTP request in, the signed JSON answer out."""
        parts = urlsplit(url)
        if parts.path != self._gateway_path or method.upper() not in ("GET", "POST"):
            return 404, {"Content-Type": "text/plain"}, b"not found"
        try:
            sources = [parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False, errors="strict")]
            if method.upper() == "POST" and body:
                text = body.decode("utf-8")
                sources.append(parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            return self._gateway_error(_Rejected("40002", "isv.invalid-request", "请求格式错误"))
        # The gateway reads the query and the form body together (``charset`` in the URL tells it how to
        # decode the body, and is signed in the body too): the same value twice is one parameter.
        params: dict[str, str] = {}
        for pairs in sources:
            seen: set[str] = set()
            for key, value in pairs:
                if key in seen or (key in params and params[key] != value):
                    return self._gateway_error(_Rejected("40002", "isv.duplicate-parameter", f"参数{key}重复"))
                seen.add(key)
                params[key] = value
        try:
            self._verify_request(params)
        except _Rejected as rejected:
            return self._gateway_error(rejected)
        api = params["method"]
        if api in _CASHIER_PRODUCTS:  # the payer's browser opens the signed wap url: the cashier
            try:
                biz = self._checked_order(params)
            except AlipayDoubleError as error:
                return 400, {"Content-Type": "text/plain;charset=utf-8"}, str(error).encode("utf-8")
            with self._lock:
                trade = self._open(params, biz)
            page = f"<html><body>Alipay double cashier: {trade.out_trade_no} {_yuan(trade.total_fen)}</body></html>"
            return 200, {"Content-Type": "text/html;charset=utf-8"}, page.encode("utf-8")
        handler = self._apis().get(api)
        if handler is None:
            return self._gateway_error(_Rejected("40002", "isv.invalid-method", "不存在的方法名"))
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            biz = None
        if not isinstance(biz, dict):
            return self._gateway_error(_Rejected("40002", "isv.invalid-biz-content", "biz_content格式错误"))
        with self._lock:
            self.requests.append(dict(params))
            planned = self._planned_errors.get(api)
            if planned:
                code, sub_code = planned.pop(0)
                msg = "Service Currently Unavailable" if code == "20000" else "Business Failed"
                answer: dict[str, Any] = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": "系统繁忙"}
                later: list[Callable[[], None]] = []
            else:
                answer, later = handler(biz)
        for work in later:
            self._in_background(work)
        return self._answer(api, answer)

    def _apis(self) -> dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[Callable[[], None]]]]]:
        return {
            "alipay.trade.query": self._trade_query,
            "alipay.trade.close": self._trade_close,
            "alipay.trade.refund": self._trade_refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
            "alipay.fund.trans.uni.transfer": self._uni_transfer,
            "alipay.fund.trans.common.query": self._transfer_query,
        }

    def _answer(self, api: str, answer: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        content = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        key = api.replace(".", "_") + "_response"
        text = f'{{"{key}":{content},"alipay_cert_sn":"{self.alipay_cert_sn}","sign":"{self.sign(content)}"}}'
        return 200, {"Content-Type": "text/html;charset=utf-8"}, text.encode("utf-8")

    def _gateway_error(self, rejected: _Rejected) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.rejections.append(rejected.sub_code)
        error = {"code": rejected.code, "msg": rejected.msg, "sub_code": rejected.sub_code, "sub_msg": rejected.sub_msg}
        text = json.dumps(
            {"error_response": error, "alipay_cert_sn": self.alipay_cert_sn}, ensure_ascii=False, separators=(",", ":")
        )
        return 200, {"Content-Type": "text/html;charset=utf-8"}, text.encode("utf-8")

    @staticmethod
    def _business_error(sub_code: str, sub_msg: str) -> dict[str, Any]:
        return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}

    # -- trades ----------------------------------------------------------------------------------

    def _trade_fields(self, trade: _Trade) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "159****5620",
            "trade_status": trade.status,
            "total_amount": _yuan(trade.total_fen),
            "buyer_user_id": trade.buyer_id,
        }
        if trade.gmt_payment is not None:
            fields.update(
                send_pay_date=trade.gmt_payment,
                receipt_amount=_yuan(trade.total_fen),
                buyer_pay_amount=_yuan(trade.total_fen),
                point_amount="0.00",
                invoice_amount=_yuan(trade.total_fen),
                fund_bill_list=[{"amount": _yuan(trade.total_fen), "fund_channel": "ALIPAYACCOUNT"}],
            )
        return fields

    def _trade_query(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        trade = self._find_trade(biz)
        if trade is None:
            return self._business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"), []
        return self._trade_fields(trade), []

    def _find_trade(self, biz: dict[str, Any]) -> _Trade | None:
        if biz.get("out_trade_no"):
            return self._trades.get(str(biz["out_trade_no"]))
        for trade in self._trades.values():
            if trade.trade_no == biz.get("trade_no"):
                return trade
        return None

    def _trade_close(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        trade = self._find_trade(biz)
        if trade is None:
            return self._business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"), []
        if trade.status != "WAIT_BUYER_PAY":
            return self._business_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"), []
        trade.status, trade.gmt_close = "TRADE_CLOSED", _stamp()
        return {"code": "10000", "msg": "Success", "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}, []

    # -- refunds ---------------------------------------------------------------------------------

    def _trade_refund(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        trade = self._find_trade(biz)
        if trade is None:
            return self._business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"), []
        amount = _fen(biz.get("refund_amount"))
        if amount is None or amount <= 0:
            return self._business_error("ACQ.INVALID_PARAMETER", "参数无效"), []
        number = str(biz.get("out_request_no") or trade.out_trade_no)
        existing = self._refunds.get((trade.out_trade_no, number))
        if existing is not None:  # the same refund again: answered, but no money moves this time
            if existing.amount_fen != amount:
                return self._business_error("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求"), []
            return self._refund_answer(trade, fund_change="N"), []
        if trade.status == "TRADE_FINISHED":
            return self._business_error("ACQ.TRADE_HAS_FINISHED", "交易已完结"), []
        if trade.status != "TRADE_SUCCESS":
            return self._business_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"), []
        if amount > trade.total_fen - trade.refunded_fen - self._pending_fen(trade):
            return self._business_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"), []
        outcome = self._planned_refunds.pop(0) if self._planned_refunds else "success"
        refund = _Refund(number, trade.out_trade_no, amount, done=False)
        self._refunds[(trade.out_trade_no, number)] = refund
        if outcome == "pending":
            return self._refund_answer(trade, fund_change="N"), [lambda: self._complete_refund(refund, wait=True)]
        self._book_refund(trade, refund)
        return self._refund_answer(trade, fund_change="Y"), [lambda: self._complete_refund(refund, wait=True)]

    def _pending_fen(self, trade: _Trade) -> int:
        return sum(
            refund.amount_fen
            for refund in self._refunds.values()
            if refund.out_trade_no == trade.out_trade_no and not refund.done
        )

    def _book_refund(self, trade: _Trade, refund: _Refund) -> None:
        now = _now()
        refund.done, refund.gmt_refund = True, f"{now:{_TIME}}.{now.microsecond // 1000:03d}"  # Alipay adds ms
        trade.refunded_fen += refund.amount_fen
        if trade.refunded_fen >= trade.total_fen:
            trade.status, trade.gmt_close = "TRADE_CLOSED", _stamp()

    def _refund_answer(self, trade: _Trade, *, fund_change: str) -> dict[str, Any]:
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "159****5620",
            "fund_change": fund_change,
            "refund_fee": _yuan(trade.refunded_fen),  # the trade's total refunded so far, as Alipay reports it
            "gmt_refund_pay": _stamp(),
            "buyer_user_id": trade.buyer_id,
            "send_back_fee": _yuan(trade.refunded_fen),
        }

    def _complete_refund(self, refund: _Refund, *, wait: bool) -> None:
        """The refund's money moves (if it had not) and Alipay notifies the order's notify_url."""
        if wait and self.result_delay_s > 0:
            time.sleep(self.result_delay_s)
        with self._lock:
            trade = self._trades[refund.out_trade_no]
            if not refund.done:
                self._book_refund(trade, refund)
            params = self._notification(trade)
            params.update(
                out_biz_no=refund.out_request_no,
                refund_fee=_yuan(trade.refunded_fen),
                gmt_refund=refund.gmt_refund or _stamp(),
            )
            if trade.status == "TRADE_CLOSED":
                params["gmt_close"] = trade.gmt_close or _stamp()
        self._send(trade.notify_url, params)

    def _refund_query(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        trade = self._find_trade(biz)
        if trade is None:
            return self._business_error("ACQ.TRADE_NOT_EXIST", "交易不存在"), []
        number = str(biz.get("out_request_no") or "")
        refund = self._refunds.get((trade.out_trade_no, number))
        answer: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
        }
        if refund is None:  # Alipay answers success with no refund fields: it never received that number
            return answer, []
        answer.update(
            out_request_no=refund.out_request_no,
            total_amount=_yuan(trade.total_fen),
            refund_amount=_yuan(refund.amount_fen),
        )
        if refund.done:
            answer.update(refund_status="REFUND_SUCCESS", gmt_refund_pay=refund.gmt_refund)
        return answer, []

    # -- transfers -------------------------------------------------------------------------------

    def _uni_transfer(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        payee = biz.get("payee_info")
        amount = _fen(biz.get("trans_amount"))
        number = biz.get("out_biz_no")
        if not isinstance(payee, dict) or amount is None or not isinstance(number, str) or not number:
            return self._business_error("INVALID_PARAMETER", "参数有误"), []
        product_code, identity_type = biz.get("product_code"), payee.get("identity_type")
        if biz.get("biz_scene") != "DIRECT_TRANSFER":
            return self._business_error("INVALID_PARAMETER", "biz_scene有误"), []
        if product_code == "TRANS_ACCOUNT_NO_PWD":
            if identity_type not in ("ALIPAY_LOGON_ID", "ALIPAY_USER_ID"):
                return self._business_error("INVALID_PARAMETER", "identity_type有误"), []
            if identity_type == "ALIPAY_LOGON_ID" and not payee.get("name"):
                return self._business_error("PAYEE_USER_INFO_ERROR", "收款方姓名不能为空"), []
        elif product_code == self.keys.bank_card_product_code:
            ext = payee.get("bankcard_ext_info")
            if identity_type != "BANKCARD_ACCOUNT" or not payee.get("name") or not isinstance(ext, dict):
                return self._business_error("INVALID_PARAMETER", "银行卡收款方信息有误"), []
            if not ext.get("inst_name") or ext.get("account_type") not in ("1", "2"):
                return self._business_error("INVALID_PARAMETER", "bankcard_ext_info有误"), []
        else:
            return self._business_error("INVALID_PARAMETER", "product_code有误"), []
        fingerprint = (
            str(product_code),
            _yuan(amount),
            str(payee.get("identity")),
            str(identity_type),
            str(payee.get("name")),
        )
        existing = self._transfers.get(number)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                return self._business_error("PAYMENT_INFO_INCONSISTENCY", "两次请求商户单号一样，但是参数不一致"), []
            return self._transfer_answer(existing), []
        if amount < 10:
            return self._business_error("EXCEED_LIMIT_SM_MIN_AMOUNT", "单笔最低转账金额0.1元"), []
        to_account = product_code == "TRANS_ACCOUNT_NO_PWD"
        outcome = self._planned_payouts.pop(0) if to_account and self._planned_payouts else "success"
        now = _now()
        transfer = _Transfer(
            out_biz_no=number,
            order_id=f"{now:%Y%m%d}1100300{_digits(17)}",
            pay_fund_order_id=f"{now:%Y%m%d}1100300{_digits(17)}",
            amount_fen=amount,
            product_code=str(product_code),
            fingerprint=fingerprint,
            status="DEALING",
            trans_date=_stamp(now),
        )
        self._transfers[number] = transfer
        if outcome == "fail":
            transfer.status, transfer.error_code, transfer.fail_reason = (
                "FAIL",
                "PAYEE_USER_INFO_ERROR",
                "收款方信息有误",
            )
        elif product_code == "TRANS_ACCOUNT_NO_PWD":
            transfer.status, transfer.pay_date = "SUCCESS", _stamp(now)
        return self._transfer_answer(transfer), []

    def _transfer_answer(self, transfer: _Transfer) -> dict[str, Any]:
        if transfer.status == "FAIL" and transfer.error_code == "PAYEE_USER_INFO_ERROR":
            return self._business_error("PAYEE_USER_INFO_ERROR", "收款方信息有误")
        return {
            "code": "10000",
            "msg": "Success",
            "out_biz_no": transfer.out_biz_no,
            "order_id": transfer.order_id,
            "pay_fund_order_id": transfer.pay_fund_order_id,
            "status": transfer.status,
            "trans_date": transfer.trans_date,
        }

    def _transfer_query(self, biz: dict[str, Any]) -> tuple[dict[str, Any], list[Callable[[], None]]]:
        transfer = self._transfers.get(str(biz.get("out_biz_no") or ""))
        if (
            transfer is None
            or biz.get("product_code") != transfer.product_code
            or biz.get("biz_scene") != "DIRECT_TRANSFER"
        ):
            return self._business_error("ORDER_NOT_EXIST", "转账订单不存在"), []
        answer: dict[str, Any] = {
            "code": "10000",
            "msg": "Success",
            "order_id": transfer.order_id,
            "pay_fund_order_id": transfer.pay_fund_order_id,
            "out_biz_no": transfer.out_biz_no,
            "trans_amount": _yuan(transfer.amount_fen),
            "status": transfer.status,
            "order_fee": "0.00",
        }
        if transfer.pay_date:
            answer["pay_date"] = transfer.pay_date
        if transfer.status == "FAIL":
            answer.update(error_code=transfer.error_code, fail_reason=transfer.fail_reason)
        return answer, []

    def finish_payout(self, out_bill_no: str, outcome: str) -> None:
        """The bank finishes a DEALING bank-card transfer. Alipay sends no notify_url callback for
        transfers: our query (``alipay.fund.trans.common.query``) finds the result."""
        if outcome not in ("success", "fail"):
            raise ValueError(f"unknown payout outcome {outcome!r}")
        with self._lock:
            transfer = self._transfers.get(out_bill_no)
            if transfer is None or transfer.status != "DEALING":
                raise AlipayDoubleError(f"no transfer {out_bill_no} in progress")
            if outcome == "success":
                transfer.status, transfer.pay_date = "SUCCESS", _stamp()
            else:
                transfer.status, transfer.error_code, transfer.fail_reason = (
                    "FAIL",
                    "PAYEE_CARD_INFO_ERROR",
                    "收款卡信息有误",
                )

    # -- the payer -------------------------------------------------------------------------------

    def _order(self, client_params: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
        if isinstance(client_params.get("url"), str):
            query = urlsplit(client_params["url"]).query
        elif isinstance(client_params.get("order_string"), str):
            query = client_params["order_string"]
        else:
            raise AlipayDoubleError("client_params hold neither url nor order_string")
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=True):
            if key in params:
                raise AlipayDoubleError(f"parameter {key} twice in the order")
            params[key] = value
        try:
            self._verify_request(params)
        except _Rejected as rejected:
            with self._lock:
                self.rejections.append(rejected.sub_code)
            raise AlipayDoubleError(f"Alipay refuses the order: {rejected.sub_code}") from None
        return params, self._checked_order(params)

    def _checked_order(self, params: dict[str, str]) -> dict[str, Any]:
        """The business content of a verified wap/app order, as the cashier checks it."""
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            biz = None
        if not isinstance(biz, dict) or _CASHIER_PRODUCTS.get(params.get("method", "")) != biz.get("product_code"):
            raise AlipayDoubleError("not a wap or app payment order")
        if _fen(biz.get("total_amount")) is None or not biz.get("out_trade_no") or not biz.get("subject"):
            raise AlipayDoubleError("the order lacks out_trade_no, subject or a valid total_amount")
        expire = biz.get("time_expire")
        if expire and datetime.strptime(expire, _TIME).replace(tzinfo=SHANGHAI) < _now():
            raise AlipayDoubleError("the order has expired")
        return biz

    def _open(self, params: dict[str, str], biz: dict[str, Any]) -> _Trade:
        trade = self._trades.get(biz["out_trade_no"])
        total = _fen(biz["total_amount"])
        assert total is not None
        if trade is None:
            now = _now()
            trade = _Trade(
                out_trade_no=biz["out_trade_no"],
                trade_no=f"{now:%Y%m%d}22001{_digits(15)}",
                total_fen=total,
                subject=str(biz["subject"]),
                notify_url=params.get("notify_url"),
                status="WAIT_BUYER_PAY",
                buyer_id=f"2088{_digits(12)}",
                gmt_create=_stamp(now),
            )
            self._trades[trade.out_trade_no] = trade
        elif trade.total_fen != total:
            raise AlipayDoubleError("the same out_trade_no with another amount")
        return trade

    def open_page(self, client_params: Mapping[str, Any]) -> None:
        """The payer opens the cashier without paying: Alipay now knows the trade (WAIT_BUYER_PAY)."""
        params, biz = self._order(client_params)
        with self._lock:
            self._open(params, biz)

    def pay(self, client_params: Mapping[str, Any]) -> None:
        """The payer pays the order ``create_payment`` returned (its signature checked as Alipay
        does); the signed TRADE_SUCCESS notification is POSTed to the order's notify_url."""
        params, biz = self._order(client_params)
        with self._lock:
            trade = self._open(params, biz)
            if trade.status != "WAIT_BUYER_PAY":
                raise AlipayDoubleError(f"trade {trade.out_trade_no} is {trade.status}")
            trade.status, trade.gmt_payment = "TRADE_SUCCESS", _stamp()
            notification = self._notification(trade)
        self._send(trade.notify_url, notification)

    def _notification(self, trade: _Trade) -> dict[str, str]:
        amount = _yuan(trade.total_fen)
        params = {
            "notify_time": _stamp(),
            "notify_type": "trade_status_sync",
            "notify_id": f"{_now():%Y%m%d}00222{_digits(23)}",
            "app_id": self.keys.app_id,
            "auth_app_id": self.keys.app_id,
            "charset": "utf-8",
            "version": "1.0",
            "sign_type": "RSA2",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_id": trade.buyer_id,
            "buyer_logon_id": "159****5620",
            "seller_id": self.keys.seller_id,
            "seller_email": "pay***@example.com",
            "trade_status": trade.status,
            "total_amount": amount,
            "receipt_amount": amount,
            "invoice_amount": amount,
            "buyer_pay_amount": amount,
            "point_amount": "0.00",
            "subject": trade.subject,
            "gmt_create": trade.gmt_create,
            "fund_bill_list": json.dumps([{"amount": amount, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")),
        }
        if trade.gmt_payment:
            params["gmt_payment"] = trade.gmt_payment
        return params

    # -- delivery --------------------------------------------------------------------------------

    def _in_background(self, work: Callable[[], None]) -> None:
        if self.synchronous:
            work()
            return
        thread = threading.Thread(target=work, name="alipay-double-notify", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _send(self, url: str | None, params: dict[str, str]) -> None:
        if not url:
            return  # an order without notify_url: Alipay notifies nobody
        with self._lock:
            self._sent[params["notify_id"]] = (url, dict(params))
        self._post(url, params)

    def _post(self, url: str, params: dict[str, str]) -> None:
        body = self.signed_notification(params)
        status, answer = self._deliver(url, {"Content-Type": FORM}, body)
        with self._lock:
            self.deliveries.append(Delivery(url, dict(params), body, status, answer))

    def redeliver(self, notify_id: str) -> None:
        """Send a notification again, as Alipay's retries do (same ``notify_id``, signed afresh)."""
        with self._lock:
            url, params = self._sent[notify_id]
        self._post(url, dict(params))
