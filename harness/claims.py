"""The study's claims as data (which arms, which role, which rule, which one is primary) and how each is decided
from paired per-document outcomes: a clustered bootstrap interval of the difference, a sign-flip p-value, Holm's
correction over the secondary claims, and one verdict function per rule that reads the interval."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from manyicl.harness.errors import HarnessError
from manyicl.harness.paired import OutcomeTable, pair
from manyicl.harness.stats import PairedResult, compare, holm, paired_estimate

APPROACH_MARGIN = 0.05  # "approaches dedicated": the gap is shown to be under 5 points
ALPHA = 0.05  # the family-wise error rate of the secondary claims, and the primary claim's level
BEATS = "beats"
APPROACHES = "approaches"
TIE = "tie (no document differs)"
NOT_RESOLVED = "not resolved (interval includes 0)"
# A study trained with several training seeds names each run `<arm>-seed<N>`; the suffix pairs arms by seed.
TRAIN_SEED_PATTERN = re.compile(r"-seed(\d+)$")


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested as arm `a` against arm `b` on the documents of one role."""

    text: str  # how REPORT.md states it
    a: str  # the arm the claim is about
    b: str  # the arm it is compared with
    role: str  # train (the mixture's tasks) | probe (forgetting) | heldout (unseen tasks)
    rule: str  # BEATS: a above b, the interval excludes 0 | APPROACHES: a within APPROACH_MARGIN of b
    higher_is_better: bool = True


# Named before anything runs: the one claim tested at the plain 5% level. Everything else is secondary.
PRIMARY = Claim("ManyICL beats zero-shot fine-tuning", "manyicl", "zero-shot", "train", BEATS)
PRIMARY_SHOTS = "many"

CLAIMS: tuple[Claim, ...] = (
    PRIMARY,
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


def beats(low: float, high: float, higher_is_better: bool = True) -> str:
    """The BEATS rule on the 95% interval of A − B: held when it lies above 0, reversed when below, a tie when
    it is exactly [0, 0] (the arms agree on every document), else not resolved."""
    if low == 0 and high == 0:
        return TIE
    lo, hi = (low, high) if higher_is_better else (-high, -low)
    if lo > 0:
        return "held"
    if hi < 0:
        return "reversed"
    return NOT_RESOLVED


def approaches(low: float, high: float, higher_is_better: bool = True) -> str:  # noqa: ARG001 - same signature
    """The APPROACHES rule. Closeness needs evidence, not a gap hidden in the noise: it holds when even the
    interval's pessimistic end is within APPROACH_MARGIN of the other arm."""
    if low >= -APPROACH_MARGIN:
        return "held (ManyICL above dedicated)" if low > 0 else "held"
    if high < 0:
        return "not held (dedicated measurably better)"
    return f"not resolved (interval reaches below −{100 * APPROACH_MARGIN:.0f} points)"


RULES: dict[str, Callable[[float, float, bool], str]] = {BEATS: beats, APPROACHES: approaches}


@dataclass(frozen=True)
class ClaimRow:
    """One claim at one shot setting, decided from paired documents."""

    claim: Claim
    shots: str
    primary: bool
    verdict: str  # the rule's verdict; "not run" / "no scores" when an arm or its documents are missing
    result: PairedResult | None = None  # the paired difference A − B, its interval and p-value
    value_a: float | None = None  # A's mean over tasks on the paired documents
    value_b: float | None = None
    seeds: int = 0  # demonstration seeds per document (the most any document was paired under)
    p_holm: float | None = None  # Holm-adjusted p-value (secondary BEATS claims only)


def _arm_means(table: OutcomeTable, claim: Claim, shots: str) -> tuple[float, float]:
    """Each arm's mean over tasks of its per-task mean on the documents both arms scored (what is paired)."""
    a = {k: v for k, v in table.arm(claim.a, role=claim.role).items() if k[1] == shots}
    b = {k: v for k, v in table.arm(claim.b, role=claim.role).items() if k[1] == shots}
    per_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key in a.keys() & b.keys():
        per_task[key[0]].append((a[key], b[key]))
    means = [(statistics.fmean(x for x, _ in v), statistics.fmean(y for _, y in v)) for v in per_task.values()]
    return statistics.fmean(x for x, _ in means), statistics.fmean(y for _, y in means)


def _decide(table: OutcomeTable, claim: Claim, shots: str, primary: bool, iterations: int, seed: int) -> ClaimRow:
    if claim.a not in table.methods or claim.b not in table.methods:
        return ClaimRow(claim, shots, primary, "not run")
    try:
        pairing = pair(table, claim.a, claim.b, shots=shots, role=claim.role)
    except HarnessError:
        return ClaimRow(claim, shots, primary, "no scores")
    result = compare(pairing.clusters, iterations=iterations, seed=seed)
    value_a, value_b = _arm_means(table, claim, shots)
    return ClaimRow(claim, shots, primary, RULES[claim.rule](result.low, result.high, claim.higher_is_better),
                    result, value_a, value_b, max(len(c.diffs) for c in pairing.clusters))


def claim_rows(table: OutcomeTable, shots_list: list[str], claims: tuple[Claim, ...] = CLAIMS,
               primary: Claim = PRIMARY, primary_shots: str = PRIMARY_SHOTS, iterations: int = 10_000,
               seed: int = 0) -> list[ClaimRow]:
    """The primary claim first, then every claim at every shot setting it applies to (train and held-out claims at
    each of `shots_list`, probe claims at the probes' own shots). Secondary BEATS claims are corrected together
    with Holm's method: one whose interval excludes 0 but whose adjusted p-value is above ALPHA is reported as
    suggestive, not established. APPROACHES claims are decided by their interval alone (their p-value tests "no
    difference", which is not what they claim)."""
    has_role = {o.role for o in table.outcomes}
    shots_by_role = {
        "train": shots_list,
        "probe": sorted({o.shots for o in table.outcomes if o.role == "probe"}),
        "heldout": shots_list if "heldout" in has_role else [],
    }
    rows = [_decide(table, primary, primary_shots, True, iterations, seed)]
    for role, role_shots in shots_by_role.items():
        for shots in role_shots:
            rows += [_decide(table, claim, shots, False, iterations, seed) for claim in claims
                     if claim.role == role and not (claim == primary and shots == primary_shots)]
    family = {i: r.result.p_value for i, r in enumerate(rows)
              if not r.primary and r.result is not None and r.claim.rule == BEATS}
    adjusted = holm({str(i): p for i, p in family.items()}, ALPHA) if family else {}
    out: list[ClaimRow] = []
    for i, row in enumerate(rows):
        if str(i) not in adjusted:
            out.append(row)
            continue
        p_holm, rejected = adjusted[str(i)]
        verdict = row.verdict
        if verdict in {"held", "reversed"} and not rejected:
            verdict = f"suggestive ({verdict} before correction), not established after Holm"
        out.append(ClaimRow(row.claim, row.shots, False, verdict, row.result, row.value_a, row.value_b, row.seeds,
                            p_holm))
    return out


@dataclass(frozen=True)
class Spread:
    """The primary difference computed separately per demonstration seed, or per training seed."""

    source: str  # demonstration draws | training seeds
    estimates: dict[str, float]  # seed -> A − B

    @property
    def sd(self) -> float | None:
        values = list(self.estimates.values())
        return statistics.stdev(values) if len(values) > 1 else None


def _estimate_on(outcomes: list, claim: Claim, shots: str) -> float | None:
    try:
        return paired_estimate(pair(OutcomeTable(outcomes), claim.a, claim.b, shots=shots, role=claim.role).clusters)
    except HarnessError:
        return None


def training_seed(model: str) -> str | None:
    """The training seed a run's name carries (`manyicl-seed7` -> "7"); None for a single-seed run."""
    match = TRAIN_SEED_PATTERN.search(model)
    return match.group(1) if match else None


def spreads(table: OutcomeTable, claim: Claim = PRIMARY, shots: str = PRIMARY_SHOTS) -> list[Spread]:
    """The claim's difference per demonstration seed and per training seed (arms paired by the same training
    seed): the two sources of variance a single interval mixes. Training seeds appear only when they ran."""
    by_demo: dict[str, float] = {}
    for seed in sorted({o.seed for o in table.outcomes if o.shots == shots}):
        value = _estimate_on([o for o in table.outcomes if o.seed == seed], claim, shots)
        if value is not None:
            by_demo[str(seed)] = value
    by_train: dict[str, float] = {}
    seeds = sorted({s for o in table.outcomes if o.method in {claim.a, claim.b}
                    if (s := training_seed(o.model)) is not None}, key=int)
    for seed in seeds:
        chosen = [o for o in table.outcomes if o.method not in {claim.a, claim.b} or training_seed(o.model) == seed]
        value = _estimate_on(chosen, claim, shots)
        if value is not None:
            by_train[seed] = value
    out = [Spread("demonstration draws", by_demo)]
    if by_train:
        out.append(Spread("training seeds", by_train))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}" if x else "0.0"


def _p(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def claims_markdown(rows: list[ClaimRow]) -> str:
    lines = ["| claim | shots | A | B | A (×100) | B (×100) | A − B | 95% interval | ± | p | p (Holm) | documents "
             "| seeds | verdict |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c = r.claim
        name = f"**{c.text}** (primary)" if r.primary else c.text
        if r.result is None:
            lines.append(f"| {name} | {r.shots} | {c.a} | {c.b} | | | | | | | | | | {r.verdict} |")
            continue
        res = r.result
        holm_cell = _p(r.p_holm) if r.p_holm is not None else ("—" if r.primary else "n/a")
        lines.append(
            f"| {name} | {r.shots} | {c.a} | {c.b} | {100 * r.value_a:.1f} | {100 * r.value_b:.1f} | "
            f"{_pct(res.estimate)} | [{_pct(res.low)}, {_pct(res.high)}] | {100 * res.half_width:.1f} | "
            f"{_p(res.p_value)} | {holm_cell} | {res.documents} | {r.seeds} | {r.verdict} |")
    return "\n".join(lines)


def spreads_markdown(spread_list: list[Spread]) -> str:
    lines = ["| source of variance | A − B per seed (×100) | SD between seeds (points) |", "|---|---|---:|"]
    for s in spread_list:
        per = ", ".join(f"seed {k}: {_pct(v)}" for k, v in s.estimates.items()) or "—"
        lines.append(f"| {s.source} | {per} | {'—' if s.sd is None else f'{100 * s.sd:.1f}'} |")
    if not any(s.source == "training seeds" for s in spread_list):
        lines.append("| training seeds | one training seed ran | **unmeasured** |")
    return "\n".join(lines)
