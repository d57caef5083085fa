"""The invitation state machine as data: its shape, who may fire what, and where the money goes on every path."""

from __future__ import annotations

import pytest

from chalicelib.errors import ApiError
from chalicelib.invitations import machine
from chalicelib.invitations.machine import FINAL_STATES, STATES, TRANSITIONS, plan


def paths(state: str = machine.AWAITING_PAYMENT, seen: tuple[str, ...] = ()) -> list[list[str]]:
    """Every path of transition names from ``state`` that visits no state twice."""
    found: list[list[str]] = []
    for step in TRANSITIONS.values():
        if state in step.sources and step.target not in seen:
            for rest in paths(step.target, (*seen, state)) or [[]]:
                found.append([step.name, *rest])
    return found


def effects_of(path: list[str]) -> list[str]:
    return [effect for name in path for effect in TRANSITIONS[name].effects]


def test_every_state_is_declared_and_reachable() -> None:
    reachable = {machine.AWAITING_PAYMENT}
    for path in paths():
        state = machine.AWAITING_PAYMENT
        for name in path:
            state = TRANSITIONS[name].target
            reachable.add(state)
    declared = {step.target for step in TRANSITIONS.values()} | {
        s for step in TRANSITIONS.values() for s in step.sources
    }

    assert declared <= set(STATES)
    assert reachable == set(STATES)


def test_only_final_states_end_a_path() -> None:
    ends = {TRANSITIONS[path[-1]].target for path in paths()}

    # closed ends a path too, though a payment arriving later still leads out of it (to a refund);
    # confirmed never ends one here: a complaint that the service was not delivered leads on to a refund
    assert ends == FINAL_STATES - {machine.CLOSED, machine.CONFIRMED}
    for state in set(STATES) - FINAL_STATES:
        assert any(state in step.sources for step in TRANSITIONS.values()), f"{state} has no way out"


def test_a_final_state_is_left_only_by_a_payment_after_closing_or_a_service_not_delivered() -> None:
    leaving = sorted(step.name for step in TRANSITIONS.values() if step.sources & FINAL_STATES)

    assert leaving == ["pay_after_closing", "refund_not_delivered"]
    assert TRANSITIONS["refund_not_delivered"].actors == {machine.ADMIN}
    assert TRANSITIONS["refund_not_delivered"].sources & FINAL_STATES == {machine.CONFIRMED}


def test_every_paid_path_moves_the_money_once_and_in_order() -> None:
    for path in paths():
        effects = [e for e in effects_of(path) if e.startswith("post_")]
        if "post_payment" not in effects:
            assert effects == [], path  # unpaid: nothing moves
            continue
        assert effects[0] == "post_payment", path
        assert effects.count("post_payment") == 1, path
        # the escrow empties once: into the doctor's pending (acceptance) or back to the payer (refund)
        assert effects[1] in ("post_acceptance", "post_refund"), path
        if "post_release" in effects:
            assert effects.index("post_acceptance") < effects.index("post_release"), path
        if "post_claim" in effects:
            # a service not delivered: what acceptance (and release) moved comes back into the claim first
            assert effects.index("post_acceptance") < effects.index("post_claim") < effects.index("post_refund"), path
            assert effects.count("post_claim") == 1, path
        elif "post_release" in effects:
            assert "post_refund" not in effects, path
        assert effects.count("post_refund") <= 1 and effects.count("post_release") <= 1, path


def test_every_path_that_ends_refunded_posts_the_refund_and_every_confirmed_one_releases() -> None:
    for path in paths():
        end = TRANSITIONS[path[-1]].target
        effects = effects_of(path)
        if end == machine.REFUNDED:
            assert "post_refund" in effects, path
        if end == machine.CONFIRMED:
            assert effects.count("post_release") == 1 and "count_anesthesia" in effects, path


def test_an_accepted_invitation_booked_capacity_and_a_cancelled_one_gives_it_back() -> None:
    assert "book_capacity" in TRANSITIONS["accept"].effects
    assert "date_has_capacity" in TRANSITIONS["accept"].guards
    assert "release_capacity_if_booked" in TRANSITIONS["cancel"].effects


@pytest.mark.parametrize(
    ("name", "status", "actor"),
    [
        ("accept", machine.PENDING_RESPONSE, machine.DOCTOR),
        ("decline", machine.PENDING_RESPONSE, machine.DOCTOR),
        ("cancel", machine.PENDING_RESPONSE, machine.REQUESTER),
        ("cancel", machine.ACCEPTED, machine.REQUESTER),
        ("complete", machine.ACCEPTED, machine.DOCTOR),
        ("confirm", machine.COMPLETED, machine.REQUESTER),
        ("expire", machine.PENDING_RESPONSE, machine.SYSTEM),
        ("pay", machine.AWAITING_PAYMENT, machine.SYSTEM),
    ],
)
def test_plan_admits_the_declared_actor_from_a_declared_state(name: str, status: str, actor: str) -> None:
    assert plan(name, status=status, actor=actor) is TRANSITIONS[name]


@pytest.mark.parametrize(
    ("name", "actor"),
    [
        ("accept", machine.REQUESTER),
        ("confirm", machine.DOCTOR),
        ("cancel", machine.DOCTOR),
        ("decline", machine.ADMIN),
        ("pay", machine.REQUESTER),
        ("expire", machine.DOCTOR),
        ("refund", machine.ADMIN),
    ],
)
def test_plan_refuses_another_actor_with_403(name: str, actor: str) -> None:
    status = sorted(TRANSITIONS[name].sources)[0]

    with pytest.raises(ApiError) as raised:
        plan(name, status=status, actor=actor)

    assert (raised.value.status, raised.value.code) == (403, "forbidden")


@pytest.mark.parametrize(
    ("name", "status", "actor"),
    [
        ("accept", machine.ACCEPTED, machine.DOCTOR),
        ("accept", machine.EXPIRED, machine.DOCTOR),
        ("decline", machine.ACCEPTED, machine.DOCTOR),
        ("cancel", machine.COMPLETED, machine.REQUESTER),
        ("confirm", machine.ACCEPTED, machine.REQUESTER),
        ("expire", machine.ACCEPTED, machine.SYSTEM),
        ("pay", machine.PENDING_RESPONSE, machine.SYSTEM),
    ],
)
def test_plan_refuses_a_transition_from_another_state_with_409(name: str, status: str, actor: str) -> None:
    with pytest.raises(ApiError) as raised:
        plan(name, status=status, actor=actor)

    assert (raised.value.status, raised.value.code) == (409, "invalid_transition")
    assert raised.value.details["allowed_from"] == sorted(TRANSITIONS[name].sources)


def test_a_decline_a_cancel_and_a_refund_for_a_service_not_delivered_need_a_reason() -> None:
    needing = sorted(name for name, step in TRANSITIONS.items() if step.reason_required)

    assert needing == ["cancel", "decline", "refund_not_delivered"]


def test_the_diagram_shows_every_transition() -> None:
    diagram = machine.mermaid()

    assert diagram.startswith("stateDiagram-v2")
    for step in TRANSITIONS.values():
        for source in step.sources:
            assert f"{source} --> {step.target}: {step.name}" in diagram
