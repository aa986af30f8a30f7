"""Paired statistics for comparing two arms on the same documents: a cluster bootstrap interval, a sign-flip
permutation p-value, Holm's correction, and the number of documents a wanted interval width needs."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from manyicl.harness.errors import HarnessError

BOOTSTRAP_METHODS = ("percentile", "bca")
EXACT_MAX_CLUSTERS = 16  # 2**16 sign patterns; above this a Monte-Carlo p-value is as good and far cheaper
_TIE = 1e-12  # permutation statistics equal up to float rounding count as ties (as extreme as the observed)


@dataclass(frozen=True)
class Cluster:
    """One document's paired differences (arm A minus arm B), one per demonstration seed it was scored under.
    The bootstrap and the sign flips move a cluster as a whole: its seeds share the document."""

    stratum: str  # the task: the estimate is the mean over tasks of each task's mean difference
    uid: str
    diffs: tuple[float, ...]


@dataclass(frozen=True)
class PairedResult:
    """The comparison of two arms over paired documents, in the metric's units (proportions for accuracy)."""

    estimate: float  # mean over strata of the mean paired difference (A - B)
    low: float  # lower end of the bootstrap interval
    high: float  # upper end
    confidence: float
    p_value: float  # two-sided sign-flip permutation p-value for "no difference"
    p_method: str  # exact | monte-carlo
    documents: int  # clusters
    pairs: int  # (document, seed) pairs
    wins: int  # documents where A's mean outcome is above B's
    losses: int
    ties: int
    bootstrap: str  # percentile | bca
    iterations: int
    seed: int

    @property
    def half_width(self) -> float:
        return interval_half_width(self.low, self.high)


def interval_half_width(low: float, high: float) -> float:
    """Half the interval's width: the `±` a report quotes."""
    return (high - low) / 2


def _arrays(clusters: Sequence[Cluster]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per-cluster sums and counts, each cluster's stratum index, and the strata in order of appearance."""
    if not clusters:
        raise HarnessError("No paired documents to compare; the two arms share no (task, shots, seed, document).")
    empty = [c.uid for c in clusters if not c.diffs]
    if empty:
        raise HarnessError(f"Document {empty[0]} has no paired outcome; drop it before comparing.")
    strata: list[str] = []
    for c in clusters:
        if c.stratum not in strata:
            strata.append(c.stratum)
    index = {s: i for i, s in enumerate(strata)}
    sums = np.array([math.fsum(c.diffs) for c in clusters], dtype=np.float64)
    counts = np.array([len(c.diffs) for c in clusters], dtype=np.float64)
    which = np.array([index[c.stratum] for c in clusters], dtype=np.int64)
    return sums, counts, which, strata


def paired_estimate(clusters: Sequence[Cluster]) -> float:
    """The mean over strata (tasks) of each stratum's mean difference over its (document, seed) pairs. With every
    task scored on the same number of documents and seeds this is the mean of the per-task score differences."""
    sums, counts, which, strata = _arrays(clusters)
    return float(np.mean([sums[which == s].sum() / counts[which == s].sum() for s in range(len(strata))]))


def _replicates(sums: np.ndarray, counts: np.ndarray, which: np.ndarray, n_strata: int, iterations: int,
                rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the estimate: documents drawn with replacement within each stratum, each drawn
    document bringing all its seeds (a ratio of resampled sums to resampled counts)."""
    total = np.zeros(iterations)
    for s in range(n_strata):
        members = np.flatnonzero(which == s)
        s_sums, s_counts = sums[members], counts[members]
        # chunks keep the index matrix small for thousands of documents
        means = np.empty(iterations)
        chunk = max(1, 2_000_000 // max(len(members), 1))
        for start in range(0, iterations, chunk):
            stop = min(iterations, start + chunk)
            draw = rng.integers(0, len(members), size=(stop - start, len(members)))
            means[start:stop] = s_sums[draw].sum(axis=1) / s_counts[draw].sum(axis=1)
        total += means
    return total / n_strata


def _jackknife(sums: np.ndarray, counts: np.ndarray, which: np.ndarray, n_strata: int) -> np.ndarray | None:
    """Leave-one-document-out estimates, for BCa's acceleration; None when a stratum has a single document."""
    s_sum = np.array([sums[which == s].sum() for s in range(n_strata)])
    s_cnt = np.array([counts[which == s].sum() for s in range(n_strata)])
    if np.any(np.bincount(which, minlength=n_strata) < 2):
        return None
    means = s_sum / s_cnt
    out = np.empty(len(sums))
    for i in range(len(sums)):
        s = which[i]
        left = (s_sum[s] - sums[i]) / (s_cnt[s] - counts[i])
        out[i] = (means.sum() - means[s] + left) / n_strata
    return out


def bootstrap_interval(clusters: Sequence[Cluster], confidence: float = 0.95, iterations: int = 10_000,
                       seed: int = 0, method: str = "percentile") -> tuple[float, float]:
    """A bootstrap interval for `paired_estimate`, resampling documents as clusters within each task. The same
    seed gives the same interval. `bca` corrects the percentile interval for bias and skew (Efron 1987)."""
    if method not in BOOTSTRAP_METHODS:
        raise HarnessError(f"Unknown bootstrap method `{method}`; use one of {', '.join(BOOTSTRAP_METHODS)}.")
    if not 0 < confidence < 1:
        raise HarnessError(f"Confidence {confidence} must lie strictly between 0 and 1, like 0.95.")
    if iterations < 100:
        raise HarnessError(f"{iterations} bootstrap iterations are too few for an interval; use at least 1000.")
    sums, counts, which, strata = _arrays(clusters)
    estimate = paired_estimate(clusters)
    reps = _replicates(sums, counts, which, len(strata), iterations, np.random.default_rng(seed))
    alpha = 1 - confidence
    lo_q, hi_q = alpha / 2, 1 - alpha / 2
    spread = float(reps.max() - reps.min())
    if spread <= _TIE * max(1.0, abs(estimate)):
        # Every replicate is the estimate (e.g. identical arms): the interval is that point, exactly.
        return estimate, estimate
    if method == "bca":
        jack = _jackknife(sums, counts, which, len(strata))
        below = float(np.mean(reps < estimate))
        if jack is not None and 0 < below < 1:
            normal = NormalDist()
            z0 = normal.inv_cdf(below)
            dev = jack.mean() - jack
            denom = 6 * (np.sum(dev**2) ** 1.5)
            accel = float(np.sum(dev**3) / denom) if denom > 0 else 0.0

            def adjusted(q: float) -> float:
                z = z0 + normal.inv_cdf(q)
                return normal.cdf(z0 + z / (1 - accel * z))

            lo_q, hi_q = adjusted(lo_q), adjusted(hi_q)
    low, high = np.quantile(reps, [lo_q, hi_q])
    return float(low), float(high)


def sign_flip_p_value(clusters: Sequence[Cluster], iterations: int = 10_000, seed: int = 0,
                      exact_max: int = EXACT_MAX_CLUSTERS) -> tuple[float, str]:
    """Two-sided p-value for "the arms do not differ": under that hypothesis each document's differences are as
    likely negated, so flip the sign of whole clusters and count statistics at least as far from zero as the
    observed one. Exact over all 2^n patterns when at most `exact_max` documents differ (documents with a zero sum
    never change the statistic), else Monte-Carlo with the (1 + hits) / (1 + draws) estimate, which is never 0."""
    sums, counts, which, strata = _arrays(clusters)
    n_strata = len(strata)
    totals = np.array([counts[which == s].sum() for s in range(n_strata)])
    # The estimate is linear in the cluster sums for fixed counts: weight w_c = 1 / (strata * pairs in stratum).
    contrib = sums / (n_strata * totals[which])
    observed = abs(contrib.sum())
    active = contrib[contrib != 0]
    n = len(active)
    if n == 0:
        return 1.0, "exact"
    tol = _TIE * max(1.0, observed)
    if n <= exact_max:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs(patterns @ active)
        return float(np.mean(stats >= observed - tol)), "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // n)
    for start in range(0, iterations, chunk):
        size = min(chunk, iterations - start)
        signs = rng.integers(0, 2, size=(size, n)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ active) >= observed - tol))
    return (1 + hits) / (1 + iterations), "monte-carlo"


def compare(clusters: Sequence[Cluster], confidence: float = 0.95, iterations: int = 10_000, seed: int = 0,
            bootstrap: str = "percentile") -> PairedResult:
    """Estimate, bootstrap interval and permutation p-value of arm A minus arm B over paired documents."""
    low, high = bootstrap_interval(clusters, confidence, iterations, seed, bootstrap)
    p_value, p_method = sign_flip_p_value(clusters, iterations, seed)
    means = [math.fsum(c.diffs) / len(c.diffs) for c in clusters]
    return PairedResult(
        estimate=paired_estimate(clusters), low=low, high=high, confidence=confidence, p_value=p_value,
        p_method=p_method, documents=len(clusters), pairs=sum(len(c.diffs) for c in clusters),
        wins=sum(m > 0 for m in means), losses=sum(m < 0 for m in means), ties=sum(m == 0 for m in means),
        bootstrap=bootstrap, iterations=iterations, seed=seed)


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, tuple[float, bool]]:
    """Holm's step-down correction: name -> (adjusted p-value, rejected at `alpha`). Sorted ascending, the i-th
    of m p-values is multiplied by m - i + 1 (i from 1), capped at 1 and made monotone; rejection stops at the
    first adjusted value above alpha. Controls the family-wise error rate under any dependence."""
    for name, p in p_values.items():
        if not 0 <= p <= 1:
            raise HarnessError(f"p-value {p} for `{name}` is outside [0, 1].")
    order = sorted(p_values, key=lambda k: p_values[k])
    m = len(order)
    out: dict[str, tuple[float, bool]] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = (running, running <= alpha)
    return {name: out[name] for name in p_values}


# --------------------------------------------------------------------------- power


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile: 1.96 for 95%."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def expected_half_width(documents: int, sd: float, confidence: float = 0.95) -> float:
    """The normal-approximation half-width of a paired mean over `documents` documents whose per-document
    differences have standard deviation `sd` (metric units)."""
    if documents < 1:
        raise HarnessError("The number of documents must be at least 1.")
    return z_value(confidence) * sd / math.sqrt(documents)


def documents_needed(effect_points: float, *, pilot_diffs: Sequence[float] | None = None,
                     discordance: float | None = None, confidence: float = 0.95, power: float = 0.8) -> int:
    """How many documents give a two-sided test at `confidence` the wanted `power` to detect a true difference of
    `effect_points` (points: 100 x the metric): n = (z_(1-alpha/2) + z_power)^2 var / effect^2. (Sizing a
    half-width instead, as this did before, gives 50% power for an effect of that size.) Documents only: draws
    and training seeds add their own variance, which `harness study --dry-run` counts.

    Give either pilot per-document differences (metric units; average a document's seeds first), whose sample
    variance is used, or, for a 0/1 metric, the expected discordance rate d (the share of documents on which the
    arms disagree): one document's difference is then -1, 0 or +1 and its variance is at most d."""
    if effect_points <= 0:
        raise HarnessError("The effect to detect must be positive, in points (e.g. 5 for 5 points).")
    if not 0 < power < 1:
        raise HarnessError(f"Power {power} must lie strictly between 0 and 1, like 0.8.")
    if (pilot_diffs is None) == (discordance is None):
        raise HarnessError("Give exactly one of pilot differences or a discordance rate.")
    if discordance is not None:
        if not 0 <= discordance <= 1:
            raise HarnessError(f"Discordance {discordance} must be a share between 0 and 1.")
        variance = discordance
    else:
        assert pilot_diffs is not None
        if len(pilot_diffs) < 2:
            raise HarnessError("A pilot needs at least two documents to estimate the spread of differences.")
        variance = float(np.var(np.asarray(pilot_diffs, dtype=np.float64), ddof=1))
    h = effect_points / 100
    z = z_value(confidence) + NormalDist().inv_cdf(power)
    return max(1, math.ceil(z**2 * variance / h**2 - 1e-9))


# --------------------------------------------------------------------------- documents, draws and training seeds


@dataclass(frozen=True)
class Unit:
    """One document's paired difference (arm A minus arm B; the mean over its crossed demonstration seeds), with
    the random factors it was sampled under: the draw block it was prompted from and the training seed both arms'
    models had. A block or seed of None means that factor was not sampled (0 shots: no demonstrations to draw; a
    single training run)."""

    stratum: str  # the task
    value: float
    block: str | None = None
    seed: str | None = None


@dataclass(frozen=True)
class Components:
    """The variance of the estimate split by source, in squared metric units: documents, demonstration draws
    (beyond their documents) and training seeds (beyond their draws and documents). `total` is their sum."""

    documents: float
    draws: float
    seeds: float

    @property
    def total(self) -> float:
        return self.documents + self.draws + self.seeds


@dataclass(frozen=True)
class Interval:
    """An estimate with a confidence interval that counts every sampled source of variance."""

    estimate: float
    low: float
    high: float
    confidence: float
    se: float  # the standard error of the estimate (square root of components.total)
    df: float  # Satterthwaite degrees of freedom of the t quantile
    components: Components
    documents: int
    blocks: int  # draw blocks (0 when no draws were sampled)
    seeds: int  # training seeds (1 when one run)
    discordant: int | None  # 0/1 metrics: documents on which the arms differ
    method: str  # "t" | "t + score" (the hull with the score interval for few discordant documents)

    @property
    def half_width(self) -> float:
        return interval_half_width(self.low, self.high)


# Below this many discordant documents (0/1 outcomes), the t interval's normal approximation is poor (and zero
# wide with none): the interval is widened to cover the Wilson score interval of the discordant shares as well.
FEW_DISCORDANT = 30


def _estimate_and_variance(units: Sequence[Unit], strata_of, cluster_of) -> tuple[float, float, int]:
    """The estimate (the mean over tasks of each task's mean) and its stratified cluster variance, with its
    degrees of freedom: clusters (`cluster_of`) are independent within strata (`strata_of`), whose totals of the
    linearised residuals w (x - task mean) vary only within the stratum. Strata with one cluster add nothing."""
    tasks: dict[str, list[float]] = defaultdict(list)
    for u in units:
        tasks[u.stratum].append(u.value)
    means = {s: math.fsum(v) / len(v) for s, v in tasks.items()}
    n_tasks = len(tasks)
    estimate = math.fsum(means.values()) / n_tasks
    totals: dict[tuple, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
    for u in units:
        w = 1.0 / (n_tasks * len(tasks[u.stratum]))
        totals[strata_of(u)][cluster_of(u)] += w * (u.value - means[u.stratum])
    variance, df = 0.0, 0
    for clusters in totals.values():
        n = len(clusters)
        if n < 2:
            continue
        values = np.fromiter(clusters.values(), dtype=np.float64)
        variance += n / (n - 1) * float(np.sum((values - values.mean()) ** 2))
        df += n - 1
    return estimate, variance, df


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion: never zero wide, even at 0 or n successes."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score_interval(wins: int, losses: int, documents: int, confidence: float = 0.95) -> tuple[float, float]:
    """A score-type interval for a paired difference of proportions, (wins - losses) / documents: Wilson intervals
    of the two discordant shares combined by the MOVER method (Newcombe 1998; Zou and Donner 2008). With no
    discordant document out of 56 it is ±6.4 points, where a bootstrap is [0, 0]."""
    z = z_value(confidence)
    pw, pl = wins / documents, losses / documents
    lw, uw = _wilson(wins, documents, z)
    ll, ul = _wilson(losses, documents, z)
    diff = pw - pl
    return diff - math.sqrt((pw - lw) ** 2 + (ul - pl) ** 2), diff + math.sqrt((uw - pw) ** 2 + (pl - ll) ** 2)


def t_quantile(confidence: float, df: float) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + confidence / 2, df)) if df < 1e6 else z_value(confidence)


def components_interval(units: Sequence[Unit], confidence: float = 0.95) -> Interval:
    """The estimate and an interval counting documents, demonstration draws and training seeds.

    - Seeds fixed: a stratified cluster variance, strata (task, training seed), clusters the draw blocks (or the
      documents where no draws were sampled); it counts documents and draws.
    - Training seeds (T >= 2): the estimate on each seed's documents alone varies by its draws and documents and
      by the seed; the method-of-moments seed variance is that spread minus what draws and documents explain
      (floored at 0), divided by T in the estimate's variance.
    - The t quantile takes Satterthwaite's degrees of freedom, so a seed variance estimated from 3 seeds widens
      the interval as it should.
    - 0/1 outcomes with fewer than FEW_DISCORDANT discordant documents: the hull with `score_interval`.
    """
    if not units:
        raise HarnessError("No paired documents to compare; the two arms share no (task, shots, seed, document).")
    has_blocks = all(u.block is not None for u in units)
    seeds = sorted({u.seed for u in units if u.seed is not None})
    t_count = len(seeds) if len(seeds) >= 2 and all(u.seed is not None for u in units) else 1

    def stratum(u: Unit) -> tuple:
        return (u.stratum, u.seed if t_count > 1 else None)

    def block(u: Unit) -> tuple:
        return (u.stratum, u.seed, u.block) if has_blocks else (u.stratum, id(u))

    # documents as the clusters: the whole variance without draws, and the documents' share of it with them
    estimate, v_docs, df_docs = _estimate_and_variance(units, stratum, lambda u: (u.stratum, id(u)))
    v_within, df_within = v_docs, df_docs
    if has_blocks:
        _, v_blocks, df_blocks = _estimate_and_variance(units, stratum, block)
        # one block per stratum says nothing about draws: the documents stay the clusters, the draws unmeasured
        if df_blocks >= 2:
            v_within, df_within = v_blocks, df_blocks
    seed_var, df = 0.0, float(max(df_within, 1))
    if t_count > 1:
        per_seed = []
        for s in seeds:
            mine = [u for u in units if u.seed == s]
            m, v, _ = _estimate_and_variance(mine, lambda u: (u.stratum,), block)
            per_seed.append((m, v))
        ms = np.array([m for m, _ in per_seed])
        spread = float(np.var(ms, ddof=1))
        expected = float(np.mean([v for _, v in per_seed]))
        if spread > expected:
            seed_var = (spread - expected) / t_count
            # Satterthwaite for v_within + spread / T - expected / T (terms with their own degrees of freedom)
            terms = [(v_within, df_within), (spread / t_count, t_count - 1), (expected / t_count, df_within)]
            df = (v_within + seed_var) ** 2 / sum(a * a / max(d, 1) for a, d in terms)
    variance = v_within + seed_var
    se = math.sqrt(max(variance, 0.0))
    half = t_quantile(confidence, df) * se
    low, high = estimate - half, estimate + half
    values = [u.value for u in units]
    binary = all(v in (-1.0, 0.0, 1.0) for v in values)
    discordant = sum(v != 0 for v in values) if binary else None
    method = "t"
    if binary and discordant is not None and discordant < FEW_DISCORDANT:
        s_low, s_high = score_interval(sum(v > 0 for v in values), sum(v < 0 for v in values), len(values),
                                       confidence)
        low, high, method = min(low, s_low), max(high, s_high), "t + score"
    components = Components(documents=min(v_docs, v_within), draws=max(0.0, v_within - v_docs), seeds=seed_var)
    return Interval(estimate=estimate, low=low, high=high, confidence=confidence, se=se, df=df,
                    components=components, documents=len(units),
                    blocks=len({block(u) for u in units}) if has_blocks else 0, seeds=t_count,
                    discordant=discordant, method=method)


def interval_p_value(units: Sequence[Unit], null: float, side: str) -> float:
    """The p-value that matches `components_interval`: the smallest alpha at which the (1 - alpha) two-sided
    interval (side "two") or the one-sided bound at 1 - alpha (side "greater": H0 theta <= null; "less": H0
    theta >= null) excludes `null`. Found by bisection, so the score hull's p-values agree with its intervals."""

    def excluded(alpha: float) -> bool:
        conf = 1 - alpha if side == "two" else 1 - 2 * alpha
        iv = components_interval(units, conf)
        if side == "two":
            return iv.low > null or iv.high < null
        return iv.low > null if side == "greater" else iv.high < null

    if not excluded(0.999 if side == "two" else 0.4999):
        return 1.0
    lo, hi = 1e-6, 0.999 if side == "two" else 0.4999
    if excluded(lo):
        return lo
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if excluded(mid):
            hi = mid
        else:
            lo = mid
    return hi
