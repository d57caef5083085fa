"""DynamoDB stream consumers: ``update_reputation`` and ``send_notices``, both on the Invitations stream.

Two consumers is what DynamoDB Streams serves per shard without throttling; a third
would need a fan-out (EventBridge Pipes, Kinesis Data Streams).

Each consumer reports failed records with Powertools ``BatchProcessor`` so Lambda (with
``ReportBatchItemFailures`` on the mapping) or the local event pump redelivers from the
first failure; consumers are idempotent, since redelivery also repeats later records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalice import Blueprint

from chalicelib.config import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
    from chalice.app import DynamoDBEvent

bp = Blueprint(__name__)


@bp.on_dynamodb_record(
    stream_arn=get_settings().invitations_stream_arn,
    name="update_reputation",
    batch_size=100,
    # Re-reading is harmless (each fact is applied once), losing records is not.
    starting_position="TRIM_HORIZON",
)
def update_reputation(event: DynamoDBEvent) -> dict[str, Any]:
    """Keep each doctor's reputation (ratings, penalties, star level, discovery order) from reviews,
    complaints and confirmations: O(1) work per record, each fact applied once."""
    # The batch utility pulls in asyncio and more; import it only where it runs.
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    from chalicelib.clock import utc_now
    from chalicelib.reputation.aggregates import apply_record

    def apply(record: DynamoDBRecord) -> None:
        apply_record(record.raw_event, utc_now())

    return process_partial_response(
        event=event.to_dict(),
        record_handler=apply,
        processor=BatchProcessor(event_type=EventType.DynamoDBStreams),
        context=event.context,
    )


@bp.on_dynamodb_record(
    stream_arn=get_settings().invitations_stream_arn,
    name="send_notices",
    # Each record may cost a WeChat call (up to its timeout): small batches stay well inside
    # the function's time limit.
    batch_size=10,
    # A notice is marked when sent, so re-reading sends nothing twice; skipping would lose notices.
    starting_position="TRIM_HORIZON",
)
def send_notices(event: DynamoDBEvent) -> dict[str, Any]:
    """Send each new outbox notice through the stage's ``Notifier`` (``notifications.dispatch``).

    Once a notice could not be sent for a reason a retry may fix (WeChat busy or
    unreachable), the rest of the batch is reported failed without calling WeChat again:
    the stream is redelivered from the first failure anyway.
    """
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    from chalicelib.notifications.dispatch import send_notice_record
    from chalicelib.notifications.notifier import NoticeNotSentError

    unavailable: list[NoticeNotSentError] = []

    def send(record: DynamoDBRecord) -> None:
        if unavailable:
            raise NoticeNotSentError(f"skipped after an earlier failure ({unavailable[0].reason})")
        try:
            send_notice_record(record.raw_event)
        except NoticeNotSentError as error:
            unavailable.append(error)
            raise

    return process_partial_response(
        event=event.to_dict(),
        record_handler=send,
        processor=BatchProcessor(event_type=EventType.DynamoDBStreams),
        context=event.context,
    )
