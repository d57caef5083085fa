"""Reading why DynamoDB cancelled a transaction.

DynamoDB answers a cancelled ``TransactWriteItems`` with one reason per action, in the
order PynamoDB sent them: condition checks, then deletes, then puts, then updates (each
group in the order added). ``ConditionalCheckFailed`` means a condition was false;
``TransactionConflict`` means another transaction held one of the items at that moment,
which a retry usually clears.

``Batch`` names each action and sends them in that order, so a caller learns *which*
action failed by name instead of counting positions.

Example
-------
>>> batch = Batch()  # doctest: +SKIP
>>> batch.put("journal", transaction, condition=JournalTransaction.pk.does_not_exist())  # doctest: +SKIP
>>> batch.update("payer", balance, actions=[...], condition=...)  # doctest: +SKIP
>>> batch.commit(connection)  # raises TransactionCancelledError(failed=["payer"], ...) if the payer lacks funds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.errors import ApiError

if TYPE_CHECKING:
    from pynamodb.models import Model

CONDITION_FAILED = "ConditionalCheckFailed"
CONFLICT = "TransactionConflict"
RETRYABLE = frozenset({CONFLICT, "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"})
"""Reasons a retry can clear: a concurrent transaction, or throttling."""
RETRYABLE_FAILURES = frozenset(
    {
        None,  # no answer at all (connection lost, timeout): the outcome is unknown, a retry is safe
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionInProgressException",
    }
)
"""Whole-call failures (after botocore's own retries) that a later retry can clear: every write is
conditional, so repeating one that did commit changes nothing."""


def cancellation_codes(error: TransactWriteError, actions: int = 0) -> list[str | None]:
    """The reason code of each action (None where the action was fine), padded to ``actions``."""
    codes = [reason.code if reason else None for reason in error.cancellation_reasons or []]
    return codes + [None] * (actions - len(codes))


def busy() -> ApiError:
    """409 for a transaction that lost a race to a concurrent one: retrying is safe."""
    return ApiError(409, "conflict", "Another request changed this at the same moment; retry", "操作冲突，请重试")


class TransactionCancelledError(Exception):
    """DynamoDB cancelled a ``Batch``: the names whose condition failed, and those that met a concurrent write."""

    def __init__(self, failed: list[str], conflicted: list[str]) -> None:
        super().__init__(f"transaction cancelled: failed {failed}, conflicted {conflicted}")
        self.failed = failed
        self.conflicted = conflicted
        self.already_posted = False
        """Set by ``ledger.journal.post``: the posting of this transaction had been written before."""


@dataclass
class Batch:
    """Named actions of one ``TransactWriteItems`` (at most 100), sent in DynamoDB's order."""

    _checks: list[tuple[str, Any]] = field(default_factory=list)
    _deletes: list[tuple[str, Any]] = field(default_factory=list)
    _puts: list[tuple[str, Any]] = field(default_factory=list)
    _updates: list[tuple[str, Any]] = field(default_factory=list)

    def check(self, name: str, model: type[Model], hash_key: str, range_key: str, condition: Any) -> None:
        self._named(name)
        self._checks.append((name, lambda tx: tx.condition_check(model, hash_key, range_key, condition=condition)))

    def delete(self, name: str, item: Model, condition: Any = None) -> None:
        self._named(name)
        self._deletes.append((name, lambda tx: tx.delete(item, condition=condition)))

    def put(self, name: str, item: Model, condition: Any = None) -> None:
        self._named(name)
        self._puts.append((name, lambda tx: tx.save(item, condition=condition)))

    def update(self, name: str, item: Model, actions: list[Any], condition: Any = None) -> None:
        self._named(name)
        self._updates.append((name, lambda tx: tx.update(item, actions=actions, condition=condition)))

    def _named(self, name: str) -> None:
        if name in self.names:
            raise ValueError(f"two actions of one transaction are named {name!r}")

    @property
    def names(self) -> list[str]:
        """The action names in the order DynamoDB reports on them."""
        return [name for name, _ in (*self._checks, *self._deletes, *self._puts, *self._updates)]

    def commit(self, connection: Any, client_request_token: str | None = None) -> None:
        """Send the batch; ``TransactionCancelledError`` names the actions that stopped it."""
        actions = [*self._checks, *self._deletes, *self._puts, *self._updates]
        if not 0 < len(actions) <= 100:
            raise ValueError(f"a transaction holds 1 to 100 actions, got {len(actions)}")
        try:
            with TransactWrite(connection=connection, client_request_token=client_request_token) as transaction:
                for _, add in actions:
                    add(transaction)
        except TransactWriteError as error:
            codes = cancellation_codes(error, len(actions))
            failed = [name for name, code in zip(self.names, codes, strict=False) if code == CONDITION_FAILED]
            conflicted = [name for name, code in zip(self.names, codes, strict=False) if code in RETRYABLE]
            if failed or conflicted:
                raise TransactionCancelledError(failed, conflicted) from error
            if not error.cancellation_reasons and error.cause_response_code in RETRYABLE_FAILURES:
                raise TransactionCancelledError([], ["(whole transaction)"]) from error
            raise
