"""The deployed stages' Chalice settings: a least-privilege policy and runtime settings per function.

Offline: the functions are the ones Chalice's own application graph builds from the app
(the lookup ``chalice deploy`` and ``chalice package`` do), and the policy files are read
as Chalice reads them. Policy files are plain JSON that Chalice passes to IAM verbatim (no
``${AWS::Partition}``, no account id), so they name the stage's partition and region and
put ``*`` in the account segment only; every data resource is otherwise concrete and
belongs to its stage.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chalice.app import DynamoDBEventConfig, Rate, ScheduledEventConfig
from chalice.config import Config
from chalice.deploy import models
from chalice.deploy.appgraph import ApplicationGraphBuilder, DependencyBuilder

from chalicelib.config import CHANNEL_VARIABLES, Settings, load_settings
from tests.unit.conftest import PROJECT_DIR

if TYPE_CHECKING:
    from chalice import Chalice

CHALICE_DIR = PROJECT_DIR / ".chalice"
POLICY_DIR = CHALICE_DIR / "policies"
DEPLOYED = ("dev", "prod")
PINNED_RUNTIME = "python3.11"
"""Chalice 1.34 has no runtime setting: it takes the deploying interpreter's version
(``Config.lambda_python_version``), so deploys must run from this project's Python 3.11."""
API_GATEWAY_LIMIT_SECONDS = 29
CALLBACK_DEADLINE_SECONDS = 5
"""WeChat Pay and the other providers give up on a callback after about 5 s."""
DATA_SERVICES = ("dynamodb", "secretsmanager", "sqs", "logs")
ANY_RESOURCE_ACTIONS = frozenset({"xray:PutTraceSegments", "xray:PutTelemetryRecords"})
"""Actions that take no resource (IAM only accepts ``*``); they touch no data."""
ARN = re.compile(r"arn:(?P<partition>[^:]+):(?P<service>[^:]+):(?P<region>[^:]*):(?P<account>[^:]*):(?P<rest>.+)")
CONCRETE = {
    # the name is concrete; a wildcard may only follow it as the suffix shown
    "dynamodb": re.compile(r"table/(?P<name>[A-Za-z0-9_.-]+)(/index/\*|/stream/\*)?"),
    "secretsmanager": re.compile(r"secret:(?P<name>[A-Za-z0-9/_+=.@-]+)-\?{6}"),
    "sqs": re.compile(r"(?P<name>[A-Za-z0-9_-]+)"),
    "logs": re.compile(r"log-group:(?P<name>[A-Za-z0-9_/.#-]+)(:\*)?"),
}
STREAM_ACTIONS = ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams")
ITEM_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:PartiQLSelect",
    "dynamodb:PartiQLInsert",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
    "dynamodb:DescribeTable",
    "dynamodb:UpdateTable",
    "dynamodb:DeleteTable",
)
READ = {"GetItem", "Query"}
WRITE = {"PutItem", "UpdateItem", "ConditionCheckItem"}
TABLE_ACCESS: dict[str, dict[str, set[str]]] = {
    # What each function does to each table (transactions are authorised per action: Put,
    # Update, Delete, ConditionCheck). Read from the code paths and a traced unit-suite run.
    "api_handler": {
        "users": READ | WRITE | {"DeleteItem", "BatchWriteItem"},  # profile phone change; hospital terms
        "invitations": READ | WRITE,
        "ledger": READ | WRITE | {"DeleteItem"},  # a tip or membership payment slot freed
        "idempotency": {"GetItem", "PutItem", "UpdateItem", "DeleteItem"},  # Powertools' persistence layer
    },
    "heartbeat": {"users": {"UpdateItem"}},
    "expire_invitations": {"invitations": READ | WRITE, "ledger": READ | WRITE},
    "auto_confirm": {"invitations": READ | WRITE, "ledger": READ | WRITE, "users": {"UpdateItem"}},
    "follow_up_payments": {"users": READ | WRITE, "invitations": READ | WRITE, "ledger": READ | WRITE | {"DeleteItem"}},
    "follow_up_refunds": {"invitations": READ | WRITE, "ledger": READ | WRITE},
    "settle_payouts": {"ledger": READ | WRITE},
    "lift_penalties": {"invitations": READ | {"UpdateItem"}},
    "update_reputation": {"users": READ | WRITE},
    "send_notices": {"invitations": {"GetItem", "UpdateItem"}, "users": {"GetItem"}},
}
READS_KEYS = {"api_handler", "send_notices", "settle_payouts"}
"""JWT/PII/lookup keys and the WeChat app secrets: the API, the WeChat notifier, payee decryption."""
READS_PAYMENT_KEYS = {"api_handler", "expire_invitations", "follow_up_payments", "follow_up_refunds", "settle_payouts"}
"""Functions that call a payment provider (callbacks, refunds sent at once, queries, payouts)."""


def _disk_config() -> dict[str, Any]:
    return json.loads((CHALICE_DIR / "config.json").read_text(encoding="utf-8"))


def _config(app: Chalice, stage: str) -> Config:
    """The stage's configuration as the Chalice CLI builds it (``CLIFactory.create_config_obj``)."""
    return Config(
        chalice_stage=stage,
        user_provided_params={"chalice_app": app, "project_dir": str(PROJECT_DIR)},
        config_from_disk=_disk_config(),
        default_params={
            "project_dir": str(PROJECT_DIR),
            "api_gateway_stage": "api",
            "api_gateway_endpoint_type": "EDGE",
            "autogen_policy": True,
        },
    )


def _settings(stage: str) -> Settings:
    disk = _disk_config()
    return load_settings({**disk["environment_variables"], **disk["stages"][stage]["environment_variables"]})


@pytest.fixture(scope="module")
def app() -> Chalice:
    from app import app as chalice_app

    return chalice_app


@pytest.fixture(scope="module")
def functions(app: Chalice) -> dict[str, dict[str, models.LambdaFunction]]:
    """Every Lambda function Chalice creates, per deployed stage, by its name in the app."""
    built: dict[str, dict[str, models.LambdaFunction]] = {}
    for stage in DEPLOYED:
        application = ApplicationGraphBuilder().build(_config(app, stage), stage)
        resources = DependencyBuilder().build_dependencies(application)
        built[stage] = {r.resource_name: r for r in resources if isinstance(r, models.LambdaFunction)}
    return built


def _policy(function: models.LambdaFunction) -> dict[str, Any]:
    role = function.role
    assert isinstance(role, models.ManagedIAMRole), f"{function.resource_name}: Chalice must manage its role"
    assert isinstance(role.policy, models.FileBasedIAMPolicy), f"{function.resource_name}: no policy file"
    return json.loads(Path(role.policy.filename).read_text(encoding="utf-8"))


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document["Statement"]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _allows(document: dict[str, Any], action: str, resource: str) -> bool:
    """Whether an Allow statement matches (IAM wildcards; conditions not evaluated)."""
    return any(
        statement["Effect"] == "Allow"
        and any(fnmatchcase(action, pattern) for pattern in _listed(statement["Action"]))
        and any(fnmatchcase(resource, pattern) for pattern in _listed(statement["Resource"]))
        for statement in _statements(document)
    )


def _arn(stage: str, service: str, rest: str) -> str:
    """A concrete resource ARN of the stage's partition and region (some account)."""
    match = ARN.fullmatch(_settings(stage).invitations_stream_arn)
    assert match is not None
    return f"arn:{match['partition']}:{service}:{match['region']}:123456789012:{rest}"


def test_chalice_creates_the_api_every_schedule_and_every_stream_consumer(
    app: Chalice, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    expected = {"api_handler"} | {source.name for source in app.event_sources}
    expected |= {auth.name for auth in app.builtin_auth_handlers}
    for stage in DEPLOYED:
        assert set(functions[stage]) == expected
        assert set(_disk_config()["stages"][stage]["lambda_functions"]) == expected, f"{stage}: stale or missing"


def test_the_deploy_sequence_knows_every_scheduled_job(app: Chalice) -> None:
    from chalice.app import ScheduledEventConfig

    from devstack import deploy

    schedules = {source.name for source in app.event_sources if isinstance(source, ScheduledEventConfig)}
    assert set(deploy.JOBS) == schedules


@pytest.mark.parametrize("stage", DEPLOYED)
def test_every_function_has_its_own_role_and_policy_file(
    stage: str, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    roles = set()
    for name, function in functions[stage].items():
        role = function.role
        assert isinstance(role, models.ManagedIAMRole)
        assert isinstance(role.policy, models.FileBasedIAMPolicy), f"{stage}/{name}: autogen_policy must be false"
        assert role.policy.filename == str(POLICY_DIR / f"{stage}-{name}.json")
        assert (POLICY_DIR / f"{stage}-{name}.json").is_file()
        roles.add(role.role_name)
    assert len(roles) == len(functions[stage]), "one role per function"


def test_every_policy_file_is_used() -> None:
    used = {
        CHALICE_DIR / entry["iam_policy_file"]
        for stage in DEPLOYED
        for entry in _disk_config()["stages"][stage]["lambda_functions"].values()
    }
    assert set(POLICY_DIR.glob("*.json")) == used


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.json")), ids=lambda path: path.name)
def test_a_policy_file_is_an_iam_document_of_concrete_stage_resources(path: Path) -> None:
    stage = path.name.split("-", 1)[0]
    assert stage in DEPLOYED
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["Version"] == "2012-10-17"
    stream = ARN.fullmatch(_settings(stage).invitations_stream_arn)
    assert stream is not None
    assert _statements(document), "a policy needs statements"
    for statement in _statements(document):
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource"} & set(statement), "NotAction/NotResource grant too much"
        actions, resources = _listed(statement["Action"]), _listed(statement["Resource"])
        for action in actions:
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", action), f"{path.name}: no wildcard actions ({action})"
        services = {action.split(":")[0] for action in actions}
        if services & set(DATA_SERVICES):
            assert len(services) == 1, f"{path.name}: one service per data statement"
            (service,) = services
            for resource in resources:
                _assert_concrete(path.name, stage, service, resource, stream)
        else:
            assert set(actions) <= ANY_RESOURCE_ACTIONS, f"{path.name}: review {sorted(set(actions))}"


def _assert_concrete(name: str, stage: str, service: str, resource: str, stream: re.Match[str]) -> None:
    """A resource of ``service`` in the stage's partition and region; ``*`` only as the account or a suffix."""
    arn = ARN.fullmatch(resource)
    assert arn is not None, f"{name}: {resource!r} is not an ARN"
    assert arn["service"] == service, f"{name}: {resource} is not a {service} resource"
    assert (arn["partition"], arn["region"]) == (stream["partition"], stream["region"]), f"{name}: {resource}"
    assert re.fullmatch(r"\d{12}|\*", arn["account"]), f"{name}: {resource} account"
    concrete = CONCRETE[service].fullmatch(arn["rest"])
    assert concrete is not None, f"{name}: {resource} is not a concrete resource pattern"
    settings = _settings(stage)
    owned = {
        "dynamodb": (f"{settings.table_prefix}-",),
        "secretsmanager": (settings.secrets_name, settings.payment_secrets_prefix),
        "sqs": (f"anes-{stage}-",),
        "logs": (f"/aws/lambda/anes-{stage}",),
    }[service]
    assert concrete["name"].startswith(owned), f"{name}: {resource} is not a {stage} resource"


@pytest.mark.parametrize("stage", DEPLOYED)
def test_each_function_reaches_exactly_its_tables(
    stage: str, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    settings = _settings(stage)
    tables = {
        "users": settings.users_table,
        "invitations": settings.invitations_table,
        "ledger": settings.ledger_table,
        "idempotency": settings.idempotency_table,
    }
    assert set(TABLE_ACCESS) == set(functions[stage])
    for name, function in functions[stage].items():
        document = _policy(function)
        for table, table_name in tables.items():
            allowed = {
                action.split(":")[1]
                for action in ITEM_ACTIONS
                if _allows(document, action, _arn(stage, "dynamodb", f"table/{table_name}"))
            }
            assert allowed == TABLE_ACCESS[name].get(table, set()), f"{stage}/{name} on {table}"
            on_index = _allows(document, "dynamodb:Query", _arn(stage, "dynamodb", f"table/{table_name}/index/by_x"))
            assert on_index == ("Query" in allowed), f"{stage}/{name}: Query on the indexes of {table}"


@pytest.mark.parametrize("stage", DEPLOYED)
def test_stream_consumers_read_the_stream_and_reach_the_failure_queue(
    stage: str, app: Chalice, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    consumers = {source.name for source in app.event_sources if isinstance(source, DynamoDBEventConfig)}
    assert consumers == {"update_reputation", "send_notices"}
    settings = _settings(stage)
    streams = [
        settings.invitations_stream_arn,  # the placeholder in config.json, and a real label
        _arn(stage, "dynamodb", f"table/{settings.invitations_table}/stream/2026-01-01T00:00:00.000"),
    ]
    queue = _arn(stage, "sqs", f"anes-{stage}-stream-failures")
    for name, function in functions[stage].items():
        document = _policy(function)
        reads = [_allows(document, action, stream) for action in STREAM_ACTIONS for stream in streams]
        sends = _allows(document, "sqs:SendMessage", queue)
        if name in consumers:
            assert all(reads), f"{stage}/{name} must read the Invitations stream"
            assert sends, f"{stage}/{name} must reach the on-failure destination"
        else:
            assert not any(reads) and not sends, f"{stage}/{name} consumes no stream"


@pytest.mark.parametrize("stage", DEPLOYED)
def test_only_the_functions_that_need_a_secret_can_read_it(
    stage: str, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    settings = _settings(stage)
    keys = _arn(stage, "secretsmanager", f"secret:{settings.secrets_name}-AbC123")
    payments = [
        _arn(stage, "secretsmanager", f"secret:{settings.payment_secrets_prefix}{channel}-AbC123")
        for channel in CHANNEL_VARIABLES
    ]
    other_stage = "prod" if stage == "dev" else "dev"
    foreign = _arn(stage, "secretsmanager", f"secret:{_settings(other_stage).secrets_name}-AbC123")
    for name, function in functions[stage].items():
        document = _policy(function)
        assert _allows(document, "secretsmanager:GetSecretValue", keys) == (name in READS_KEYS), f"{stage}/{name}"
        for secret in payments:
            readable = _allows(document, "secretsmanager:GetSecretValue", secret)
            assert readable == (name in READS_PAYMENT_KEYS), f"{stage}/{name}: {secret}"
        assert not _allows(document, "secretsmanager:GetSecretValue", foreign)


@pytest.mark.parametrize("stage", DEPLOYED)
def test_each_function_writes_only_its_own_log_group(
    stage: str, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    groups = {function.function_name for function in functions[stage].values()}
    for function in functions[stage].values():
        document = _policy(function)
        for other in groups:
            group = _arn(stage, "logs", f"log-group:/aws/lambda/{other}")
            stream = f"{group}:log-stream:2026/01/01/[$LATEST]abc"
            allowed = [
                _allows(document, "logs:CreateLogGroup", group),
                _allows(document, "logs:CreateLogStream", stream),
                _allows(document, "logs:PutLogEvents", stream),
            ]
            assert allowed == [other == function.function_name] * 3, f"{function.function_name} → {other}"


def test_dev_and_prod_grant_the_same_things_on_their_own_resources() -> None:
    for path in sorted(POLICY_DIR.glob("prod-*.json")):
        dev = POLICY_DIR / path.name.replace("prod-", "dev-", 1)
        renamed = path.read_text(encoding="utf-8").replace("anes-prod", "anes-dev").replace("anes/prod/", "anes/dev/")
        assert json.loads(renamed) == json.loads(dev.read_text(encoding="utf-8")), path.name


@pytest.mark.parametrize("stage", DEPLOYED)
def test_runtime_settings_per_function(
    stage: str, app: Chalice, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    schedules = {source.name: source for source in app.event_sources if isinstance(source, ScheduledEventConfig)}
    for name, function in functions[stage].items():
        where = f"{stage}/{name}"
        assert function.runtime == PINNED_RUNTIME, f"{where}: deploy with Python 3.11 (Chalice uses its interpreter)"
        assert isinstance(function.memory_size, int) and 128 <= function.memory_size <= 10240, where
        assert isinstance(function.timeout, int) and 1 <= function.timeout <= 900, where
        assert function.xray is True, where
        if name in schedules:
            rate = schedules[name].schedule_expression
            assert isinstance(rate, Rate)
            period = rate.value * {Rate.MINUTES: 60, Rate.HOURS: 3600, Rate.DAYS: 86400}[rate.unit]
            assert function.reserved_concurrency == 1, f"{where}: a job must not overlap itself"
            assert function.timeout < period, f"{where}: a run must end before the next one starts"
        else:
            assert function.reserved_concurrency is None, f"{where}: no cap on the API or a stream consumer"
    api = functions[stage]["api_handler"]
    assert CALLBACK_DEADLINE_SECONDS < api.timeout <= API_GATEWAY_LIMIT_SECONDS


@pytest.mark.parametrize("stage", DEPLOYED)
def test_send_notices_outlasts_a_batch_of_slow_wechat_calls(
    stage: str, app: Chalice, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    from chalicelib.notifications.notifier import TIMEOUT_SECONDS

    (source,) = [source for source in app.event_sources if source.name == "send_notices"]
    assert isinstance(source, DynamoDBEventConfig)
    # one access-token fetch, then one template message per record, each bounded by the client timeout
    assert (source.batch_size + 1) * TIMEOUT_SECONDS < functions[stage]["send_notices"].timeout


@pytest.mark.parametrize("stage", DEPLOYED)
def test_deployed_stages_use_regional_endpoints_hand_written_policies_and_tracing(stage: str) -> None:
    config = _disk_config()["stages"][stage]
    assert config["autogen_policy"] is False
    assert config["xray"] is True
    # The China regions have no edge-optimized API Gateway endpoints.
    assert config["api_gateway_endpoint_type"] == "REGIONAL"


def test_the_local_stage_keeps_no_deploy_settings() -> None:
    local = _disk_config()["stages"]["local"]
    assert set(local) == {"api_gateway_stage", "environment_variables"}


@pytest.mark.parametrize("stage", DEPLOYED)
def test_the_heartbeat_may_only_touch_its_own_record(
    stage: str, functions: dict[str, dict[str, models.LambdaFunction]]
) -> None:
    from chalicelib.system import HEARTBEAT_PK

    (statement,) = [s for s in _statements(_policy(functions[stage]["heartbeat"])) if s["Sid"] == "UsersTable"]
    assert statement["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [HEARTBEAT_PK]}}
