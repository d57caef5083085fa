"""The hospital directory: add institutions, find them by name, alias, pinyin, initials or city.

Search never scans. Each hospital writes, beside its ``Hospital`` item, one ``HospitalTerm``
per search term (every suffix of its name and aliases, in characters, full pinyin and
initials) into the sparse ``catalogue`` index, so a query is a prefix ``Query``. Terms that
start a name or an alias (``xhyy`` of 协和医院) go under ``HLEAD#<first character>``, the
inner suffixes (``xhxdeyy`` of 大学华西...) under ``HTERM#<first character>``, and a search
reads the leading terms first: "xh" lists 北京协和医院 before hospitals that merely contain
x-h somewhere. A city listing reads ``HOSPITALS#<city>`` (the ``Hospital``
items); the whole directory reads ``HOSPITALS`` (one browse term per hospital, ``TERM#*``).
Both listings are ordered by full pinyin.

Example
-------
>>> sorted(search_terms("协和医院", []))[:4]
['heyiyuan', 'hyy', 'xhyy', 'xieheyiyuan']
>>> search("xh", None, 20, None)["items"][0]["name"]  # doctest: +SKIP
'北京协和医院'
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist, PutError, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.clock import iso
from chalicelib.directory.vocabulary import GRADES
from chalicelib.errors import ApiError
from chalicelib.models.transactions import CONDITION_FAILED, CONFLICT, busy, cancellation_codes
from chalicelib.models.users import Hospital, HospitalTerm, UsersTable
from chalicelib.pagination import decode_cursor, encode_cursor, read_page
from chalicelib.validation import invalid

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

DATA_FILE = Path(__file__).resolve().with_name("hospitals.json")
SEED_CREATOR = "seed"
BROWSE_TERM = "*"
"""The sort-key term of the browse entry; no real term has it (terms keep letters and digits only)."""
TRANSACTION_LIMIT = 100
MAX_NAME_CHARACTERS = 60
"""Normalisation can lengthen text (NFKC turns one character into up to 18), and DynamoDB
keys hold 1,024 bytes: names, aliases and queries are capped after normalising."""
MAX_QUERY_BYTES = 300
"""Items one DynamoDB transaction may write."""
FILL_ROUNDS = 3
"""How many times a search page may read on to replace hospitals it already holds."""

_HANZI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKENS = re.compile(f"[{_HANZI}]|[^{_HANZI}]+")

PINYIN_OVERRIDES: dict[str, tuple[str, ...]] = {
    "朝阳": ("chao", "yang"),
    "长海": ("chang", "hai"),
    "唐都": ("tang", "du"),
    "重医": ("chong", "yi"),
}
"""Readings of hospital names that ``pypinyin`` gets wrong (it reads 朝阳 as zhaoyang, 重医 as zhongyi)."""
_OVERRIDDEN = re.compile("|".join(map(re.escape, PINYIN_OVERRIDES)))


def normalize_query(text: str) -> str:
    """``text`` as terms are stored: NFKC (full-width → half-width), lowercase, letters and digits only.

    >>> normalize_query(" Ｘｉｅ-He  ")
    'xiehe'
    """
    folded = unicodedata.normalize("NFKC", text).strip().lower()
    return "".join(char for char in folded if unicodedata.category(char)[0] in "LN")


def canonical_city(city: str) -> str:
    """One spelling per city, so ``北京`` and ``北京市`` are the same list.

    >>> canonical_city(" 北京市 ")
    '北京'
    """
    name = unicodedata.normalize("NFKC", city).strip()
    return name[:-1] if len(name) > 1 and name.endswith("市") else name


def hospital_id_for(name: str, city: str) -> str:
    """A deterministic id from the name and the city, so seeding twice meets the same item.

    Many cities have a 第一人民医院: the same name in another city is another hospital.

    >>> hospital_id_for("北京 协和医院", "北京市") == hospital_id_for("北京协和医院", "北京")
    True
    """
    key = f"{normalize_query(name)}|{canonical_city(city)}"
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _pinyin(text: str, *, initials: bool) -> list[str]:
    """Toneless syllables (or their initials) of normalized ``text``, one per character.

    A run of latin letters or digits stays one item. ``PINYIN_OVERRIDES`` wins over
    ``pypinyin`` (imported here: it costs ~100 ms, too much for every cold start).
    """
    from pypinyin import Style, lazy_pinyin

    style = Style.FIRST_LETTER if initials else Style.NORMAL
    syllables: list[str] = []
    position = 0
    for match in _OVERRIDDEN.finditer(text):
        syllables += lazy_pinyin(text[position : match.start()], style=style)
        fixed = PINYIN_OVERRIDES[match.group()]
        syllables += [syllable[0] for syllable in fixed] if initials else fixed
        position = match.end()
    return syllables + lazy_pinyin(text[position:], style=style)


def _suffixes(parts: list[str]) -> set[str]:
    return {"".join(parts[start:]) for start in range(len(parts))}


def search_terms(name: str, aliases: Iterable[str]) -> set[str]:
    """Every term a prefix search should find the hospital by.

    For the name and each alias: the suffixes starting at each character, at each pinyin
    syllable and at each initial, so ``协和``, ``xiehe`` and ``xh`` all find 北京协和医院.
    A run of latin letters or digits counts as one character. One-letter latin terms are
    left out: they would match nearly everything.
    """
    terms: set[str] = set()
    for text in (name, *aliases):
        normalized = normalize_query(text)
        if not normalized:
            continue
        terms |= _suffixes(_TOKENS.findall(normalized))
        terms |= _suffixes(_pinyin(normalized, initials=False))
        terms |= _suffixes(_pinyin(normalized, initials=True))
    return {term for term in terms if term and not (len(term) == 1 and term.isascii())}


def lead_terms(name: str, aliases: Iterable[str]) -> set[str]:
    """The terms that start the name or an alias (characters, full pinyin, initials).

    >>> sorted(lead_terms("协和医院", []))
    ['xhyy', 'xieheyiyuan', '协和医院']
    """
    terms: set[str] = set()
    for text in (name, *aliases):
        normalized = normalize_query(text)
        if normalized:
            terms |= {
                normalized,
                "".join(_pinyin(normalized, initials=False)),
                "".join(_pinyin(normalized, initials=True)),
            }
    return {term for term in terms if term and not (len(term) == 1 and term.isascii())}


def full_pinyin(text: str) -> str:
    """The toneless pinyin of ``text``, the order of every listing.

    >>> full_pinyin("北京协和医院")
    'beijingxieheyiyuan'
    """
    return "".join(_pinyin(normalize_query(text), initials=False))


def hospital_view(hospital: Hospital) -> dict[str, Any]:
    """A hospital as the API shows it."""
    return {
        "hospital_id": hospital.hospital_id,
        "name": hospital.name,
        "aliases": list(hospital.aliases or []),
        "city": hospital.city,
        "province": hospital.province,
        "grade": hospital.grade,
    }


def _summary(item: Hospital | HospitalTerm) -> dict[str, Any]:
    """A list entry: what both ``Hospital`` and its terms carry."""
    return {
        "hospital_id": item.hospital_id,
        "name": item.name,
        "city": item.city,
        "province": item.province,
        "grade": item.grade,
    }


def get_hospital(hospital_id: str) -> Hospital | None:
    try:
        return Hospital.get(f"HOSPITAL#{hospital_id}", "DIRECTORY")
    except DoesNotExist:
        return None


def require_hospital(hospital_id: str) -> Hospital:
    """The hospital; 404 ``hospital_not_found`` when the directory has no such id."""
    hospital = get_hospital(hospital_id)
    if hospital is None:
        raise ApiError(
            404,
            "hospital_not_found",
            "The directory has no hospital with this id",
            "医院目录中没有该医院",
            {"hospital_id": hospital_id},
        )
    return hospital


def _exists(name: str, hospital_id: str) -> ApiError:
    return ApiError(
        409,
        "hospital_exists",
        "The directory already has a hospital with this name in this city",
        "该城市的医院目录中已有同名医院",
        {"hospital_id": hospital_id, "name": name},
    )


def _term(hospital: Hospital, term: str, catalogue_key: str, catalogue_sort: str) -> HospitalTerm:
    return HospitalTerm(
        hospital.pk,
        f"TERM#{term}",
        hospital_id=hospital.hospital_id,
        name=hospital.name,
        city=hospital.city,
        province=hospital.province,
        grade=hospital.grade,
        catalogue_key=catalogue_key,
        catalogue_sort=catalogue_sort,
    )


def _clean_aliases(name: str, aliases: Iterable[str]) -> list[str]:
    """Aliases trimmed, once each, without the name itself."""
    seen = {normalize_query(name)}
    kept: list[str] = []
    for alias in aliases:
        key = normalize_query(alias)
        if key and key not in seen:
            seen.add(key)
            kept.append(alias.strip())
    return kept


def add_hospital(
    name: str,
    aliases: Iterable[str],
    city: str,
    province: str,
    grade: str | None,
    created_by: str,
    now: datetime,
) -> dict[str, Any]:
    """Add a hospital and its search terms; 409 ``hospital_exists`` when the name is taken.

    The hospital and its terms are one transaction when they fit (up to 100 items). A
    hospital with more terms (long names, many aliases) is written first, conditionally,
    and its terms after it in batches: they are derived data, rewritten identically.
    """
    name, city, province = name.strip(), canonical_city(city), unicodedata.normalize("NFKC", province).strip()
    if not normalize_query(name):
        raise invalid("name must contain letters or digits", "name")
    if not city:
        raise invalid("city must not be empty", "city")
    if not province:
        raise invalid("province must not be empty", "province")
    if grade is not None and grade not in GRADES:
        raise invalid(f"grade must be one of {', '.join(GRADES)}", "grade")
    for field, text in (("name", name), *((f"aliases[{i}]", alias) for i, alias in enumerate(aliases))):
        if len(normalize_query(text)) > MAX_NAME_CHARACTERS:
            raise invalid(f"{field} is too long once normalised (at most {MAX_NAME_CHARACTERS} characters)", field)
    hospital_id = hospital_id_for(name, city)
    kept_aliases = _clean_aliases(name, aliases)
    order = f"{full_pinyin(name)}#{hospital_id}"
    hospital = Hospital(
        f"HOSPITAL#{hospital_id}",
        "DIRECTORY",
        hospital_id=hospital_id,
        name=name,
        aliases=kept_aliases,
        city=city,
        province=province,
        grade=grade,
        created_at=iso(now),
        created_by=created_by,
        catalogue_key=f"HOSPITALS#{city}",
        catalogue_sort=order,
    )
    leading = lead_terms(name, kept_aliases)
    terms = [
        _term(hospital, term, f"{'HLEAD' if term in leading else 'HTERM'}#{term[0]}", f"{term}#{hospital_id}")
        for term in sorted(search_terms(name, kept_aliases) | leading)
    ]
    terms.append(_term(hospital, BROWSE_TERM, "HOSPITALS", order))
    if 1 + len(terms) <= TRANSACTION_LIMIT:
        try:
            with TransactWrite(connection=UsersTable._get_connection().connection) as transaction:
                transaction.save(hospital, condition=Hospital.pk.does_not_exist())
                for term in terms:
                    transaction.save(term)
        except TransactWriteError as error:
            codes = cancellation_codes(error, 1)  # puts in order: the hospital first
            if codes[0] == CONDITION_FAILED:
                raise _exists(name, hospital_id) from None
            if CONFLICT in codes:
                raise busy() from None
            raise
    else:
        try:
            hospital.save(condition=Hospital.pk.does_not_exist())
        except PutError as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                raise _exists(name, hospital_id) from None
            raise
        with HospitalTerm.batch_write() as batch:
            for term in terms:
                batch.save(term)
    return hospital_view(hospital)


def _collect(
    query: Callable[..., Any],
    model: type[Hospital] | type[HospitalTerm],
    limit: int,
    start: dict[str, Any] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Up to ``limit`` distinct hospitals from ``query``, and the key to go on from.

    Several terms of one hospital can match one query (``x`` matches both ``xhyy`` and
    ``xieheyiyuan`` of 北京协和医院); a page shows each hospital once and reads on to fill
    the places of the repeats. A later page may show a hospital again.
    """
    found: dict[str, dict[str, Any]] = {}
    key = start
    for _ in range(FILL_ROUNDS):
        wanted = limit - len(found)
        items, key = read_page(query, model, limit=wanted, start=key)
        for item in items:
            found.setdefault(item.hospital_id, _summary(item))
        if key is None or len(items) < wanted or len(found) >= limit:
            break
    return list(found.values()), key


SEARCH_PHASES = ("HLEAD", "HTERM")
"""Leading terms first, then inner suffixes."""


def _search_terms(term: str, place: str, limit: int, start: dict[str, Any] | None, scope: str) -> dict[str, Any]:
    """A page of hospitals whose terms start with ``term``: the leading terms' matches, then the inner ones.

    The cursor carries the phase and the position in it.
    """
    phase = int((start or {}).get("phase", 0))
    key = (start or {}).get("key")
    if phase not in range(len(SEARCH_PHASES)):
        raise ApiError(400, "invalid_cursor", "The cursor is not valid for this list", "分页游标无效")
    found: dict[str, dict[str, Any]] = {}
    while len(found) < limit:
        query = functools.partial(
            HospitalTerm.by_catalogue.query,
            f"{SEARCH_PHASES[phase]}#{term[0]}",
            HospitalTerm.catalogue_sort.startswith(term),
            filter_condition=(HospitalTerm.city == place) if place else None,
        )
        items, key = _collect(query, HospitalTerm, limit - len(found), key)
        for item in items:
            found.setdefault(item["hospital_id"], item)
        if key is not None:
            break
        if phase + 1 == len(SEARCH_PHASES):
            return {"items": list(found.values()), "next_cursor": None}
        phase += 1
    return {"items": list(found.values()), "next_cursor": encode_cursor({"phase": phase, "key": key}, scope)}


def search(q: str | None, city: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    """One page of hospitals matching ``q`` (name, alias, pinyin or initials prefix) in ``city``.

    Without ``q`` it lists the city's hospitals, or the whole directory, by pinyin.
    Returns ``{"items": [...], "next_cursor": ...}``; a cursor works only for the same
    ``q`` and ``city`` (400 ``invalid_cursor`` otherwise).
    """
    term = normalize_query(q or "")
    place = canonical_city(city or "")
    scope = f"hospitals:{term}:{place}"
    start = decode_cursor(cursor, scope)
    if len(term.encode()) > MAX_QUERY_BYTES:
        return {"items": [], "next_cursor": None}  # longer than any stored term: nothing can match
    if term:
        return _search_terms(term, place, limit, start, scope)
    if place:
        query = functools.partial(Hospital.by_catalogue.query, f"HOSPITALS#{place}")
        items, last_key = _collect(query, Hospital, limit, start)
    else:
        query = functools.partial(HospitalTerm.by_catalogue.query, "HOSPITALS")
        items, last_key = _collect(query, HospitalTerm, limit, start)
    return {"items": items, "next_cursor": encode_cursor(last_key, scope)}


def seed_directory(now: datetime) -> int:
    """Add every hospital of ``hospitals.json`` that the directory lacks; how many were added.

    Safe to run again: present hospitals are skipped (one batch read finds them).
    """
    entries = {
        hospital_id_for(entry["name"], entry["city"]): entry
        for entry in json.loads(DATA_FILE.read_text(encoding="utf-8"))
    }
    present = {
        hospital.hospital_id for hospital in Hospital.batch_get([(f"HOSPITAL#{key}", "DIRECTORY") for key in entries])
    }
    added = 0
    for hospital_id, entry in entries.items():
        if hospital_id in present:
            continue
        try:
            add_hospital(
                entry["name"],
                entry.get("aliases", []),
                entry["city"],
                entry["province"],
                entry.get("grade"),
                SEED_CREATOR,
                now,
            )
        except ApiError as error:
            if error.code != "hospital_exists":
                raise
        else:
            added += 1
    return added
