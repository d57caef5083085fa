"""The money flow through each real channel: WeChat Pay v3, Alipay and UnionPay, each played on loopback.

The stack runs the production adapters (``wechatpayv3``, ``python-alipay-sdk``, our ACP
client) against provider doubles that speak each wire format with keys of their own, so
every request we sign is checked there and every answer and notification is checked here.
For each channel, at once: a verified hospital buys its membership and invites a doctor
twice; the doctor declines one (refunded in full by the original path) and does the other;
the hospital confirms and tips; the doctor withdraws twice to the account the channel pays
(WeChat change, an Alipay account, a bank card through Alipay): the first payout fails and
its money comes back, the second is paid. ``make check-ledger`` passes afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import requests

from chalicelib.clock import SHANGHAI, utc_now
from tests.e2e.conftest import ADMIN_PASSWORD, PROJECT_DIR, Caller, make_admin, phone_number
from tests.e2e.test_invitation_flow import CREDENTIALS, FEE, PLATFORM_FEE, SUMMARY, eventually, sign_up, status_of

if TYPE_CHECKING:
    from devstack.doubles.loopback import Doubles
    from tests.e2e.conftest import Stack

PRICE = 1_980_000
TIP = 2_000
SHARE = FEE - PLATFORM_FEE
FIRST_WITHDRAWAL = 10_000
PAYEES = {
    "wechat": {"kind": "wechat", "app": "mp"},
    "alipay": {"kind": "alipay", "account": "13912345678", "real_name": "Dr Zhao"},
    "unionpay": {
        "kind": "bank_card",
        "holder_name": "Dr Zhao",
        "bank": "ICBC",
        "card_number": "6222 0212 3456 7890 128",
    },
}
SCENES = {"wechat": "jsapi_mp", "alipay": "h5", "unionpay": "h5"}
ASYNC_PAYOUTS = {"wechat": True, "alipay": False, "unionpay": True}
"""WeChat change waits for the payee to confirm, bank cards settle later; Alipay accounts are paid at once."""
PAYOUT_DOUBLE = {"wechat": "wechat", "alipay": "alipay", "unionpay": "alipay"}
"""Which provider pays the doctor: bank cards go through Alipay."""


@dataclass
class Buttons:
    """What the people on the providers' side do: pay, and finish or refuse transfers."""

    urls: dict[str, str]

    def control(self, channel: str, path: str, body: dict[str, Any]) -> None:
        answer = requests.post(f"{self.urls[channel]}/_double/{path}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text


def _wechat_user(api: str, role: str) -> tuple[Caller, str]:
    """Sign up through the local WeChat sign-in, so the account has an openid in the mini program."""
    anonymous = Caller(api)
    ticket = anonymous.call("POST", "/v1/auth/wechat", 202, {"app": "mp", "code": f"e2e-{uuid.uuid4().hex[:16]}"})
    done = anonymous.call(
        "POST", "/v1/auth/wechat", 201, {"app": "mp", "signup_ticket": ticket["signup_ticket"], "role": role}
    )
    return Caller(api, done["access_token"]), done["user_id"]


def _pay(doubles: Buttons, payer: Caller, channel: str, body: dict[str, Any]) -> dict[str, Any]:
    """Open the order on ``channel`` and let the provider's double pay it with the client parameters we gave."""
    order = payer.call("POST", "/v1/payments", 201, {**body, "channel": channel, "scene": SCENES[channel]})
    assert order["client_params"], order
    doubles.control(channel, "pay", {"client_params": order["client_params"]})
    eventually(
        lambda: payer.call("GET", f"/v1/payments/{order['order_id']}", 200)["status"] == "succeeded",
        f"the {channel} payment callback",
    )
    return order


def _withdrawal(doctor: Caller, withdrawal_id: str) -> dict[str, Any]:
    return next(
        item for item in doctor.call("GET", "/v1/withdrawals", 200)["items"] if item["withdrawal_id"] == withdrawal_id
    )


def _withdraw(doubles: Buttons, doctor: Caller, channel: str, request: dict[str, Any], outcome: str) -> dict[str, Any]:
    """Withdraw; the provider pays (``success``) or refuses (``fail``); answer the withdrawal once final."""
    payer = PAYOUT_DOUBLE[channel]
    if not ASYNC_PAYOUTS[channel]:
        doubles.control(payer, "plan-payout", {"outcome": outcome})
    withdrawal = doctor.call("POST", "/v1/withdrawals", 201, request)
    number = withdrawal["withdrawal_id"]
    if ASYNC_PAYOUTS[channel]:
        eventually(lambda: _withdrawal(doctor, number)["status"] not in ("requested",), "the payout sent")
        doubles.control(payer, f"payouts/{number}", {"outcome": outcome})
    wanted = "succeeded" if outcome == "success" else "failed"
    # Alipay sends no notification for a card transfer: the settlement job's query finds its end
    # (the first check a minute after sending)
    return eventually(
        lambda: (item := _withdrawal(doctor, number))["status"] == wanted and item,
        f"the {channel} payout to end",
        timeout=150,
    )


def _flow(api: str, doubles: Buttons, admin: Caller, hospital_id: str, channel: str) -> None:
    # GIVEN a verified doctor working in two minutes and a verified hospital account
    doctor, doctor_id = _wechat_user(api, "doctor") if channel == "wechat" else sign_up(api, "doctor")
    profile = {"name": "Dr Zhao", "hospital_id": hospital_id, "title": "attending", "invitation_fee": FEE}
    doctor.call("PATCH", "/v1/me", 200, {**profile, "consultation_fee": 20_000})
    doctor.call("POST", "/v1/me/verification", 202, CREDENTIALS)
    admin.call("POST", f"/v1/admin/verifications/{doctor_id}/approve", 200)
    start = (utc_now() + timedelta(minutes=2)).astimezone(SHANGHAI).replace(second=0, microsecond=0)
    day = {"date": start.date().isoformat(), "working": True, "invitation_capacity": 3, "consultation_capacity": 0}
    doctor.call("PUT", "/v1/me/calendar", 200, {"days": [day]})
    hospital, hospital_user = _wechat_user(api, "hospital") if channel == "wechat" else sign_up(api, "hospital")
    contact = {"hospital_id": hospital_id, "contact_name": "Wang", "contact_phone": phone_number()}
    hospital.call("PATCH", "/v1/me", 200, contact)
    licence = {"institution_licence_no": "PDY00001X11010517A1001", "unified_social_credit_code": "91440300708461136T"}
    hospital.call("POST", "/v1/me/verification", 202, licence)
    admin.call("POST", f"/v1/admin/verifications/{hospital_user}/approve", 200)

    # WHEN it buys the yearly membership on the channel THEN it is a member
    _pay(doubles, hospital, channel, {"purpose": "membership", "reference": "year"})
    assert hospital.call("GET", "/v1/me/membership", 200)["active"] is True

    # WHEN it invites the doctor twice and pays both; the doctor declines one and accepts the other
    body = {
        "kind": "invitation",
        "doctor_id": doctor_id,
        "hospital_id": hospital_id,
        "date": start.date().isoformat(),
        "time": start.strftime("%H:%M"),
        "operation": {"procedure": "Thyroidectomy", "expected_minutes": 90},
        "summary": SUMMARY,
    }
    kept, declined = (hospital.call("POST", "/v1/invitations", 201, body)["invitation_id"] for _ in range(2))
    for invitation_id in (kept, declined):
        _pay(doubles, hospital, channel, {"purpose": "invitation", "reference": invitation_id})
    doctor.call("POST", f"/v1/invitations/{declined}/decline", 200, {"reason": "Another operation at that time"})
    scheduled = datetime.fromisoformat(doctor.call("POST", f"/v1/invitations/{kept}/accept", 200)["scheduled_at"])

    # THEN the declined one is refunded in full by the original path
    eventually(lambda: status_of(hospital, declined) == "refunded", f"the {channel} refund")

    # WHEN the operation is done and confirmed, and the hospital tips
    time.sleep(max(0.0, (scheduled - utc_now()).total_seconds()) + 1)
    doctor.call("POST", f"/v1/invitations/{kept}/complete", 200)
    hospital.call("POST", f"/v1/invitations/{kept}/confirm", 200)
    _pay(doubles, hospital, channel, {"purpose": "tip", "reference": kept, "amount_fen": TIP})
    wallet = doctor.call("GET", "/v1/me/wallet", 200)
    assert (wallet["pending_fen"], wallet["available_fen"]) == (0, SHARE + TIP)

    # WHEN the doctor withdraws twice to the account this channel pays: refused, then paid
    account = doctor.call("POST", "/v1/me/payout-accounts", 201, PAYEES[channel])
    request = {"amount_fen": FIRST_WITHDRAWAL, "payout_account_id": account["account_id"]}
    failed = _withdraw(doubles, doctor, channel, request, "fail")
    assert failed["fail_reason"]
    assert doctor.call("GET", "/v1/me/wallet", 200)["available_fen"] == SHARE + TIP
    _withdraw(doubles, doctor, channel, {**request, "amount_fen": SHARE + TIP}, "success")

    # THEN the doctor holds nothing, and each statement shows every movement
    wallet = doctor.call("GET", "/v1/me/wallet", 200)
    assert (wallet["pending_fen"], wallet["available_fen"], wallet["payout_fen"]) == (0, 0, 0)
    rows = hospital.call("GET", "/v1/me/transactions", 200, params={"limit": 100})["items"]
    assert sorted((row["type"], row["direction"], row["amount_fen"]) for row in rows) == [
        ("membership", "out", PRICE),
        ("payment", "out", FEE),
        ("payment", "out", FEE),
        ("refund", "in", FEE),
        ("tip", "out", TIP),
    ]


def test_every_channel_takes_refunds_and_pays_out(flow_stack: Stack, channel_doubles: Doubles) -> None:
    api = flow_stack.base_url
    admin_phone = phone_number()
    make_admin(flow_stack, admin_phone)
    login = Caller(api).call("POST", "/v1/auth/login", 200, {"phone": admin_phone, "password": ADMIN_PASSWORD})
    admin = Caller(api, login["access_token"])
    hospital_id = Caller(api).call("GET", "/v1/hospitals", 200, params={"q": "xh"})["items"][0]["hospital_id"]
    doubles = Buttons(channel_doubles.urls())

    with ThreadPoolExecutor(max_workers=len(doubles.urls)) as pool:
        flows = {channel: pool.submit(_flow, api, doubles, admin, hospital_id, channel) for channel in doubles.urls}
    for channel, flow in flows.items():
        try:
            flow.result()
        except Exception as error:
            raise AssertionError(f"the {channel} flow failed: {error}") from error

    # AND the ledger holds
    assert admin.call("GET", "/v1/admin/ledger/check", 200)["ok"] is True
    command = [sys.executable, "-m", "devstack.stack", "--ddb-port", str(flow_stack.ddb_port), "check-ledger"]
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
