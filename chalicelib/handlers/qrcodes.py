"""``GET /v1/qrcodes/{kind}``: a QR code (SVG or PNG) for doctor registration or patient entry.

PNG is binary: API Gateway (and Chalice) pass it through only when the request's
``Accept`` header names ``image/png``, so ``format=png`` without it is refused with 406
in the error shape instead of Chalice's own 400. The view imports the QR module (and
through it the directory) when first called.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from chalice import Blueprint, Response

from chalicelib.accounts.roles import ANON
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.handlers.access import route
from chalicelib.validation import parse_query

bp = Blueprint(__name__)

CONTENT_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
CACHE_CONTROL = "public, max-age=86400"


class QrCodeQuery(msgspec.Struct, forbid_unknown_fields=True):
    hospital_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    format: Literal["svg", "png"] = "svg"


def _accepts_png(accept: str | None) -> bool:
    """Whether ``Accept`` names ``image/png`` itself (``*/*`` does not make API Gateway send binary)."""
    return accept is not None and "image/png" in (part.strip().lower() for part in re.split("[,;]", accept))


@route(bp, "/v1/qrcodes/{kind}", methods=["GET"], roles=[ANON])
def qrcode(kind: str) -> Response:
    """The QR code of ``kind``, optionally bound to a hospital of the directory."""
    from chalicelib import qrcodes

    request = bp.current_request
    query = parse_query(request.query_params, QrCodeQuery)
    body = qrcodes.qrcode(kind, query.hospital_id, query.format, get_settings().frontend_url)
    if query.format == "png" and not _accepts_png(request.headers.get("accept")):
        raise ApiError(
            406,
            "not_acceptable",
            "format=png needs the request header 'Accept: image/png'",
            "获取 PNG 格式需要请求头 Accept: image/png",
            {"format": "png", "accept": "image/png"},
        )
    return Response(body, headers={"Content-Type": CONTENT_TYPES[query.format], "Cache-Control": CACHE_CONTROL})
