"""Running one harness module on N processes under `accelerate launch`, for training (`harness train
--num-processes N`) and for transformers-side scoring (`harness evaluate --num-processes N`); and, inside such a
process, which rank it is.

On a CPU the multi-GPU launcher (torchrun) is used too: accelerate's `--cpu` would start one process. Each process
then finds no GPU and works on the CPU with gloo between ranks.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import read_yaml_mapping

ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
DEFAULT_MULTI_PROCESS_CONFIG = "multi-gpu"
# Set by the re-launching parent: its children must not launch again, and must find the world it asked for.
LAUNCHED_ENV = "HARNESS_LAUNCHED_PROCESSES"


def world_size() -> int:
    """Processes working together, as the launcher (torchrun under `accelerate launch`) exported it; else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (RANK, not LOCAL_RANK: on several machines every node has a local rank 0)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Only this process writes (run directory, evaluation results)."""
    return rank() == 0


def launched() -> bool:
    """Whether this process runs under a launcher already (the harness's own or one started from outside)."""
    return LAUNCHED_ENV in os.environ or "WORLD_SIZE" in os.environ


def join_world() -> Any:
    """accelerate's process state for this launched process (initialises the process group once).

    The first PartialState fixes the backend for the whole process, and later `Accelerator()` calls (the
    Trainer's, lm-eval's) share it. Without `cpu=True` a process that finds no GPU makes itself a world of one
    (DistributedType.NO); with it, the launched CPU processes form one world over gloo. GPU runs get NCCL.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a one-process run)."""
    if world_size() > 1:
        join_world().wait_for_everyone()


def accelerate_config_path(name_or_path: str | None) -> Path:
    """A shipped config by name (configs/accelerate/<name>.yaml) or a file path; default the multi-GPU (DDP) one."""
    name = name_or_path or DEFAULT_MULTI_PROCESS_CONFIG
    shipped = ACCELERATE_CONFIGS / f"{name}.yaml"
    if shipped.exists():
        return shipped
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise HarnessError(f"Accelerate config `{name}` is neither a file nor a shipped config ({known}); "
                           "pass one of those names or a path from `accelerate config`.")
    return path


def check_accelerate_config(path: Path, num_processes: int) -> dict[str, Any]:
    """Refuse combinations where `accelerate launch` would silently start one process instead of N."""
    data = read_yaml_mapping(path, "Accelerate config")
    kind = str(data.get("distributed_type", "NO")).upper()
    if num_processes > 1 and kind == "NO":
        raise HarnessError(f"Accelerate config {path} has distributed_type NO, which launches one process, not "
                           f"{num_processes}; use configs/accelerate/multi-gpu.yaml (or fsdp, deepspeed-zero3).")
    if num_processes > 1 and data.get("use_cpu"):
        # accelerate's launcher sends --cpu / use_cpu runs to its single-process launcher unless mpirun is set up.
        raise HarnessError(f"Accelerate config {path} sets use_cpu, with which `accelerate launch` starts one "
                           f"process, not {num_processes}; drop use_cpu (the harness works on the CPU by itself "
                           "where there is no GPU, with gloo between processes).")
    return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(config_file: Path, num_processes: int, module_args: list[str],
                   machine: dict[str, Any] | None = None) -> list[str]:
    """`python -m accelerate.commands.launch --config_file F --num_processes N ... -m <module_args>`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--num_processes", str(num_processes)]
    machine = machine or {}
    if int(machine.get("num_machines", 1) or 1) == 1:
        cmd += ["--main_process_port", str(_free_port())]  # tests and several runs on one box must not collide
    return cmd + ["-m", *module_args]


def check_world(asked: int | None = None) -> int:
    """In a launched process: the world size, checked against the one the launching harness asked for."""
    size = world_size()
    wanted = os.environ.get(LAUNCHED_ENV) if asked is None else str(asked)
    if wanted is not None and int(wanted) != size:
        raise HarnessError(f"accelerate launch started {size} process(es), not the {wanted} asked for; check "
                           "distributed_type and num_processes in the accelerate config.")
    return size
