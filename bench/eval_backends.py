"""Evaluation backends side by side on the same documents: documents/s for vLLM and transformers, and agreement.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/eval_backends.py [--model M] [--tasks sst2,rte]
       [--shots 0,many] [--limit 20] [--max-length 1024] [--dtype float32]
Both runs score the same prompts (same documents, same demonstrations). Printed: documents/s per backend (the
vLLM figure includes the server's start), accuracy per (task, shots) for each, and the largest difference of
per-choice log-likelihoods. Compare in float32: bf16 differs by ordinary rounding noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from manyicl.harness.evaluate import run_evaluation
from manyicl.harness.results import read_records
from manyicl.harness.runs import read_json
from manyicl.harness.settings import EvalConfig


def _loglikelihoods(out: Path) -> dict[tuple[str, str], list[float]]:
    values = {}
    for path in (out / "samples").glob("*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            response = row.get("response")
            if isinstance(response, list) and response and isinstance(response[0], list):
                values[(path.stem, row["uid"])] = [float(pair[0]) for pair in response]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--shots", default="0,many")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("hf", "vllm"):
            cfg = EvalConfig(model=args.model, tasks=args.tasks, shots=args.shots, limit=args.limit,
                             max_length=args.max_length, dtype=args.dtype, backend=backend, probes=False,
                             output_dir=str(Path(tmp) / backend))
            outs[backend] = run_evaluation(cfg)
        timing = {b: read_json(o / "manifest.json")["runs"][-1] for b, o in outs.items()}
        scores = {b: {(r.task, r.shots): r.value for r in read_records([o])} for b, o in outs.items()}
        ll = {b: _loglikelihoods(o) for b, o in outs.items()}
    print(f"{'backend':8} {'documents':>9} {'seconds':>8} {'docs/s':>7}")
    for backend, t in timing.items():
        print(f"{backend:8} {t['documents']:>9} {t['seconds']:>8.1f} {t['documents_per_second']:>7.3f}")
    print(f"vllm/hf speed ratio: {timing['vllm']['documents_per_second'] / timing['hf']['documents_per_second']:.2f}")
    print(f"{'task':10} {'shots':>5} {'hf':>7} {'vllm':>7}")
    for key in sorted(scores["hf"]):
        print(f"{key[0]:10} {key[1]:>5} {scores['hf'][key]:>7.3f} {scores['vllm'].get(key, float('nan')):>7.3f}")
    common = set(ll["hf"]) & set(ll["vllm"])
    diffs = [abs(a - b) for k in common for a, b in zip(ll["hf"][k], ll["vllm"][k], strict=True)]
    if diffs:
        print(f"log-likelihoods compared: {len(diffs)}; max |hf - vllm| = {max(diffs):.2e}; "
              f"mean = {sum(diffs) / len(diffs):.2e}")


if __name__ == "__main__":
    main()
