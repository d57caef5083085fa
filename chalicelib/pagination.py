"""Opaque, tamper-proof cursors and bounded page reads.

A cursor is DynamoDB's ``LastEvaluatedKey`` bound to the list it came from and signed
with a keyed HMAC: a client cannot edit one to read another partition, and a cursor of
one list is refused by another (400 ``invalid_cursor``).

``read_page`` reads at most ``max_reads`` DynamoDB pages, so a filtered query costs a
bounded amount per request even when few items match; the caller gets a cursor to go on.

Example
-------
>>> cursor = encode_cursor({"pk": {"S": "USER#1"}}, scope="doctors")  # doctest: +SKIP
>>> decode_cursor(cursor, scope="doctors")  # doctest: +SKIP
{'pk': {'S': 'USER#1'}}
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib.errors import ApiError
from chalicelib.security.keys import get_keys

if TYPE_CHECKING:
    from collections.abc import Callable

    from pynamodb.models import Model

M = TypeVar("M", bound="Model")


def _signature(scope: str, payload: bytes) -> bytes:
    return hmac.new(get_keys().lookup_key, b"cursor:" + scope.encode() + b":" + payload, hashlib.sha256).digest()[:16]


def encode_cursor(last_key: dict[str, Any] | None, scope: str) -> str | None:
    """The cursor for ``last_key`` (None when the list is exhausted)."""
    if not last_key:
        return None
    payload = json.dumps(last_key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(_signature(scope, payload) + payload).decode().rstrip("=")


def decode_cursor(cursor: str | None, scope: str) -> dict[str, Any] | None:
    """The key a cursor stands for; 400 ``invalid_cursor`` if it was not made for ``scope``."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        signature, payload = raw[:16], raw[16:]
        if len(signature) == 16 and hmac.compare_digest(signature, _signature(scope, payload)):
            key = json.loads(payload)
            if isinstance(key, dict):
                return key
    except (ValueError, UnicodeDecodeError):
        pass
    raise ApiError(400, "invalid_cursor", "The cursor is not valid for this list", "分页游标无效")


def read_page(
    query: Callable[..., Any],
    model: type[M],
    *,
    limit: int,
    start: dict[str, Any] | None,
    max_reads: int = 5,
) -> tuple[list[M], dict[str, Any] | None]:
    """Up to ``limit`` items of ``query`` from ``start``, reading at most ``max_reads`` pages.

    ``query(page_size=..., last_evaluated_key=...)`` must return a PynamoDB result
    iterator. Returns the items and the key to continue from (None at the end).
    """
    results = query(page_size=limit, last_evaluated_key=start)
    pages = results.page_iter
    items: list[M] = []
    last_key: dict[str, Any] | None = start
    for _ in range(max_reads):
        try:
            page = next(pages)
        except StopIteration:
            return items, None
        raws = page.get("Items", [])
        for index, raw in enumerate(raws):
            items.append(model.from_raw_data(raw))
            if len(items) == limit:
                if index == len(raws) - 1 and pages.last_evaluated_key is None:
                    return items, None
                return items, {name: raw[name] for name in pages.key_names}
        last_key = pages.last_evaluated_key
        if last_key is None:
            return items, None
    return items, last_key
