"""Reputation through DynamoDB Local and its stream: ten reviews and a confirmed complaint (issue 6's acceptance).

The event pump runs the real ``update_reputation`` consumer on this run's Invitations
stream, exactly as ``make run`` does. Then every record of the stream is delivered again
(in order, and backwards) straight to the consumer: nothing may change, and the rebuild
of ``make recompute-stars`` must agree with what the stream kept.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3

from chalicelib.clock import utc_now
from chalicelib.config import get_settings
from chalicelib.invitations import service
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance
from chalicelib.models.users import Account
from chalicelib.payments import orders
from chalicelib.payments.orders import OrderRequest
from chalicelib.reputation import aggregates, complaints, reviews
from chalicelib.reputation.audit import difference
from chalicelib.reputation.complaints import ComplaintRequest, Decision
from chalicelib.reputation.reviews import ReviewRequest
from devstack.event_pump import Pump, lambda_record
from tests.integration.flow_helpers import (
    FEE_FEN,
    assert_ledger_ok,
    bearer,
    booked,
    invitation,
    later,
    make_people,
    paid_invitation,
    pay,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path

    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import FakeProvider, People

RATINGS = [5, 5, 4, 5, 5, 4, 5, 5, 5, 5]
"""Ten ratings, 48 stars: Bayesian score (10 x 4.0 + 48) / 20 = 4.4, capped at 4 by ten completed
invitations; the confirmed complaint takes one star: 3.0."""


def _doctor(people: People) -> Account:
    return Account.get(f"USER#{people.doctor.user_id}", "PROFILE", consistent_read=True)


def _confirmed_and_reviewed(people: People, rating: int, now: datetime, minute: int = 0) -> str:
    paid = paid_invitation(people, now)
    service.accept(people.doctor, paid.invitation_id, now)
    service.complete(people.doctor, paid.invitation_id, later(now, days=4))
    service.confirm(people.patient, paid.invitation_id, later(now, days=4, hours=1))
    status, _ = reviews.submit(
        people.patient,
        paid.invitation_id,
        ReviewRequest(rating=rating, comment=f"{rating} stars"),
        later(now, days=5, minutes=minute),
    )
    assert status == 201
    return paid.invitation_id


class _PumpThread:
    """The event pump with only the reputation consumer, in a background thread."""

    def __init__(self, client: Any, state_dir: Path) -> None:
        from app import app

        self.pump = Pump(app, client, state_dir, 1.0, 3)
        self.pump.tickers = []  # the jobs stay out of this test
        self.pump.readers = [reader for reader in self.pump.readers if reader.config.name == "update_reputation"]
        assert self.pump.readers, "the app has no update_reputation consumer"
        self.thread = threading.Thread(target=self.pump.run, args=(0.05,), daemon=True)

    def __enter__(self) -> _PumpThread:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.pump.stop()
        self.thread.join(10)


def _settles(read: Any, expected: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := read()) != expected:
        assert time.monotonic() < deadline, f"the stream consumer left {seen}, expected {expected}"
        time.sleep(0.1)


def _stream_records() -> Iterator[dict[str, Any]]:
    """Every record of this run's Invitations stream, in each shard's order, in Lambda's shape."""
    streams = boto3.client("dynamodbstreams")
    table = get_settings().invitations_table
    arn = boto3.client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            yield from (lambda_record(record, arn) for record in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")


def _deliver(client: Any, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), 100):
        payload = client.lambda_.invoke("update_reputation", {"Records": records[start : start + 100]}).payload
        assert payload == {"batchItemFailures": []}


def test_ten_reviews_and_a_confirmed_complaint_through_the_stream(
    admin: Principal, provider: FakeProvider, api: Any, tmp_path: Path
) -> None:
    # GIVEN a doctor with ten confirmed, reviewed invitations
    now = utc_now()
    people = make_people(admin, capacity=12)
    reviewed = [_confirmed_and_reviewed(people, rating, now, minute) for minute, rating in enumerate(RATINGS)]
    # AND a generous tip on the first (tips never count towards the level)
    _, tip = orders.open_order(
        people.patient, OrderRequest("tip", reviewed[0], "sandbox", amount_fen=50_000), later(now, days=5)
    )
    assert pay(tip["order_id"], 50_000, later(now, days=5)) == "applied"
    # AND an eleventh, accepted but not delivered: the patient complains, the back office confirms with a refund
    lost = paid_invitation(people, now)
    service.accept(people.doctor, lost.invitation_id, now)
    after = later(now, days=4)
    status, filed = complaints.file(
        people.patient, lost.invitation_id, ComplaintRequest("not_delivered", "Nobody came to the theatre"), after
    )
    assert status == 201
    decided = complaints.confirm(
        admin,
        filed["complaint_id"],
        Decision(reason="The ward confirms nobody came", refund=True),
        later(after, hours=1),
    )
    assert decided["status"] == "confirmed" and decided["refund_fen"] == FEE_FEN

    # WHEN the event pump runs the reputation consumer over the stream
    with _PumpThread(api, tmp_path / "pump"):
        _settles(
            lambda: {k: v for k, v in aggregates.stored(_doctor(people)).items() if k != "rank_key"},
            {
                "anesthesia_count": 10,
                "rating_count": 10,
                "rating_sum": 48,
                "penalty_count": 1,
                "star_level": 3.0,
            },
        )

    # THEN the storefront shows the level, the ratings and the latest comments, reviewers masked
    response = api.http.get(f"/v1/anesthesiologists/{people.doctor.user_id}", headers=bearer(people.patient))
    assert response.status_code == 200
    front = response.json_body
    assert (front["star_level"], front["rating_count"], front["rating_average"], front["anesthesia_count"]) == (
        3.0,
        10,
        4.8,
        10,
    )
    assert front["rating_score"] == 4.4
    assert [review["rating"] for review in front["reviews"]["items"]] == RATINGS[::-1][:5]
    assert {review["reviewer"] for review in front["reviews"]["items"]} == {reviews.mask_name(None)}  # no name given
    assert people.patient.user_id not in str(front["reviews"])
    # AND the discovery order follows: the sort key carries the level and the Bayesian score
    doctor = _doctor(people)
    assert doctor.rank_key == doctor.catalogue_sort == f"20#060#{people.doctor.user_id}"
    # AND the requester got everything back; the doctor keeps nothing of the lost invitation
    assert invitation(lost.invitation_id).status == "refunded"
    assert balance(accounts.doctor_pending(people.doctor.user_id)) == 0
    assert balance(accounts.claim(lost.invitation_id)) == 0
    assert booked(people) == len(RATINGS)  # the day's unit of the lost service was given back
    assert_ledger_ok()

    # WHEN every record of the stream is delivered again, in order and then backwards
    before = aggregates.stored(_doctor(people))
    records = list(_stream_records())
    assert len(records) > 30
    _deliver(api, records)
    _deliver(api, records[::-1])

    # THEN nothing changed, and the rebuild from the source items agrees
    assert aggregates.stored(_doctor(people)) == before
    assert difference(_doctor(people)) is None


def test_the_same_review_record_from_many_pollers_counts_once(admin: Principal, provider: FakeProvider) -> None:
    # GIVEN one confirmed invitation with a review, whose stream record is not applied yet
    now = utc_now()
    people = make_people(admin)
    invitation_id = _confirmed_and_reviewed(people, 4, now)
    record = next(
        r
        for r in _stream_records()
        if r["eventName"] == "INSERT"
        and r["dynamodb"]["Keys"]["sk"]["S"] == "FEEDBACK#REVIEW"
        and r["dynamodb"]["Keys"]["pk"]["S"] == f"INVITATION#{invitation_id}"
    )

    # WHEN eight consumers apply it at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        applied = list(pool.map(lambda _: aggregates.apply_record(record, utc_now()), range(8)))

    # THEN exactly one applied the fact; the doctor has one rating of 4
    assert sorted(map(len, applied)) == [0] * 7 + [1]
    doctor = _doctor(people)
    assert (int(doctor.rating_count), int(doctor.rating_sum)) == (1, 4)
