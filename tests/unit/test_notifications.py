"""Notifications: the outbox notice, its stream record, the notifiers and the ``send_notices`` consumer.

WeChat is reached over HTTP with ``responses`` (as in ``test_wechat.py``): every call to
api.weixin.qq.com must be mocked, so a test can count them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
import responses
from responses import matchers

from chalicelib.config import get_settings
from chalicelib.models.invitations import Notice
from chalicelib.models.transactions import Batch
from chalicelib.models.users import Account
from chalicelib.notifications import dispatch, notifier
from chalicelib.notifications.dispatch import send_notice_record
from chalicelib.notifications.notifier import (
    EVENT_TEXTS,
    LogNotifier,
    NoticeNotSentError,
    OutgoingNotice,
    WeChatNotifier,
    get_notifier,
)
from chalicelib.notifications.outbox import EVENTS, add_notice
from chalicelib.observability import logger
from tests.unit.stream_records import STREAM_ARN, stream_record

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from chalice.test import Client

API = "https://api.weixin.qq.com/cgi-bin/"
OA_APP_ID = "wx-live-oa-0001"
MP_APP_ID = "wx-live-mp-0002"
OA_SECRET = "oa-app-secret"
TEMPLATE_ID = "tmpl-notice-0001"
TOKEN = "oa-access-token-1"
NOW = datetime(2026, 3, 1, 2, 30, tzinfo=UTC)  # 10:30 in Asia/Shanghai
NAME = "\u5f20\u4e09"  # a person's name: must never leave in a notification or a log line
PHONE_MASKED = "139****5678"
DIAGNOSIS = "ASA III, difficult airway"
TABLE = "anes-unit-invitations"


# --- helpers -----------------------------------------------------------------------------------


def make_account(user_id: str, openids: dict[str, str] | None = None) -> Account:
    """An account with a name, a phone and (optionally) WeChat openids per app id."""
    account = Account(f"USER#{user_id}", "PROFILE")
    account.user_id, account.role, account.name, account.phone_masked = user_id, "hospital", NAME, PHONE_MASKED
    account.created_at = account.updated_at = NOW.isoformat()
    if openids:
        account.wechat_openids = dict(openids)
    account.save()
    return account


def write_notice(invitation_id: str, event: str, recipient_id: str, now: datetime = NOW) -> tuple[str, str]:
    """The outbox write as the invitation flow makes it; the notice's keys."""
    batch = Batch()
    add_notice(batch, invitation_id=invitation_id, event=event, recipient_id=recipient_id, now=now)
    batch.commit(Notice._get_connection().connection)
    notices = list(Notice.query(f"INVITATION#{invitation_id}", Notice.sk.startswith("NOTICE#")))
    assert len(notices) == 1
    return notices[0].pk, notices[0].sk


def notice_record(keys: tuple[str, str], event_name: str = "INSERT", sequence: str = "100") -> dict[str, Any]:
    """The stream record DynamoDB makes of the notice item as it is now."""
    pk, sk = keys
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    item = boto3.client("dynamodb").get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]
    record = stream_record(f"ev-{sequence}", event_name, sequence)
    record["dynamodb"]["Keys"] = key
    for image in ("NewImage", "OldImage"):
        if image in record["dynamodb"]:
            record["dynamodb"][image] = item
    return record


def stored(keys: tuple[str, str]) -> Notice:
    return Notice.get(*keys, consistent_read=True)


@dataclasses.dataclass
class RecordingNotifier:
    """A notifier that remembers what it was asked to send, and answers ``outcome`` (or raises it)."""

    outcome: str | Exception = "recorded"
    sent: list[tuple[OutgoingNotice, str]] = dataclasses.field(default_factory=list)
    attempts: int = 0

    def send(self, notice: OutgoingNotice, recipient: Account) -> str:
        self.attempts += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        self.sent.append((notice, recipient.user_id))
        return self.outcome


@pytest.fixture
def read_logs(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """A reader of the Powertools log lines written so far, as JSON objects."""
    sink = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", sink)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in sink.getvalue().splitlines()]

    return read


@pytest.fixture
def wechat_http() -> Iterator[responses.RequestsMock]:
    """api.weixin.qq.com mocked: every HTTP call must have an answer registered."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def answer_token(mock: responses.RequestsMock) -> None:
    mock.get(
        API + "token",
        json={"access_token": TOKEN, "expires_in": 7200},
        match=[
            matchers.query_param_matcher({"grant_type": "client_credential", "appid": OA_APP_ID, "secret": OA_SECRET})
        ],
    )


def answer_send(mock: responses.RequestsMock, **reply: Any) -> None:
    mock.post(
        API + "message/template/send",
        json=reply or {"errcode": 0, "errmsg": "ok", "msgid": 200228332},
        match=[matchers.query_param_matcher({"access_token": TOKEN})],
    )


def wechat_notifier() -> WeChatNotifier:
    return WeChatNotifier(OA_APP_ID, TEMPLATE_ID, secret=lambda: OA_SECRET)


def outgoing(event: str = "accepted", invitation_id: str = "inv-1", recipient_id: str = "u-1") -> OutgoingNotice:
    return OutgoingNotice(event, invitation_id, recipient_id, f"https://m.example.cn/invitations/{invitation_id}", NOW)


# --- LogNotifier -------------------------------------------------------------------------------


def test_the_log_notifier_logs_ids_and_the_link_only(aws: None, read_logs: Callable[[], list[dict[str, Any]]]) -> None:
    # GIVEN a recipient with a name, a phone and an openid, and a notice of her invitation
    make_account("u-log", {get_settings().wechat_app_ids["oa"]: "o-secret-openid"})
    keys = write_notice("inv-log", "accepted", "u-log")

    # WHEN the record is dispatched through the log notifier
    outcome = send_notice_record(notice_record(keys), now=NOW, notifier=LogNotifier())

    # THEN one "notice" line names the event, the invitation, the recipient and the link ...
    assert outcome == "logged"
    lines = read_logs()
    notice_lines = [line for line in lines if line["message"] == "notice"]
    assert len(notice_lines) == 1
    line = notice_lines[0]
    assert (line["notice_event"], line["invitation_id"], line["recipient_id"]) == ("accepted", "inv-log", "u-log")
    assert line["link"] == f"{get_settings().frontend_url}/invitations/inv-log"
    # ... and no line holds the name, the phone or the openid
    text = json.dumps(lines, ensure_ascii=False)
    assert any(line["message"] == "notice dispatched" for line in lines)
    for secret in (NAME, PHONE_MASKED, "o-secret-openid"):
        assert secret not in text


def test_the_log_notifier_answers_logged_without_an_openid(read_logs: Callable[[], list[dict[str, Any]]]) -> None:
    recipient = Account("USER#u-no-wx", "PROFILE", user_id="u-no-wx", role="patient", name=NAME)

    assert LogNotifier().send(outgoing(recipient_id="u-no-wx"), recipient) == "logged"
    assert NAME not in json.dumps(read_logs(), ensure_ascii=False)


# --- dispatch ----------------------------------------------------------------------------------


def test_a_notice_is_sent_and_marked_once(aws: None) -> None:
    # GIVEN a notice written by the invitation flow, and its stream record
    make_account("u-1")
    keys = write_notice("inv-1", "new_invitation", "u-1")
    record = notice_record(keys)
    sender = RecordingNotifier()

    # WHEN the record is delivered
    outcome = send_notice_record(record, now=NOW, notifier=sender)

    # THEN the notice went out with the invitation's link and is marked sent
    assert outcome == "recorded"
    assert sender.sent == [
        (
            OutgoingNotice(
                "new_invitation",
                "inv-1",
                "u-1",
                f"{get_settings().frontend_url}/invitations/inv-1",
                datetime.fromisoformat(stored(keys).created_at),
            ),
            "u-1",
        )
    ]
    notice = stored(keys)
    assert (notice.sent_at, notice.outcome) == (NOW.isoformat(timespec="seconds"), "recorded")

    # WHEN the same record is delivered again
    again = send_notice_record(record, now=NOW, notifier=sender)

    # THEN nothing is sent and the mark is unchanged
    assert again is None
    assert len(sender.sent) == 1
    assert (stored(keys).sent_at, stored(keys).outcome) == (NOW.isoformat(timespec="seconds"), "recorded")


def test_the_mark_never_overwrites_an_earlier_one(aws: None) -> None:
    # GIVEN a notice another delivery already marked
    make_account("u-race")
    keys = write_notice("inv-race", "declined", "u-race")
    notice = stored(keys)
    notice.update(actions=[Notice.sent_at.set("2026-03-01T02:00:00+00:00"), Notice.outcome.set("sent")])

    # WHEN a late mark comes
    marked = dispatch._mark(stored(keys), "no_channel", NOW)

    # THEN it changes nothing
    assert marked is False
    assert (stored(keys).sent_at, stored(keys).outcome) == ("2026-03-01T02:00:00+00:00", "sent")


def test_a_mark_does_not_recreate_a_deleted_notice(aws: None) -> None:
    make_account("u-gone")
    keys = write_notice("inv-gone", "expired", "u-gone")
    notice = stored(keys)
    notice.delete()

    assert dispatch._mark(notice, "sent", NOW) is False
    assert list(Notice.query(keys[0])) == []


def test_a_record_of_a_notice_since_deleted_sends_nothing(aws: None) -> None:
    make_account("u-del")
    keys = write_notice("inv-del", "expired", "u-del")
    record = notice_record(keys)
    stored(keys).delete()
    sender = RecordingNotifier()

    assert send_notice_record(record, now=NOW, notifier=sender) is None
    assert sender.sent == []


@pytest.mark.parametrize(
    "record",
    [
        stream_record("ev-inv", "INSERT"),
        stream_record("ev-mod", "MODIFY"),
        stream_record("ev-rem", "REMOVE"),
    ],
    ids=["invitation-insert", "invitation-modify", "invitation-remove"],
)
def test_records_of_other_items_are_ignored(aws: None, record: dict[str, Any]) -> None:
    sender = RecordingNotifier()

    assert send_notice_record(record, now=NOW, notifier=sender) is None
    assert sender.sent == []


@pytest.mark.parametrize("event_name", ["MODIFY", "REMOVE"])
def test_only_the_insert_of_a_notice_sends(aws: None, event_name: str) -> None:
    # GIVEN a notice (its own mark makes a MODIFY record; a clean-up would make a REMOVE)
    make_account("u-mod")
    keys = write_notice("inv-mod", "refunded", "u-mod")
    sender = RecordingNotifier()

    # WHEN such a record arrives
    outcome = send_notice_record(notice_record(keys, event_name), now=NOW, notifier=sender)

    # THEN nothing is sent, and the notice is still waiting for its INSERT
    assert outcome is None
    assert sender.sent == []
    assert stored(keys).sent_at is None


def test_a_recipient_that_no_longer_exists_is_no_recipient(aws: None) -> None:
    # GIVEN a notice for an account that does not exist (any more)
    keys = write_notice("inv-orphan", "accepted", "u-deleted")
    sender = RecordingNotifier()

    # WHEN its record is delivered
    outcome = send_notice_record(notice_record(keys), now=NOW, notifier=sender)

    # THEN nothing is sent, and the outcome is recorded: no error, no retry
    assert outcome == "no_recipient"
    assert sender.sent == []
    assert (stored(keys).sent_at, stored(keys).outcome) == (NOW.isoformat(timespec="seconds"), "no_recipient")
    assert send_notice_record(notice_record(keys), now=NOW, notifier=sender) is None


def test_a_transient_failure_leaves_the_notice_unmarked_for_the_redelivery(aws: None) -> None:
    # GIVEN WeChat that does not answer
    make_account("u-retry")
    keys = write_notice("inv-retry", "new_message", "u-retry")
    record = notice_record(keys)

    # WHEN the record is delivered, it fails and the notice stays unsent
    with pytest.raises(NoticeNotSentError):
        send_notice_record(record, now=NOW, notifier=RecordingNotifier(NoticeNotSentError("wechat errcode -1")))
    assert stored(keys).sent_at is None

    # THEN the redelivery, once WeChat answers, sends it
    sender = RecordingNotifier("sent")
    assert send_notice_record(record, now=NOW, notifier=sender) == "sent"
    assert len(sender.sent) == 1
    assert stored(keys).outcome == "sent"


def test_the_stage_notifier_is_used_by_default(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    make_account("u-default")
    keys = write_notice("inv-default", "cancelled", "u-default")
    sender = RecordingNotifier("from-settings")
    monkeypatch.setattr(dispatch, "get_notifier", lambda: sender)

    assert send_notice_record(notice_record(keys), now=NOW) == "from-settings"
    assert len(sender.sent) == 1


# --- WeChatNotifier (api.weixin.qq.com mocked) ----------------------------------------------------


def recipient_with(openids: dict[str, str] | None) -> Account:
    account = Account("USER#u-wx", "PROFILE", user_id="u-wx", role="patient", name=NAME, phone_masked=PHONE_MASKED)
    if openids is not None:
        account.wechat_openids = openids
    return account


def test_wechat_sends_a_template_message_with_the_event_the_time_and_the_link(
    wechat_http: responses.RequestsMock,
) -> None:
    answer_token(wechat_http)
    answer_send(wechat_http)
    sender = wechat_notifier()

    outcome = sender.send(outgoing("accepted", "inv-wx"), recipient_with({OA_APP_ID: "o-oa-1", MP_APP_ID: "o-mp-1"}))

    # THEN one token call, one template message to the official-account openid, each with a timeout
    assert outcome == "sent"
    assert [call.request.url.split("?")[0] for call in wechat_http.calls] == [
        API + "token",
        API + "message/template/send",
    ]
    assert all(call.request.req_kwargs["timeout"] == notifier.TIMEOUT_SECONDS for call in wechat_http.calls)
    body = json.loads(wechat_http.calls[1].request.body)
    assert body == {
        "touser": "o-oa-1",
        "template_id": TEMPLATE_ID,
        "url": "https://m.example.cn/invitations/inv-wx",
        "data": {
            "keyword1": {"value": "\u60a8\u7684\u9080\u8bf7\u5df2\u88ab\u63a5\u53d7"},  # your invitation was accepted
            "keyword2": {"value": "2026-03-01 10:30"},
        },
    }
    assert NAME not in wechat_http.calls[1].request.body.decode()


def test_wechat_reuses_its_client_and_token(wechat_http: responses.RequestsMock) -> None:
    answer_token(wechat_http)
    answer_send(wechat_http)
    sender = wechat_notifier()
    recipient = recipient_with({OA_APP_ID: "o-oa-1"})

    sender.send(outgoing(), recipient)
    sender.send(outgoing("refunded"), recipient)

    assert [call.request.url.split("?")[0] for call in wechat_http.calls] == [
        API + "token",
        API + "message/template/send",
        API + "message/template/send",
    ]


def test_wechat_makes_no_client_until_it_sends() -> None:
    def no_secret() -> str:
        raise AssertionError("the secret was read before the first send")

    sender = WeChatNotifier(OA_APP_ID, TEMPLATE_ID, secret=no_secret)

    assert sender._client is None


@pytest.mark.parametrize(
    "openids", [None, {}, {MP_APP_ID: "o-mp-only"}], ids=["never-linked", "empty", "mini-program-only"]
)
def test_wechat_without_an_official_account_openid_is_no_channel(
    wechat_http: responses.RequestsMock, openids: dict[str, str] | None
) -> None:
    outcome = wechat_notifier().send(outgoing(), recipient_with(openids))

    assert outcome == "no_channel"
    assert len(wechat_http.calls) == 0


def test_wechat_reads_the_openid_of_a_stored_account(aws: None, wechat_http: responses.RequestsMock) -> None:
    # GIVEN an account as stored (a MapAttribute keyed by app id), read back from the table
    make_account("u-stored", {OA_APP_ID: "o-oa-stored"})
    account = Account.get("USER#u-stored", "PROFILE", consistent_read=True)
    answer_token(wechat_http)
    answer_send(wechat_http)

    assert wechat_notifier().send(outgoing(recipient_id="u-stored"), account) == "sent"
    assert json.loads(wechat_http.calls[1].request.body)["touser"] == "o-oa-stored"


@pytest.mark.parametrize(
    ("errcode", "outcome"),
    [(43004, "unsubscribed"), (40003, "invalid_openid"), (43101, "refused_by_user")],
)
def test_a_permanent_refusal_is_an_outcome(wechat_http: responses.RequestsMock, errcode: int, outcome: str) -> None:
    answer_token(wechat_http)
    answer_send(wechat_http, errcode=errcode, errmsg="require subscribe")

    assert wechat_notifier().send(outgoing(), recipient_with({OA_APP_ID: "o-oa-1"})) == outcome


@pytest.mark.parametrize(
    "reply",
    [
        {"json": {"errcode": -1, "errmsg": "system error"}},
        {"json": {"errcode": 45009, "errmsg": "reach max api daily quota limit"}},
        {"json": {"errcode": 40037, "errmsg": "invalid template_id"}},
        {"status": 502, "body": "bad gateway"},
        {"body": requests.exceptions.ConnectTimeout("timed out")},
        {"body": "<html>gateway</html>", "content_type": "text/html"},
    ],
    ids=["system-busy", "rate-limited", "bad-template", "http-502", "timeout", "not-json"],
)
def test_a_transient_failure_raises(wechat_http: responses.RequestsMock, reply: dict[str, Any]) -> None:
    answer_token(wechat_http)
    wechat_http.post(API + "message/template/send", **reply)

    with pytest.raises(NoticeNotSentError):
        wechat_notifier().send(outgoing(), recipient_with({OA_APP_ID: "o-oa-1"}))


def test_a_token_that_cannot_be_fetched_raises(wechat_http: responses.RequestsMock) -> None:
    wechat_http.get(API + "token", body=requests.exceptions.ConnectionError("refused"))

    with pytest.raises(NoticeNotSentError):
        wechat_notifier().send(outgoing(), recipient_with({OA_APP_ID: "o-oa-1"}))
    assert wechat_http.calls[0].request.req_kwargs["timeout"] == notifier.TIMEOUT_SECONDS


def test_every_outbox_event_has_a_message() -> None:
    assert set(EVENT_TEXTS) == set(EVENTS)


def test_a_dispatched_record_through_wechat_is_marked_with_the_refusal(
    aws: None, wechat_http: responses.RequestsMock
) -> None:
    # GIVEN a recipient who unfollowed the official account
    make_account("u-unsub", {OA_APP_ID: "o-oa-unsub"})
    keys = write_notice("inv-unsub", "accepted", "u-unsub")
    answer_token(wechat_http)
    answer_send(wechat_http, errcode=43004, errmsg="require subscribe")
    sender = wechat_notifier()

    # WHEN the record is delivered twice
    first = send_notice_record(notice_record(keys), now=NOW, notifier=sender)
    second = send_notice_record(notice_record(keys), now=NOW, notifier=sender)

    # THEN WeChat was asked once, and the refusal is the recorded outcome
    assert (first, second) == ("unsubscribed", None)
    assert stored(keys).outcome == "unsubscribed"
    assert len(wechat_http.calls) == 2  # the token, then the one message


# --- get_notifier ------------------------------------------------------------------------------


@pytest.fixture
def fresh_notifiers() -> Iterator[None]:
    notifier._notifier.cache_clear()
    yield
    notifier._notifier.cache_clear()


def test_the_local_stage_logs(fresh_notifiers: None) -> None:
    assert get_settings().notifier == "log"
    assert isinstance(get_notifier(), LogNotifier)


def test_the_wechat_setting_sends_template_messages(
    fresh_notifiers: None, monkeypatch: pytest.MonkeyPatch, wechat_http: responses.RequestsMock
) -> None:
    settings = dataclasses.replace(
        get_settings(),
        notifier="wechat",
        wechat_notice_template_id=TEMPLATE_ID,
        wechat_app_ids={"oa": OA_APP_ID, "mp": MP_APP_ID},
    )
    from chalicelib.security.keys import get_keys

    keys = dataclasses.replace(get_keys(), wechat_secrets={"oa": OA_SECRET})
    monkeypatch.setattr(notifier, "get_settings", lambda: settings)
    monkeypatch.setattr(notifier, "get_keys", lambda: keys)
    answer_token(wechat_http)
    answer_send(wechat_http)

    chosen = get_notifier()

    # THEN a WeChat notifier of the official account, kept for the container, using the stage's secret
    assert isinstance(chosen, WeChatNotifier)
    assert (chosen.app_id, chosen.template_id) == (OA_APP_ID, TEMPLATE_ID)
    assert get_notifier() is chosen
    assert chosen.send(outgoing(), recipient_with({OA_APP_ID: "o-oa-1"})) == "sent"


def test_wechat_without_the_official_account_secret_fails_loudly(
    monkeypatch: pytest.MonkeyPatch, wechat_http: responses.RequestsMock
) -> None:
    from chalicelib.security.keys import get_keys

    monkeypatch.setattr(notifier, "get_keys", lambda: dataclasses.replace(get_keys(), wechat_secrets={}))

    with pytest.raises(RuntimeError, match="wechat_oa_secret"):
        WeChatNotifier(OA_APP_ID, TEMPLATE_ID).send(outgoing(), recipient_with({OA_APP_ID: "o-oa-1"}))
    assert len(wechat_http.calls) == 0


# --- the send_notices consumer -------------------------------------------------------------------


def invoke(client: Client, records: list[dict[str, Any]]) -> Any:
    return client.lambda_.invoke("send_notices", {"Records": records}).payload


def test_the_consumer_subscribes_to_the_invitations_stream() -> None:
    from chalice.app import DynamoDBEventConfig

    from app import app

    consumers = {s.name: s for s in app.event_sources if isinstance(s, DynamoDBEventConfig)}

    assert {"update_reputation", "send_notices"} <= set(consumers)
    assert consumers["send_notices"].stream_arn == consumers["update_reputation"].stream_arn
    assert consumers["send_notices"].starting_position == "TRIM_HORIZON"


def test_the_consumer_sends_a_batch(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a notice among other records of the Invitations stream
    make_account("u-batch")
    keys = write_notice("inv-batch", "accepted", "u-batch")
    sender = RecordingNotifier("sent")
    monkeypatch.setattr(dispatch, "get_notifier", lambda: sender)
    records = [stream_record("ev-a", "INSERT", "100"), notice_record(keys, sequence="101")]

    # WHEN the consumer receives the batch (twice: a redelivery)
    payload = invoke(client, records)
    again = invoke(client, records)

    # THEN the notice was sent once, and nothing failed
    assert payload == again == {"batchItemFailures": []}
    assert [(notice.event, user) for notice, user in sender.sent] == [("accepted", "u-batch")]
    assert stored(keys).outcome == "sent"


def test_a_transient_failure_fails_the_rest_of_the_batch(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN WeChat that does not answer, and a batch of two notices after an unrelated record
    make_account("u-first")
    make_account("u-second")
    first = write_notice("inv-first", "accepted", "u-first")
    second = write_notice("inv-second", "declined", "u-second")
    failing = RecordingNotifier(NoticeNotSentError("wechat unreachable (ConnectTimeout)"))
    monkeypatch.setattr(dispatch, "get_notifier", lambda: failing)
    records = [stream_record("ev-x", "MODIFY", "200"), notice_record(first, sequence="201")]
    records.append(notice_record(second, sequence="202"))

    # WHEN the consumer receives it
    payload = invoke(client, records)

    # THEN WeChat was tried once; the failed notice and every later record are reported, and nothing is marked
    assert failing.attempts == 1
    assert payload == {"batchItemFailures": [{"itemIdentifier": "201"}, {"itemIdentifier": "202"}]}
    assert stored(first).sent_at is None
    assert stored(second).sent_at is None

    # WHEN WeChat answers again and the stream redelivers from the first failure
    sender = RecordingNotifier("sent")
    monkeypatch.setattr(dispatch, "get_notifier", lambda: sender)
    payload = invoke(client, records[1:])

    # THEN both are sent
    assert payload == {"batchItemFailures": []}
    assert [user for _, user in sender.sent] == ["u-first", "u-second"]


# --- two consumers on one stream in the local event pump -------------------------------------------


class FakeStreams:
    """One open shard holding ``records``; iterators are positions in the list."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def get_shard_iterator(self, **request: Any) -> dict[str, str]:
        kind, sequences = request["ShardIteratorType"], [r["dynamodb"]["SequenceNumber"] for r in self.records]
        position = {
            "TRIM_HORIZON": 0,
            "AT_SEQUENCE_NUMBER": lambda: sequences.index(request["SequenceNumber"]),
            "AFTER_SEQUENCE_NUMBER": lambda: sequences.index(request["SequenceNumber"]) + 1,
        }[kind]
        return {"ShardIterator": f"pos:{position if isinstance(position, int) else position()}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:  # noqa: N803 (boto3's names)
        start = int(ShardIterator.split(":")[1])
        page = self.records[start : start + Limit]
        return {"Records": page, "NextShardIterator": f"pos:{start + len(page)}"}


def test_the_pump_keeps_a_checkpoint_per_consumer(
    client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app import app
    from devstack.event_pump import Pump

    # GIVEN the pump's readers of the Invitations stream, and one notice in the stream
    make_account("u-pump")
    keys = write_notice("inv-pump", "accepted", "u-pump")
    record = notice_record(keys, sequence="500")
    del record["eventSourceARN"]  # the Streams API record; the pump adds the ARN
    streams = FakeStreams([record])
    pump = Pump(app, client, tmp_path, 1.0, 5)
    readers = {reader.config.name: reader for reader in pump.readers if reader.table == TABLE}
    assert set(readers) >= {"update_reputation", "send_notices"}
    for reader in readers.values():
        reader.stream_arn, reader.parents = STREAM_ARN, {"shard-1": None}
    monkeypatch.setattr(dispatch, "get_notifier", lambda: RecordingNotifier(NoticeNotSentError("wechat busy")))

    # WHEN both poll while WeChat is down
    for reader in readers.values():
        reader.poll(streams, client, pump.checkpoints, 0.0)

    # THEN the reputation consumer moved past the record, the sender will read it again
    positions = {name: pump.checkpoints.shards(name, STREAM_ARN) for name in readers}
    assert positions["update_reputation"] == {"shard-1": {"after": "500"}}
    assert positions["send_notices"] == {"shard-1": {"at": "500"}}

    # WHEN WeChat is back and both poll again after the retry delay
    sender = RecordingNotifier("sent")
    monkeypatch.setattr(dispatch, "get_notifier", lambda: sender)
    for reader in readers.values():
        reader.poll(streams, client, pump.checkpoints, 60.0)

    # THEN the notice was sent once, and the reputation consumer did not read it again
    assert [user for _, user in sender.sent] == ["u-pump"]
    assert pump.checkpoints.shards("send_notices", STREAM_ARN) == {"shard-1": {"after": "500"}}
    assert pump.checkpoints.shards("update_reputation", STREAM_ARN) == {"shard-1": {"after": "500"}}
