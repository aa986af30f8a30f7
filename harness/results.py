"""The results schema: one `ResultRecord` per (model, task, shots, seed), stored as summary.jsonl in each
evaluation directory. The leaderboard, plots and study report read only these files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.runs import atomic_write_text

SCHEMA_VERSION = 1
SUMMARY_FILE = "summary.jsonl"


@dataclass(frozen=True)
class ResultRecord:
    """One score. Version 1."""

    model: str  # display name: the run directory's name, or the model's slug for a base model
    model_path: str  # what was loaded (folder or hub id); an adapter's folder for LoRA checkpoints
    base_model: str  # the base model's path; equals model_path for a base model (forgetting compares to it)
    method: str  # arm: base | zero-shot | few-shot | many-shot-last | manyicl | manyicl-full | dedicated
    task: str
    family: str  # classification | nli | qa | summarization | math
    role: str  # train (a task the arms train on) | probe (never trained on) | heldout (no arm trains on it)
    shots: str  # requested: "0", "5", ..., or "many"
    shots_min: int  # demonstrations actually used, over the documents
    shots_mean: float
    shots_max: int
    metric: str  # accuracy | exact_match_number | rouge_l
    value: float  # the metric, in [0, 1]
    stderr: float | None  # lm-eval's standard error over documents
    seed: int  # demonstration draw
    num_docs: int  # documents scored
    backend: str  # vllm | hf
    format: str  # chat | plain
    max_length: int  # context the prompts were fitted into
    created: str  # ISO time
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes a record unique within one evaluation directory."""
        return (self.model_path, self.task, self.shots, self.seed)

    @property
    def shots_order(self) -> float:
        """Sort key for shot settings: numbers in order, `many` last."""
        return float("inf") if self.shots == "many" else float(self.shots)


def read_records(paths: Iterable[Path]) -> list[ResultRecord]:
    """Every record in the summary.jsonl files at or under the given paths."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(path.rglob(SUMMARY_FILE))
        else:
            raise HarnessError(f"{path} does not exist; pass evaluation or study directories.")
    names = {f.name for f in dataclasses.fields(ResultRecord)}
    records = []
    for file in files:
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            if raw.get("schema_version") != SCHEMA_VERSION:
                raise HarnessError(f"{file}:{lineno}: schema_version {raw.get('schema_version')} is not "
                                   f"{SCHEMA_VERSION}; re-run the evaluation with this version.")
            records.append(ResultRecord(**{k: v for k, v in raw.items() if k in names}))
    return records


def write_records(path: Path, records: Iterable[ResultRecord]) -> None:
    """Write (replace) a summary file atomically."""
    atomic_write_text(path, "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))


def lm_eval_task_name(task: str, shots: str, seed: int) -> str:
    """The lm-eval task (and samples/ file) name of one (task, shots, seed) setting: written by evaluation, read by
    the paired statistics."""
    return f"harness_{task}_{shots}shot_s{seed}"
