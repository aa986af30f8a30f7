"""Every settings class and the project's shared vocabulary (arms, families, metric names, defaults), with one
precedence rule: defaults < `--config` YAML < command-line flags."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.runs import results_dir

T = TypeVar("T")

DEFAULT_MAX_LENGTH = 2048  # the context (tokens) when neither a flag nor a checkpoint says otherwise
DEFAULT_SEED = 1234
MIN_LENGTH = 16  # tokens: below this not even one short example and its answer fit
FORMATS = ("auto", "chat", "plain")
# transformers' SchedulerType values (a unit test keeps this in step with the pinned version)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
# How a training arm builds its sequences (train/sequences.py implements each one).
METHODS = ("zero-shot", "few-shot", "many-shot-last", "manyicl", "manyicl-full")
TRAIN_ARMS = (*METHODS, "dedicated")  # what `harness train --method` accepts
ARMS = ("base", *TRAIN_ARMS)  # every arm a study compares, in display order
FAMILIES = ("classification", "nli", "qa", "summarization", "math")
# A task's metric name to the key lm-eval reports it under.
METRIC_KEYS = {"accuracy": "acc", "exact_match_number": "exact_match", "rouge_l": "rouge_l"}
# A model that gives one answer to this share of a task's documents (multiple choice) scores the class balance,
# not skill: the leaderboard and the report flag it, with the claims that rest on it.
ONE_ANSWER = 0.9
CURVE_DIR = "curve"  # in a run directory: one finished model folder per learning-curve point, named by fraction


def setting(default: Any, help: str, *, at_least: float | None = None, at_most: float | None = None,  # noqa: A002
            above: float | None = None, below: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A settings field with its default, a one-line help and the values it accepts (checked by check_settings
    for flags, config files and study files alike, before anything is written)."""
    metadata = {"help": help, "at_least": at_least, "at_most": at_most, "above": above, "below": below,
                "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def absolute_task_paths(tasks: list[str]) -> list[str]:
    """Task files (`.yaml`/`.yml`) as absolute paths, so a run's config.yaml names the same files from any folder;
    built-in task names as they are."""
    return [absolute_path(t) if Path(t).suffix in {".yaml", ".yml"} else t for t in tasks]  # type: ignore[misc]


def absolute_path(value: str | None) -> str | None:
    """A path made absolute against the working folder, symbolic links kept as the user named them."""
    return os.path.abspath(os.path.expanduser(value)) if value else value


# What a run's or an evaluation's config.yaml records beside its settings (resolved from them, not settings a user
# gives); `--config` skips them so that file can be given back as it is.
RECORDED_KEYS = ("model_path", "adapter")


def default_learning_rate(lora_r: int | None) -> float:
    """The peak learning rate when none is given: LoRA (rank > 0) takes a larger one than full fine-tuning."""
    return 2e-4 if lora_r else 2e-5


def effective_lora_alpha(lora_alpha: int | None, lora_r: int | None) -> int:
    """LoRA alpha as training applies it: the given one, else twice the rank."""
    return lora_alpha or 2 * int(lora_r or 0)


def rows_per_step(config: Mapping[str, Any]) -> int:
    """Rows per optimizer step over all processes (batch x grad-accum x processes), from training settings as a
    mapping: a TrainConfig's fields or a run's config.yaml (where an older one lacks a key, it counts as 1)."""
    return (int(config.get("batch_size") or 1) * int(config.get("grad_accum") or 1)
            * int(config.get("num_processes") or 1))


def shots_order(shots: str) -> float:
    """Sort key for shot settings: numbers in order, `many` last."""
    return float("inf") if shots == "many" else float(shots)


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

    method: str = setting("manyicl", " | ".join(TRAIN_ARMS), choices=TRAIN_ARMS)
    model: str | None = setting(None, "model folder, run directory, hub id; default: SmolLM2-135M-Instruct")
    tasks: list[str] = setting(["sst2", "rte"], "training tasks (comma-separated); probes are refused")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    format: str = setting("auto", "chat | plain | auto (chat when the tokenizer has a chat template)", choices=FORMATS)
    shots: int = setting(4, "few-shot: demonstrations before the one target", at_least=1)
    dedicated_method: str = setting("zero-shot", "dedicated: how each per-task model's sequences are built (" + " | ".join(METHODS) + ")", choices=METHODS)
    max_seq_len: int = setting(DEFAULT_MAX_LENGTH, "tokens per sequence (and per training row)", at_least=MIN_LENGTH)
    max_steps: int | None = setting(None, "budget: optimizer steps", at_least=1)
    max_tokens: int | None = setting(None, "budget: training tokens (rows are never cut)", at_least=1)
    max_targets: int | None = setting(None, "budget: supervised answers", at_least=1)
    examples_per_task: int | None = setting(None, "use at most this many train examples per task", at_least=1)
    batch_size: int = setting(1, "rows per device per micro-batch", at_least=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", at_least=1)
    learning_rate: float | None = setting(None, "peak learning rate; default 2e-5 full, 2e-4 LoRA", above=0, at_most=1)
    warmup_ratio: float = setting(0.05, "fraction of steps for linear warm-up", at_least=0, below=1)
    lr_scheduler: str = setting("cosine", "learning-rate schedule (transformers names)", choices=LR_SCHEDULERS)
    weight_decay: float = setting(0.0, "AdamW weight decay", at_least=0)
    lora_r: int = setting(0, "LoRA rank; 0 trains all weights", at_least=0)
    lora_alpha: int | None = setting(None, "LoRA alpha; default 2 x rank", at_least=1)
    lora_merge: bool = setting(True, "save LoRA merged into full weights (else the adapter alone)")
    gradient_checkpointing: bool = setting(False, "trade compute for memory")
    seed: int = setting(DEFAULT_SEED, "one seed for data order, python, numpy, torch", at_least=0)
    output_dir: str | None = setting(None, "run directory; default results/runs/<utc>-<model>-<method>")
    resume: bool = setting(False, "continue an interrupted run in --output-dir from its last checkpoint")
    save_steps: int = setting(50, "checkpoint every N steps (for --resume)", at_least=1)
    report_to: list[str] = setting(["none"], "live logs through TRL: none | tensorboard | wandb (comma-separated)")
    eval_steps: int | None = setting(None, "validation loss every N steps, at the start and at the end", at_least=1)
    eval_examples_per_task: int | None = setting(None, "use at most this many validation examples per task", at_least=1)
    curve_points: list[float] = setting([], "keep the model at these fractions of the budget's steps (e.g. 0.25,0.5) "
                                        "as finished folders under curve/, for learning curves")
    # Issue 11: N > 1 re-launches `harness train` under `accelerate launch` (train/distributed.py).
    num_processes: int = setting(1, "training processes (GPUs); > 1 re-launches under accelerate launch", at_least=1)
    accelerate_config: str | None = setting(None, "Accelerate config file, or one shipped in configs/accelerate/: "
                                            "single-device | multi-gpu | fsdp | deepspeed-zero3")

    def __post_init__(self):
        self.tasks = absolute_task_paths(split_list(self.tasks))
        self.data_dir = absolute_path(self.data_dir)
        self.report_to = split_list(self.report_to)
        try:
            self.curve_points = [float(p) for p in split_list(self.curve_points)]
        except ValueError:
            raise HarnessError(f"curve_points must be fractions in (0, 1], like 0.25,0.5; not {self.curve_points}.") from None
        if any(not 0 < p <= 1 for p in self.curve_points):
            raise HarnessError(f"curve_points must be fractions in (0, 1], not {self.curve_points}.")

    @property
    def budget_given(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.max_tokens, self.max_targets))

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else default_learning_rate(self.lora_r)

    @property
    def rows_per_step(self) -> int:
        """Rows per optimizer step over all ranks: what the budget's steps count."""
        return rows_per_step(vars(self))


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
    backend: str = setting("auto", "prefix | hf | vllm | auto (the fastest measured here; see bench/RESULTS.md)",
                           choices=("auto", "prefix", "hf", "vllm"))
    server_url: str | None = setting(None, "use a running OpenAI-compatible server (…/v1) instead of starting one")
    served_model: str | None = setting(None, "model name on --server-url (default: the name the server uses for "
                                       "--model, else the only model served)")
    seeds: int = setting(1, "score every document again under each of N demonstration seeds (seed, seed+1, …; a "
                         "crossed design); 0 shots needs one", at_least=1)
    seed: int = setting(DEFAULT_SEED, "first demonstration seed", at_least=0)
    draws: int = setting(1, "demonstration draws G: each task's documents are split into G balanced blocks, in a "
                         "seeded order, and block g is prompted with demonstrations drawn for it, so the intervals "
                         "can count the variance between draws (G prefixes to compute, not G x the documents)",
                         at_least=1)
    draw_share: str | None = setting(None, "score only share i of n of the draw blocks (`i/n`: blocks g with "
                                     "g mod n = i - 1), so n training seeds each score a disjoint share of the "
                                     "documents and of the draws")
    limit: int | None = setting(None, "score at most this many test documents per task", at_least=1)
    split: str = setting("test", "test | validation: the documents scored; validation is carved from train (never "
                         "trained on, never a demonstration), for choosing tasks and recipes without test scores",
                         choices=("test", "validation"))
    max_length: int | None = setting(None, "context to fit prompts into; default the checkpoint's max_seq_len or "
                                     f"{DEFAULT_MAX_LENGTH}", at_least=MIN_LENGTH)
    format: str = setting("auto", "chat | plain | auto (the checkpoint's training format)", choices=FORMATS)
    dtype: str = setting("auto", "auto (bfloat16 on a GPU, float32 on a CPU, for reproducible scores) | bfloat16 | float32",
                         choices=("auto", "bfloat16", "float16", "float32"))
    batch_size: int = setting(4, "requests per batch (hf) / concurrent requests (vllm)", at_least=1)
    method: str | None = setting(None, "arm label for the records; default from the checkpoint, else `base`")
    output_dir: str | None = setting(None, "evaluation directory; default results/evals/<utc>-<model>")
    base_results: str | None = setting(None, "where the base model's probe scores are kept and reused; default a cache")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    # Issue 11: passed to the vLLM server this command starts (harness/shared_server.py).
    tensor_parallel_size: int = setting(1, "GPUs one model is split over (vLLM tensor parallelism)", at_least=1)
    data_parallel_size: int = setting(1, "model replicas (vLLM data parallelism; refused with a LoRA adapter)", at_least=1)
    num_processes: int = setting(1, "processes the transformers-side scorer (prefix, hf) shares the documents over "
                                 "(GPUs); > 1 re-launches the scoring under accelerate launch", at_least=1)

    def __post_init__(self):
        for name in ("tasks", "shots", "heldout", "probe_tasks", "probe_shots"):
            setattr(self, name, split_list(getattr(self, name)))
        for name in ("tasks", "heldout", "probe_tasks"):
            setattr(self, name, absolute_task_paths(getattr(self, name)))
        self.data_dir = absolute_path(self.data_dir)
        parse_share(self.draw_share, self.draws)

    @property
    def share(self) -> tuple[int, int]:
        """(i, n) of --draw-share, 1-based i; (1, 1) when every block is scored."""
        return parse_share(self.draw_share, self.draws)


STUDY_DRAWS = 16  # demonstration draws per (task, shots) in a study unless eval.draws says otherwise


def parse_share(value: str | None, draws: int) -> tuple[int, int]:
    """`i/n` -> (i, n), checked against the number of draw blocks (each share needs at least one)."""
    if value is None or value == "":
        return 1, 1
    parts = str(value).split("/")
    if len(parts) != 2 or not all(p.strip().isdecimal() for p in parts):
        raise HarnessError(f"--draw-share `{value}` is not of the form i/n, like 2/3.")
    i, n = (int(p) for p in parts)
    if not 1 <= i <= n:
        raise HarnessError(f"--draw-share {value}: i must be between 1 and n.")
    if n > draws:
        raise HarnessError(f"--draw-share {value} splits {draws} draw block(s) {n} ways; set --draws to at least {n}.")
    return i, n


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
    shared_server: bool | None = setting(None, "score the arms' LoRA adapters from one vLLM server, each by name; "
                                         "default on when they can be (train.lora_r > 0, train.lora_merge false, "
                                         "eval.backend vllm, two or more adapter arms)")
    expected_minutes: float | None = setting(None, "how long the study should take on its reference hardware", above=0)
    hardware: str = setting("", "the hardware the preset is sized for")
    throughput: dict[str, Any] = setting({}, "measured constants the dry run estimates time and memory from "
                                         "(harness/study_estimate.py), with their source")
    planned_variance: dict[str, Any] = setting({}, "the primary difference's variance per document, draw and "
                                               "training seed the dry run sizes power from (a study's variance.json "
                                               "records them), the effect in points, and their source")

    def __post_init__(self):
        for name in ("tasks", "heldout", "probes", "arms"):
            setattr(self, name, split_list(getattr(self, name)))

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) if self.output_dir else results_dir() / "studies" / self.name


# --------------------------------------------------------------------------- checking values

_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a text", list: "a list",
               dict: "a mapping"}


def _shape(annotation: Any) -> tuple[type, type | None, bool]:
    """(base type, list item type, None allowed) of a settings field's annotation."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation) or annotation
    return origin, (args[0] if origin is list and args else None), optional


def _checked_value(name: str, value: Any, annotation: Any) -> Any:
    """The value as the field's type, or a ValueError saying what it should have been. Quoted numbers are refused
    for whole-number fields (`max_seq_len: "256"` is a typo more often than a wish); a float field takes a text that
    reads as a number because PyYAML reads `2e-5` (no dot) as a text."""
    base, item, optional = _shape(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"must be {_TYPE_WORDS.get(base, base.__name__)}, not empty")
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if base is dict and isinstance(value, dict):
        return value
    if base is list and isinstance(value, str):
        return value  # comma-separated; __post_init__ splits it
    if base is list and isinstance(value, list):
        for element in value:
            if item is float and (isinstance(element, bool) or not isinstance(element, int | float)):
                raise ValueError(f"must be a list of numbers, not one holding {element!r}")
            if item is not float and not isinstance(element, str | int | float) or isinstance(element, bool):
                raise ValueError(f"must be a list of texts, not one holding {element!r}")
        return value
    shown = f'the text "{value}"' if isinstance(value, str) else f"{_TYPE_WORDS.get(type(value), type(value).__name__)} ({value!r})"
    hint = "; write it without quotes" if base in (int, float) and isinstance(value, str) and value.strip().lstrip("-").isdigit() else ""
    raise ValueError(f"must be {_TYPE_WORDS.get(base, base.__name__)}, not {shown}{hint}")


def _range_problem(value: Any, meta: dict[str, Any]) -> str | None:
    """Why a value is out of its field's range or choices, or None."""
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, not `{value}`"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if meta.get("at_least") is not None and value < meta["at_least"]:
        return f"must be at least {meta['at_least']:g}, not {value:g}"
    if meta.get("above") is not None and value <= meta["above"]:
        return f"must be above {meta['above']:g}, not {value:g}"
    if meta.get("at_most") is not None and value > meta["at_most"]:
        return f"must be at most {meta['at_most']:g}, not {value:g}"
    if meta.get("below") is not None and value >= meta["below"]:
        return f"must be below {meta['below']:g}, not {value:g}"
    return None


def check_settings(cls: type, values: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """Check raw values (from flags, a config file or a study file) against `cls`'s fields before anything is
    built or written: unknown names, types (YAML's included) and ranges. Returns the values converted to the
    fields' types; raises HarnessError naming the setting as the user wrote it (`where(name)`)."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise HarnessError(f"{where(name)} is not a setting; known: {', '.join(sorted(known))}.")
        try:
            value = _checked_value(name, value, hints[name])
        except ValueError as err:
            raise HarnessError(f"{where(name)} {err}.") from None
        problem = _range_problem(value, dict(known[name].metadata))
        if problem:
            raise HarnessError(f"{where(name)} {problem}.")
        out[name] = value
    return out


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A settings file's mapping, or one sentence on why it cannot be read (missing, a folder, not UTF-8, not
    YAML, not a mapping)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{what} {path} does not exist; check the path.") from None
    except IsADirectoryError:
        raise HarnessError(f"{what} {path} is a folder; give the YAML file.") from None
    except UnicodeDecodeError as err:
        raise HarnessError(f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise HarnessError(f"{what} {path} is not valid YAML{at} ({getattr(err, 'problem', err)}).") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HarnessError(f"{what} {path} must be a mapping of settings (name: value lines), not a "
                           f"{type(raw).__name__}.")
    return raw


def check_ranges(settings: Any) -> None:
    """A settings object built in code (a library call, not load_settings) checked against its fields' ranges and
    choices, named as flags: the plain functions refuse what the command line refuses, from the same metadata."""
    for f in fields(settings):
        problem = _range_problem(getattr(settings, f.name), dict(f.metadata))
        if problem:
            raise HarnessError(f"{flag_name(f.name)} {problem}.")


def flag_name(name: str) -> str:
    """How a settings field is spelled on the command line."""
    return "--" + name.replace("_", "-")


def load_settings(cls: type[T], config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build a settings object: its defaults, then the YAML file, then the non-None overrides (flags), each value
    checked (check_settings) before the object exists."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    data: dict[str, Any] = {}
    if config_path:
        path = Path(config_path)
        raw = {k: v for k, v in read_yaml_mapping(path, "Config file").items() if k not in RECORDED_KEYS}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise HarnessError(f"Config file {path}: unknown setting `{unknown[0]}`; known: {', '.join(sorted(names))}.")
        data.update(check_settings(cls, raw, lambda name: f"Config file {path}: `{name}`"))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(check_settings(cls, given, lambda name: flag_name(name)))
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
