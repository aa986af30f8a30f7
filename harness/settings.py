"""Every settings class and the project's shared vocabulary (arms, families, metric names, defaults), with one
precedence rule: defaults < `--config` YAML < command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.runs import results_dir

T = TypeVar("T")

DEFAULT_MAX_LENGTH = 2048  # the context (tokens) when neither a flag nor a checkpoint says otherwise
DEFAULT_SEED = 1234
# How a training arm builds its sequences (train/sequences.py implements each one).
METHODS = ("zero-shot", "few-shot", "many-shot-last", "manyicl", "manyicl-full")
TRAIN_ARMS = (*METHODS, "dedicated")  # what `harness train --method` accepts
ARMS = ("base", *TRAIN_ARMS)  # every arm a study compares, in display order
FAMILIES = ("classification", "nli", "qa", "summarization", "math")
# A task's metric name to the key lm-eval reports it under.
METRIC_KEYS = {"accuracy": "acc", "exact_match_number": "exact_match", "rouge_l": "rouge_l"}
BACKENDS = ("auto", "vllm", "hf")
CURVE_DIR = "curve"  # in a run directory: one finished model folder per learning-curve point, named by fraction


def setting(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's word
    """A settings field with its default and a one-line help."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def split_list(value: Any) -> list[str]:
    """A comma-separated string or a list as a list of stripped, non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


@dataclass
class TrainConfig:
    """Everything `harness train` needs; saved as the run's config.yaml."""

    method: str = setting("manyicl", " | ".join(TRAIN_ARMS))
    model: str | None = setting(None, "model folder, run directory, hub id; default: SmolLM2-135M-Instruct")
    tasks: list[str] = setting(["sst2", "rte"], "training tasks (comma-separated); probes are refused")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    format: str = setting("auto", "chat | plain | auto (chat when the tokenizer has a chat template)")
    shots: int = setting(4, "few-shot: demonstrations before the one target")
    dedicated_method: str = setting("zero-shot", "dedicated: how each per-task model's sequences are built (" + " | ".join(METHODS) + ")")
    max_seq_len: int = setting(DEFAULT_MAX_LENGTH, "tokens per sequence (and per training row)")
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
    seed: int = setting(DEFAULT_SEED, "one seed for data order, python, numpy, torch")
    output_dir: str | None = setting(None, "run directory; default results/runs/<utc>-<model>-<method>")
    resume: bool = setting(False, "continue an interrupted run in --output-dir from its last checkpoint")
    save_steps: int = setting(50, "checkpoint every N steps (for --resume)")
    report_to: list[str] = setting(["none"], "live logs through TRL: none | tensorboard | wandb (comma-separated)")
    eval_steps: int | None = setting(None, "validation loss every N steps, at the start and at the end")
    eval_examples_per_task: int | None = setting(None, "use at most this many validation examples per task")
    curve_points: list[float] = setting([], "keep the model at these fractions of the budget's steps (e.g. 0.25,0.5) "
                                        "as finished folders under curve/, for learning curves")
    # Issue 11: N > 1 re-launches `harness train` under `accelerate launch` (train/distributed.py).
    num_processes: int = setting(1, "training processes (GPUs); > 1 re-launches under accelerate launch")
    accelerate_config: str | None = setting(None, "Accelerate config file, or one shipped in configs/accelerate/: "
                                            "single-device | multi-gpu | fsdp | deepspeed-zero3")

    def __post_init__(self):
        self.tasks = split_list(self.tasks)
        self.report_to = split_list(self.report_to)
        self.curve_points = [float(p) for p in split_list(self.curve_points)]
        if any(not 0 < p <= 1 for p in self.curve_points):
            raise HarnessError(f"curve_points must be fractions in (0, 1], not {self.curve_points}.")

    @property
    def budget_given(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.max_tokens, self.max_targets))

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora_r else 2e-5


@dataclass
class EvalConfig:
    """Everything `harness evaluate` needs; saved as the evaluation's config.yaml."""

    model: str | None = setting(None, "model folder, training run directory or hub id; default SmolLM2")
    tasks: list[str] = setting(["sst2", "rte", "gsm8k"], "tasks to score (comma-separated)")
    shots: list[str] = setting(["0", "5", "many"], "shot settings: numbers and/or `many`")
    heldout: list[str] = setting([], "tasks no arm trains on (reported as unseen-task generalisation)")
    probes: bool | None = setting(None, "score the forgetting probes; default on for fine-tuned checkpoints")
    probe_tasks: list[str] = setting(["all-probes"], "which probes")
    probe_shots: list[str] = setting(["0"], "shot settings for the probes")
    backend: str = setting("auto", "prefix | hf | vllm | auto (the fastest measured here; see bench/RESULTS.md)")
    server_url: str | None = setting(None, "use a running OpenAI-compatible server (…/v1) instead of starting one")
    served_model: str | None = setting(None, "model name on --server-url (default: the model path)")
    seeds: int = setting(1, "demonstration draws (seed, seed+1, …) for k > 0 shots; 0 shots needs one")
    seed: int = setting(DEFAULT_SEED, "first demonstration seed")
    limit: int | None = setting(None, "score at most this many test documents per task")
    max_length: int | None = setting(None, "context to fit prompts into; default the checkpoint's max_seq_len or "
                                     f"{DEFAULT_MAX_LENGTH}")
    format: str = setting("auto", "chat | plain | auto (the checkpoint's training format)")
    dtype: str = setting("auto", "auto (bfloat16 on a GPU, float32 on a CPU, for reproducible scores) | bfloat16 | float32")
    batch_size: int = setting(4, "requests per batch (hf) / concurrent requests (vllm)")
    method: str | None = setting(None, "arm label for the records; default from the checkpoint, else `base`")
    output_dir: str | None = setting(None, "evaluation directory; default results/evals/<utc>-<model>")
    base_results: str | None = setting(None, "where the base model's probe scores are kept and reused; default a cache")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    # Issue 11: passed to the vLLM server this command starts (harness/shared_server.py).
    tensor_parallel_size: int = setting(1, "GPUs one model is split over (vLLM tensor parallelism)")
    data_parallel_size: int = setting(1, "model replicas (vLLM data parallelism; refused with a LoRA adapter)")

    def __post_init__(self):
        for name in ("tasks", "shots", "heldout", "probe_tasks", "probe_shots"):
            setattr(self, name, split_list(getattr(self, name)))


@dataclass
class StudyConfig:
    """One study: model, tasks, arms, matched budgets, evaluation settings."""

    name: str = setting("study", "the study's name (its default directory is results/studies/<name>)")
    description: str = setting("", "what this study is for, shown in REPORT.md")
    model: str | None = setting(None, "base model for every arm; default SmolLM2-135M-Instruct")
    tasks: list[str] = setting(["sst2", "rte"], "training tasks (the mixture)")
    heldout: list[str] = setting([], "tasks no arm trains on: unseen-task generalisation")
    probes: list[str] = setting(["arc_easy", "piqa"], "forgetting probes, never trained on")
    arms: list[str] = setting([a for a in ARMS if a != "manyicl-full"], "arms to compare")
    train: dict[str, Any] = setting({}, "TrainConfig settings shared by every arm (budget, max_seq_len, lr, ...); "
                                    "`seeds: [..]` trains every arm once per seed")
    eval: dict[str, Any] = setting({}, "EvalConfig settings shared by every evaluation (shots, limit, seeds, ...)")
    curve_eval: dict[str, Any] = setting({}, "EvalConfig settings for the learning-curve points (train.curve_points);"
                                         " default shots [many], one seed, the study's limit")
    output_dir: str | None = setting(None, "study directory; default results/studies/<name>")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    expected_minutes: float | None = setting(None, "how long the study should take on its reference hardware")
    hardware: str = setting("", "the hardware the preset is sized for")
    throughput: dict[str, Any] = setting({}, "measured constants the dry run estimates time and memory from "
                                         "(harness/study_estimate.py), with their source")

    def __post_init__(self):
        for name in ("tasks", "heldout", "probes", "arms"):
            setattr(self, name, split_list(getattr(self, name)))

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) if self.output_dir else results_dir() / "studies" / self.name


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
    """A settings object as a plain dict (what config.yaml files hold)."""
    return dataclasses.asdict(settings)


def help_for(cls: type, name: str) -> str:
    """The one-line help of a settings field (CLI options read it from here)."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)
