"""The shipped demo: its outcomes.csv reproduces REPORT.md's primary claim, so anyone can recompute every interval
without rerunning anything."""

from __future__ import annotations

import re
from pathlib import Path

from manyicl.harness.claims import claim_rows
from manyicl.harness.paired import read_outcomes_csv

DEMO = Path(__file__).parents[2] / "docs" / "demo"


def test_outcomes_csv_reproduces_the_reports_primary_claim():
    report = (DEMO / "REPORT.md").read_text(encoding="utf-8")
    line = next(line for line in report.splitlines() if "(primary)" in line and line.startswith("|"))
    estimate, low, high = (float(x) for x in re.search(
        r"\| ([+-]?\d+\.\d) \| 95% \[([+-]?\d+\.\d), ([+-]?\d+\.\d)\]", line).groups())
    row = claim_rows(read_outcomes_csv(DEMO / "outcomes.csv"), ["0", "4", "many"])[0]
    assert abs(100 * row.interval.estimate - estimate) <= 0.1
    assert abs(100 * row.interval.low - low) <= 0.1 and abs(100 * row.interval.high - high) <= 0.1
    assert row.interval.seeds == 5 and row.interval.blocks == 40 and row.interval.documents == 1000
