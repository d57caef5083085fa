"""The ``update_reputation`` stream consumer and ``recompute-stars``, against moto.

The items come from the real flow over HTTP (an invitation confirmed, reviewed, complained
about); their stream records are built from the items as stored, read back with
``GetItem``, and handed to the consumer the way Lambda invokes it. moto has no stream to
drive it, so each test delivers exactly the records it means to — twice, out of order, or
mixed with unrelated and malformed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from chalicelib.config import StarRules, get_settings
from chalicelib.doctors.ranking import rank_key
from chalicelib.models.users import Account, ReputationMark
from chalicelib.reputation import aggregates, complaints
from chalicelib.reputation.audit import StarsReport, recompute
from tests.unit.actors import account, call, expect, freeze_clock, make_doctor
from tests.unit.flow_actors import (
    accepted,
    act,
    fake_provider_fixture,  # noqa: F401  (the ``fake`` fixture)
    flow_fixture,  # noqa: F401  (the ``flow`` fixture)
    scheduled_at,
)
from tests.unit.stream_records import stream_record

if TYPE_CHECKING:
    from collections.abc import Iterator

    from chalice.test import Client

    from tests.unit.flow_actors import Flow

Image = dict[str, Any]
GENEROUS = StarRules(prior_weight=1, tiers=((1, 5.0),))
"""Rules under which one review moves the level: a prior of 4 weighing one review, 5 stars from the first service."""


# --- records ---------------------------------------------------------------------------------------


def image(pk: str, sk: str) -> Image:
    """The item as stored now: what a stream record's image holds."""
    key = {"pk": {"S": pk}, "sk": {"S": sk}}
    found = boto3.client("dynamodb").get_item(TableName=get_settings().invitations_table, Key=key, ConsistentRead=True)
    return found["Item"]


def record(new: Image | None, old: Image | None = None, *, sequence: str) -> dict[str, Any]:
    """The stream record of a change from ``old`` to ``new`` (an INSERT without ``old``, a REMOVE without ``new``)."""
    name = "REMOVE" if new is None else ("MODIFY" if old is not None else "INSERT")
    result = stream_record(f"ev-{sequence}", name, sequence)
    some = new if new is not None else old
    assert some is not None
    change = result["dynamodb"]
    change["Keys"] = {"pk": some["pk"], "sk": some["sk"]}
    for field, value in (("NewImage", new), ("OldImage", old)):
        if value is None:
            change.pop(field, None)
        else:
            change[field] = value
    return result


def deliver(client: Client, *records: dict[str, Any]) -> Any:
    """Invoke ``update_reputation`` as Lambda does with these records."""
    return client.lambda_.invoke("update_reputation", {"Records": list(records)}).payload


OK = {"batchItemFailures": []}


# --- the world -------------------------------------------------------------------------------------


@dataclass
class World:
    """A listed doctor's confirmed invitation, its review and a complaint, with the images each change left."""

    flow: Flow
    invitation_id: str
    confirmed_at: datetime
    completed_meta: Image
    confirmed_meta: Image
    review: Image | None = None
    penalty: Image | None = None
    lifted: Image | None = None

    @property
    def doctor_id(self) -> str:
        return self.flow.doctor.user_id

    @property
    def meta_pk(self) -> str:
        return f"INVITATION#{self.invitation_id}"

    def confirmation(self, sequence: str = "100") -> dict[str, Any]:
        return record(self.confirmed_meta, self.completed_meta, sequence=sequence)


def build_world(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, *, rating: int | None = 5, complaint: bool = True
) -> World:
    """Confirm an invitation over HTTP; rate it ``rating``; with ``complaint``, complain, confirm, then lift."""
    invitation = accepted(client, flow)
    invitation_id = invitation["invitation_id"]
    pk = f"INVITATION#{invitation_id}"
    confirmed_at = scheduled_at(invitation) + timedelta(hours=2)
    freeze_clock(monkeypatch, confirmed_at)
    expect(act(client, flow.doctor, invitation_id, "complete"), 200)
    completed_meta = image(pk, "META")
    expect(act(client, flow.patient, invitation_id, "confirm"), 200)
    world = World(flow, invitation_id, confirmed_at, completed_meta, image(pk, "META"))
    if rating is not None:
        path = f"/v1/invitations/{invitation_id}/review"
        expect(call(client, "POST", path, flow.patient, {"rating": rating}), 201)
        world.review = image(pk, "FEEDBACK#REVIEW")
    if complaint:
        body = {"category": "late", "details": "Two hours late"}
        expect(call(client, "POST", f"/v1/invitations/{invitation_id}/complaints", flow.patient, body), 201)
        decision = {"reason": "Two hours late, says the ward"}
        expect(call(client, "POST", f"/v1/admin/complaints/CP{invitation_id}/confirm", flow.admin, decision), 200)
        world.penalty = image(pk, "FEEDBACK#COMPLAINT")
        complaints.lift(complaints.load(f"CP{invitation_id}"), confirmed_at + timedelta(days=91))
        world.lifted = image(pk, "FEEDBACK#COMPLAINT")
    return world


@pytest.fixture
def generous(monkeypatch: pytest.MonkeyPatch) -> Iterator[StarRules]:
    """``GENEROUS`` as the stage's rules (set in the environment, as a stage would): for every reader."""
    monkeypatch.setenv("STAR_PRIOR_WEIGHT", "1")
    monkeypatch.setenv("STAR_TIERS", "1:5")
    get_settings.cache_clear()
    assert get_settings().star_rules == GENEROUS
    yield GENEROUS
    monkeypatch.undo()
    get_settings.cache_clear()


def reputation(doctor_id: str) -> dict[str, Any]:
    """The doctor's stored reputation, with the catalogue key and the revision."""
    stored = account(doctor_id)
    return {**aggregates.stored(stored), "catalogue_sort": stored.catalogue_sort, "revision": int(stored.revision)}


def marks(doctor_id: str) -> list[str]:
    return [
        mark.sk.removeprefix("REPUTATION#")
        for mark in ReputationMark.query(f"USER#{doctor_id}", ReputationMark.sk.startswith("REPUTATION#"))
    ]


def every_doctor() -> Any:
    """Every doctor account, as ``make recompute-stars`` lists them."""
    return Account.scan(Account.role == "doctor", consistent_read=True)


def audit(*, fix: bool = False) -> StarsReport:
    return recompute(every_doctor(), fix=fix, now=datetime.now(UTC))


def shown(client: Client, flow: Flow, doctor_id: str) -> dict[str, Any]:
    """The doctor's storefront as a patient sees it (the score and average are derived when read)."""
    return expect(call(client, "GET", f"/v1/anesthesiologists/{doctor_id}", flow.patient), 200)


def assert_audit_clean() -> None:
    report = audit()
    assert report.doctors >= 1
    assert report.ok, report.differences


# --- confirmations, reviews, penalties ---------------------------------------------------------------


def test_a_confirmation_derives_the_level_from_the_anesthesias_done(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a listed doctor whose first service was just confirmed (the count moved in that transaction)
    world = build_world(client, flow, monkeypatch, rating=None, complaint=False)
    before = reputation(world.doctor_id)
    assert (before["anesthesia_count"], before["star_level"]) == (1, 0.0)

    # WHEN the confirmation's record arrives
    assert deliver(client, world.confirmation()) == OK

    # THEN the level follows the formula: one service opens up to 3 stars; the prior scores 4
    after = reputation(world.doctor_id)
    key = rank_key(3.0, 4.0, world.doctor_id)
    assert (after["star_level"], after["rank_key"], after["catalogue_sort"]) == (3.0, key, key)
    assert after["revision"] == before["revision"] + 1
    assert marks(world.doctor_id) == []  # a refresh is no fact: it derives from the stored counts
    storefront = shown(client, flow, world.doctor_id)
    assert (storefront["star_level"], storefront["rating_score"], storefront["rating_average"]) == (3.0, 4.0, 0.0)
    assert storefront["anesthesia_count"] == 1

    # WHEN it arrives again THEN nothing is written
    assert deliver(client, world.confirmation("101")) == OK
    assert reputation(world.doctor_id) == after
    assert_audit_clean()


def test_a_review_raises_the_counts_the_level_and_the_discovery_order(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    # GIVEN a listed doctor with one confirmed service (level 4: the prior) and a 5-star review of it
    world = build_world(client, flow, monkeypatch, complaint=False)
    assert deliver(client, world.confirmation()) == OK
    assert reputation(world.doctor_id)["star_level"] == 4.0

    # WHEN the review's record arrives
    assert deliver(client, record(world.review, sequence="200")) == OK

    # THEN one rating of 5 is counted: score (4 + 5) / 2, the level, and both discovery keys follow
    after = reputation(world.doctor_id)
    key = rank_key(4.5, 4.5, world.doctor_id)
    assert (after["rating_count"], after["rating_sum"], after["star_level"]) == (1, 5, 4.5)
    assert (after["rank_key"], after["catalogue_sort"]) == (key, key)
    assert marks(world.doctor_id) == [f"review#{world.invitation_id}"]
    listed = expect(call(client, "GET", f"/v1/hospitals/{flow.hospitals.pumch}/anesthesiologists", flow.patient), 200)
    assert [(card["doctor_id"], card["star_level"], card["rating_score"]) for card in listed["items"]] == [
        (world.doctor_id, 4.5, 4.5)
    ]
    assert shown(client, flow, world.doctor_id)["rating_average"] == 5.0
    assert_audit_clean()


def test_a_record_delivered_twice_counts_once(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    world = build_world(client, flow, monkeypatch, complaint=False)
    review = record(world.review, sequence="200")
    assert deliver(client, world.confirmation(), review) == OK
    once = reputation(world.doctor_id)
    # WHEN the batch is redelivered, and the review comes twice in one batch
    assert deliver(client, world.confirmation("300"), review) == OK
    assert deliver(client, review, record(world.review, sequence="301")) == OK
    # THEN nothing changed, not even the revision
    assert reputation(world.doctor_id) == once
    assert (once["rating_count"], once["rating_sum"]) == (1, 5)
    assert_audit_clean()


def test_a_penalty_lowers_the_level_until_it_is_lifted(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    world = build_world(client, flow, monkeypatch)
    assert deliver(client, world.confirmation(), record(world.review, sequence="200")) == OK
    assert reputation(world.doctor_id)["star_level"] == 4.5

    # WHEN the confirmed complaint's record arrives THEN the level drops one star, the score stays
    assert deliver(client, record(world.penalty, sequence="300")) == OK
    penalised = reputation(world.doctor_id)
    assert (penalised["penalty_count"], penalised["star_level"]) == (1, 3.5)
    assert shown(client, flow, world.doctor_id)["rating_score"] == 4.5
    assert penalised["rank_key"] == penalised["catalogue_sort"] == rank_key(3.5, 4.5, world.doctor_id)

    # WHEN the lift's record arrives THEN the level is given back
    assert deliver(client, record(world.lifted, world.penalty, sequence="301")) == OK
    lifted = reputation(world.doctor_id)
    assert (lifted["penalty_count"], lifted["star_level"]) == (0, 4.5)
    assert lifted["rank_key"] == rank_key(4.5, 4.5, world.doctor_id)
    cp = f"CP{world.invitation_id}"
    assert sorted(marks(world.doctor_id)) == sorted([f"review#{world.invitation_id}", f"penalty#{cp}", f"lift#{cp}"])
    assert_audit_clean()


def test_a_lift_delivered_before_its_penalty_gives_the_same_result(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    world = build_world(client, flow, monkeypatch)
    assert deliver(client, world.confirmation(), record(world.review, sequence="200")) == OK
    before = reputation(world.doctor_id)

    # WHEN the lift's record comes first, then the penalty's (and the lift's again)
    assert deliver(client, record(world.lifted, world.penalty, sequence="301")) == OK
    after_lift = reputation(world.doctor_id)
    assert deliver(client, record(world.penalty, sequence="300"), record(world.lifted, sequence="302")) == OK

    # THEN the penalty and its lift count once each: the level is as in order (4.5), never lower meanwhile
    after = reputation(world.doctor_id)
    assert (after["penalty_count"], after["star_level"], after["rank_key"]) == (
        0,
        4.5,
        rank_key(4.5, 4.5, world.doctor_id),
    )
    assert after_lift == after
    assert (after["rating_count"], after["rating_sum"]) == (before["rating_count"], before["rating_sum"]) == (1, 5)
    assert len(marks(world.doctor_id)) == 3
    assert_audit_clean()


def test_a_service_not_delivered_no_longer_counts(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a confirmed service whose level was derived (3 stars from one service)
    world = build_world(client, flow, monkeypatch, rating=None, complaint=False)
    assert deliver(client, world.confirmation()) == OK
    assert reputation(world.doctor_id)["star_level"] == 3.0

    # WHEN a complaint is confirmed with a refund (the service was not delivered)
    invitation_id = world.invitation_id
    body = {"category": "not_delivered", "details": "Nobody came"}
    expect(call(client, "POST", f"/v1/invitations/{invitation_id}/complaints", flow.patient, body), 201)
    decision = {"reason": "Nobody came", "refund": True}
    expect(call(client, "POST", f"/v1/admin/complaints/CP{invitation_id}/confirm", flow.admin, decision), 200)
    assert account(world.doctor_id).anesthesia_count == 0
    # ... and the stream delivers the invitation's move to not_delivered, then the complaint
    not_delivered = record(image(world.meta_pk, "META"), world.confirmed_meta, sequence="400")
    not_delivered["dynamodb"]["NewImage"]["status"] = {"S": "not_delivered"}  # as it was then (now: refunded)
    assert deliver(client, not_delivered, record(image(world.meta_pk, "FEEDBACK#COMPLAINT"), sequence="401")) == OK

    # THEN no service counts any more: no level, whatever the penalty
    after = reputation(world.doctor_id)
    assert (after["anesthesia_count"], after["star_level"], after["penalty_count"]) == (0, 0.0, 1)
    assert_audit_clean()


# --- records that mean nothing, and records that cannot be read ------------------------------------


def test_unrelated_records_change_nothing(client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a doctor whose stored level is (deliberately) stale: any refresh would rewrite it
    world = build_world(client, flow, monkeypatch, rating=None, complaint=False)
    before = reputation(world.doctor_id)
    pk = world.meta_pk
    notice = next(
        item
        for item in boto3.client("dynamodb").query(
            TableName=get_settings().invitations_table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :notice)",
            ExpressionAttributeValues={":pk": {"S": pk}, ":notice": {"S": "NOTICE#"}},
        )["Items"]
    )
    # an open complaint (no penalty yet)
    body = {"category": "late", "details": "Two hours late"}
    expect(call(client, "POST", f"/v1/invitations/{world.invitation_id}/complaints", flow.patient, body), 201)
    open_complaint = image(pk, "FEEDBACK#COMPLAINT")
    confirmed_again = dict(world.confirmed_meta, rating={"N": "5"})  # a confirmed invitation rated: same status

    records = [
        stream_record("ev-500", "INSERT", "500"),  # an invitation just created elsewhere
        record(notice, sequence="501"),
        record(world.completed_meta, sequence="502"),  # completed: not a status that moves the level
        record(confirmed_again, world.confirmed_meta, sequence="503"),
        record(open_complaint, sequence="504"),
        record(None, world.confirmed_meta, sequence="505"),  # a REMOVE
        record(None, open_complaint, sequence="506"),
    ]

    # WHEN they arrive THEN none fails, nothing is written, no fact is marked
    assert deliver(client, *records) == OK
    assert reputation(world.doctor_id) == before
    assert marks(world.doctor_id) == []


def test_a_malformed_record_is_reported_alone(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    # GIVEN a batch: the confirmation, a review whose rating cannot be read, and a good review
    world = build_world(client, flow, monkeypatch, complaint=False)
    assert world.review is not None
    broken = dict(world.review, rating={"N": "five"})
    records = [world.confirmation("600"), record(broken, sequence="601"), record(world.review, sequence="602")]

    # WHEN the consumer runs it
    payload = deliver(client, *records)

    # THEN only the broken record is reported for redelivery; the others were applied
    assert payload == {"batchItemFailures": [{"itemIdentifier": "601"}]}
    after = reputation(world.doctor_id)
    assert (after["rating_count"], after["rating_sum"], after["star_level"]) == (1, 5, 4.5)
    assert_audit_clean()


# --- recompute-stars -------------------------------------------------------------------------------


def test_recompute_finds_and_repairs_a_corrupted_account(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    # GIVEN a doctor whose reputation the stream kept
    world = build_world(client, flow, monkeypatch)
    applied = [world.confirmation(), record(world.review, sequence="200"), record(world.lifted, sequence="300")]
    assert deliver(client, *applied) == OK
    assert_audit_clean()
    good = reputation(world.doctor_id)

    # WHEN the account is corrupted (a lost write, a manual edit)
    account(world.doctor_id).update(actions=[Account.rating_count.set(7), Account.star_level.set(1.0)])

    # THEN the audit names the doctor and each field that differs, and changes nothing without fix
    report = audit()
    assert (report.ok, report.fixed) == (False, 0)
    assert report.differences == [
        {
            "doctor_id": world.doctor_id,
            "fields": {
                "rating_count": {"stored": 7, "rebuilt": 1},
                "star_level": {"stored": 1.0, "rebuilt": 4.5},
            },
        }
    ]
    assert report.as_dict()["ok"] is False
    assert account(world.doctor_id).rating_count == 7

    # WHEN it runs with fix THEN the rebuilt values are written, and the next run finds nothing
    fixed = audit(fix=True)
    assert (len(fixed.differences), fixed.fixed) == (1, 1)
    repaired = reputation(world.doctor_id)
    assert {name: repaired[name] for name in good if name != "revision"} == {
        name: good[name] for name in good if name != "revision"
    }
    assert_audit_clean()


def test_recompute_marks_the_facts_it_repairs_so_the_stream_cannot_count_them_again(
    client: Client, flow: Flow, monkeypatch: pytest.MonkeyPatch, generous: StarRules
) -> None:
    # GIVEN a review whose stream record was never applied (only the confirmation was)
    world = build_world(client, flow, monkeypatch, complaint=False)
    assert deliver(client, world.confirmation()) == OK
    (missing,) = audit().differences
    assert missing["doctor_id"] == world.doctor_id
    assert (missing["fields"]["rating_count"], missing["fields"]["rating_sum"]) == (
        {"stored": 0, "rebuilt": 1},
        {"stored": 0, "rebuilt": 5},
    )

    # WHEN the audit repairs it, and the late record arrives afterwards
    assert audit(fix=True).fixed == 1
    repaired = reputation(world.doctor_id)
    assert deliver(client, record(world.review, sequence="200")) == OK

    # THEN the review counts once
    assert reputation(world.doctor_id) == repaired
    assert (repaired["rating_count"], repaired["star_level"]) == (1, 4.5)
    assert marks(world.doctor_id) == [f"review#{world.invitation_id}"]
    assert_audit_clean()


def test_doctors_without_any_event_need_no_repair(client: Client, flow: Flow) -> None:
    # GIVEN the flow's verified doctor (listed, never reviewed) and a doctor not yet verified (not listed)
    make_doctor(client, flow.hospitals.pumch)
    # THEN what verification wrote is what the formula gives: the audit finds nothing
    report = audit()
    assert report.doctors == 2
    assert report.ok, report.differences


# --- a confirmation landing between the consumer's read and its write --------------------------------


def test_a_fact_applied_while_a_confirmation_lands_derives_the_level_from_the_new_count(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a doctor with nine completed invitations (capped at 3 stars; ten open up 4)
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    doctor = Account("USER#d-race", "PROFILE")
    doctor.user_id, doctor.role, doctor.revision, doctor.anesthesia_count = "d-race", "doctor", 1, 9
    doctor.created_at = doctor.updated_at = now.isoformat()
    doctor.save()
    read = aggregates._account
    confirmations: list[str] = []

    def read_then_confirm(doctor_id: str) -> Account | None:
        found = read(doctor_id)
        if not confirmations:  # the tenth confirmation commits right after the consumer's first read
            confirmations.append(doctor_id)
            Account(f"USER#{doctor_id}", "PROFILE").update(
                actions=[Account.anesthesia_count.add(1), Account.revision.add(1)]
            )
        return found

    monkeypatch.setattr(aggregates, "_account", read_then_confirm)

    # WHEN a 5-star review is applied meanwhile
    assert aggregates.apply_fact("d-race", aggregates.Fact("review#i-race", ratings=1, stars=5), now) is True

    # THEN the write made from the stale read was refused, and the level follows ten completed invitations
    stored = account("d-race")
    assert (int(stored.anesthesia_count), int(stored.rating_count), float(stored.star_level)) == (10, 1, 4.0)
