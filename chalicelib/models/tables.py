"""Create the tables from the models: create-if-missing, idempotent, TTL switched on.

Used by the local stack and the tests only; deployed stages get their tables from the
tables template, which a test keeps in step with the models.

Example
-------
>>> from chalicelib.models import TABLE_MODELS
>>> ensure_tables(TABLE_MODELS)  # doctest: +SKIP
['anes-local-users: created', 'anes-local-invitations: exists', ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynamodb.attributes import TTLAttribute
from pynamodb.exceptions import TableError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pynamodb.models import Model


def ttl_attribute_name(model: type[Model]) -> str | None:
    """The DynamoDB name of the model's TTL attribute, if it has one."""
    for attribute in model.get_attributes().values():
        if isinstance(attribute, TTLAttribute):
            return attribute.attr_name
    return None


class TableDriftError(RuntimeError):
    """An existing table lacks a stream or an index its model declares."""


def _check_matches(model: type[Model]) -> None:
    """Fail when a table kept from an earlier run no longer matches its model."""
    table = model._get_connection().connection.client.describe_table(TableName=model.Meta.table_name)["Table"]
    missing = sorted(
        {index.Meta.index_name for index in model._indexes.values()}
        - {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
    )
    wants_stream = getattr(model.Meta, "stream_view_type", None)
    has_stream = table.get("StreamSpecification", {}).get("StreamViewType")
    problems = [f"missing indexes {', '.join(missing)}"] if missing else []
    if wants_stream and wants_stream != has_stream:
        problems.append(f"stream {has_stream or 'off'} instead of {wants_stream}")
    if problems:
        raise TableDriftError(f"table {model.Meta.table_name} differs from its model: {'; '.join(problems)}")


def _create(model: type[Model]) -> bool:
    """Create the table and wait for it; False when it already existed (and still matches its model)."""
    if model.exists():
        _check_matches(model)
        return False
    try:
        model.create_table(wait=True)
    except TableError as error:
        if "ResourceInUseException" not in str(error.cause_response_code or error):
            raise
        return False  # another process created it meanwhile
    return True


def _enable_ttl(model: type[Model], attribute: str) -> None:
    client = model._get_connection().connection.client
    name = model.Meta.table_name
    status = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if status.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
        return
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})


def ensure_tables(models: Iterable[type[Model]]) -> list[str]:
    """Create every missing table, switch TTL on; return one status line per table."""
    report = []
    for model in models:
        created = _create(model)
        ttl = ttl_attribute_name(model)
        if ttl:
            _enable_ttl(model, ttl)
        report.append(f"{model.Meta.table_name}: {'created' if created else 'exists'}")
    return report
