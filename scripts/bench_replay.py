"""The raw reference for the throughput figure: the flows' own DynamoDB requests, replayed alone.

What DynamoDB Local can do for a call mix depends on the calls themselves: the tables and their
indexes (every write maintains them), the items' size, a transaction's items across tables.
So the reference is not a synthetic loop: the bench records every DynamoDB request the counted
flows made (the API parameters, as botocore received them) and replays each one, in order, with
a bare client and nothing else running. Time spent on the replay is what DynamoDB Local and
botocore alone need for exactly that work; the flows' time above it is the product's own.

How each request is replayed:

- reads (``GetItem``, ``Query``, ``BatchGetItem``) as they were, on the real tables (they
  change nothing);
- writes on copies of the tables (same keys, indexes and streams), seeded beforehand, untimed,
  with the current version of every item the writes touch, so updates find their items. The
  copies receive the writes without their conditions (a condition the real run met could fail
  on a replay): a little less work than the flows did, so the reference errs on the fast side
  and the ratio on the low side. ``ConditionCheck`` parts of a transaction are left out for the
  same reason, and ``ClientRequestToken`` (DynamoDB would treat a replay as a retry).

Example
-------
>>> recording = Recording()  # its hook on every client the flows use (``bench_stack``)  # doctest: +SKIP
>>> recording.on = True; run_the_flows(); recording.on = False  # doctest: +SKIP
>>> replayed = replay(recording.calls, bare_client)  # doctest: +SKIP
>>> replayed.seconds, replayed.median_ms["GetItem"]  # doctest: +SKIP
(5.21, 1.8)
"""

from __future__ import annotations

import collections
import copy
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

READS = frozenset({"GetItem", "Query", "BatchGetItem"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})
COPY_SUFFIX = "-replay"
_EXPRESSIONS = ("UpdateExpression", "ProjectionExpression", "KeyConditionExpression", "FilterExpression")
_PLACEHOLDER = re.compile(r"[#:][A-Za-z0-9_]+")


@dataclass
class Recording:
    """The DynamoDB requests made while ``on``: ``(operation, params)`` in the order they were made."""

    on: bool = False
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def before_parameter_build(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        """botocore ``before-parameter-build`` hook: keep a copy of the request's parameters."""
        if self.on and model.name in READS | WRITES:
            with self._lock:
                self.calls.append((model.name, copy.deepcopy(params)))


@dataclass
class Replay:
    seconds: float
    """Time of all the replayed calls together (each one timed alone, setup excluded)."""
    median_ms: dict[str, float]
    calls: collections.Counter[str]
    failed: collections.Counter[str]
    """Replayed calls DynamoDB refused (left out of ``seconds``; a few may meet a changed item)."""


def without_conditions(request: dict[str, Any]) -> dict[str, Any]:
    """A write request with its condition removed, and the placeholders only the condition used.

    >>> without_conditions({"TableName": "t", "Key": {}, "UpdateExpression": "SET #a = :v",
    ...     "ConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#a": "a", "#s": "s"},
    ...     "ExpressionAttributeValues": {":v": {"N": "1"}, ":s": {"S": "x"}}})
    {'TableName': 't', 'Key': {}, 'UpdateExpression': 'SET #a = :v', 'ExpressionAttributeNames': {'#a': 'a'}, \
'ExpressionAttributeValues': {':v': {'N': '1'}}}
    """
    request = {
        name: value
        for name, value in request.items()
        if name not in ("ConditionExpression", "ReturnValuesOnConditionCheckFailure")
    }
    used = {token for name in _EXPRESSIONS for token in _PLACEHOLDER.findall(request.get(name, ""))}
    for name in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
        kept = {placeholder: value for placeholder, value in request.get(name, {}).items() if placeholder in used}
        if kept:
            request[name] = kept
        else:
            request.pop(name, None)
    return request


def _to_copy(request: dict[str, Any]) -> dict[str, Any]:
    return {**without_conditions(request), "TableName": request["TableName"] + COPY_SUFFIX}


def replayable(operation: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The request to replay for one recorded call (``None``: nothing left to replay)."""
    if operation in READS:
        return params
    if operation != "TransactWriteItems":
        return _to_copy(params)
    parts = [
        {kind: _to_copy(part)}
        for item in params["TransactItems"]
        for kind, part in item.items()
        if kind != "ConditionCheck"
    ]
    return {"TransactItems": parts} if parts else None


def _written_keys(operation: str, params: dict[str, Any], schemas: dict[str, list[str]]) -> list[tuple[str, Any]]:
    """``(table, key)`` of every item a recorded write touches."""
    parts = (
        [part for item in params["TransactItems"] for part in item.values()]
        if operation == "TransactWriteItems"
        else [params]
    )
    keys = []
    for part in parts:
        table = part["TableName"]
        source = part.get("Key") or part["Item"]
        keys.append((table, {name: source[name] for name in schemas[table]}))
    return keys


def _copy_tables(client: Any, tables: set[str]) -> dict[str, list[str]]:
    """Empty copies of ``tables`` (keys, indexes, stream); the key attribute names of each table."""
    schemas = {}
    for table in tables:
        description = client.describe_table(TableName=table)["Table"]
        schemas[table] = [part["AttributeName"] for part in description["KeySchema"]]
        definition: dict[str, Any] = {
            "TableName": table + COPY_SUFFIX,
            "KeySchema": description["KeySchema"],
            "AttributeDefinitions": description["AttributeDefinitions"],
            "BillingMode": "PAY_PER_REQUEST",
        }
        for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if description.get(kind):
                definition[kind] = [
                    {name: index[name] for name in ("IndexName", "KeySchema", "Projection")}
                    for index in description[kind]
                ]
        if description.get("StreamSpecification", {}).get("StreamEnabled"):
            definition["StreamSpecification"] = description["StreamSpecification"]
        client.create_table(**definition)
    return schemas


def _seed(client: Any, keys: list[tuple[str, Any]]) -> None:
    """Put the current version of each written item into the table's copy (untimed)."""
    unique = {(table, repr(sorted(key.items()))): (table, key) for table, key in keys}
    for table, key in unique.values():
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if item:
            client.put_item(TableName=table + COPY_SUFFIX, Item=item)


def replay(calls: list[tuple[str, dict[str, Any]]], client: Any) -> Replay:
    """Replay ``calls`` one by one with ``client`` (a bare botocore DynamoDB client), timing each."""
    writes = [(operation, params) for operation, params in calls if operation in WRITES]
    tables = {
        part["TableName"]
        for operation, params in writes
        for part in (
            [p for item in params["TransactItems"] for p in item.values()]
            if operation == "TransactWriteItems"
            else [params]
        )
    }
    schemas = _copy_tables(client, tables)
    _seed(client, [key for operation, params in writes for key in _written_keys(operation, params, schemas)])
    times: dict[str, list[float]] = collections.defaultdict(list)
    failed: collections.Counter[str] = collections.Counter()
    method = {
        "GetItem": client.get_item,
        "Query": client.query,
        "BatchGetItem": client.batch_get_item,
        "PutItem": client.put_item,
        "UpdateItem": client.update_item,
        "DeleteItem": client.delete_item,
        "TransactWriteItems": client.transact_write_items,
    }
    for operation, params in calls:
        request = replayable(operation, params)
        if request is None:
            continue
        started = time.perf_counter()
        try:
            method[operation](**request)
        except client.exceptions.ClientError:
            failed[operation] += 1
            continue
        times[operation].append(time.perf_counter() - started)
    for table in tables:
        client.delete_table(TableName=table + COPY_SUFFIX)
    return Replay(
        seconds=sum(sum(values) for values in times.values()),
        median_ms={operation: statistics.median(values) * 1000 for operation, values in times.items()},
        calls=collections.Counter({operation: len(values) for operation, values in times.items()}),
        failed=failed,
    )
