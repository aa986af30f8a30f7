"""The study's claims as data (which arms, which role, which rule) and the arithmetic that decides them: an
estimate per arm over tasks with its standard error, and one verdict function per rule."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.results import ResultRecord

Z = 2.0  # a difference counts when it exceeds two standard errors
APPROACH_MARGIN = 0.05  # "approaches dedicated": the gap is shown to be under 5 points
BEATS = "beats"
APPROACHES = "approaches"


@dataclass(frozen=True)
class Estimate:
    """A mean score over tasks (or probes) with its standard error, in [0, 1]."""

    value: float
    se: float
    parts: int

    def minus(self, other: Estimate) -> Estimate:
        return Estimate(self.value - other.value, math.hypot(self.se, other.se), min(self.parts, other.parts))


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested as arm `a` against arm `b` on the records of one role."""

    text: str  # how REPORT.md states it
    a: str  # the arm the claim is about
    b: str  # the arm it is compared with
    role: str  # train (the mixture's tasks) | probe (forgetting) | heldout (unseen tasks)
    rule: str  # BEATS: a above b beyond the noise | APPROACHES: a within APPROACH_MARGIN of b
    higher_is_better: bool = True


CLAIMS: tuple[Claim, ...] = (
    Claim("ManyICL beats zero-shot fine-tuning", "manyicl", "zero-shot", "train", BEATS),
    Claim("ManyICL beats few-shot fine-tuning", "manyicl", "few-shot", "train", BEATS),
    Claim("Loss on every answer beats loss on the last (ablation)", "manyicl", "many-shot-last", "train", BEATS),
    Claim("ManyICL approaches dedicated fine-tuning (gap = ManyICL − dedicated)", "manyicl", "dedicated", "train",
          APPROACHES),
    Claim("ManyICL forgets less than zero-shot FT (probe score difference)", "manyicl", "zero-shot", "probe", BEATS),
    Claim("ManyICL forgets less than few-shot FT (probe score difference)", "manyicl", "few-shot", "probe", BEATS),
    Claim("ManyICL keeps the base model's probe scores (ManyICL − base)", "manyicl", "base", "probe", BEATS),
    Claim("On unseen tasks ManyICL beats zero-shot FT", "manyicl", "zero-shot", "heldout", BEATS),
    Claim("On unseen tasks ManyICL beats few-shot FT", "manyicl", "few-shot", "heldout", BEATS),
    Claim("On unseen tasks ManyICL beats the base model", "manyicl", "base", "heldout", BEATS),
)


def estimate(records: list[ResultRecord], role: str, shots: str | None) -> Estimate | None:
    """Mean over tasks of (mean over seeds and models) with a standard error from lm-eval's per-document stderr."""
    per_task: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        if r.role == role and (shots is None or r.shots == shots):
            per_task[r.task].append(r)
    if not per_task:
        return None
    values, variances = [], []
    for rows in per_task.values():
        values.append(statistics.fmean(r.value for r in rows))
        errs = [r.stderr or 0.0 for r in rows]
        variances.append(statistics.fmean(e * e for e in errs) / len(rows))
    return Estimate(statistics.fmean(values), math.sqrt(sum(variances)) / len(values), len(values))


def verdict(diff: Estimate, higher_is_better: bool = True) -> str:
    """The BEATS rule: held / reversed when the difference is beyond Z standard errors, else not resolved."""
    signed = diff.value if higher_is_better else -diff.value
    if signed > Z * diff.se:
        return "held"
    if signed < -Z * diff.se:
        return "reversed"
    return "not resolved (within noise)"


def approaches(diff: Estimate, higher_is_better: bool = True) -> str:  # noqa: ARG001 - same signature as verdict
    """The APPROACHES rule. "Approaches" needs evidence of closeness, not just a gap hidden in the noise: it holds
    when even the pessimistic end of the interval (gap − 2 SE) is within APPROACH_MARGIN of the other arm."""
    low, high = diff.value - Z * diff.se, diff.value + Z * diff.se
    if low >= -APPROACH_MARGIN:
        return "held" if low < 0 else "held (ManyICL above dedicated)"
    if high < 0:
        return "not held (dedicated measurably better)"
    return f"not resolved (interval reaches below −{100 * APPROACH_MARGIN:.0f} points)"


RULES: dict[str, Callable[[Estimate, bool], str]] = {BEATS: verdict, APPROACHES: approaches}


def _by_arm(records: list[ResultRecord]) -> dict[str, list[ResultRecord]]:
    by_method: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    return by_method


def judge(claim: Claim, arms: dict[str, list[ResultRecord]], shots: str | None) -> dict[str, Any]:
    """One row of the claims table: the claim at one shot setting (None: over all of them) and its verdict."""
    row: dict[str, Any] = {"claim": claim.text, "shots": shots or "all", "a": claim.a, "b": claim.b,
                           "role": claim.role, "rule": claim.rule}
    if claim.a not in arms or claim.b not in arms:
        return row | {"result": "not run"}
    ea, eb = estimate(arms[claim.a], claim.role, shots), estimate(arms[claim.b], claim.role, shots)
    if ea is None or eb is None:
        return row | {"result": "no scores"}
    diff = ea.minus(eb)
    return row | {"va": ea.value, "vb": eb.value, "diff": diff.value, "se": diff.se,
                  "result": RULES[claim.rule](diff, claim.higher_is_better)}


def claim_rows(records: list[ResultRecord], shots_list: list[str],
               claims: tuple[Claim, ...] = CLAIMS) -> list[dict[str, Any]]:
    """Every claim at every shot setting it applies to: train and held-out claims at each of `shots_list` and
    over all of them, probe claims at the probes' own shots; held-out claims only when held-out tasks were scored."""
    arms = _by_arm(records)
    shots_by_role: dict[str, list[str | None]] = {
        "train": [*shots_list, None],
        "probe": sorted({r.shots for r in records if r.role == "probe"}),
        "heldout": [*shots_list, None] if any(r.role == "heldout" for r in records) else [],
    }
    rows: list[dict[str, Any]] = []
    for role, role_shots in shots_by_role.items():
        role_claims = [c for c in claims if c.role == role]
        for shots in role_shots:
            rows += [judge(claim, arms, shots) for claim in role_claims]
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}" if x else "0.0"


def claims_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| claim | shots | A | B | A (×100) | B (×100) | A − B (±2 SE) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "diff" in r:
            lines.append(f"| {r['claim']} | {r['shots']} | {r['a']} | {r['b']} | {100 * r['va']:.1f} | "
                         f"{100 * r['vb']:.1f} | {_pct(r['diff'])} ± {200 * r['se']:.1f} | {r['result']} |")
        else:
            lines.append(f"| {r['claim']} | {r['shots']} | {r['a']} | {r['b']} | | | | {r['result']} |")
    return "\n".join(lines)
