"""Training throughput against its limit, in one run: the bare torch step of the same model on full rows of random
tokens (the limit), then `harness train` (TRL's SFTTrainer) on zero-shot, few-shot (k=4) and ManyICL rows, full
fine-tuning and LoRA, at each row length.

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/train_throughput.py [--quick] [--json out.json]
       [--model M] [--tasks sst2,rte] [--lengths 1024,2048] [--steps 8] [--warmup-steps 2]
       .venv/bin/python bench/train_throughput.py --random-smollm2-shape --synthetic-data   # no downloads

The limit is this implementation's own ceiling: forward + backward + AdamW (fused, as the Trainer's default
`adamw_torch_fused`) with the trainer's dtype policy (CPU: fp32 weights under bf16 autocast; GPU: bf16 weights)
and the same attention implementation, one full row of `length` random tokens per step, loss on every position
through the model's own loss. No gradient clipping, no logging, no data loading.

For each trainer run: steady-state tokens/s (from the per-step timestamps in `train_log.jsonl`, after the first
`--warmup-steps` steps, so start-up, the first steps and saving are left out), the trainer's own rate (the
manifest's tokens over `trainer.train()` time: first steps and in-loop checkpoints included) and end-to-end
(tokens over the run's wall time: data, model load, training and the final save). Targets/s are the run's
targets per token times the tokens/s. Padding is the unused share of the rows (padding-free rows carry no pad
tokens, so it is capacity left empty, not compute spent). Goals: steady trainer / limit >= 0.85; ManyICL
targets/s over few-shot targets/s is the method's supervision gain at equal compute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from manyicl.harness.runs import hardware_line

ARMS = (("zero-shot", "zero-shot"), ("few-shot k=4", "few-shot"), ("manyicl", "manyicl"))
LORA_R = 16


def bare_limit(model_path: str, length: int, lora_r: int, steps: int, warmup: int, batch_size: int = 1) -> dict:
    """Tokens/s of the bare training step on full rows of random tokens, with the trainer's dtype policy."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # The trainer's policy (train/trainer.py): bf16 weights on a GPU; fp32 weights with bf16 autocast on CPU.
    lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if cuda else torch.float32).to(device)
    if lora_r:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05,
                                           target_modules="all-linear", task_type="CAUSAL_LM"))
    lm.train()
    lm.config.use_cache = False
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    autocast = contextlib.nullcontext() if cuda else torch.autocast("cpu", dtype=torch.bfloat16)
    vocab = lm.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(warmup + steps):
        row = torch.randint(0, vocab, (batch_size, length), generator=generator).to(device)
        started = time.perf_counter()
        with autocast:
            loss = lm(input_ids=row, labels=row, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    steady = times[warmup:]
    attn = lm.config._attn_implementation
    del lm, optimizer
    return {"tokens_per_s": round(batch_size * length * len(steady) / sum(steady), 1), "step_s": [round(t, 3) for t in times],
            "attn_implementation": attn}


def trainer_run(model: str | None, tasks: str, method: str, length: int, lora_r: int, steps: int, warmup: int,
                data_dir: str | None, out: Path, batch_size: int = 1) -> dict:
    """One `harness train` run; its rates read back from the manifest and the per-step log."""
    from manyicl.harness.runs import read_json
    from manyicl.harness.settings import TrainConfig
    from manyicl.train.trainer import run_training

    cfg = TrainConfig(method=method, model=model, tasks=tasks, max_seq_len=length, max_steps=steps, lora_r=lora_r,
                      shots=4, output_dir=str(out), data_dir=data_dir, batch_size=batch_size)
    run = run_training(cfg)
    manifest = read_json(run / "manifest.json")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    # One log line per step (logging_steps=1): its time, and the tokens trained so far (TRL's `num_tokens`).
    timed = [(row["time"], row["num_tokens"]) for row in log if "loss" in row]
    seen = manifest["seen"]
    if len(timed) > warmup:
        (t0, n0), (t1, n1) = timed[max(warmup, 1) - 1], timed[-1]
        steady = (n1 - n0) / max(t1 - t0, 1e-9)
    else:
        steady = float("nan")
    per_token = seen["targets"] / max(seen["tokens"], 1)
    return {
        "tokens": seen["tokens"], "trained_tokens": seen["trained_tokens"], "targets": seen["targets"],
        "rows": seen["rows"], "padding": round(1 - seen["tokens"] / (seen["rows"] * length), 4),
        "steady_tokens_per_s": round(steady, 1), "steady_targets_per_s": round(steady * per_token, 2),
        "trainer_tokens_per_s": manifest["tokens_per_second"],
        "end_to_end_tokens_per_s": round(seen["tokens"] / manifest["wall_time_s"], 1),
        "train_time_s": manifest["train_time_s"], "wall_time_s": manifest["wall_time_s"],
        "step_s": [round(b[0] - a[0], 3) for a, b in zip(timed, timed[1:], strict=False)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 steps per run, 2 of them warm-up (~13 min on 2 cores)")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (harness.models)")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--steps", type=int, default=None, help="trainer steps per run (default 8; --quick 5)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the steady state")
    parser.add_argument("--batch-size", type=int, default=1, help="rows per step (trainer and limit)")
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--random-smollm2-shape", action="store_true",
                        help="a randomly initialised model of SmolLM2-135M's shape (with the tiny tokenizer)")
    parser.add_argument("--synthetic-data", action="store_true", help="the tests' synthetic data directory")
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 8)
    lengths = [int(x) for x in args.lengths.split(",")]
    loras = [0] if args.no_lora else [0, LORA_R]
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data_dir = None
    if args.synthetic_data:
        from tests.fixtures import build_data_dir

        data_dir = str(build_data_dir(workdir / "data", rows=2000))
    if args.random_smollm2_shape:
        from manyicl.harness.tiny import build_tiny_model

        args.model = str(build_tiny_model(workdir / "model", hidden=576, layers=30, heads=9, kv_heads=3,
                                          intermediate=1536, embedding_rows=49152))
    from manyicl.harness.models import resolve_model

    model_path = resolve_model(args.model).path
    started = time.time()
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "command": shlex.join([sys.executable, *sys.argv]), "hardware": hardware_line(),
                     "model": model_path, "tasks": args.tasks, "steps": steps, "warmup_steps": args.warmup_steps,
                     "limit": {}, "runs": {}}
    for length in lengths:
        for lora in loras:
            kind = f"LoRA r{lora}" if lora else "full"
            limit = bare_limit(model_path, length, lora, steps=max(3, steps - args.warmup_steps),
                               warmup=args.warmup_steps, batch_size=args.batch_size)
            results["limit"][f"{length}/{kind}"] = limit
            print(f"limit {length} {kind}: {limit['tokens_per_s']} tokens/s ({limit['attn_implementation']})",
                  flush=True)
            for label, method in ARMS:
                out = workdir / "runs" / f"{method}-{length}-{lora}"
                run = trainer_run(args.model, args.tasks, method, length, lora, steps, args.warmup_steps, data_dir,
                                  out, args.batch_size)
                run["ratio_to_limit"] = round(run["steady_tokens_per_s"] / limit["tokens_per_s"], 3)
                results["runs"][f"{label}/{length}/{kind}"] = run
                print(f"  {label:13} steady {run['steady_tokens_per_s']:7.1f} tokens/s "
                      f"({run['ratio_to_limit']:.2f}x limit), trainer {run['trainer_tokens_per_s']:7.1f}, "
                      f"end-to-end {run['end_to_end_tokens_per_s']:7.1f}; targets/s {run['steady_targets_per_s']}; "
                      f"padding {run['padding']:.1%}", flush=True)
    results["wall_time_s"] = round(time.time() - started, 1)
    _print_table(results, lengths, loras)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _print_table(results: dict, lengths: list[int], loras: list[int]) -> None:
    print(f"\n{results['date']}  {results['hardware']}\n{results['command']}\n")
    print("| rows | tuning | arm | limit tok/s | steady tok/s | steady/limit | trainer tok/s | end-to-end tok/s "
          "| targets/s | padding |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for length in lengths:
        for lora in loras:
            kind = f"LoRA r{lora}" if lora else "full"
            limit = results["limit"][f"{length}/{kind}"]["tokens_per_s"]
            for label, _ in ARMS:
                r = results["runs"][f"{label}/{length}/{kind}"]
                print(f"| {length} | {kind} | {label} | {limit} | {r['steady_tokens_per_s']} | "
                      f"{r['ratio_to_limit']:.2f} | {r['trainer_tokens_per_s']} | {r['end_to_end_tokens_per_s']} | "
                      f"{r['steady_targets_per_s']} | {r['padding']:.1%} |")
            few = results["runs"][f"few-shot k=4/{length}/{kind}"]["steady_targets_per_s"]
            many = results["runs"][f"manyicl/{length}/{kind}"]
            summary.append(f"{length} {kind}: trainer/limit (ManyICL, steady) {many['ratio_to_limit']:.2f} "
                           f"(goal >= 0.85); ManyICL targets/s over few-shot targets/s "
                           f"{many['steady_targets_per_s'] / max(few, 1e-9):.1f}x")
    print("\n" + "\n".join(summary))
    print(f"wall time {results['wall_time_s']} s")


if __name__ == "__main__":
    main()
