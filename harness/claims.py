"""The study's claims as data (which arms, which role, which test, which margin, which one is primary), stated before
any study runs, and how each is decided from paired per-document outcomes.

Every test reads one interval (`harness.stats.components_interval`: documents, demonstration draws and training
seeds) and the p-value that matches it. The error of the whole report is kept at 5% by a fixed plan:

1. The primary claim is tested first, at 5%.
2. Only when it holds are the secondary tests read, as one family under Holm's correction at 5% (serial
   gatekeeping). When it does not hold, the secondary rows are shown for description and decide nothing.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from manyicl.harness.errors import HarnessError
from manyicl.harness.paired import OutcomeTable, paired_units
from manyicl.harness.settings import ONE_ANSWER
from manyicl.harness.stats import (
    Interval,
    Unit,
    components_interval,
    holm,
    interval_p_value,
    t_quantile,
    z_value,
)

ALPHA = 0.05  # the error of the whole report: the primary claim's level, and the secondary family's under Holm
POWER = 0.8  # what the rerun advice sizes for

SUPERIORITY = "superiority"  # A − B > 0 (or < 0: reversed), two-sided 95% interval
NONINFERIORITY = "non-inferiority"  # A − B > −margin, lower end of the two-sided 95% interval (one-sided 2.5%)
EQUIVALENCE = "equivalence"  # −margin < A − B < margin, the 90% interval (two one-sided tests at 5%)

# The margins, in metric units (0.05 = 5 points), fixed before any study runs and printed in every report.
MARGINS = {
    "approaches dedicated": 0.05,  # ManyICL is at most 5 points below dedicated fine-tuning
    "keeps the base model": 0.02,  # ManyICL's probe scores are at most 2 points below the base model's
    "forgets equally": 0.02,  # probe scores of two fine-tuned arms within ±2 points of each other
}

# Verdict words, each with one meaning; REPORT.md prints this table.
HELD = "held"
REVERSED = "reversed"
NOT_RESOLVED = "not resolved"
SUGGESTIVE = "suggestive"
NONINFERIOR = "non-inferior"
INFERIOR = "inferior"
EQUIVALENT = "equivalent"
NOT_TESTED = "not tested"
NOT_RUN = "not run"
NO_SCORES = "no scores"
VERDICTS = {
    HELD: "superiority: the 95% interval of A − B lies above 0 (and, for a secondary claim, Holm's adjusted p ≤ 0.05)",
    REVERSED: "superiority: the 95% interval lies below 0 (and Holm's adjusted p ≤ 0.05): B is measurably better",
    NONINFERIOR: "non-inferiority: the 95% interval's lower end lies above −margin (and Holm's adjusted p ≤ 0.05)",
    INFERIOR: "non-inferiority: the whole 95% interval lies below −margin: A is more than the margin worse",
    EQUIVALENT: "equivalence: the 90% interval lies inside ±margin (two one-sided tests at 5%, Holm-adjusted)",
    NOT_RESOLVED: "the interval does not decide the test (it reaches across 0, or across the margin)",
    SUGGESTIVE: "a secondary test that would decide at 5% alone but not after Holm's correction",
    NOT_TESTED: "a secondary test read only for description: the primary claim did not hold (gatekeeping)",
    NOT_RUN: "an arm of the claim was not in the study",
    NO_SCORES: "the two arms share no scored document at that setting",
}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested as arm `a` against arm `b` on the documents of one role."""

    text: str  # how REPORT.md states it
    a: str  # the arm the claim is about
    b: str  # the arm it is compared with
    role: str  # train (the mixture's tasks) | probe (forgetting) | heldout (unseen tasks)
    test: str  # SUPERIORITY | NONINFERIORITY | EQUIVALENCE
    margin: float = 0.0  # for NONINFERIORITY and EQUIVALENCE, metric units


# Named before anything runs: the one claim tested at the plain 5% level; everything else is secondary.
PRIMARY = Claim("ManyICL beats zero-shot fine-tuning", "manyicl", "zero-shot", "train", SUPERIORITY)
PRIMARY_SHOTS = "many"

CLAIMS: tuple[Claim, ...] = (
    PRIMARY,
    Claim("ManyICL beats few-shot fine-tuning", "manyicl", "few-shot", "train", SUPERIORITY),
    Claim("Loss on every answer beats loss on the last (ablation)", "manyicl", "many-shot-last", "train",
          SUPERIORITY),
    Claim("ManyICL approaches dedicated fine-tuning (at most 5 points below)", "manyicl", "dedicated", "train",
          NONINFERIORITY, MARGINS["approaches dedicated"]),
    Claim("ManyICL forgets less than zero-shot FT (higher probe scores)", "manyicl", "zero-shot", "probe",
          SUPERIORITY),
    Claim("ManyICL and zero-shot FT forget equally (probe scores within ±2 points)", "manyicl", "zero-shot", "probe",
          EQUIVALENCE, MARGINS["forgets equally"]),
    Claim("ManyICL forgets less than few-shot FT (higher probe scores)", "manyicl", "few-shot", "probe", SUPERIORITY),
    Claim("ManyICL and few-shot FT forget equally (probe scores within ±2 points)", "manyicl", "few-shot", "probe",
          EQUIVALENCE, MARGINS["forgets equally"]),
    Claim("ManyICL keeps the base model's probe scores (at most 2 points below)", "manyicl", "base", "probe",
          NONINFERIORITY, MARGINS["keeps the base model"]),
    Claim("On unseen tasks ManyICL beats zero-shot FT", "manyicl", "zero-shot", "heldout", SUPERIORITY),
    Claim("On unseen tasks ManyICL beats few-shot FT", "manyicl", "few-shot", "heldout", SUPERIORITY),
    Claim("On unseen tasks ManyICL beats the base model", "manyicl", "base", "heldout", SUPERIORITY),
)


@dataclass(frozen=True)
class ClaimRow:
    """One claim at one shot setting, decided from paired documents."""

    claim: Claim
    shots: str
    primary: bool
    verdict: str
    interval: Interval | None = None  # A − B: 95% (90% for equivalence), documents + draws + training seeds
    p_value: float | None = None  # the test's own p-value (matching its interval)
    p_holm: float | None = None  # Holm-adjusted within the secondary family
    value_a: float | None = None  # A's mean over tasks on the paired documents
    value_b: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)  # A − B per task
    one_answer_tasks: tuple[str, ...] = ()  # tasks where an arm gave one answer to ≥ 90% of documents


def _confidence(claim: Claim) -> float:
    return 1 - 2 * ALPHA if claim.test == EQUIVALENCE else 1 - ALPHA


def test_p_value(claim: Claim, units: list[Unit]) -> float:
    """The claim's p-value, inverted from the same interval family its verdict reads, so the two never disagree.
    Non-inferiority is one-sided at 2.5% (the 95% interval's lower end), so its p-value is doubled for a 5% family;
    equivalence takes the larger of its two one-sided p-values (each at 5%)."""
    if claim.test == SUPERIORITY:
        return interval_p_value(units, 0.0, "two")
    if claim.test == NONINFERIORITY:
        return min(1.0, 2 * interval_p_value(units, -claim.margin, "greater"))
    return max(interval_p_value(units, -claim.margin, "greater"), interval_p_value(units, claim.margin, "less"))


def raw_verdict(claim: Claim, low: float, high: float) -> str:
    """The verdict the interval gives before any correction."""
    if claim.test == SUPERIORITY:
        return HELD if low > 0 else REVERSED if high < 0 else NOT_RESOLVED
    if claim.test == NONINFERIORITY:
        return NONINFERIOR if low > -claim.margin else INFERIOR if high < -claim.margin else NOT_RESOLVED
    return EQUIVALENT if -claim.margin < low and high < claim.margin else NOT_RESOLVED


def _arm_means(units_a: dict[str, list[float]], units_b: dict[str, list[float]]) -> tuple[float, float]:
    return (statistics.fmean(statistics.fmean(v) for v in units_a.values()),
            statistics.fmean(statistics.fmean(v) for v in units_b.values()))


def _decide(table: OutcomeTable, claim: Claim, shots: str, primary: bool,
            one_answer: dict[tuple[str, str, str], float]) -> ClaimRow:
    if claim.a not in table.methods or claim.b not in table.methods:
        return ClaimRow(claim, shots, primary, NOT_RUN)
    try:
        units = paired_units(table, claim.a, claim.b, shots=shots, role=claim.role)
    except HarnessError:
        return ClaimRow(claim, shots, primary, NO_SCORES)
    interval = components_interval(units, _confidence(claim))
    per_task: dict[str, list[float]] = defaultdict(list)
    for u in units:
        per_task[u.stratum].append(u.value)
    a_values, b_values = _paired_values(table, claim, shots)
    value_a, value_b = _arm_means(a_values, b_values)
    flagged = tuple(sorted({task for task in per_task for arm in (claim.a, claim.b)
                            if one_answer.get((arm, task, shots), 0.0) >= ONE_ANSWER}))
    return ClaimRow(claim, shots, primary, raw_verdict(claim, interval.low, interval.high), interval,
                    test_p_value(claim, units), None, value_a, value_b,
                    {t: statistics.fmean(v) for t, v in sorted(per_task.items())}, flagged)


def _paired_values(table: OutcomeTable, claim: Claim, shots: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each arm's outcomes per task on the documents both arms scored (what is paired)."""
    a = {k: v for k, v in table.arm(claim.a, role=claim.role).items() if k[1] == shots}
    b = {k: v for k, v in table.arm(claim.b, role=claim.role).items() if k[1] == shots}
    out_a: dict[str, list[float]] = defaultdict(list)
    out_b: dict[str, list[float]] = defaultdict(list)
    for key in sorted(a.keys() & b.keys()):
        out_a[key[0]].append(a[key])
        out_b[key[0]].append(b[key])
    return out_a, out_b


def one_answer_shares(table: OutcomeTable) -> dict[tuple[str, str, str], float]:
    """(arm, task, shots) -> the share of documents given the arm's most frequent answer (multiple choice)."""
    chosen: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for o in table.outcomes:
        if o.prediction is not None:
            chosen[(o.method, o.task, o.shots)].append(o.prediction)
    return {k: max(v.count(c) for c in set(v)) / len(v) for k, v in chosen.items() if v}


def claim_rows(table: OutcomeTable, shots_list: list[str], claims: tuple[Claim, ...] = CLAIMS,
               primary: Claim = PRIMARY, primary_shots: str = PRIMARY_SHOTS) -> list[ClaimRow]:
    """The primary claim first, then every claim at every shot setting it applies to (train and held-out claims at
    each of `shots_list`, probe claims at the probes' own shots), decided under the plan in this module's
    docstring: gatekeeping, then Holm over every secondary test."""
    has_role = {o.role for o in table.outcomes}
    shots_by_role = {
        "train": shots_list,
        "probe": sorted({o.shots for o in table.outcomes if o.role == "probe"}),
        "heldout": shots_list if "heldout" in has_role else [],
    }
    one_answer = one_answer_shares(table)
    first = _decide(table, primary, primary_shots, True, one_answer)
    rows = []
    for role, role_shots in shots_by_role.items():
        for shots in role_shots:
            rows += [_decide(table, claim, shots, False, one_answer) for claim in claims
                     if claim.role == role and not (claim == primary and shots == primary_shots)]
    gate_open = first.verdict == HELD
    family = {str(i): r.p_value for i, r in enumerate(rows) if r.p_value is not None}
    adjusted = holm(family, ALPHA) if family else {}
    out = [first]
    for i, row in enumerate(rows):
        if str(i) not in adjusted:
            out.append(row)
            continue
        p_holm, rejected = adjusted[str(i)]
        verdict = row.verdict
        if not gate_open:
            verdict = f"{NOT_TESTED} (would read {verdict})" if verdict != NOT_RESOLVED else NOT_TESTED
        elif verdict in {HELD, REVERSED, NONINFERIOR, EQUIVALENT} and not rejected:
            verdict = f"{SUGGESTIVE} ({verdict} before correction)"
        out.append(ClaimRow(row.claim, row.shots, False, verdict, row.interval, row.p_value, p_holm, row.value_a,
                            row.value_b, row.per_task, row.one_answer_tasks))
    return out


# --------------------------------------------------------------------------- sources of variance and power


@dataclass(frozen=True)
class Spread:
    """The primary difference computed separately per training seed or per draw block."""

    source: str  # training seeds | draw blocks
    estimates: dict[str, float]

    @property
    def sd(self) -> float | None:
        values = list(self.estimates.values())
        return statistics.stdev(values) if len(values) > 1 else None


def spreads(table: OutcomeTable, claim: Claim = PRIMARY, shots: str = PRIMARY_SHOTS) -> list[Spread]:
    """The claim's difference on each training seed's documents alone (arms paired seed by seed, the seed read
    from each record's `train_seed`), the raw material of the interval's seed component."""
    try:
        units = paired_units(table, claim.a, claim.b, shots=shots, role=claim.role)
    except HarnessError:
        return []
    by_seed: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        if u.seed is not None:
            by_seed[u.seed].append(u)
    out = []
    if len(by_seed) > 1:
        out.append(Spread("training seeds", {s: components_interval(us).estimate for s, us in sorted(by_seed.items())}))
    return out


def needed_scale(row: ClaimRow, power: float = POWER, family: int = 1) -> float | None:
    """How many times the documents, draws and training seeds together a rerun needs for `power` at the effect
    this study measured (its distance from the tested value: 0, or the margin), tested at ALPHA / `family` (a
    secondary test must pass Holm's correction: Bonferroni's level is its bound); None when nothing would do (an
    effect of exactly the tested value) or the row has no interval."""
    if row.interval is None or row.interval.se == 0:
        return None
    iv, claim = row.interval, row.claim
    if claim.test == SUPERIORITY:
        distance = abs(iv.estimate)
    elif claim.test == NONINFERIORITY:
        distance = iv.estimate + claim.margin
    else:
        distance = claim.margin - abs(iv.estimate)
    if distance <= 0:
        return None
    alpha = (ALPHA if claim.test != EQUIVALENCE else 2 * ALPHA) / family
    # the t quantile at this study's degrees of freedom: a rerun of the same design has no more of them
    needed_se = distance / (t_quantile(1 - alpha, iv.df) + z_value(2 * power - 1))
    return (iv.se / needed_se) ** 2


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}" if round(100 * x, 1) else "0.0"


def format_p(p: float | None) -> str:
    """A p-value to three significant digits; below 0.0001 it says so instead of printing a resolution floor."""
    if p is None:
        return ""
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def claims_markdown(rows: list[ClaimRow]) -> str:
    lines = ["| claim | shots | test | A | B | A (×100) | B (×100) | A − B | interval | ± | per task (A − B) | p "
             "| p (Holm) | documents | draw blocks | training seeds | verdict |",
             "|---|---|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c = r.claim
        name = f"**{c.text}** (primary)" if r.primary else c.text
        test = c.test + (f" (margin {100 * c.margin:g})" if c.margin else "")
        if r.interval is None:
            lines.append(f"| {name} | {r.shots} | {test} | {c.a} | {c.b} | | | | | | | | | | | | {r.verdict} |")
            continue
        iv = r.interval
        level = f"{100 * iv.confidence:.0f}%"
        holm_cell = format_p(r.p_holm) if r.p_holm is not None else ("—" if r.primary else "n/a")
        tasks = ", ".join(f"{t} {_pct(v)}" for t, v in r.per_task.items())
        verdict = r.verdict + (f"; rests on one-answer task(s): {', '.join(r.one_answer_tasks)}"
                               if r.one_answer_tasks else "")
        lines.append(
            f"| {name} | {r.shots} | {test} | {c.a} | {c.b} | {100 * r.value_a:.1f} | {100 * r.value_b:.1f} | "
            f"{_pct(iv.estimate)} | {level} [{_pct(iv.low)}, {_pct(iv.high)}] | {100 * iv.half_width:.1f} | {tasks} | "
            f"{format_p(r.p_value)} | {holm_cell} | {iv.documents} | {iv.blocks or '—'} | {iv.seeds} | {verdict} |")
    return "\n".join(lines)


def components_markdown(row: ClaimRow) -> str:
    """The primary interval's variance split by source, in points of standard error."""
    if row.interval is None:
        return "No interval: the primary claim was not run."
    c = row.interval.components
    total = c.total or 1.0
    lines = ["| source | variance share | standard error (points) |", "|---|---:|---:|"]
    for name, value in (("documents", c.documents), ("demonstration draws", c.draws), ("training seeds", c.seeds)):
        lines.append(f"| {name} | {100 * value / total:.0f}% | {100 * math.sqrt(value):.2f} |")
    lines.append(f"| **all** | 100% | {100 * math.sqrt(c.total):.2f} |")
    return "\n".join(lines)


def spreads_markdown(spread_list: list[Spread]) -> str:
    lines = ["| source of variance | A − B on each one's documents alone (×100) | SD (points) |", "|---|---|---:|"]
    for s in spread_list:
        per = ", ".join(f"seed {k}: {_pct(v)}" for k, v in s.estimates.items()) or "—"
        lines.append(f"| {s.source} | {per} | {'—' if s.sd is None else f'{100 * s.sd:.1f}'} |")
    if not any(s.source == "training seeds" for s in spread_list):
        lines.append("| training seeds | one training seed ran | **unmeasured** |")
    return "\n".join(lines)


def verdicts_markdown() -> str:
    return "\n".join(["| verdict | meaning |", "|---|---|"] + [f"| {k} | {v} |" for k, v in VERDICTS.items()])


def margins_markdown() -> str:
    return ", ".join(f"{k}: {100 * v:g} points" for k, v in MARGINS.items())


def rerun_markdown(rows: list[ClaimRow]) -> str:
    """For each claim the study left unresolved: what a rerun needs for 80% power at the effect measured here (a
    secondary claim at the Bonferroni level of its family, which Holm's correction never asks more than)."""
    lines = []
    family = sum(1 for r in rows if not r.primary and r.p_value is not None)
    for r in rows:
        if r.interval is None or not r.verdict.startswith((NOT_RESOLVED, SUGGESTIVE, NOT_TESTED)):
            continue
        scale = needed_scale(r, family=1 if r.primary else family)
        what = (f"{scale:.1f}× the documents, draws and training seeds together (standard error "
                f"{100 * r.interval.se:.1f} → {100 * r.interval.se / math.sqrt(scale):.1f} points)"
                if scale is not None else "no rerun size: the measured effect lies at or beyond the value tested "
                "(0, or the margin), where more data cannot make the claim hold")
        if r.verdict.startswith(NOT_TESTED):
            what += "; and the primary claim must hold first"
        lines.append(f"- {r.claim.text}, {r.shots} shots: {what}.")
    return "\n".join(lines) or "Every claim was resolved."
