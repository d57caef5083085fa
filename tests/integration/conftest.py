"""Integration tests: the real DynamoDB engine (DynamoDB Local), no mocks.

A session fixture starts DynamoDB Local in memory on a free port (or uses the one named
by ``TEST_DYNAMODB_ENDPOINT``), and every run gets its own table prefix, so runs never
see each other's data. The environment is set here, before anything imports the models.
"""

from __future__ import annotations

import os
import uuid

from devstack.stack import stage_environment

RUN_PREFIX = f"anes-it-{uuid.uuid4().hex[:8]}"
os.environ.update(
    {
        **stage_environment("local"),
        "TABLE_PREFIX": RUN_PREFIX,
        "AWS_DEFAULT_REGION": "cn-north-1",
        "AWS_ACCESS_KEY_ID": "integration",
        "AWS_SECRET_ACCESS_KEY": "integration",
    }
)
os.environ.pop("AWS_PROFILE", None)

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devstack import dynamodb_local
from devstack.processes import ProcessGroup, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import FakeProvider, Ordered, People

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _point_sdks_at(endpoint: str) -> None:
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
    os.environ["AWS_ENDPOINT_URL_DYNAMODB_STREAMS"] = endpoint


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    """DynamoDB Local, started for this session unless one is given."""
    given = os.environ.get("TEST_DYNAMODB_ENDPOINT")
    if given:
        _point_sdks_at(given)
        yield given
        return
    java = dynamodb_local.check_java()
    jar_dir = dynamodb_local.install(PROJECT_DIR / ".local" / "dynamodb-local")
    port = free_port()
    group = ProcessGroup()
    try:
        dynamodb_local.start(group, java, jar_dir, port, None)
        endpoint = f"http://127.0.0.1:{port}"
        _point_sdks_at(endpoint)
        yield endpoint
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def tables(dynamodb_endpoint: str) -> list[str]:
    """Every table of this run, created from the models."""
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import ensure_tables

    return ensure_tables(TABLE_MODELS)


@pytest.fixture(scope="session")
def ddb(dynamodb_endpoint: str):
    """A plain DynamoDB client, for arranging and inspecting items."""
    import boto3

    return boto3.client("dynamodb")


# --- the invitation flow's fixtures (tests/integration/flow_helpers.py has the helpers) -----------


@pytest.fixture(scope="module")
def admin(tables: list[str]) -> Principal:
    """An admin, made once per module."""
    from chalicelib.clock import utc_now
    from tests.integration.flow_helpers import make_admin

    return make_admin(utc_now())


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """The in-memory payment provider, installed as the ``sandbox`` channel for one test."""
    from tests.integration.flow_helpers import FakeProvider, installed

    with installed(FakeProvider()) as fake:
        yield fake


@pytest.fixture
def people(admin: Principal, provider: FakeProvider) -> People:
    """A verified doctor with a working day, and a patient."""
    from tests.integration.flow_helpers import make_people

    return make_people(admin)


@pytest.fixture
def unpaid(people: People) -> Ordered:
    """An invitation of ``people`` with its payment order opened, not paid."""
    from tests.integration.flow_helpers import ordered_invitation

    return ordered_invitation(people)


@pytest.fixture(scope="module")
def api(tables: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``chalice.test.Client`` of the app against DynamoDB Local."""
    from tests.integration.flow_helpers import api_client

    with api_client(tmp_path_factory.mktemp("chalice")) as client:
        yield client
