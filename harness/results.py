"""The results schema: one `ResultRecord` per (model, task, shots, seed), stored as summary.jsonl in each
evaluation directory. The leaderboard, plots and study report read only these files (and the per-document
samples beside them)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from manyicl.harness.errors import HarnessError
from manyicl.harness.runs import atomic_write_text
from manyicl.harness.settings import shots_order

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 lines lack the version-2 fields, which then take their defaults
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
    # version 2
    train_seed: int | None = None  # the model's training seed (from its checkpoint); None for the base model
    draws: int = 1  # demonstration draws G (document blocks) of this setting
    draw_share: str = "1/1"  # the share i/n of the draw blocks this model scored (one share per training seed)
    top_share: float | None = None  # share of documents given the most frequent answer (multiple choice)
    majority_rate: float | None = None  # share of documents whose gold answer is the most frequent (multiple choice)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes a record unique within one evaluation directory."""
        return (self.model_path, self.task, self.shots, self.seed)

    @property
    def shots_order(self) -> float:
        """Sort key for shot settings: numbers in order, `many` last."""
        return shots_order(self.shots)


_TEXT = (str,)
_INT = (int,)
_NUMBER = (int, float)
# What each field holds in a version-1 line; a line that breaks this is skipped, not half-read.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": _TEXT, "model_path": _TEXT, "base_model": _TEXT, "method": _TEXT, "task": _TEXT, "family": _TEXT,
    "role": _TEXT, "shots": _TEXT, "shots_min": _INT, "shots_mean": _NUMBER, "shots_max": _INT, "metric": _TEXT,
    "value": _NUMBER, "stderr": (*_NUMBER, type(None)), "seed": _INT, "num_docs": _INT, "backend": _TEXT,
    "format": _TEXT, "max_length": _INT, "created": _TEXT, "schema_version": _INT,
}
# Version-2 fields: absent from version-1 lines, where they take their defaults.
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "train_seed": (int, type(None)), "draws": _INT, "draw_share": _TEXT, "top_share": (*_NUMBER, type(None)),
    "majority_rate": (*_NUMBER, type(None)),
}


def parse_record(line: str) -> ResultRecord:
    """One summary.jsonl line -> a record; ValueError says in a few words what is wrong with the line."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg}; a truncated write?)") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if raw.get("schema_version") not in READABLE_VERSIONS:
        raise ValueError(f"schema_version {raw.get('schema_version')!r}, not {SCHEMA_VERSION} (written by another "
                         "version; re-run that evaluation)")
    missing = [name for name in _FIELD_TYPES if name not in raw]
    if missing:
        raise ValueError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    present = {**_FIELD_TYPES, **{k: t for k, t in _OPTIONAL_TYPES.items() if k in raw}}
    for name, types in present.items():
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"field `{name}` is {value!r}, not a {' or '.join(t.__name__ for t in types)}")
    if not (raw["shots"] == "many" or raw["shots"].isdigit()):
        raise ValueError(f"field `shots` is {raw['shots']!r}, not a number or `many`")
    if not math.isfinite(raw["value"]):
        raise ValueError(f"field `value` is {raw['value']!r}, not a finite number")
    return ResultRecord(**{k: raw[k] for k in present})


def summary_files(paths: Iterable[Path]) -> list[Path]:
    """The summary.jsonl files at or under the given paths (a .jsonl file is taken as one)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            if path.suffix != ".jsonl":
                raise HarnessError(f"{path} is not a {SUMMARY_FILE} file; pass evaluation or study directories.")
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob(SUMMARY_FILE) if p.is_file())
        else:
            raise HarnessError(f"{path} does not exist; pass evaluation or study directories.")
    return files


def read_records(paths: Iterable[Path], strict: bool = False) -> list[ResultRecord]:
    """Every record in the summary.jsonl files at or under the given paths.

    A line that cannot be read (cut short by a crash, edited by hand, written by another schema version) is
    skipped with a warning naming the file and line, so one bad line does not hide a study's results; with
    `strict`, it is an error instead.
    """
    records = []
    for file in summary_files(paths):
        try:
            lines = file.read_bytes().splitlines()
        except OSError as err:
            raise HarnessError(f"{file} cannot be read ({err.strerror}); check its permissions.") from None
        for lineno, data in enumerate(lines, 1):
            if not data.strip():
                continue
            try:
                records.append(parse_record(data.decode("utf-8")))
            except (ValueError, UnicodeDecodeError) as err:
                why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
                if strict:
                    raise HarnessError(f"{file}:{lineno}: cannot read this result line: {why}.") from None
                log.warning("%s:%d: skipped a result line: %s.", file, lineno, why)
    return records


def write_records(path: Path, records: Iterable[ResultRecord]) -> None:
    """Write (replace) a summary file atomically."""
    atomic_write_text(path, "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))


def lm_eval_task_name(task: str, shots: str, seed: int) -> str:
    """The lm-eval task (and samples/ file) name of one (task, shots, seed) setting: written by evaluation, read by
    the paired statistics."""
    return f"harness_{task}_{shots}shot_s{seed}"
