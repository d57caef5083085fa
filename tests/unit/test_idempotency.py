"""Idempotency-Key handling on moto: replay, body mismatch, isolation, failures, expiry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import idempotency
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.idempotency import RETENTION_SECONDS, replay_or_run

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

KEY = "order-7f3a9c21-0001"
SCOPE = "POST /v1/payments"
BODY = {"invitation_id": "i-1", "channel": "wechat", "scene": "jsapi"}
PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(aws: None) -> Iterator[None]:
    """A fresh persistence layer (and boto3 client) inside this test's moto account."""
    idempotency.reset()
    yield
    idempotency.reset()


class Counter:
    """A ``run`` that counts its calls and answers ``(status, body)``."""

    def __init__(self, status: int = 201, body: dict[str, Any] | None = None) -> None:
        self.calls = 0
        self.status = status
        self.body = body if body is not None else {"payment_id": "pay_1", "amount_fen": 50000}

    def __call__(self) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        return self.status, {**self.body, "call": self.calls}


class Remaining:
    """A Lambda context stand-in with a fixed remaining time."""

    def __init__(self, millis: int) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def call(
    run: Callable[[], tuple[int, dict[str, Any]]],
    *,
    key: str | None = KEY,
    scope: str = SCOPE,
    caller: str = "u-1",
    body: Any = BODY,
    lambda_context: Any = None,
) -> tuple[int, dict[str, Any]]:
    return replay_or_run(key, scope=scope, caller=caller, body=body, run=run, lambda_context=lambda_context)


def records() -> list[dict[str, Any]]:
    import boto3

    return boto3.client("dynamodb").scan(TableName=get_settings().idempotency_table)["Items"]


# --- the happy paths ------------------------------------------------------------------------------


def test_without_a_key_run_runs_every_time_and_nothing_is_stored(store: None) -> None:
    run = Counter()

    first = call(run, key=None)
    second = call(run, key=None)

    assert (first[1]["call"], second[1]["call"]) == (1, 2)
    assert records() == []


def test_the_first_call_runs_and_stores_status_and_body(store: None) -> None:
    run = Counter(status=201)

    status, body = call(run)

    assert run.calls == 1
    assert (status, body) == (201, {"payment_id": "pay_1", "amount_fen": 50000, "call": 1})
    [item] = records()
    assert item["status"]["S"] == "COMPLETED"
    assert json.loads(item["data"]["S"]) == {"status": 201, "body": body}
    assert item["id"]["S"].startswith("http#")
    assert KEY not in json.dumps(item)  # the record id is a hash, not the client's key


def test_the_same_key_and_body_replays_the_first_response_without_running(store: None) -> None:
    # GIVEN a completed request; the body holds nested values and Chinese text
    body_out = {"payment_id": "pay_1", "params": {"package": "prepay_id=wx1", "tags": [1, "\u652f\u4ed8", None, True]}}
    run = Counter(status=201, body=body_out)
    first = call(run)

    # WHEN the client retries with the same key and the same body (keys in another order)
    retry = call(run, body=dict(reversed(list(BODY.items()))))

    # THEN the stored status and body come back and the work is not done again
    assert retry == first
    assert retry[0] == 201
    assert run.calls == 1


def test_a_replay_keeps_a_non_default_status(store: None) -> None:
    run = Counter(status=202, body={"state": "processing"})
    call(run)

    assert call(run) == (202, {"state": "processing", "call": 1})
    assert run.calls == 1


def test_the_same_key_with_another_body_is_409_reused(store: None) -> None:
    run = Counter()
    call(run)

    with pytest.raises(ApiError) as raised:
        call(run, body={**BODY, "invitation_id": "i-2"})

    assert (raised.value.status, raised.value.code) == (409, "idempotency_key_reused")
    assert raised.value.message_zh
    assert run.calls == 1


def test_another_caller_with_the_same_key_runs_separately_and_never_sees_the_first_response(store: None) -> None:
    # GIVEN user 1 completed a request with the key
    first = call(lambda: (201, {"owner": "u-1"}), caller="u-1")

    # WHEN user 2 sends the same key (even with the same body)
    second_run = Counter(body={"owner": "u-2"})
    second = call(second_run, caller="u-2")

    # THEN user 2's request runs and answers user 2's own response
    assert second_run.calls == 1
    assert second == (201, {"owner": "u-2", "call": 1})
    assert first == (201, {"owner": "u-1"})
    assert len(records()) == 2
    # and each one's retries replay their own response
    assert call(Counter(), caller="u-1") == first
    assert call(Counter(), caller="u-2") == second


def test_another_caller_with_the_same_key_and_another_body_is_not_a_reuse(store: None) -> None:
    call(Counter(), caller="u-1")

    assert call(Counter(), caller="u-2", body={"invitation_id": "other"})[0] == 201


def test_another_scope_with_the_same_key_runs_separately(store: None) -> None:
    call(Counter(body={"route": "payments"}), scope="POST /v1/payments")
    other = Counter(body={"route": "tips"})

    status, body = call(other, scope="POST /v1/tips")

    assert other.calls == 1
    assert (status, body) == (201, {"route": "tips", "call": 1})
    assert len(records()) == 2


# --- bad keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "short-7",  # 7 characters
        "a" * 129,
        "has space1",
        "semi;colon",
        "slash/key1",
        "dot.key.123",
        "trailing-newline\n",
        "\u5bc6\u94a5\u5bc6\u94a5\u5bc6\u94a5\u5bc6\u94a5",  # 8 CJK characters
        "\uff41\uff42\uff43\uff44\uff45\uff46\uff47\uff48",  # fullwidth letters
    ],
)
def test_an_invalid_key_is_400_and_nothing_runs(store: None, key: str) -> None:
    run = Counter()

    with pytest.raises(ApiError) as raised:
        call(run, key=key)

    assert (raised.value.status, raised.value.code) == (400, "invalid_idempotency_key")
    assert raised.value.details == {"header": "Idempotency-Key"}
    assert run.calls == 0
    assert records() == []


@pytest.mark.parametrize("key", ["a" * 8, "Z9_-" * 32, "550e8400-e29b-41d4-a716-446655440000"])
def test_keys_at_the_limits_and_uuids_are_accepted(store: None, key: str) -> None:
    assert call(Counter(), key=key)[0] == 201


def test_scope_and_caller_are_required(store: None) -> None:
    with pytest.raises(ValueError, match="scope and caller"):
        call(Counter(), caller="")


# --- failures are not stored ---------------------------------------------------------------------------


def test_a_run_raising_api_error_is_not_stored_and_a_retry_runs_again(store: None) -> None:
    # GIVEN the first attempt fails validation inside run
    def failing() -> tuple[int, dict[str, Any]]:
        raise ApiError(422, "profile_incomplete", "Set your name first", "\u8bf7\u5148\u586b\u5199\u59d3\u540d")

    with pytest.raises(ApiError) as raised:
        call(failing)
    assert raised.value.code == "profile_incomplete"  # the error itself reaches the client
    assert records() == []  # Powertools deleted its in-progress claim

    # WHEN the client fixes the problem and retries with the same key and the same body
    run = Counter()
    status, _ = call(run)

    # THEN it runs, and only now is the response stored
    assert (status, run.calls) == (201, 1)
    assert [item["status"]["S"] for item in records()] == ["COMPLETED"]


def test_after_a_failure_the_same_key_may_carry_a_corrected_body(store: None) -> None:
    def failing() -> tuple[int, dict[str, Any]]:
        raise ApiError(422, "validation_failed", "bad channel", "\u652f\u4ed8\u6e20\u9053\u65e0\u6548")

    with pytest.raises(ApiError):
        call(failing, body={**BODY, "channel": "carrier-pigeon"})

    assert call(Counter(), body=BODY)[0] == 201


def test_an_unexpected_error_is_not_stored_either(store: None) -> None:
    def crashing() -> tuple[int, dict[str, Any]]:
        raise RuntimeError("provider unreachable")

    with pytest.raises(RuntimeError, match="provider unreachable"):
        call(crashing)

    assert records() == []
    assert call(Counter())[0] == 201


# --- in progress -----------------------------------------------------------------------------------------


def test_a_duplicate_while_the_first_is_running_is_409_in_use(store: None) -> None:
    seen: list[str] = []

    def outer() -> tuple[int, dict[str, Any]]:
        # a duplicate arrives while this request still holds the key
        with pytest.raises(ApiError) as raised:
            call(Counter())
        seen.append(raised.value.code)
        assert raised.value.status == 409
        return 201, {"done": True}

    assert call(outer) == (201, {"done": True})
    assert seen == ["idempotency_key_in_use"]
    assert call(Counter()) == (201, {"done": True})  # afterwards: the replay


def test_another_body_while_the_first_is_running_is_409_reused(store: None) -> None:
    seen: list[str] = []

    def outer() -> tuple[int, dict[str, Any]]:
        with pytest.raises(ApiError) as raised:
            call(Counter(), body={"invitation_id": "i-9"})
        seen.append(raised.value.code)
        return 201, {}

    call(outer)
    assert seen == ["idempotency_key_reused"]


def test_the_claim_lasts_as_long_as_the_invocation_may(store: None) -> None:
    claims: list[int] = []

    def outer() -> tuple[int, dict[str, Any]]:
        [item] = records()
        claims.append(int(item["in_progress_expiration"]["N"]))
        return 201, {}

    before = int(time.time() * 1000)
    call(outer, lambda_context=Remaining(5_000))
    after = int(time.time() * 1000)

    assert before + 5_000 <= claims[0] <= after + 5_000


def test_without_a_lambda_context_the_claim_lasts_the_default_budget(store: None) -> None:
    claims: list[int] = []

    def outer() -> tuple[int, dict[str, Any]]:
        [item] = records()
        claims.append(int(item["in_progress_expiration"]["N"]))
        return 201, {}

    before = int(time.time() * 1000)
    call(outer)
    after = int(time.time() * 1000)

    assert before + idempotency.DEFAULT_LOCK_MILLIS - 1_000 <= claims[0] <= after + idempotency.DEFAULT_LOCK_MILLIS


def test_a_claim_whose_invocation_timed_out_can_be_taken_over(store: None) -> None:
    # GIVEN a request whose Lambda has no time left (it would have been killed)
    inner = Counter(body={"by": "retry"})
    answers: list[tuple[int, dict[str, Any]]] = []

    def outer() -> tuple[int, dict[str, Any]]:
        # WHEN a retry arrives while its claim is still in the table
        answers.append(call(inner))
        return 201, {"by": "first"}

    call(outer, lambda_context=Remaining(-1_000))

    # THEN the retry was not blocked: it claimed the key and ran
    assert inner.calls == 1
    assert answers == [(201, {"by": "retry", "call": 1})]


# --- expiry -------------------------------------------------------------------------------------------


def test_a_record_is_kept_24_hours(store: None) -> None:
    before = int(time.time())
    call(Counter())
    after = int(time.time())

    [item] = records()
    expiration = int(item["expiration"]["N"])
    assert RETENTION_SECONDS == 24 * 3600
    assert before + RETENTION_SECONDS <= expiration <= after + RETENTION_SECONDS + 1


def test_an_expired_record_is_not_replayed_even_before_the_ttl_sweep(store: None) -> None:
    import boto3

    # GIVEN a completed record whose 24 hours are over, still in the table (TTL deletes lazily)
    call(Counter())
    [item] = records()
    boto3.client("dynamodb").update_item(
        TableName=get_settings().idempotency_table,
        Key={"id": item["id"]},
        UpdateExpression="SET #e = :past",
        ExpressionAttributeNames={"#e": "expiration"},
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )

    # WHEN the key is used again
    run = Counter(body={"fresh": True})
    status, body = call(run)

    # THEN it is a new request
    assert run.calls == 1
    assert (status, body) == (201, {"fresh": True, "call": 1})
    [renewed] = records()
    assert int(renewed["expiration"]["N"]) > int(time.time()) + RETENTION_SECONDS - 60


# --- cold start ------------------------------------------------------------------------------------------


def test_importing_the_module_loads_no_aws_sdk_powertools_or_chalice() -> None:
    code = (
        "import sys, chalicelib.idempotency\n"
        "names = ('boto3', 'botocore', 'aws_lambda_powertools', 'chalice', 'pynamodb')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
