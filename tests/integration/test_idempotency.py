"""Idempotency-Key on the real engine: concurrent duplicates run the work exactly once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import idempotency
from chalicelib.errors import ApiError
from chalicelib.idempotency import replay_or_run

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

THREADS = 10
SCOPE = "POST /v1/payments"
BODY = {"invitation_id": "i-1", "channel": "wechat", "scene": "jsapi"}
IN_USE = "idempotency_key_in_use"
REUSED = "idempotency_key_reused"


@pytest.fixture(autouse=True)
def store(tables: list[str]) -> Iterator[None]:
    """A persistence layer made after the SDKs point at DynamoDB Local."""
    idempotency.reset()
    yield
    idempotency.reset()


def together(count: int, action: Callable[[int], Any], on_answer: Callable[[Any], None] | None = None) -> list[Any]:
    """Run ``action(index)`` on ``count`` threads released at once.

    Each outcome is the returned value, an ``ApiError``'s code, or the ``repr`` of any other
    exception (which no assertion below accepts).
    """
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            outcome: Any = action(index)
        except ApiError as error:
            outcome = error.code
        except Exception as error:  # a 500 in the making: reported, never swallowed
            outcome = repr(error)
        if on_answer is not None:
            on_answer(outcome)
        return outcome

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


class Work:
    """The money-moving step: counts its runs; optionally holds until the duplicates have answered."""

    def __init__(self, hold_until: threading.Event | None = None) -> None:
        self.runs = 0
        self._lock = threading.Lock()
        self._hold_until = hold_until

    def __call__(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.runs += 1
            run_number = self.runs
        if self._hold_until is not None:
            assert self._hold_until.wait(timeout=60), "the duplicates never answered"
        return 201, {"payment_id": f"pay-{run_number}", "amount_fen": 50000}


def test_ten_duplicates_while_the_first_runs_get_409_in_use_and_the_work_runs_once() -> None:
    # GIVEN ten identical requests released at once; whichever claims the key holds it
    # until the nine others have answered
    key = f"k-{uuid.uuid4().hex}"
    others_answered = threading.Event()
    answers: list[Any] = []
    answers_lock = threading.Lock()

    def on_answer(outcome: Any) -> None:
        with answers_lock:
            answers.append(outcome)
            if len(answers) >= THREADS - 1:
                others_answered.set()

    work = Work(hold_until=others_answered)

    # WHEN they all run
    outcomes = together(
        THREADS,
        lambda _: replay_or_run(key, scope=SCOPE, caller="u-1", body=BODY, run=work),
        on_answer,
    )

    # THEN the work ran once, and every duplicate was told to retry later
    assert work.runs == 1
    first = (201, {"payment_id": "pay-1", "amount_fen": 50000})
    assert sorted(outcomes, key=repr) == sorted([first] + [IN_USE] * (THREADS - 1), key=repr)
    # and the retry that follows gets the stored response
    assert replay_or_run(key, scope=SCOPE, caller="u-1", body=BODY, run=work) == first
    assert work.runs == 1


def test_ten_identical_requests_at_once_run_the_work_exactly_once() -> None:
    # GIVEN ten identical requests released at once, with work that returns at once
    key = f"k-{uuid.uuid4().hex}"
    work = Work()

    # WHEN they all run
    outcomes = together(THREADS, lambda _: replay_or_run(key, scope=SCOPE, caller="u-1", body=BODY, run=work))

    # THEN one ran; every other got that response replayed or a 409 to retry, never a second run or a 500
    assert work.runs == 1
    first = (201, {"payment_id": "pay-1", "amount_fen": 50000})
    assert outcomes.count(first) >= 1
    assert all(outcome in (first, IN_USE) for outcome in outcomes), outcomes


def test_the_same_key_from_ten_callers_at_once_runs_ten_times_each_with_its_own_answer() -> None:
    key = f"k-{uuid.uuid4().hex}"

    def action(index: int) -> tuple[int, dict[str, Any]]:
        return replay_or_run(
            key, scope=SCOPE, caller=f"u-{index}", body=BODY, run=lambda: (201, {"owner": f"u-{index}"})
        )

    outcomes = together(THREADS, action)

    assert outcomes == [(201, {"owner": f"u-{index}"}) for index in range(THREADS)]


def test_concurrent_requests_with_one_key_and_two_bodies_never_run_twice() -> None:
    # GIVEN one key sent at once with two different bodies (a client bug)
    key = f"k-{uuid.uuid4().hex}"
    bodies = [BODY, {**BODY, "invitation_id": "i-2"}]
    work = Work()

    outcomes = together(
        THREADS, lambda index: replay_or_run(key, scope=SCOPE, caller="u-1", body=bodies[index % 2], run=work)
    )

    # THEN one body's request ran; the other body only ever gets "reused"
    assert work.runs == 1
    first = (201, {"payment_id": "pay-1", "amount_fen": 50000})
    winner = next(index for index, outcome in enumerate(outcomes) if outcome == first)
    for index, outcome in enumerate(outcomes):
        if index % 2 == winner % 2:
            assert outcome in (first, IN_USE), outcome
        else:
            assert outcome == REUSED, outcome


def test_a_claim_whose_answer_was_lost_is_known_as_its_own_and_the_work_runs_once() -> None:
    # GIVEN DynamoDB commits the first claim write and its answer is lost, so botocore sends it again
    from botocore.exceptions import ReadTimeoutError
    from botocore.httpsession import URLLib3Session

    key = f"k-{uuid.uuid4().hex}"
    work = Work()
    client = idempotency._persistence_layer().client
    lost: list[str] = []

    def lose_the_first_answer(request: Any, **_: Any) -> None:
        if not lost and request.headers.get("X-Amz-Target", b"").endswith(b".PutItem"):
            lost.append("PutItem")
            URLLib3Session(timeout=30).send(request)  # it commits...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...and its answer never arrives

    client.meta.events.register("before-send.dynamodb.PutItem", lose_the_first_answer)
    try:
        # WHEN the request runs
        answer = replay_or_run(key, scope=SCOPE, caller="u-1", body=BODY, run=work)
    finally:
        client.meta.events.unregister("before-send.dynamodb.PutItem", lose_the_first_answer)

    # THEN it went on with its own claim (not a 409 in use against itself), the work ran once
    first = (201, {"payment_id": "pay-1", "amount_fen": 50000})
    assert lost == ["PutItem"]
    assert answer == first and work.runs == 1
    # AND a retry gets the stored response, while another request's claim is still refused as in use
    assert replay_or_run(key, scope=SCOPE, caller="u-1", body=BODY, run=work) == first
    assert work.runs == 1
