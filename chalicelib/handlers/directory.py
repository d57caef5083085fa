"""The hospital directory: ``GET /v1/hospitals`` (search) and ``POST /v1/admin/hospitals`` (add).

Views import the directory module when first called (see ``handlers.accounts``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from chalice import Blueprint, Response

from chalicelib.accounts.roles import ADMIN, ANON
from chalicelib.clock import utc_now
from chalicelib.directory.vocabulary import Grade
from chalicelib.handlers.access import current_principal, route
from chalicelib.validation import Limit, parse, parse_query

bp = Blueprint(__name__)

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=60)]
Place = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]


class HospitalQuery(msgspec.Struct, forbid_unknown_fields=True):
    """``q`` matches a prefix of the name, an alias, their pinyin or initials; ``city`` narrows."""

    q: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    city: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    limit: Limit = 20
    cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


class NewHospital(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    city: Place
    province: Place
    aliases: Annotated[list[Name], msgspec.Meta(max_length=10)] = []
    grade: Grade | None = None


@route(bp, "/v1/hospitals", methods=["GET"], roles=[ANON])
def search_hospitals() -> dict[str, Any]:
    """One page of the directory, searched by name, alias, pinyin, initials and city."""
    from chalicelib.directory import hospitals

    query = parse_query(bp.current_request.query_params, HospitalQuery)
    return hospitals.search(query.q, query.city, query.limit, query.cursor)


@route(bp, "/v1/admin/hospitals", methods=["POST"], roles=[ADMIN])
def add_hospital() -> Response:
    """Add a hospital to the directory (201); 409 when one with the same name exists."""
    from chalicelib.directory import hospitals

    body = parse(bp.current_request.json_body, NewHospital)
    view = hospitals.add_hospital(
        body.name,
        body.aliases,
        body.city,
        body.province,
        body.grade,
        current_principal().user_id,
        utc_now(),
    )
    return Response(view, status_code=201)
