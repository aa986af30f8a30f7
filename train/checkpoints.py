"""Resuming an interrupted run safely: checkpoints count as complete only once a marker written after all their
files says so, and a resumed run must keep the settings it was started with.

A checkpoint folder (`checkpoints/checkpoint-N`, written by transformers' `_save_checkpoint`) gets `complete.json`
last: the step and the size of every file in it, after every file has been flushed to disk. A kill or a full disk
mid-write leaves no marker, or files that no longer match it; such a folder is never resumed from. Older
checkpoints are deleted only after the newer one's marker exists, so a complete checkpoint always survives.
Nothing here imports torch or transformers: the trainer calls these from its callbacks and before `train()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from manyicl.harness.settings import default_learning_rate, effective_lora_alpha, rows_per_step, split_list

MARKER = "complete.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR-<global step>
SET_ASIDE_PREFIX = "incomplete-"  # an incomplete checkpoint, renamed so transformers' `checkpoint-*` globs skip it
DELETING_PREFIX = ".deleting-"  # an older checkpoint on its way out (renamed first, so a half-deleted one is no candidate)


def checkpoint_step(folder: Path) -> int | None:
    """The step of a `checkpoint-N` folder, None for any other name."""
    match = CHECKPOINT_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}")}


def write_marker(folder: Path, step: int) -> None:
    """Mark `folder` complete: flush every file to disk, then write `complete.json` (step, file sizes) atomically.

    Flushing first matters after a power loss: without it the marker could reach the disk before the data it
    vouches for."""
    files = _files(folder)
    if not files:
        raise ValueError(f"{folder} holds no files to mark complete")
    for rel in files:
        _fsync(folder / rel)
    for sub in {(folder / rel).parent for rel in files}:
        _fsync(sub)
    tmp = folder / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"step": step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MARKER)
    _fsync(folder)


def problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (a short phrase), or None when it is complete: its marker exists, names
    its step, and every file it lists is there with the size it had when the marker was written."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no completion marker"
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        step, files = data["step"], data["files"]
        if not isinstance(files, dict) or not files:
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MARKER} is unreadable"
    if step != checkpoint_step(folder):
        return f"its {MARKER} names step {step}"
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{rel} has {actual} bytes, not the {size} it was written with"
    return None


@dataclasses.dataclass
class ResumePlan:
    """Where a resumed run continues: the newest complete checkpoint (None: from step 0) and the checkpoints that
    are not complete, with why."""

    checkpoint: Path | None
    broken: list[tuple[Path, str]]

    @property
    def step(self) -> int:
        return (checkpoint_step(self.checkpoint) or 0) if self.checkpoint else 0

    def describe(self, checkpoints_dir: Path) -> str:
        """One sentence for the person resuming: which checkpoint, and which were skipped and why."""
        skipped = "; ".join(f"{p.name} ({why}), set aside as {aside_name(p).name}" for p, why in self.broken)
        if self.checkpoint is not None:
            text = f"Resuming from {self.checkpoint} (step {self.step})"
            return text + (f"; skipped {skipped}." if skipped else ".")
        if skipped:
            return f"No complete checkpoint in {checkpoints_dir}: skipped {skipped}; starting over from step 0."
        return f"No checkpoint in {checkpoints_dir} to resume from; starting over from step 0."


def plan_resume(checkpoints_dir: Path) -> ResumePlan:
    """The newest complete `checkpoint-N` under `checkpoints_dir`, and every incomplete one (newest first)."""
    found = sorted((p for p in checkpoints_dir.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None),
                   key=lambda p: checkpoint_step(p) or 0, reverse=True)
    chosen: Path | None = None
    broken = []
    for folder in found:
        why = problem(folder)
        if why is not None:
            broken.append((folder, why))
        elif chosen is None:
            chosen = folder
    return ResumePlan(chosen, broken)


def aside_name(folder: Path) -> Path:
    """Where `set_aside` moves `folder`: `incomplete-checkpoint-N`, or `-2`, `-3`, ... after it when taken."""
    target = folder.with_name(SET_ASIDE_PREFIX + folder.name)
    n = 2
    while target.exists():
        target = folder.with_name(f"{SET_ASIDE_PREFIX}{folder.name}-{n}")
        n += 1
    return target


def set_aside(folder: Path) -> Path:
    """Rename an incomplete checkpoint (see `aside_name`): kept for a look, out of the way of transformers and of
    the checkpoint the resumed run writes at that step."""
    target = aside_name(folder)
    os.replace(folder, target)
    return target


def rotate(checkpoints_dir: Path, keep: Path) -> list[Path]:
    """Delete every `checkpoint-N` but `keep` (call only once `keep` is marked complete); returns what went.
    Each is renamed before it is deleted, so a kill mid-delete leaves no half checkpoint under a resumable name."""
    for leftover in checkpoints_dir.glob(f"{DELETING_PREFIX}*"):  # a kill mid-delete left it; it would block a rename
        shutil.rmtree(leftover, ignore_errors=True)
    gone = []
    for folder in checkpoints_dir.glob("checkpoint-*"):
        if folder.is_dir() and checkpoint_step(folder) is not None and folder.name != keep.name:
            doomed = folder.with_name(DELETING_PREFIX + folder.name)
            os.replace(folder, doomed)
            gone.append(folder)
    for folder in gone:
        shutil.rmtree(folder.with_name(DELETING_PREFIX + folder.name), ignore_errors=True)
    return gone


def trim_log(log_path: Path, step: int) -> None:
    """Keep the training log's lines up to `step` (the steps a resumed run does not redo); the lines of steps
    after it, and a line a kill cut short, go, so every step is logged once. Rewritten atomically."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = log_path.with_name(f".{log_path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, log_path)


# --------------------------------------------------------------------------- the settings a resumed run keeps

# May differ between the interrupted run and its resumption: none of them changes which rows are trained, in
# which order, or the numbers computed on them. The rows per optimizer step (batch x grad-accum x processes) must
# stay the same (checked as `rows_per_step`), so these three may trade against each other, e.g. resuming a
# 1-process run on 2 processes. gradient_checkpointing recomputes activations (with the same RNG state) to save
# memory; accelerate_config, report_to and save_steps concern the machine, live logs and how often to save.
MAY_CHANGE = frozenset({"resume", "output_dir", "report_to", "save_steps", "batch_size", "grad_accum",
                        "num_processes", "accelerate_config", "gradient_checkpointing"})
ROWS_PER_STEP = "rows_per_step"
# How a setting is named to a person (the flag), where it differs from `--<name with dashes>`.
FLAGS = {"learning_rate": "--lr", "lora_merge": "--lora-merge/--no-lora-merge",
         ROWS_PER_STEP: "rows per optimizer step (batch x grad-accum x processes)"}


@dataclasses.dataclass(frozen=True)
class Change:
    """A setting whose value differs between the run directory's config.yaml and this command."""

    name: str
    old: Any
    new: Any

    @property
    def flag(self) -> str:
        return FLAGS.get(self.name, "--" + self.name.replace("_", "-"))

    def sentence(self) -> str:
        """`--method few-shot, not manyicl`."""
        return f"{self.flag} {_show(self.old)}, not {_show(self.new)}"


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value) or "none"
    return str(value)


def _path(value: Any) -> str | None:
    return str(Path(str(value)).expanduser().resolve()) if value not in (None, "") else None


def _task(value: str) -> str:
    # what parse_task_list does: a .yaml/.yml entry is a file (compared by absolute path), anything else a name
    return (_path(value) or value) if Path(value).suffix in {".yaml", ".yml"} else value


def _arms(config: Mapping[str, Any]) -> set[Any]:
    method = config.get("method")
    return {method, config.get("dedicated_method")} if method == "dedicated" else {method}


def _lora(config: Mapping[str, Any]) -> bool:
    return bool(config.get("lora_r")) or bool(config.get("adapter"))


def _relevant(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Settings that change nothing for this run are not compared (e.g. --shots of a ManyICL run)."""
    either = (old, new)
    if name == "dedicated_method":
        return any(c.get("method") == "dedicated" for c in either)
    if name == "shots":
        return any("few-shot" in _arms(c) for c in either)
    if name in {"lora_alpha", "lora_merge"}:
        return any(_lora(c) for c in either)
    if name == "eval_examples_per_task":
        return any(c.get("eval_steps") for c in either)
    return True


def _value(name: str, config: Mapping[str, Any], data_dir_env: str | None,
           resolve_format: Callable[[str], str]) -> Any:
    """A setting as it acts on the run: defaults filled in, paths absolute, `auto` resolved."""
    value = config.get(name)
    if name == "tasks":
        return [_task(t) for t in split_list(value)]
    if name == "data_dir":
        return _path(value or data_dir_env)
    if name == "format":
        return resolve_format(str(value))
    if name == "learning_rate":  # TrainConfig.lr: the default depends on LoRA
        return float(value) if value is not None else default_learning_rate(config.get("lora_r"))
    if name == "lora_alpha":
        return effective_lora_alpha(value, config.get("lora_r"))
    if name == "curve_points":
        return sorted(float(p) for p in split_list(value))
    if name == ROWS_PER_STEP:
        return rows_per_step(config)
    return value


def changed_setting(old: Mapping[str, Any], new: Mapping[str, Any], *, data_dir_env: str | None = None,
                    resolve_format: Callable[[str], str] = lambda f: f) -> Change | None:
    """The first setting (in `new`'s order) that differs between an interrupted run's config.yaml (`old`) and the
    settings it is resumed with (`new`: the TrainConfig as a dict, plus `model_path` and `adapter`, the model as
    resolved). None when they agree.

    The model is compared as resolved (`model_path`, `adapter`) where the old config recorded it, else as given;
    settings the old config lacks (written by an older harness) are not compared. `data_dir_env` fills in an
    unset data directory ($HARNESS_DATA_DIR); `resolve_format` turns `auto` into the format it means."""
    names = [n for n in new if n not in MAY_CHANGE and n not in {"model_path", "adapter"}] + [ROWS_PER_STEP]
    if "lora_r" in names and "learning_rate" in names:  # LoRA or not sets the default rate: name the cause first
        names.remove("lora_r")
        names.insert(names.index("learning_rate"), "lora_r")
    for name in names:
        if name == "model":
            by_path = "model_path" in old and "model_path" in new
            before = (old.get("model_path"), old.get("adapter")) if by_path else (_path(old.get("model")),)
            after = (new.get("model_path"), new.get("adapter")) if by_path else (_path(new.get("model")),)
            if before != after:
                return Change("model", " with adapter ".join(str(v) for v in before if v),
                              " with adapter ".join(str(v) for v in after if v))
            continue
        if (name != ROWS_PER_STEP and name not in old) or not _relevant(name, old, new):
            continue
        before, after = (_value(name, c, data_dir_env, resolve_format) for c in (old, new))
        if before != after:
            return Change(name, before, after)
    return None
