"""The live channels' notifications on the real engine: WeChat Pay, Alipay and UnionPay, each played by its double.

Why: ``test_callbacks.py`` proves the callback pipeline with the sandbox provider; the live
adapters differ in everything the pipeline trusts them with — the wire format, the signature,
the answer the provider reads, and how a refund is told apart from a payment. Here each
adapter is built from offline credentials (``devstack.doubles.<channel>.make_credentials``) and
installed with ``registry.use_provider``; every call its SDK makes is routed by ``responses``
to the channel's double, which checks our signatures as the provider does. Orders are opened
through ``POST /v1/payments`` (scene ``h5``: the one scene all three take), paid by the double's
payer, and the double's signed notification is captured by its ``deliver`` callable, then
delivered by the test: through ``callbacks.handle`` from threads (``chalice.test.Client`` serves
one request at a time, see ``test_callbacks.py``) or as raw bytes to
``POST /v1/payments/callbacks/<channel>``.

Example
-------
>>> # .venv/bin/python -m pytest tests/integration/test_channel_callbacks.py -q -p no:cacheprovider  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode

import pytest
import responses

from chalicelib.clock import SHANGHAI, utc_now
from chalicelib.config import get_settings
from chalicelib.invitations import service
from chalicelib.ledger.accounts import clearing_account
from chalicelib.models.ledger import ProviderSeen, QuarantinedEvent
from chalicelib.payments import callbacks, orders, registry
from chalicelib.payments.alipay import AlipayConfig, AlipayProvider
from chalicelib.payments.channels import created_at_of
from chalicelib.payments.provider import HttpReply
from chalicelib.payments.settlement import seen_key
from chalicelib.payments.unionpay import UnionPayConfig, UnionPayProvider
from chalicelib.payments.wechat_notify import (
    H_NONCE,
    H_SIGNATURE,
    H_TIMESTAMP,
    aead_decrypt,
    generate_sandbox_keys,
    sign_message,
    sign_notification,
)
from chalicelib.payments.wechatpay import WeChatPayProvider
from devstack.doubles import alipay as alipay_double
from devstack.doubles import unionpay as unionpay_double
from devstack.doubles import wechatpay as wechat_double
from tests.integration.flow_helpers import (
    FEE_FEN,
    Balances,
    Ordered,
    api_errors,
    assert_ledger_ok,
    exists,
    expect_moved,
    http,
    invitation,
    invite,
    order,
    postings_of,
    race,
    the_refund,
    transitions,
)
from tests.integration.test_callbacks import assert_untouched

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    import requests

    from chalicelib.payments.provider import ProviderEvent
    from tests.integration.flow_helpers import People

LIVE = ("wechat", "alipay", "unionpay")
COPIES = 8
WECHAT_API = "https://wechatpay.double.test"
ALIPAY_GATEWAY = "https://openapi.alipay.test/gateway.do"
UNIONPAY_GATEWAY = "https://gateway.test.95516.com"
UNIONPAY_MERCHANT = "777290058110048"
FRONTEND = "https://app.example.test/paid"
FORM = "application/x-www-form-urlencoded"


def notify_url(channel: str) -> str:
    return f"https://api.example.test/v1/payments/callbacks/{channel}"


@functools.cache
def stranger_key() -> str:
    """An RSA private key no provider holds (PEM), to sign forgeries with."""
    return generate_sandbox_keys()[0]


@functools.cache
def credentials(channel: str) -> Any:
    """One generated merchant per channel and test process (RSA key generation is slow)."""
    if channel == "wechat":
        return wechat_double.make_credentials(api_base=WECHAT_API)
    if channel == "alipay":
        return alipay_double.make_credentials(gateway=ALIPAY_GATEWAY)
    return unionpay_double.make_credentials(merchant_id=UNIONPAY_MERCHANT, gateway=UNIONPAY_GATEWAY)


# --- notifications as the doubles post them -----------------------------------------------------


@dataclass(frozen=True)
class Note:
    """A notification as the provider posts it: its headers and raw body, byte for byte."""

    headers: dict[str, str]
    body: bytes

    def with_headers(self, changes: Mapping[str, str]) -> Note:
        return dataclasses.replace(self, headers={**self.headers, **changes})

    def one_byte_changed(self, marker: bytes) -> Note:
        """The body with the byte after ``marker`` changed (a digit stays a digit: the form still parses)."""
        position = self.body.index(marker) + len(marker)
        changed = bytearray(self.body)
        old = chr(changed[position])
        changed[position] = ord(str((int(old) + 1) % 10) if old.isdigit() else ("X" if old != "X" else "Y"))
        return dataclasses.replace(self, body=bytes(changed))

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def with_form(self, fields: Mapping[str, str]) -> Note:
        return dataclasses.replace(self, body=urlencode(fields).encode("ascii"))


def answer_of(reply: HttpReply | Any) -> tuple[int, str]:
    """``(status, body)`` of a reply of ``callbacks.handle`` or of the HTTP route."""
    if isinstance(reply, HttpReply):
        return reply.status, reply.body
    return reply.status_code, (reply.body or b"").decode("utf-8")


# --- one live channel: its double, its adapter, what the double posted ---------------------------


class World:
    """A live channel for one test: the adapter (installed), its double, and the notifications captured."""

    name: ClassVar[str]
    ack: ClassVar[tuple[int, str | None]]
    """The acknowledgement the provider reads: status, and the body when the provider reads it."""
    payment_marker: ClassVar[bytes]
    """A signed field of the payment notification whose first byte a forger changes."""

    def __init__(self) -> None:
        self.credentials = credentials(self.name)
        self.notes: list[Note] = []
        self._lock = threading.Lock()
        self.double: Any = None
        self.adapter: Any = None

    def deliver(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """The double's ``deliver``: keep the notification for the test to deliver (no HTTP)."""
        assert url == notify_url(self.name), url
        with self._lock:
            self.notes.append(Note(dict(headers), bytes(body)))
        return 200, "captured"

    def route(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        """``responses`` callback: our SDK's HTTP call, answered by the double."""
        body = request.body.encode("utf-8") if isinstance(request.body, str) else (request.body or b"")
        return self.double.handle(request.method or "GET", request.url or "", dict(request.headers), body)

    def pay(self, client_params: Mapping[str, Any]) -> Note:
        """The payer pays with what ``POST /v1/payments`` answered; the provider's payment notification."""
        before = len(self.notes)
        self.double.pay(client_params)
        [note] = self.notes[before:]
        return note

    def event(self, note: Note) -> ProviderEvent:
        """What the adapter reads in a genuine notification (its event id, the provider's transaction id)."""
        found = self.adapter.parse_callback(note.headers, note.body, utc_now())
        assert found is not None
        return found

    def acknowledged(self, reply: Any) -> bool:
        status, body = answer_of(reply)
        return status == self.ack[0] and (self.ack[1] is None or body == self.ack[1])

    def forge(self, how: str, genuine: Note) -> Note:
        return getattr(self, f"forge_{how}")(genuine)

    def forge_one_byte(self, genuine: Note) -> Note:
        return genuine.one_byte_changed(self.payment_marker)

    # refunds, as each provider finishes them
    def hold_refund(self) -> None:
        """The next refund is accepted but not finished in the answer (the provider notifies later)."""

    def release_refund(self, refund_no: str) -> Note:
        """The provider finishes the refund; its notification."""
        raise NotImplementedError

    def refund_calls(self, refund_no: str) -> int:
        """How many times we asked the provider for refund ``refund_no``."""
        raise NotImplementedError

    def payment_queries(self) -> int:
        """How many payment queries reached the provider."""
        raise NotImplementedError

    def install(self, rsps: responses.RequestsMock) -> None:
        raise NotImplementedError


class WeChatWorld(World):
    name = "wechat"
    ack = (204, "")
    payment_marker = b'"id":"'

    def install(self, rsps: responses.RequestsMock) -> None:
        self.double = wechat_double.WeChatPayDouble(self.credentials.double, deliver=self.deliver, result_delay_s=0)
        self.adapter = WeChatPayProvider(self.credentials.config(notify_url(self.name), api_base=WECHAT_API))
        pattern = re.compile(re.escape(WECHAT_API) + r"/v3/.*")
        for method in (responses.GET, responses.POST):
            rsps.add_callback(method, pattern, callback=self.route, content_type=None)

    def release_refund(self, refund_no: str) -> Note:
        # with result_delay_s=0 the double sent REFUND.SUCCESS right after answering PROCESSING
        [delivery] = [d for d in self.double.deliveries if d["event_type"] == "REFUND.SUCCESS"]
        return Note(dict(delivery["headers"]), delivery["body"])

    def refund_calls(self, refund_no: str) -> int:
        return sum(1 for r in self.double.requests if r["verified"] and r["path"] == "/v3/refund/domestic/refunds")

    def payment_queries(self) -> int:
        prefix = "/v3/pay/transactions/out-trade-no/"
        return sum(1 for r in self.double.requests if r["method"] == "GET" and r["path"].startswith(prefix))

    def forge_other_key(self, genuine: Note) -> Note:
        """The same body, its signature made with a key that is not WeChat Pay's."""
        timestamp, nonce = genuine.headers[H_TIMESTAMP], genuine.headers[H_NONCE]
        signature = sign_message(genuine.body, private_key_pem=stranger_key(), timestamp=timestamp, nonce=nonce)
        return genuine.with_headers({H_SIGNATURE: signature})

    def forge_stale_timestamp(self, genuine: Note) -> Note:
        """Signed by WeChat Pay, 400 s ago (a replay)."""
        stale, nonce = str(int(time.time()) - 400), genuine.headers[H_NONCE]
        keys = self.credentials.double
        signature = sign_message(genuine.body, private_key_pem=keys.wechat_private_key, timestamp=stale, nonce=nonce)
        return genuine.with_headers({H_TIMESTAMP: stale, H_SIGNATURE: signature})

    def _resigned(self, genuine: Note, **changes: str) -> Note:
        """The payment's resource with ``changes``, encrypted and signed by WeChat Pay as a new notification."""
        keys = self.credentials.double
        payload = json.loads(genuine.body)
        sealed = payload["resource"]
        resource = json.loads(
            aead_decrypt(
                keys.apiv3_key.encode("utf-8"),
                nonce=sealed["nonce"],
                associated_data=sealed["associated_data"],
                ciphertext=sealed["ciphertext"],
            )
        )
        resource.update(changes)
        event = {key: payload[key] for key in ("create_time", "event_type", "summary")}
        headers, body = sign_notification(
            {**event, "id": str(uuid.uuid4())},
            resource,
            private_key_pem=keys.wechat_private_key,
            serial=keys.public_key_id,
            api_v3_key=keys.apiv3_key.encode("utf-8"),
            timestamp=int(time.time()),
            nonce=uuid.uuid4().hex,
            associated_data=sealed["associated_data"],
        )
        return Note(headers, body)

    def forge_other_merchant(self, genuine: Note) -> Note:
        return self._resigned(genuine, mchid="1900000999")

    def forge_other_appid(self, genuine: Note) -> Note:
        return self._resigned(genuine, appid="wx00000000000000ff")


class AlipayWorld(World):
    name = "alipay"
    ack = (200, "success")
    payment_marker = b"notify_id="

    def install(self, rsps: responses.RequestsMock) -> None:
        # asynchronous results (a pending refund) come from a daemon thread 0.2 s after the answer
        self.double = alipay_double.AlipayDouble(self.credentials, self.deliver, result_delay_s=0.2)
        env, secret = self.credentials.config_env, self.credentials.secret
        self.adapter = AlipayProvider(
            AlipayConfig(
                app_id=env["ALIPAY_APP_ID"],
                seller_id=env["ALIPAY_SELLER_ID"],
                app_private_key=secret["app_private_key"],
                app_cert=secret["app_cert"],
                alipay_cert=secret["alipay_cert"],
                alipay_root_cert=secret["alipay_root_cert"],
                notify_url=notify_url(self.name),
                return_url=FRONTEND,
                gateway=env["ALIPAY_GATEWAY"],
                bank_card_product_code=env["ALIPAY_BANKCARD_PRODUCT_CODE"],
            )
        )
        pattern = re.compile(re.escape(ALIPAY_GATEWAY) + r"(\?.*)?$")
        for method in (responses.GET, responses.POST):
            rsps.add_callback(method, pattern, callback=self.route)

    def hold_refund(self) -> None:
        self.double.plan_refund("pending")

    def release_refund(self, refund_no: str) -> Note:
        self.double.wait_idle()
        [delivery] = [d for d in self.double.deliveries if d.params.get("out_biz_no") == refund_no]
        return Note({"Content-Type": alipay_double.FORM}, delivery.body)

    def refund_calls(self, refund_no: str) -> int:
        return sum(
            1
            for params in self.double.requests
            if params["method"] == "alipay.trade.refund"
            and json.loads(params["biz_content"]).get("out_request_no") == refund_no
        )

    def payment_queries(self) -> int:
        return sum(1 for params in self.double.requests if params["method"] == "alipay.trade.query")

    def signed(self, fields: Mapping[str, str]) -> Note:
        """``fields`` signed with Alipay's key, posted as Alipay posts notifications."""
        return Note({"Content-Type": alipay_double.FORM}, self.double.signed_notification(fields))

    def forge_other_key(self, genuine: Note) -> Note:
        fields = {key: value for key, value in genuine.form().items() if key != "sign"}
        content = alipay_double.AlipayDouble.notification_content(fields)
        return genuine.with_form({**fields, "sign": self.double.sign(content, private_key_pem=stranger_key())})

    def forge_amount_changed(self, genuine: Note) -> Note:
        """Every amount lowered to 0.01 after Alipay signed (the signature is the genuine one)."""
        amounts = ("total_amount", "receipt_amount", "invoice_amount", "buyer_pay_amount")
        return genuine.with_form({**genuine.form(), **dict.fromkeys(amounts, "0.01")})

    def forge_other_app_id(self, genuine: Note) -> Note:
        return self.signed({**genuine.form(), "app_id": "2021000000009999", "auth_app_id": "2021000000009999"})

    def forge_other_seller(self, genuine: Note) -> Note:
        return self.signed({**genuine.form(), "seller_id": "2088000000009999"})


class UnionPayWorld(World):
    name = "unionpay"
    ack = (200, None)  # UnionPay reads the status only
    payment_marker = b"queryId="

    def install(self, rsps: responses.RequestsMock) -> None:
        # a refund's result waits for release_refund (settle_refund)
        self.double = unionpay_double.UnionPayDouble(self.credentials, self.deliver, result_delay_s=None)
        self.adapter = UnionPayProvider(
            UnionPayConfig(
                merchant_id=self.credentials.config_env["UNIONPAY_MERCHANT_ID"],
                **self.credentials.secret,
                back_url=notify_url(self.name),
                front_url=FRONTEND,
                gateway=self.credentials.config_env["UNIONPAY_GATEWAY"],
                txn_time_of=created_at_of,
            )
        )
        rsps.add_callback(
            responses.POST, re.compile(re.escape(UNIONPAY_GATEWAY) + r"/gateway/api/.*"), callback=self.route
        )

    def release_refund(self, refund_no: str) -> Note:
        before = len(self.notes)
        self.double.settle_refund(refund_no)
        [note] = self.notes[before:]
        return note

    def refund_calls(self, refund_no: str) -> int:
        return sum(
            1 for fields in self.double.requests if (fields.get("txnType"), fields.get("orderId")) == ("04", refund_no)
        )

    def payment_queries(self) -> int:
        return sum(1 for fields in self.double.requests if fields.get("txnType") == "00")

    def forge_other_key(self, genuine: Note) -> Note:
        """Signed with another key, naming UnionPay's certificate."""
        keys = self.credentials.double
        return genuine.with_form(unionpay_double.sign_with(genuine.form(), stranger_key(), keys.signing_cert))

    def forge_amount_changed(self, genuine: Note) -> Note:
        return genuine.with_form({**genuine.form(), "txnAmt": "1", "settleAmt": "1"})

    def forge_other_merchant(self, genuine: Note) -> Note:
        return genuine.with_form(self.double.sign({**genuine.form(), "merId": "777290058119999"}))


WORLDS: dict[str, type[World]] = {world.name: world for world in (WeChatWorld, AlipayWorld, UnionPayWorld)}


@pytest.fixture
def world(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The live channel ``request.param``: its adapter installed and offered, its SDK's HTTP routed to its double."""
    built = WORLDS[request.param]()
    monkeypatch.setattr(registry, "available_channels", lambda: [*LIVE, "sandbox"])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        built.install(rsps)
        registry.use_provider(built.name, built.adapter)
        try:
            yield built
        finally:
            registry.use_provider(built.name, None)


@dataclass
class ChannelBalances(Balances):
    """``Balances`` with the clearing shard of the order's channel (``Balances`` tracks the sandbox's)."""

    channel: str = "sandbox"

    @property
    def accounts(self) -> list[str]:
        tracked = super().accounts
        tracked[-1] = clearing_account(self.channel, self.invitation_id, get_settings().ledger_shards)
        return tracked


@dataclass(frozen=True)
class Opened:
    """An invitation with its order opened on a live channel through the API, and what the payer got."""

    ordered: Ordered
    client_params: dict[str, Any]


@pytest.fixture
def opened(api: Any, people: People, world: World) -> Opened:
    invitation_id = invite(people)
    balances = ChannelBalances(invitation_id, people.doctor.user_id, channel=world.name)
    body = {"purpose": "invitation", "reference": invitation_id, "channel": world.name, "scene": "h5"}
    response = http(api, "POST", "/v1/payments", people.patient, body)
    assert response.status_code == 201, response.json_body
    opened_order = response.json_body
    assert (opened_order["channel"], opened_order["status"], opened_order["amount_fen"]) == (
        world.name,
        "pending",
        FEE_FEN,
    )
    return Opened(Ordered(invitation_id, opened_order["order_id"], balances), opened_order["client_params"])


# --- deliveries and checks ----------------------------------------------------------------------


def handle(world: World, note: Note) -> HttpReply:
    """``note`` handled as the route handles it (for threads)."""
    return callbacks.handle(world.name, note.headers, note.body, utc_now())


def post(api: Any, world: World, note: Note) -> Any:
    """``note`` POSTed as raw bytes with its headers to ``/v1/payments/callbacks/<channel>``."""
    return api.http.request("POST", f"/v1/payments/callbacks/{world.name}", headers=note.headers, body=note.body)


def retry_refused(api: Any, world: World, note: Note, replies: list[Any]) -> None:
    """Every reply is an acknowledgement or a 409; a 409 is redelivered by the provider and acknowledged then."""
    for reply in replies:
        assert not isinstance(reply, Exception), reply
        if answer_of(reply)[0] == 409:
            again = post(api, world, note)
            assert world.acknowledged(again), answer_of(again)
        else:
            assert world.acknowledged(reply), answer_of(reply)


def redeliver_until_acknowledged(api: Any, world: World, note: Note) -> None:
    replies = [post(api, world, note) for _ in range(3)]
    assert world.acknowledged(replies[-1]), [answer_of(reply) for reply in replies]


def assert_paid_once(world: World, ordered: Ordered, transaction_id: str | None) -> None:
    """``flow_helpers.assert_paid_once`` for a live channel (its seen key and clearing shard are the channel's)."""
    assert transaction_id
    assert transitions(ordered.invitation_id) == ["create", "pay"]
    assert invitation(ordered.invitation_id).status == "pending_response"
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}"}
    paid = order(ordered.order_id)
    assert (paid.status, paid.provider_ref, paid.channel) == ("succeeded", transaction_id, world.name)
    assert list(paid.flags or []) == []
    expect_moved(ordered.balances, escrow=FEE_FEN, clearing=-FEE_FEN)
    assert exists(ProviderSeen, seen_key(world.name, "txn", transaction_id), "SEEN")
    assert_ledger_ok()


def assert_refunded_once(world: World, ordered: Ordered) -> None:
    """Taken in once and refunded in full once, the provider asked once; the order stays paid, unflagged."""
    assert invitation(ordered.invitation_id).status == "refunded"
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}", f"refund:{ordered.refund_no}"}
    expect_moved(ordered.balances)
    assert world.refund_calls(ordered.refund_no) == 1
    paid = order(ordered.order_id)
    assert (paid.status, list(paid.flags or [])) == ("succeeded", [])
    assert_ledger_ok()


def shanghai_stamp() -> str:
    return utc_now().astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


# --- 1. repeats at once -------------------------------------------------------------------------

TIMING = ["released_together", "all_read_pending_first"]


@contextlib.contextmanager
def first_reads_held(order_id: str, parties: int, *, skip_first: Callable[[], bool]) -> Iterator[None]:
    """Each of ``parties`` threads, at its first read of the order, waits until all have read it (as pending).

    ``skip_first()``: True for a thread whose first read does not count (the job's caller loads the
    order before ``follow_up``, which reads it again in ``apply_payment``).
    """
    barrier, local, read = threading.Barrier(parties), threading.local(), orders.get

    def read_then_wait(wanted: str) -> Any:
        found = read(wanted)
        if wanted == order_id and not getattr(local, "read", False):
            if not getattr(local, "skipped", False) and skip_first():
                local.skipped = True
                return found
            local.read = True
            barrier.wait(timeout=30)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orders, "get", read_then_wait)
        yield


def on_threads(
    order_id: str,
    parties: int,
    timing: str,
    call: Callable[[int], Any],
    *,
    loads_first: Callable[[int], bool] | None = None,
) -> list[Any]:
    """``race(parties, call)``; with ``all_read_pending_first``, no thread writes before every one has read.

    ``loads_first(index)``: True for a thread that loads the order once before its counted read.
    """
    if timing == "released_together":
        return race(parties, call)
    mine = threading.local()

    def marked(index: int) -> Any:
        mine.loads_first = loads_first is not None and loads_first(index)
        return call(index)

    with first_reads_held(order_id, parties, skip_first=lambda: getattr(mine, "loads_first", False)):
        return race(parties, marked)


@pytest.mark.parametrize("timing", TIMING)
@pytest.mark.parametrize("world", LIVE, indirect=True)
def test_the_same_notification_eight_times_at_once_is_applied_once(
    api: Any, world: World, opened: Opened, timing: str
) -> None:
    # GIVEN the payer paid; the provider's signed payment notification
    note = world.pay(opened.client_params)
    genuine = world.event(note)

    # WHEN eight copies arrive at the same moment (with all_read_pending_first: each reads the order as
    # pending before any of them writes)
    replies = on_threads(
        opened.ordered.order_id, COPIES, timing, lambda _: handle(world, note), loads_first=lambda _: False
    )

    # THEN each is acknowledged as the provider expects, or told to retry (409) and acknowledged on retry
    assert sum(1 for reply in replies if not isinstance(reply, Exception) and world.acknowledged(reply)) >= 1, [
        answer_of(reply) if isinstance(reply, HttpReply) else reply for reply in replies
    ]
    retry_refused(api, world, note, replies)
    # AND the payment was applied once: one posting, the order succeeded
    assert_paid_once(world, opened.ordered, genuine.provider_ref)
    assert exists(ProviderSeen, seen_key(world.name, "event", genuine.event_id), "SEEN")


# --- 2. the notification against the follow-up job ----------------------------------------------


@pytest.mark.parametrize("timing", TIMING)
@pytest.mark.parametrize("world", LIVE, indirect=True)
def test_a_notification_racing_the_follow_up_query_is_applied_once(
    api: Any, world: World, opened: Opened, timing: str
) -> None:
    # GIVEN a payment the provider has taken: its notification and the follow-up job's query both report it
    note = world.pay(opened.client_params)
    genuine = world.event(note)
    order_id = opened.ordered.order_id
    queries_before = world.payment_queries()

    def act(index: int) -> Any:
        if index % 2:  # the job: it loads the order, queries the provider, applies what the query says
            return orders.follow_up(order(order_id), utc_now())
        return handle(world, note)

    # WHEN deliveries and job steps run at the same moment (with all_read_pending_first: every one reads the
    # order as pending before any writes)
    outcomes = on_threads(order_id, 6, timing, act, loads_first=lambda index: index % 2 == 1)

    # THEN each applied it, found it applied, or met the race (409, to be retried)
    api_errors(outcomes)
    for outcome in outcomes:
        if isinstance(outcome, str):
            assert outcome in ("applied", "duplicate"), outcome
        elif isinstance(outcome, HttpReply):
            assert outcome.status == 409 or world.acknowledged(outcome), outcome
    assert world.payment_queries() - queries_before == 3  # each job step asked the provider
    redeliver_until_acknowledged(api, world, note)
    # AND it was applied once, with the provider's transaction id whichever path won
    assert_paid_once(world, opened.ordered, genuine.provider_ref)


# --- 3. forgeries -------------------------------------------------------------------------------

FORGERIES = [
    ("wechat", "one_byte", 401),
    ("wechat", "other_key", 401),
    ("wechat", "stale_timestamp", 401),
    ("wechat", "other_merchant", 400),
    ("wechat", "other_appid", 400),
    ("alipay", "one_byte", 401),
    ("alipay", "other_key", 401),
    ("alipay", "amount_changed", 401),
    ("alipay", "other_app_id", 400),
    ("alipay", "other_seller", 400),
    ("unionpay", "one_byte", 401),
    ("unionpay", "other_key", 401),
    ("unionpay", "amount_changed", 401),
    ("unionpay", "other_merchant", 400),
]


@pytest.mark.parametrize(
    ("world", "forgery", "status"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in FORGERIES],
    indirect=["world"],
)
def test_a_forged_notification_is_refused_and_changes_nothing(
    api: Any, world: World, opened: Opened, forgery: str, status: int
) -> None:
    # GIVEN an order waiting for payment, and a copy of its genuine notification that must not be believed
    # (signed by a stranger, altered after signing, replayed late, or signed by the provider for another merchant)
    genuine = world.pay(opened.client_params)
    event = world.event(genuine)
    bad = world.forge(forgery, genuine)

    # WHEN it is posted (twice, as the provider retries a refusal)
    replies = [post(api, world, bad) for _ in range(2)]

    # THEN it is refused with a 4xx, and nothing changed
    assert [reply.status_code for reply in replies] == [status, status], [answer_of(reply) for reply in replies]
    assert not any(world.acknowledged(reply) for reply in replies)
    assert_untouched(opened.ordered)
    assert not exists(ProviderSeen, seen_key(world.name, "event", event.event_id), "SEEN")
    assert not exists(ProviderSeen, seen_key(world.name, "txn", event.provider_ref or ""), "SEEN")
    # AND the genuine notification that follows is applied
    reply = post(api, world, genuine)
    assert world.acknowledged(reply), answer_of(reply)
    assert_paid_once(world, opened.ordered, event.provider_ref)


# --- 4. a refund's notification among the payment's duplicates ----------------------------------


@pytest.mark.parametrize("world", LIVE, indirect=True)
def test_a_refund_notification_twice_and_out_of_order_with_the_payments_duplicate_refunds_once(
    api: Any, people: People, world: World, opened: Opened
) -> None:
    # GIVEN a paid invitation (through its notification)
    payment = world.pay(opened.client_params)
    reply = post(api, world, payment)
    assert world.acknowledged(reply), answer_of(reply)
    ordered = opened.ordered
    # AND the doctor declines: the refund is ordered, and the provider is still processing it
    world.hold_refund()
    service.decline(people.doctor, ordered.invitation_id, "On leave that week", utc_now())
    refund = the_refund(ordered.invitation_id)
    assert (invitation(ordered.invitation_id).status, refund.status) == ("refunding", "processing")
    assert world.refund_calls(refund.refund_no) == 1
    # AND the provider finishes it and notifies
    refunded = world.release_refund(refund.refund_no)
    refund_event = world.event(refunded)
    assert (refund_event.kind, refund_event.merchant_ref, refund_event.amount_fen) == (
        "refund_succeeded",
        refund.refund_no,
        FEE_FEN,
    )
    if world.name == "alipay":  # a full refund: Alipay reports it under TRADE_CLOSED, with out_biz_no
        assert refunded.form()["trade_status"] == "TRADE_CLOSED"

    # WHEN the refund's notification, the payment's duplicate and the refund's again arrive, in that order
    replies = [post(api, world, note) for note in (refunded, payment, refunded, payment)]

    # THEN every one is acknowledged; the payer was refunded once and the order was neither re-paid nor closed
    assert all(world.acknowledged(reply) for reply in replies), [answer_of(reply) for reply in replies]
    assert the_refund(ordered.invitation_id).status == "succeeded"
    assert transitions(ordered.invitation_id) == ["create", "pay", "decline", "start_refund", "refund"]
    assert_refunded_once(world, ordered)
    assert exists(ProviderSeen, seen_key(world.name, "event", refund_event.event_id), "SEEN")
    # AND a burst of both at once changes nothing either
    burst = race(4, lambda index: handle(world, (refunded, payment)[index % 2]))
    retry_refused(api, world, payment, [reply for index, reply in enumerate(burst) if index % 2])
    retry_refused(api, world, refunded, [reply for index, reply in enumerate(burst) if not index % 2])
    assert_refunded_once(world, ordered)


def _alipay_refund_fields(payment: Note, trade_status: str, out_biz_no: str, refund_fee: str) -> dict[str, str]:
    """The payment notification's fields as Alipay sends them for a refund of that trade (a new notify_id)."""
    fields = {key: value for key, value in payment.form().items() if key != "sign"}
    fields.update(
        notify_id=f"{fields['notify_id'][:-6]}{uuid.uuid4().int % 10**6:06d}",
        notify_time=shanghai_stamp(),
        trade_status=trade_status,
        out_biz_no=out_biz_no,
        refund_fee=refund_fee,
        gmt_refund=f"{shanghai_stamp()}.123",
    )
    if trade_status == "TRADE_CLOSED":
        fields["gmt_close"] = shanghai_stamp()
    return fields


@pytest.mark.parametrize("world", ["alipay"], indirect=True)
@pytest.mark.parametrize(
    ("trade_status", "refund_fee"), [("TRADE_SUCCESS", "100.00"), ("TRADE_CLOSED", "500.05")], ids=["partial", "full"]
)
def test_an_alipay_refund_notification_for_a_number_not_ours_is_neither_a_payment_nor_a_close(
    api: Any, world: AlipayWorld, opened: Opened, trade_status: str, refund_fee: str
) -> None:
    # GIVEN an order paid through its notification
    payment = world.pay(opened.client_params)
    paid = world.event(payment)
    assert world.acknowledged(post(api, world, payment))
    # AND Alipay's refund notification of that trade (partial: TRADE_SUCCESS; full: TRADE_CLOSED) for a refund
    # number we never issued
    stray = f"RF{uuid.uuid4().hex[:26]}"
    note = world.signed(_alipay_refund_fields(payment, trade_status, stray, refund_fee))
    notify_id = note.form()["notify_id"]

    # WHEN it is delivered, twice
    replies = [post(api, world, note) for _ in range(2)]

    # THEN it is acknowledged and kept for an operator as a refund, not taken as a payment or a close
    assert all(world.acknowledged(reply) for reply in replies), [answer_of(reply) for reply in replies]
    stored = QuarantinedEvent.get(f"QUARANTINE#alipay#{notify_id}", "EVENT", consistent_read=True)
    assert (stored.kind, stored.merchant_ref, stored.reason) == ("refund_succeeded", stray, "unknown_order")
    assert_paid_once(world, opened.ordered, paid.provider_ref)


@pytest.mark.parametrize("world", ["alipay"], indirect=True)
def test_an_alipay_partial_refund_report_does_not_settle_our_full_refund(
    api: Any, people: People, world: AlipayWorld, opened: Opened
) -> None:
    # GIVEN a paid invitation, declined; its full refund is processing at Alipay
    payment = world.pay(opened.client_params)
    assert world.acknowledged(post(api, world, payment))
    ordered = opened.ordered
    world.hold_refund()
    service.decline(people.doctor, ordered.invitation_id, "On leave that week", utc_now())
    refund_no = the_refund(ordered.invitation_id).refund_no

    # WHEN a TRADE_SUCCESS notification reports a partial refund under our refund number
    partial = world.signed(_alipay_refund_fields(payment, "TRADE_SUCCESS", refund_no, "100.00"))
    refused = post(api, world, partial)

    # THEN it is refused (the amount is not our refund's), and neither the refund nor the order moved
    assert refused.status_code == 400, answer_of(refused)
    assert the_refund(ordered.invitation_id).status == "processing"
    assert invitation(ordered.invitation_id).status == "refunding"
    assert set(postings_of(ordered.invitation_id)) == {f"pay:{ordered.order_id}"}
    assert (order(ordered.order_id).status, list(order(ordered.order_id).flags or [])) == ("succeeded", [])
    # AND Alipay's genuine full-refund notification settles it once
    refunded = world.release_refund(refund_no)
    assert world.acknowledged(post(api, world, refunded))
    assert_refunded_once(world, ordered)


# --- 5. the route's transport -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("world", "content_type"),
    [
        pytest.param("alipay", FORM, id="alipay-form"),
        pytest.param("alipay", alipay_double.FORM, id="alipay-form-charset"),
        pytest.param("unionpay", FORM, id="unionpay-form"),
        pytest.param("unionpay", unionpay_double.FORM, id="unionpay-form-charset"),
    ],
    indirect=["world"],
)
def test_a_form_post_to_the_callback_route_is_taken_and_answered_as_the_provider_reads_it(
    api: Any, world: World, opened: Opened, content_type: str
) -> None:
    # GIVEN the provider's payment notification, a form
    note = world.pay(opened.client_params)
    paid = world.event(note)

    # WHEN it is POSTed to our route with the form content type
    reply = api.http.request(
        "POST", f"/v1/payments/callbacks/{world.name}", headers={"Content-Type": content_type}, body=note.body
    )

    # THEN the route takes it (no 415) and answers 200 (Alipay: the body exactly ``success``), in plain text
    assert reply.status_code == 200, answer_of(reply)
    if world.name == "alipay":
        assert reply.body == b"success"
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert_paid_once(world, opened.ordered, paid.provider_ref)
