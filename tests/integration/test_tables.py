"""The tables, as the models create them on the real engine."""

from __future__ import annotations

from chalicelib.config import get_settings
from chalicelib.models import TABLE_MODELS
from chalicelib.models.tables import ensure_tables


def test_every_table_is_created_once(tables: list[str]) -> None:
    # GIVEN the session created the tables
    assert all(line.endswith(": created") for line in tables), tables
    # WHEN they are ensured again THEN nothing is created twice
    assert all(line.endswith(": exists") for line in ensure_tables(TABLE_MODELS))


def test_invitations_table_streams_new_and_old_images(tables: list[str], ddb) -> None:
    table = ddb.describe_table(TableName=get_settings().invitations_table)["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["LatestStreamArn"]


def test_indexes_match_the_models(tables: list[str], ddb) -> None:
    expected = {
        get_settings().users_table: {"by_hospital", "review_queue", "catalogue"},
        get_settings().invitations_table: {"by_requester", "by_doctor", "due"},
        get_settings().ledger_table: {"work_due", "by_owner"},
        get_settings().idempotency_table: set(),
    }
    for name, indexes in expected.items():
        table = ddb.describe_table(TableName=name)["Table"]
        assert {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])} == indexes, name
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_ttl_is_on_where_a_model_declares_it(tables: list[str], ddb) -> None:
    for name, attribute in (
        (get_settings().idempotency_table, "expiration"),
        (get_settings().users_table, "expires_at"),
    ):
        ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] in ("ENABLED", "ENABLING"), name
        assert ttl["AttributeName"] == attribute


def test_a_kept_table_that_no_longer_matches_its_model_is_refused(tables: list[str], ddb) -> None:
    import uuid

    import pytest
    from pynamodb.attributes import UnicodeAttribute
    from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
    from pynamodb.models import Model

    from chalicelib.models.tables import TableDriftError

    name = f"drift-{uuid.uuid4().hex[:8]}"

    class ByOwner(GlobalSecondaryIndex):
        class Meta:
            index_name = "by_owner"
            projection = AllProjection()

        owner = UnicodeAttribute(hash_key=True)

    class Drifted(Model):
        class Meta:
            table_name = name
            billing_mode = "PAY_PER_REQUEST"
            stream_view_type = "NEW_AND_OLD_IMAGES"

        pk = UnicodeAttribute(hash_key=True)
        owner = UnicodeAttribute(null=True)
        by_owner = ByOwner()

    # GIVEN a table from an earlier run, made before the model gained an index and a stream
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # THEN ensuring the tables says exactly what differs
    with pytest.raises(TableDriftError, match=r"missing indexes by_owner; stream off instead of NEW_AND_OLD_IMAGES"):
        ensure_tables([Drifted])
