"""Reading why DynamoDB cancelled a transaction.

DynamoDB answers a cancelled ``TransactWriteItems`` with one reason per action, in the
order PynamoDB sent them: condition checks, then deletes, then puts, then updates (each
group in the order added). ``ConditionalCheckFailed`` means a condition was false;
``TransactionConflict`` means another transaction held one of the items at that moment,
which a retry usually clears.

Example
-------
>>> cancellation_codes(error)  # doctest: +SKIP
[None, 'ConditionalCheckFailed']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.errors import ApiError

if TYPE_CHECKING:
    from pynamodb.exceptions import TransactWriteError

CONDITION_FAILED = "ConditionalCheckFailed"
CONFLICT = "TransactionConflict"


def cancellation_codes(error: TransactWriteError, actions: int = 0) -> list[str | None]:
    """The reason code of each action (None where the action was fine), padded to ``actions``."""
    codes = [reason.code if reason else None for reason in error.cancellation_reasons or []]
    return codes + [None] * (actions - len(codes))


def busy() -> ApiError:
    """409 for a transaction that lost a race to a concurrent one: retrying is safe."""
    return ApiError(409, "conflict", "Another request changed this at the same moment; retry", "操作冲突，请重试")
