"""``GET /health``, ``GET /openapi.json`` and the parity of the routes with the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import GetError

from chalicelib import openapi, system
from chalicelib.handlers.middleware import REQUEST_ID_HEADER

if TYPE_CHECKING:
    import pytest
    from chalice.test import Client

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def run_heartbeat(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
    return client.lambda_.invoke("heartbeat", event).payload


def test_health_before_any_heartbeat(client: Client) -> None:
    response = client.http.get("/health")

    assert response.status_code == 200
    assert response.json_body == {"status": "ok", "stage": "local", "dynamodb": "ok", "heartbeat_at": None}
    assert response.headers[REQUEST_ID_HEADER] not in ("", "unknown")


def test_health_shows_the_last_heartbeat(client: Client) -> None:
    # GIVEN the heartbeat job ran
    payload = run_heartbeat(client)
    assert payload["job"] == "heartbeat"
    assert payload["recorded"] is True

    # WHEN /health is asked
    response = client.http.get("/health")

    # THEN it reports that run's time
    assert response.status_code == 200
    heartbeat_at = response.json_body["heartbeat_at"]
    assert heartbeat_at == payload["at"]
    assert datetime.fromisoformat(heartbeat_at).utcoffset() is not None


def test_health_follows_later_heartbeats(client: Client) -> None:
    first = run_heartbeat(client)["at"]
    second = run_heartbeat(client)["at"]

    shown = client.http.get("/health").json_body["heartbeat_at"]

    assert datetime.fromisoformat(second) >= datetime.fromisoformat(first)
    assert shown == second


def test_health_is_503_when_dynamodb_fails(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN DynamoDB fails on the heartbeat read
    def failing_read(job: str) -> datetime | None:
        raise GetError("x")

    monkeypatch.setattr(system, "last_heartbeat", failing_read)

    # WHEN /health is asked
    response = client.http.get("/health")

    # THEN it answers 503 in the error shape, naming the dependency
    assert response.status_code == 503
    body = response.json_body
    assert set(body) == {"error"}
    assert body["error"]["code"] == "dependency_unavailable"
    assert body["error"]["details"] == {"dependency": "dynamodb", "reason": "GetError"}
    assert body["error"]["request_id"] == response.headers[REQUEST_ID_HEADER]


def test_probe_database_never_raises_on_a_dynamodb_error(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_read(job: str) -> datetime | None:
        raise GetError("x")

    monkeypatch.setattr(system, "last_heartbeat", failing_read)

    probe = system.probe_database()

    assert probe == system.DatabaseProbe(ok=False, reason="GetError")


def test_openapi_document_is_served(client: Client) -> None:
    response = client.http.get("/openapi.json")

    assert response.status_code == 200
    assert response.json_body["openapi"] == "3.1.0"
    assert response.json_body == openapi.document()
    assert REQUEST_ID_HEADER in response.headers


# --- parity of the routes with the document -------------------------------------------------


def documented_operations() -> dict[tuple[str, str], dict[str, Any]]:
    document = openapi.document()
    return {
        (path, method.upper()): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method.lower() in HTTP_METHODS
    }


def routed_operations() -> set[tuple[str, str]]:
    from app import app

    return {(path, method.upper()) for path, methods in app.routes.items() for method in methods}


def test_every_route_is_documented_and_every_documented_path_routed() -> None:
    routed = routed_operations()
    documented = set(documented_operations())
    assert routed, "the app has no routes: the parity check would prove nothing"

    undocumented = sorted(routed - documented)
    unrouted = sorted(documented - routed)

    assert not undocumented and not unrouted, (
        f"routes lacking documentation in chalicelib/openapi/paths/*.json: {undocumented}; "
        f"documented operations lacking a route: {unrouted}"
    )


def test_every_documented_operation_is_complete() -> None:
    problems: list[str] = []
    for (path, method), operation in sorted(documented_operations().items()):
        name = f"{method} {path}"
        if not operation.get("operationId"):
            problems.append(f"{name}: no operationId")
        if not operation.get("summary"):
            problems.append(f"{name}: no summary")
        error_statuses = [status for status in operation.get("responses", {}) if status[0] in "45"]
        if not error_statuses and path != "/openapi.json":
            problems.append(f"{name}: documents no 4xx/5xx response")

    assert not problems, "incomplete operations:\n" + "\n".join(problems)


def test_operation_ids_are_unique() -> None:
    ids = [operation.get("operationId") for operation in documented_operations().values()]

    assert len(ids) == len(set(ids))


def test_the_documented_titles_and_specialties_are_the_codes_vocabulary() -> None:
    from chalicelib.doctors.vocabulary import SPECIALTIES, TITLES

    schemas = openapi.document()["components"]["schemas"]

    assert schemas["DoctorTitle"]["enum"] == list(TITLES)
    assert schemas["DoctorSpecialty"]["enum"] == list(SPECIALTIES)
    for code, labels in {**TITLES, **SPECIALTIES}.items():
        assert labels["zh"] in schemas["DoctorTitle"]["description"] + schemas["DoctorSpecialty"]["description"], code


def test_the_front_end_origin_may_call_the_api_from_a_browser(client: Client) -> None:
    from chalicelib.config import get_settings

    response = client.http.get("/health")

    assert response.headers["Access-Control-Allow-Origin"] == get_settings().frontend_url
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-Id"
