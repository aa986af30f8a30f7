"""REPORT.md arithmetic: estimates over tasks, standard errors, and the verdict rules, on hand-built records."""

from __future__ import annotations

import math

import pytest

from harness.claims import Estimate, approaches, claim_rows, estimate, verdict
from harness.results import ResultRecord


def record(method: str, task: str, value: float, stderr: float, shots: str = "0", role: str = "train",
           seed: int = 1) -> ResultRecord:
    return ResultRecord(model=method, model_path=f"/m/{method}", base_model="/m/base", method=method, task=task,
                        family="nli", role=role, shots=shots, shots_min=0, shots_mean=0.0, shots_max=0,
                        metric="accuracy", value=value, stderr=stderr, seed=seed, num_docs=100, backend="hf",
                        format="chat", max_length=1024, created="2026-01-01T00:00:00+00:00")


def test_estimate_averages_tasks_and_combines_stderr():
    rows = [record("manyicl", "rte", 0.6, 0.03), record("manyicl", "cb", 0.8, 0.04)]
    est = estimate(rows, "train", "0")
    assert est.value == pytest.approx(0.7)
    # SE of the mean of two independent task means: sqrt(0.03² + 0.04²) / 2
    assert est.se == pytest.approx(0.025)
    assert est.parts == 2


def test_estimate_averages_seeds_and_shrinks_their_stderr():
    rows = [record("manyicl", "rte", 0.6, 0.04, seed=1), record("manyicl", "rte", 0.7, 0.04, seed=2)]
    est = estimate(rows, "train", None)
    assert est.value == pytest.approx(0.65)
    assert est.se == pytest.approx(0.04 / math.sqrt(2))


def test_estimate_filters_role_and_shots():
    rows = [record("manyicl", "rte", 0.6, 0.03), record("manyicl", "piqa", 0.9, 0.03, role="probe"),
            record("manyicl", "rte", 0.1, 0.03, shots="5")]
    assert estimate(rows, "train", "0").value == pytest.approx(0.6)
    assert estimate(rows, "probe", "0").value == pytest.approx(0.9)
    assert estimate(rows, "heldout", None) is None


@pytest.mark.parametrize(("diff", "se", "higher", "expected"), [
    (0.10, 0.04, True, "held"),
    (-0.10, 0.04, True, "reversed"),
    (0.05, 0.04, True, "not resolved (within noise)"),
    (-0.10, 0.04, False, "held"),
])
def test_verdict(diff, se, higher, expected):
    assert verdict(Estimate(diff, se, 2), higher) == expected


@pytest.mark.parametrize(("diff", "se", "expected"), [
    (-0.01, 0.01, "held"),  # interval [-0.03, 0.01] is within 5 points of dedicated
    (0.10, 0.01, "held (ManyICL above dedicated)"),
    (-0.20, 0.02, "not held (dedicated measurably better)"),
    (-0.04, 0.10, "not resolved (interval reaches below −5 points)"),  # a wide interval proves nothing
])
def test_dedicated_needs_evidence_of_closeness(diff, se, expected):
    assert approaches(Estimate(diff, se, 2)) == expected


def test_claim_rows_compare_arms_and_mark_missing_ones():
    rows = [record("manyicl", "rte", 0.9, 0.01), record("zero-shot", "rte", 0.5, 0.01),
            record("manyicl", "piqa", 0.7, 0.01, role="probe"), record("zero-shot", "piqa", 0.6, 0.01, role="probe")]
    claims = claim_rows(rows, ["0"])
    by = {(c["claim"], c["shots"]): c for c in claims}
    beats = by[("ManyICL beats zero-shot fine-tuning", "0")]
    assert beats["diff"] == pytest.approx(0.4) and beats["result"] == "held"
    assert by[("ManyICL beats few-shot fine-tuning", "0")]["result"] == "not run"
    forgets = by[("ManyICL forgets less than zero-shot FT (probe score difference)", "0")]
    assert forgets["diff"] == pytest.approx(0.1) and forgets["result"] == "held"
    assert not any("unseen" in c["claim"] for c in claims)  # no held-out records, no held-out claims
