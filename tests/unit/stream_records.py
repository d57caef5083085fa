"""Stream records as Lambda delivers them, for the unit tests."""

from __future__ import annotations

from typing import Any

STREAM_ARN = "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/anes-unit-invitations/stream/2026-01-01T00:00:00.000"


def stream_record(event_id: str, event_name: str, sequence: str = "100") -> dict[str, Any]:
    """One DynamoDB stream record as Lambda delivers it."""
    keys = {"pk": {"S": "INVITATION#i-1"}, "sk": {"S": "META"}}
    image = {**keys, "type": {"S": "invitation"}, "status": {"S": "sent"}}
    change: dict[str, Any] = {
        "ApproximateCreationDateTime": 1795629341,
        "Keys": keys,
        "SequenceNumber": sequence,
        "SizeBytes": 10,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if event_name in ("INSERT", "MODIFY"):
        change["NewImage"] = image
    if event_name in ("MODIFY", "REMOVE"):
        change["OldImage"] = image
    return {
        "eventID": event_id,
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "cn-north-1",
        "eventSourceARN": STREAM_ARN,
        "dynamodb": change,
    }
