"""Alipay (支付宝开放平台) behind the ``Provider`` interface: certificate mode, RSA2, yuan at the wire.

Why these choices (reference/payments.md §2, §4.1):

* **python-alipay-sdk ``DCAliPay``** (public-key *certificate* mode) signs every request, adds
  ``app_cert_sn`` / ``alipay_root_cert_sn`` (md5 of issuer DN + serial; the root's over its
  RSA-signed members only) and verifies Alipay's synchronous answers with the public key of
  ``alipay_cert`` over the exact response substring. ``alipay.fund.trans.uni.transfer`` needs
  certificate mode. The SDK, pyOpenSSL and pycryptodomex are imported on first use (cold start).
* **Our transport, not the SDK's.** ``verified_sync_response`` sends a GET through ``urlopen`` with
  every signed parameter in the URL, including ``biz_content`` (payee names, bank-card numbers),
  which proxies and access logs keep; and ``DCAliPay.__init__`` takes no ``config``, so its
  timeout stays at 15 s. Our subclass POSTs the same signed form (``…/gateway.do?charset=utf-8``,
  body ``application/x-www-form-urlencoded``) with ``requests`` and ``timeout=config.timeout``, then
  hands the raw answer to the SDK's own verification. Neither the URL nor the body is ever logged.
* **Beijing time.** The SDK stamps ``timestamp`` with ``datetime.now()`` — UTC on Lambda, eight
  hours off what Alipay checks; our subclass stamps Asia/Shanghai.
* **Callbacks** are verified here with ``cryptography`` (no network, no SDK import): a flat dict
  from ``parse_qsl`` (a repeated key is ``malformed_body``), SHA256withRSA over the sorted
  ``k=v`` of every field except ``sign`` and ``sign_type``, with Alipay's key (never ours).
  A refund notification (``out_biz_no`` + ``refund_fee``, under ``TRADE_SUCCESS`` for a partial
  refund or ``TRADE_CLOSED`` for a full one) is a refund event, never a payment or a close.
* **Unknown outcomes** (timeouts, 5xx, code ``20000``, ``SYSTEM_ERROR``, an answer that does not
  verify) are retryable ``ProviderError``; the caller queries, then resends the SAME number
  (``out_request_no`` / ``out_biz_no`` are Alipay's idempotency keys).

Example
-------
>>> provider = AlipayProvider(AlipayConfig(app_id="2021…", seller_id="2088…", ...))  # doctest: +SKIP
>>> provider.create_payment(PaymentRequest("PI1", 1, "挂号费", "h5", None, expires_at)).client_params  # doctest: +SKIP
{'url': 'https://openapi.alipay.com/gateway.do?app_cert_sn=…&sign=…'}
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from chalicelib.clock import SHANGHAI
from chalicelib.payments.money import MoneyError, fen_to_yuan, yuan_to_fen
from chalicelib.payments.provider import (
    HttpReply,
    PaymentIntent,
    PaymentStatus,
    PayoutStatus,
    ProviderError,
    ProviderEvent,
    RefundStatus,
)
from chalicelib.payments.wechat_events import MalformedEventError
from chalicelib.payments.wechat_notify import NotificationRejected

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from chalicelib.payments.provider import (
        Channel,
        EventKind,
        PaymentRequest,
        PaymentState,
        PayoutRequest,
        PayoutState,
        RefundRequest,
    )

__all__ = ["AlipayConfig", "AlipayProvider"]

SUCCESS: Final = "10000"
_TIME: Final = "%Y-%m-%d %H:%M:%S"
_MAX_FEN: Final = 100_000_000_00  # Alipay's ceiling for one payment: 100,000,000.00 yuan
_ACCOUNT_PRODUCT: Final = "TRANS_ACCOUNT_NO_PWD"
_SCENE: Final = "DIRECT_TRANSFER"
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_TRADE_STATES: Final[dict[str, PaymentState]] = {
    "WAIT_BUYER_PAY": "pending",
    "TRADE_SUCCESS": "succeeded",
    "TRADE_FINISHED": "succeeded",
    "TRADE_CLOSED": "closed",
}
_PAYOUT_STATES: Final[dict[str, PayoutState]] = {
    "SUCCESS": "succeeded",
    "DEALING": "processing",
    "WAIT_PAY": "processing",
    "INIT": "processing",
    "FAIL": "failed",
    "CLOSED": "failed",
    "REFUND": "failed",  # a bank-card transfer the bank sent back (退票)
}
_UNKNOWN_OUTCOME: Final = frozenset(
    {
        "SYSTEM_ERROR",
        "ACQ.SYSTEM_ERROR",
        "AOP.ACQ.SYSTEM_ERROR",
        # the same out_biz_no seen with other content: what happened to the first must be queried
        "PAYMENT_INFO_INCONSISTENCY",
        "ACQ.SELLER_BALANCE_NOT_ENOUGH",  # our balance, topped up later: the same refund succeeds then
    }
)


@dataclass(frozen=True)
class AlipayConfig:
    """One Alipay app in certificate mode (the lead builds it from settings and the channel secret).

    ``app_id``: the open-platform app; ``seller_id``: our merchant's Alipay user id (``2088…``),
    checked on every notification; ``app_private_key``: PEM (PKCS#1 or PKCS#8; Alipay's bare
    base64 is wrapped); ``app_cert``: our app public-key certificate (``appCertPublicKey_….crt``);
    ``alipay_cert``: Alipay's public-key certificate (``alipayCertPublicKey_RSA2.crt``), whose key
    verifies answers and notifications; ``alipay_root_cert``: Alipay's root chain
    (``alipayRootCert.crt``); ``notify_url``: our callback route; ``return_url``: where the H5
    cashier sends the payer back (and ``quit_url``); ``gateway``: the open-platform gateway;
    ``timeout``: seconds for every gateway call; ``bank_card_product_code``: the product of
    transfers to bank cards (to be confirmed with Alipay, reference/payments.md §2.5).
    """

    app_id: str
    seller_id: str
    app_private_key: str = field(repr=False)
    app_cert: str = field(repr=False)
    alipay_cert: str = field(repr=False)
    alipay_root_cert: str = field(repr=False)
    notify_url: str
    return_url: str | None = None
    gateway: str = "https://openapi.alipay.com/gateway.do"
    timeout: float = 10.0
    bank_card_product_code: str = "TRANS_BANKCARD_NO_PWD"

    def __post_init__(self) -> None:
        if not self.app_id or not self.seller_id.startswith("2088"):
            raise ValueError("an Alipay app id and a 2088… seller id are needed")
        if not self.timeout > 0:
            raise ValueError("the Alipay timeout must be a positive number of seconds")


# --- helpers ------------------------------------------------------------------------------------


def _private_key_pem(text: str) -> str:
    """Alipay's key tool hands out bare base64; the SDK needs PEM armour."""
    text = text.strip()
    if "-----BEGIN" in text:
        return text
    body = "".join(text.split())
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN PRIVATE KEY-----\n{lines}\n-----END PRIVATE KEY-----\n"


def _cert_chain(text: str) -> str:
    """The chain as the SDK reads it: it splits certificates on a blank line (CRLF or none breaks it)."""
    blocks = _PEM_CERT.findall(text.replace("\r\n", "\n"))
    return "\n\n".join(blocks) + "\n" if blocks else text


def _shanghai_time(instant: datetime) -> str:
    return instant.astimezone(SHANGHAI).strftime(_TIME)


def _iso(text: object) -> str | None:
    """Alipay's Beijing ``yyyy-MM-dd HH:mm:ss[.SSS]`` as ISO 8601 with its +08:00 offset."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.strptime(text[:19], _TIME).replace(tzinfo=SHANGHAI).isoformat()
    except ValueError:
        return text


def _subject(description: str) -> str:
    """Alipay refuses ``/ = &`` in subject and caps it at 256 characters."""
    cleaned = re.sub(r"[/=&]", " ", description).strip()
    return cleaned[:128] or "订单"


def _error(api: str, answer: Mapping[str, Any]) -> ProviderError:
    """A non-success answer as a ``ProviderError``; branches on ``code`` / ``sub_code`` only."""
    code, sub_code = str(answer.get("code") or ""), str(answer.get("sub_code") or "")
    retryable = code == "20000" or sub_code.upper() in _UNKNOWN_OUTCOME or sub_code.startswith("isp.")
    return ProviderError(
        "system_error" if retryable else (sub_code or f"alipay_{code or 'error'}"),
        f"{api} answered {code or '?'} {sub_code}".rstrip(),
        retryable=retryable,
    )


@functools.cache
def _client_class() -> type:
    """``DCAliPay`` with our transport and clock (built on first use: the SDK stays out of cold start)."""
    import requests
    from alipay import DCAliPay
    from alipay.exceptions import AliPayValidationError

    class Client(DCAliPay):  # type: ignore[misc]
        session: requests.Session

        def build_body(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            data: dict[str, Any] = super().build_body(*args, **kwargs)
            data["timestamp"] = datetime.now(SHANGHAI).strftime(_TIME)  # the SDK's is server-local (UTC on Lambda)
            return data

        def verified_sync_response(self, data: dict[str, Any], response_type: str) -> dict[str, Any]:
            api = str(data.get("method"))
            signed = self.sign_data(data)
            url = self._gateway + ("&" if "?" in self._gateway else "?") + "charset=utf-8"
            try:
                reply = self.session.post(
                    url,
                    data=signed.encode("ascii"),
                    headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
                    timeout=self._config.timeout,
                )
            except requests.Timeout:
                raise ProviderError("timeout", f"{api} timed out", retryable=True) from None
            except requests.RequestException as error:  # its text may quote the request: never passed on
                raise ProviderError("connection_error", f"{api}: {type(error).__name__}", retryable=True) from None
            if reply.status_code != 200:
                raise ProviderError("http_error", f"{api} answered HTTP {reply.status_code}", retryable=True)
            try:
                raw = reply.content.decode("utf-8")
                response = json.loads(raw)
            except ValueError:
                raise ProviderError("bad_response", f"{api} answered something not JSON", retryable=True) from None
            if not isinstance(response, dict):
                raise ProviderError("bad_response", f"{api} answered something not an object", retryable=True)
            if "sign" not in response or "error_response" in response:  # gateway refusals come unsigned
                answer = response.get(response_type) or response.get("error_response")
                if not isinstance(answer, dict) or str(answer.get("code")) in (SUCCESS, "40004"):
                    # a business outcome (success or refusal) is only ever read from a verified answer
                    raise ProviderError("response_unverified", f"{api} answered without a signature", retryable=True)
                raise _error(api, answer)
            try:
                verified: dict[str, Any] = self._verify_and_return_sync_response(raw, response_type)
            except (AliPayValidationError, ValueError, binascii.Error):
                raise ProviderError(
                    "response_unverified", f"{api}'s answer does not verify with Alipay's key", retryable=True
                ) from None
            return verified

    return Client


# --- the provider -------------------------------------------------------------------------------


class AlipayProvider:
    """The ``Provider`` of channel ``alipay`` (wap/app payments, refunds, transfers, notifications)."""

    channel: Channel = "alipay"

    def __init__(self, config: AlipayConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._sdk: Any = None
        self._alipay_key: RSAPublicKey | None = None
        self._product_codes: dict[str, str] = {}
        """Which product each transfer sent from this container used (the query must repeat it)."""

    # -- the SDK ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        with self._lock:
            if self._sdk is None:
                import warnings

                import requests
                from alipay.utils import AliPayConfig

                config = self.config
                with warnings.catch_warnings():
                    # pyOpenSSL 24+ flags the X509 getters the SDK reads the serial numbers with
                    warnings.simplefilter("ignore", DeprecationWarning)
                    client = _client_class()(
                        appid=config.app_id,
                        app_private_key_string=_private_key_pem(config.app_private_key),
                        app_public_key_cert_string=config.app_cert,
                        alipay_public_key_cert_string=config.alipay_cert,
                        alipay_root_cert_string=_cert_chain(config.alipay_root_cert),
                        app_notify_url=config.notify_url,
                        sign_type="RSA2",
                    )
                    _ = client.app_cert_sn, client.alipay_root_cert_sn  # computed (and cached) now
                # DCAliPay.__init__ takes neither a gateway nor a config: it keeps both in private
                # attributes (``_gateway``: production or sandbox by ``debug``; ``_config``: a 15 s
                # timeout). Set them, so the gateway and timeout of this config are the ones used.
                client._gateway = config.gateway
                client._config = AliPayConfig(timeout=config.timeout)
                client.session = requests.Session()
                self._sdk = client
            return self._sdk

    def _call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = getattr(self._client(), method)(*args, **kwargs)
        return answer

    # -- payments --------------------------------------------------------------------------------

    def create_payment(self, request: PaymentRequest) -> PaymentIntent:
        """Sign a wap (H5) or app order; Alipay is not called: the trade exists once the payer opens it."""
        if request.scene not in ("h5", "app"):
            raise ProviderError(
                "scene_unsupported", "Alipay cannot be opened inside WeChat (jsapi scenes)", retryable=False
            )
        if not 1 <= request.amount_fen <= _MAX_FEN:
            raise ProviderError("invalid_amount", "Alipay takes 0.01 to 100,000,000.00 yuan", retryable=False)
        client, config = self._client(), self.config
        order = {"time_expire": _shanghai_time(request.expires_at)}
        subject, amount = _subject(request.description), fen_to_yuan(request.amount_fen)
        if request.scene == "h5":
            if config.return_url:
                order["quit_url"] = config.return_url
            signed = client.api_alipay_trade_wap_pay(
                subject,
                request.out_trade_no,
                amount,
                return_url=config.return_url,
                notify_url=config.notify_url,
                **order,
            )
            params: dict[str, Any] = {"url": f"{config.gateway}?{signed}"}
        else:
            signed = client.api_alipay_trade_app_pay(
                subject, request.out_trade_no, amount, notify_url=config.notify_url, **order
            )
            params = {"order_string": signed}
        return PaymentIntent(provider_ref=request.out_trade_no, client_params=params)

    def query_payment(self, out_trade_no: str) -> PaymentStatus:
        answer = self._call("api_alipay_trade_query", out_trade_no=out_trade_no)
        if answer.get("code") != SUCCESS:
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":  # the payer has not opened it (yet)
                raise ProviderError("order_not_found", f"Alipay has no trade {out_trade_no}", retryable=False)
            raise _error("alipay.trade.query", answer)
        state = _TRADE_STATES.get(str(answer.get("trade_status")))
        if state is None:
            raise ProviderError("bad_response", f"unknown trade_status for {out_trade_no}", retryable=True)
        try:
            amount = yuan_to_fen(str(answer.get("total_amount")))
        except MoneyError:
            raise ProviderError("bad_response", f"no valid total_amount for {out_trade_no}", retryable=True) from None
        return PaymentStatus(
            out_trade_no=out_trade_no,
            state=state,
            transaction_id=answer.get("trade_no") or None,
            amount_fen=amount,
            currency="CNY",
            paid_at=_iso(answer.get("send_pay_date")) if state == "succeeded" else None,
        )

    def close_payment(self, out_trade_no: str) -> None:
        """Close an unpaid trade; one Alipay never saw is fine; a paid one is ``order_paid``."""
        answer = self._call("api_alipay_trade_close", out_trade_no=out_trade_no)
        if answer.get("code") == SUCCESS or answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return
        if answer.get("sub_code") == "ACQ.TRADE_STATUS_ERROR":  # paid, or closed already: ask which
            state = self.query_payment(out_trade_no).state
            if state == "closed":
                return
            if state == "succeeded":
                raise ProviderError("order_paid", f"trade {out_trade_no} is paid", retryable=False)
            raise ProviderError("system_error", f"trade {out_trade_no} could not be closed", retryable=True)
        raise _error("alipay.trade.close", answer)

    # -- refunds ---------------------------------------------------------------------------------

    def refund(self, request: RefundRequest) -> RefundStatus:
        """``alipay.trade.refund`` with ``out_request_no`` = our refund number (the same on every retry).

        Money moved only when ``fund_change`` is ``Y``; ``N`` (a repeat, or not done yet) is settled
        by ``alipay.trade.fastpay.refund.query`` with the same number.
        """
        answer = self._call(
            "api_alipay_trade_refund",
            fen_to_yuan(request.amount_fen),
            out_trade_no=request.out_trade_no,
            out_request_no=request.out_refund_no,
            refund_reason=request.reason[:256],
        )
        if answer.get("code") != SUCCESS:
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                raise ProviderError("order_not_found", f"Alipay has no trade {request.out_trade_no}", retryable=False)
            raise _error("alipay.trade.refund", answer)
        if answer.get("fund_change") == "Y":
            return RefundStatus(request.out_refund_no, "succeeded", answer.get("trade_no") or None, request.amount_fen)
        try:
            return self.query_refund(request.out_refund_no, request.out_trade_no)
        except ProviderError as error:
            if error.code == "refund_not_found":  # accepted a moment ago: not visible yet
                return RefundStatus(request.out_refund_no, "processing", answer.get("trade_no") or None)
            raise

    def query_refund(self, out_refund_no: str, out_trade_no: str) -> RefundStatus:
        answer = self._call("api_alipay_trade_fastpay_refund_query", out_refund_no, out_trade_no=out_trade_no)
        if answer.get("code") != SUCCESS:
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                raise ProviderError("refund_not_found", f"Alipay has no trade {out_trade_no}", retryable=False)
            raise _error("alipay.trade.fastpay.refund.query", answer)
        if not answer.get("out_request_no") and not answer.get("refund_amount"):
            # a success without the refund's fields: Alipay never received this number
            raise ProviderError("refund_not_found", f"Alipay has no refund {out_refund_no}", retryable=False)
        amount: int | None
        try:
            amount = yuan_to_fen(str(answer.get("refund_amount")))
        except MoneyError:
            amount = None
        state = "succeeded" if answer.get("refund_status") == "REFUND_SUCCESS" else "processing"
        return RefundStatus(out_refund_no, state, answer.get("trade_no") or None, amount)

    # -- payouts ---------------------------------------------------------------------------------

    def payout(self, request: PayoutRequest) -> PayoutStatus:
        """``alipay.fund.trans.uni.transfer`` (certificate mode), ``out_biz_no`` = ``out_bill_no``.

        ``alipay`` payees: ``TRANS_ACCOUNT_NO_PWD`` to the login id (email or phone) with the real
        name Alipay checks. ``bank_card`` payees: ``config.bank_card_product_code`` with a
        ``BANKCARD_ACCOUNT`` identity and ``bankcard_ext_info`` (private account, ``account_type``
        "2"). That product code (``TRANS_BANKCARD_NO_PWD`` by default) could not be confirmed against
        Alipay's official page (reference/payments.md §2.5): confirm it when the product is signed.
        A business refusal (``40004`` with e.g. ``PAYEE_NOT_EXIST``) is a non-retryable
        ``ProviderError`` named by the ``sub_code`` (the flow queries before it gives the money
        back); ``SYSTEM_ERROR``, ``20000`` and timeouts are retryable.
        """
        payee, amount = request.payee, fen_to_yuan(request.amount_fen)
        if request.payee_kind == "alipay":
            if not payee.get("account") or not payee.get("real_name"):
                raise ProviderError("payee_invalid", "an Alipay payee needs account and real_name", retryable=False)
            product_code = _ACCOUNT_PRODUCT
            self._remember(request.out_bill_no, product_code)
            answer = self._call(
                "api_alipay_fund_trans_uni_transfer",
                request.out_bill_no,
                "ALIPAY_LOGON_ID",
                payee["account"],
                amount,
                name=payee["real_name"],
                order_title=request.remark[:100],
                remark=request.remark[:200],
            )
        elif request.payee_kind == "bank_card":
            if not payee.get("card_number") or not payee.get("holder_name") or not payee.get("bank"):
                raise ProviderError(
                    "payee_invalid", "a bank-card payee needs holder_name, bank and card_number", retryable=False
                )
            product_code = self.config.bank_card_product_code
            self._remember(request.out_bill_no, product_code)
            # the SDK's api_alipay_fund_trans_uni_transfer only takes ALIPAY_* identities: same call, generic
            answer = self._call(
                "server_api",
                "alipay.fund.trans.uni.transfer",
                {
                    "out_biz_no": request.out_bill_no,
                    "trans_amount": amount,
                    "product_code": product_code,
                    "biz_scene": _SCENE,
                    "order_title": request.remark[:100],
                    "remark": request.remark[:200],
                    "payee_info": {
                        "identity": payee["card_number"],
                        "identity_type": "BANKCARD_ACCOUNT",
                        "name": payee["holder_name"],
                        "bankcard_ext_info": {"inst_name": payee["bank"], "account_type": "2"},
                    },
                },
            )
        else:
            raise ProviderError(
                "payee_kind_unsupported", f"Alipay cannot pay {request.payee_kind!r} payees", retryable=False
            )
        if answer.get("code") != SUCCESS:
            # A refusal (named by its sub_code) is not yet proof that no transfer exists under this
            # number: the flow queries before it gives the money back (payouts.transfers._send).
            raise _error("alipay.fund.trans.uni.transfer", answer)
        return self._payout_status(request.out_bill_no, answer, request.amount_fen)

    def _remember(self, out_bill_no: str, product_code: str) -> None:
        if len(self._product_codes) >= 1024:  # a hint, not a record: the query tries both products anyway
            self._product_codes.clear()
        self._product_codes[out_bill_no] = product_code

    @staticmethod
    def _payout_status(out_bill_no: str, answer: Mapping[str, Any], amount_fen: int | None) -> PayoutStatus:
        status = str(answer.get("status") or "")
        state = _PAYOUT_STATES.get(status, "processing")
        if answer.get("trans_amount"):
            with contextlib.suppress(MoneyError):
                amount_fen = yuan_to_fen(str(answer["trans_amount"]))
        reason = None
        if state == "failed":
            reason = str(answer.get("error_code") or answer.get("fail_reason") or status)
        return PayoutStatus(
            out_bill_no, state, bill_id=answer.get("order_id") or None, amount_fen=amount_fen, fail_reason=reason
        )

    def query_payout(self, out_bill_no: str) -> PayoutStatus:
        """``alipay.fund.trans.common.query`` by ``out_biz_no``, whose product code must be repeated:
        the one this container used, else account transfers first, then bank-card ones."""
        codes = [self._product_codes.get(out_bill_no), _ACCOUNT_PRODUCT, self.config.bank_card_product_code]
        for product_code in dict.fromkeys(code for code in codes if code):
            answer = self._call(
                "server_api",
                "alipay.fund.trans.common.query",
                {"out_biz_no": out_bill_no, "product_code": product_code, "biz_scene": _SCENE},
            )
            if answer.get("code") == SUCCESS:
                return self._payout_status(out_bill_no, answer, None)
            if answer.get("sub_code") != "ORDER_NOT_EXIST":
                raise _error("alipay.fund.trans.common.query", answer)
        raise ProviderError("payout_not_found", f"Alipay has no transfer {out_bill_no}", retryable=False)

    def cancel_payout(self, out_bill_no: str) -> PayoutStatus:
        """Alipay cannot cancel a transfer: a final one is reported as it is, any other refused."""
        status = self.query_payout(out_bill_no)
        if status.state in ("succeeded", "failed", "cancelled"):
            return status
        raise ProviderError(
            "payout_not_cancellable", f"Alipay transfer {out_bill_no} cannot be cancelled", retryable=False
        )

    # -- callbacks -------------------------------------------------------------------------------

    def _alipay_public_key(self) -> RSAPublicKey:
        if self._alipay_key is None:
            from cryptography import x509
            from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

            key = x509.load_pem_x509_certificate(self.config.alipay_cert.encode("ascii")).public_key()
            if not isinstance(key, RSAPublicKey):
                raise ValueError("the Alipay certificate does not hold an RSA key")
            self._alipay_key = key
        return self._alipay_key

    def _verify(self, params: Mapping[str, str]) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))
        try:
            signature = base64.b64decode(params["sign"], validate=True)
            self._alipay_public_key().verify(signature, content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            raise NotificationRejected("bad_signature", "RSA2 signature does not verify with Alipay's key") from None

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderEvent | None:
        """Verify an Alipay notification (form-encoded, UTF-8) and normalise it.

        Alipay signs the form fields, not a header or a time: ``now`` is not used (repeats are
        dropped by ``notify_id``, which stays the same across Alipay's retries).
        """
        try:
            pairs = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError):
            raise NotificationRejected("malformed_body", "not a UTF-8 form") from None
        params: dict[str, str] = {}
        for key, value in pairs:
            if key in params:
                raise NotificationRejected("malformed_body", f"field {key} appears twice")
            params[key] = value
        if not params.get("sign"):
            raise NotificationRejected("missing_header", "no sign field")
        if params.get("sign_type", "RSA2") != "RSA2":
            raise NotificationRejected("unsupported_algorithm", "sign_type is not RSA2")
        if params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            raise NotificationRejected("malformed_body", "charset is not utf-8")
        self._verify(params)
        if params.get("app_id") != self.config.app_id:
            raise NotificationRejected("wrong_merchant", "app_id is not ours")
        if params.get("seller_id") != self.config.seller_id:
            raise NotificationRejected("wrong_merchant", "seller_id is not ours")
        return self._event(params)

    def _event(self, params: dict[str, str]) -> ProviderEvent | None:
        raw = {k: v for k, v in params.items() if k != "sign"}
        status = params.get("trade_status")
        if params.get("notify_type", "trade_status_sync") != "trade_status_sync" or status not in (
            "TRADE_SUCCESS",
            "TRADE_FINISHED",
            "TRADE_CLOSED",
        ):
            return None  # WAIT_BUYER_PAY, or a notification we do not act on
        event_id, out_trade_no = params.get("notify_id"), params.get("out_trade_no")
        if not event_id or not out_trade_no:
            raise MalformedEventError("notification without notify_id or out_trade_no")
        refund_fee, out_biz_no = params.get("refund_fee"), params.get("out_biz_no")
        if out_biz_no or params.get("gmt_refund") or (refund_fee and refund_fee not in ("0", "0.0", "0.00")):
            # a refund (partial: TRADE_SUCCESS; full: TRADE_CLOSED): never a payment, never a close.
            # refund_fee is the trade's refunded total: one refund per order here, so it is this refund's.
            if not out_biz_no or not refund_fee:
                raise MalformedEventError("refund notification without out_biz_no or refund_fee")
            return ProviderEvent(
                channel=self.channel,
                event_id=event_id,
                kind="refund_succeeded",
                merchant_ref=out_biz_no,
                provider_ref=params.get("trade_no") or None,
                amount_fen=_amount(refund_fee, "refund_fee"),
                currency="CNY",
                occurred_at=_iso(params.get("gmt_refund")) or _iso(params.get("notify_time")),
                order_ref=out_trade_no,
                raw=raw,
            )
        kind: EventKind = "payment_closed" if status == "TRADE_CLOSED" else "payment_succeeded"
        when = params.get("gmt_close") if kind == "payment_closed" else params.get("gmt_payment")
        return ProviderEvent(
            channel=self.channel,
            event_id=event_id,
            kind=kind,
            merchant_ref=out_trade_no,
            provider_ref=params.get("trade_no") or None,
            amount_fen=_amount(params.get("total_amount"), "total_amount"),
            currency="CNY",
            occurred_at=_iso(when) or _iso(params.get("notify_time")),
            raw=raw,
        )

    def acknowledge(self, accepted: bool) -> HttpReply:
        """Alipay reads the body: exactly ``success`` stops its retries, anything else (``fail``) retries."""
        return HttpReply(200, "success" if accepted else "fail", "text/plain")


def _amount(text: str | None, name: str) -> int:
    try:
        return yuan_to_fen(text or "")
    except MoneyError:
        raise MalformedEventError(f"notification field {name} is not a yuan amount") from None
