"""A complaint's refund (service not delivered) under concurrency, against DynamoDB Local.

- the back office's refund racing the requester's confirmation: whichever wins, the
  requester gets everything back once and the doctor keeps nothing of it;
- the refund after release racing the doctor's withdrawal of the same money: what the
  available balance no longer holds becomes the doctor's receivable, never a negative
  available balance;
- two earnings racing to repay one debt: it is repaid once, never more;
- after each, the ledger's invariants hold (``check_ledger``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from chalicelib.clock import utc_now
from chalicelib.errors import ApiError
from chalicelib.invitations import service
from chalicelib.ledger import accounts
from chalicelib.ledger.journal import balance
from chalicelib.payouts import accounts as payout_accounts
from chalicelib.payouts import withdrawals
from chalicelib.payouts.accounts import BankCardPayee
from chalicelib.payouts.withdrawals import WithdrawalRequest
from chalicelib.reputation import complaints
from chalicelib.reputation.complaints import ComplaintRequest, Decision
from tests.integration.flow_helpers import (
    DOCTOR_SHARE_FEN,
    FEE_FEN,
    api_errors,
    assert_ledger_ok,
    invitation,
    later,
    make_people,
    paid_invitation,
    race,
    until_settled,
)

if TYPE_CHECKING:
    from datetime import datetime

    from chalicelib.accounts.roles import Principal
    from tests.integration.flow_helpers import FakeProvider, People

NOT_DELIVERED = ComplaintRequest("not_delivered", "Nobody came to the theatre")
REFUND = Decision(reason="The ward confirms nobody came", refund=True)


def _completed(people: People, now: datetime) -> str:
    paid = paid_invitation(people, now)
    service.accept(people.doctor, paid.invitation_id, now)
    service.complete(people.doctor, paid.invitation_id, later(now, days=4))
    return paid.invitation_id


def _complaint(people: People, invitation_id: str, now: datetime) -> str:
    status, body = complaints.file(people.patient, invitation_id, NOT_DELIVERED, later(now, days=4, hours=1))
    assert status == 201
    return body["complaint_id"]


def _doctor_money(people: People) -> dict[str, int]:
    doctor = people.doctor.user_id
    return {
        "pending": balance(accounts.doctor_pending(doctor)),
        "available": balance(accounts.doctor_available(doctor)),
        "payout": balance(accounts.doctor_payout(doctor)),
        "receivable": balance(accounts.doctor_receivable(doctor)),
    }


def _refund_until_done(admin: Principal, complaint_id: str, at: datetime) -> Any:
    """The admin's confirmation, retried as a client told 409 ``conflict`` would; a decided complaint is done."""
    try:
        return until_settled(lambda: complaints.confirm(admin, complaint_id, REFUND, at))
    except ApiError as error:
        if error.code != "complaint_decided":
            raise
        return None


def test_the_refund_racing_the_confirmation_refunds_once(admin: Principal, provider: FakeProvider) -> None:
    # GIVEN a completed invitation the patient complains about
    now = utc_now()
    people = make_people(admin)
    invitation_id = _completed(people, now)
    complaint_id = _complaint(people, invitation_id, now)
    at = later(now, days=4, hours=2)

    # WHEN the patient confirms at the same moment as the back office refunds
    def one(index: int) -> Any:
        if index == 0:
            return service.confirm(people.patient, invitation_id, at)
        return complaints.confirm(admin, complaint_id, REFUND, at)

    outcomes = race(2, one)
    codes = {error.code for error in api_errors(outcomes)}
    assert codes <= {"invalid_transition", "conflict"}, outcomes
    # AND the back office tries again if it lost
    _refund_until_done(admin, complaint_id, later(at, minutes=1))

    # THEN the invitation is refunded once, in full, and the doctor keeps nothing of it
    assert invitation(invitation_id).status == "refunded"
    assert complaints.load(complaint_id).status == "confirmed"
    assert provider.refunds_of(f"RF{invitation_id}")[0].amount_fen == FEE_FEN
    assert _doctor_money(people) == {"pending": 0, "available": 0, "payout": 0, "receivable": 0}
    assert balance(accounts.claim(invitation_id)) == 0
    assert_ledger_ok()


def test_the_refund_after_release_racing_a_withdrawal_leaves_a_receivable(
    admin: Principal, provider: FakeProvider
) -> None:
    # GIVEN a confirmed invitation (the doctor's share is available), a payout account, and a complaint
    now = utc_now()
    people = make_people(admin)
    invitation_id = _completed(people, now)
    service.confirm(people.patient, invitation_id, later(now, days=4, minutes=30))
    status, card = payout_accounts.register(people.doctor, BankCardPayee("Dr Zhou", "ICBC", "6222021234567890128"), now)
    assert status == 201
    complaint_id = _complaint(people, invitation_id, now)
    at = later(now, days=4, hours=2)

    # WHEN the doctor withdraws everything at the same moment as the back office refunds
    def one(index: int) -> Any:
        if index == 0:
            request = WithdrawalRequest(DOCTOR_SHARE_FEN, card["account_id"])
            return until_settled(lambda: withdrawals.request(people.doctor, request, at))
        return _refund_until_done(admin, complaint_id, at)

    outcomes = race(2, one)
    errors = api_errors(outcomes)
    assert {error.code for error in errors} <= {"insufficient_funds"}, outcomes

    # THEN the requester is refunded in full; what the doctor took out first is owed, never a negative balance
    assert invitation(invitation_id).status == "refunded"
    money = _doctor_money(people)
    assert money["available"] == 0 and money["pending"] == 0
    assert money["payout"] + money["receivable"] == 0
    assert money["receivable"] in (0, -DOCTOR_SHARE_FEN)
    assert (money["receivable"] == 0) == bool(errors)  # owed exactly when the withdrawal went first
    assert_ledger_ok()


def test_racing_earnings_repay_a_debt_once(admin: Principal, provider: FakeProvider) -> None:
    # GIVEN a doctor who owes their share of a refunded service (withdrawn before the refund)
    now = utc_now()
    people = make_people(admin, capacity=5)
    owed = _completed(people, now)
    service.confirm(people.patient, owed, later(now, days=4, minutes=30))
    _, card = payout_accounts.register(people.doctor, BankCardPayee("Dr Zhou", "ICBC", "6222021234567890128"), now)
    withdrawals.request(people.doctor, WithdrawalRequest(DOCTOR_SHARE_FEN, card["account_id"]), now)
    _refund_until_done(admin, _complaint(people, owed, now), later(now, days=4, hours=2))
    assert _doctor_money(people)["receivable"] == -DOCTOR_SHARE_FEN
    # AND two more completed invitations
    earning = [_completed(people, now), _completed(people, now)]

    # WHEN both are confirmed at the same moment
    at = later(now, days=4, hours=3)
    outcomes = race(2, lambda index: until_settled(lambda: service.confirm(people.patient, earning[index], at)))
    assert not api_errors(outcomes), outcomes

    # THEN the debt was repaid once: one share pays it, the other is available
    money = _doctor_money(people)
    assert (money["receivable"], money["available"], money["pending"]) == (0, DOCTOR_SHARE_FEN, 0)
    assert_ledger_ok()


def test_a_doctor_who_owes_withdraws_only_beyond_the_debt(admin: Principal, provider: FakeProvider) -> None:
    from chalicelib.payments.provider import PayoutStatus
    from chalicelib.payouts import transfers

    # GIVEN a doctor with two released shares who withdraws both
    now = utc_now()
    people = make_people(admin, capacity=5)
    first, second = _completed(people, now), _completed(people, now)
    for invitation_id in (first, second):
        service.confirm(people.patient, invitation_id, later(now, days=4, minutes=30))
    _, card = payout_accounts.register(people.doctor, BankCardPayee("Dr Zhou", "ICBC", "6222021234567890128"), now)
    both = 2 * DOCTOR_SHARE_FEN
    _, pending = withdrawals.request(people.doctor, WithdrawalRequest(both, card["account_id"]), now)
    # AND one service is refunded as not delivered (the share is owed), then the payout fails (the money comes back)
    _refund_until_done(admin, _complaint(people, first, now), later(now, days=4, hours=2))
    order = withdrawals.get(pending["withdrawal_id"])
    assert order is not None
    failed = PayoutStatus(order.out_bill_no, "failed", "bill-1", both, fail_reason="PAYEE_ACCOUNT_ABNORMAL")
    assert transfers.apply_status(order, failed, later(now, days=4, hours=3)) == "applied"
    assert _doctor_money(people) == {"pending": 0, "available": both, "payout": 0, "receivable": -DOCTOR_SHARE_FEN}

    # WHEN the doctor tries to withdraw everything THEN only what is beyond the debt may leave
    with pytest.raises(ApiError) as refused:
        withdrawals.request(people.doctor, WithdrawalRequest(both, card["account_id"]), later(now, days=4, hours=4))
    assert refused.value.code == "insufficient_funds"
    status, _ = withdrawals.request(
        people.doctor, WithdrawalRequest(DOCTOR_SHARE_FEN, card["account_id"]), later(now, days=4, hours=4)
    )

    # AND that withdrawal paid the debt back first
    assert status == 201
    assert _doctor_money(people) == {"pending": 0, "available": 0, "payout": DOCTOR_SHARE_FEN, "receivable": 0}
    assert_ledger_ok()
