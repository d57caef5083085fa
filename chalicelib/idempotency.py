"""Client ``Idempotency-Key`` handling for the money-moving POSTs (design.md §4, L5).

A client that may retry a POST sends ``Idempotency-Key: <8-128 of [A-Za-z0-9_-]>``. The
first request with a key runs; its status and body are stored for 24 hours and every
retry with the same key and the same body gets them back, with the same status code,
without running again. Records belong to one caller on one route scope, so two users (or
two routes) using the same key never see each other's responses.

It is built on Powertools' idempotency utility (``IdempotencyHandler`` with the
``DynamoDBPersistenceLayer`` over the ``<prefix>-idempotency`` table):

- one conditional ``PutItem`` claims the key (``INPROGRESS``); a concurrent duplicate sees
  that record and gets 409 ``idempotency_key_in_use`` (retry later);
- the same key with another body fails Powertools' payload validation (the record keeps a
  hash of the body): 409 ``idempotency_key_reused``;
- when ``run`` raises (an ``ApiError`` or anything else) Powertools deletes the claim and
  re-raises, so nothing is stored and a corrected retry with the same key runs again;
- a claim whose write committed but whose answer was lost (botocore then sends it again,
  and the second send meets the first) is recognised as this request's own by a random
  ``claim`` token written with it, so the request goes on instead of blocking itself;
- an ``INPROGRESS`` claim whose invocation died is reclaimable once the invocation's
  remaining time has passed (``in_progress_expiration``), and a record past its
  ``expiration`` counts as absent even before DynamoDB's TTL sweep removes it.

Only a *returned* response is stored: ``run`` reports failures by raising ``ApiError``.
Bodies must be JSON-native (dict, list, str, int, float, bool, None); a replay is the body
as stored in JSON.

Example
-------
>>> def create_payment() -> tuple[int, dict]:
...     return 201, {"payment_id": "pay_1", "amount_fen": 50000}
>>> replay_or_run(
...     request.headers.get("idempotency-key"),
...     scope="POST /v1/payments",
...     caller=principal.user_id,
...     body=request.json_body,
...     run=create_payment,
...     lambda_context=app.lambda_context,
... )  # doctest: +SKIP
(201, {'payment_id': 'pay_1', 'amount_fen': 50000})
>>> # the same call again: create_payment is not called, the stored answer comes back
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,128}")
RETENTION_SECONDS = 24 * 3600
"""How long a completed response is replayed (design.md §4: at least 24 h, as Stripe)."""
DEFAULT_LOCK_MILLIS = 60_000
"""How long a claim blocks duplicates when no Lambda context is given: Chalice's default timeout."""
KEY_PREFIX = "http"
"""Fixed prefix of the record ids (``http#<sha256>``), so moving this code keeps the records valid."""
CLAIM_ATTR = "claim"
"""A random token per claim write: the record's own writer knows it, a concurrent duplicate does not."""

_claim: ContextVar[str | None] = ContextVar("idempotency_claim", default=None)


class RemainingTime(Protocol):
    """What Powertools reads from a Lambda context: the time left in this invocation."""

    def get_remaining_time_in_millis(self) -> int | float: ...


class _FixedBudget:
    """A stand-in Lambda context for callers outside an invocation (tests, scripts)."""

    def __init__(self, millis: int) -> None:
        self._deadline = time.monotonic() + millis / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


_lock = threading.Lock()
_persistence: DynamoDBPersistenceLayer | None = None


def _config(lambda_context: RemainingTime) -> IdempotencyConfig:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    return IdempotencyConfig(
        # the record id hashes (scope, caller, key) only; the body is checked, not keyed
        event_key_jmespath="[scope, caller, key]",
        payload_validation_jmespath="body",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=RETENTION_SECONDS,
        hash_function="sha256",
        lambda_context=lambda_context,  # type: ignore[arg-type]  # duck-typed: only the remaining time is read
    )


def _stamp_claim(params: dict[str, Any], **_: Any) -> None:
    """botocore ``before-parameter-build`` hook: write this thread's claim token with the claim."""
    token = _claim.get()
    if token is not None:
        params["Item"][CLAIM_ATTR] = {"S": token}


def _own_claim(error: Exception, token: str) -> bool:
    """Whether the record that refused a claim write is this very write, committed by an earlier send."""
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Item", {}).get(CLAIM_ATTR, {}).get("S") == token


def _claim_aware_layer(table_name: str) -> DynamoDBPersistenceLayer:
    """Powertools' DynamoDB layer, whose claim survives a lost answer.

    DynamoDB may commit the claim ``PutItem`` and lose the answer; botocore sends it again, the
    second send meets the first one's record, and plain Powertools reports the key in use by
    another request: the client's retries would then get 409 until the claim's time ran out.
    """
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyItemAlreadyExistsError

    class ClaimAwareLayer(DynamoDBPersistenceLayer):
        def _put_record(self, data_record: Any) -> None:
            token = secrets.token_hex(16)
            reset = _claim.set(token)
            try:
                super()._put_record(data_record)
            except IdempotencyItemAlreadyExistsError as exists:
                if not _own_claim(exists, token):
                    raise
            finally:
                _claim.reset(reset)

    layer = ClaimAwareLayer(table_name=table_name, key_attr="id")
    layer.client.meta.events.register("before-parameter-build.dynamodb.PutItem", _stamp_claim)
    return layer


def _persistence_layer() -> DynamoDBPersistenceLayer:
    """The persistence layer of this container, made (with its boto3 client) on first use."""
    global _persistence
    with _lock:
        if _persistence is None:
            from chalicelib.config import get_settings

            layer = _claim_aware_layer(get_settings().idempotency_table)
            # Configure once here: Powertools applies only the first configuration it is given,
            # and configuring inside concurrent calls would race on the shared layer.
            layer.configure(_config(_FixedBudget(DEFAULT_LOCK_MILLIS)), key_prefix=KEY_PREFIX)
            _persistence = layer
        return _persistence


def reset() -> None:
    """Forget the persistence layer (tests: a new moto account or endpoint needs a new client)."""
    global _persistence
    with _lock:
        _persistence = None


def _checked_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{HEADER} must be 8 to 128 characters of A-Z, a-z, 0-9, '_' or '-'.",
            f"{HEADER} 须为 8 到 128 个字母、数字、下划线或连字符",
            {"header": HEADER},
        )
    return key


def replay_or_run(
    key: str | None,
    *,
    scope: str,
    caller: str,
    body: Any,
    run: Callable[[], tuple[int, dict[str, Any]]],
    lambda_context: RemainingTime | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run ``run`` once per (caller, scope, key); replay its status and body to retries.

    Parameters
    ----------
    key:
        The raw ``Idempotency-Key`` header; ``None`` means none was sent: ``run`` runs.
    scope:
        The route, e.g. ``"POST /v1/payments"``; include path ids when they select the target.
    caller:
        The signed-in user's id.
    body:
        The parsed request body; a retry must send an equal one (key order does not matter).
    run:
        Does the work and returns ``(status, body)``; raises ``ApiError`` on failure, which
        is not stored, so the client may correct the request and retry with the same key.
    lambda_context:
        ``app.lambda_context``: a claim left by an invocation that died blocks duplicates
        only until that invocation's time is up. Without it, for ``DEFAULT_LOCK_MILLIS``.

    Raises
    ------
    ApiError
        400 ``invalid_idempotency_key``; 409 ``idempotency_key_reused`` (same key, other
        body); 409 ``idempotency_key_in_use`` (the first request is still running); or
        whatever ``run`` raised.

    Example
    -------
    >>> replay_or_run("order-7f3a9c21", scope="POST /v1/payments", caller="u-1",
    ...               body={"invitation_id": "i-1"}, run=lambda: (201, {"payment_id": "p-1"}))  # doctest: +SKIP
    (201, {'payment_id': 'p-1'})
    """
    if key is None:
        return run()
    _checked_key(key)
    if not scope or not caller:
        raise ValueError("scope and caller are required")

    from aws_lambda_powertools.utilities.idempotency.base import IdempotencyHandler
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyInconsistentStateError,
        IdempotencyValidationError,
    )

    def respond() -> dict[str, Any]:
        status, response = run()
        return {"status": status, "body": response}

    persistence = _persistence_layer()
    handler = IdempotencyHandler(
        function=respond,
        function_payload={"scope": scope, "caller": caller, "key": key, "body": body},
        config=_config(lambda_context or _FixedBudget(DEFAULT_LOCK_MILLIS)),
        persistence_store=persistence,
        key_prefix=KEY_PREFIX,
        function_args=(),
        function_kwargs={},
    )
    try:
        stored = handler.handle()
    except IdempotencyValidationError:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"This {HEADER} was already used with a different request body.",
            f"该 {HEADER} 已用于内容不同的请求",
            {"header": HEADER},
        ) from None
    except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
        raise ApiError(
            409,
            "idempotency_key_in_use",
            f"A request with this {HEADER} is still being processed; retry later.",
            f"使用该 {HEADER} 的请求仍在处理中，请稍后重试",
            {"header": HEADER},
        ) from None
    return int(stored["status"]), stored["body"]
