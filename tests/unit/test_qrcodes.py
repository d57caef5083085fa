"""``GET /v1/qrcodes/{kind}``: the code decodes to the exact front-end URL, in SVG or PNG."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import zxingcpp
from PIL import Image

from chalicelib import qrcodes
from chalicelib.config import get_settings
from chalicelib.directory import hospitals

if TYPE_CHECKING:
    from chalice.test import Client

PUMCH = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
BEIJING = "\u5317\u4eac"  # 北京
PNG = {"Accept": "image/png"}


@pytest.fixture
def hospital_id(aws: None) -> str:
    view = hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, None, "u-admin", datetime.now(UTC))
    return view["hospital_id"]


def decode_png(body: bytes) -> zxingcpp.Barcode:
    (barcode,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(body)))
    return barcode


def test_the_patient_entry_code_of_a_hospital(client: Client, hospital_id: str) -> None:
    response = client.http.get(f"/v1/qrcodes/patient-entry?hospital_id={hospital_id}&format=png", headers=PNG)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    barcode = decode_png(response.body)
    assert barcode.format == zxingcpp.BarcodeFormat.QRCode
    assert barcode.ec_level == "M"
    assert barcode.text == f"{get_settings().frontend_url}/entry?hospital_id={hospital_id}"


def test_the_doctor_registration_code_without_a_hospital(client: Client) -> None:
    response = client.http.get("/v1/qrcodes/doctor-registration?format=png", headers={"Accept": "text/html, image/png"})

    assert response.status_code == 200
    assert decode_png(response.body).text == "http://127.0.0.1:5173/register/doctor"


def test_svg_is_the_default_and_is_an_svg_document(client: Client, hospital_id: str) -> None:
    response = client.http.get(f"/v1/qrcodes/doctor-registration?hospital_id={hospital_id}")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/svg+xml"
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    root = ET.fromstring(response.body)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_the_svg_and_the_png_carry_the_same_code(client: Client) -> None:
    svg = client.http.get("/v1/qrcodes/patient-entry?format=svg").body.decode()

    assert svg == qrcodes.render("http://127.0.0.1:5173/entry", "svg")
    assert decode_png(qrcodes.render("http://127.0.0.1:5173/entry", "png")).text == "http://127.0.0.1:5173/entry"


def test_the_hospital_id_is_url_encoded() -> None:
    url = qrcodes.target_url("patient-entry", "h-1 &x=y", "https://m.anes.example.cn/")

    assert url == "https://m.anes.example.cn/entry?hospital_id=h-1+%26x%3Dy"


def test_an_unknown_kind_is_404(client: Client) -> None:
    response = client.http.get("/v1/qrcodes/hospital-admin")

    assert response.status_code == 404
    error = response.json_body["error"]
    assert error["code"] == "unknown_qrcode_kind"
    assert error["details"]["kinds"] == ["doctor-registration", "patient-entry"]


def test_an_unknown_hospital_is_404(client: Client) -> None:
    response = client.http.get("/v1/qrcodes/patient-entry?hospital_id=h-000000000000&format=png", headers=PNG)

    assert response.status_code == 404
    assert response.json_body["error"]["code"] == "hospital_not_found"


@pytest.mark.parametrize("accept", [None, "*/*", "image/*", "application/json"])
def test_png_without_accept_image_png_is_406(client: Client, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}

    response = client.http.get("/v1/qrcodes/patient-entry?format=png", headers=headers)

    assert response.status_code == 406
    assert response.json_body["error"]["code"] == "not_acceptable"


@pytest.mark.parametrize(
    ("query", "field"), [("format=jpeg", "format"), ("size=9", "size"), ("hospital_id=", "hospital_id")]
)
def test_bad_parameters_are_422(client: Client, query: str, field: str) -> None:
    response = client.http.get(f"/v1/qrcodes/patient-entry?{query}")

    assert response.status_code == 422
    assert response.json_body["error"]["details"]["field"] == field
