"""Paired statistics (harness/stats.py) against cases worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.stats import (
    Cluster,
    bootstrap_interval,
    compare,
    documents_needed,
    expected_half_width,
    holm,
    paired_estimate,
    sign_flip_p_value,
    z_value,
)


def docs(*diffs, stratum: str = "t") -> list[Cluster]:
    """One cluster per argument: a number is one seed's difference, a tuple one difference per seed."""
    return [Cluster(stratum, f"{stratum}:{i}", d if isinstance(d, tuple) else (d,)) for i, d in enumerate(diffs)]


# --------------------------------------------------------------------------- estimate


def test_estimate_is_the_mean_over_tasks_of_each_tasks_mean_over_documents_and_seeds():
    # task a: (1 + 0) + (0 + 0) over 4 pairs = 0.25; task b: -1 over 1 pair = -1; mean of the two = -0.375
    clusters = docs((1.0, 0.0), (0.0, 0.0), stratum="a") + docs(-1.0, stratum="b")
    assert paired_estimate(clusters) == -0.375


def test_identical_arms_give_exactly_zero_and_a_zero_width_interval():
    rng = np.random.default_rng(0)
    outcomes = rng.integers(0, 2, size=(200, 3)).astype(float)
    # A minus B where A and B are the same outcomes: every difference is 0.0 exactly
    clusters = [Cluster("t", str(i), tuple(a - b for a, b in zip(row, row, strict=True)))
                for i, row in enumerate(outcomes)]
    result = compare(clusters, iterations=2000, seed=3)
    assert result.estimate == 0.0
    assert (result.low, result.high) == (0.0, 0.0)
    assert result.half_width == 0.0
    assert result.p_value == 1.0
    assert (result.wins, result.losses, result.ties) == (0, 0, 200)


def test_no_pairs_is_one_sentence():
    with pytest.raises(HarnessError, match="share no"):
        paired_estimate([])


# --------------------------------------------------------------------------- bootstrap


def test_percentile_interval_of_four_documents_matches_the_binomial_by_hand():
    # Differences [1, 0, 0, 0]: a replicate mean is k/4 with k ~ Binomial(4, 1/4).
    # P(k<=0) = 81/256 = 0.316 > 0.025, so the 2.5% quantile is 0.
    # P(k<=2) = 243/256 = 0.949 < 0.975 <= P(k<=3) = 255/256, so the 97.5% quantile is 3/4.
    low, high = bootstrap_interval(docs(1.0, 0.0, 0.0, 0.0), iterations=10_000, seed=1)
    assert (low, high) == (0.0, 0.75)


def test_bootstrap_moves_a_documents_seeds_together():
    # Three documents, three seeds each: A = (1, 1, 1), B and C = (0, 0, 0).
    # As clusters a replicate is k/3 with k ~ Binomial(3, 1/3): P(k<=2) = 26/27 = 0.963 < 0.975, so the upper end
    # is 3/3 = 1. Nine independent pairs would give k/9, k ~ Binomial(9, 1/3), whose 97.5% quantile is 6/9.
    clustered = bootstrap_interval(docs((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), seed=5)
    independent = bootstrap_interval(docs(*[1.0] * 3, *[0.0] * 6), seed=5)
    assert clustered[1] == 1.0
    assert independent[1] == pytest.approx(6 / 9)


def test_bootstrap_resamples_within_each_task():
    # Task a: differences [1, 1]; task b: [0, 0]. Within a task every replicate mean is that task's constant, so
    # the estimate (1 + 0) / 2 = 0.5 never moves; resampling across tasks would spread it from 0 to 1.
    clusters = docs(1.0, 1.0, stratum="a") + docs(0.0, 0.0, stratum="b")
    assert bootstrap_interval(clusters, seed=2) == (0.5, 0.5)


def test_bootstrap_is_deterministic_for_a_seed_and_moves_with_it():
    rng = np.random.default_rng(11)
    clusters = docs(*rng.normal(0.1, 1.0, size=80).tolist())
    first = bootstrap_interval(clusters, iterations=2000, seed=7)
    assert bootstrap_interval(clusters, iterations=2000, seed=7) == first
    assert bootstrap_interval(clusters, iterations=2000, seed=8) != first
    bca = bootstrap_interval(clusters, iterations=2000, seed=7, method="bca")
    assert bootstrap_interval(clusters, iterations=2000, seed=7, method="bca") == bca


def test_intervals_cover_the_estimate_and_bca_shifts_toward_the_long_tail():
    # Right-skewed differences: BCa moves both ends to the right of the percentile interval.
    rng = np.random.default_rng(4)
    clusters = docs(*rng.exponential(1.0, size=40).tolist())
    est = paired_estimate(clusters)
    pct = bootstrap_interval(clusters, seed=1)
    bca = bootstrap_interval(clusters, seed=1, method="bca")
    assert pct[0] < est < pct[1] and bca[0] < est < bca[1]
    assert bca[0] > pct[0] and bca[1] > pct[1]


def test_ninety_five_percent_interval_covers_about_ninety_five_percent():
    # 200 simulated studies of 60 documents with true difference 0.2: coverage within 95% ± 4 points.
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        clusters = docs(*rng.normal(0.2, 1.0, size=60).tolist())
        low, high = bootstrap_interval(clusters, iterations=1000, seed=trial)
        hits += low <= 0.2 <= high
    assert 0.91 <= hits / 200 <= 0.99


@pytest.mark.parametrize("kwargs, message", [({"method": "studentized"}, "Unknown bootstrap"),
                                             ({"confidence": 95}, "between 0 and 1"),
                                             ({"iterations": 10}, "too few")])
def test_bad_bootstrap_settings_are_one_sentence(kwargs, message):
    with pytest.raises(HarnessError, match=message):
        bootstrap_interval(docs(1.0, 0.0), **kwargs)


# --------------------------------------------------------------------------- permutation p-value


@pytest.mark.parametrize("diffs, expected", [
    # [1, 1, 1]: of the 8 sign patterns only +++ and --- reach |sum| >= 3: 2/8
    ((1.0, 1.0, 1.0), 0.25),
    # [2, 1, -1], observed sum 2: the sums of the 8 patterns are ±4, ±2, ±2, ±0; |sum| >= 2 for 6 of them
    ((2.0, 1.0, -1.0), 0.75),
    # zeros never change the statistic: still 2/8
    ((1.0, 1.0, 1.0, 0.0, 0.0), 0.25),
])
def test_exact_sign_flip_p_values(diffs, expected):
    assert sign_flip_p_value(docs(*diffs)) == (expected, "exact")


def test_sign_flip_moves_a_documents_seeds_together():
    # Documents (1, 1) and (1, 0) over 4 pairs contribute 2/4 and 1/4; flips give |±0.5 ± 0.25| = .75, .25, .25,
    # .75, of which 2 of 4 reach the observed 0.75. Treating the 3 nonzero pairs alone would give 2/8.
    assert sign_flip_p_value(docs((1.0, 1.0), (1.0, 0.0))) == (0.5, "exact")


def test_monte_carlo_p_value_agrees_with_the_exact_one_and_is_seeded():
    rng = np.random.default_rng(2)
    clusters = docs(*rng.normal(0.4, 1.0, size=18).tolist())
    exact, how = sign_flip_p_value(clusters, exact_max=18)
    assert how == "exact"
    mc, how = sign_flip_p_value(clusters, iterations=20_000, seed=9, exact_max=10)
    assert how == "monte-carlo"
    assert mc == pytest.approx(exact, abs=0.01)
    assert sign_flip_p_value(clusters, iterations=20_000, seed=9, exact_max=10)[0] == mc


def test_monte_carlo_p_value_is_never_zero():
    # 30 documents all +1: the exact p-value is 2 / 2^30; the Monte-Carlo estimate is (1 + 0) / (1 + 10000)
    p, how = sign_flip_p_value(docs(*[1.0] * 30), iterations=10_000, seed=0)
    assert how == "monte-carlo"
    assert p == 1 / 10_001


# --------------------------------------------------------------------------- Holm


def test_holm_on_the_textbook_example():
    # Holm (1979) as in most textbooks: p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05.
    # Sorted: 0.005 x 4 = 0.02 (reject), 0.01 x 3 = 0.03 (reject), 0.03 x 2 = 0.06 (stop), 0.04 x 1 = 0.04 -> 0.06
    # (adjusted values never fall). H4 and H1 are rejected, H2 and H3 are not.
    out = holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005})
    assert list(out) == ["H1", "H2", "H3", "H4"]
    assert {k: round(v[0], 10) for k, v in out.items()} == {"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02}
    assert {k: v[1] for k, v in out.items()} == {"H1": True, "H2": False, "H3": False, "H4": True}


def test_holm_caps_at_one_and_handles_one_and_no_hypotheses():
    assert holm({"a": 0.6, "b": 0.7}) == {"a": (1.0, False), "b": (1.0, False)}
    assert holm({"only": 0.04}) == {"only": (0.04, True)}
    assert holm({}) == {}
    with pytest.raises(HarnessError, match="outside"):
        holm({"a": 1.5})


# --------------------------------------------------------------------------- power


def test_documents_needed_for_a_discordance_rate():
    # d = 0.3, effect 5 points, 80% power: n = (1.96 + 0.8416)^2 x 0.3 / 0.05^2 = 7.849 x 120 = 941.9 -> 942
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert documents_needed(5, discordance=0.3) == 942
    # at that size the half-width is 5 x 1.96 / 2.80 = 3.5 points, so a 5-point effect clears it 80% of the time
    assert expected_half_width(942, math.sqrt(0.3)) == pytest.approx(0.05 * 1.96 / 2.8016, rel=1e-3)
    # 50% power is the old half-width sizing: 461 documents
    assert documents_needed(5, discordance=0.3, power=0.5) == 461


def test_documents_needed_from_pilot_differences():
    # Pilot [1, -1, 0, 0]: mean 0, sample variance (1 + 1) / 3 = 2/3; effect 10 points, 80% power:
    # n = 7.849 x (2/3) / 0.01 = 523.3 -> 524
    assert documents_needed(10, pilot_diffs=[1.0, -1.0, 0.0, 0.0]) == 524


@pytest.mark.parametrize("kwargs, message", [({}, "exactly one"), ({"discordance": 0.2, "pilot_diffs": [1, 0]}, "exactly one"),
                                             ({"discordance": 1.2}, "between 0 and 1"),
                                             ({"pilot_diffs": [1.0]}, "at least two")])
def test_documents_needed_refuses_bad_input(kwargs, message):
    with pytest.raises(HarnessError, match=message):
        documents_needed(5, **kwargs)
