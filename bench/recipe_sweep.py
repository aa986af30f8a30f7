"""Train every point of a recipe grid with `--eval-steps` and print the validation-loss table (markdown).

Usage: HARNESS_DATA_DIR=../shared/data .venv/bin/python bench/recipe_sweep.py harness/presets/recipe-sweep.yaml
       [--output-dir results/sweeps/recipe] [--only learning_rate=0.0001]
The recipe is chosen on the validation split only (each training task's seeded held-out rows; never test
documents). A finished point is not trained again (its run directory is complete), so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import yaml

from manyicl.harness.runs import read_json
from manyicl.harness.settings import TrainConfig


def points(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def _name(point: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in point.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--output-dir", default="results/sweeps/recipe")
    parser.add_argument("--only", action="append", default=[], help="key=value: run only matching points")
    args = parser.parse_args()
    from manyicl.train.trainer import run_training

    sweep = yaml.safe_load(Path(args.config).read_text())["sweep"]
    wanted = dict(item.split("=", 1) for item in args.only)
    rows = []
    for point in points(sweep["grid"]):
        if any(str(point.get(k)) != v for k, v in wanted.items()):
            continue
        out = Path(args.output_dir) / _name(point)
        cfg = TrainConfig(**(sweep["base"] | point | {"output_dir": str(out), "resume": True}))
        run_training(cfg)
        manifest = read_json(out / "manifest.json")
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        evals = [(row["step"], row["eval_loss"]) for row in log if "eval_loss" in row]
        rows.append((point, evals, manifest))
    print("| " + " | ".join(sweep["grid"]) + " | validation loss by step | final | best | train tokens/s |")
    print("|" + "---|" * (len(sweep["grid"]) + 4))
    for point, evals, manifest in rows:
        trail = ", ".join(f"{step}: {loss:.3f}" for step, loss in evals)
        best = min(loss for _, loss in evals) if evals else float("nan")
        final = manifest.get("final_eval_loss")
        print("| " + " | ".join(str(v) for v in point.values()) + f" | {trail} | "
              f"{'—' if final is None else f'{final:.3f}'} | {best:.3f} | {manifest.get('tokens_per_second')} |")


if __name__ == "__main__":
    main()
