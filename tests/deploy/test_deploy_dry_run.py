"""The deploy sequence (``devstack.deploy``) run end to end against moto in server mode, twice.

CI has no AWS account, so this is how the deploy path is checked: the real command
(``python -m devstack.deploy --stage dev --dry-run-endpoint URL``) deploys a copy of the
project to a moto server — the tables stack through CloudFormation, ``chalice deploy`` (its
packaging, roles, functions, schedule rules, stream mappings, REST API), then the stream
failure settings — and a second run must change nothing.

What moto cannot show, and how this test deals with it:

- moto 5.2.5's ImportRestApi/PutRestApi accept only OpenAPI 3 documents with an
  ``info.description``; Chalice sends Swagger 2.0 without one (moto answers 500). The moto
  server here reads Chalice's document as OpenAPI 3 (same paths, methods and Lambda
  integrations); gateway responses, authorisers, throttling and CORS of the document are
  not checked by moto at all.
- moto 5.2.5 routes GetLayerVersionByArn but does not implement it (500); Chalice calls it on
  every deploy after the first when ``automatic_layer`` is on. The moto server here answers it
  from the layer versions moto stored, as GetLayerVersion does.
- moto resolves ``AWS::Partition`` to ``aws`` even in ``cn-north-1``; stream, queue and
  function ARNs carry ``aws-cn`` as in China.
- Nothing is invoked: moto would need Docker to run a function, so no stream record, no
  schedule and no failure reaches the queue. IAM policies are stored, not enforced.

Slow (Chalice builds the deployment package: ~20-60 s, from the pip index): ``make deploy-check``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from devstack import deploy

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT_DIR = Path(__file__).resolve().parents[2]
REGION = "cn-north-1"
STAGE = "dev"
COPIED = (".chalice", "app.py", "chalicelib", "requirements.txt", "infra")
JOBS = deploy.JOBS  # the app's schedules (tests/unit/test_deploy_config.py checks the list)
STREAM_CONSUMERS = ("update_reputation", "send_notices")
TABLES = ("users", "invitations", "ledger", "idempotency")


# ---------------------------------------------------------------- the pure decisions (fast)


def test_mapping_changes_lists_only_what_differs() -> None:
    desired = deploy.desired_mapping_settings("arn:aws-cn:sqs:cn-north-1:1:q")
    fresh = {"UUID": "u", "BatchSize": 100, "MaximumRetryAttempts": -1, "MaximumRecordAgeInSeconds": -1}

    assert mapping_keys(deploy.mapping_changes(fresh, desired)) == [
        "BisectBatchOnFunctionError",
        "DestinationConfig",
        "FunctionResponseTypes",
        "MaximumRecordAgeInSeconds",
        "MaximumRetryAttempts",
    ]
    as_aws_answers = {
        **copy.deepcopy(desired),
        "DestinationConfig": {"OnFailure": desired["DestinationConfig"]["OnFailure"], "OnSuccess": {}},
    }
    assert deploy.mapping_changes(as_aws_answers, desired) == {}
    other_queue = {**desired, "DestinationConfig": {"OnFailure": {"Destination": "arn:aws-cn:sqs:cn-north-1:1:old"}}}
    assert mapping_keys(deploy.mapping_changes(other_queue, desired)) == ["DestinationConfig"]


def mapping_keys(changes: dict[str, Any]) -> list[str]:
    return sorted(changes)


def test_the_config_keeps_everything_but_the_keys_it_owns() -> None:
    original = (PROJECT_DIR / ".chalice" / "config.json").read_text()
    arn = "arn:aws-cn:dynamodb:cn-north-1:1:table/anes-dev-invitations/stream/2026-01-01T00:00:00.000"

    text, changed = deploy.update_stage_config(
        original, "dev", {"INVITATIONS_STREAM_ARN": arn, "TABLE_PREFIX": "anes-dev"}
    )

    assert changed == ["INVITATIONS_STREAM_ARN"]
    assert text.endswith("}\n")
    before, after = json.loads(original), json.loads(text)
    assert after["stages"]["dev"]["environment_variables"].pop("INVITATIONS_STREAM_ARN") == arn
    before["stages"]["dev"]["environment_variables"].pop("INVITATIONS_STREAM_ARN")
    assert after == before
    assert deploy.update_stage_config(text, "dev", {"INVITATIONS_STREAM_ARN": arn}) == (text, [])


def test_outputs_that_disagree_with_the_app_are_refused() -> None:
    stream = "arn:aws-cn:dynamodb:cn-north-1:1:table/anes-dev-invitations/stream/2026-01-01T00:00:00.000"
    outputs = {
        **{name: f"anes-dev-{suffix}" for name, suffix in deploy.TABLE_OUTPUTS.items()},
        deploy.STREAM_ARN_OUTPUT: stream,
        deploy.QUEUE_ARN_OUTPUT: "arn:aws-cn:sqs:cn-north-1:1:anes-dev-stream-failures",
    }
    assert deploy.config_values(outputs, "dev") == {"TABLE_PREFIX": "anes-dev", "INVITATIONS_STREAM_ARN": stream}
    with pytest.raises(deploy.DeployError, match="the app expects anes-dev-users"):
        deploy.config_values({**outputs, "UsersTableName": "anes-dev-people"}, "dev")
    with pytest.raises(deploy.DeployError, match="no output InvitationsStreamArn"):
        deploy.config_values({**outputs, deploy.STREAM_ARN_OUTPUT: ""}, "dev")
    with pytest.raises(deploy.DeployError, match="not a stream of anes-prod-invitations"):
        deploy.config_values(
            {**outputs, **{name: f"anes-prod-{suffix}" for name, suffix in deploy.TABLE_OUTPUTS.items()}}, "prod"
        )


def test_an_unchanged_stack_is_recognised_in_both_template_forms() -> None:
    wanted = deploy.stack_parameters("dev")
    assert deploy.stack_is_current("a: 1\n", "a: 1\n", wanted, {**wanted, "Other": "x"})
    assert deploy.stack_is_current('{"a": 1}', {"a": 1}, wanted, wanted)
    assert not deploy.stack_is_current("a: 2\n", "a: 1\n", wanted, wanted)
    assert not deploy.stack_is_current("a: 1\n", "a: 1\n", wanted, {**wanted, "TablePrefix": "anes-prod"})


# ---------------------------------------------------------------- the dry run (slow)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_openapi3(document: dict[str, Any]) -> dict[str, Any]:
    """Chalice's Swagger 2.0 document with the header moto's importer insists on (see the module doc)."""
    document = copy.deepcopy(document)
    if "swagger" in document:
        del document["swagger"]
        document["openapi"] = "3.0.1"
    document.setdefault("info", {}).setdefault("description", "")
    for methods in document.get("paths", {}).values():  # moto cannot import the CORS preflights' mock integrations
        integration = methods.get("options", {}).get("x-amazon-apigateway-integration", {})
        if integration.get("type") == "mock":
            del methods["options"]
    return document


def _get_layer_version_by_arn(self: Any) -> str:
    """GetLayerVersionByArn, which moto 5.2.5 routes but lacks (Chalice calls it to reuse its
    ``automatic_layer``): the stored layer version, as GetLayerVersion answers it."""
    _, name, version = self._get_param("Arn").rsplit(":", 2)
    return json.dumps(self.backend.get_layer_version(name, version).get_layer_version())


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server in this process, with the two gaps Chalice meets filled (see the module doc)."""
    from moto.apigateway.models import APIGatewayBackend
    from moto.awslambda.responses import LambdaResponse
    from moto.server import ThreadedMotoServer

    original_import, original_put = APIGatewayBackend.import_rest_api, APIGatewayBackend.put_rest_api

    def import_rest_api(self: Any, api_doc: dict[str, Any], fail_on_warnings: bool) -> Any:
        return original_import(self, _as_openapi3(api_doc), fail_on_warnings)

    def put_rest_api(
        self: Any, function_id: str, api_doc: dict[str, Any], fail_on_warnings: bool, mode: str = "merge"
    ) -> Any:
        return original_put(self, function_id, _as_openapi3(api_doc), fail_on_warnings, mode)

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(APIGatewayBackend, "import_rest_api", import_rest_api)
        patch.setattr(APIGatewayBackend, "put_rest_api", put_rest_api)
        patch.setattr(LambdaResponse, "get_layer_version_by_arn", _get_layer_version_by_arn, raising=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deployable part of the project; Chalice's state and the rewritten config stay in it."""
    target = tmp_path_factory.mktemp("deploy") / "project"
    target.mkdir()
    for name in COPIED:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "deployments", "deployed", "venv")
            )
        else:
            shutil.copy2(source, target / name)
    return target


def run_deploy(endpoint: str, project: Path, *extra: str, stage: str = STAGE) -> subprocess.CompletedProcess[str]:
    """``make deploy`` as the operator runs it, against the double."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION=REGION, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.deploy",
            "--stage",
            stage,
            "--dry-run-endpoint",
            endpoint,
            "--project-dir",
            str(project),
            *extra,
        ],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="dryrun", aws_secret_access_key="dryrun"
    )


def snapshot(endpoint: str, project: Path) -> dict[str, Any]:
    """What a second run must leave as it found it."""
    cloudformation, lambda_, events = (
        client("cloudformation", endpoint),
        client("lambda", endpoint),
        client("events", endpoint),
    )
    stack = cloudformation.describe_stacks(StackName=deploy.stack_name(STAGE))["Stacks"][0]
    functions = {
        function["FunctionName"]: {
            **{
                key: function.get(key)
                for key in ("Runtime", "Handler", "MemorySize", "Timeout", "Role", "Environment", "CodeSha256")
            },
            # with automatic_layer Chalice publishes its layer again on every deploy (same content,
            # next version number, the old version deleted): compare the layer, not its version
            "Layers": [(layer["Arn"].rsplit(":", 1)[0], layer.get("CodeSize")) for layer in function.get("Layers", [])],
        }
        for function in lambda_.list_functions()["Functions"]
    }
    mappings = {
        mapping["UUID"]: {key: value for key, value in mapping.items() if key != "LastModified"}
        for mapping in lambda_.list_event_source_mappings()["EventSourceMappings"]
    }
    rules = {
        rule["Name"]: (
            rule.get("ScheduleExpression"),
            [target["Arn"] for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]],
        )
        for rule in events.list_rules()["Rules"]
    }
    return {
        "stack": (stack["StackStatus"], stack.get("LastUpdatedTime"), stack.get("Outputs")),
        "config": (project / ".chalice" / "config.json").read_text(),
        "functions": functions,
        "mappings": mappings,
        "rules": rules,
    }


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_deploy_sequence_runs_against_moto_and_twice_changes_nothing(
    moto_endpoint: str, project_copy: Path
) -> None:
    real_config = (PROJECT_DIR / ".chalice" / "config.json").read_bytes()
    original = json.loads((project_copy / ".chalice" / "config.json").read_text())

    first = run_deploy(moto_endpoint, project_copy)

    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert f"tables: stack {deploy.stack_name(STAGE)} created" in lines
    # the tables, through CloudFormation
    stack = client("cloudformation", moto_endpoint).describe_stacks(StackName=deploy.stack_name(STAGE))["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert stack["EnableTerminationProtection"] is True
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stack["Outputs"]}
    dynamodb = client("dynamodb", moto_endpoint)
    assert {f"anes-{STAGE}-{name}" for name in TABLES} <= set(dynamodb.list_tables()["TableNames"])
    invitations = dynamodb.describe_table(TableName=f"anes-{STAGE}-invitations")["Table"]
    stream_arn = invitations["LatestStreamArn"]
    assert stream_arn.startswith("arn:aws-cn:dynamodb:cn-north-1:")
    # its outputs, in the copy's config only; every other key as it was
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    variables = config["stages"][STAGE]["environment_variables"]
    assert variables["INVITATIONS_STREAM_ARN"] == stream_arn
    assert variables["TABLE_PREFIX"] == f"anes-{STAGE}"
    original["stages"][STAGE]["environment_variables"].update(
        INVITATIONS_STREAM_ARN=stream_arn, TABLE_PREFIX=f"anes-{STAGE}"
    )
    assert config == original
    assert (PROJECT_DIR / ".chalice" / "config.json").read_bytes() == real_config
    # the functions and the schedule rules
    lambda_, events = client("lambda", moto_endpoint), client("events", moto_endpoint)
    functions = {function["FunctionName"]: function for function in lambda_.list_functions()["Functions"]}
    expected = {f"anes-{STAGE}"} | {f"anes-{STAGE}-{name}" for name in (*JOBS, *STREAM_CONSUMERS)}
    assert expected <= set(functions)
    assert {function["Runtime"] for function in functions.values()} == {"python3.11"}
    for job in JOBS:
        rule = events.describe_rule(Name=f"anes-{STAGE}-{job}-event")
        assert rule["ScheduleExpression"].startswith("rate(")
        targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
        assert [target["Arn"] for target in targets] == [functions[f"anes-{STAGE}-{job}"]["FunctionArn"]]
    # the stream mappings, with the failure settings
    queue_arn = outputs[deploy.QUEUE_ARN_OUTPUT]
    sqs = client("sqs", moto_endpoint)
    queue_url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
    assert (
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"] == queue_arn
    )
    mappings = lambda_.list_event_source_mappings(EventSourceArn=stream_arn)["EventSourceMappings"]
    assert sorted(mapping["FunctionArn"].rsplit(":", 1)[-1] for mapping in mappings) == sorted(
        f"anes-{STAGE}-{name}" for name in STREAM_CONSUMERS
    )
    for mapping in mappings:
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["MaximumRetryAttempts"] == deploy.MAX_RETRY_ATTEMPTS
        assert mapping["BisectBatchOnFunctionError"] is True
        assert mapping["MaximumRecordAgeInSeconds"] == deploy.MAX_RECORD_AGE_SECONDS
        assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn
        assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert sum(line.startswith("streams: ") and ": set " in line for line in lines) == len(STREAM_CONSUMERS)
    # the REST API exists (its document is only as checked as moto checks it), throttled, its own errors shaped
    apigateway = client("apigateway", moto_endpoint)
    api_id = next(api["id"] for api in apigateway.get_rest_apis()["items"] if api["name"] == "anes")
    throttling = apigateway.get_stage(restApiId=api_id, stageName=deploy.API_STAGE)["methodSettings"]["*/*"]
    assert (throttling["throttlingRateLimit"], throttling["throttlingBurstLimit"]) == deploy.THROTTLING[STAGE]
    not_found = apigateway.get_gateway_response(restApiId=api_id, responseType="MISSING_AUTHENTICATION_TOKEN")
    assert not_found["statusCode"] == "404"
    assert json.loads(not_found["responseTemplates"]["application/json"])["error"]["code"] == "route_not_found"
    origin = original["stages"][STAGE]["environment_variables"]["FRONTEND_URL"]
    assert not_found["responseParameters"]["gatewayresponse.header.Access-Control-Allow-Origin"] == f"'{origin}'"
    # the jobs are not retried by Lambda on top of their next run
    for job in JOBS:
        assert lambda_.get_function_event_invoke_config(FunctionName=f"anes-{STAGE}-{job}")["MaximumRetryAttempts"] == 0

    before = snapshot(moto_endpoint, project_copy)
    second = run_deploy(moto_endpoint, project_copy)

    assert second.returncode == 0, second.stdout + second.stderr
    again = second.stdout.splitlines()
    assert f"tables: stack {deploy.stack_name(STAGE)} unchanged" in again
    assert f"config: .chalice/config.json: stages.{STAGE} unchanged" in again
    stream_lines = [line for line in again if line.startswith("streams: ")]
    assert len(stream_lines) == len(STREAM_CONSUMERS)
    assert all(line.endswith(": unchanged") for line in stream_lines)
    settings_lines = [line for line in again if line.startswith(("api: ", "jobs: "))]
    assert len(settings_lines) == 1 + len(deploy.GATEWAY_ERRORS) + len(JOBS)
    # moto's CreateDeployment (chalice deploy) resets the stage's method settings, so throttling is set
    # again each time; everything else the step writes is unchanged
    unchanged = [line for line in settings_lines if not line.startswith("api: throttling")]
    assert all(line.endswith(": unchanged") for line in unchanged), settings_lines
    throttling = apigateway.get_stage(restApiId=api_id, stageName=deploy.API_STAGE)["methodSettings"]["*/*"]
    assert (throttling["throttlingRateLimit"], throttling["throttlingBurstLimit"]) == deploy.THROTTLING[STAGE]
    assert snapshot(moto_endpoint, project_copy) == before

    # a rollback deploys code only: the tables stack is read, never taken back
    rollback = run_deploy(moto_endpoint, project_copy, "--keep-tables")

    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert f"tables: stack {deploy.stack_name(STAGE)} kept as it is (CREATE_COMPLETE)" in rollback.stdout.splitlines()
    assert snapshot(moto_endpoint, project_copy) == before


def test_a_failing_step_stops_with_one_error_line(moto_endpoint: str, tmp_path: Path) -> None:
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text((PROJECT_DIR / ".chalice" / "config.json").read_text())

    result = run_deploy(moto_endpoint, tmp_path)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'infra' / 'tables.yaml'} not found"]

    rollback = run_deploy(moto_endpoint, tmp_path, "--keep-tables", stage="prod")

    assert rollback.returncode == 1
    assert rollback.stderr.splitlines() == [
        "error: stack anes-prod-tables does not exist; deploy without --keep-tables first"
    ]
