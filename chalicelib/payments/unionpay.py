"""China UnionPay online gateway (全渠道 ACP 5.1.0, 在线网关支付): bank-card payments on UnionPay's own page.

Why written here with ``requests`` and ``cryptography``: no well-kept Python SDK speaks ACP,
and the protocol is small. What follows is the 5.1.0 rule of UnionPay's own ``acpsdk``
(``SDKUtil.signByCertInfo``/``validate``, ``CertUtil.verifyCertificate``, ``SecureUtil.sha256X16``)
and reference/payments.md §3.

Wire format
    Requests are ``application/x-www-form-urlencoded`` key=value forms with ``version=5.1.0``,
    ``encoding=UTF-8``, ``signMethod=01`` and ``certId`` = our signing certificate's serial
    number in decimal. The signature is ``Base64(SHA256withRSA(hex(SHA256(S))))``: ``S`` is every
    non-empty field except ``signature``, sorted by name, joined as ``k=v&k=v`` with the raw
    (not percent-encoded) values, UTF-8; the lower-case hex digest *string* is what is RSA-signed
    (PKCS#1 v1.5). Synchronous answers are ``k=v&k=v`` text whose values are *not*
    percent-encoded (Base64 keeps its ``+/=``; a ``&`` only inside ``{…}`` or ``[…]``) —
    parsed as ``acpsdk``'s ``parseQString`` does (:func:`parse_answer`). Back notifications
    are an ordinary percent-encoded form POST (``parse_qsl``).

Verification (every synchronous answer and every back notification, no network)
    The message carries the signer's certificate in ``signPubKeyCert`` (PEM). It must be issued
    by the configured middle certificate, which is issued by the configured root; all three
    within validity at the time of the check; and its subject CN must name UnionPay: the
    third ``@``-separated part of the CN (UnionPay's certificates read
    ``041@Z12…@中国银联股份有限公司@00000001``; ``acpsdk`` compares ``split("@")[2]``), or the whole
    CN when it has no ``@`` — equal to ``UnionPayConfig.signer_cn``. Only then is the signature
    checked with that certificate's key. A synchronous answer that fails any of this is a
    retryable ``ProviderError("bad_response_signature")`` (its outcome is unknown: query).
    A notification that fails raises ``NotificationRejected``: no ``signature``/``signPubKeyCert``
    → ``missing_header``; not ``version 5.1.0``/``signMethod 01`` → ``unsupported_algorithm``;
    a certificate not from our chain, expired, or with another CN → ``unknown_serial``; a
    signature that does not verify → ``bad_signature``; another ``merId`` → ``wrong_merchant``;
    a body that is not a flat UTF-8 form (duplicate names included) → ``malformed_body``.

A transaction is named by ``merId`` + ``orderId`` + ``txnTime``
    A query or a retry must repeat the ``txnTime`` of the first send, and this adapter keeps no
    state: ``UnionPayConfig.txn_time_of(number)`` gives the stable creation instant of our
    payment order or refund; it is sent as ``yyyyMMddHHmmss`` in Asia/Shanghai.

Decisions
    * ``create_payment`` makes no server call: UnionPay opens the order only when the payer's
      browser posts the signed form (``client_params``) to ``frontTransReq.do``. ``payTimeout``
      is the order's ``expires_at``; a payment after it is refused or refunded by UnionPay.
    * ``query_payment``: ``respCode 34`` (查无此交易) → ``ProviderError("order_not_found",
      retryable=False)``, as the ``Provider`` contract asks, even while the pay window is open
      (the payer has not posted the form yet). The adapter does not know the window; the flow
      does: ``orders.follow_up`` treats a non-retryable error before ``expires_at`` as "ask again
      later" and after it as "never opened". ``origRespCode 00`` → succeeded; any other
      ``origRespCode`` (03/04/05 in progress, or a failed attempt) → pending, because the payer
      may still pay on UnionPay's page until ``payTimeout`` — the flow closes ours at
      ``expires_at``. ``respCode`` 03/04/05 (and 02/06/37: closed for now, busy, too frequent)
      → retryable; any other → non-retryable ``unionpay_<respCode>``.
    * ``close_payment``: ACP has no close for an unpaid front order (it lapses at
      ``payTimeout``): query; paid → ``ProviderError("order_paid")``; otherwise nothing.
    * ``refund`` queries the payment first for its ``queryId`` (``origQryId``). ``respCode 00`` →
      processing (the result comes as a back notification or by ``query_refund``). A resend of
      a refund whose first answer was lost meets ``respCode 12`` (重复交易): the refund is then
      queried and its state answered (a different amount → ``refund_conflict``).
    * A refund's back notification carries ``origQryId`` (UnionPay's id of the payment), not our
      order number, so its event has ``order_ref=None``; the refund number (``orderId``) finds
      our refund order, which knows its payment. ``respCode 00`` → ``refund_succeeded``;
      03/04/05 → None (not final); any other → ``refund_failed``.
    * ``event_id`` = ``{txnType}:{orderId}:{txnTime}:{respCode}``: the same for every resend of
      one notification (UnionPay sends up to 5 times until it gets HTTP 200).
    * UnionPay is not our payout channel (bank-card payouts go through Alipay).

Example
-------
>>> provider = UnionPayProvider(UnionPayConfig(merchant_id="777290058110048", ...))  # doctest: +SKIP
>>> request = PaymentRequest("PI3f2a", 50000, "Invitation", "h5", None, expires_at)  # doctest: +SKIP
>>> intent = provider.create_payment(request)  # doctest: +SKIP
>>> intent.client_params["action"]  # doctest: +SKIP
'https://gateway.95516.com/gateway/api/frontTransReq.do'
>>> provider.query_payment("PI3f2a").state  # doctest: +SKIP
'succeeded'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, urlencode

from chalicelib.clock import SHANGHAI
from chalicelib.payments.provider import (
    HttpReply,
    PaymentIntent,
    PaymentStatus,
    PayoutStatus,
    ProviderError,
    ProviderEvent,
    RefundStatus,
)
from chalicelib.payments.wechat_notify import NotificationRejected

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
    from cryptography.x509 import Certificate

    from chalicelib.payments.provider import PaymentRequest, PayoutRequest, RefundRequest
    from chalicelib.payments.wechat_notify import Reason

__all__ = [
    "BACK_PATH",
    "FRONT_PATH",
    "QUERY_PATH",
    "UNIONPAY_CN",
    "UnionPayConfig",
    "UnionPayProvider",
    "parse_answer",
    "sign_string",
    "txn_time",
]

VERSION: Final = "5.1.0"
ENCODING: Final = "UTF-8"
SIGN_METHOD: Final = "01"
CNY_CODE: Final = "156"
UNIONPAY_CN: Final = "中国银联股份有限公司"
FRONT_PATH: Final = "/gateway/api/frontTransReq.do"
BACK_PATH: Final = "/gateway/api/backTransReq.do"
QUERY_PATH: Final = "/gateway/api/queryTrans.do"
FORM_TYPE: Final = "application/x-www-form-urlencoded;charset=UTF-8"

UNKNOWN_OUTCOME: Final = frozenset({"03", "04", "05"})
"""03 通讯超时 / 04 状态未明 / 05 已受理: the outcome is not known yet — query later."""
TRY_LATER: Final = frozenset({"02", "06", "37"})
"""02 系统未开放 / 06 系统繁忙 / 37 操作过于频繁: not done; the same request may be sent again later."""
NOT_FOUND: Final = "34"
DUPLICATE: Final = "12"

_ORDER_ID = re.compile(r"[0-9A-Za-z]{8,40}", re.ASCII)
_MERCHANT_ID = re.compile(r"[0-9A-Za-z]{15}", re.ASCII)
_AMOUNT = re.compile(r"[0-9]{1,12}", re.ASCII)
_TXN_TIME = re.compile(r"[0-9]{14}", re.ASCII)
_TRACE_TIME = re.compile(r"[0-9]{10}", re.ASCII)
_UNLOGGED = frozenset({"signature", "signPubKeyCert", "accNo", "customerInfo"})
"""Fields left out of ``ProviderEvent.raw``: the signature material, and anything about the card."""
_CERT_CACHE_SIZE: Final = 8


@dataclass(frozen=True)
class UnionPayConfig:
    """What the UnionPay adapter needs (the lead builds it from settings and the channel secret).

    - ``merchant_id``: ``merId``, 15 characters (``UNIONPAY_MERCHANT_ID``).
    - ``sign_key``: our signing private key, PEM (secret ``sign_key``; extracted from the
      ``.pfx`` UnionPay issues: ``openssl pkcs12 -in acp_sign.pfx -nocerts -nodes``).
    - ``sign_cert``: our signing certificate, PEM (secret ``sign_cert``); ``certId`` is its serial in decimal.
    - ``root_cert`` / ``middle_cert``: UnionPay's verification chain, PEM (``acp_prod_root.cer``,
      ``acp_prod_middle.cer``; secret ``root_cert`` / ``middle_cert``).
    - ``back_url``: our notification route (``backUrl``; no query string).
    - ``front_url``: where the payer's browser returns after paying (``frontUrl``).
    - ``gateway``: ``https://gateway.95516.com`` (production) or ``https://gateway.test.95516.com``
      (``UNIONPAY_GATEWAY``; a loopback double in development).
    - ``timeout``: seconds for every HTTP call.
    - ``signer_cn``: the company name UnionPay's signing certificate must carry.
    - ``txn_time_of``: the stable creation instant of our payment order or refund number (an
      aware datetime; a naive one is taken as UTC). UnionPay names a transaction by
      ``merId`` + ``orderId`` + ``txnTime``, so every retry and query repeats it.
    """

    merchant_id: str
    sign_key: str = field(repr=False)
    sign_cert: str = field(repr=False)
    root_cert: str = field(repr=False)
    middle_cert: str = field(repr=False)
    back_url: str
    front_url: str
    gateway: str = "https://gateway.95516.com"
    timeout: float = 10.0
    signer_cn: str = UNIONPAY_CN
    txn_time_of: Callable[[str], datetime] = field(kw_only=True, repr=False)

    def __post_init__(self) -> None:
        if not _MERCHANT_ID.fullmatch(self.merchant_id):
            raise ValueError("merchant_id (merId) must be 15 letters or digits")
        if not self.gateway.startswith(("https://", "http://")):
            raise ValueError("gateway must be an http(s) URL")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if "?" in self.back_url:
            raise ValueError("back_url must carry no query string (UnionPay signs the body only)")


# --- the ACP 5.1.0 message rules (pure functions) -------------------------------------------------


def sign_string(fields: Mapping[str, str]) -> str:
    """``k=v&k=v`` of every field except ``signature``, sorted by name, raw values (``coverMap2String``)."""
    return "&".join(f"{name}={fields[name]}" for name in sorted(fields) if name != "signature")


def _digest(fields: Mapping[str, str]) -> bytes:
    """What 5.1.0 RSA-signs: the lower-case hex SHA-256 of the sign string, as ASCII bytes (``sha256X16``)."""
    return hashlib.sha256(sign_string(fields).encode("utf-8")).hexdigest().encode("ascii")


def txn_time(instant: datetime) -> str:
    """``yyyyMMddHHmmss`` in Asia/Shanghai (a naive ``instant`` is taken as UTC)."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S")


def parse_answer(text: str) -> dict[str, str]:
    """A synchronous answer, as ``acpsdk``'s ``parseQString`` reads it: ``k=v`` pairs split at ``&``,
    values not percent-decoded, a ``&`` inside ``{…}`` or ``[…]`` kept in the value.

    Stricter than the SDK: an empty or repeated name, or a name without ``=``, is a ``ValueError``.

    >>> parse_answer("a=1&b=x=y+/&c={k=v&w=z}")
    {'a': '1', 'b': 'x=y+/', 'c': '{k=v&w=z}'}
    """
    fields: dict[str, str] = {}

    def put(name: str, value: str) -> None:
        if not name:
            raise ValueError("a field without a name")
        if name in fields:
            raise ValueError(f"field {name!r} appears twice")
        fields[name] = value

    name: str | None = None
    buffer: list[str] = []
    closing: str | None = None
    for char in text.strip("\r\n"):
        if name is None:
            if char == "=":
                name, buffer = "".join(buffer), []
            elif char == "&":
                raise ValueError("a field without a value")
            else:
                buffer.append(char)
            continue
        if closing is not None:
            if char == closing:
                closing = None
        elif char == "{":
            closing = "}"
        elif char == "[":
            closing = "]"
        if char == "&" and closing is None:
            put(name, "".join(buffer))
            name, buffer = None, []
        else:
            buffer.append(char)
    if name is not None:
        put(name, "".join(buffer))
    elif buffer:
        raise ValueError("a field without a value")
    return fields


def _parse_form(body: bytes) -> dict[str, str]:
    """A back notification: a flat UTF-8 form; a repeated name (a list value) is refused."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise NotificationRejected("malformed_body", "not a UTF-8 form") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise NotificationRejected("malformed_body", f"field {name!r} appears twice")
        fields[name] = value
    return fields


def _fen(value: str | None) -> int | None:
    return int(value) if value is not None and _AMOUNT.fullmatch(value) else None


def _currency(code: str | None) -> str | None:
    """ISO 4217 numeric → the code our orders use (156 → CNY); any other code passes as is (never equal to CNY)."""
    if code is None:
        return None
    return "CNY" if code == CNY_CODE else code


def _occurred_at(fields: Mapping[str, str]) -> str | None:
    """When UnionPay recorded it: ``traceTime`` (``MMDDhhmmss``, Shanghai) in the year of ``txnTime``
    (the next year when it falls before ``txnTime``: an order opened on 31 Dec, paid on 1 Jan);
    ``txnTime`` itself when there is no usable ``traceTime``. ISO 8601 with ``+08:00``."""
    opened = fields.get("txnTime", "")
    if not _TXN_TIME.fullmatch(opened):
        return None
    try:
        start = datetime.strptime(opened, "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI)
    except ValueError:
        return None
    trace = fields.get("traceTime", "")
    if _TRACE_TIME.fullmatch(trace):
        for year in (start.year, start.year + 1):
            try:
                traced = datetime.strptime(f"{year}{trace}", "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI)
            except ValueError:  # 29 Feb of a common year
                continue
            if traced >= start - timedelta(days=1):
                return traced.isoformat()
    return start.isoformat()


class _RejectedError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


class _Verifier:
    """Checks ``signPubKeyCert`` against the configured chain and CN, then the signature (no network)."""

    def __init__(self, root_pem: str, middle_pem: str, signer_cn: str) -> None:
        from cryptography import x509

        self._root = x509.load_pem_x509_certificate(root_pem.encode("ascii"))
        self._middle = x509.load_pem_x509_certificate(middle_pem.encode("ascii"))
        try:
            self._middle.verify_directly_issued_by(self._root)
        except Exception as error:
            raise ValueError(f"the middle certificate is not issued by the root: {type(error).__name__}") from None
        self._signer_cn = signer_cn
        self._known: dict[str, Certificate] = {}
        self._lock = threading.Lock()

    def _certificate(self, pem: str) -> Certificate:
        """The signer's certificate once its chain and CN hold (cached: they do not change with time)."""
        with self._lock:
            known = self._known.get(pem)
        if known is not None:
            return known
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.x509.oid import NameOID

        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise _RejectedError("unknown_serial", "signPubKeyCert is not a PEM certificate") from None
        try:
            cert.verify_directly_issued_by(self._middle)
        except Exception:  # name mismatch, bad signature, unsupported key: not ours either way
            raise _RejectedError("unknown_serial", "signPubKeyCert is not issued by the configured middle CA") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1:
            raise _RejectedError("unknown_serial", "signPubKeyCert has no single CN")
        common_name = str(names[0].value)
        parts = common_name.split("@")
        owner = parts[2] if len(parts) > 2 else common_name
        if owner != self._signer_cn:
            raise _RejectedError("unknown_serial", "signPubKeyCert does not belong to UnionPay")
        if not isinstance(cert.public_key(), RSAPublicKey):
            raise _RejectedError("unknown_serial", "signPubKeyCert does not hold an RSA key")
        with self._lock:
            if len(self._known) >= _CERT_CACHE_SIZE:
                self._known.clear()
            self._known[pem] = cert
        return cert

    def verify(self, fields: Mapping[str, str], now: datetime) -> None:
        """Raise ``_RejectedError`` unless UnionPay signed exactly these fields with a valid certificate at ``now``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature, pem = fields.get("signature"), fields.get("signPubKeyCert")
        if not signature or not pem:
            raise _RejectedError("missing_header", "no signature or signPubKeyCert")
        if fields.get("version") != VERSION or fields.get("signMethod") != SIGN_METHOD:
            raise _RejectedError("unsupported_algorithm", "only version 5.1.0 with signMethod 01 is accepted")
        cert = self._certificate(pem)
        at = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        for link in (cert, self._middle, self._root):
            if not link.not_valid_before_utc <= at <= link.not_valid_after_utc:
                raise _RejectedError("unknown_serial", "a certificate of the chain is not valid now")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise _RejectedError("bad_signature", "signature is not Base64") from None
        public_key: RSAPublicKey = cert.public_key()  # type: ignore[assignment]  # checked in _certificate
        try:
            public_key.verify(raw, _digest(fields), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _RejectedError("bad_signature", "the signature does not match the fields") from None


class UnionPayProvider:
    """The ``Provider`` of UnionPay's online gateway (front consumption, refund, query; no payouts)."""

    channel = "unionpay"

    def __init__(self, config: UnionPayConfig) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

        self._config = config
        key = serialization.load_pem_private_key(config.sign_key.encode("ascii"), password=None)
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("sign_key must be an RSA private key")
        cert = x509.load_pem_x509_certificate(config.sign_cert.encode("ascii"))
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise ValueError("sign_cert does not hold the public half of sign_key")
        self._key: RSAPrivateKey = key
        self._cert_id = str(cert.serial_number)
        self._verifier = _Verifier(config.root_cert, config.middle_cert, config.signer_cn)

    # --- signing and calling ---------------------------------------------------------------------

    def _signed(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The common fields, ours, ``certId`` and the 5.1.0 ``signature`` (empty values are not sent)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        message = {
            "version": VERSION,
            "encoding": ENCODING,
            "signMethod": SIGN_METHOD,
            "accessType": "0",
            "merId": self._config.merchant_id,
            **{name: value for name, value in fields.items() if value},
            "certId": self._cert_id,
        }
        signature = self._key.sign(_digest(message), padding.PKCS1v15(), hashes.SHA256())
        message["signature"] = base64.b64encode(signature).decode("ascii")
        return message

    def _txn_time(self, number: str) -> str:
        if not _ORDER_ID.fullmatch(number):
            raise ProviderError("invalid_number", f"{number!r} is not 8-40 letters or digits", retryable=False)
        return txn_time(self._config.txn_time_of(number))

    def _call(self, path: str, fields: Mapping[str, str]) -> dict[str, str]:
        """POST a signed form; answer the verified answer fields (never unverified ones)."""
        import requests

        message = self._signed(fields)
        try:
            response = requests.post(
                self._config.gateway + path,
                data=urlencode(message).encode("ascii"),
                headers={"Content-Type": FORM_TYPE},
                timeout=self._config.timeout,
            )
        except requests.Timeout:
            raise ProviderError("timeout", f"UnionPay did not answer {path} in time", retryable=True) from None
        except requests.RequestException as error:
            raise ProviderError("network_error", f"{path}: {type(error).__name__}", retryable=True) from None
        if response.status_code != 200:
            raise ProviderError(f"http_{response.status_code}", f"UnionPay answered {path} with HTTP", retryable=True)
        try:
            answer = parse_answer(response.content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ProviderError("bad_response", f"{path}: {error}", retryable=True) from None
        try:
            self._verifier.verify(answer, datetime.now(UTC))
        except _RejectedError as rejected:
            raise ProviderError("bad_response_signature", f"{path}: {rejected.detail}", retryable=True) from None
        for name in ("merId", "orderId"):
            if name in answer and answer[name] != message.get(name):
                raise ProviderError("bad_response", f"{path}: the answer names another {name}", retryable=True)
        return answer

    @staticmethod
    def _failure(answer: Mapping[str, str], what: str) -> ProviderError:
        code = answer.get("respCode", "")
        retryable = code in UNKNOWN_OUTCOME or code in TRY_LATER
        return ProviderError(f"unionpay_{code or 'none'}", f"{what}: {answer.get('respMsg', '')}", retryable=retryable)

    def _query(self, number: str) -> dict[str, str]:
        return self._call(
            QUERY_PATH,
            {
                "txnType": "00",
                "txnSubType": "00",
                "bizType": "000000",
                "orderId": number,
                "txnTime": self._txn_time(number),
            },
        )

    # --- payments --------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        """The signed front-consumption form the payer's browser posts to UnionPay (no server call)."""
        if request.scene not in ("h5", "app"):
            raise ProviderError(
                "scene_unsupported", f"UnionPay's gateway has no {request.scene} scene", retryable=False
            )
        if isinstance(request.amount_fen, bool) or not isinstance(request.amount_fen, int) or request.amount_fen <= 0:
            raise ProviderError("invalid_amount", "the amount must be a positive number of fen", retryable=False)
        fields = self._signed(
            {
                "txnType": "01",
                "txnSubType": "01",
                "bizType": "000201",
                "channelType": "08",
                "currencyCode": CNY_CODE,
                "txnAmt": str(request.amount_fen),
                "orderId": request.out_trade_no,
                "txnTime": self._txn_time(request.out_trade_no),
                "payTimeout": txn_time(request.expires_at),
                "backUrl": self._config.back_url,
                "frontUrl": self._config.front_url,
            }
        )
        return PaymentIntent(
            provider_ref=request.out_trade_no,
            client_params={"action": self._config.gateway + FRONT_PATH, "method": "POST", "fields": fields},
        )

    def _payment_answer(self, out_trade_no: str) -> dict[str, str]:
        answer = self._query(out_trade_no)
        code = answer.get("respCode")
        if code == NOT_FOUND:
            raise ProviderError("order_not_found", f"UnionPay has no order {out_trade_no}", retryable=False)
        if code != "00":
            raise self._failure(answer, "query")
        return answer

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        answer = self._payment_answer(out_trade_no)
        if answer.get("origRespCode") != "00":
            return PaymentStatus(out_trade_no, "pending")
        amount, query_id = _fen(answer.get("txnAmt")), answer.get("queryId")
        if amount is None or not query_id:
            raise ProviderError("bad_response", "a paid order without txnAmt or queryId", retryable=True)
        return PaymentStatus(
            out_trade_no,
            "succeeded",
            transaction_id=query_id,
            amount_fen=amount,
            currency=_currency(answer.get("currencyCode")) or "CNY",
            paid_at=_occurred_at(answer),
        )

    def close_payment(self, out_trade_no: str) -> None:
        """No close exists for an unpaid front order (it lapses at ``payTimeout``); refuse a paid one,
        and one being paid right now (``payment_pending``, retryable: ask again once it has ended)."""
        try:
            answer = self._payment_answer(out_trade_no)
        except ProviderError as error:
            if error.code == "order_not_found":
                return
            raise
        if answer.get("origRespCode") == "00":
            raise ProviderError("order_paid", f"order {out_trade_no} is paid", retryable=False)
        if answer.get("origRespCode") in UNKNOWN_OUTCOME:
            raise ProviderError("payment_pending", f"order {out_trade_no} is being paid", retryable=True)

    # --- refunds ---------------------------------------------------------------------------------

    def refund(self, request: RefundRequest) -> RefundStatus:
        if isinstance(request.amount_fen, bool) or not isinstance(request.amount_fen, int) or request.amount_fen <= 0:
            raise ProviderError("invalid_amount", "the refund must be a positive number of fen", retryable=False)
        payment = self._payment_answer(request.out_trade_no)
        original = payment.get("origRespCode")
        if original in UNKNOWN_OUTCOME:
            raise ProviderError("payment_pending", f"order {request.out_trade_no} is still in progress", retryable=True)
        query_id, paid = payment.get("queryId"), _fen(payment.get("txnAmt"))
        if original != "00" or not query_id or paid is None:
            raise ProviderError("order_not_paid", f"order {request.out_trade_no} is not paid", retryable=False)
        if request.amount_fen > paid:
            raise ProviderError("invalid_amount", "the refund exceeds the payment", retryable=False)
        answer = self._call(
            BACK_PATH,
            {
                "txnType": "04",
                "txnSubType": "00",
                "bizType": "000201",
                "channelType": "07",
                "currencyCode": CNY_CODE,
                "txnAmt": str(request.amount_fen),
                "orderId": request.out_refund_no,
                "txnTime": self._txn_time(request.out_refund_no),
                "origQryId": query_id,
                "backUrl": self._config.back_url,
            },
        )
        code = answer.get("respCode")
        if code == "00":
            return RefundStatus(request.out_refund_no, "processing", answer.get("queryId"), request.amount_fen)
        if code == DUPLICATE:  # sent before (an answer was lost): what became of it
            try:
                status = self.query_refund(request.out_refund_no, request.out_trade_no)
            except ProviderError as error:
                if error.code == "refund_not_found":
                    raise ProviderError("unionpay_12", "duplicate refund not found yet", retryable=True) from None
                raise
            if status.amount_fen is not None and status.amount_fen != request.amount_fen:
                raise ProviderError("refund_conflict", "the refund number was used for another amount", retryable=False)
            return status
        raise self._failure(answer, "refund")

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        answer = self._query(out_refund_no)
        code = answer.get("respCode")
        if code == NOT_FOUND:
            raise ProviderError("refund_not_found", f"UnionPay has no refund {out_refund_no}", retryable=False)
        if code != "00":
            raise self._failure(answer, "refund query")
        original, amount = answer.get("origRespCode"), _fen(answer.get("txnAmt"))
        if original == "00":
            return RefundStatus(out_refund_no, "succeeded", answer.get("queryId"), amount)
        if original in UNKNOWN_OUTCOME:
            return RefundStatus(out_refund_no, "processing", answer.get("queryId"), amount)
        return RefundStatus(out_refund_no, "failed", answer.get("queryId"), amount)

    # --- payouts: not this channel ---------------------------------------------------------------

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        raise ProviderError("payee_kind_unsupported", "UnionPay is not a payout channel here", retryable=False)

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        raise ProviderError("payout_not_found", "UnionPay pays no payouts here", retryable=False)

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        raise ProviderError("payout_not_cancellable", "UnionPay pays no payouts here", retryable=False)

    # --- back notifications ----------------------------------------------------------------------

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify a back notification (``NotificationRejected``) and normalise it; None when not acted on."""
        fields = _parse_form(body)
        try:
            self._verifier.verify(fields, now)
        except _RejectedError as rejected:
            raise NotificationRejected(rejected.reason, rejected.detail) from None
        if fields.get("merId") != self._config.merchant_id:
            raise NotificationRejected("wrong_merchant", "merId is not ours")
        txn_type, order_id = fields.get("txnType", ""), fields.get("orderId", "")
        opened, code = fields.get("txnTime", ""), fields.get("respCode", "")
        if not (txn_type and _ORDER_ID.fullmatch(order_id) and _TXN_TIME.fullmatch(opened) and code):
            raise NotificationRejected("malformed_body", "txnType, orderId, txnTime and respCode are required")
        event_id = f"{txn_type}:{order_id}:{opened}:{code}"
        raw = {name: value for name, value in fields.items() if name not in _UNLOGGED}
        if txn_type == "01":
            if code != "00":
                return None
            amount, query_id = _fen(fields.get("txnAmt")), fields.get("queryId")
            currency = _currency(fields.get("currencyCode"))
            if amount is None or not query_id or currency is None:
                raise NotificationRejected("malformed_body", "a payment without txnAmt, queryId or currencyCode")
            return ProviderEvent(
                "unionpay",
                event_id,
                "payment_succeeded",
                order_id,
                query_id,
                amount,
                currency,
                _occurred_at(fields),
                raw=raw,
            )
        if txn_type == "04":
            if code in UNKNOWN_OUTCOME:
                return None
            amount = _fen(fields.get("txnAmt"))
            if amount is None:
                raise NotificationRejected("malformed_body", "a refund without txnAmt")
            succeeded = code == "00"
            return ProviderEvent(
                "unionpay",
                event_id,
                "refund_succeeded" if succeeded else "refund_failed",
                order_id,
                fields.get("queryId") or None,
                amount,
                _currency(fields.get("currencyCode")),
                _occurred_at(fields),
                order_ref=None,  # the notification names the payment by origQryId only
                reason=None if succeeded else code,
                raw=raw,
            )
        return None

    def acknowledge(self, accepted: bool) -> HttpReply:
        """UnionPay wants HTTP 200 (or 302) within 10 s; anything else makes it send again (5 sends in all)."""
        if accepted:
            return HttpReply(200, "ok", "text/plain")
        return HttpReply(400, "fail", "text/plain")
