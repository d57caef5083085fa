"""The models are the single source of truth of every table: names, keys, indexes, stream and TTL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.config import get_settings
from chalicelib.models import TABLE_MODELS, IdempotencyRecord, InvitationsTable, LedgerTable, UsersTable
from chalicelib.models.tables import ensure_tables, ttl_attribute_name

if TYPE_CHECKING:
    from pynamodb.models import Model

CHALICELIB = Path(__file__).resolve().parents[2] / "chalicelib"


def key_schema(schema: dict[str, Any]) -> tuple[str, str | None]:
    """(hash key, range key) of a table or index schema."""
    keys = {key["KeyType"]: key["AttributeName"] for key in schema["key_schema"]}
    return keys["HASH"], keys.get("RANGE")


def indexes_of(model: type[Model]) -> dict[str, tuple[str, str | None]]:
    """Every global secondary index of the model: name → (hash key, range key)."""
    schema = model._get_schema()
    assert schema["local_secondary_indexes"] == []
    return {index["index_name"]: key_schema(index) for index in schema["global_secondary_indexes"]}


def test_the_models_are_the_four_tables() -> None:
    assert set(TABLE_MODELS) == {UsersTable, InvitationsTable, LedgerTable, IdempotencyRecord}


def test_every_table_name_carries_the_prefix() -> None:
    prefix = get_settings().table_prefix
    assert prefix == "anes-unit"  # set by conftest before the models were imported

    names = [model.Meta.table_name for model in TABLE_MODELS]

    assert all(name.startswith(f"{prefix}-") for name in names), names
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("model", [UsersTable, InvitationsTable, LedgerTable])
def test_single_table_models_use_pk_and_sk(model: type[Model]) -> None:
    assert key_schema(model._get_schema()) == ("pk", "sk")
    assert model.Meta.billing_mode == "PAY_PER_REQUEST"


def test_users_indexes() -> None:
    assert indexes_of(UsersTable) == {
        "by_hospital": ("hospital_key", "rank_key"),
        "review_queue": ("review_queue", "submitted_at"),
        "catalogue": ("catalogue_key", "catalogue_sort"),
    }


def test_invitations_indexes() -> None:
    assert indexes_of(InvitationsTable) == {
        "by_requester": ("requester_key", "created_at"),
        "by_doctor": ("doctor_key", "created_at"),
        "due": ("due_queue", "due_at"),
    }


def test_ledger_indexes() -> None:
    assert indexes_of(LedgerTable) == {
        "work_due": ("work_queue", "due_at"),
        "by_owner": ("owner_key", "created_at"),
    }


@pytest.mark.parametrize("model", [UsersTable, InvitationsTable, LedgerTable])
def test_indexes_project_everything(model: type[Model]) -> None:
    projections = {index["projection"]["ProjectionType"] for index in model._get_schema()["global_secondary_indexes"]}

    assert projections == {"ALL"}


def test_index_keys_are_optional_so_the_indexes_are_sparse() -> None:
    for model in (UsersTable, InvitationsTable, LedgerTable):
        attributes = model.get_attributes()
        for hash_key, range_key in indexes_of(model).values():
            assert attributes[hash_key].null, f"{model.__name__}.{hash_key}"
            assert range_key is not None
            assert attributes[range_key].null, f"{model.__name__}.{range_key}"


def test_only_invitations_stream_new_and_old_images() -> None:
    assert InvitationsTable.Meta.stream_view_type == "NEW_AND_OLD_IMAGES"
    for model in (UsersTable, LedgerTable, IdempotencyRecord):
        assert getattr(model.Meta, "stream_view_type", None) is None, model.__name__


def test_idempotency_record_matches_the_powertools_defaults() -> None:
    # DynamoDBPersistenceLayer's defaults: key attribute "id", expiry attribute "expiration"
    assert key_schema(IdempotencyRecord._get_schema()) == ("id", None)
    assert ttl_attribute_name(IdempotencyRecord) == "expiration"
    assert {"status", "data", "validation", "in_progress_expiration"} <= set(IdempotencyRecord.get_attributes())


def test_ttl_attributes() -> None:
    assert {model.__name__: ttl_attribute_name(model) for model in TABLE_MODELS} == {
        "UsersTable": "expires_at",
        "InvitationsTable": None,
        "LedgerTable": None,
        "IdempotencyRecord": "expiration",
    }


# --- the tables as created ----------------------------------------------------------------------


def describe(model: type[Model]) -> dict[str, Any]:
    client = model._get_connection().connection.client
    return client.describe_table(TableName=model.Meta.table_name)["Table"]


def time_to_live(model: type[Model]) -> dict[str, Any]:
    client = model._get_connection().connection.client
    return client.describe_time_to_live(TableName=model.Meta.table_name)["TimeToLiveDescription"]


def test_ensure_tables_is_idempotent(aws: None) -> None:
    # GIVEN the tables the fixture created
    # WHEN they are ensured again
    report = ensure_tables(TABLE_MODELS)

    # THEN every one is reported as existing
    assert report == [f"{model.Meta.table_name}: exists" for model in TABLE_MODELS]


def test_ensure_tables_creates_only_what_is_missing(aws: None) -> None:
    LedgerTable.delete_table()

    report = ensure_tables(TABLE_MODELS)

    assert report == [
        f"{model.Meta.table_name}: {'created' if model is LedgerTable else 'exists'}" for model in TABLE_MODELS
    ]
    assert LedgerTable.exists()


def test_the_created_invitations_table_streams_both_images(aws: None) -> None:
    table = describe(InvitationsTable)

    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["LatestStreamArn"].startswith("arn:aws-cn:dynamodb:cn-north-1:")
    assert {index["IndexName"] for index in table["GlobalSecondaryIndexes"]} == {"by_requester", "by_doctor", "due"}


@pytest.mark.parametrize(("model", "attribute"), [(UsersTable, "expires_at"), (IdempotencyRecord, "expiration")])
def test_ensure_tables_switches_ttl_on(aws: None, model: type[Model], attribute: str) -> None:
    ttl = time_to_live(model)

    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == attribute


def test_ensure_tables_switches_ttl_on_for_an_existing_table(aws: None) -> None:
    # GIVEN an existing table whose TTL was switched off
    client = UsersTable._get_connection().connection.client
    client.update_time_to_live(
        TableName=UsersTable.Meta.table_name,
        TimeToLiveSpecification={"Enabled": False, "AttributeName": "expires_at"},
    )
    assert time_to_live(UsersTable)["TimeToLiveStatus"] == "DISABLED"

    # WHEN the tables are ensured
    report = ensure_tables(TABLE_MODELS)

    # THEN the table is kept and its TTL is on again
    assert f"{UsersTable.Meta.table_name}: exists" in report
    assert time_to_live(UsersTable) == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_tables_without_a_ttl_attribute_get_none(aws: None) -> None:
    assert time_to_live(InvitationsTable)["TimeToLiveStatus"] == "DISABLED"
    assert time_to_live(LedgerTable)["TimeToLiveStatus"] == "DISABLED"


# --- the "no Scan" rule ---------------------------------------------------------------------------

# a scan() call, or the operation named as a string; prose such as "without a Scan" is fine
SCAN_PATTERNS = (re.compile(r"\bscan\("), re.compile(r"[\"']Scan[\"']"))


def scan_uses(text: str) -> list[str]:
    return [match.group() for pattern in SCAN_PATTERNS for match in pattern.finditer(text)]


def test_the_scan_guard_recognises_a_scan() -> None:
    assert scan_uses("for item in UsersTable.scan(limit=10):") == ["scan("]
    assert scan_uses('client.scan(TableName="t")') == ["scan("]
    assert scan_uses('connection.dispatch("Scan", body)') == ['"Scan"']
    assert scan_uses("searchable without a Scan") == []
    assert scan_uses("rescan(streams) and ScanIndexForward=False and scan_index_forward") == []


def test_no_code_scans_a_table() -> None:
    files = [path for path in sorted(CHALICELIB.rglob("*")) if path.is_file() and "__pycache__" not in path.parts]
    assert any(path.name == "system.py" for path in files)

    offending = {
        str(path.relative_to(CHALICELIB.parent)): uses
        for path in files
        if (uses := scan_uses(path.read_text(encoding="utf-8", errors="replace")))
    }

    assert not offending, f"a Scan reads the whole table; query an index instead: {offending}"
