"""The hospital directory on the real engine: the whole data file seeded, every hospital findable."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from chalicelib.directory import hospitals
from chalicelib.errors import ApiError
from chalicelib.models.users import Hospital

PUMCH = "\u5317\u4eac\u534f\u548c\u533b\u9662"  # 北京协和医院
BEIJING = "\u5317\u4eac"  # 北京


@pytest.fixture(scope="module")
def seeded(tables: list[str]) -> list[dict[str, object]]:
    """The data file, seeded; other modules of the run may have seeded it already (same tables)."""
    entries = json.loads(hospitals.DATA_FILE.read_text(encoding="utf-8"))
    added = hospitals.seed_directory(datetime.now(UTC))
    assert 0 <= added <= len(entries)
    present = Hospital.batch_get(
        [(f"HOSPITAL#{hospitals.hospital_id_for(entry['name'], entry['city'])}", "DIRECTORY") for entry in entries]
    )
    assert len(list(present)) == len(entries)
    return entries


def found(q: str | None = None, city: str | None = None, limit: int = 100) -> list[str]:
    """Names of every hospital a search finds, following the cursors."""
    names: list[str] = []
    cursor = None
    while True:
        page = hospitals.search(q, city, limit, cursor)
        names += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return names


@pytest.mark.parametrize("q", ["xh", "xiehe", "\u534f\u548c", "bjxh", "beijingxie"])  # 协和
def test_the_union_hospital_is_found_by_initials_pinyin_and_name(seeded: list[dict[str, object]], q: str) -> None:
    assert PUMCH in found(q)


@pytest.mark.parametrize("q", ["xiehe", "\u534f\u548c"])  # 协和
def test_a_name_or_alias_that_starts_with_the_query_comes_first(seeded: list[dict[str, object]], q: str) -> None:
    # GIVEN 北京协和医院 (alias 协和医院) among hospitals whose names contain the query further in
    # WHEN the patient types the start of 协和
    first_page = hospitals.search(q, None, 5, None)["items"]

    # THEN it leads the list
    assert first_page[0]["name"] == PUMCH


def test_initials_list_the_hospitals_they_start_before_those_they_only_occur_in(
    seeded: list[dict[str, object]],
) -> None:
    # GIVEN the initials "xh": they start 协和医院 and 新华医院, and occur inside e.g. "...大学华西..."
    leading = {
        str(entry["name"])
        for entry in seeded
        if any(term.startswith("xh") for term in hospitals.lead_terms(str(entry["name"]), entry["aliases"]))
    }
    assert PUMCH in leading
    listed = found("xh", limit=3)

    # THEN the hospitals they start come first, then the others
    assert set(listed[: len(leading)]) == leading
    assert len(listed) > len(leading)


def test_searches_page_through_both_phases_without_losing_a_hospital(seeded: list[dict[str, object]]) -> None:
    assert set(found("xh", limit=2)) == set(found("xh", limit=100))
    assert len(found("xh", limit=100)) > 1


def test_every_hospital_is_found_by_its_full_pinyin(seeded: list[dict[str, object]]) -> None:
    missing = [
        entry["name"] for entry in seeded if entry["name"] not in found(hospitals.full_pinyin(str(entry["name"])))
    ]

    assert not missing


def test_every_hospital_is_found_by_its_name_and_in_its_city(seeded: list[dict[str, object]]) -> None:
    by_city: dict[str, set[str]] = {}
    for entry in seeded:
        by_city.setdefault(str(entry["city"]), set()).add(str(entry["name"]))
        assert entry["name"] in found(str(entry["name"])), entry["name"]

    for city, names in by_city.items():
        listed = found(city=city, limit=3)
        assert sorted(listed) == sorted(names), city
        assert listed == sorted(listed, key=hospitals.full_pinyin)


def test_the_whole_directory_pages_in_pinyin_order(seeded: list[dict[str, object]]) -> None:
    listed = found(limit=7)

    assert len(listed) == len(seeded)
    assert listed == sorted(listed, key=hospitals.full_pinyin)


def test_a_city_narrows_a_search(seeded: list[dict[str, object]]) -> None:
    in_beijing = found("xh", f"{BEIJING}\u5e02")  # 北京市

    assert PUMCH in in_beijing
    assert all(entry["city"] == BEIJING for entry in seeded if entry["name"] in in_beijing)


def test_seeding_again_adds_nothing(seeded: list[dict[str, object]]) -> None:
    assert hospitals.seed_directory(datetime.now(UTC)) == 0


def test_adding_a_seeded_hospital_again_is_a_conflict(seeded: list[dict[str, object]]) -> None:
    # the hospital is the first put of the transaction, so its cancellation reason comes first
    with pytest.raises(ApiError) as raised:
        hospitals.add_hospital(PUMCH, [], BEIJING, BEIJING, None, "u-admin", datetime.now(UTC))

    assert (raised.value.status, raised.value.code) == (409, "hospital_exists")
