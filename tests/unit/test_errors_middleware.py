"""One error shape for every error: ``request_envelope``, ``from_chalice_body`` and the local gateway.

A tiny app of its own registers the middleware, so these tests hold whatever routes the
real app grows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chalice import BadRequestError, Blueprint, Chalice, ChaliceUnhandledError, Response
from chalice.local import ForbiddenError, NotAuthorizedError
from chalice.test import Client

from chalicelib.accounts.roles import ANON
from chalicelib.errors import CHALICE_ERRORS, ApiError, from_chalice_body
from chalicelib.handlers.access import route
from chalicelib.handlers.middleware import REQUEST_ID_HEADER, request_envelope
from devstack.api_server import gateway_error

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import HTTPResponse

ERROR_KEYS = {"code", "message", "message_zh", "details", "request_id"}
CONFLICT_ZH = "\u9080\u7d04\u5df2\u8b8a\u66f4"  # Chinese text, escaped so no tool can garble it

app = Chalice(app_name="t")
app.register_middleware(request_envelope, "http")
bp = Blueprint(__name__)


@route(bp, "/conflict", methods=["GET"], roles=[ANON])
def conflict() -> dict[str, Any]:
    raise ApiError(409, "conflict", "Invitation changed meanwhile", CONFLICT_ZH, details={"version": 3})


@app.route("/unwrapped-api-error", methods=["GET"])
def unwrapped_api_error() -> dict[str, Any]:
    # a route registered without roles: its ApiError cannot reach the client as such
    raise ApiError(409, "conflict", "secret-internal-detail", CONFLICT_ZH)


app.register_blueprint(bp)


@app.route("/bad", methods=["GET"])
def bad() -> dict[str, Any]:
    raise BadRequestError("name is required")


@app.route("/boom", methods=["GET"])
def boom() -> dict[str, Any]:
    raise RuntimeError("secret-internal-detail")


@app.route("/escapes", methods=["GET"])
def escapes() -> dict[str, Any]:
    # Chalice re-raises ChaliceUnhandledError to the middleware instead of answering itself.
    raise ChaliceUnhandledError("secret-internal-detail")


@app.route("/chalice-shaped", methods=["GET"])
def chalice_shaped() -> Response:
    return Response(
        {"Code": "ConflictError", "Message": "stale"}, status_code=409, headers={"Content-Type": "text/plain"}
    )


@app.route("/echo", methods=["POST"])
def echo() -> dict[str, Any]:
    return {"received": app.current_request.json_body}


@app.route("/only-get", methods=["GET"])
def only_get() -> dict[str, Any]:
    return {"ok": True}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """The tiny app; an empty project dir, so no stage config applies."""
    with Client(app, project_dir=str(tmp_path)) as test_client:
        yield test_client


def error_of(response: HTTPResponse) -> dict[str, Any]:
    """The ``error`` object of a response, after checking the whole body's shape."""
    body = json.loads(response.body)
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["request_id"], "an error must carry the request id"
    assert body["error"]["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert body["error"]["message"]
    assert body["error"]["message_zh"]
    return body["error"]


def test_a_successful_response_carries_a_request_id(client: Client) -> None:
    response = client.http.get("/only-get")

    assert response.status_code == 200
    assert response.json_body == {"ok": True}
    assert response.headers[REQUEST_ID_HEADER] not in ("", "unknown")


def test_each_request_gets_its_own_request_id(client: Client) -> None:
    first = client.http.get("/only-get").headers[REQUEST_ID_HEADER]
    second = client.http.get("/only-get").headers[REQUEST_ID_HEADER]

    assert first != second


def test_api_error_becomes_the_error_shape(client: Client) -> None:
    response = client.http.get("/conflict")

    assert response.status_code == 409
    error = error_of(response)
    assert error == {
        "code": "conflict",
        "message": "Invitation changed meanwhile",
        "message_zh": CONFLICT_ZH,
        "details": {"version": 3},
        "request_id": response.headers[REQUEST_ID_HEADER],
    }


def test_an_api_error_outside_a_declared_route_is_a_500_without_internals(client: Client) -> None:
    response = client.http.get("/unwrapped-api-error")

    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert b"secret-internal-detail" not in response.body


def test_chalice_view_error_becomes_the_error_shape(client: Client) -> None:
    response = client.http.get("/bad")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "bad_request"
    assert error["message"] == "name is required"
    assert error["message_zh"] == CHALICE_ERRORS["BadRequestError"][1]
    assert error["details"] == {}


def test_unexpected_exception_is_a_500_without_internals(client: Client) -> None:
    response = client.http.get("/boom")

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert error["message"] == "An internal server error occurred."
    assert error["details"] == {}
    text = response.body.decode()
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert "secret-internal-detail" not in text


def test_invalid_json_is_a_400_invalid_json(client: Client) -> None:
    response = client.http.post("/echo", headers={"Content-Type": "application/json"}, body=b"{not json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_json"
    assert error["message"] == "Error Parsing JSON"


def test_valid_json_reaches_the_view(client: Client) -> None:
    response = client.http.post("/echo", headers={"Content-Type": "application/json"}, body=b'{"a": 1}')

    assert response.status_code == 200
    assert response.json_body == {"received": {"a": 1}}


def test_unsupported_media_type_is_a_415(client: Client) -> None:
    response = client.http.post("/echo", headers={"Content-Type": "text/plain"}, body=b"hello")

    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "unsupported_media_type"
    assert "text/plain" in error["message"]


def test_wrong_method_is_a_405_with_allow(client: Client) -> None:
    response = client.http.post("/only-get", headers={"Content-Type": "application/json"}, body=b"{}")

    assert response.status_code == 405
    error = error_of(response)
    assert error["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET"


def test_an_exception_reaching_the_middleware_is_a_500_without_internals(client: Client) -> None:
    response = client.http.get("/escapes")

    assert response.status_code == 500
    error = error_of(response)
    assert (error["code"], error["message"], error["details"]) == (
        "internal_error",
        "An internal server error occurred.",
        {},
    )
    assert "secret-internal-detail" not in response.body.decode()
    assert "Traceback" not in response.body.decode()


def test_a_chalice_shaped_error_is_rewritten_and_served_as_json(client: Client) -> None:
    # GIVEN a view answering with Chalice's own error body under a non-JSON content type
    response = client.http.get("/chalice-shaped")

    # THEN the body is rewritten to the error shape, and the stale content type dropped
    assert response.status_code == 409
    error = error_of(response)
    assert (error["code"], error["message"]) == ("conflict", "stale")
    assert "text/plain" not in {value.lower() for value in response.headers.values()}


# A Chinese character followed by a parenthesised romanisation, e.g. a pinyin reading.
PINYIN_ANNOTATION = re.compile(r"[\u4e00-\u9fff]\([A-Za-z\u00c0-\u024f]+\)")
PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_chinese_messages_carry_no_pinyin_annotations() -> None:
    # GIVEN every Python source that writes a message_zh
    sources = sorted((PROJECT_DIR / "chalicelib").rglob("*.py")) + sorted((PROJECT_DIR / "devstack").rglob("*.py"))
    assert sources

    # WHEN they are searched for a Chinese character followed by a romanisation in brackets
    found = [
        f"{path.relative_to(PROJECT_DIR)}:{number}: {match.group()!a}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for match in PINYIN_ANNOTATION.finditer(line)
    ]

    # THEN there is none: users would read "(zh\u00ed)" inside a Chinese sentence
    assert not found, "pinyin inside Chinese messages:\n" + "\n".join(found)


# --- from_chalice_body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("BadRequestError", 400, "bad_request"),
        ("UnauthorizedError", 401, "unauthorized"),
        ("ForbiddenError", 403, "forbidden"),
        ("NotFoundError", 404, "not_found"),
        ("MethodNotAllowedError", 405, "method_not_allowed"),
        ("ConflictError", 409, "conflict"),
        ("UnprocessableEntityError", 422, "unprocessable_entity"),
        ("TooManyRequestsError", 429, "too_many_requests"),
        ("UnsupportedMediaType", 415, "unsupported_media_type"),
        ("BadRequest", 400, "not_acceptable"),
        ("InternalServerError", 500, "internal_error"),
    ],
)
def test_from_chalice_body_maps_chalice_error_names(name: str, status: int, code: str) -> None:
    assert from_chalice_body({"Code": name, "Message": "why"}, status) == (code, "why", CHALICE_ERRORS[name][1])


def test_from_chalice_body_uses_the_name_when_the_message_is_empty() -> None:
    assert from_chalice_body({"Code": "NotFoundError", "Message": ""}, 404) == (
        "not_found",
        "NotFoundError",
        CHALICE_ERRORS["NotFoundError"][1],
    )


def test_from_chalice_body_recognises_bad_json_by_its_message() -> None:
    code, message, message_zh = from_chalice_body({"Code": "BadRequestError", "Message": "Error Parsing JSON"}, 400)

    assert (code, message) == ("invalid_json", "Error Parsing JSON")
    assert message_zh != CHALICE_ERRORS["BadRequestError"][1]


def test_from_chalice_body_hides_unknown_server_errors() -> None:
    assert from_chalice_body({"Code": "KaboomError", "Message": "db password is hunter2"}, 502) == (
        "internal_error",
        "An internal server error occurred.",
        CHALICE_ERRORS["InternalServerError"][1],
    )


@pytest.mark.parametrize("body", [None, "text", ["Code"], {}])
def test_from_chalice_body_falls_back_for_unknown_client_errors(body: Any) -> None:
    code, message, _ = from_chalice_body(body, 418)

    assert (code, message) == ("http_error", "HTTP 418")


def test_from_chalice_body_keeps_an_unknown_client_error_message() -> None:
    assert from_chalice_body({"Code": "TeapotError", "Message": "short and stout"}, 418)[:2] == (
        "http_error",
        "short and stout",
    )


# --- devstack.api_server.gateway_error --------------------------------------------------------

GATEWAY_HEADERS = {"x-amzn-RequestId": "req-123", "x-amzn-ErrorType": "UnauthorizedException"}


def gateway_json(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}
    assert set(parsed["error"]) == ERROR_KEYS
    return parsed["error"]


def test_missing_authentication_token_is_route_not_found() -> None:
    status, headers, body = gateway_error(
        ForbiddenError(dict(GATEWAY_HEADERS), b'{"message": "Missing Authentication Token"}')
    )

    assert status == 404
    error = gateway_json(body)
    assert error["code"] == "route_not_found"
    assert error["request_id"] == "req-123"
    assert headers["X-Request-Id"] == "req-123"
    assert headers["Content-Type"] == "application/json"
    assert "x-amzn-ErrorType" not in headers


def test_unknown_route_with_an_authorization_header_is_route_not_found() -> None:
    raw = b'{"message": "Authorization header requires \'Credential\' parameter. Authorization=Bearer x"}'

    status, _, body = gateway_error(ForbiddenError(dict(GATEWAY_HEADERS), raw))

    assert status == 404
    assert gateway_json(body)["code"] == "route_not_found"


def test_an_authoriser_denial_stays_forbidden() -> None:
    raw = b'{"Message": "User is not authorized to access this resource"}'

    status, headers, body = gateway_error(ForbiddenError(dict(GATEWAY_HEADERS), raw))

    assert status == 403
    assert gateway_json(body)["code"] == "forbidden"
    assert "x-amzn-ErrorType" not in headers


def test_not_authorized_is_unauthorized() -> None:
    status, headers, body = gateway_error(NotAuthorizedError(dict(GATEWAY_HEADERS), b'{"message":"Unauthorized"}'))

    assert status == 401
    error = gateway_json(body)
    assert error["code"] == "unauthorized"
    assert error["request_id"] == headers["X-Request-Id"] == "req-123"
    assert "x-amzn-ErrorType" not in headers


def test_gateway_error_invents_a_request_id_when_none_was_given() -> None:
    status, headers, body = gateway_error(NotAuthorizedError({}, None))

    assert status == 401
    assert headers["X-Request-Id"]
    assert gateway_json(body)["request_id"] == headers["X-Request-Id"]


def test_gateway_error_does_not_mutate_the_exception_headers() -> None:
    original = dict(GATEWAY_HEADERS)
    error = NotAuthorizedError(original, b"")

    gateway_error(error)

    assert original == GATEWAY_HEADERS


def test_the_local_server_sends_its_answers_without_nagles_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading
    import urllib.request

    from chalice import local
    from chalice.config import Config

    from devstack.api_server import patch_local_server

    # GIVEN chalice local as make run patches it (restored afterwards)
    monkeypatch.setattr(
        local.ChaliceRequestHandler, "_send_error_response", local.ChaliceRequestHandler._send_error_response
    )
    monkeypatch.setattr(local.ChaliceRequestHandler, "disable_nagle_algorithm", False)
    patch_local_server()
    nodelay: list[int] = []

    class Recording(local.ChaliceRequestHandler):
        def setup(self) -> None:
            super().setup()
            nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    app = Chalice("nagle")
    app.route("/ping")(lambda: {"ok": True})
    server = local.LocalDevServer(app, Config(), "127.0.0.1", 0, handler_cls=Recording)
    threading.Thread(target=server.handle_single_request, daemon=True).start()
    # WHEN a client asks
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.server_address[1]}/ping", timeout=10) as answer:
        assert json.loads(answer.read()) == {"ok": True}
    # THEN its connection had TCP_NODELAY: the body never waits for the client's delayed ACK of the headers
    assert nodelay and nodelay[0] != 0
