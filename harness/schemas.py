"""Typed, versioned schemas of the files the project writes and reads back: a run's or evaluation's
`manifest.json`, a checkpoint's `harness_checkpoint.json`, a study's `state.json` and its stage done-markers.
(`summary.jsonl` has its own schema, `ResultRecord`, in harness/results.py.)

Files written before these schemas existed carry no `schema_version`; they read as version 1, and fields they
lack take their defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from manyicl.harness.errors import HarnessError
from manyicl.harness.runs import git_state, hardware, package_versions, read_json, write_json

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
STAGE_DONE_FILE = "study_stage_done.json"
STATE_FILE = "state.json"

S = TypeVar("S", bound="_Schema")


@dataclass(kw_only=True)
class _Schema:
    """Shared JSON round trip: unknown keys are kept out, missing ones take their defaults."""

    # Fields left out of the JSON when None, because the code before the schemas did not write them then.
    _OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._OMIT_WHEN_NONE:
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls: type[S], raw: dict[str, Any], source: Path | str = "") -> S:
        version = raw.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise HarnessError(f"{source or cls.__name__}: schema_version {version!r} is newer than this harness "
                               f"reads ({SCHEMA_VERSION}); update the harness.")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names} | {"schema_version": SCHEMA_VERSION})
        except TypeError as err:
            raise HarnessError(f"{source or cls.__name__} is missing a field ({err}); the file is damaged.") from None

    @classmethod
    def read(cls: type[S], path: Path) -> S:
        return cls.from_json(read_json(path), path)

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


@dataclass(kw_only=True)
class Provenance(_Schema):
    """What ran, where, with which versions: the head of every manifest."""

    created: str = ""  # ISO time the manifest was first written
    command: list[str] = field(default_factory=list)  # sys.argv
    git: dict[str, Any] = field(default_factory=dict)  # {"sha": ..., "dirty": ...}; None values outside a repository
    packages: dict[str, str] = field(default_factory=dict)  # installed versions of the libraries that matter
    hardware: dict[str, Any] = field(default_factory=dict)  # platform, python, CPUs, GPUs, memory
    seed: int | None = None  # the run's seed; None for a study

    @staticmethod
    def now(seed: int | None = None) -> dict[str, Any]:
        """Provenance fields for a manifest written now."""
        return {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": sys.argv,
                "git": git_state(), "packages": package_versions(), "hardware": hardware(), "seed": seed}


@dataclass(kw_only=True)
class TrainManifest(Provenance):
    """`manifest.json` of a training run (`harness train`). Version 1."""

    _OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({
        "data_sources", "models", "train_time_s", "steps", "tokens_per_second", "checkpoint", "checkpoint_kind",
        "wall_time_s", "seen", "final_train_loss", "curve", "tokens_seen_by_trainer"})

    kind: str = "train"
    method: str  # the arm
    status: str  # running | complete
    model: str  # the base model's path (or hub id)
    data_sources: dict[str, str] | None = None  # task -> where its rows came from (not for dedicated runs)
    models: dict[str, str] | None = None  # dedicated runs: task -> that task's model folder
    wall_time_s: float | None = None  # set when complete
    train_time_s: float | None = None  # seconds inside trainer.train()
    steps: int | None = None  # optimizer steps taken
    seen: dict[str, int] | None = None  # tokens, trained_tokens, targets, examples, rows actually trained on
    # learning-curve points (--curve-points): fraction, step, path of the model folder, and tokens/targets/examples
    # seen up to that step
    curve: list[dict[str, Any]] | None = None
    tokens_per_second: float | None = None
    num_processes: int = 1  # processes trained together; rows per optimizer step = batch x grad_accum x this
    tokens_seen_by_trainer: int | None = None  # the Trainer's own count of input tokens, summed over ranks
    final_train_loss: float | None = None  # last logged loss; None when nothing was logged
    final_eval_loss: float | None = None  # last validation loss (--eval-steps); None when not measured
    checkpoint: str | None = None  # the final/ folder
    checkpoint_kind: str | None = None  # full | adapter
    schema_version: int = SCHEMA_VERSION

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"


@dataclass(kw_only=True)
class EvalManifest(Provenance):
    """`manifest.json` of an evaluation directory (`harness evaluate`). Version 1."""

    kind: str = "evaluate"
    model: str  # the base weights' path (or hub id)
    adapter: str | None = None  # the LoRA adapter folder on top of `model`, if any
    method: str  # arm label of the records
    backend: str  # prefix | hf | vllm
    backend_reason: str | None = None  # why this backend: the flag, or the measured figures behind `auto`
    runs: list[dict[str, Any]] = field(default_factory=list)  # one entry per call that scored something
    schema_version: int = SCHEMA_VERSION


@dataclass(kw_only=True)
class StudyManifest(Provenance):
    """`manifest.json` of a study directory (`harness study`). Version 1."""

    kind: str = "study"
    name: str  # the study's name
    wall_time_s: float  # this invocation's wall time
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> done | skipped | failed | blocked
    schema_version: int = SCHEMA_VERSION


@dataclass(kw_only=True)
class CheckpointInfo(_Schema):
    """`harness_checkpoint.json`, written into every saved model: how it was trained. Version 1."""

    method: str  # the arm it was trained with
    format: str  # chat | plain: evaluation renders prompts the same way
    base_model: str  # the model training started from (forgetting compares against it)
    tasks: list[str] = field(default_factory=list)  # training tasks
    max_seq_len: int | None = None  # training context; evaluation fits prompts into it by default
    lora_r: int = 0  # LoRA rank; 0 for full fine-tuning
    lora_merged: bool = False  # LoRA weights merged into full weights
    adapter_only: bool = False  # the folder holds an adapter, not full weights
    seed: int | None = None  # the training seed (data order, initialisation); None in checkpoints from before it
    schema_version: int = SCHEMA_VERSION


@dataclass(kw_only=True)
class StageDone(_Schema):
    """`study_stage_done.json`, left in an evaluation directory by a study stage that finished. Version 1."""

    config: dict[str, Any]  # the exact stage settings; a changed stage is not done
    seconds: float = 0.0  # how long the stage took
    schema_version: int = SCHEMA_VERSION


@dataclass
class StageResult:
    """How one study stage ended in this invocation; an entry of `StudyState.stages`."""

    name: str  # e.g. train:manyicl, eval:base, report
    status: str  # done | skipped (already done) | failed | blocked
    seconds: float
    log: str | None = None  # the stage's log file, when it ran as a child process


@dataclass(kw_only=True)
class StudyState(_Schema):
    """A study's `state.json`: each stage's last result and the durations that feed the time estimate. Version 1."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> StageResult fields
    durations: dict[str, list[float]] = field(default_factory=dict)  # stage kind -> seconds of finished stages
    schema_version: int = SCHEMA_VERSION


def is_complete(run_dir: Path) -> bool:
    """Whether a training run directory holds a finished run (its manifest says `complete`)."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        return False
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        raise HarnessError(f"{path} cannot be read as JSON; the run folder looks damaged: move it away or choose "
                           "another --output-dir.") from None
    return isinstance(manifest, dict) and manifest.get("status") == "complete"
