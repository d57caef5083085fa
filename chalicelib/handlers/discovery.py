"""Discovery: a hospital's anesthesiologists, the whole catalogue for VIP hospitals, the storefront (M-d, C2, C3).

Views import the discovery module when first called (see ``handlers.accounts``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from chalice import Blueprint

from chalicelib.accounts.roles import ADMIN, SIGNED_IN, VIP_HOSPITAL
from chalicelib.clock import utc_now
from chalicelib.doctors.vocabulary import Specialty, Title
from chalicelib.errors import ApiError
from chalicelib.handlers.access import current_principal, route
from chalicelib.validation import Limit, PageQuery, parse_query, path_id

bp = Blueprint(__name__)


class CatalogueQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = 20
    cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    date: dt.date | None = None
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=20)] | None = None
    title: Title | None = None
    specialty: Specialty | None = None


class StorefrontQuery(msgspec.Struct, forbid_unknown_fields=True):
    reviews_cursor: Annotated[str, msgspec.Meta(max_length=2048)] | None = None


HOSPITAL_NOT_FOUND = ApiError(404, "hospital_not_found", "No hospital in the directory has this id", "找不到该医院")
DOCTOR_NOT_FOUND = ApiError(404, "doctor_not_found", "No verified anesthesiologist has this id", "找不到该麻醉医生")


@route(bp, "/v1/hospitals/{hospital_id}/anesthesiologists", methods=["GET"], roles=SIGNED_IN)
def hospital_doctors(hospital_id: str) -> dict[str, Any]:
    """Verified anesthesiologists registered at one hospital, best first."""
    from chalicelib.doctors import discovery

    query = parse_query(bp.current_request.query_params, PageQuery)
    return discovery.doctors_of_hospital(path_id(hospital_id, HOSPITAL_NOT_FOUND), query.limit, query.cursor, utc_now())


@route(bp, "/v1/anesthesiologists", methods=["GET"], roles=[VIP_HOSPITAL, ADMIN])
def all_doctors() -> dict[str, Any]:
    """Every verified anesthesiologist, filtered by date, city, title or specialty."""
    from chalicelib.doctors import discovery

    query = parse_query(bp.current_request.query_params, CatalogueQuery)
    filters = {"date": query.date, "city": query.city, "title": query.title, "specialty": query.specialty}
    return discovery.all_doctors(filters, query.limit, query.cursor, utc_now())


@route(bp, "/v1/anesthesiologists/{doctor_id}", methods=["GET"], roles=SIGNED_IN)
def storefront(doctor_id: str) -> dict[str, Any]:
    """The doctor's storefront: reputation, latest reviews, anesthesias done, accepting days, fees."""
    from chalicelib.doctors import discovery

    query = parse_query(bp.current_request.query_params, StorefrontQuery)
    return discovery.storefront(
        path_id(doctor_id, DOCTOR_NOT_FOUND), current_principal(), utc_now(), reviews_cursor=query.reviews_cursor
    )
