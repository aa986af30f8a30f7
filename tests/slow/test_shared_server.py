"""One vLLM server for two LoRA arms of the tiny model: each arm, scored by its name through lm-eval, gets the
scores and per-choice log-likelihoods it gets on a server of its own, and the two arms differ from each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manyicl.harness.serve import vllm_available
from manyicl.harness.settings import EvalConfig
from manyicl.harness.shared_server import evaluate_arms
from tests.fixtures import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

SERVER = {"fast_start": True, "startup_timeout": 600}


@pytest.fixture(scope="module")
def servable_model(tmp_path_factory) -> Path:
    # head_dim 32: the CPU attention kernels do not take the default tiny model's 16.
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vllm"), hidden=64)


def _adapter(base: Path, folder: Path, seed: int, method: str) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # Random B as well as A, so each adapter moves the scores its own way; two ranks, so --max-lora-rank matters.
    config = LoraConfig(r=4 * seed, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)  # as `harness train --no-lora-merge` leaves it
    (folder / "harness_checkpoint.json").write_text(json.dumps({"method": method, "format": "plain",
                                                                "base_model": str(base), "max_seq_len": 256}))
    return folder


@pytest.fixture(scope="module")
def adapters(servable_model, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("arms")
    return [_adapter(servable_model, root / "arm-a", 1, "manyicl"),
            _adapter(servable_model, root / "arm-b", 2, "zero-shot")]


def _scores(out: Path) -> tuple[dict, dict]:
    records = {(r["task"], r["shots"]): r["value"] for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}
    samples = {}
    for path in sorted((out / "samples").glob("*.jsonl")):
        for row in map(json.loads, path.read_text().splitlines()):
            samples[(path.stem, row["uid"])] = [choice[0] for choice in row["response"]]
    return records, samples


def test_two_adapters_on_one_server_score_as_each_does_alone(adapters, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    cfg = EvalConfig(tasks=["sst2", "rte"], shots=["0", "2"], limit=4, probes=False, backend="vllm",
                     dtype="float32", max_length=256, batch_size=2, data_dir=str(tiny_data))
    specs = [str(a) for a in adapters]
    import dataclasses

    together = evaluate_arms(dataclasses.replace(cfg, output_dir=str(tmp_path / "together")), specs, **SERVER)
    assert [p.name for p in together] == ["arm-a", "arm-b"]
    server_log = (tmp_path / "together" / "vllm_server.log").read_text()
    assert "--max-loras 2" in server_log and "--max-lora-rank 8" in server_log  # ranks 4 and 8

    alone = [evaluate_arms(dataclasses.replace(cfg, output_dir=str(tmp_path / f"alone-{i}")), [spec], **SERVER)[0]
             for i, spec in enumerate(specs)]
    results = []
    for shared, single in zip(together, alone, strict=True):
        (shared_scores, shared_ll), (single_scores, single_ll) = _scores(shared), _scores(single)
        assert shared_scores == single_scores
        assert shared_ll.keys() == single_ll.keys() and len(shared_ll) == 2 * 2 * 4
        for key, values in shared_ll.items():
            assert values == pytest.approx(single_ll[key], abs=1e-4), key
        results.append(shared_ll)
    # The arms are really told apart: the second adapter's log-likelihoods are not the first's.
    apart = max(abs(x - y) for key in results[0] for x, y in zip(results[0][key], results[1][key], strict=True))
    assert apart > 1e-2
    records = [json.loads(line) for p in together for line in (p / "summary.jsonl").read_text().splitlines()]
    assert {(r["model"], r["method"]) for r in records} == {("arm-a", "manyicl"), ("arm-b", "zero-shot")}
