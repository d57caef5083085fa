"""``make deploy STAGE=dev|prod``: the one deploy sequence of a stage, safe to run again.

1. **tables**: create or update the CloudFormation stack ``anes-<stage>-tables`` from
   ``infra/tables.yaml`` (parameters ``Stage`` and ``TablePrefix=anes-<stage>``); an unchanged
   template and parameters make no call that could change anything. Chalice cannot create
   tables, and the stream ARN it needs exists only once the table does.
2. **config**: write what the app reads from the stack's outputs — ``TABLE_PREFIX`` (checked
   against the four table-name outputs) and ``INVITATIONS_STREAM_ARN`` — into
   ``stages.<stage>.environment_variables`` of ``.chalice/config.json``; every other key and
   stage is kept as it is.
3. **chalice**: ``chalice deploy --stage <stage>`` (functions, API, schedules, stream mappings).
4. **streams**: on every DynamoDB stream mapping of the stage's functions, set what Chalice
   cannot: ``ReportBatchItemFailures``, bounded retries and record age, bisect-on-error, and the
   stack's SQS queue as the on-failure destination; only where a setting differs.
5. **api**: what Chalice cannot set on the REST API: throttling of the stage (``THROTTLING``) and
   the gateway's own errors (unknown route, denied, throttled, 4xx/5xx) in the API's error shape
   with the front end's CORS origin (``gateway_responses``); only where they differ.
6. **jobs**: a scheduled function that fails is not retried by Lambda (the next run comes within
   its period; a retry would overlap it): ``MaximumRetryAttempts 0`` on every job.

Each step prints what it did (``unchanged`` when nothing); a failure prints one ``error:`` line
and exits 1. Nothing secret is printed: names and ARNs only.

``--dry-run-endpoint URL`` sends every AWS call (boto3 here, and ``chalice deploy``) to an AWS
double such as a moto server, with fake credentials, so no account can be touched;
``--project-dir`` deploys a copy of the project (the dry-run test uses one).

Example
-------
>>> desired = desired_mapping_settings("arn:aws-cn:sqs:cn-north-1:1:q")
>>> sorted(mapping_changes({**desired, "MaximumRetryAttempts": -1}, desired))
['MaximumRetryAttempts']
>>> mapping_changes(desired, desired)
{}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.errors import StackError

if TYPE_CHECKING:
    from collections.abc import Mapping

PROJECT_DIR = Path(__file__).resolve().parent.parent
APP_NAME = "anes"
STAGES = ("dev", "prod")
PINNED_PYTHON = (3, 11)
"""Chalice deploys the runtime of the Python it runs under (``lambda_python_version``): pin it here."""
TEMPLATE = Path("infra") / "tables.yaml"

TABLE_OUTPUTS = {
    # stack output (infra/tables.yaml) → table suffix the app derives from TABLE_PREFIX (Settings.*_table)
    "UsersTableName": "users",
    "InvitationsTableName": "invitations",
    "LedgerTableName": "ledger",
    "IdempotencyTableName": "idempotency",
}
STREAM_ARN_OUTPUT = "InvitationsStreamArn"
QUEUE_ARN_OUTPUT = "StreamFailureQueueArn"

MAX_RETRY_ATTEMPTS = 5
"""Retries of a failing batch (bisected each time) before it goes to the failure queue."""
MAX_RECORD_AGE_SECONDS = 3600
"""A record still failing after an hour goes to the failure queue instead of holding its shard;
the stream keeps it 24 h, long enough to re-read it from the queue message (docs/operations.md)."""
STACK_WAIT = {"Delay": 10, "MaxAttempts": 180}
MAPPING_SETTLED = ("Enabled", "Disabled")


API_STAGE = "api"
THROTTLING = {"dev": (20.0, 40), "prod": (100.0, 200)}
"""Requests per second and burst of the whole API stage."""
GATEWAY_ERRORS = {
    # API Gateway response type → status and the error the API's clients know (devstack/api_server.py does the same)
    "MISSING_AUTHENTICATION_TOKEN": (
        "404",
        "route_not_found",
        "No such route",
        "\u8bf7\u6c42\u7684\u8def\u5f84\u4e0d\u5b58\u5728",
    ),
    "ACCESS_DENIED": ("403", "forbidden", "Access denied", "\u65e0\u6743\u8bbf\u95ee"),
    "UNAUTHORIZED": ("401", "unauthorized", "Sign in first", "\u8bf7\u5148\u767b\u5f55"),
    "THROTTLED": (
        "429",
        "rate_limited",
        "Too many requests; retry shortly",
        "\u8bf7\u6c42\u8fc7\u4e8e\u9891\u7e41\uff0c\u8bf7\u7a0d\u540e\u91cd\u8bd5",
    ),
    "DEFAULT_4XX": (
        None,
        "gateway_error",
        "The gateway refused the request",
        "\u7f51\u5173\u62d2\u7edd\u4e86\u8bf7\u6c42",
    ),
    "DEFAULT_5XX": (None, "gateway_error", "The gateway failed", "\u7f51\u5173\u9519\u8bef"),
}
JOBS = (
    "heartbeat",
    "expire_invitations",
    "auto_confirm",
    "follow_up_payments",
    "follow_up_refunds",
    "settle_payouts",
    "lift_penalties",
)


class DeployError(StackError):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Target:
    """Where the calls go: a real account (the default credential chain) or an AWS double."""

    region: str | None
    endpoint: str | None = None

    def environment(self, base: Mapping[str, str], region: str) -> dict[str, str]:
        """The environment for ``chalice deploy`` (the region boto3 resolved here; in a dry run, the double
        and fake credentials only)."""
        env = dict(base)
        env["AWS_DEFAULT_REGION"] = region
        if self.endpoint:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                env.pop(name, None)
            env.update(AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="dryrun", AWS_SECRET_ACCESS_KEY="dryrun")
        return env

    def clients(self) -> Clients:
        import boto3

        session = (
            boto3.session.Session(aws_access_key_id="dryrun", aws_secret_access_key="dryrun", region_name=self.region)
            if self.endpoint
            else boto3.session.Session(region_name=self.region)
        )
        if not session.region_name:
            raise DeployError("no AWS region: set AWS_DEFAULT_REGION (e.g. cn-north-1) or a profile's region")

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=self.endpoint)

        return Clients(
            cloudformation=client("cloudformation"),
            lambda_=client("lambda"),
            apigateway=client("apigateway"),
            sts=client("sts"),
            region=session.region_name,
        )


@dataclass(frozen=True)
class Clients:
    """The few AWS clients the sequence calls itself (``chalice deploy`` makes its own)."""

    cloudformation: Any
    lambda_: Any
    apigateway: Any
    sts: Any
    region: str


def say(step: str, message: str) -> None:
    print(f"{step}: {message}", flush=True)


# ---------------------------------------------------------------- pure decisions


def stack_name(stage: str) -> str:
    return f"{APP_NAME}-{stage}-tables"


def table_prefix(stage: str) -> str:
    return f"{APP_NAME}-{stage}"


def stack_parameters(stage: str) -> dict[str, str]:
    return {"Stage": stage, "TablePrefix": table_prefix(stage)}


def stack_is_current(
    template: str, deployed_template: str | Mapping[str, Any], wanted: Mapping[str, str], current: Mapping[str, str]
) -> bool:
    """True when the stack already runs this template with these parameters (no update to ask for).

    CloudFormation hands a JSON template back parsed and a YAML one as the text it was given.
    """
    if any(current.get(key) != value for key, value in wanted.items()):
        return False
    if isinstance(deployed_template, str):
        return deployed_template == template
    try:
        return json.loads(template) == deployed_template
    except ValueError:
        return False


def config_values(outputs: Mapping[str, str], stage: str) -> dict[str, str]:
    """The environment variables the app reads (``TABLE_PREFIX``, ``INVITATIONS_STREAM_ARN``), from the
    stack's outputs; refuses tables the app would not find under the names it derives from the prefix."""
    missing = [name for name in (*TABLE_OUTPUTS, STREAM_ARN_OUTPUT, QUEUE_ARN_OUTPUT) if not outputs.get(name)]
    if missing:
        raise DeployError(
            f"the stack {stack_name(stage)} has no output {', '.join(missing)}; is infra/tables.yaml current?"
        )
    prefix = table_prefix(stage)
    for name, suffix in TABLE_OUTPUTS.items():
        if outputs[name] != f"{prefix}-{suffix}":
            raise DeployError(f"stack output {name} is {outputs[name]!r}, the app expects {prefix}-{suffix}")
    stream_arn = outputs[STREAM_ARN_OUTPUT]
    if f":table/{prefix}-invitations/stream/" not in stream_arn:
        raise DeployError(f"stack output {STREAM_ARN_OUTPUT} is not a stream of {prefix}-invitations")
    return {"TABLE_PREFIX": prefix, "INVITATIONS_STREAM_ARN": stream_arn}


def update_stage_config(text: str, stage: str, values: Mapping[str, str]) -> tuple[str, list[str]]:
    """``.chalice/config.json`` with ``values`` set in the stage's environment variables, and the keys
    that changed; everything else kept (JSON, indent 2, trailing newline)."""
    config = json.loads(text)
    stages = config.get("stages", {})
    if stage not in stages:
        raise DeployError(f"stage {stage!r} is not in .chalice/config.json")
    variables = stages[stage].setdefault("environment_variables", {})
    changed = [key for key, value in values.items() if variables.get(key) != value]
    variables.update(values)
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n", changed


def desired_mapping_settings(queue_arn: str) -> dict[str, Any]:
    """What every stream mapping must have: partial-batch failures, bounded retries, bisection, a DLQ."""
    return {
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
        "BisectBatchOnFunctionError": True,
        "MaximumRecordAgeInSeconds": MAX_RECORD_AGE_SECONDS,
        "DestinationConfig": {"OnFailure": {"Destination": queue_arn}},
    }


def _failure_destination(settings: Mapping[str, Any]) -> str | None:
    return ((settings.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")


def mapping_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``desired`` that ``current`` (a GetEventSourceMapping answer) lacks; empty: nothing to do."""
    changes: dict[str, Any] = {}
    for key, value in desired.items():
        if key == "DestinationConfig":
            if _failure_destination(current) != _failure_destination(desired):
                changes[key] = value
        elif key == "FunctionResponseTypes":
            if sorted(current.get(key) or []) != sorted(value):
                changes[key] = value
        elif current.get(key) != value:
            changes[key] = value
    return changes


def stage_function(name: str, stage: str) -> bool:
    """Whether a Lambda function name is one Chalice made for this stage (``anes-<stage>-...``)."""
    return name.startswith(f"{APP_NAME}-{stage}-") or name == f"{APP_NAME}-{stage}"


# ---------------------------------------------------------------- the steps


def _stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in error.response.get("Error", {}).get("Message", ""):
            return None
        raise


def _failure_reasons(cloudformation: Any, name: str) -> str:
    """The first failed resources' reasons (CloudFormation's words, no secrets)."""
    try:
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    except Exception:  # the reasons only help; the failure is reported anyway
        return ""
    reasons = [
        f"{event['LogicalResourceId']}: {event.get('ResourceStatusReason', '')}"
        for event in events
        if event.get("ResourceStatus", "").endswith("FAILED")
    ]
    return "; ".join(reasons[:3])


def _wait(cloudformation: Any, waiter: str, name: str, delay: dict[str, int]) -> None:
    from botocore.exceptions import WaiterError

    try:
        cloudformation.get_waiter(waiter).wait(StackName=name, WaiterConfig=delay)
    except WaiterError:
        stack = _stack(cloudformation, name) or {}
        raise DeployError(
            f"stack {name} ended {stack.get('StackStatus', 'unknown')}: {_failure_reasons(cloudformation, name)}"
        ) from None


def deploy_tables(cloudformation: Any, stage: str, template: str, delay: dict[str, int]) -> dict[str, str]:
    """Step 1: create or update the tables stack; its outputs."""
    from botocore.exceptions import ClientError

    name, wanted = stack_name(stage), stack_parameters(stage)
    parameters = [{"ParameterKey": key, "ParameterValue": value} for key, value in wanted.items()]
    stack = _stack(cloudformation, name)
    if stack is None:
        say("tables", f"creating stack {name}")
        cloudformation.create_stack(
            StackName=name,
            TemplateBody=template,
            Parameters=parameters,
            EnableTerminationProtection=True,
            Tags=[{"Key": "app", "Value": APP_NAME}, {"Key": "stage", "Value": stage}],
        )
        _wait(cloudformation, "stack_create_complete", name, delay)
        say("tables", f"stack {name} created")
    else:
        status = stack["StackStatus"]
        if status.endswith("_IN_PROGRESS"):
            raise DeployError(f"stack {name} is {status}; wait for it to finish and run again")
        if status in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED"):
            raise DeployError(
                f"stack {name} is {status} (its creation failed: {_failure_reasons(cloudformation, name)}); "
                "fix the cause, delete that stack in the console (it holds no table) and run again"
            )
        current = {item["ParameterKey"]: item.get("ParameterValue", "") for item in stack.get("Parameters", [])}
        deployed = cloudformation.get_template(StackName=name, TemplateStage="Original")["TemplateBody"]
        if stack_is_current(template, deployed, wanted, current):
            say("tables", f"stack {name} unchanged")
        else:
            try:
                cloudformation.update_stack(StackName=name, TemplateBody=template, Parameters=parameters)
            except ClientError as error:
                if "No updates are to be performed" not in error.response.get("Error", {}).get("Message", ""):
                    raise
                say("tables", f"stack {name} unchanged")
            else:
                say("tables", f"updating stack {name}")
                _wait(cloudformation, "stack_update_complete", name, delay)
                say("tables", f"stack {name} updated")
        if not stack.get("EnableTerminationProtection"):
            cloudformation.update_termination_protection(StackName=name, EnableTerminationProtection=True)
            say("tables", f"termination protection turned on for {name}")
    final = _stack(cloudformation, name) or {}
    return {item["OutputKey"]: item["OutputValue"] for item in final.get("Outputs", [])}


def existing_outputs(cloudformation: Any, stage: str) -> dict[str, str]:
    """Step 1 of a rollback (``--keep-tables``): the tables stack's outputs, the stack left as it is."""
    name = stack_name(stage)
    stack = _stack(cloudformation, name)
    if stack is None:
        raise DeployError(f"stack {name} does not exist; deploy without --keep-tables first")
    say("tables", f"stack {name} kept as it is ({stack['StackStatus']})")
    return {item["OutputKey"]: item["OutputValue"] for item in stack.get("Outputs", [])}


def write_config(project_dir: Path, stage: str, values: Mapping[str, str]) -> None:
    """Step 2: the stack's outputs into the stage's environment variables (written only on a change)."""
    path = project_dir / ".chalice" / "config.json"
    text, changed = update_stage_config(path.read_text(encoding="utf-8"), stage, values)
    if changed:
        path.write_text(text, encoding="utf-8")
        say("config", f"{path.relative_to(project_dir)}: stages.{stage} {', '.join(changed)} set")
    else:
        say("config", f"{path.relative_to(project_dir)}: stages.{stage} unchanged")


def chalice_command(project_dir: Path, stage: str) -> list[str]:
    """``chalice deploy`` from this interpreter's environment (the venv's chalice, the pinned Python)."""
    beside = Path(sys.executable).parent / "chalice"
    executable = str(beside) if beside.exists() else shutil.which("chalice")
    if executable is None:
        raise DeployError("chalice is not installed; run `make` targets from the project's venv")
    return [executable, "--project-dir", str(project_dir), "deploy", "--stage", stage]


def chalice_deploy(project_dir: Path, stage: str, env: Mapping[str, str]) -> None:
    """Step 3: ``chalice deploy``; its own output goes straight to the terminal."""
    command = chalice_command(project_dir, stage)
    say("chalice", f"chalice deploy --stage {stage}")
    status = subprocess.run(command, env=dict(env), check=False).returncode
    if status != 0:
        raise DeployError(f"chalice deploy --stage {stage} exited with status {status}; see its output above")
    say("chalice", "deployed")


def _settled(lambda_: Any, uuid: str, timeout: float = 120.0) -> dict[str, Any]:
    """The mapping once it is neither being created nor updated (updates are refused meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        mapping = lambda_.get_event_source_mapping(UUID=uuid)
        if mapping.get("State") in MAPPING_SETTLED or time.monotonic() > deadline:
            return mapping
        time.sleep(2)


def stream_mappings(lambda_: Any, stream_arn: str, stage: str) -> list[dict[str, Any]]:
    """The stage's functions' mappings on the stream."""
    mappings: list[dict[str, Any]] = []
    for page in lambda_.get_paginator("list_event_source_mappings").paginate(EventSourceArn=stream_arn):
        mappings.extend(
            mapping
            for mapping in page["EventSourceMappings"]
            if stage_function(mapping["FunctionArn"].rsplit(":", 1)[-1], stage)
        )
    return mappings


def deployed_stream_uuids(project_dir: Path, stage: str) -> dict[str, str]:
    """The stream mappings ``chalice deploy`` recorded for the stage: uuid → function."""
    path = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    if not path.exists():
        return {}
    resources = json.loads(path.read_text(encoding="utf-8")).get("resources", [])
    return {
        resource["event_uuid"]: resource["name"].removesuffix("-dynamodb-event-source")
        for resource in resources
        if resource.get("resource_type") == "dynamodb_event"
    }


def configure_stream_mappings(lambda_: Any, stream_arn: str, queue_arn: str, stage: str, expected: set[str]) -> None:
    """Step 4: failure handling on each mapping, updated only where it differs."""
    desired = desired_mapping_settings(queue_arn)
    mappings = stream_mappings(lambda_, stream_arn, stage)
    if not mappings:
        raise DeployError(f"no function of stage {stage} reads {stream_arn}; did chalice deploy subscribe them?")
    missing = expected - {mapping["UUID"] for mapping in mappings}
    if missing:
        raise DeployError(
            f"chalice recorded stream mappings {', '.join(sorted(missing))} that do not read {stream_arn}"
        )
    for listed in mappings:
        function = listed["FunctionArn"].rsplit(":", 1)[-1]
        mapping = _settled(lambda_, listed["UUID"])
        changes = mapping_changes(mapping, desired)
        if not changes:
            say("streams", f"{function} ({listed['UUID']}): unchanged")
            continue
        lambda_.update_event_source_mapping(UUID=listed["UUID"], **changes)
        say("streams", f"{function} ({listed['UUID']}): set {', '.join(sorted(changes))}")


def gateway_responses(frontend_url: str) -> dict[str, dict[str, Any]]:
    """The gateway responses to put: response type → ``put_gateway_response`` arguments (without the API id)."""
    from chalicelib.errors import error_body

    responses = {}
    for kind, (status, code, message, message_zh) in GATEWAY_ERRORS.items():
        body = json.dumps(error_body(code, message, message_zh, request_id="REQUEST_ID"), ensure_ascii=False)
        response: dict[str, Any] = {
            "responseType": kind,
            "responseParameters": {
                "gatewayresponse.header.Access-Control-Allow-Origin": f"'{frontend_url}'",
                "gatewayresponse.header.X-Request-Id": "context.requestId",
            },
            "responseTemplates": {"application/json": body.replace('"REQUEST_ID"', '"$context.requestId"')},
        }
        if status:
            response["statusCode"] = status
        responses[kind] = response
    return responses


def _rest_api_id(project_dir: Path, stage: str) -> str:
    path = project_dir / ".chalice" / "deployed" / f"{stage}.json"
    resources = json.loads(path.read_text(encoding="utf-8")).get("resources", []) if path.exists() else []
    for resource in resources:
        if resource.get("resource_type") == "rest_api":
            return str(resource["rest_api_id"])
    raise DeployError(f"chalice recorded no REST API for stage {stage} in {path}")


def configure_api(apigateway: Any, rest_api_id: str, stage: str, frontend_url: str) -> None:
    """Step 5: stage throttling and gateway responses, each written only where it differs."""
    rate, burst = THROTTLING[stage]
    settings = apigateway.get_stage(restApiId=rest_api_id, stageName=API_STAGE).get("methodSettings", {})
    current = settings.get("*/*", {})
    if (current.get("throttlingRateLimit"), current.get("throttlingBurstLimit")) == (rate, burst):
        say("api", f"throttling {rate:g}/s, burst {burst}: unchanged")
    else:
        apigateway.update_stage(
            restApiId=rest_api_id,
            stageName=API_STAGE,
            patchOperations=[
                {"op": "replace", "path": "/*/*/throttling/rateLimit", "value": f"{rate:g}"},
                {"op": "replace", "path": "/*/*/throttling/burstLimit", "value": str(burst)},
            ],
        )
        say("api", f"throttling {rate:g}/s, burst {burst}: set")
    for kind, wanted in gateway_responses(frontend_url).items():
        try:
            existing = apigateway.get_gateway_response(restApiId=rest_api_id, responseType=kind)
        except apigateway.exceptions.NotFoundException:
            existing = {}
        same = all(existing.get(key) == value for key, value in wanted.items())
        if same:
            say("api", f"gateway response {kind}: unchanged")
            continue
        apigateway.put_gateway_response(restApiId=rest_api_id, **wanted)
        say("api", f"gateway response {kind}: set")


def configure_jobs(lambda_: Any, stage: str) -> None:
    """Step 6: no Lambda retry of a failed scheduled run (the next run is due within its period)."""
    for job in JOBS:
        name = f"{APP_NAME}-{stage}-{job}"
        try:
            current = lambda_.get_function_event_invoke_config(FunctionName=name)
        except lambda_.exceptions.ResourceNotFoundException:
            current = {}
        if current.get("MaximumRetryAttempts") == 0:
            say("jobs", f"{name}: unchanged")
            continue
        lambda_.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
        say("jobs", f"{name}: no retries")


def deploy(stage: str, project_dir: Path, target: Target, keep_tables: bool = False) -> None:
    """The whole sequence; raises DeployError (or a botocore error) at the first failure.

    ``keep_tables`` (a rollback to an older commit) reads the tables stack instead of updating it:
    tables are never taken back to an older template."""
    if sys.version_info[:2] != PINNED_PYTHON:
        pinned = ".".join(map(str, PINNED_PYTHON))
        raise DeployError(
            f"Chalice deploys the runtime of the Python it runs under ({sys.version_info.major}."
            f"{sys.version_info.minor}); run it with Python {pinned}, the pinned Lambda runtime"
        )
    template_path = project_dir / TEMPLATE
    if not keep_tables and not template_path.exists():
        raise DeployError(f"{template_path} not found")
    if target.endpoint:
        say("dry run", f"every AWS call goes to {target.endpoint} with fake credentials (region {target.region})")
    clients = target.clients()
    account = clients.sts.get_caller_identity()["Account"]
    say("deploy", f"stage {stage} to account {account}, region {clients.region}")
    delay = {"Delay": 1, "MaxAttempts": 60} if target.endpoint else STACK_WAIT
    if keep_tables:
        outputs = existing_outputs(clients.cloudformation, stage)
    else:
        outputs = deploy_tables(clients.cloudformation, stage, template_path.read_text(encoding="utf-8"), delay)
    values = config_values(outputs, stage)
    write_config(project_dir, stage, values)
    chalice_deploy(project_dir, stage, target.environment(os.environ, clients.region))
    configure_stream_mappings(
        clients.lambda_,
        values["INVITATIONS_STREAM_ARN"],
        outputs[QUEUE_ARN_OUTPUT],
        stage,
        set(deployed_stream_uuids(project_dir, stage)),
    )
    frontend_url = json.loads((project_dir / ".chalice" / "config.json").read_text(encoding="utf-8"))["stages"][stage][
        "environment_variables"
    ]["FRONTEND_URL"]
    configure_api(clients.apigateway, _rest_api_id(project_dir, stage), stage, frontend_url)
    configure_jobs(clients.lambda_, stage)
    say("deploy", f"stage {stage} deployed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument(
        "--dry-run-endpoint",
        metavar="URL",
        help="send every AWS call to this AWS double (e.g. a moto server) with fake credentials",
    )
    parser.add_argument(
        "--keep-tables",
        action="store_true",
        help="leave the tables stack as it is and use its outputs (rolling back to an older commit)",
    )
    parser.add_argument(
        "--project-dir", type=Path, default=PROJECT_DIR, help="the project to deploy (default: this one)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if args.dry_run_endpoint:
        if not args.dry_run_endpoint.startswith(("http://", "https://")):
            print(f"error: --dry-run-endpoint must be an http(s) URL, got {args.dry_run_endpoint!r}", file=sys.stderr)
            return 2
        target = Target(region=region or "cn-north-1", endpoint=args.dry_run_endpoint)
    else:
        target = Target(region=region)
    try:
        deploy(args.stage, args.project_dir.resolve(), target, keep_tables=args.keep_tables)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # botocore's errors name the call and the reason, never a credential
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
