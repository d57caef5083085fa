"""Request bodies and query strings, checked against typed ``msgspec`` schemas.

A schema is a ``msgspec.Struct`` with ``forbid_unknown_fields=True``: a field the client
may not set (``role``, ``verified``, ``star_level``...) is refused, never ignored. Errors
name the field and the rule, never the value (values can be personal data).

Example
-------
>>> class Rename(msgspec.Struct, forbid_unknown_fields=True):
...     name: str
>>> parse({"name": "Li"}, Rename).name
'Li'
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.json

from chalicelib.errors import ApiError

T = TypeVar("T")
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def invalid(message: str, field: str | None = None, **details: Any) -> ApiError:
    """A 422 ``validation_failed`` error naming the field."""
    if field is not None:
        details = {"field": field, **details}
    return ApiError(422, "validation_failed", message, "请求内容不符合要求", details)


def _refusal(error: msgspec.ValidationError) -> ApiError:
    message = str(error)
    at, named = _PATH.search(message), _NAMED_FIELD.search(message)
    prefix = at.group(1) if at else ""
    field = ".".join(part for part in (prefix, named.group(1) if named else "") if part)
    return invalid(_PATH.sub("", message), field or None)


def _require_unicode(payload: Any) -> None:
    """Refuse text that cannot be stored: JSON admits lone surrogates (``"\\ud800"``), UTF-8 does not."""
    try:
        msgspec.json.encode(payload)
    except UnicodeEncodeError:
        raise invalid("Text must be valid Unicode (no lone surrogates)") from None


def _integral(payload: Any) -> Any:
    """``payload`` with every whole float (``3.0``) as an int: JSON has one number type, and
    JSON Schema's ``integer`` admits ``3.0``, so an integer field must too (a fraction is still refused)."""
    if isinstance(payload, float) and payload.is_integer():
        return int(payload)
    if isinstance(payload, dict):
        return {key: _integral(value) for key, value in payload.items()}
    if isinstance(payload, list):
        return [_integral(item) for item in payload]
    return payload


def parse(payload: Any, schema: type[T]) -> T:
    """``payload`` as ``schema``; 400 when there is no body, 422 naming the field otherwise."""
    if payload is None:
        raise ApiError(400, "body_required", "A JSON body is required", "请求体不能为空")
    _require_unicode(payload)
    try:
        return msgspec.convert(_integral(payload), schema, strict=True)
    except msgspec.ValidationError as error:
        raise _refusal(error) from None


def parse_query(params: dict[str, str] | None, schema: type[T]) -> T:
    """Query-string parameters as ``schema`` (numbers and dates converted from text).

    A parameter that is sent has a value: ``?to=null`` is refused, not read as "no ``to``"
    (msgspec's lax mode would turn the text ``null`` into None).
    """
    values = dict(params or {})
    _require_unicode(values)
    try:
        # a plain dict: msgspec checks unknown fields of mappings, not of Chalice's MultiDict
        parsed = msgspec.convert(values, schema, strict=False)
    except msgspec.ValidationError as error:
        raise _refusal(error) from None
    fields = dict(zip(schema.__struct_encode_fields__, schema.__struct_fields__, strict=True))  # type: ignore[attr-defined]
    for name in values:
        if getattr(parsed, fields[name]) is None:
            raise invalid(f"{name} has no valid value", name)
    return parsed


Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PageQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``?limit=&cursor=`` of a paginated list."""

    limit: Limit = 20
    cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


def path_id(value: str, not_found: ApiError) -> str:
    """A path parameter that names an object; ``not_found`` when it cannot be an id at all."""
    if not _ID.match(value):
        raise not_found
    return value
