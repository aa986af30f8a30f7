"""Training throughput, measured side by side in one run: tokens/s per arm (row layout) and full vs LoRA.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/train_throughput.py [--model M] [--steps 4]
Prints one line per configuration and the ratios against the first. Numbers are noisy on shared CPUs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.config import TrainConfig
from harness.runs import read_json
from train.trainer import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    args = parser.parse_args()
    configs = [("manyicl, full", "manyicl", 0), ("zero-shot rows, full", "zero-shot", 0),
               ("manyicl, LoRA r16", "manyicl", 16)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, lora in configs:
            out = Path(tmp) / label.replace(", ", "-").replace(" ", "_")
            cfg = TrainConfig(method=method, model=args.model, tasks=args.tasks, max_seq_len=args.max_seq_len,
                              max_steps=args.steps, lora_r=lora, output_dir=str(out), save_steps=10_000)
            manifest = read_json(run_training(cfg) / "manifest.json")
            rows.append((label, manifest["seen"]["tokens"], manifest["train_time_s"], manifest["tokens_per_second"]))
    first = rows[0][3]
    print(f"{'configuration':28} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'ratio':>6}")
    for label, tokens, seconds, tps in rows:
        print(f"{label:28} {tokens:>8} {seconds:>8.1f} {tps:>9.1f} {tps / first:>6.2f}")


if __name__ == "__main__":
    main()
