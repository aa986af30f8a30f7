"""Faults from the machine, not the user: a disk that fills up during `harness evaluate`. The command must end in
one line naming the file, leave nothing half-written for the rerun to trip over, and the same command run again
must finish with the scores a clean run gives."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def _evaluate(tiny_model, tiny_data, out: Path, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def small_files() -> None:  # RLIMIT_FSIZE: a write past this many bytes fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    args = [sys.executable, "-m", "manyicl.harness.cli", "evaluate", "--model", str(tiny_model), "--data-dir",
            str(tiny_data), "--tasks", "sst2,rte", "--shots", "0,2", "--limit", "6", "--backend", "hf",
            "--dtype", "float32", "-o", str(out)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "1000"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=small_files if file_limit else None)


def _scores(out: Path) -> dict[tuple[str, str], float]:
    records = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    return {(r["task"], r["shots"]): r["value"] for r in records}


def _every_file_parses(out: Path) -> None:
    for path in out.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())


def test_a_full_disk_during_evaluate_is_one_line_and_the_rerun_finishes(tiny_model, tiny_data, tmp_path):
    clean = _evaluate(tiny_model, tiny_data, tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    sizes = sorted(p.stat().st_size for p in (tmp_path / "clean").rglob("*") if p.is_file())
    # Small enough that the larger result files cannot be written, large enough for config.yaml and the datasets
    # cache of the few documents.
    limit = max(sizes[-1] // 2, 4096)

    out = tmp_path / "full"
    full = _evaluate(tiny_model, tiny_data, out, file_limit=limit)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    last = [line for line in full.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("Error: Cannot write ") and "File too large" in last, last
    assert "rerun the same command" in last
    leftovers = [p.name for p in out.rglob(".*") if p.is_file()]  # atomic writes' temporary files
    assert not leftovers, leftovers
    _every_file_parses(out)

    again = _evaluate(tiny_model, tiny_data, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _scores(out) == _scores(tmp_path / "clean")


def _train(tiny_model, tiny_data, out: Path, *extra: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    args = [sys.executable, "-m", "manyicl.harness.cli", "train", "--model", str(tiny_model), "--data-dir",
            str(tiny_data), "--tasks", "sst2", "--max-steps", "2", "--max-seq-len", "128", "-o", str(out), *extra]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "COLUMNS": "1000"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=small_files if file_limit else None)


def test_a_full_disk_while_saving_the_final_model_is_one_line_and_resume_finishes(tiny_model, tiny_data, tmp_path):
    # The tiny model is stored in float32 and the final model in bf16 (half of it): a quarter cannot hold the
    # final weights, while the tokenizer, logs and settings files, all far smaller, are written before them.
    limit = (tiny_model / "model.safetensors").stat().st_size // 4
    assert limit > 4 * (tiny_model / "tokenizer.json").stat().st_size

    out = tmp_path / "run"
    full = _train(tiny_model, tiny_data, out, file_limit=limit)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    last = [line for line in full.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"Error: Cannot write {out / 'final.tmp' / 'model.safetensors'}: File too large; "), last
    assert "rerun with --resume" in last
    assert not (out / "final.tmp").exists() and not (out / "final").exists()

    again = _train(tiny_model, tiny_data, out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "final" / "model.safetensors").is_file() and not (out / "final.tmp").exists()
