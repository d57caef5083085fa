"""The operator commands of ``devstack.stack``: their exit codes say whether all is well."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from chalicelib.ledger.audit import LedgerReport
from devstack import stack

if TYPE_CHECKING:
    import pytest


def run_check(monkeypatch: pytest.MonkeyPatch, report: LedgerReport) -> int:
    monkeypatch.setattr(stack, "use_stage", lambda args: True)
    monkeypatch.setattr("chalicelib.ledger.audit.check_ledger", lambda: report)
    return stack.check_ledger(argparse.Namespace(stage="local", ddb_port=1))


def test_check_ledger_exits_0_on_a_sound_ledger(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_check(monkeypatch, LedgerReport(transactions=2, accounts=3, entries=4)) == 0
    assert capsys.readouterr().out.splitlines() == ["ledger: 2 transactions, 3 accounts, 4 entries", "ledger: ok"]


def test_check_ledger_exits_1_and_lists_each_violation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = LedgerReport(transactions=1, accounts=2, entries=2, violations=["L3: escrow:i1 is -1 fen, below zero"])

    assert run_check(monkeypatch, report) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "violation: L3: escrow:i1 is -1 fen, below zero",
        "ledger: 1 violations",
    ]


def test_an_admin_needs_a_password_of_eight_characters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "use_stage", lambda args: True)
    monkeypatch.setenv("ADMIN_PASSWORD", "short")

    status = stack.admin(argparse.Namespace(stage="local", ddb_port=1, phone="13900000009", name="Ops"))

    assert status == 1
    assert "at least 8 characters" in capsys.readouterr().err
