"""Transformers-side scoring on 1 and on N processes side by side (`harness evaluate --num-processes N`): the
scoring call's wall time and documents/s for each, and whether both gave the same documents and numbers.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/eval_sharded.py [--model M] [--tasks sst2,rte]
       [--shots many] [--limit 40] [--max-length 1024] [--backend prefix] [--processes 2] [--threads 1]
The one-process run uses `--threads` torch threads; accelerate gives each of the N processes OMP_NUM_THREADS
(default 1), so `--threads 1 --processes 2` compares one core against two. The N-process time includes starting
the N processes (loading torch, lm-eval and the model in each), which a GPU run pays too.
Run it alone: another torch process on the same cores makes both slow.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from manyicl.harness.evaluate import run_evaluation
from manyicl.harness.results import read_records
from manyicl.harness.runs import read_json
from manyicl.harness.settings import EvalConfig


def _responses(out: Path) -> dict[tuple[str, str], list]:
    values = {}
    for path in (out / "samples").glob("*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            values[(path.stem, row["uid"])] = row["response"]
    return values


def _max_ll_difference(a: dict, b: dict) -> float:
    diffs = [abs(x[0] - y[0]) for key in a for x, y in zip(a[key], b[key], strict=True)
             if isinstance(x, list) and isinstance(y, list)]
    return max(diffs, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--shots", default="many")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--backend", default="prefix")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    outs, timing = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.processes):
            cfg = EvalConfig(model=args.model, tasks=args.tasks, shots=args.shots, limit=args.limit,
                             max_length=args.max_length, backend=args.backend, probes=False, num_processes=n,
                             output_dir=str(Path(tmp) / f"p{n}"))
            out = run_evaluation(cfg)
            timing[n] = read_json(out / "manifest.json")["runs"][-1]
            outs[n] = (_responses(out), {(r.task, r.shots): r.value for r in read_records([out])})
    print(f"{'processes':>9} {'documents':>9} {'seconds':>8} {'docs/s':>7}")
    for n, t in timing.items():
        print(f"{n:>9} {t['documents']:>9} {t['seconds']:>8.1f} {t['documents_per_second']:>7.3f}")
    one, many = outs[1], outs[args.processes]
    speedup = timing[args.processes]["documents_per_second"] / timing[1]["documents_per_second"]
    print(f"speed-up {args.processes} processes / 1 ({args.threads} thread(s)): {speedup:.2f}x")
    print(f"same documents: {one[0].keys() == many[0].keys()}; same scores: {one[1] == many[1]}; "
          f"largest per-choice log-likelihood difference: {_max_ll_difference(one[0], many[0]):.2e}")


if __name__ == "__main__":
    main()
