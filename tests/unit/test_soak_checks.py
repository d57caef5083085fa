"""The soak's judgement of a late replay: what counts as "the first answer again"."""

from __future__ import annotations

import pytest

from devstack.soak import Answer, same_answer


@pytest.mark.parametrize(
    ("path", "first", "again", "same"),
    [
        # a stored answer comes back as it was
        (
            "/v1/payments",
            Answer(201, {"order_id": "P1", "status": "pending"}, None),
            Answer(201, {"order_id": "P1", "status": "pending"}, None),
            True,
        ),
        # a second order (or a changed body) for one key is a duplicate effect
        ("/v1/payments", Answer(201, {"order_id": "P1"}, None), Answer(201, {"order_id": "P2"}, None), False),
        ("/v1/withdrawals", Answer(201, {"withdrawal_id": "W1"}, None), Answer(409, {"error": {}}, "conflict"), False),
        # an invitation's POSTs answer with the invitation as it is now: the same one, moved on
        (
            "/v1/invitations/IV1/accept",
            Answer(200, {"invitation_id": "IV1", "status": "accepted"}, None),
            Answer(200, {"invitation_id": "IV1", "status": "confirmed"}, None),
            True,
        ),
        (
            "/v1/invitations",
            Answer(201, {"invitation_id": "IV1"}, None),
            Answer(201, {"invitation_id": "IV2"}, None),
            False,
        ),
        (
            "/v1/invitations",
            Answer(201, {"invitation_id": "IV1"}, None),
            Answer(200, {"invitation_id": "IV1"}, None),
            False,
        ),
        # a review has no stored answer: the same review again is 200 with the same body
        (
            "/v1/invitations/IV1/review",
            Answer(201, {"invitation_id": "IV1", "rating": 5}, None),
            Answer(200, {"invitation_id": "IV1", "rating": 5}, None),
            True,
        ),
        (
            "/v1/invitations/IV1/review",
            Answer(201, {"invitation_id": "IV1", "rating": 5}, None),
            Answer(201, {"invitation_id": "IV1", "rating": 5}, None),
            False,
        ),
    ],
)
def test_a_late_replay_must_get_the_first_answer(path: str, first: Answer, again: Answer, same: bool) -> None:
    assert same_answer(path, first, again) is same
