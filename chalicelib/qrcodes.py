"""QR codes that lead to the front end: doctor registration and patient entry, optionally per hospital.

A hospital prints them on posters; scanning one opens the front end's page with the
hospital already chosen. Codes use error-correction level M (15 % of the symbol may be
dirty or covered) and are never Micro QR, which phone scanners often do not read.

Example
-------
>>> target_url("patient-entry", "h-1a2b", "https://m.anes.example.cn")
'https://m.anes.example.cn/entry?hospital_id=h-1a2b'
>>> render(target_url("doctor-registration", None, "https://m.anes.example.cn"), "svg")[:5]  # doctest: +SKIP
'<?xml'
"""

from __future__ import annotations

import io
from urllib.parse import urlencode

from chalicelib.directory import hospitals
from chalicelib.errors import ApiError

PAGES: dict[str, str] = {"doctor-registration": "/register/doctor", "patient-entry": "/entry"}
"""QR kind → the front-end page it opens."""
MODULE_PIXELS = 8
"""Size of one QR module in the PNG (and the SVG's default size); 4 modules of quiet zone around."""


def target_url(kind: str, hospital_id: str | None, frontend_url: str) -> str:
    """The URL a code of ``kind`` encodes; 404 ``unknown_qrcode_kind`` for any other kind."""
    page = PAGES.get(kind)
    if page is None:
        raise ApiError(
            404,
            "unknown_qrcode_kind",
            f"No QR code of this kind; the kinds are {', '.join(PAGES)}",
            "没有这种二维码",
            {"kind": kind, "kinds": list(PAGES)},
        )
    url = frontend_url.rstrip("/") + page
    return f"{url}?{urlencode({'hospital_id': hospital_id})}" if hospital_id is not None else url


def render(url: str, fmt: str) -> str | bytes:
    """``url`` as a QR code: SVG text (``fmt="svg"``) or PNG bytes (``fmt="png"``)."""
    import segno

    code = segno.make_qr(url, error="m", boost_error=False)
    buffer = io.BytesIO()
    code.save(buffer, kind=fmt, scale=MODULE_PIXELS, border=4)
    return buffer.getvalue().decode("utf-8") if fmt == "svg" else buffer.getvalue()


def qrcode(kind: str, hospital_id: str | None, fmt: str, frontend_url: str) -> str | bytes:
    """The code of ``kind``, bound to ``hospital_id`` (404 ``hospital_not_found`` unless in the directory)."""
    url = target_url(kind, hospital_id, frontend_url)
    if hospital_id is not None:
        hospitals.require_hospital(hospital_id)
    return render(url, fmt)
