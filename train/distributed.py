"""Training on several processes: `harness train --num-processes N` re-launches itself under `accelerate launch`;
the trainer asks here which rank it is, waits for the others, and saves the model once, from rank 0.

How the rows are shared (transformers 5.19 + accelerate 1.15, read from their sources): with
`train_sampling_strategy="sequential"` the Trainer builds a plain `SequentialSampler`, and `accelerator.prepare`
wraps its batch sampler in `BatchSamplerShard(split_batches=False)`: rank r takes micro-batches r, r+N, r+2N, ...
of `batch_size` rows each. The rows of optimizer step t are therefore rows [t*B, (t+1)*B) with
B = batch_size x grad_accum x N, exactly the rows a one-process run with the same B takes at step t. Every rank
builds the same rows from the same seed, and the budget rounds the row count down to whole steps of B, so
accelerate never pads the last batch with repeated rows (`even_batches`): each row is trained on once, and the
counts taken over all rows are the sum over ranks. The loss is averaged over the tokens of all ranks
(`average_tokens_across_devices`, on by default), so the gradient equals the one-process gradient.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.launch import (  # noqa: F401 - re-exported: the trainer and its tests ask here
    ACCELERATE_CONFIGS,
    LAUNCHED_ENV,
    accelerate_config_path,
    barrier,
    check_accelerate_config,
    check_world,
    is_main_process,
    launched,
    rank,
    world_size,
)
from manyicl.harness.launch import launch_command as _launch
from manyicl.harness.settings import rows_per_step


def prints_summary() -> bool:
    """Whether this process prints the run's summary: rank 0, unless the harness launched it (then the launching
    `harness train` prints it once, after every rank has finished)."""
    return is_main_process() and LAUNCHED_ENV not in os.environ


def needs_launch(cfg: Any) -> bool:
    """Whether `harness train` must re-launch itself under `accelerate launch` (not when it already runs there)."""
    if cfg.num_processes < 1:
        raise HarnessError("--num-processes must be at least 1.")
    return not launched() and (cfg.num_processes > 1 or cfg.accelerate_config is not None)


def launch_command(config_file: Path, num_processes: int, train_config: Path,
                   machine: dict[str, Any] | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... -m manyicl.harness.cli train --config FILE`."""
    return _launch(config_file, num_processes, ["manyicl.harness.cli", "train", "--config", str(train_config)],
                   machine)


def launch_training(cfg: Any) -> Path:
    """Run `cfg` on `cfg.num_processes` processes under `accelerate launch`; returns the run directory.

    The model and the run directory are resolved here, once: N processes must not each convert the default model
    or each pick their own timestamped directory.
    """
    from manyicl.harness.models import resolve_model
    from manyicl.harness.runs import new_run_dir
    from manyicl.harness.settings import to_dict

    config_file = accelerate_config_path(cfg.accelerate_config)
    accelerate_settings = check_accelerate_config(config_file, cfg.num_processes)
    model = resolve_model(cfg.model)
    run_dir = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("runs", model.name, cfg.method)
    child = dataclasses.replace(cfg, output_dir=str(run_dir))
    with tempfile.TemporaryDirectory(prefix="harness-launch-") as tmp:
        train_config = Path(tmp) / "train.yaml"
        train_config.write_text(yaml.safe_dump(to_dict(child), sort_keys=False), encoding="utf-8")
        cmd = launch_command(config_file, cfg.num_processes, train_config, accelerate_settings)
        code = subprocess.call(cmd, env=os.environ | {LAUNCHED_ENV: str(cfg.num_processes)})
    if code != 0:
        raise HarnessError(f"Training on {cfg.num_processes} processes under accelerate launch failed with exit "
                           f"code {code}; the processes' own error is above.")
    return run_dir


def adopt_world(cfg: Any) -> None:
    """In a launched process: check the world is the one asked for and record its size in `cfg.num_processes`.

    Several processes must agree on one run directory, so a launch from outside the harness (srun + accelerate
    launch) must name it.
    """
    size = check_world()
    if size > 1 and not cfg.output_dir:
        raise HarnessError(f"Training on {size} processes needs --output-dir, so every process writes the same "
                           "run directory.")
    cfg.num_processes = size


def check_resume(run_dir: Path, old: Mapping[str, Any], cfg: Any) -> None:
    """A resumed run must keep its rows per optimizer step (batch x grad_accum x processes): the rows and the
    checkpoint's position in them depend on it. `old` is the run's config.yaml."""
    before, now = rows_per_step(old), cfg.rows_per_step
    if before != now:
        raise HarnessError(f"{run_dir} was trained with {before} rows per optimizer step (batch x grad-accum x "
                           f"processes), not {now}; resume with the same product.")


def save_final_model(trainer: Any, target: Path, merge_lora: bool) -> bool:
    """Save the trained model to `target` in bf16 from rank 0; returns whether a LoRA adapter was merged in.

    Every rank must call it. One process or DDP: every rank holds the whole model, rank 0 saves it. FSDP or
    DeepSpeed ZeRO-3: the full state dict is gathered collectively first; a LoRA adapter is then saved as an
    adapter and, when merging, rank 0 merges it into the base weights on the CPU.
    """
    import torch

    sharded = bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))
    model = trainer.model
    is_peft = hasattr(model, "merge_and_unload")
    if not sharded:
        if not is_main_process():
            return is_peft and merge_lora
        saved = model.merge_and_unload() if is_peft and merge_lora else model
        saved.to(torch.bfloat16).save_pretrained(target)
        return is_peft and merge_lora
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective: all ranks
    if is_main_process():
        state_dict = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state_dict.items()}
        model.save_pretrained(target, state_dict=state_dict)
        if is_peft and merge_lora:
            _merge_saved_adapter(target, model.peft_config["default"].base_model_name_or_path)
    barrier()
    return is_peft and merge_lora


def _merge_saved_adapter(folder: Path, base: str) -> None:
    """Replace the adapter in `folder` by the base model with the adapter merged in (bf16, on the CPU)."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = folder.with_name(folder.name + ".adapter")
    folder.rename(adapter)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16),
                                       adapter).merge_and_unload()
    merged.save_pretrained(folder)
    shutil.rmtree(adapter)
