"""REPORT.md's claim rows: paired differences, intervals, Holm, and the verdict rules, on hand-made outcomes."""

from __future__ import annotations

import pytest

from manyicl.harness.claims import (
    APPROACHES,
    BEATS,
    NOT_RESOLVED,
    PRIMARY,
    TIE,
    Claim,
    approaches,
    beats,
    claim_rows,
    claims_markdown,
    spreads,
    spreads_markdown,
)
from manyicl.harness.paired import Outcome, OutcomeTable


def outcomes(method: str, values: dict[str, list[float]], shots: str = "many", role: str = "train",
             seeds: tuple[int, ...] = (1,), model: str | None = None) -> list[Outcome]:
    """One outcome per (task, document, seed): `values[task][i]` is document i's score under every seed."""
    return [Outcome(model=model or method, model_path=f"/m/{model or method}", method=method, task=task, role=role,
                    shots=shots, seed=seed, uid=str(i), value=v)
            for task, row in values.items() for i, v in enumerate(row) for seed in seeds]


SCORES = {"sst2": [1, 0, 1, 1, 0, 1, 0, 1], "rte": [0, 1, 1, 0, 0, 1, 1, 0]}


def test_identical_arms_differ_by_exactly_zero_and_tie():
    table = OutcomeTable(outcomes("manyicl", SCORES, seeds=(1, 2, 3)) + outcomes("zero-shot", SCORES, seeds=(1, 2, 3)))
    rows = claim_rows(table, ["many"], iterations=500)
    primary = rows[0]
    assert primary.primary and primary.claim == PRIMARY and primary.shots == "many"
    assert primary.result.estimate == 0.0 and (primary.result.low, primary.result.high) == (0.0, 0.0)
    assert primary.result.half_width == 0.0 and primary.result.p_value == 1.0
    assert primary.verdict == TIE
    assert primary.result.documents == 16 and primary.seeds == 3
    assert primary.value_a == primary.value_b == pytest.approx(9 / 16)
    # the arms that never ran are named as such, not silently dropped
    assert {r.verdict for r in rows[1:] if r.claim.b in {"few-shot", "many-shot-last", "dedicated"}} == {"not run"}


def test_a_clear_win_holds_and_its_interval_excludes_zero():
    wrong = {task: [0] * 40 for task in ("sst2", "rte")}
    right = {task: [1] * 30 + [0] * 10 for task in ("sst2", "rte")}
    table = OutcomeTable(outcomes("manyicl", right) + outcomes("zero-shot", wrong))
    primary = claim_rows(table, ["many"], iterations=2000)[0]
    assert primary.result.estimate == pytest.approx(0.75)
    assert 0 < primary.result.low < 0.75 < primary.result.high <= 1
    assert primary.verdict == "held" and primary.p_holm is None
    reversed_table = OutcomeTable(outcomes("manyicl", wrong) + outcomes("zero-shot", right))
    assert claim_rows(reversed_table, ["many"], iterations=2000)[0].verdict == "reversed"


def test_a_small_difference_is_not_resolved():
    a = {"sst2": [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]}
    b = {"sst2": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]}  # one document differs
    row = claim_rows(OutcomeTable(outcomes("manyicl", a) + outcomes("zero-shot", b)), ["many"], iterations=2000)[0]
    assert row.result.estimate == pytest.approx(0.1) and row.result.low == 0.0 < row.result.high
    assert row.verdict == NOT_RESOLVED


def test_secondary_claims_are_holm_corrected_and_a_weak_one_is_only_suggestive():
    """Eight secondary claims: one with a raw p just under 0.05 must not hold once corrected for the family."""
    strong_a, strong_b = {"sst2": [1] * 30}, {"sst2": [0] * 30}
    weak_a = {"sst2": [1] * 6 + [0] * 24}  # six discordant documents: exact p = 2 / 64 = 0.03125
    weak_b = {"sst2": [0] * 30}
    table = OutcomeTable(
        outcomes("manyicl", strong_a) + outcomes("zero-shot", strong_b)  # primary, at many
        + outcomes("manyicl", weak_a, shots="0") + outcomes("few-shot", weak_b, shots="0")
        + outcomes("zero-shot", weak_b, shots="0") + outcomes("few-shot", strong_b))
    rows = claim_rows(table, ["0", "many"], iterations=2000)
    by = {(r.claim.text, r.shots): r for r in rows}
    weak = by[("ManyICL beats few-shot fine-tuning", "0")]
    assert weak.result.p_value == pytest.approx(2 / 64) and weak.result.low > 0
    family = [r for r in rows if not r.primary and r.result is not None and r.claim.rule == BEATS]
    assert len(family) == 3  # few-shot @0, zero-shot @0, few-shot @many
    # Holm: sorted p = [2/2**30, 2/64, 2/64]; the weak ones get 2 x 2/64 = 0.0625 > 0.05
    assert weak.p_holm == pytest.approx(0.0625)
    assert weak.verdict == "suggestive (held before correction), not established after Holm"
    strong = by[("ManyICL beats few-shot fine-tuning", "many")]
    assert strong.verdict == "held" and strong.p_holm <= 0.05
    assert rows[0].primary and rows[0].verdict == "held" and rows[0].p_holm is None  # the primary is not corrected


@pytest.mark.parametrize(("low", "high", "expected"), [
    (-0.03, 0.01, "held"),  # the gap is shown to be under 5 points
    (0.02, 0.08, "held (ManyICL above dedicated)"),
    (0.0, 0.0, "held"),  # identical to dedicated
    (-0.25, -0.15, "not held (dedicated measurably better)"),
    (-0.14, 0.06, "not resolved (interval reaches below −5 points)"),  # a wide interval proves nothing
])
def test_approaches_needs_evidence_of_closeness(low, high, expected):
    assert approaches(low, high) == expected


@pytest.mark.parametrize(("low", "high", "higher", "expected"), [
    (0.01, 0.2, True, "held"), (-0.2, -0.01, True, "reversed"), (-0.01, 0.2, True, NOT_RESOLVED),
    (-0.2, -0.01, False, "held"), (0.0, 0.0, True, TIE), (0.0, 0.1, True, NOT_RESOLVED),
])
def test_beats_reads_the_interval(low, high, higher, expected):
    assert beats(low, high, higher) == expected


def test_the_verdict_follows_the_rule_not_the_words():
    worded_alike = "ManyICL approaches dedicated"
    same = {"rte": [1] * 18 + [0] * 22}
    table = OutcomeTable(outcomes("manyicl", same, shots="0") + outcomes("dedicated", same, shots="0"))
    rows = claim_rows(table, ["0"], claims=(Claim(worded_alike, "manyicl", "dedicated", "train", APPROACHES),
                                            Claim(worded_alike, "manyicl", "dedicated", "train", BEATS)),
                      iterations=2000)
    by_rule = {r.claim.rule: r.verdict for r in rows if r.shots == "0"}
    assert by_rule == {APPROACHES: "held", BEATS: TIE}
    assert rows[0].verdict == "not run"  # the primary's arms are absent


def test_one_training_seed_leaves_that_variance_unmeasured_and_several_show_it():
    a1, b1 = {"sst2": [1, 1, 0, 0]}, {"sst2": [0, 1, 0, 0]}
    single = OutcomeTable(outcomes("manyicl", a1, seeds=(1, 2)) + outcomes("zero-shot", b1, seeds=(1, 2)))
    got = spreads(single)
    assert [s.source for s in got] == ["demonstration draws"]
    assert got[0].estimates == {"1": 0.25, "2": 0.25} and got[0].sd == 0.0
    assert "**unmeasured**" in spreads_markdown(got)

    a2 = {"sst2": [1, 1, 1, 0]}
    several = OutcomeTable(
        outcomes("manyicl", a1, model="manyicl-seed1") + outcomes("manyicl", a2, model="manyicl-seed2")
        + outcomes("zero-shot", b1, model="zero-shot-seed1") + outcomes("zero-shot", b1, model="zero-shot-seed2"))
    got = spreads(several)
    train = next(s for s in got if s.source == "training seeds")
    assert train.estimates == {"1": 0.25, "2": 0.5}
    assert train.sd == pytest.approx(0.1767767, abs=1e-6)
    assert "unmeasured" not in spreads_markdown(got)
    # the interval pairs each document's mean over the arm's training runs
    assert claim_rows(several, ["many"], iterations=200)[0].result.estimate == pytest.approx(0.375)


def test_markdown_marks_the_primary_and_shows_interval_half_width_documents_and_seeds():
    table = OutcomeTable(outcomes("manyicl", SCORES, seeds=(1, 2, 3)) + outcomes("zero-shot", SCORES, seeds=(1, 2, 3)))
    text = claims_markdown(claim_rows(table, ["many"], iterations=200))
    line = next(t for t in text.splitlines() if "(primary)" in t)
    assert line == ("| **ManyICL beats zero-shot fine-tuning** (primary) | many | manyicl | zero-shot | 56.2 | 56.2 | "
                    "0.0 | [0.0, 0.0] | 0.0 | 1 | — | 16 | 3 | tie (no document differs) |")
