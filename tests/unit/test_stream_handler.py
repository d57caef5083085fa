"""The ``count_invitation_changes`` stream consumer, invoked as Lambda invokes it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib import system
from tests.unit.stream_records import stream_record

if TYPE_CHECKING:
    from chalice.test import Client

FUNCTION = "count_invitation_changes"
TABLE = "anes-unit-invitations"


def invoke(client: Client, records: list[dict[str, Any]]) -> Any:
    return client.lambda_.invoke(FUNCTION, {"Records": records}).payload


def test_the_consumer_subscribes_to_the_invitations_stream() -> None:
    from chalice.app import DynamoDBEventConfig

    from app import app

    sources = [source for source in app.event_sources if isinstance(source, DynamoDBEventConfig)]
    consumer = next(source for source in sources if source.name == FUNCTION)

    assert consumer.stream_arn.split(":table/")[1].startswith(f"{TABLE}/stream/")
    assert consumer.starting_position == "TRIM_HORIZON"


def test_a_batch_is_counted(client: Client) -> None:
    # GIVEN a batch of an insert and a modify
    records = [stream_record("e-1", "INSERT", "100"), stream_record("e-2", "MODIFY", "101")]

    # WHEN the consumer receives it
    payload = invoke(client, records)

    # THEN nothing failed and both are counted against the Invitations table
    assert payload == {"batchItemFailures": []}
    assert system.change_counts(TABLE) == {"inserts": 1, "modifies": 1, "removes": 0}


def test_a_redelivered_batch_changes_nothing(client: Client) -> None:
    records = [stream_record("e-1", "INSERT", "100"), stream_record("e-2", "REMOVE", "101")]
    invoke(client, records)
    counts = system.change_counts(TABLE)
    assert counts == {"inserts": 1, "modifies": 0, "removes": 1}

    payload = invoke(client, records)

    assert payload == {"batchItemFailures": []}
    assert system.change_counts(TABLE) == counts


def test_a_malformed_record_is_reported_alone(client: Client) -> None:
    # GIVEN a batch whose first record has an unknown event name
    records = [stream_record("e-bad", "BOGUS", "200"), stream_record("e-good", "INSERT", "201")]

    # WHEN the consumer receives it
    payload = invoke(client, records)

    # THEN only the malformed record is reported, by its sequence number, and the good one is applied
    assert payload == {"batchItemFailures": [{"itemIdentifier": "200"}]}
    assert system.change_counts(TABLE) == {"inserts": 1, "modifies": 0, "removes": 0}


def test_a_record_after_a_good_one_can_fail_alone(client: Client) -> None:
    records = [stream_record("e-good", "MODIFY", "300"), stream_record("e-bad", "BOGUS", "301")]

    payload = invoke(client, records)

    assert payload == {"batchItemFailures": [{"itemIdentifier": "301"}]}
    assert system.change_counts(TABLE) == {"inserts": 0, "modifies": 1, "removes": 0}
