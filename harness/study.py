"""`harness study`: train every arm, evaluate every model, and write the leaderboard, plots and REPORT.md.

The study only orchestrates: each stage is a `harness train` or `harness evaluate` run in a child process over a
config file it writes, with its output in a log. A stage is done when its run or evaluation directory says so,
so a killed study continues where it stopped, and a failed stage blocks only the stages that need it.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import TrainConfig, setting, split_list, to_dict
from harness.errors import HarnessError
from harness.evaluate import EvalConfig, parse_shots
from harness.runs import base_manifest, read_json, results_dir, write_json, write_yaml
from harness.serve import die_with_parent

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
ARMS = ("base", "zero-shot", "few-shot", "many-shot-last", "manyicl", "manyicl-full", "dedicated")


@dataclass
class StudyConfig:
    """One study: model, tasks, arms, matched budgets, evaluation settings."""

    name: str = setting("study", "the study's name (its default directory is results/studies/<name>)")
    description: str = setting("", "what this study is for, shown in REPORT.md")
    model: str | None = setting(None, "base model for every arm; default SmolLM2-135M-Instruct")
    tasks: list[str] = setting(["sst2", "rte"], "training tasks (the mixture)")
    heldout: list[str] = setting([], "tasks no arm trains on: unseen-task generalisation")
    probes: list[str] = setting(["arc_easy", "piqa"], "forgetting probes, never trained on")
    arms: list[str] = setting(list(ARMS[:5]) + ["dedicated"], "arms to compare")
    train: dict[str, Any] = setting({}, "TrainConfig settings shared by every arm (budget, max_seq_len, lr, ...)")
    eval: dict[str, Any] = setting({}, "EvalConfig settings shared by every evaluation (shots, limit, seeds, ...)")
    output_dir: str | None = setting(None, "study directory; default results/studies/<name>")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    expected_minutes: float | None = setting(None, "how long the study should take on its reference hardware")
    hardware: str = setting("", "the hardware the preset is sized for")

    def __post_init__(self):
        for name in ("tasks", "heldout", "probes", "arms"):
            setattr(self, name, split_list(getattr(self, name)))

    @property
    def directory(self) -> Path:
        return Path(self.output_dir) if self.output_dir else results_dir() / "studies" / self.name


def load_study(config: str | Path | None, preset: str | None, overrides: dict[str, Any]) -> StudyConfig:
    """A preset, then a study YAML on top, then flags."""
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise HarnessError(f"Unknown preset `{preset}`; choose one of {known}.")
        data.update(yaml.safe_load(path.read_text()))
    if config:
        path = Path(config)
        if not path.exists():
            raise HarnessError(f"Study file {path} does not exist; check the path.")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise HarnessError(f"Study file {path} must be a mapping of settings.")
        data.update(raw)
    given = {k: v for k, v in overrides.items() if v is not None}  # the CLI passes every flag, unset ones as None
    if not data and not given:
        raise HarnessError("Give a study: --config study.yaml or --preset smoke|demo|paper.")
    data.update(given)
    names = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise HarnessError(f"Unknown study setting `{unknown[0]}`; known: {', '.join(sorted(names))}.")
    cfg = StudyConfig(**data)
    _validate(cfg)
    return cfg


def _validate(cfg: StudyConfig) -> None:
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise HarnessError(f"Unknown arm `{bad[0]}`; arms are {', '.join(ARMS)}.")
    overlap = set(cfg.heldout) & set(cfg.tasks)
    if overlap:
        raise HarnessError(f"{', '.join(sorted(overlap))} cannot be both trained on and held out.")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    for key in cfg.train:
        if key not in train_fields or key in {"method", "model", "tasks", "output_dir", "data_dir", "resume"}:
            raise HarnessError(f"Study `train.{key}` is not a shared training setting.")
    for key in cfg.eval:
        if key not in eval_fields or key in {"model", "tasks", "heldout", "probes", "probe_tasks", "output_dir",
                                             "data_dir", "method", "base_results"}:
            raise HarnessError(f"Study `eval.{key}` is not a shared evaluation setting.")
    train = TrainConfig(**cfg.train)
    if not train.budget_given:
        raise HarnessError("The study needs a matched budget: set train.max_steps and/or train.max_tokens.")
    parse_shots(split_list(cfg.eval.get("shots", ["0", "5", "many"])))


# --------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str  # e.g. train:manyicl, eval:base, report
    kind: str  # train | eval | report
    arm: str
    needs: list[str]
    config: dict[str, Any] | None = None  # the settings file for the child process

    @property
    def slug(self) -> str:
        return self.name.replace(":", "-")


def plan_stages(cfg: StudyConfig) -> list[Stage]:
    """Base evaluation first, then each arm's training and evaluation, then the report."""
    root = cfg.directory
    stages: list[Stage] = []
    base_evals = str(root / "evals" / "base")
    # Every model is scored in the context it was trained in, the base model included, so probes compare.
    max_length = cfg.eval.get("max_length") or cfg.train.get("max_seq_len") or TrainConfig().max_seq_len
    eval_common = dict(cfg.eval) | {"tasks": cfg.tasks, "heldout": cfg.heldout, "probes": True,
                                    "probe_tasks": cfg.probes, "data_dir": cfg.data_dir, "max_length": max_length,
                                    "base_results": base_evals}
    for arm in cfg.arms:
        if arm == "base":
            stages.append(Stage("eval:base", "eval", arm, [], eval_common | {
                "model": cfg.model, "method": "base", "output_dir": base_evals}))
            continue
        run_dir = root / "runs" / arm
        train = dict(cfg.train) | {"method": arm, "model": cfg.model, "tasks": cfg.tasks, "output_dir": str(run_dir),
                                   "data_dir": cfg.data_dir, "resume": True}
        stages.append(Stage(f"train:{arm}", "train", arm, [], train))
        stages.append(Stage(f"eval:{arm}", "eval", arm, [f"train:{arm}"], eval_common | {
            "model": str(run_dir), "output_dir": str(root / "evals" / arm)}))
    stages.append(Stage("report", "report", "", []))
    return stages


def stage_done(stage: Stage) -> bool:
    """Whether a train or eval stage's outputs are complete, read from its run or evaluation directory.
    (The report stage always runs: it is cheap and reflects whatever finished.)"""
    out = Path(stage.config["output_dir"])  # type: ignore[index]
    if stage.kind == "train":
        manifest = out / "manifest.json"
        return manifest.exists() and read_json(manifest).get("status") == "complete"
    marker = out / "study_stage_done.json"
    return marker.exists() and read_json(marker).get("config") == stage.config


def _child_command(stage: Stage, config_path: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", stage.kind if stage.kind != "eval" else "evaluate",
            "--config", str(config_path)]


def run_stage_process(stage: Stage, root: Path, on_line: Callable[[str], None]) -> int:
    """Run one train/eval stage as a child `harness` process; its output goes to logs/<stage>.log."""
    config_path = root / "stages" / f"{stage.slug}.yaml"
    write_yaml(config_path, stage.config)
    log_path = root / "logs" / f"{stage.slug}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120"}
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(_child_command(stage, config_path))}\n".encode())
        log.flush()
        # Its own session (so stopping it stops what it started, a vLLM server included), and the kernel
        # ends it if the study dies.
        proc = subprocess.Popen(_child_command(stage, config_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, preexec_fn=die_with_parent())
        try:
            assert proc.stdout is not None
            buffer = b""
            while True:
                # Wait in short slices: a signal (Ctrl-C, SIGTERM) may land on another thread (the display's),
                # and Python only runs its handler once this thread is back in the interpreter.
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if not ready:
                    continue
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                buffer = (buffer + chunk)[-4096:]
                # tqdm redraws with \r: the newest fragment is the stage's own progress line.
                text = buffer.decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()
                if text:
                    on_line(text[-1])
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    """Stop a child and everything it started (a vLLM server included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- the command


@dataclass
class StageResult:
    name: str
    status: str  # done | skipped (already done) | failed | blocked
    seconds: float
    log: str | None = None


def run_study(cfg: StudyConfig, display: Any = None) -> Path:
    """Run every stage not yet done; returns the study directory. `display` gets progress callbacks."""
    from harness.report import write_outputs

    root = cfg.directory
    root.mkdir(parents=True, exist_ok=True)
    write_yaml(root / "study.yaml", to_dict(cfg))
    if threading.current_thread() is threading.main_thread():
        # A polite kill (SIGTERM) unwinds like Ctrl-C, so the running stage and its children are stopped too.
        signal.signal(signal.SIGTERM, _raise_exit)
    stages = plan_stages(cfg)
    state_path = root / "state.json"
    state = read_json(state_path) if state_path.exists() else {"stages": {}}
    results: dict[str, StageResult] = {}
    started = time.time()
    durations: dict[str, list[float]] = {k: list(v) for k, v in (state.get("durations") or {}).items()}

    def save_state() -> None:
        write_json(state_path, {"stages": {k: dataclasses.asdict(v) for k, v in results.items()},
                                "durations": durations})

    display = display or _NullDisplay()
    display.start(len(stages))
    for index, stage in enumerate(stages):
        display.stage(index, stage.name, _estimate(stages[index:], durations), time.time() - started)
        failed_needs = [n for n in stage.needs if results.get(n) and results[n].status in {"failed", "blocked"}]
        if failed_needs:
            results[stage.name] = StageResult(stage.name, "blocked", 0.0, results[failed_needs[0]].log)
            display.done(stage.name, "blocked")
            continue
        if stage.kind == "report":
            t0 = time.time()
            write_outputs(cfg, list(results.values()))
            results[stage.name] = StageResult(stage.name, "done", time.time() - t0)
            display.done(stage.name, "done")
            continue
        if stage_done(stage):
            results[stage.name] = StageResult(stage.name, "skipped", 0.0)
            display.done(stage.name, "already done")
            continue
        t0 = time.time()
        code = run_stage_process(stage, root, display.line)
        seconds = time.time() - t0
        log = str(root / "logs" / f"{stage.slug}.log")
        if code == 0:
            if stage.kind == "eval":
                write_json(Path(stage.config["output_dir"]) / "study_stage_done.json",  # type: ignore[index]
                           {"config": stage.config, "seconds": round(seconds, 1)})
            results[stage.name] = StageResult(stage.name, "done", seconds, log)
            durations.setdefault(stage.kind, []).append(seconds)
            display.done(stage.name, f"done in {seconds:.0f} s")
        else:
            results[stage.name] = StageResult(stage.name, "failed", seconds, log)
            display.done(stage.name, f"FAILED (exit {code}); log: {log}")
        save_state()
    save_state()
    write_json(root / "manifest.json", base_manifest() | {
        "kind": "study", "name": cfg.name, "wall_time_s": round(time.time() - started, 1),
        "stages": {k: v.status for k, v in results.items()}})
    display.finish(time.time() - started)
    return root


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _estimate(remaining: list[Stage], durations: dict[str, list[float]]) -> float | None:
    """Seconds left: the mean duration of finished stages of each kind, times how many of that kind remain."""
    known = [d for items in durations.values() for d in items]
    if not known:
        return None
    total = 0.0
    for stage in remaining:
        if stage.kind == "report":
            continue
        items = durations.get(stage.kind) or known
        total += sum(items) / len(items)
    return total


class _NullDisplay:
    def start(self, total: int) -> None: ...
    def stage(self, index: int, name: str, eta: float | None, elapsed: float) -> None: ...
    def line(self, text: str) -> None: ...
    def done(self, name: str, status: str) -> None: ...
    def finish(self, elapsed: float) -> None: ...


class RichDisplay:
    """One overall line (stage i of n, elapsed, estimate) above the running stage's own progress line."""

    def __init__(self, console):
        from rich.live import Live

        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=True)
        self.total = 0
        self.index = 0
        self.name = ""
        self.eta: float | None = None
        self.started = time.time()
        self.last = ""

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        elapsed = time.time() - self.started
        eta = "estimating…" if self.eta is None else f"~{_fmt(self.eta)} left"
        head = Text.assemble((f"Stage {self.index + 1} of {self.total}: ", "bold"), (self.name, "bold cyan"),
                             f"   elapsed {_fmt(elapsed)}   {eta}")
        return Group(head, ProgressBar(total=self.total, completed=self.index, width=60),
                     Text(self.last[-150:], style="dim"))

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.time()
        self.live.start()

    def stage(self, index: int, name: str, eta: float | None, elapsed: float) -> None:
        self.index, self.name, self.eta, self.last = index, name, eta, ""
        self.live.update(self._render())

    def line(self, text: str) -> None:
        self.last = text
        self.live.update(self._render())

    def done(self, name: str, status: str) -> None:
        style = "red" if "FAILED" in status or status == "blocked" else "green"
        self.live.console.print(f"[{style}]●[/{style}] {name}: {status}")

    def finish(self, elapsed: float) -> None:
        self.live.stop()
        self.console.print(f"Study finished in {_fmt(elapsed)}.")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
