"""UnionPay's online gateway (全渠道 ACP 5.1.0) played on loopback: the same forms, certificates and signatures.

Why a double: the production adapter (``chalicelib.payments.unionpay``) signs, verifies and
parses real ACP messages; this plays UnionPay's side of them so the adapter runs end to end
without a merchant account. Written independently of the adapter (its own sign string,
digest and parser), so a mistake on one side shows up as a failed signature on the other.

What it does, as UnionPay does:

- ``POST /gateway/api/backTransReq.do`` (refund, ``txnType 04``) and ``/gateway/api/queryTrans.do``
  (``txnType 00``): a percent-encoded form in; our signature checked with OUR signing
  certificate, looked up by ``certId`` (serial in decimal) — ``respCode 11`` when it fails;
  the answer is raw ``k=v&k=v`` text (values not percent-encoded), signed with its own key
  and carrying ``signPubKeyCert`` (issued by its middle CA, issued by its root). A refund
  answers ``respCode 00`` (accepted) and its result comes as a back notification after
  ``result_delay_s`` (a daemon thread; ``None`` holds it until :meth:`UnionPayDouble.settle_refund`).
  A query answers ``respCode 34`` for an unknown ``orderId``+``txnTime``, else ``00`` with the
  ``origRespCode`` of the transaction. A repeated ``orderId``+``txnTime`` answers ``12`` (重复交易).
- :meth:`UnionPayDouble.pay` is the payer posting the form our ``create_payment`` returned to
  ``frontTransReq.do`` (so is a real ``POST`` there): the form is verified, the order recorded
  with a new ``queryId``, and the signed back notification is POSTed (percent-encoded form) to
  its ``backUrl``. No notification is sent for a failed payment, as UnionPay does.
- UnionPay pays no payouts here: ``finish_payout`` and ``plan_payout`` do nothing.

``make_credentials`` generates everything offline: a root CA, a middle CA, UnionPay's
signing certificate (CN in UnionPay's ``…@中国银联股份有限公司@…`` form), and our merchant
signing key with a certificate issued by a separate test CA (UnionPay issues merchants'
certificates from a CA of its own, not the one it signs answers with).

Example
-------
>>> credentials = make_credentials(merchant_id="777290058110048")  # doctest: +SKIP
>>> double = UnionPayDouble(credentials, deliver=http_deliver)  # doctest: +SKIP
>>> server, base_url = serve(double)  # then UNIONPAY_GATEWAY=base_url  # doctest: +SKIP
>>> double.pay(order["client_params"])  # the payer pays; the back notification is posted  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from chalicelib.clock import SHANGHAI

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.x509 import Certificate

Deliver = Callable[[str, dict[str, str], bytes], tuple[int, str]]

UNIONPAY_CN = "中国银联股份有限公司"
SIGNER_CN = f"041@Z12400000000001@{UNIONPAY_CN}@00000001"
"""UnionPay's signing certificates name the company as the third ``@`` part of the CN."""
FRONT_PATH = "/gateway/api/frontTransReq.do"
BACK_PATH = "/gateway/api/backTransReq.do"
QUERY_PATH = "/gateway/api/queryTrans.do"
FORM = "application/x-www-form-urlencoded;charset=UTF-8"
MESSAGES = {
    "00": "成功[0000000]",
    "01": "交易失败[1000001]",
    "03": "交易通讯超时，请发起查询交易",
    "04": "交易状态未明，请查询对账结果",
    "05": "交易已受理，请稍后查询交易结果",
    "06": "系统繁忙，请稍后再试",
    "10": "报文格式错误",
    "11": "验证签名失败",
    "12": "重复交易",
    "31": "商户状态不正确",
    "33": "交易金额超限",
    "34": "查无此交易",
    "35": "原交易不存在或状态不正确",
    "36": "与原交易信息不符",
}


# --- certificates --------------------------------------------------------------------------------


def new_key() -> RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_pem(key: RSAPrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def cert_pem(cert: Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def issue_cert(
    key: RSAPrivateKey,
    common_name: str,
    *,
    issuer: tuple[RSAPrivateKey, Certificate] | None = None,
    ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Certificate:
    """An X.509 certificate for ``key``: self-signed without ``issuer``; ``ca`` makes it a CA (path length 0 or 1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "UnionPay double (test only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=(0 if issuer else 1) if ca else None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class UnionPayDoubleKeys:
    """What the double holds: its chain and signing key, and the certificates of the merchants it serves.

    ``merchant_certs`` maps ``certId`` (serial in decimal) to the merchant's signing certificate (PEM).
    The CA keys are kept so tests can issue certificates UnionPay never would (a wrong CN, an expired one).
    """

    merchant_id: str
    merchant_certs: dict[str, str]
    signing_key: str = field(repr=False)
    signing_cert: str = field(repr=False)
    middle_key: str = field(repr=False)
    middle_cert: str = field(repr=False)
    root_key: str = field(repr=False)
    root_cert: str = field(repr=False)


@dataclass(frozen=True)
class UnionPayCredentials:
    """``double``: for :class:`UnionPayDouble`; ``config_env`` and ``secret``: our side (Settings, the secret file)."""

    double: UnionPayDoubleKeys
    config_env: dict[str, str]
    secret: dict[str, Any] = field(repr=False)


def make_credentials(
    merchant_id: str = "777290058110048", gateway: str = "https://gateway.test.95516.com"
) -> UnionPayCredentials:
    """Generate UnionPay's chain and signing certificate and our merchant signing key and certificate, offline.

    ``gateway`` becomes ``UNIONPAY_GATEWAY``; on loopback set it to the double's server URL.
    """
    root_key, middle_key, signing_key, merchant_ca_key, merchant_key = (new_key() for _ in range(5))
    root = issue_cert(root_key, "UnionPay Double Root CA", ca=True)
    middle = issue_cert(middle_key, "UnionPay Double Middle CA", issuer=(root_key, root), ca=True)
    signing = issue_cert(signing_key, SIGNER_CN, issuer=(middle_key, middle))
    merchant_ca = issue_cert(merchant_ca_key, "UnionPay Double Merchant CA", ca=True)
    merchant = issue_cert(
        merchant_key, f"041@Z{merchant_id}@{merchant_id}@00000001", issuer=(merchant_ca_key, merchant_ca)
    )
    keys = UnionPayDoubleKeys(
        merchant_id=merchant_id,
        merchant_certs={str(merchant.serial_number): cert_pem(merchant)},
        signing_key=key_pem(signing_key),
        signing_cert=cert_pem(signing),
        middle_key=key_pem(middle_key),
        middle_cert=cert_pem(middle),
        root_key=key_pem(root_key),
        root_cert=cert_pem(root),
    )
    return UnionPayCredentials(
        double=keys,
        config_env={"UNIONPAY_MERCHANT_ID": merchant_id, "UNIONPAY_GATEWAY": gateway},
        secret={
            "sign_key": key_pem(merchant_key),
            "sign_cert": cert_pem(merchant),
            "root_cert": cert_pem(root),
            "middle_cert": cert_pem(middle),
        },
    )


# --- the message rules, written apart from the adapter's ------------------------------------------


def _to_sign(fields: Mapping[str, str]) -> bytes:
    """acpsdk 5.1.0: sorted ``k=v`` of all but ``signature``, SHA-256, lower-case hex, as bytes."""
    text = "&".join(f"{key}={value}" for key, value in sorted(fields.items()) if key != "signature")
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def _load_key(pem: str) -> RSAPrivateKey:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem.encode("ascii"), password=None)  # type: ignore[return-value]


def sign_with(fields: Mapping[str, str], key_pem_text: str, cert_pem_text: str) -> dict[str, str]:
    """``fields`` with ``signPubKeyCert`` (CRLF PEM, as UnionPay sends it) and a 5.1.0 ``signature`` by that key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    message = {key: value for key, value in fields.items() if key != "signature"}
    message["signPubKeyCert"] = cert_pem_text.strip().replace("\r\n", "\n").replace("\n", "\r\n")
    signature = _load_key(key_pem_text).sign(_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
    message["signature"] = base64.b64encode(signature).decode("ascii")
    return message


def _verify_merchant(fields: Mapping[str, str], merchant_certs: Mapping[str, str]) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pem, signature = merchant_certs.get(fields.get("certId", "")), fields.get("signature", "")
    if pem is None or not signature:
        return False
    public_key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
    try:
        public_key.verify(  # type: ignore[union-attr, call-arg]
            base64.b64decode(signature, validate=True), _to_sign(fields), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _raw_answer(fields: Mapping[str, str]) -> bytes:
    """A synchronous answer as UnionPay writes it: ``k=v&k=v``, values not percent-encoded."""
    return "&".join(f"{key}={value}" for key, value in sorted(fields.items())).encode("utf-8")


def _now() -> datetime:
    return datetime.now(SHANGHAI)


def _query_id() -> str:
    return _now().strftime("%m%d%H%M%S") + "".join(secrets.choice("0123456789") for _ in range(11))


@dataclass
class _Txn:
    txn_type: str
    order_id: str
    txn_time: str
    amount: int
    back_url: str
    query_id: str
    code: str  # the transaction's own respCode, what a query answers as origRespCode
    trace_time: str = ""
    orig_qry_id: str = ""
    refunded: int = 0


class UnionPayDouble:
    """UnionPay's gateway for one merchant: verifies our forms, answers and notifies signed (thread-safe)."""

    channel = "unionpay"

    def __init__(
        self,
        credentials: UnionPayDoubleKeys | UnionPayCredentials,
        deliver: Deliver,
        result_delay_s: float | None = 0.5,
    ) -> None:
        self.keys = credentials.double if isinstance(credentials, UnionPayCredentials) else credentials
        self._deliver = deliver
        self.result_delay_s = result_delay_s
        """Seconds until a refund's result is notified (a daemon thread); None: held for :meth:`settle_refund`."""
        self._lock = threading.Lock()
        self._txns: dict[tuple[str, str], _Txn] = {}
        self._by_query_id: dict[str, _Txn] = {}
        self._planned: list[tuple[str | None, str]] = []
        self._sent: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.requests: list[dict[str, str]] = []
        """Every verified request (the form fields as received), in order."""
        self.deliveries: list[dict[str, Any]] = []
        """Every notification sent: ``url``, ``fields``, and what we answered (``status``, ``body``)."""

    # --- the provider's API ----------------------------------------------------------------------

    def handle(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(url).path
        if path not in (FRONT_PATH, BACK_PATH, QUERY_PATH):
            return 404, {"Content-Type": "text/plain"}, b"not found"
        if method != "POST":
            return 405, {"Content-Type": "text/plain"}, b"POST only"
        if isinstance(body, str):
            body = body.encode("utf-8")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return self._answer({}, "10")
        fields = dict(pairs)
        if len(fields) != len(pairs):
            return self._answer({}, "10")
        if path == FRONT_PATH:
            try:
                self._pay(fields, "success")
            except ValueError as error:
                return 200, {"Content-Type": "text/html;charset=UTF-8"}, f"<p>支付失败: {error}</p>".encode()
            return 200, {"Content-Type": "text/html;charset=UTF-8"}, "<p>支付成功</p>".encode()
        if not _verify_merchant(fields, self.keys.merchant_certs):
            return self._answer(fields, "11")
        if fields.get("merId") != self.keys.merchant_id:
            return self._answer(fields, "31")
        if fields.get("version") != "5.1.0" or fields.get("signMethod") != "01":
            return self._answer(fields, "10")
        with self._lock:
            self.requests.append(fields)
            index = next((i for i, (where, _) in enumerate(self._planned) if where in (None, path)), None)
            planned = self._planned.pop(index)[1] if index is not None else None
        if planned is not None:
            return self._answer(fields, planned)
        if path == QUERY_PATH and fields.get("txnType") == "00":
            return self._query(fields)
        if path == BACK_PATH and fields.get("txnType") == "04":
            return self._refund(fields)
        return self._answer(fields, "10")

    def _answer(
        self, request: Mapping[str, str], code: str, extra: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        echo = ("version", "encoding", "bizType", "txnType", "txnSubType", "accessType", "merId", "orderId", "txnTime")
        fields = {key: request[key] for key in echo if request.get(key)}
        fields.update({"signMethod": "01", "respCode": code, "respMsg": MESSAGES.get(code, "交易失败")})
        fields.update(extra or {})
        return 200, {"Content-Type": "text/plain;charset=UTF-8"}, _raw_answer(self.sign(fields))

    def sign(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Sign ``fields`` as UnionPay does (its signing key; ``signPubKeyCert`` = its signing certificate)."""
        return sign_with(fields, self.keys.signing_key, self.keys.signing_cert)

    def _query(self, fields: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            txn = self._txns.get((fields.get("orderId", ""), fields.get("txnTime", "")))
            if txn is None:
                return self._answer(fields, "34")
            found = {
                "origRespCode": txn.code,
                "origRespMsg": MESSAGES.get(txn.code, "交易失败"),
                "queryId": txn.query_id,
                "txnAmt": str(txn.amount),
                "currencyCode": "156",
                "traceTime": txn.trace_time,
                "origQryId": txn.orig_qry_id,
            }
        return self._answer(fields, "00", {key: value for key, value in found.items() if value})

    def _refund(self, fields: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        order_id, opened, amount = fields.get("orderId", ""), fields.get("txnTime", ""), fields.get("txnAmt", "")
        if not (order_id.isalnum() and 8 <= len(order_id) <= 40 and len(opened) == 14 and amount.isdigit()):
            return self._answer(fields, "10")
        if not fields.get("backUrl") or fields.get("currencyCode") != "156" or int(amount) <= 0:
            return self._answer(fields, "10")
        with self._lock:
            if (order_id, opened) in self._txns:
                return self._answer(fields, "12")
            payment = self._by_query_id.get(fields.get("origQryId", ""))
            if payment is None or payment.txn_type != "01" or payment.code != "00":
                return self._answer(fields, "35")
            if payment.refunded + int(amount) > payment.amount:
                return self._answer(fields, "33")
            payment.refunded += int(amount)
            refund = _Txn("04", order_id, opened, int(amount), fields["backUrl"], _query_id(), "05")
            refund.orig_qry_id = payment.query_id
            self._txns[(order_id, opened)] = refund
            self._by_query_id[refund.query_id] = refund
        if self.result_delay_s is not None:
            timer = threading.Timer(self.result_delay_s, self.settle_refund, args=(order_id,))
            timer.daemon = True
            timer.start()
        return self._answer(fields, "00", {"queryId": refund.query_id, "origQryId": refund.orig_qry_id})

    # --- the people on UnionPay's side -----------------------------------------------------------

    def pay(self, client_params: Mapping[str, Any], outcome: str = "success") -> None:
        """The payer posts our form to ``frontTransReq.do`` and pays: ``success`` (notified), ``processing``
        (submitted, not finished: queries answer ``origRespCode 05``) or ``fail`` (``01``; no notification).
        A ``ValueError`` when the form is not one UnionPay would take."""
        if client_params.get("method") != "POST" or urlsplit(str(client_params.get("action"))).path != FRONT_PATH:
            raise ValueError("the form must POST to frontTransReq.do")
        fields = client_params.get("fields")
        if not isinstance(fields, Mapping) or not all(isinstance(value, str) for value in fields.values()):
            raise ValueError("the form fields must be strings")
        self._pay(dict(fields), outcome)

    def _pay(self, fields: dict[str, str], outcome: str) -> None:
        if outcome not in ("success", "processing", "fail"):
            raise ValueError(f"unknown outcome {outcome!r}")
        if not _verify_merchant(fields, self.keys.merchant_certs):
            raise ValueError("验证签名失败 (the form's signature does not verify with the merchant's certificate)")
        expected = {
            "version": "5.1.0",
            "signMethod": "01",
            "txnType": "01",
            "txnSubType": "01",
            "bizType": "000201",
            "currencyCode": "156",
            "merId": self.keys.merchant_id,
        }
        wrong = [key for key, value in expected.items() if fields.get(key) != value]
        if wrong or fields.get("channelType") not in ("07", "08") or not fields.get("backUrl"):
            raise ValueError(f"报文格式错误: {', '.join(wrong) or 'channelType/backUrl'}")
        amount, timeout = fields.get("txnAmt", ""), fields.get("payTimeout", "")
        if not amount.isdigit() or int(amount) <= 0:
            raise ValueError("txnAmt must be a positive number of fen")
        if timeout and timeout < _now().strftime("%Y%m%d%H%M%S"):
            raise ValueError("the order's payTimeout has passed")
        key = (fields.get("orderId", ""), fields.get("txnTime", ""))
        code = {"success": "00", "processing": "05", "fail": "01"}[outcome]
        with self._lock:
            self.requests.append(fields)
            txn = self._txns.get(key)
            if txn is not None and (txn.amount != int(amount) or txn.code == "00"):
                raise ValueError("重复交易 (this orderId and txnTime is taken)")
            if txn is None:
                txn = _Txn("01", key[0], key[1], int(amount), fields["backUrl"], _query_id(), code)
                self._txns[key] = txn
                self._by_query_id[txn.query_id] = txn
            txn.code, txn.trace_time = code, _now().strftime("%m%d%H%M%S")
        if code == "00":
            self._notify(txn)

    def settle_refund(self, order_id: str, outcome: str = "success") -> tuple[int, str] | None:
        """Finish the pending refund ``order_id`` (``success`` or ``fail``) and send its back notification."""
        with self._lock:
            refund = next((t for t in self._txns.values() if t.txn_type == "04" and t.order_id == order_id), None)
            if refund is None or refund.code != "05":
                return None
            refund.code, refund.trace_time = ("00" if outcome == "success" else "01"), _now().strftime("%m%d%H%M%S")
            if refund.code != "00":
                payment = self._by_query_id.get(refund.orig_qry_id)
                if payment is not None:
                    payment.refunded -= refund.amount
        return self._notify(refund)

    def settle_refunds(self) -> None:
        """Finish every pending refund successfully (with ``result_delay_s=None``)."""
        with self._lock:
            pending = [t.order_id for t in self._txns.values() if t.txn_type == "04" and t.code == "05"]
        for order_id in pending:
            self.settle_refund(order_id)

    def plan_answer(self, resp_code: str, times: int = 1, path: str | None = None) -> None:
        """The next ``times`` API calls (to ``path``, or any) answer ``resp_code`` (signed) and do nothing else."""
        with self._lock:
            self._planned.extend([(path, resp_code)] * times)

    def resend(self, order_id: str) -> tuple[int, str]:
        """Send the last notification of ``order_id`` again, unchanged (UnionPay resends until it gets HTTP 200)."""
        with self._lock:
            url, body = next(sent for key, sent in self._sent.items() if key[0] == order_id)
        return self._post(url, body)

    def finish_payout(self, out_bill_no: str, outcome: str) -> None:
        """UnionPay pays no payouts here: nothing to finish."""

    def plan_payout(self, outcome: str) -> None:
        """UnionPay pays no payouts here: nothing to plan."""

    # --- back notifications ----------------------------------------------------------------------

    def _notify(self, txn: _Txn) -> tuple[int, str]:
        fields = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "accessType": "0",
            "bizType": "000201",
            "txnType": txn.txn_type,
            "txnSubType": "01" if txn.txn_type == "01" else "00",
            "merId": self.keys.merchant_id,
            "orderId": txn.order_id,
            "txnTime": txn.txn_time,
            "txnAmt": str(txn.amount),
            "currencyCode": "156",
            "queryId": txn.query_id,
            "respCode": txn.code,
            "respMsg": MESSAGES.get(txn.code, "交易失败"),
            "traceNo": txn.query_id[-6:],
            "traceTime": txn.trace_time,
            "settleAmt": str(txn.amount),
            "settleCurrencyCode": "156",
            "settleDate": txn.trace_time[:4],
        }
        if txn.orig_qry_id:
            fields["origQryId"] = txn.orig_qry_id
        body = urlencode(self.sign(fields)).encode("ascii")
        with self._lock:
            self._sent[(txn.order_id, txn.txn_time)] = (txn.back_url, body)
        return self._post(txn.back_url, body)

    def _post(self, url: str, body: bytes) -> tuple[int, str]:
        status, answer = self._deliver(url, {"Content-Type": FORM}, body)
        with self._lock:
            self.deliveries.append(
                {"url": url, "fields": dict(parse_qsl(body.decode("ascii"))), "status": status, "body": answer}
            )
        return status, answer
