"""The hospital directory: search terms, prefix search without a Scan, pagination and admin additions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import openapi
from chalicelib.accounts.roles import ADMIN, DOCTOR, Principal
from chalicelib.accounts.tokens import issue_access_token
from chalicelib.directory import hospitals
from chalicelib.directory.vocabulary import GRADES
from chalicelib.errors import ApiError
from chalicelib.models.users import Hospital, HospitalTerm
from tests.unit import actors

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from chalice.test import Client

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

# Chinese as escapes, so the text cannot be altered in transit.
PUMCH = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
XIEHE = "\u534f\u548c"  # 协和
XIEHE_HOSPITAL = "\u534f\u548c\u533b\u9662"  # 协和医院
WUHAN_UNION = "\u534e\u4e2d\u79d1\u6280\u5927\u5b66\u540c\u6d4e\u533b\u5b66\u9662\u9644\u5c5e\u534f\u548c\u533b\u9662"
# 华中科技大学同济医学院附属协和医院
WUHAN_UNION_ALIAS = "\u6b66\u6c49\u534f\u548c\u533b\u9662"  # 武汉协和医院
CHAOYANG = "\u9996\u90fd\u533b\u79d1\u5927\u5b66\u9644\u5c5e\u5317\u4eac\u671d\u9633\u533b\u9662"
# 首都医科大学附属北京朝阳医院
HUASHAN = "\u590d\u65e6\u5927\u5b66\u9644\u5c5e\u534e\u5c71\u533b\u9662"  # 复旦大学附属华山医院
BEIJING, BEIJING_CITY = "\u5317\u4eac", "\u5317\u4eac\u5e02"  # 北京, 北京市
SHANGHAI, WUHAN, HUBEI = "\u4e0a\u6d77", "\u6b66\u6c49", "\u6e56\u5317"  # 上海, 武汉, 湖北
TOP_GRADE = "\u4e09\u7ea7\u7532\u7b49"  # 三级甲等
YI = "\u533b"  # 医

SAMPLE = (
    (PUMCH, [XIEHE_HOSPITAL], BEIJING, BEIJING),
    (CHAOYANG, [], BEIJING, BEIJING),
    (HUASHAN, [], SHANGHAI, SHANGHAI),
    (WUHAN_UNION, [WUHAN_UNION_ALIAS], WUHAN, HUBEI),
)


def token_for(role: str) -> dict[str, str]:
    token, _ = issue_access_token(Principal(f"u-{role}", role), datetime.now(UTC))
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


# --- the accounts of the tests ---------------------------------------------------------------------
#
# The searches only read the sample, so its four hospitals are added once, to an AWS account
# of the module. Every other test that touches the directory gets an empty account of its own:
# it adds hospitals by name, and the ids come from the names.


@pytest.fixture(scope="module")
def session() -> Iterator[Client]:
    with actors.moto_session() as client:
        yield client


@pytest.fixture(scope="module")
def sample_account(session: Client) -> tuple[str, dict[str, str]]:
    """An account holding four hospitals in three cities, and their ids by name."""
    with pytest.MonkeyPatch.context() as patch:
        account_id = actors.open_account(patch)
        for name, aliases, city, province in SAMPLE:
            hospitals.add_hospital(name, aliases, city, province, TOP_GRADE, "u-admin", NOW)
    return account_id, {name: hospitals.hospital_id_for(name, city) for name, _, city, _ in SAMPLE}


@pytest.fixture
def aws(session: Client) -> Iterator[None]:
    """An empty account of the test's own."""
    with pytest.MonkeyPatch.context() as patch:
        actors.open_account(patch)
        yield


@pytest.fixture
def sample(session: Client, sample_account: tuple[str, dict[str, str]]) -> Iterator[dict[str, str]]:
    """The sample's account, for the test to read: name → id."""
    account_id, ids = sample_account
    with pytest.MonkeyPatch.context() as patch:
        actors.open_account(patch, account_id)
        yield ids


@pytest.fixture
def client(request: pytest.FixtureRequest, session: Client) -> Client:
    """The app, on the sample's account when the test reads the ``sample``, else on an empty one of its own."""
    request.getfixturevalue("sample" if "sample" in request.fixturenames else "aws")
    return session


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.json_body
    return [item["name"] for item in response.json_body["items"]]


# --- terms and normalisation ---------------------------------------------------------------------


def test_search_terms_cover_characters_pinyin_and_initials() -> None:
    terms = hospitals.search_terms(PUMCH, [XIEHE_HOSPITAL])

    assert {PUMCH, PUMCH[1:], XIEHE_HOSPITAL, PUMCH[-2:], PUMCH[-1]} <= terms
    assert {"beijingxieheyiyuan", "jingxieheyiyuan", "xieheyiyuan", "heyiyuan", "yiyuan", "yuan"} <= terms
    assert {"bjxhyy", "jxhyy", "xhyy", "hyy", "yy"} <= terms
    assert not {term for term in terms if len(term) == 1 and term.isascii()}
    assert all(term == hospitals.normalize_query(term) for term in terms)


def test_search_terms_of_latin_aliases_and_digits() -> None:
    # GIVEN an alias with digits and one in latin letters
    terms = hospitals.search_terms("301\u533b\u9662", ["PUMCH"])  # 301医院

    # THEN a run of digits or letters is one unit: no "01yiyuan", no "umch"
    assert {"301\u533b\u9662", "301yiyuan", "301yy", "yiyuan", "pumch"} <= terms
    assert "01yiyuan" not in terms
    assert "umch" not in terms


def test_search_terms_skip_blank_aliases() -> None:
    assert hospitals.search_terms(XIEHE, ["", " - "]) == hospitals.search_terms(XIEHE, [])


def test_pinyin_overrides_fix_misread_place_names() -> None:
    # pypinyin alone reads this 朝 as "zhao"
    assert hospitals.full_pinyin(CHAOYANG) == "shouduyikedaxuefushubeijingchaoyangyiyuan"
    assert "cyyy" in hospitals.search_terms(CHAOYANG, [])


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  XieHe ", "xiehe"),
        ("\uff38\uff28", "xh"),  # full-width ＸＨ
        ("bei jing-xie_he!", "beijingxiehe"),
        ("\u5317\u4eac\u3000\u534f\u548c\uff08\u603b\uff09", "\u5317\u4eac\u534f\u548c\u603b"),  # 北京　协和（总）
        ("\uff13\uff10\uff11", "301"),  # full-width digits
        ("?!", ""),
    ],
)
def test_normalize_query(raw: str, normalized: str) -> None:
    assert hospitals.normalize_query(raw) == normalized


def test_canonical_city_drops_a_trailing_shi() -> None:
    assert hospitals.canonical_city(BEIJING_CITY) == BEIJING
    assert hospitals.canonical_city(f" {BEIJING} ") == BEIJING
    assert hospitals.canonical_city("\u5e02") == "\u5e02"  # a lone 市 stays


def test_hospital_ids_are_deterministic() -> None:
    first = hospitals.hospital_id_for(PUMCH, BEIJING)

    assert first == hospitals.hospital_id_for(PUMCH, BEIJING)
    assert first == hospitals.hospital_id_for(f" {PUMCH[:2]} {PUMCH[2:]} ", f"{BEIJING}\u5e02")
    assert first != hospitals.hospital_id_for(CHAOYANG, BEIJING)
    assert first.startswith("h-")
    assert len(first) == 14


# --- the data file and the document --------------------------------------------------------------


def test_the_data_file_is_a_real_directory() -> None:
    entries = json.loads(hospitals.DATA_FILE.read_text(encoding="utf-8"))

    assert len(entries) >= 60
    assert len({entry["city"] for entry in entries}) >= 8
    assert len({hospitals.hospital_id_for(entry["name"], entry["city"]) for entry in entries}) == len(entries)
    for entry in entries:
        assert set(entry) == {"name", "aliases", "city", "province", "grade"}, entry
        assert entry["grade"] in GRADES
        assert entry["city"] == hospitals.canonical_city(entry["city"])
    pumch = next(entry for entry in entries if entry["name"] == PUMCH)
    assert XIEHE_HOSPITAL in pumch["aliases"]


def test_the_document_lists_the_grades_of_the_domain() -> None:
    schema = openapi.document()["components"]["schemas"]["HospitalGrade"]

    assert schema["enum"] == [*GRADES, None]


# --- the domain ------------------------------------------------------------------------------------


def test_add_hospital_writes_the_hospital_its_terms_and_a_browse_entry(aws: None) -> None:
    view = hospitals.add_hospital(
        PUMCH, [XIEHE_HOSPITAL, f" {XIEHE_HOSPITAL} ", PUMCH], BEIJING_CITY, BEIJING, None, "u-1", NOW
    )

    hospital_id = hospitals.hospital_id_for(PUMCH, BEIJING)
    assert view == {
        "hospital_id": hospital_id,
        "name": PUMCH,
        "aliases": [XIEHE_HOSPITAL],
        "city": BEIJING,
        "province": BEIJING,
        "grade": None,
    }
    stored = Hospital.get(f"HOSPITAL#{hospital_id}", "DIRECTORY")
    assert (stored.catalogue_key, stored.catalogue_sort) == (
        f"HOSPITALS#{BEIJING}",
        f"beijingxieheyiyuan#{hospital_id}",
    )
    assert (stored.created_by, stored.created_at) == ("u-1", "2026-11-25T08:00:00+00:00")
    terms = {
        term.sk: term for term in HospitalTerm.query(f"HOSPITAL#{hospital_id}", HospitalTerm.sk.startswith("TERM#"))
    }
    assert set(terms) == {f"TERM#{term}" for term in hospitals.search_terms(PUMCH, [XIEHE_HOSPITAL])} | {"TERM#*"}
    # xhyy starts the alias 协和医院: a leading term, read before the inner ones
    assert (terms["TERM#xhyy"].catalogue_key, terms["TERM#xhyy"].catalogue_sort) == ("HLEAD#x", f"xhyy#{hospital_id}")
    # heyiyuan only occurs inside the names: an inner term
    assert terms["TERM#heyiyuan"].catalogue_key == "HTERM#h"
    assert (terms["TERM#*"].catalogue_key, terms["TERM#*"].catalogue_sort) == ("HOSPITALS", stored.catalogue_sort)
    assert terms["TERM#xhyy"].city == BEIJING


def test_adding_the_same_name_again_is_a_conflict(aws: None) -> None:
    hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, TOP_GRADE, "u-1", NOW)

    with pytest.raises(ApiError) as raised:
        hospitals.add_hospital(f"{PUMCH} ", [XIEHE_HOSPITAL], BEIJING_CITY, BEIJING, None, "u-2", NOW)

    assert (raised.value.status, raised.value.code) == (409, "hospital_exists")
    assert hospitals.require_hospital(hospitals.hospital_id_for(PUMCH, BEIJING)).created_by == "u-1"


def test_the_same_name_in_another_city_is_another_hospital(aws: None) -> None:
    # GIVEN a hospital name that many cities share (here: the same name in Beijing and Shanghai)
    in_beijing = hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, TOP_GRADE, "u-1", NOW)

    # WHEN it is added for another city
    in_shanghai = hospitals.add_hospital(PUMCH, [], SHANGHAI, SHANGHAI, None, "u-1", NOW)

    # THEN both exist, each findable in its own city
    assert in_beijing["hospital_id"] != in_shanghai["hospital_id"]
    assert [item["city"] for item in hospitals.search(PUMCH, SHANGHAI, 10, None)["items"]] == [SHANGHAI]


def test_a_name_too_long_once_normalised_is_refused(aws: None) -> None:
    # NFKC turns U+FDFA into 18 characters: 10 of them become 180
    with pytest.raises(ApiError) as raised:
        hospitals.add_hospital("\ufdfa" * 10, [], BEIJING, BEIJING, None, "u-1", NOW)

    assert (raised.value.status, raised.value.code, raised.value.details["field"]) == (422, "validation_failed", "name")


def test_a_query_too_long_once_normalised_finds_nothing(aws: None) -> None:
    assert hospitals.search("\ufdfa" * 35, None, 10, None) == {"items": [], "next_cursor": None}


def test_a_hospital_with_more_terms_than_a_transaction_holds(aws: None) -> None:
    # GIVEN a name with ten long aliases: several hundred terms
    aliases = [f"{XIEHE}{index}{YI * 50}" for index in range(10)]
    assert len(hospitals.search_terms(PUMCH, aliases)) > hospitals.TRANSACTION_LIMIT

    # WHEN it is added
    hospitals.add_hospital(PUMCH, aliases, BEIJING, BEIJING, None, "u-1", NOW)

    # THEN every term is written and the hospital is found by its last alias
    assert hospitals.search("xh9", None, 20, None)["items"][0]["name"] == PUMCH
    with pytest.raises(ApiError) as raised:
        hospitals.add_hospital(PUMCH, aliases, BEIJING, BEIJING, None, "u-1", NOW)
    assert raised.value.code == "hospital_exists"


def test_require_hospital_is_404_for_an_unknown_id(aws: None) -> None:
    assert hospitals.get_hospital("h-000000000000") is None
    with pytest.raises(ApiError) as raised:
        hospitals.require_hospital("h-000000000000")
    assert (raised.value.status, raised.value.code) == (404, "hospital_not_found")


def test_seed_directory_adds_only_what_is_missing(aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a data file of three hospitals, one of them already added by an admin
    data = [
        {"name": name, "aliases": aliases, "city": city, "province": province, "grade": TOP_GRADE}
        for name, aliases, city, province in SAMPLE[:3]
    ]
    data_file = tmp_path / "hospitals.json"
    data_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(hospitals, "DATA_FILE", data_file)
    hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, None, "u-admin", NOW)

    # WHEN it is seeded twice
    first, second = hospitals.seed_directory(NOW), hospitals.seed_directory(NOW)

    # THEN the two others are added once, and the admin's hospital is left alone
    assert (first, second) == (2, 0)
    assert hospitals.require_hospital(hospitals.hospital_id_for(PUMCH, BEIJING)).created_by == "u-admin"
    assert hospitals.require_hospital(hospitals.hospital_id_for(HUASHAN, SHANGHAI)).created_by == hospitals.SEED_CREATOR


# --- GET /v1/hospitals -----------------------------------------------------------------------------


@pytest.mark.parametrize("q", [XIEHE, "xiehe", "xh", "XH", " xie he ", XIEHE_HOSPITAL])
def test_search_finds_both_union_hospitals(client: Client, sample: dict[str, str], q: str) -> None:
    response = client.http.get(f"/v1/hospitals?q={q}")

    assert sorted(names(response)) == sorted([PUMCH, WUHAN_UNION])
    assert response.json_body["next_cursor"] is None


def test_search_items_carry_the_display_fields(client: Client, sample: dict[str, str]) -> None:
    body = client.http.get("/v1/hospitals?q=bjxh").json_body

    assert body == {
        "items": [
            {
                "hospital_id": sample[PUMCH],
                "name": PUMCH,
                "city": BEIJING,
                "province": BEIJING,
                "grade": TOP_GRADE,
            }
        ],
        "next_cursor": None,
    }


def test_search_by_pinyin_of_an_inner_word(client: Client, sample: dict[str, str]) -> None:
    assert names(client.http.get("/v1/hospitals?q=chaoyang")) == [CHAOYANG]
    assert names(client.http.get("/v1/hospitals?q=huashan")) == [HUASHAN]
    assert names(client.http.get("/v1/hospitals?q=nothing")) == []


def test_search_narrowed_by_city(client: Client, sample: dict[str, str]) -> None:
    assert names(client.http.get(f"/v1/hospitals?q=xh&city={WUHAN}")) == [WUHAN_UNION]
    assert names(client.http.get(f"/v1/hospitals?q=xh&city={BEIJING_CITY}")) == [PUMCH]
    assert names(client.http.get(f"/v1/hospitals?q=xh&city={SHANGHAI}")) == []


def test_a_hospital_is_shown_once_per_page_when_several_of_its_terms_match(
    client: Client, sample: dict[str, str]
) -> None:
    # GIVEN "x" starts several terms of every sample hospital (xhyy, xieheyiyuan, xuefushu...)
    response = client.http.get("/v1/hospitals?q=x")

    # THEN each appears once
    assert sorted(names(response)) == sorted(name for name, *_ in SAMPLE)


def test_a_page_reads_on_to_replace_repeated_hospitals(aws: None) -> None:
    # GIVEN two hospitals whose terms under "x" sort as
    #   xfshsyy (Huashan), xhyy (PUMCH), xieheyiyuan (PUMCH), xuefushuhuashanyiyuan (Huashan)
    hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, None, "u-1", NOW)
    hospitals.add_hospital(HUASHAN, [], SHANGHAI, SHANGHAI, None, "u-1", NOW)
    first = hospitals.search("x", None, 1, None)

    # WHEN the next page of two is read
    second = hospitals.search("x", None, 2, first["next_cursor"])

    # THEN PUMCH's second term is skipped and the page is filled from further on;
    # Huashan shows again, as the document warns
    assert [item["name"] for item in first["items"]] == [HUASHAN]
    assert [item["name"] for item in second["items"]] == [PUMCH, HUASHAN]


def test_a_city_lists_its_hospitals_by_pinyin(client: Client, sample: dict[str, str]) -> None:
    # 北京 and 北京市 are the same list
    for city in (BEIJING, BEIJING_CITY):
        assert names(client.http.get(f"/v1/hospitals?city={city}")) == [PUMCH, CHAOYANG]  # bei... before shou...
    assert names(client.http.get(f"/v1/hospitals?city={SHANGHAI}")) == [HUASHAN]


def test_without_q_or_city_the_whole_directory_by_pinyin(client: Client, sample: dict[str, str]) -> None:
    assert names(client.http.get("/v1/hospitals")) == [PUMCH, HUASHAN, WUHAN_UNION, CHAOYANG]


@pytest.mark.parametrize("query", ["", "q=yiyuan&", f"city={BEIJING}&"])
def test_pages_follow_each_other_with_cursors(client: Client, sample: dict[str, str], query: str) -> None:
    # GIVEN the full list
    everything = names(client.http.get(f"/v1/hospitals?{query}limit=100"))

    # WHEN it is read one hospital at a time
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        suffix = f"&cursor={cursor}" if cursor else ""
        response = client.http.get(f"/v1/hospitals?{query}limit=1{suffix}")
        seen += names(response)
        cursor = response.json_body["next_cursor"]
        if cursor is None:
            break

    # THEN the pages hold the same hospitals, in order, each once
    assert seen == everything
    assert len(everything) >= 2


def test_a_cursor_is_refused_by_another_list(client: Client, sample: dict[str, str]) -> None:
    cursor = client.http.get("/v1/hospitals?q=xh&limit=1").json_body["next_cursor"]
    assert cursor

    for query in ("q=xiehe", f"q=xh&city={BEIJING}", ""):
        response = client.http.get(f"/v1/hospitals?{query}&limit=1&cursor={cursor}")
        assert response.status_code == 400
        assert response.json_body["error"]["code"] == "invalid_cursor"


def test_a_forged_cursor_is_400(client: Client, sample: dict[str, str]) -> None:
    response = client.http.get("/v1/hospitals?cursor=not-a-cursor")

    assert response.status_code == 400
    assert response.json_body["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        (f"q={'x' * 51}", "q"),
        ("sort=name", "sort"),
    ],
)
def test_bad_parameters_are_422(client: Client, query: str, field: str) -> None:
    response = client.http.get(f"/v1/hospitals?{query}")

    assert response.status_code == 422
    assert response.json_body["error"]["code"] == "validation_failed"
    assert response.json_body["error"]["details"]["field"] == field


# --- POST /v1/admin/hospitals -----------------------------------------------------------------------


def new_hospital(**overrides: Any) -> str:
    body = {"name": PUMCH, "aliases": [XIEHE_HOSPITAL], "city": BEIJING_CITY, "province": BEIJING, "grade": TOP_GRADE}
    return json.dumps({**body, **overrides})


def test_an_admin_adds_a_hospital(client: Client) -> None:
    response = client.http.post("/v1/admin/hospitals", headers=token_for(ADMIN), body=new_hospital())

    assert response.status_code == 201
    assert response.json_body == {
        "hospital_id": hospitals.hospital_id_for(PUMCH, BEIJING),
        "name": PUMCH,
        "aliases": [XIEHE_HOSPITAL],
        "city": BEIJING,
        "province": BEIJING,
        "grade": TOP_GRADE,
    }
    assert names(client.http.get("/v1/hospitals?q=xh")) == [PUMCH]
    assert hospitals.require_hospital(hospitals.hospital_id_for(PUMCH, BEIJING)).created_by == "u-admin"


def test_adding_an_existing_hospital_is_409(client: Client) -> None:
    assert client.http.post("/v1/admin/hospitals", headers=token_for(ADMIN), body=new_hospital()).status_code == 201

    response = client.http.post("/v1/admin/hospitals", headers=token_for(ADMIN), body=new_hospital(aliases=[]))

    assert response.status_code == 409
    assert response.json_body["error"]["code"] == "hospital_exists"
    assert response.json_body["error"]["details"]["hospital_id"] == hospitals.hospital_id_for(PUMCH, BEIJING)


def test_only_admins_add_hospitals(client: Client) -> None:
    as_doctor = client.http.post("/v1/admin/hospitals", headers=token_for(DOCTOR), body=new_hospital())
    anonymous = client.http.post(
        "/v1/admin/hospitals", headers={"Content-Type": "application/json"}, body=new_hospital()
    )

    assert (as_doctor.status_code, as_doctor.json_body["error"]["code"]) == (403, "forbidden")
    assert (anonymous.status_code, anonymous.json_body["error"]["code"]) == (401, "unauthorized")
    assert hospitals.get_hospital(hospitals.hospital_id_for(PUMCH, BEIJING)) is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"grade": "A"}, "grade"),
        ({"name": "x" * 61}, "name"),
        ({"name": "!?"}, "name"),
        ({"aliases": ["a"] * 11}, "aliases"),
        ({"aliases": ["a" * 61]}, "aliases[0]"),
        ({"province": "p" * 21}, "province"),
        ({"city": ""}, "city"),
        ({"verified": True}, "verified"),
    ],
)
def test_bad_hospitals_are_422(client: Client, overrides: dict[str, Any], field: str) -> None:
    response = client.http.post("/v1/admin/hospitals", headers=token_for(ADMIN), body=new_hospital(**overrides))

    assert response.status_code == 422
    assert response.json_body["error"]["code"] == "validation_failed"
    assert response.json_body["error"]["details"]["field"] == field


def test_a_hospital_without_grade_or_aliases(client: Client) -> None:
    body = json.dumps({"name": HUASHAN, "city": SHANGHAI, "province": SHANGHAI})

    response = client.http.post("/v1/admin/hospitals", headers=token_for(ADMIN), body=body)

    assert response.status_code == 201
    assert (response.json_body["aliases"], response.json_body["grade"]) == ([], None)
