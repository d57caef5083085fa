"""The service routes and the error shape, over HTTP against the running stack."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack

ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}


def _assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["X-Request-Id"]


def test_health_answers_and_shows_the_scheduler_running(api: str) -> None:
    response = requests.get(f"{api}/health", timeout=5)
    assert response.status_code == 200
    assert response.headers["X-Request-Id"]
    assert response.json()["stage"] == "local"
    # the heartbeat job (rate 1 minute, sped up 60x by the test stack) reaches /health
    deadline = time.monotonic() + 15
    while requests.get(f"{api}/health", timeout=5).json()["heartbeat_at"] is None:
        assert time.monotonic() < deadline, "the heartbeat job never ran"
        time.sleep(0.3)


def test_openapi_document_is_served(api: str) -> None:
    response = requests.get(f"{api}/openapi.json", timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert "/health" in document["paths"]


def test_unknown_route_is_a_404_in_the_error_shape(api: str) -> None:
    _assert_error(requests.get(f"{api}/v1/no-such-thing", timeout=5), 404, "route_not_found")
    response = requests.get(f"{api}/nope", headers={"Authorization": "Bearer x"}, timeout=5)
    _assert_error(response, 404, "route_not_found")


def test_wrong_method_is_a_405_in_the_error_shape(api: str) -> None:
    response = requests.post(f"{api}/health", json={}, timeout=5)
    _assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"


def _ratings(ddb: Any, doctor_id: str) -> tuple[int, int]:
    key = {"pk": {"S": f"USER#{doctor_id}"}, "sk": {"S": "PROFILE"}}
    item = ddb.get_item(TableName="anes-local-users", Key=key, ConsistentRead=True)["Item"]
    return int(item.get("rating_count", {}).get("N", "0")), int(item.get("rating_sum", {}).get("N", "0"))


def test_the_event_pump_feeds_the_stream_consumer_each_fact_once(stack: Stack) -> None:
    # GIVEN a doctor account, written straight to the Users table
    ddb = stack.dynamodb()
    doctor_id, now = f"e2e-{uuid.uuid4().hex[:12]}", "2026-12-05T08:00:00+00:00"
    account = {
        "pk": {"S": f"USER#{doctor_id}"},
        "sk": {"S": "PROFILE"},
        "type": {"S": "account"},
        "user_id": {"S": doctor_id},
        "role": {"S": "doctor"},
        "revision": {"N": "0"},
        "created_at": {"S": now},
        "updated_at": {"S": now},
    }
    ddb.put_item(TableName="anes-local-users", Item=account)

    # WHEN a review of one of their invitations is written to the Invitations table, then changed
    key = {"pk": {"S": f"INVITATION#{doctor_id}"}, "sk": {"S": "FEEDBACK#REVIEW"}}
    review = {
        **key,
        "type": {"S": "review"},
        "invitation_id": {"S": doctor_id},
        "doctor_id": {"S": doctor_id},
        "requester_id": {"S": "e2e-patient"},
        "kind": {"S": "invitation"},
        "rating": {"N": "4"},
        "reviewer_masked": {"S": "E**"},
    }
    ddb.put_item(TableName="anes-local-invitations", Item=review)
    ddb.update_item(
        TableName="anes-local-invitations",
        Key=key,
        UpdateExpression="SET #c = :c",
        ExpressionAttributeNames={"#c": "comment"},
        ExpressionAttributeValues={":c": {"S": "Clear explanations"}},
    )

    # THEN the stream consumer, run by the event pump, counted the rating exactly once
    deadline = time.monotonic() + 15
    while (seen := _ratings(ddb, doctor_id)) != (1, 4):
        assert time.monotonic() < deadline, f"the stream consumer left the ratings at {seen}"
        time.sleep(0.2)
    time.sleep(1.0)
    assert _ratings(ddb, doctor_id) == (1, 4), "a fact was applied twice"
