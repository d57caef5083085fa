"""Unit tests: moto in place of DynamoDB, the app through ``chalice.test.Client``.

The environment is set before anything imports ``app``: Chalice reads the stage's
variables only during an invocation, but the models and the stream ARN read them at
import.
"""

from __future__ import annotations

import os

from devstack.stack import stage_environment

os.environ.update(
    {
        **stage_environment("local"),
        "TABLE_PREFIX": "anes-unit",
        "AWS_DEFAULT_REGION": "cn-north-1",
        "AWS_ACCESS_KEY_ID": "unit",
        "AWS_SECRET_ACCESS_KEY": "unit",
        # moto cannot serve the account-based DynamoDB Streams endpoint of current botocore
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }
)
for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "AWS_PROFILE"):
    os.environ.pop(name, None)  # an endpoint variable would bypass moto

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chalice.test import Client
from moto import mock_aws

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def shared_botocore_session() -> Iterator[None]:
    """One botocore session for every PynamoDB connection of the run.

    PynamoDB gives each connection a session of its own, and a new session re-reads
    botocore's endpoint and service JSON (~0.1 s a client): with a fresh connection per
    model per test, the unit suite would take ten times as long. Clients are still made
    per connection, so moto's stubber (registered when moto is imported, above) sees
    every request.
    """
    import botocore.session

    session = botocore.session.get_session()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pynamodb.connection.base.get_session", lambda: session)
        yield


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest) -> Iterator[None]:
    """scrypt at a tiny cost, so the many accounts the tests make cost microseconds.

    The stored form carries its parameters, so verification works either way; the
    tests of the password module itself keep the real cost.
    """
    if request.module.__name__.endswith("test_security_primitives"):
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("chalicelib.security.passwords.N", 2**4)
        yield


@pytest.fixture
def aws() -> Iterator[None]:
    """A fresh moto account holding every table, created from the models."""
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import ensure_tables

    with mock_aws():
        for model in TABLE_MODELS:
            model._connection = None  # a connection made outside this mock must not leak in
        ensure_tables(TABLE_MODELS)
        yield


@pytest.fixture
def client(aws: None) -> Iterator[Client]:
    """The app, as Lambda would run it, against moto."""
    from app import app

    with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def module_client() -> Iterator[Client]:
    """The app against one moto account for a whole test module.

    For modules whose tests each use their own phones, codes and ids, so they can share
    tables: creating the tables per test is most of a unit test's time.
    """
    from app import app
    from chalicelib.models import TABLE_MODELS
    from chalicelib.models.tables import ensure_tables

    with mock_aws():
        for model in TABLE_MODELS:
            model._connection = None  # a connection made outside this mock must not leak in
        ensure_tables(TABLE_MODELS)
        with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as test_client:
            yield test_client
