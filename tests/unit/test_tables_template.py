"""The tables template (``infra/tables.yaml``) declares exactly the tables the PynamoDB models define.

Local runs and tests create the tables from the models; deployed stages get them from the
template. Both must agree on every table, key, attribute type, index, projection, stream and
TTL attribute, or code that passes every local test fails on a deployed stage. The expected
values are read from the model classes (``_get_schema()``, ``Meta``), never from a copy.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from pynamodb.attributes import BinaryAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection, LocalSecondaryIndex
from pynamodb.models import Model

import chalicelib.models
from chalicelib.config import get_settings
from chalicelib.models import TABLE_MODELS, InvitationsTable
from chalicelib.models.tables import ttl_attribute_name

if TYPE_CHECKING:
    from collections.abc import Callable

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "tables.yaml"
TABLE_TYPE = "AWS::DynamoDB::Table"


# --- reading the template -------------------------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation's short-form tags (``!Ref``, ``!GetAtt``, ``!Sub``...)
    as their long forms, so the template compares as plain data."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node for !{suffix}", node.start_mark)
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path | None = None) -> dict[str, Any]:
    """The template (``TEMPLATE`` unless given) as plain data, short-form tags in their long forms."""
    return yaml.load((path or TEMPLATE).read_text(encoding="utf-8"), Loader=CloudFormationLoader)


# --- one comparable shape for a model and a template resource -------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    """What DynamoDB knows of an index."""

    hash_key: str
    range_key: str | None
    projection: str
    non_key_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    """What DynamoDB knows of a table: the things the template and the models must agree on."""

    hash_key: str
    range_key: str | None
    attributes: frozenset[tuple[str, str]]
    global_indexes: dict[str, IndexSpec] = field(default_factory=dict)
    local_indexes: dict[str, IndexSpec] = field(default_factory=dict)
    stream: str | None = None
    ttl: str | None = None


def _keys(key_schema: list[dict[str, str]]) -> tuple[str, str | None]:
    keys = {key["KeyType"]: key["AttributeName"] for key in key_schema}
    return keys["HASH"], keys.get("RANGE")


def _index(key_schema: list[dict[str, str]], projection: dict[str, Any]) -> IndexSpec:
    hash_key, range_key = _keys(key_schema)
    included = tuple(sorted(projection.get("NonKeyAttributes") or ()))
    return IndexSpec(hash_key, range_key, projection["ProjectionType"], included)


def spec_of_model(model: type[Model]) -> TableSpec:
    """The table as PynamoDB creates it (``create_table`` uses the same ``_get_schema``), TTL as
    ``tables.ensure_tables`` switches it on."""
    schema = model._get_schema()  # includes the indexes of discriminator subclasses
    assert _keys(schema["key_schema"]) == (model._hash_keyname, model._range_keyname)
    return TableSpec(
        hash_key=model._hash_keyname,
        range_key=model._range_keyname,
        attributes=frozenset((a["AttributeName"], a["AttributeType"]) for a in schema["attribute_definitions"]),
        global_indexes={
            index["index_name"]: _index(index["key_schema"], index["projection"])
            for index in schema["global_secondary_indexes"]
        },
        local_indexes={
            index["index_name"]: _index(index["key_schema"], index["projection"])
            for index in schema["local_secondary_indexes"]
        },
        stream=getattr(model.Meta, "stream_view_type", None),
        ttl=ttl_attribute_name(model),
    )


def spec_of_resource(properties: dict[str, Any]) -> TableSpec:
    """The table an ``AWS::DynamoDB::Table`` resource declares."""
    hash_key, range_key = _keys(properties["KeySchema"])
    ttl = properties.get("TimeToLiveSpecification") or {}
    return TableSpec(
        hash_key=hash_key,
        range_key=range_key,
        attributes=frozenset((a["AttributeName"], a["AttributeType"]) for a in properties["AttributeDefinitions"]),
        global_indexes={
            index["IndexName"]: _index(index["KeySchema"], index["Projection"])
            for index in properties.get("GlobalSecondaryIndexes", [])
        },
        local_indexes={
            index["IndexName"]: _index(index["KeySchema"], index["Projection"])
            for index in properties.get("LocalSecondaryIndexes", [])
        },
        stream=(properties.get("StreamSpecification") or {}).get("StreamViewType"),
        ttl=ttl.get("AttributeName") if ttl.get("Enabled") is True else None,
    )


def differences(table: str, model: TableSpec, template: TableSpec) -> list[str]:
    """Each way the template's table differs from the model's, one readable line each."""
    problems = [
        f"{table}: {name} is {getattr(template, name)!r} in the template, {getattr(model, name)!r} in the model"
        for name in ("hash_key", "range_key", "stream", "ttl")
        if getattr(model, name) != getattr(template, name)
    ]
    if model.attributes != template.attributes:
        problems.append(
            f"{table}: attribute definitions: template lacks {sorted(model.attributes - template.attributes)}, "
            f"has extra {sorted(template.attributes - model.attributes)}"
        )
    for kind in ("global_indexes", "local_indexes"):
        wanted, declared = getattr(model, kind), getattr(template, kind)
        for name in sorted(wanted.keys() | declared.keys()):
            if name not in declared:
                problems.append(f"{table}: {kind} {name} is missing from the template")
            elif name not in wanted:
                problems.append(f"{table}: {kind} {name} is in the template but no model declares it")
            elif wanted[name] != declared[name]:
                problems.append(
                    f"{table}: {kind} {name} is {declared[name]} in the template, {wanted[name]} in the model"
                )
    return problems


# --- the template's tables against the models -----------------------------------------------------


def table_name(properties: dict[str, Any], prefix: str) -> str:
    """A resource's ``TableName`` (``!Sub "${TablePrefix}-users"``) for the given prefix."""
    name = properties["TableName"]
    text = name["Fn::Sub"] if isinstance(name, dict) else name
    assert isinstance(text, str), f"TableName must be a string or a !Sub string: {name!r}"
    resolved = text.replace("${TablePrefix}", prefix)
    assert "${" not in resolved, f"TableName may use only ${{TablePrefix}}: {text!r}"
    return resolved


def template_tables(template: dict[str, Any], prefix: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Table name → (logical id, properties) of every table resource."""
    tables: dict[str, tuple[str, dict[str, Any]]] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == TABLE_TYPE:
            name = table_name(resource["Properties"], prefix)
            assert name not in tables, f"two resources declare table {name}"
            tables[name] = (logical_id, resource["Properties"])
    return tables


def template_problems(template: dict[str, Any], models: tuple[type[Model], ...] = TABLE_MODELS) -> list[str]:
    """Every disagreement between the template's tables and the models' (empty when they match)."""
    tables = template_tables(template, get_settings().table_prefix)
    wanted = {model.Meta.table_name: model for model in models}
    problems = [f"{name}: in the template but no model uses it" for name in sorted(tables.keys() - wanted.keys())]
    problems += [f"{name}: the model's table is missing from the template" for name in sorted(wanted.keys() - tables)]
    for name in sorted(wanted.keys() & tables.keys()):
        problems += differences(name, spec_of_model(wanted[name]), spec_of_resource(tables[name][1]))
    return problems


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def logical_id(template: dict[str, Any], model: type[Model]) -> str:
    return template_tables(template, get_settings().table_prefix)[model.Meta.table_name][0]


def test_the_template_declares_exactly_the_tables_of_the_models(template: dict[str, Any]) -> None:
    problems = template_problems(template)

    assert problems == [], "infra/tables.yaml differs from the models:\n" + "\n".join(problems)


def test_every_model_class_lives_in_one_of_the_four_tables() -> None:
    """A model with a table of its own that TABLE_MODELS (and so the check above) does not know
    would be created by nothing on a deployed stage."""
    for module in pkgutil.iter_modules(chalicelib.models.__path__):
        importlib.import_module(f"chalicelib.models.{module.name}")
    by_table = {model.Meta.table_name: model for model in TABLE_MODELS}
    pending, seen = list(Model.__subclasses__()), set()
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if model in seen or not model.__module__.startswith("chalicelib.models."):
            continue
        seen.add(model)
        base = by_table.get(model.Meta.table_name)
        assert base is not None, f"{model.__qualname__} uses table {model.Meta.table_name}, not in TABLE_MODELS"
        assert issubclass(model, base), (
            f"{model.__qualname__} shares {base.__qualname__}'s table without subclassing it"
        )
    assert len(seen) > len(TABLE_MODELS)  # the discovery found the item classes too


def test_key_schemas_list_the_hash_key_first(template: dict[str, Any]) -> None:
    """DynamoDB rejects a key schema whose first element is not the HASH key."""
    for _, properties in template_tables(template, "p").values():
        schemas = [properties["KeySchema"]] + [
            index["KeySchema"]
            for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes")
            for index in properties.get(kind, [])
        ]
        for schema in schemas:
            assert schema[0]["KeyType"] == "HASH", schema


def test_stage_and_prefix_parameters(template: dict[str, Any]) -> None:
    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    assert template["Description"]
    assert template["Parameters"]["Stage"]["AllowedValues"] == ["dev", "prod"]
    assert template["Parameters"]["TablePrefix"]["Type"] == "String"
    assert template["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}


@pytest.mark.parametrize("model", TABLE_MODELS, ids=lambda model: model.__name__)
def test_every_table_is_on_demand_recoverable_encrypted_and_protected_on_prod(
    template: dict[str, Any], model: type[Model]
) -> None:
    resource = template["Resources"][logical_id(template, model)]
    properties = resource["Properties"]

    assert properties["BillingMode"] == "PAY_PER_REQUEST" == model.Meta.billing_mode
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["DeletionProtectionEnabled"] == {"Fn::If": ["IsProd", True, False]}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert (resource["DeletionPolicy"], resource["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert {"Key": "Stage", "Value": {"Ref": "Stage"}} in properties["Tags"]
    assert "ProvisionedThroughput" not in properties


def test_outputs_name_every_table_and_the_invitations_stream(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    values = [output["Value"] for output in outputs.values()]
    for model in TABLE_MODELS:
        assert {"Ref": logical_id(template, model)} in values, model.__name__
    stream = outputs["InvitationsStreamArn"]["Value"]
    assert stream == {"Fn::GetAtt": [logical_id(template, InvitationsTable), "StreamArn"]}
    for name, output in outputs.items():
        assert output["Export"]["Name"] == {"Fn::Sub": f"${{AWS::StackName}}-{name}"}


def test_the_stream_failure_queue(template: dict[str, Any]) -> None:
    queues = [name for name, resource in template["Resources"].items() if resource["Type"] == "AWS::SQS::Queue"]
    assert queues == ["StreamFailureQueue"]
    properties = template["Resources"]["StreamFailureQueue"]["Properties"]

    assert properties["QueueName"] == {"Fn::Sub": "${TablePrefix}-stream-failures"}
    assert properties["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert properties["SqsManagedSseEnabled"] is True
    outputs = template["Outputs"]
    assert outputs["StreamFailureQueueArn"]["Value"] == {"Fn::GetAtt": ["StreamFailureQueue", "Arn"]}
    assert outputs["StreamFailureQueueUrl"]["Value"] == {"Ref": "StreamFailureQueue"}


# --- the check can fail ------------------------------------------------------------------------------


def _table(template: dict[str, Any], logical: str) -> dict[str, Any]:
    return template["Resources"][logical]["Properties"]


def _gsi(template: dict[str, Any], logical: str, name: str) -> dict[str, Any]:
    return next(i for i in _table(template, logical)["GlobalSecondaryIndexes"] if i["IndexName"] == name)


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "table dropped": lambda t: t["Resources"].pop("LedgerTable"),
    "table renamed": lambda t: _table(t, "UsersTable").update(TableName={"Fn::Sub": "${TablePrefix}-user"}),
    "hash key": lambda t: _table(t, "UsersTable")["KeySchema"][0].update(AttributeName="id"),
    "range key dropped": lambda t: _table(t, "LedgerTable")["KeySchema"].pop(),
    "attribute type": lambda t: _table(t, "InvitationsTable")["AttributeDefinitions"][0].update(AttributeType="N"),
    "index renamed": lambda t: _gsi(t, "InvitationsTable", "due").update(IndexName="by_due"),
    "index dropped": lambda t: _table(t, "UsersTable")["GlobalSecondaryIndexes"].pop(),
    "index key": lambda t: _gsi(t, "LedgerTable", "by_owner")["KeySchema"][1].update(AttributeName="due_at"),
    "projection type": lambda t: _gsi(t, "UsersTable", "catalogue").update(Projection={"ProjectionType": "KEYS_ONLY"}),
    "included attributes": lambda t: _gsi(t, "InvitationsTable", "by_doctor").update(
        Projection={"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status"]}
    ),
    "stream view type": lambda t: _table(t, "InvitationsTable").update(
        StreamSpecification={"StreamViewType": "NEW_IMAGE"}
    ),
    "stream dropped": lambda t: _table(t, "InvitationsTable").pop("StreamSpecification"),
    "stream added": lambda t: _table(t, "LedgerTable").update(StreamSpecification={"StreamViewType": "KEYS_ONLY"}),
    "ttl attribute": lambda t: _table(t, "IdempotencyTable")["TimeToLiveSpecification"].update(AttributeName="ttl"),
    "ttl disabled": lambda t: _table(t, "UsersTable")["TimeToLiveSpecification"].update(Enabled=False),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_a_template_that_drifted_from_the_models_is_caught(
    template: dict[str, Any], mutate: Callable[[dict[str, Any]], None]
) -> None:
    drifted = copy.deepcopy(template)
    mutate(drifted)

    assert template_problems(drifted) != []


class _IncludeIndex(GlobalSecondaryIndex["_Specimen"]):
    class Meta:
        index_name = "by_score"
        projection = IncludeProjection(["label", "blob"])

    score = NumberAttribute(hash_key=True)


class _KeysOnlyLocalIndex(LocalSecondaryIndex["_Specimen"]):
    class Meta:
        index_name = "by_digest"
        projection = KeysOnlyProjection()

    key = UnicodeAttribute(hash_key=True)
    digest = BinaryAttribute(range_key=True, legacy_encoding=False)


class _Specimen(Model):
    """Kinds the real models do not use yet (N and B keys, INCLUDE and KEYS_ONLY, an LSI): the
    comparison must see them too when a model starts using them."""

    class Meta:
        table_name = "specimen"
        stream_view_type = "KEYS_ONLY"

    key = UnicodeAttribute(hash_key=True)
    number = NumberAttribute(range_key=True)
    score = NumberAttribute(null=True)
    digest = BinaryAttribute(null=True, legacy_encoding=False)
    by_score = _IncludeIndex()
    by_digest = _KeysOnlyLocalIndex()


SPECIMEN_RESOURCE = """
TableName: specimen
KeySchema: [{AttributeName: key, KeyType: HASH}, {AttributeName: number, KeyType: RANGE}]
AttributeDefinitions:
  - {AttributeName: key, AttributeType: S}
  - {AttributeName: number, AttributeType: N}
  - {AttributeName: score, AttributeType: N}
  - {AttributeName: digest, AttributeType: B}
GlobalSecondaryIndexes:
  - IndexName: by_score
    KeySchema: [{AttributeName: score, KeyType: HASH}]
    Projection: {ProjectionType: INCLUDE, NonKeyAttributes: [blob, label]}
LocalSecondaryIndexes:
  - IndexName: by_digest
    KeySchema: [{AttributeName: key, KeyType: HASH}, {AttributeName: digest, KeyType: RANGE}]
    Projection: {ProjectionType: KEYS_ONLY}
StreamSpecification: {StreamViewType: KEYS_ONLY}
"""

SPECIMEN_MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "included attribute": lambda p: p["GlobalSecondaryIndexes"][0]["Projection"].update(NonKeyAttributes=["label"]),
    "number type": lambda p: p["AttributeDefinitions"][1].update(AttributeType="S"),
    "binary type": lambda p: p["AttributeDefinitions"][3].update(AttributeType="S"),
    "local index projection": lambda p: p["LocalSecondaryIndexes"][0].update(Projection={"ProjectionType": "ALL"}),
    "local index key": lambda p: p["LocalSecondaryIndexes"][0]["KeySchema"][1].update(AttributeName="number"),
    "local index dropped": lambda p: p.pop("LocalSecondaryIndexes"),
}


def test_the_comparison_reads_every_kind_of_index_projection_and_type() -> None:
    resource = yaml.safe_load(SPECIMEN_RESOURCE)

    assert differences("specimen", spec_of_model(_Specimen), spec_of_resource(resource)) == []


@pytest.mark.parametrize("mutate", SPECIMEN_MUTATIONS.values(), ids=SPECIMEN_MUTATIONS.keys())
def test_the_comparison_catches_every_kind_of_difference(mutate: Callable[[dict[str, Any]], None]) -> None:
    resource = yaml.safe_load(SPECIMEN_RESOURCE)
    mutate(resource)

    assert differences("specimen", spec_of_model(_Specimen), spec_of_resource(resource)) != []


def test_the_loader_reads_short_form_tags() -> None:
    loaded = yaml.load(
        "a: !Ref X\nb: !GetAtt T.StreamArn\nc: !Sub '${P}-x'\nd: !If [C, 1, 2]\ne: !Equals [!Ref S, prod]\n",
        Loader=CloudFormationLoader,
    )

    assert loaded == {
        "a": {"Ref": "X"},
        "b": {"Fn::GetAtt": ["T", "StreamArn"]},
        "c": {"Fn::Sub": "${P}-x"},
        "d": {"Fn::If": ["C", 1, 2]},
        "e": {"Fn::Equals": [{"Ref": "S"}, "prod"]},
    }
    assert "!" not in yaml.SafeLoader.yaml_multi_constructors  # the plain SafeLoader stays strict
