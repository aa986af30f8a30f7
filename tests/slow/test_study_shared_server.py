"""A study whose arms are LoRA adapters scored through vLLM: one evaluation stage, one vLLM server with the arms'
adapters as named modules, each arm's results where its own stage would have put them, and a leaderboard with
them; an arm whose training failed is left out of the server instead of blocking the others. (That each adapter
scores on the shared server as it does alone is tests/slow/test_shared_server.py.)"""

from __future__ import annotations

import json

import pytest
import yaml

from manyicl.harness.serve import vllm_available
from tests.fixtures import build_tiny_model
from tests.helpers import run_harness

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]


def test_lora_arms_of_a_study_share_one_server(tiny_data, tmp_path, monkeypatch):
    # head_dim 32: the CPU attention kernels do not take the default tiny model's 16.
    model = build_tiny_model(tmp_path / "tiny-vllm", hidden=64)
    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    # shots 100 is more than the tiny sst2 train split holds: the few-shot arm fails to build a sequence, while
    # zero-shot and ManyICL do not use the setting
    study = {"name": "shared", "model": str(model), "tasks": ["sst2"], "probes": [],
             "arms": ["zero-shot", "few-shot", "manyicl"],
             "train": {"max_seq_len": 256, "max_steps": 2, "lora_r": 4, "lora_merge": False, "shots": 100},
             "eval": {"shots": ["0", "2"], "limit": 4, "backend": "vllm", "dtype": "float32", "batch_size": 2}}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    root = tmp_path / "study"

    code, out, err = run_harness(["study", "--config", str(config), "--data-dir", str(tiny_data), "-o", str(root)],
                                 monkeypatch)
    assert code == 1, err[-3000:]  # a stage failed
    assert "1 stage(s) failed (train:few-shot) and 0 more were blocked by them" in " ".join(err.split())
    assert "eval:adapters: done in" in out + err and "(without the arms of train:few-shot, which failed)" in " ".join(
        (out + err).split())

    assert json.loads((root / "manifest.json").read_text())["stages"] == {
        "train:zero-shot": "done", "train:few-shot": "failed", "train:manyicl": "done", "eval:adapters": "done",
        "report": "done"}
    server_logs = sorted(p.relative_to(root).as_posix() for p in root.rglob("vllm_server.log"))
    assert server_logs == ["evals/vllm_server.log"]  # one server for the study, none per arm
    command = (root / "evals" / "vllm_server.log").read_text()
    assert "--max-loras 2" in command and "--max-lora-rank 8" in command  # rank 4 rounds up to vLLM's smallest
    for arm in ("zero-shot", "manyicl"):
        assert f"{arm}={(root / 'runs' / arm / 'final').resolve()}" in command
        records = [json.loads(line) for line in (root / "evals" / arm / "summary.jsonl").read_text().splitlines()]
        assert {(r["method"], r["task"], r["shots"]) for r in records} == {(arm, "sst2", "0"), (arm, "sst2", "2")}
        assert all(r["backend"] == "vllm" and r["num_docs"] == 4 for r in records)
    assert not (root / "evals" / "few-shot").exists()
    leaderboard = (root / "leaderboard.md").read_text()
    assert "zero-shot" in leaderboard and "manyicl" in leaderboard
