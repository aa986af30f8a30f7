"""Simulated studies with known document, demonstration-draw and training-seed effects, to measure how often a
paired interval covers the true difference (tests/unit/test_coverage.py, docs/study-statistics.md).

Each simulated task has documents of varying difficulty; two arms answer each document right or wrong through a
probit model whose threshold moves with the document, the document's draw block (a demonstration set shared by
the block) and the arms' training seed. The truth is the expected accuracy difference over new documents, draws
and seeds, computed once per scenario from a large sample."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from manyicl.harness.stats import Interval, Unit, components_interval


@dataclass(frozen=True)
class SimTask:
    """One task of a simulated study (effects in probit units unless said otherwise)."""

    name: str
    documents: int
    gap: float  # arm A's advantage over arm B
    draw_sd: float  # SD of a draw's effect on each arm (independent per arm, shared by the block's documents)
    seed_sd: float  # SD of a training seed's effect on each arm (shared by all the seed's documents)
    agreement: float = 0.6  # correlation of the arms' per-document noise: higher means fewer discordant documents
    one_class_b: bool = False  # arm B gives one answer to every document: its accuracy is the class balance
    majority: float = 0.5  # share of documents of the majority class (what a one-class arm scores)


@dataclass(frozen=True)
class Scenario:
    name: str
    tasks: tuple[SimTask, ...]
    draws: int  # G blocks per task
    seeds: int  # T training seeds, each scoring a disjoint share of the blocks
    notes: str = ""
    truth: float = field(default=0.0, compare=False)


def _task_outcomes(task: SimTask, rng: np.random.Generator, draws: int, seeds: int, n: int,
                   seed_effects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(diff per document, block per document, seed per document) for one task of one simulated study."""
    difficulty = rng.normal(0.3, 1.0, n)
    block = (rng.permutation(n) * draws) // n
    seed = block % seeds
    draw_a = rng.normal(0, task.draw_sd, draws)[block]
    draw_b = rng.normal(0, task.draw_sd, draws)[block]
    shared = rng.normal(size=n)
    rho = task.agreement
    noise_a = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=n)
    noise_b = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=n)
    a = (difficulty + task.gap + draw_a + seed_effects[0][seed] + noise_a > 0).astype(float)
    if task.one_class_b:
        b = (rng.random(n) < task.majority).astype(float)  # right exactly on the majority-class documents
    else:
        b = (difficulty + draw_b + seed_effects[1][seed] + noise_b > 0).astype(float)
    return a - b, block, seed


def simulate(scenario: Scenario, rng: np.random.Generator) -> list[Unit]:
    """One simulated study's paired documents."""
    units: list[Unit] = []
    # a training seed moves every task of its model alike (the worst case for an interval: nothing averages out)
    seed_z = rng.normal(size=(2, scenario.seeds))
    seed_effects = {t.name: seed_z * t.seed_sd for t in scenario.tasks}
    for task in scenario.tasks:
        diff, block, seed = _task_outcomes(task, rng, scenario.draws, scenario.seeds, task.documents,
                                           seed_effects[task.name])
        for d, g, s in zip(diff, block, seed, strict=True):
            units.append(Unit(task.name, float(d), str(g) if scenario.draws > 1 else None,
                              str(s) if scenario.seeds > 1 else None))
    return units


def true_difference(scenario: Scenario, rng: np.random.Generator, studies: int = 400) -> float:
    """The expected difference over documents, draws and seeds: the mean of many large simulated studies."""
    values = []
    for _ in range(studies):
        per_task = []
        for task in scenario.tasks:
            effects = rng.normal(0, task.seed_sd, (2, scenario.seeds))
            diff, _, _ = _task_outcomes(task, rng, max(scenario.draws, 16), scenario.seeds, 4000, effects)
            per_task.append(diff.mean())
        values.append(np.mean(per_task))
    return float(np.mean(values))


def coverage(scenario: Scenario, replications: int = 1000, seed: int = 0, confidence: float = 0.95,
             method: Callable[[Sequence[Unit], float], tuple[float, float]] | None = None,
             truth: float | None = None) -> tuple[float, float, float]:
    """(coverage, mean half-width in points, truth in points) of `method` (default: components_interval) over
    seeded replications of the scenario."""
    rng = np.random.default_rng(seed)
    truth = true_difference(scenario, np.random.default_rng(seed + 1)) if truth is None else truth

    def default(units: Sequence[Unit], conf: float) -> tuple[float, float]:
        iv: Interval = components_interval(units, conf)
        return iv.low, iv.high

    method = method or default
    hits, widths = 0, []
    for _ in range(replications):
        low, high = method(simulate(scenario, rng), confidence)
        hits += low <= truth <= high
        widths.append((high - low) / 2)
    return hits / replications, 100 * float(np.mean(widths)), 100 * truth


def probit_gap(points: float, base: float = 0.6) -> float:
    """The probit shift that moves an accuracy of `base` up by `points`."""
    return float(norm.ppf(base + points / 100) - norm.ppf(base))


def draw_sd_points(task: SimTask, rng: np.random.Generator, draws: int = 100, per_draw: int = 5000) -> float:
    """The SD, in points, of a draw's effect on the paired difference: the spread of per-draw differences over many
    documents each, less the spread their documents' own noise explains; seeds held at zero."""
    effects = np.zeros((2, 1))
    diff, block, _ = _task_outcomes(task, rng, draws, 1, draws * per_draw, effects)
    means = np.array([diff[block == g].mean() for g in range(draws)])
    noise = np.mean([diff[block == g].var(ddof=1) / per_draw for g in range(draws)])
    return 100 * float(np.sqrt(max(0.0, np.var(means, ddof=1) - noise)))


# The scenarios of tests/unit/test_coverage.py and docs/study-statistics.md. Effects are in probit units; the
# demo-sized study has 2 tasks of 277 documents, 18 draws and 3 training seeds, as the demo preset scores.
_GAP = 0.26  # about +10 points of accuracy from 60%
SCENARIOS = (
    Scenario("demo-sized: draws and seeds", (SimTask("a", 277, _GAP, 0.12, 0.08), SimTask("b", 277, _GAP, 0.12, 0.08)),
             draws=18, seeds=3),
    Scenario("no draw or seed effect", (SimTask("a", 277, _GAP, 0.0, 0.0), SimTask("b", 277, _GAP, 0.0, 0.0)),
             draws=18, seeds=3),
    Scenario("large seed effect", (SimTask("a", 277, _GAP, 0.12, 0.2), SimTask("b", 277, _GAP, 0.12, 0.2)),
             draws=18, seeds=3),
    Scenario("one training seed, large draws", (SimTask("a", 277, _GAP, 0.2, 0.0), SimTask("b", 277, _GAP, 0.2, 0.0)),
             draws=18, seeds=1),
    Scenario("few discordant documents (56, CB-sized)", (SimTask("cb", 56, 0.0, 0.0, 0.0, agreement=0.97),),
             draws=8, seeds=1),
    Scenario("mixed: draws, seeds, few discordant, one-class",
             (SimTask("a", 277, _GAP, 0.12, 0.08), SimTask("few", 56, 0.0, 0.05, 0.0, agreement=0.97),
              SimTask("one-class", 277, _GAP, 0.12, 0.08, one_class_b=True)), draws=18, seeds=3),
)
