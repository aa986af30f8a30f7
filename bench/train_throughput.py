"""Training throughput, measured side by side in one run: tokens/s per arm (row layout) and full vs LoRA.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/train_throughput.py [--model M] [--steps 4]
       .venv/bin/python bench/train_throughput.py --random-smollm2-shape --synthetic-data   # no downloads (GPU box)
Prints one line per configuration and the ratios against the first. Numbers are noisy on shared CPUs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.runs import read_json
from harness.settings import TrainConfig
from train.trainer import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--random-smollm2-shape", action="store_true",
                        help="a randomly initialised model of SmolLM2-135M's shape (with the tiny tokenizer)")
    parser.add_argument("--synthetic-data", action="store_true", help="the tests' synthetic data directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    data_dir = None
    if args.synthetic_data:
        from tests.fixtures import build_data_dir

        data_dir = str(build_data_dir(workdir / "data", rows=2000))
    if args.random_smollm2_shape:
        from harness.tiny import build_tiny_model

        args.model = str(build_tiny_model(workdir / "model", hidden=576, layers=30, heads=9, kv_heads=3,
                                          intermediate=1536, embedding_rows=49152))
    configs = [("manyicl, full", "manyicl", 0), ("zero-shot rows, full", "zero-shot", 0),
               ("manyicl, LoRA r16", "manyicl", 16)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # A throw-away run first: the first training in a process pays for kernel warm-up (CUDA especially).
        run_training(TrainConfig(method="manyicl", model=args.model, tasks=args.tasks, max_seq_len=args.max_seq_len,
                                 max_steps=2, output_dir=str(Path(tmp) / "warmup"), save_steps=10_000,
                                 batch_size=args.batch_size, data_dir=data_dir))
        for label, method, lora in configs:
            out = Path(tmp) / label.replace(", ", "-").replace(" ", "_")
            cfg = TrainConfig(method=method, model=args.model, tasks=args.tasks, max_seq_len=args.max_seq_len,
                              max_steps=args.steps, lora_r=lora, output_dir=str(out), save_steps=10_000,
                              batch_size=args.batch_size, data_dir=data_dir)
            manifest = read_json(run_training(cfg) / "manifest.json")
            rows.append((label, manifest["seen"]["tokens"], manifest["train_time_s"], manifest["tokens_per_second"]))
    first = rows[0][3]
    print(f"{'configuration':28} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'ratio':>6}")
    for label, tokens, seconds, tps in rows:
        print(f"{label:28} {tokens:>8} {seconds:>8.1f} {tps:>9.1f} {tps / first:>6.2f}")


if __name__ == "__main__":
    main()
