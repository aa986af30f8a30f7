"""Coverage of the primary interval, before and after it counted demonstration draws and training seeds, over the
simulated studies of harness/coverage.py. Prints a markdown table (docs/study-statistics.md holds its output).

    .venv/bin/python bench/interval_coverage.py [--replications 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from manyicl.harness.coverage import SCENARIOS, coverage, draw_sd_points, true_difference
from manyicl.harness.runs import hardware_line
from manyicl.harness.stats import Cluster, bootstrap_interval


def documents_only(units, confidence):
    """The interval the report printed before: a bootstrap over documents, resampled within each task, with the
    draws and training seeds each document had treated as fixed."""
    clusters = [Cluster(u.stratum, str(i), (u.value,)) for i, u in enumerate(units)]
    return bootstrap_interval(clusters, confidence, iterations=1000, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=1000)
    args = parser.parse_args()
    print(f"{hardware_line()}; {args.replications} replications per cell, 95% intervals\n")
    print("| scenario | draw SD (points) | truth | before: coverage | before: ± | after: coverage | after: ± |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for scenario in SCENARIOS:
        started = time.time()
        truth = true_difference(scenario, np.random.default_rng(2027))
        sds = ", ".join(f"{draw_sd_points(t, np.random.default_rng(0)):.1f}" for t in scenario.tasks)
        old, old_w, _ = coverage(scenario, args.replications, seed=2026, method=documents_only, truth=truth)
        new, new_w, _ = coverage(scenario, args.replications, seed=2026, truth=truth)
        print(f"| {scenario.name} (G={scenario.draws}, T={scenario.seeds}) | {sds} | {100 * truth:+.1f} | {old:.3f} | "
              f"{old_w:.1f} | {new:.3f} | {new_w:.1f} |", flush=True)
        del started


if __name__ == "__main__":
    main()
