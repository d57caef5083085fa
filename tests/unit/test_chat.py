"""The chat of an invitation (``/v1/invitations/{id}/messages``): who writes, when, and what it never changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.ledger.audit import check_ledger
from chalicelib.models.invitations import Invitation
from tests.unit.actors import call, expect, freeze_clock, make_verified_doctor, register
from tests.unit.flow_actors import (
    act,
    completed,
    create_invitation,
    every_page,
    fake_provider_fixture,  # noqa: F401  (the ``fake`` fixture)
    flow_fixture,  # noqa: F401  (the ``flow`` fixture)
    notices,
    paid_invitation,
    read,
    request_body,
)

if TYPE_CHECKING:
    from chalice.test import Client

    from tests.unit.actors import Actor
    from tests.unit.flow_actors import Flow

FASTED = "\u5df2\u7981\u98df\uff0c\u665a\u4e0a\u5341\u70b9\u540e\u672a\u8fdb\u98df"  # 已禁食，晚上十点后未进食


def messages_path(invitation_id: str) -> str:
    return f"/v1/invitations/{invitation_id}/messages"


def post(client: Client, actor: Actor, invitation_id: str, text: str) -> Any:
    return call(client, "POST", messages_path(invitation_id), actor, {"text": text})


def history(client: Client, actor: Actor, invitation_id: str, query: str = "") -> dict[str, Any]:
    return expect(call(client, "GET", messages_path(invitation_id) + query, actor), 200)


def stored(invitation_id: str) -> tuple[Any, ...]:
    item = Invitation.get(f"INVITATION#{invitation_id}", "META", consistent_read=True)
    return item.status, int(item.revision), item.updated_at, len(item.history), item.due_at


def test_the_requester_and_the_doctor_write_and_read(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    # WHEN the patient writes (in Chinese), then the doctor answers
    mine = expect(post(client, flow.patient, invitation_id, FASTED), 201)
    reply = expect(post(client, flow.doctor, invitation_id, "Thank you, noted"), 201)
    # THEN each message says which side wrote it, and both sides read both
    assert (mine["from"], mine["text"]) == ("requester", FASTED)
    assert reply["from"] == "doctor"
    for reader in (flow.patient, flow.doctor):
        texts = {item["text"] for item in history(client, reader, invitation_id)["items"]}
        assert texts == {FASTED, "Thank you, noted"}


def test_an_admin_reads_but_does_not_write(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    expect(post(client, flow.patient, invitation_id, "Hello"), 201)
    expect(post(client, flow.admin, invitation_id, "Ops here"), 403, "forbidden")
    assert [item["text"] for item in history(client, flow.admin, invitation_id)["items"]] == ["Hello"]


def test_nobody_else_reads_or_writes(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    expect(post(client, flow.patient, invitation_id, "Hello"), 201)
    for outsider in (register(client, "patient"), make_verified_doctor(client, flow.admin, flow.hospitals.pumch)):
        expect(post(client, outsider, invitation_id, "Hi"), 404, "invitation_not_found")
        expect(call(client, "GET", messages_path(invitation_id), outsider), 404, "invitation_not_found")
    assert len(history(client, flow.patient, invitation_id)["items"]) == 1


def test_the_chat_opens_with_the_payment(client: Client, flow: Flow) -> None:
    created = create_invitation(client, flow.patient, request_body(flow))
    invitation_id = created["invitation_id"]
    # before payment the requester cannot write, and the doctor does not even see the invitation
    expect(post(client, flow.patient, invitation_id, "Hello?"), 409, "chat_not_open")
    expect(post(client, flow.doctor, invitation_id, "Hello?"), 404, "invitation_not_found")
    assert history(client, flow.patient, invitation_id)["items"] == []


def test_the_chat_closes_seven_days_after_the_invitation_ended(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an invitation the doctor declined at a known instant
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    ended = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    freeze_clock(monkeypatch, ended)
    expect(act(client, flow.doctor, invitation_id, "decline", {"reason": "Away that day"}), 200)
    # THEN both sides may still write for seven days
    freeze_clock(monkeypatch, ended + timedelta(days=7))
    expect(post(client, flow.patient, invitation_id, "Could you recommend someone?"), 201)
    # and not after
    freeze_clock(monkeypatch, ended + timedelta(days=7, seconds=1))
    error = expect(post(client, flow.doctor, invitation_id, "Try Dr Wang"), 409, "chat_closed")
    assert error["error"]["details"]["closed_at"] == (ended + timedelta(days=7)).isoformat()
    # the history stays readable, and says when it closed
    page = history(client, flow.patient, invitation_id)
    assert [item["text"] for item in page["items"]] == ["Could you recommend someone?"]
    assert page["closes_at"] == (ended + timedelta(days=7)).isoformat()


def test_the_chat_runs_until_seven_days_after_completion(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation, done = completed(client, flow, monkeypatch, timedelta(hours=2))
    invitation_id = invitation["invitation_id"]
    # confirmation later does not move the end of the chat
    freeze_clock(monkeypatch, done + timedelta(days=2))
    expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    freeze_clock(monkeypatch, done + timedelta(days=6, hours=23))
    expect(post(client, flow.patient, invitation_id, "Recovering well, thank you"), 201)
    freeze_clock(monkeypatch, done + timedelta(days=7, minutes=1))
    expect(post(client, flow.patient, invitation_id, "One more thing"), 409, "chat_closed")


@pytest.mark.parametrize(("text", "status"), [("x" * 1000, 201), ("x" * 1001, 422), ("", 422)])
def test_a_message_is_1_to_1000_characters(client: Client, flow: Flow, text: str, status: int) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    response = post(client, flow.patient, invitation_id, text)
    if status == 422:
        error = expect(response, 422, "validation_failed")
        assert error["error"]["details"]["field"] == "text"
        assert history(client, flow.patient, invitation_id)["items"] == []
    else:
        expect(response, 201)


def test_1000_chinese_characters_fit(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    expect(post(client, flow.patient, invitation_id, "\u9ebb" * 1000), 201)
    expect(post(client, flow.doctor, invitation_id, "\u9189" * 1001), 422, "validation_failed")


def test_messages_come_newest_first_a_page_at_a_time(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    other_id = paid_invitation(client, flow)["invitation_id"]
    # GIVEN five messages, a minute apart, from both sides
    start = datetime.now(UTC)
    sent = []
    for minute in range(5):
        freeze_clock(monkeypatch, start + timedelta(minutes=minute))
        author = flow.patient if minute % 2 == 0 else flow.doctor
        sent.append(expect(post(client, author, invitation_id, f"message {minute}"), 201)["message_id"])
    # WHEN the doctor reads two at a time
    seen = every_page(lambda query: history(client, flow.doctor, invitation_id, query), 2, "message_id")
    # THEN they come newest first, each once
    assert seen == list(reversed(sent))
    # a tampered cursor, or one of another chat, is refused
    valid = history(client, flow.doctor, invitation_id, "?limit=2")["next_cursor"]
    tampered = ("A" if valid[0] != "A" else "B") + valid[1:]
    expect(
        call(client, "GET", messages_path(invitation_id) + f"?cursor={tampered}", flow.doctor), 400, "invalid_cursor"
    )
    expect(call(client, "GET", messages_path(other_id) + f"?cursor={valid}", flow.doctor), 400, "invalid_cursor")


def test_a_message_tells_the_other_side_and_changes_no_status_or_money(client: Client, flow: Flow) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    before, ledger_before = stored(invitation_id), check_ledger().as_dict()
    notices_before = notices(invitation_id)
    # WHEN each side writes
    expect(post(client, flow.patient, invitation_id, "Is fasting from midnight enough?"), 201)
    expect(post(client, flow.doctor, invitation_id, "Yes"), 201)
    # THEN the other side gets a new_message notice each time
    added = [item for item in notices(invitation_id) if item not in notices_before]
    assert sorted(added) == sorted([("new_message", flow.doctor.user_id), ("new_message", flow.patient.user_id)])
    # and the invitation and the ledger are exactly as they were
    assert stored(invitation_id) == before
    assert check_ledger().as_dict() == ledger_before
    assert read(client, flow.patient, invitation_id)["status"] == "pending_response"


def test_two_messages_in_the_same_second_are_both_posted(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    freeze_clock(monkeypatch, datetime.now(UTC).replace(microsecond=0))
    expect(post(client, flow.patient, invitation_id, "Fasting since 22:00"), 201)
    expect(post(client, flow.patient, invitation_id, "And no water since 6:00"), 201)
    assert len(history(client, flow.patient, invitation_id)["items"]) == 2


def test_messages_of_the_same_second_come_newest_first(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    invitation_id = paid_invitation(client, flow)["invitation_id"]
    # GIVEN the random message ids happen to come out in descending order
    ids = iter(["f" * 16, "0" * 16])
    monkeypatch.setattr("chalicelib.invitations.chat.secrets", SimpleNamespace(token_hex=lambda _: next(ids)))
    start = datetime.now(UTC).replace(microsecond=0)
    freeze_clock(monkeypatch, start)
    # WHEN the patient writes, and the doctor answers within the same second
    expect(post(client, flow.patient, invitation_id, "Question"), 201)
    freeze_clock(monkeypatch, start + timedelta(microseconds=1))
    expect(post(client, flow.doctor, invitation_id, "Answer"), 201)
    # THEN the answer, written last, comes first
    assert [item["text"] for item in history(client, flow.patient, invitation_id)["items"]] == ["Answer", "Question"]
