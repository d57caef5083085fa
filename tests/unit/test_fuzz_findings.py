"""Regression tests for what ``tests/e2e/test_fuzz.py`` (Schemathesis against the stack) found.

Each test names the finding: the request the fuzzer sent, what the API answered, and what the
OpenAPI document says it must answer.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import msgspec
import pytest

from chalicelib.errors import ApiError
from chalicelib.validation import parse, parse_query
from tests.unit import actors
from tests.unit.actors import call, expect

if TYPE_CHECKING:
    from chalice.test import Client

FROZEN = datetime(2030, 3, 31, 16, 30, tzinfo=UTC)  # 2030-04-01 00:30 in Shanghai
TOMORROW = date(2030, 4, 2).isoformat()


class Counts(msgspec.Struct, forbid_unknown_fields=True):
    count: int
    weight: float


class Window(msgspec.Struct, forbid_unknown_fields=True, rename={"start": "from"}):
    start: date | None = None
    limit: int | None = None
    cursor: str | None = None


def test_a_whole_float_is_an_integer_and_a_fraction_is_not() -> None:
    # Finding: POST /v1/invitations/{id}/review {"rating": 3.0} was 422 "Expected `int`, got `float`";
    # JSON has one number type and JSON Schema's "integer" admits 3.0.
    assert parse({"count": 3.0, "weight": 70.0}, Counts) == Counts(3, 70.0)
    assert parse({"items": [{"n": 2.0}]}, dict) == {"items": [{"n": 2}]}
    with pytest.raises(ApiError) as refused:
        parse({"count": 3.5, "weight": 1}, Counts)
    assert (refused.value.status, refused.value.details) == (422, {"field": "count"})


@pytest.mark.parametrize(("query", "field"), [({"from": "null"}, "from"), ({"limit": "null"}, "limit")])
def test_a_query_parameter_spelled_null_is_refused(query: dict[str, str], field: str) -> None:
    # Finding: GET /v1/me/calendar?to=null answered 200 as if no ``to`` was sent (msgspec's lax mode
    # reads the text "null" as None); a date parameter that is not a date is 422.
    with pytest.raises(ApiError) as refused:
        parse_query(query, Window)
    assert (refused.value.status, refused.value.code, refused.value.details) == (
        422,
        "validation_failed",
        {"field": field},
    )


def test_a_text_parameter_may_be_the_word_null() -> None:
    assert parse_query({"cursor": "null", "from": "2030-04-02"}, Window) == Window(date(2030, 4, 2), None, "null")
    assert parse_query({}, Window) == Window()


def test_the_calendar_takes_whole_floats_and_refuses_to_null(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a doctor, on a known day
    doctor = actors.register(client, "doctor")
    actors.freeze_clock(monkeypatch, FROZEN)
    day = {"date": TOMORROW, "working": True, "invitation_capacity": 2.0, "consultation_capacity": 1}

    # WHEN the capacities come as whole floats THEN they are stored as integers
    days = expect(call(client, "PUT", "/v1/me/calendar", doctor, {"days": [day]}), 200)["days"]
    assert [(entry["date"], entry["invitation_capacity"]) for entry in days] == [(TOMORROW, 2)]
    assert isinstance(days[0]["invitation_capacity"], int)
    # ... a fraction is refused
    refused = call(client, "PUT", "/v1/me/calendar", doctor, {"days": [{**day, "invitation_capacity": 2.5}]})
    assert expect(refused, 422, "validation_failed")["error"]["details"]["field"] == "days[0].invitation_capacity"

    # WHEN ``to`` is the word null THEN the query is refused, naming it
    refused = call(client, "GET", "/v1/me/calendar?to=null", doctor)
    assert expect(refused, 422, "validation_failed")["error"]["details"]["field"] == "to"
