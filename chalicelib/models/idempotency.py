"""The table Powertools idempotency writes to (``DynamoDBPersistenceLayer`` defaults).

Powertools reads and writes these items itself; the model exists so the table is
created, and checked, from the same source as the others.
"""

from __future__ import annotations

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.models import Model

from chalicelib.config import get_settings


class IdempotencyRecord(Model):
    """One idempotency record: ``id`` is the hashed key, ``expiration`` its TTL."""

    class Meta:
        table_name = get_settings().idempotency_table
        billing_mode = "PAY_PER_REQUEST"

    id = UnicodeAttribute(hash_key=True)
    expiration = TTLAttribute(null=True)
    in_progress_expiration = NumberAttribute(null=True)
    status = UnicodeAttribute(null=True)
    data = UnicodeAttribute(null=True)
    validation = UnicodeAttribute(null=True)
