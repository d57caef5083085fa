"""Reviews over HTTP against moto (M-j, M-l, C3): rated once after confirmation, shown masked on the storefront.

Invitations go through the real flow (created, paid through the fake sandbox provider,
accepted, completed and confirmed); the handlers' clock is frozen after the service so the
review window can be tested without waiting.
"""

from __future__ import annotations

import doctest
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.models.invitations import Invitation, Review
from chalicelib.reputation import reviews
from chalicelib.reputation.reviews import mask_name
from tests.unit.actors import call, expect, freeze_clock, make_vip_hospital, register
from tests.unit.flow_actors import (
    accepted,
    act,
    fake_provider_fixture,  # noqa: F401  (the ``fake`` fixture)
    flow_fixture,  # noqa: F401  (the ``flow`` fixture)
    notices,
    read,
    scheduled_at,
    set_day,
)

if TYPE_CHECKING:
    from datetime import datetime

    from chalice.test import Client, HTTPResponse

    from tests.unit.actors import Actor
    from tests.unit.flow_actors import Flow

WANG_FANG = "\u738b\u82b3"  # 王芳
ANONYMOUS = "\u533f\u540d\u7528\u6237"  # 匿名用户


def review(client: Client, actor: Actor, invitation_id: str, body: Any) -> HTTPResponse:
    return call(client, "POST", f"/v1/invitations/{invitation_id}/review", actor, body)


def confirmed_invitations(
    client: Client,
    flow: Flow,
    monkeypatch: pytest.MonkeyPatch,
    count: int = 1,
    *,
    requester: Actor | None = None,
    **changes: Any,
) -> tuple[list[str], datetime]:
    """``count`` invitations of ``requester`` (the flow's patient by default), accepted, then completed and
    confirmed two hours after their time; their ids and that instant (the handlers' clock stays there)."""
    requester = requester or flow.patient
    if count > 3:
        set_day(client, flow.doctor, flow.day, invitation_capacity=count)
    ids = [accepted(client, flow, requester=requester, **changes)["invitation_id"] for _ in range(count)]
    done_at = scheduled_at(read(client, requester, ids[0])) + timedelta(hours=2)
    freeze_clock(monkeypatch, done_at)
    for invitation_id in ids:
        expect(act(client, flow.doctor, invitation_id, "complete"), 200)
        expect(act(client, requester, invitation_id, "confirm"), 200)
    return ids, done_at


def storefront(client: Client, viewer: Actor, doctor: Actor, query: str = "") -> dict[str, Any]:
    return expect(call(client, "GET", f"/v1/anesthesiologists/{doctor.user_id}{query}", viewer), 200)


# --- when a review may be written ---------------------------------------------------------------


def test_a_service_is_rated_only_once_confirmed(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an accepted invitation
    invitation_id = accepted(client, flow)["invitation_id"]
    # THEN it cannot be rated yet
    refused = expect(review(client, flow.patient, invitation_id, {"rating": 5}), 409, "not_reviewable")
    assert refused["error"]["details"] == {"status": "accepted"}
    # ... nor once completed, before the requester confirms
    done_at = scheduled_at(read(client, flow.patient, invitation_id)) + timedelta(hours=2)
    freeze_clock(monkeypatch, done_at)
    expect(act(client, flow.doctor, invitation_id, "complete"), 200)
    expect(review(client, flow.patient, invitation_id, {"rating": 5}), 409, "not_reviewable")
    assert Review.count(f"INVITATION#{invitation_id}") == 0

    # WHEN the requester confirms, then rates it
    expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    created = expect(review(client, flow.patient, invitation_id, {"rating": 4, "comment": "Calm and clear"}), 201)

    # THEN the review is stored as sent, and the doctor is told
    assert {key: created[key] for key in ("invitation_id", "kind", "rating", "comment", "reviewer")} == {
        "invitation_id": invitation_id,
        "kind": "invitation",
        "rating": 4,
        "comment": "Calm and clear",
        "reviewer": ANONYMOUS,  # the flow's patient has no name
    }
    assert created["created_at"].startswith(done_at.isoformat()[:16])
    assert "requester_id" not in created
    assert ("reviewed", flow.doctor.user_id) in notices(invitation_id)
    stored = Invitation.get(f"INVITATION#{invitation_id}", "META", consistent_read=True)
    assert (stored.status, int(stored.rating)) == ("confirmed", 4)


def test_both_sides_see_the_review_and_the_rating(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN two confirmed invitations, one rated
    (rated, unrated), _ = confirmed_invitations(client, flow, monkeypatch, 2)
    created = expect(review(client, flow.patient, rated, {"rating": 3}), 201)

    # THEN the invitation view carries the review for the requester and the doctor (M-l)
    for actor in (flow.patient, flow.doctor):
        seen = read(client, actor, rated)
        assert seen["review"] == created and seen["rating"] == 3 and seen["complaint"] is None
        assert read(client, actor, unrated)["review"] is None
        # ... and their lists show the rating of each item
        items = expect(call(client, "GET", "/v1/invitations", actor), 200)["items"]
        assert {item["invitation_id"]: item["rating"] for item in items} == {rated: 3, unrated: None}
    assert created["comment"] is None


REFUSED_BODIES: list[Any] = [
    {"rating": 0},
    {"rating": 6},
    {"rating": -1},
    {"rating": "5"},
    {"rating": 4.5},
    {"rating": None},
    {},
    {"rating": 5, "comment": ""},
    {"rating": 5, "comment": "x" * 501},
    {"rating": 5, "comment": 7},
    {"rating": 5, "reviewer": "someone"},
    {"rating": 5, "doctor_id": "d1"},
    [5],
]
"""Bodies a review is refused for: ratings outside 1-5 or not whole, comments empty or over 500, unknown fields."""


def test_the_rating_and_comment_are_checked(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    (invitation_id,), _ = confirmed_invitations(client, flow, monkeypatch)
    for body in REFUSED_BODIES:
        refused = review(client, flow.patient, invitation_id, body)
        assert (refused.status_code, refused.json_body["error"]["code"]) == (422, "validation_failed"), body
    assert Review.count(f"INVITATION#{invitation_id}") == 0
    assert read(client, flow.patient, invitation_id)["rating"] is None


def test_a_comment_of_five_hundred_characters_and_each_rating_are_accepted(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, _ = confirmed_invitations(client, flow, monkeypatch, 5)
    long_comment = "\u597d" * 500  # 好: characters, not bytes
    for rating, invitation_id in enumerate(ids, start=1):
        body = {"rating": rating, "comment": long_comment} if rating == 1 else {"rating": rating}
        assert expect(review(client, flow.patient, invitation_id, body), 201)["rating"] == rating
    assert read(client, flow.patient, ids[0])["review"]["comment"] == long_comment


def test_a_review_is_written_once(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a rated invitation
    (invitation_id,), _ = confirmed_invitations(client, flow, monkeypatch)
    body = {"rating": 5, "comment": "Excellent"}
    first = expect(review(client, flow.patient, invitation_id, body), 201)

    # WHEN the same review comes again (a retry) THEN it answers 200 with the stored review
    assert expect(review(client, flow.patient, invitation_id, body), 200) == first

    # WHEN a different one comes THEN it is refused, showing the review that stands
    for changed in ({"rating": 4, "comment": "Excellent"}, {"rating": 5, "comment": "Good"}, {"rating": 5}):
        refused = expect(review(client, flow.patient, invitation_id, changed), 409, "already_reviewed")
        assert refused["error"]["details"]["review"] == first
    assert read(client, flow.patient, invitation_id)["review"] == first
    assert [event for event, _ in notices(invitation_id)].count("reviewed") == 1


def test_the_review_window_closes(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN two invitations confirmed at the same instant (the window is 30 days)
    (on_time, late), confirmed_at = confirmed_invitations(client, flow, monkeypatch, 2)
    closes = confirmed_at + timedelta(days=30)

    # WHEN one is rated at the last instant of the window THEN it is accepted
    freeze_clock(monkeypatch, closes)
    expect(review(client, flow.patient, on_time, {"rating": 5}), 201)

    # WHEN the other is rated a second later THEN the window has closed
    freeze_clock(monkeypatch, closes + timedelta(seconds=1))
    refused = expect(review(client, flow.patient, late, {"rating": 5}), 409, "review_window_closed")
    assert refused["error"]["details"]["closed_at"] == closes.isoformat()
    assert read(client, flow.patient, late)["rating"] is None
    # ... while the review written in time is still answered as such
    assert expect(review(client, flow.patient, on_time, {"rating": 5}), 200)["rating"] == 5


def test_the_review_window_is_configured(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from chalicelib import config

    (invitation_id,), confirmed_at = confirmed_invitations(client, flow, monkeypatch)
    settings = replace(config.get_settings(), review_window_days=2)
    monkeypatch.setattr("chalicelib.reputation.reviews.get_settings", lambda: settings)
    freeze_clock(monkeypatch, confirmed_at + timedelta(days=2, minutes=1))
    expect(review(client, flow.patient, invitation_id, {"rating": 5}), 409, "review_window_closed")


# --- who may write it ----------------------------------------------------------------------------


def test_only_the_invitations_requester_reviews(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = register(client, "patient")  # signed in before the clock is frozen
    (invitation_id,), _ = confirmed_invitations(client, flow, monkeypatch)
    # another patient: the invitation does not exist for them
    expect(review(client, stranger, invitation_id, {"rating": 1}), 404, "invitation_not_found")
    # an unknown invitation
    expect(review(client, flow.patient, "i" + "0" * 31, {"rating": 1}), 404, "invitation_not_found")
    # the doctor and the back office are not requesters at all
    expect(review(client, flow.doctor, invitation_id, {"rating": 5}), 403, "forbidden")
    expect(review(client, flow.admin, invitation_id, {"rating": 5}), 403, "forbidden")
    # nobody signed in
    expect(call(client, "POST", f"/v1/invitations/{invitation_id}/review", None, {"rating": 5}), 401)
    assert Review.count(f"INVITATION#{invitation_id}") == 0


def test_a_vip_hospital_reviews_under_its_masked_name(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a VIP hospital (Huashan) that invited the doctor to operate there
    hospital = make_vip_hospital(client, flow.admin, flow.hospitals.huashan)
    (invitation_id,), _ = confirmed_invitations(
        client, flow, monkeypatch, requester=hospital, hospital_id=flow.hospitals.huashan
    )
    # WHEN it rates the service
    created = expect(review(client, hospital, invitation_id, {"rating": 4}), 201)
    # THEN others see the hospital's name masked
    assert created["reviewer"] == "\u590d**"
    assert storefront(client, flow.patient, flow.doctor)["reviews"]["items"][0]["reviewer"] == "\u590d**"


# --- the storefront ------------------------------------------------------------------------------


def test_the_storefront_shows_reviews_newest_first_masked_page_by_page(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN six confirmed invitations of a patient called Wang Fang, rated a minute apart
    patient = register(client, "patient", name=WANG_FANG)
    viewer = register(client, "patient")  # signed in before the clock is frozen
    ids, done_at = confirmed_invitations(client, flow, monkeypatch, 6, requester=patient)
    for minute, invitation_id in enumerate(ids):
        freeze_clock(monkeypatch, done_at + timedelta(minutes=minute + 1))
        expect(review(client, patient, invitation_id, {"rating": 5, "comment": f"visit {minute}"}), 201)

    # WHEN someone opens the doctor's storefront
    first = storefront(client, viewer, flow.doctor)

    # THEN the latest five reviews show, newest first, the reviewer masked and never identified
    page = first["reviews"]
    assert [item["comment"] for item in page["items"]] == [f"visit {n}" for n in (5, 4, 3, 2, 1)]
    assert {item["reviewer"] for item in page["items"]} == {"\u738b**"}
    assert WANG_FANG not in json.dumps(first, ensure_ascii=False)
    assert patient.user_id not in json.dumps(first)
    assert page["next_cursor"] is not None
    assert "rating_score" in first

    # WHEN the next page is asked for THEN the oldest review follows, and the list ends
    second = storefront(client, viewer, flow.doctor, f"?reviews_cursor={page['next_cursor']}")["reviews"]
    assert [item["comment"] for item in second["items"]] == ["visit 0"]
    assert second["next_cursor"] is None
    # ... each showing the review, not who wrote it nor which invitation it was
    assert set(second["items"][0]) == {"kind", "rating", "comment", "reviewer", "created_at"}
    assert not any(invitation_id in json.dumps(first) for invitation_id in ids)


def test_a_cursor_of_another_list_is_refused(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, _ = confirmed_invitations(client, flow, monkeypatch, 6)
    for invitation_id in ids:
        expect(review(client, flow.patient, invitation_id, {"rating": 4}), 201)
    cursor = expect(call(client, "GET", "/v1/invitations?limit=1", flow.patient), 200)["next_cursor"]
    assert cursor is not None
    path = f"/v1/anesthesiologists/{flow.doctor.user_id}?reviews_cursor="
    expect(call(client, "GET", path + cursor, flow.patient), 400, "invalid_cursor")
    expect(call(client, "GET", path + "garbage", flow.patient), 400, "invalid_cursor")


def test_a_doctor_without_reviews_shows_an_empty_list(client: Client, flow: Flow) -> None:
    assert storefront(client, flow.patient, flow.doctor)["reviews"] == {"items": [], "next_cursor": None}


# --- masking ---------------------------------------------------------------------------------------


def test_the_masking_doctest_holds() -> None:
    result = doctest.testmod(reviews, verbose=False)
    assert result.attempted >= 1 and result.failed == 0


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (WANG_FANG, "\u738b**"),
        ("  Li Lei  ", "L**"),
        ("A", "A**"),
        ("", ANONYMOUS),
        ("   ", ANONYMOUS),
        (None, ANONYMOUS),
    ],
)
def test_a_name_is_masked_to_its_first_character(name: str | None, shown: str) -> None:
    assert mask_name(name) == shown
