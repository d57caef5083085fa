"""The service routes and the error shape, over HTTP against the running stack."""

from __future__ import annotations

import time
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


def _change_counts(ddb: Any) -> dict[str, int]:
    counter = {"pk": {"S": "SYSTEM#stream-changes"}, "sk": {"S": "anes-local-invitations"}}
    item = ddb.get_item(TableName="anes-local-users", Key=counter, ConsistentRead=True).get("Item", {})
    return {name: int(item.get(name, {}).get("N", "0")) for name in ("inserts", "modifies")}


def _settled_counts(ddb: Any) -> dict[str, int]:
    """The counts once the pump has caught up with earlier writes (unchanged for a second)."""
    counts, since = _change_counts(ddb), time.monotonic()
    deadline = since + 30
    while time.monotonic() - since < 1.0:
        assert time.monotonic() < deadline, "the stream counts never settled"
        time.sleep(0.2)
        latest = _change_counts(ddb)
        if latest != counts:
            counts, since = latest, time.monotonic()
    return counts


def test_stream_consumer_counts_changes_written_to_the_invitations_table(stack: Stack) -> None:
    # GIVEN the counts after whatever other tests wrote
    ddb = stack.dynamodb()
    before = _settled_counts(ddb)

    # WHEN an item is written to the Invitations table, then changed
    key = {"pk": {"S": "INVITATION#e2e"}, "sk": {"S": "META"}}
    ddb.put_item(TableName="anes-local-invitations", Item={**key, "status": {"S": "awaiting_payment"}})
    ddb.update_item(
        TableName="anes-local-invitations",
        Key=key,
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "pending_response"}},
    )

    # THEN the stream consumer, run by the event pump, counted each exactly once
    expected = {"inserts": before["inserts"] + 1, "modifies": before["modifies"] + 1}
    deadline = time.monotonic() + 15
    while (counts := _change_counts(ddb)) != expected:
        assert time.monotonic() < deadline, f"stream consumer saw {counts}, expected {expected}"
        time.sleep(0.2)
    time.sleep(1.0)
    assert _change_counts(ddb) == expected, "a record was counted twice"
