"""One server for several arms, without a server: which models can share one, the names they are served under,
the vLLM parallel flags, and the refusal of data parallelism over a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.lm_eval_bridge import choose_backend, eval_server_args
from manyicl.harness.serve import parallel_args, server_command
from manyicl.harness.settings import EvalConfig
from manyicl.harness.shared_server import adapter_arms, evaluate_arms

EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a whole safetensors file holding no tensors


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)  # present: model resolution refuses a folder without weights
    (folder / "tokenizer_config.json").write_text("{}")  # and one without a tokenizer
    return folder


def _adapter(folder: Path, base: Path, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(EMPTY_SAFETENSORS)  # present: model resolution refuses a folder without it
    return folder


def test_parallel_flags_go_to_the_server():
    assert parallel_args(1, 1, None) == []
    assert parallel_args(2, 4, None) == ["--tensor-parallel-size", "2", "--data-parallel-size", "4"]
    assert parallel_args(4, 1, {"arm": "/a"}) == ["--tensor-parallel-size", "4"]  # TP with LoRA is fine


def test_data_parallelism_over_a_lora_adapter_is_refused():
    with pytest.raises(HarnessError, match="silently scored the base model"):
        parallel_args(1, 2, {"arm": "/adapter"})
    with pytest.raises(HarnessError, match="silently scored the base model"):
        eval_server_args(EvalConfig(data_parallel_size=2), "/adapter")
    with pytest.raises(HarnessError, match="at least 1"):
        parallel_args(0, 1, None)


def test_parallel_sizes_belong_to_the_vllm_backend(monkeypatch):
    assert eval_server_args(EvalConfig(data_parallel_size=2), None) == ["--data-parallel-size", "2"]
    # a server someone else runs has its own sizes
    assert eval_server_args(EvalConfig(tensor_parallel_size=2, server_url="http://h/v1"), None) == []
    assert eval_server_args(EvalConfig(), "/adapter") == []
    # the transformers-side backends have no such sizes; `auto` takes them as a request for vLLM
    for backend in ("hf", "prefix"):
        with pytest.raises(HarnessError, match="apply to the vLLM backend"):
            choose_backend(EvalConfig(tensor_parallel_size=2, backend=backend), {"multiple_choice"})
    monkeypatch.setattr("manyicl.harness.serve.vllm_available", lambda: True)
    assert choose_backend(EvalConfig(data_parallel_size=2), {"multiple_choice"})[0] == "vllm"
    monkeypatch.setattr("manyicl.harness.serve.vllm_available", lambda: False)
    with pytest.raises(HarnessError, match="A vLLM parallel size needs vLLM installed"):
        choose_backend(EvalConfig(tensor_parallel_size=2), {"multiple_choice"})


def test_adapters_of_one_base_share_a_server_under_their_arm_names(tmp_path):
    base = _model(tmp_path / "base")
    a = _adapter(tmp_path / "runs" / "manyicl", base, rank=16)
    b = _adapter(tmp_path / "runs" / "zero-shot", base, rank=8)
    arms = adapter_arms([str(a), str(b)])
    assert arms.base == str(base.resolve())
    assert arms.adapters == {"manyicl": str(a.resolve()), "zero-shot": str(b.resolve())}
    assert arms.names == {str(a): "manyicl", str(b): "zero-shot"}
    cmd = server_command(arms.base, port=1, served_name="base", adapters=arms.adapters, dtype="auto",
                         max_model_len=None, fast_start=False, extra_args=[])
    assert cmd[cmd.index("--max-loras") + 1] == "2"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16"  # the largest rank among them
    assert f"manyicl={a.resolve()}" in cmd and f"zero-shot={b.resolve()}" in cmd


def test_two_arms_with_one_name_are_both_served(tmp_path):
    base = _model(tmp_path / "base")
    a = _adapter(tmp_path / "x" / "arm", base)
    b = _adapter(tmp_path / "y" / "arm", base)
    assert sorted(adapter_arms([str(a), str(b)]).adapters) == ["arm", "arm-2"]


def test_full_weights_or_two_bases_cannot_share_a_server(tmp_path):
    base, other = _model(tmp_path / "base"), _model(tmp_path / "other")
    a = _adapter(tmp_path / "a", base)
    with pytest.raises(HarnessError, match="holds full weights, not a LoRA adapter"):
        adapter_arms([str(a), str(other)])
    with pytest.raises(HarnessError, match="different base models"):
        adapter_arms([str(a), str(_adapter(tmp_path / "b", other))])


def test_evaluating_several_arms_refuses_what_one_server_cannot_do(tmp_path):
    with pytest.raises(HarnessError, match="silently scored the base model"):
        evaluate_arms(EvalConfig(model="a,b", backend="vllm", data_parallel_size=2))
    with pytest.raises(HarnessError, match="needs the vLLM backend"):
        evaluate_arms(EvalConfig(model="a,b", backend="hf"))
    with pytest.raises(HarnessError, match="give one --model with it"):
        evaluate_arms(EvalConfig(model="a,b", server_url="http://h/v1"))


def test_num_processes_chooses_a_transformers_side_backend():
    assert choose_backend(EvalConfig(num_processes=2), {"generation"})[0] == "prefix"
    assert choose_backend(EvalConfig(num_processes=2, backend="hf"), {"multiple_choice"}) == (
        "hf", "--backend hf on 2 processes")
    with pytest.raises(HarnessError, match="for vLLM pass --data-parallel-size instead"):
        choose_backend(EvalConfig(num_processes=2, backend="vllm"), {"multiple_choice"})
    with pytest.raises(HarnessError, match="give one kind"):
        choose_backend(EvalConfig(num_processes=2, data_parallel_size=2), {"multiple_choice"})
    with pytest.raises(HarnessError, match="--server-url scores on a server"):
        choose_backend(EvalConfig(num_processes=2, server_url="http://h/v1"), {"multiple_choice"})
