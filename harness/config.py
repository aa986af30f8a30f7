"""Settings objects, one per concern, with one precedence rule: defaults < `--config` YAML < command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import HarnessError

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's word
    """A settings field with its default and a one-line help."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


@dataclass
class TrainConfig:
    """Everything `harness train` needs; saved as the run's config.yaml."""

    method: str = setting("manyicl", "zero-shot | few-shot | many-shot-last | manyicl | manyicl-full | dedicated")
    model: str | None = setting(None, "model folder, run directory, hub id; default: SmolLM2-135M-Instruct")
    tasks: list[str] = setting(["sst2", "rte"], "training tasks (comma-separated); probes are refused")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    format: str = setting("auto", "chat | plain | auto (chat when the tokenizer has a chat template)")
    shots: int = setting(4, "few-shot: demonstrations before the one target")
    dedicated_method: str = setting("zero-shot", "dedicated: how each per-task model's sequences are built")
    max_seq_len: int = setting(2048, "tokens per sequence (and per training row)")
    max_steps: int | None = setting(None, "budget: optimizer steps")
    max_tokens: int | None = setting(None, "budget: training tokens (rows are never cut)")
    max_targets: int | None = setting(None, "budget: supervised answers")
    examples_per_task: int | None = setting(None, "use at most this many train examples per task")
    batch_size: int = setting(1, "rows per device per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    learning_rate: float | None = setting(None, "peak learning rate; default 2e-5 full, 2e-4 LoRA")
    warmup_ratio: float = setting(0.05, "fraction of steps for linear warm-up")
    lr_scheduler: str = setting("cosine", "learning-rate schedule (transformers names)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    lora_r: int = setting(0, "LoRA rank; 0 trains all weights")
    lora_alpha: int | None = setting(None, "LoRA alpha; default 2 x rank")
    lora_merge: bool = setting(True, "save LoRA merged into full weights (else the adapter alone)")
    gradient_checkpointing: bool = setting(False, "trade compute for memory")
    seed: int = setting(1234, "one seed for data order, python, numpy, torch")
    output_dir: str | None = setting(None, "run directory; default results/runs/<utc>-<model>-<method>")
    resume: bool = setting(False, "continue an interrupted run in --output-dir from its last checkpoint")
    save_steps: int = setting(50, "checkpoint every N steps (for --resume)")
    # scale (issue 11): processes and accelerate config; N > 1 re-launches under `accelerate launch`
    num_processes: int = setting(1, "training processes (GPUs); > 1 re-launches under accelerate launch")
    accelerate_config: str | None = setting(None, "accelerate config: a file or single-device | multi-gpu | fsdp | "
                                            "deepspeed-zero3 (configs/accelerate/)")

    def __post_init__(self):
        self.tasks = split_list(self.tasks)

    @property
    def budget_given(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.max_tokens, self.max_targets))

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora_r else 2e-5


def load_settings(cls: type[T], config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build a settings object: its defaults, then the YAML file, then the non-None overrides (flags)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    data: dict[str, Any] = {}
    if config_path:
        path = Path(config_path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise HarnessError(f"Config file {path} does not exist; check the path.") from None
        except yaml.YAMLError as err:
            raise HarnessError(f"Config file {path} is not valid YAML ({getattr(err, 'problem', err)}).") from None
        if not isinstance(raw, dict):
            raise HarnessError(f"Config file {path} must be a mapping of settings.")
        unknown = sorted(set(raw) - names)
        if unknown:
            raise HarnessError(f"Config file {path}: unknown setting `{unknown[0]}`; known: {', '.join(sorted(names))}.")
        data.update(raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls(**data)
    except TypeError as err:
        raise HarnessError(f"Bad settings for {cls.__name__}: {err}.") from None


def to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def help_for(cls: type, name: str) -> str:
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)
