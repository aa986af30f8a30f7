"""REPORT.md's claim rows: paired differences, intervals over documents, draws and training seeds, the test each
claim's words name, gatekeeping and Holm, on hand-made outcomes."""

from __future__ import annotations

import pytest

from manyicl.harness.claims import (
    EQUIVALENCE,
    HELD,
    NONINFERIORITY,
    NOT_RESOLVED,
    PRIMARY,
    SUPERIORITY,
    Claim,
    claim_rows,
    claims_markdown,
    format_p,
    needed_scale,
    raw_verdict,
    rerun_markdown,
    spreads,
)
from manyicl.harness.paired import Outcome, OutcomeTable, paired_units, read_outcomes_csv, write_outcomes_csv


def outcomes(method: str, values: dict[str, list[float]], shots: str = "many", role: str = "train",
             seeds: tuple[int, ...] = (1,), train_seed: int | None = None, draws: int = 1,
             predictions: list[int] | None = None) -> list[Outcome]:
    """One outcome per (task, document, demonstration seed): `values[task][i]` is document i's score; with
    `draws` > 1 document i sits in block i mod draws."""
    return [Outcome(model=f"{method}-seed{train_seed}" if train_seed else method, model_path=f"/m/{method}{train_seed}",
                    method=method, task=task, role=role, shots=shots, seed=seed, uid=str(i), value=v,
                    train_seed=train_seed, draw=i % draws, draws=draws,
                    prediction=None if predictions is None else predictions[i])
            for task, row in values.items() for i, v in enumerate(row) for seed in seeds]


SCORES = {"sst2": [1, 0, 1, 1, 0, 1, 0, 1], "rte": [0, 1, 1, 0, 0, 1, 1, 0]}


def test_identical_arms_never_get_a_zero_wide_interval():
    table = OutcomeTable(outcomes("manyicl", SCORES, seeds=(1, 2, 3)) + outcomes("zero-shot", SCORES, seeds=(1, 2, 3)))
    rows = claim_rows(table, ["many"])
    primary = rows[0]
    assert primary.primary and primary.claim == PRIMARY and primary.shots == "many"
    assert primary.interval.estimate == 0.0
    # no document differs, yet 16 documents cannot rule out a difference: the score interval keeps it open
    assert primary.interval.low < -0.1 and primary.interval.high > 0.1 and primary.interval.method == "t + score"
    assert primary.verdict == NOT_RESOLVED and primary.p_value == 1.0
    assert primary.value_a == primary.value_b == pytest.approx(9 / 16)
    assert {r.verdict for r in rows[1:] if r.claim.b in {"few-shot", "many-shot-last", "dedicated"}} == {"not run"}


def test_zero_discordant_documents_out_of_56_allow_about_six_points():
    same = {"cb": [1] * 28 + [0] * 28}
    row = claim_rows(OutcomeTable(outcomes("manyicl", same) + outcomes("zero-shot", same)), ["many"])[0]
    assert row.interval.high == pytest.approx(0.0642, abs=0.001) and row.interval.low == pytest.approx(-0.0642, abs=0.001)


def test_a_clear_win_holds_and_its_interval_excludes_zero():
    wrong = {task: [0] * 40 for task in ("sst2", "rte")}
    right = {task: [1] * 30 + [0] * 10 for task in ("sst2", "rte")}
    table = OutcomeTable(outcomes("manyicl", right) + outcomes("zero-shot", wrong))
    primary = claim_rows(table, ["many"])[0]
    assert primary.interval.estimate == pytest.approx(0.75)
    assert 0 < primary.interval.low < 0.75 < primary.interval.high <= 1
    assert primary.verdict == HELD and primary.p_holm is None and primary.p_value < 1e-4
    assert primary.per_task == {"rte": pytest.approx(0.75), "sst2": pytest.approx(0.75)}
    reversed_table = OutcomeTable(outcomes("manyicl", wrong) + outcomes("zero-shot", right))
    assert claim_rows(reversed_table, ["many"])[0].verdict == "reversed"


def test_verdict_rules_test_what_their_words_claim():
    sup = Claim("x", "a", "b", "train", SUPERIORITY)
    ni = Claim("x", "a", "b", "train", NONINFERIORITY, 0.05)
    eq = Claim("x", "a", "b", "probe", EQUIVALENCE, 0.02)
    assert raw_verdict(sup, 0.01, 0.2) == "held" and raw_verdict(sup, -0.2, -0.01) == "reversed"
    assert raw_verdict(sup, -0.01, 0.2) == NOT_RESOLVED
    # non-inferiority: an interval that merely reaches below the margin is not resolved, not "not held"
    assert raw_verdict(ni, -0.06, 0.01) == NOT_RESOLVED
    assert raw_verdict(ni, -0.04, 0.10) == "non-inferior"  # above dedicated is still only non-inferior
    assert raw_verdict(ni, -0.20, -0.06) == "inferior"
    assert raw_verdict(eq, -0.018, 0.014) == "equivalent" and raw_verdict(eq, -0.022, 0.014) == NOT_RESOLVED


def test_secondary_claims_are_not_tested_when_the_primary_fails():
    # the primary does not hold (manyicl = zero-shot on train), while ManyICL clearly beats the base on probes
    same = {"sst2": [1, 0] * 40}
    probe_win = {"arc_easy": [1] * 60 + [0] * 20}
    probe_lose = {"arc_easy": [0] * 80}
    table = OutcomeTable(outcomes("manyicl", same) + outcomes("zero-shot", same)
                         + outcomes("manyicl", probe_win, shots="0", role="probe")
                         + outcomes("base", probe_lose, shots="0", role="probe"))
    rows = claim_rows(table, ["many"])
    assert rows[0].verdict == NOT_RESOLVED
    keeps = next(r for r in rows if r.claim.b == "base" and r.claim.role == "probe")
    assert keeps.verdict == "not tested (would read non-inferior)" and keeps.p_holm is not None


def test_holm_and_gatekeeping_when_the_primary_holds():
    wrong = {"sst2": [0] * 60}
    right = {"sst2": [1] * 45 + [0] * 15}
    slight = {"sst2": [1] * 5 + [0] * 55}  # few-shot: ManyICL beats it too
    table = OutcomeTable(outcomes("manyicl", right) + outcomes("zero-shot", wrong) + outcomes("few-shot", slight)
                         + outcomes("manyicl", right, shots="4") + outcomes("zero-shot", right, shots="4"))
    rows = claim_rows(table, ["4", "many"])
    assert rows[0].verdict == HELD
    beats_few = next(r for r in rows if r.claim.b == "few-shot" and r.shots == "many")
    assert beats_few.verdict == HELD and beats_few.p_holm <= 0.05
    tie_at_4 = next(r for r in rows if r.claim == PRIMARY and r.shots == "4")
    assert tie_at_4.verdict == NOT_RESOLVED


def test_training_seeds_come_from_records_and_widen_the_interval():
    rows = {}
    for spread_seeds in (False, True):
        outs = []
        for t in (1, 2, 3):
            # each seed's models score their own third of the documents; with spread, the seeds disagree a lot
            gain = {1: 0.0, 2: 0.3, 3: 0.6}[t] if spread_seeds else 0.3
            n_right = int(30 * (0.3 + gain))
            mine = {"sst2": [1] * n_right + [0] * (30 - n_right)}
            base = {"sst2": [1] * 9 + [0] * 21}
            outs += [o.__class__(**{**o.__dict__, "uid": f"{t}-{o.uid}"}) for o in outcomes("manyicl", mine, train_seed=t)]
            outs += [o.__class__(**{**o.__dict__, "uid": f"{t}-{o.uid}"}) for o in outcomes("zero-shot", base, train_seed=t)]
        table = OutcomeTable(outs)
        rows[spread_seeds] = claim_rows(table, ["many"])[0]
        assert {u.seed for u in paired_units(table, "manyicl", "zero-shot", shots="many")} == {"1", "2", "3"}
        assert [s.source for s in spreads(table)] == ["training seeds"]
    assert rows[True].interval.seeds == 3 and rows[True].interval.components.seeds > 0
    assert rows[False].interval.components.seeds == 0
    assert rows[True].interval.half_width > 2 * rows[False].interval.half_width


def test_draw_blocks_are_the_clusters_when_draws_were_scored():
    # the draw moves every document of its block alike: blocks 0 and 1 favour A, blocks 2 and 3 favour B
    values_a = {"sst2": [1, 1, 0, 0] * 20}
    values_b = {"sst2": [0, 0, 1, 1] * 20}
    drawn = OutcomeTable(outcomes("manyicl", values_a, draws=4) + outcomes("zero-shot", values_b, draws=4))
    fixed = OutcomeTable(outcomes("manyicl", values_a) + outcomes("zero-shot", values_b))
    with_draws, without = claim_rows(drawn, ["many"])[0], claim_rows(fixed, ["many"])[0]
    assert with_draws.interval.blocks == 4 and without.interval.blocks == 0
    assert with_draws.interval.half_width > without.interval.half_width


def test_one_answer_tasks_are_named_in_the_verdict():
    gold = {"cb": [1] * 30 + [0] * 30}
    table = OutcomeTable(outcomes("manyicl", gold, predictions=[1] * 60) + outcomes("zero-shot", gold,
                                                                                     predictions=[1] * 60))
    row = claim_rows(table, ["many"])[0]
    assert row.one_answer_tasks == ("cb",)
    assert "rests on one-answer task(s): cb" in claims_markdown([row])


def test_markdown_p_floor_and_rerun_advice():
    wrong = {"sst2": [0] * 40}
    right = {"sst2": [1] * 22 + [0] * 18}
    table = OutcomeTable(outcomes("manyicl", right) + outcomes("zero-shot", wrong))
    rows = claim_rows(table, ["many"])
    assert format_p(1e-6) == "< 0.0001" and format_p(0.0312) == "0.0312"
    text = claims_markdown(rows)
    assert "< 0.0001" in text and "95% [" in text
    unclear = OutcomeTable(outcomes("manyicl", {"sst2": [1, 0] * 20}) + outcomes("zero-shot", {"sst2": [1, 1, 0, 0] * 10}))
    row = claim_rows(unclear, ["many"])[0]
    assert row.verdict == NOT_RESOLVED and needed_scale(row) is None  # an estimate of exactly 0
    assert "no rerun size" in rerun_markdown([row])
    held_at_4 = OutcomeTable(outcomes("manyicl", {"sst2": [1, 1, 0, 0] * 20}) + outcomes("zero-shot", {"sst2": [1, 0, 0, 0] * 20}))
    row = claim_rows(held_at_4, ["many"])[0]
    # +25 points with SE 4.9 (79 degrees of freedom): 80% power at 5% needs (4.87 / (25 / (1.99 + 0.84)))^2 = 0.30x
    # the data; a secondary test in a family of 10 more
    assert needed_scale(row) == pytest.approx((0.0487 / (0.25 / (1.9905 + 0.8416))) ** 2, rel=0.01)
    assert needed_scale(row) < needed_scale(row, family=10) < 1


def test_outcomes_csv_reproduces_the_claims(tmp_path):
    outs = []
    for t in (1, 2):
        outs += outcomes("manyicl", {"sst2": [1, 1, 0, 1] * 10}, train_seed=t, draws=4)
        outs += outcomes("zero-shot", {"sst2": [1, 0, 0, 0] * 10}, train_seed=t, draws=4)
    outs = [o.__class__(**{**o.__dict__, "uid": f"{o.train_seed}-{o.uid}"}) for o in outs]
    table = OutcomeTable(outs)
    path = write_outcomes_csv(table, tmp_path / "outcomes.csv")
    header = path.read_text().splitlines()[0]
    assert header.startswith("arm,train_seed,task,role,shots,draw,doc,outcome")
    again = claim_rows(read_outcomes_csv(path), ["many"])[0]
    first = claim_rows(table, ["many"])[0]
    assert again.interval == first.interval
