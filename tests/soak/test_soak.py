"""The soak in its bounded form (``make test``): 60 s of random flows under injected DynamoDB faults.

``devstack.soak.run_soak`` starts its own stack (in memory, free ports, faults on in the API and
the event pump), runs 8 clients (the CI machine has 2 cores) for 60 s, finishes the flows they
started, and checks: no 5xx, ``check-ledger``, the sandbox-vs-journal reconciliation, no stuck
invitation, ``recompute-stars``, one answer per ``Idempotency-Key``. ``make soak`` is the long form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devstack.soak import run_soak

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(900)  # 60 s of new flows, up to 4 min to finish them, the checks
def test_a_minute_of_faulty_concurrent_flows_leaves_the_money_exact(tmp_path: Path) -> None:
    # GIVEN 8 clients for 60 s against a stack that injects conflicts, throttles and ambiguous writes
    report = run_soak(clients=8, seconds=60, workdir=tmp_path, seed=11)

    # THEN every check passed (the report lists any violation)
    assert report.ok, "\n".join(report.lines)
    # AND the run was not vacuous: each kind of fault happened, and flows of each money path finished
    for kind in ("conflict", "throttle", "ambiguous"):
        assert report.faults["faults"][kind] > 0, f"no {kind} fault was injected"
    completed = {name.removesuffix(" completed"): n for name, n in report.figures.flows.items() if "completed" in name}
    assert completed.get("accept", 0) > 0 and completed.get("decline", 0) + completed.get("lapse", 0) > 0, completed
    assert report.reconciliation["payments"] > 0 and report.reconciliation["refunds"] > 0, report.reconciliation
    assert report.figures.duplicates, "no Idempotency-Key was sent twice"
