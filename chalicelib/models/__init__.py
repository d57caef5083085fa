"""PynamoDB models: the single source of truth for every table, key and index.

Local runs and tests create the tables from these classes (``tables.ensure_tables``);
the deploy template must match them.
"""

from __future__ import annotations

from chalicelib.models.idempotency import IdempotencyRecord
from chalicelib.models.invitations import InvitationsTable
from chalicelib.models.ledger import LedgerTable
from chalicelib.models.users import UsersTable

TABLE_MODELS = (UsersTable, InvitationsTable, LedgerTable, IdempotencyRecord)

__all__ = ["TABLE_MODELS", "IdempotencyRecord", "InvitationsTable", "LedgerTable", "UsersTable"]
