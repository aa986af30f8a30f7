"""`harness study`: train every arm, evaluate every model, and write the leaderboard, plots and REPORT.md.

The study only orchestrates: each stage is a `harness train` or `harness evaluate` run in a child process over a
config file it writes, with its output in a log. A stage is done when its run or evaluation directory says so,
so a killed study continues where it stopped, and a failed stage blocks only the stages that need it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.processes import sigterm_as_exit
from manyicl.harness.prompts import parse_shots
from manyicl.harness.report import write_outputs
from manyicl.harness.runs import write_yaml
from manyicl.harness.schemas import STATE_FILE, Provenance, StageResult, StudyManifest, StudyState
from manyicl.harness.settings import (
    ARMS,
    EvalConfig,
    StudyConfig,
    TrainConfig,
    check_settings,
    flag_name,
    read_yaml_mapping,
    split_list,
    to_dict,
)
from manyicl.harness.study_display import NullDisplay, estimate_left
from manyicl.harness.study_stages import (
    SHARED_ARMS,
    Stage,
    mark_done,
    plan_stages,
    run_stage_process,
    shares_one_server,
    stage_done,
    training_seeds,
    without_failed_arms,
)
from manyicl.tasks.registry import parse_task_list

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def study_presets() -> list[str]:
    """The study presets by name; other files there (a recipe sweep's grid, under `sweep:`) are not studies."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if "sweep" not in (yaml.safe_load(p.read_text()) or {}))


def load_study(config: str | Path | None, preset: str | None, overrides: dict[str, Any]) -> StudyConfig:
    """A preset, then a study YAML on top, then flags."""
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if preset not in study_presets():
            raise HarnessError(f"Unknown preset `{preset}`; choose one of {', '.join(study_presets())}.")
        data.update(check_settings(StudyConfig, read_yaml_mapping(path, "Preset"), lambda name: f"Preset {preset}: `{name}`"))
    source = f"Preset {preset}:" if preset else "The study"
    if config:
        path = Path(config)
        source = f"Study file {path}:"
        raw = read_yaml_mapping(path, "Study file")
        data.update(check_settings(StudyConfig, raw, lambda name: f"{source} `{name}`"))
    given = {k: v for k, v in overrides.items() if v is not None}  # the CLI passes every flag, unset ones as None
    if not data and not given:
        raise HarnessError("Give a study: --config study.yaml or --preset smoke|demo|paper.")
    data.update(check_settings(StudyConfig, given, flag_name))
    cfg = StudyConfig(**data)
    _validate(cfg, source)
    return cfg


def _validate(cfg: StudyConfig, source: str = "The study") -> None:
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise HarnessError(f"Unknown arm `{bad[0]}`; arms are {', '.join(ARMS)}.")
    _check_tasks(cfg, source)
    overlap = set(cfg.heldout) & set(cfg.tasks)
    if overlap:
        raise HarnessError(f"{', '.join(sorted(overlap))} cannot be both trained on and held out.")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    for key in cfg.train:
        if key == "seeds":  # the study's own: one training run per seed (study_stages.training_seeds)
            continue
        if key not in train_fields or key in {"method", "model", "tasks", "output_dir", "data_dir", "resume"}:
            raise HarnessError(f"Study `train.{key}` is not a shared training setting.")
    for key in cfg.curve_eval:
        if key not in eval_fields or key in {"model", "tasks", "output_dir", "data_dir", "method"}:
            raise HarnessError(f"Study `curve_eval.{key}` is not a shared evaluation setting.")
    for key in cfg.eval:
        if key not in eval_fields or key in {"model", "tasks", "heldout", "probes", "probe_tasks", "output_dir",
                                             "data_dir", "method", "base_results"}:
            raise HarnessError(f"Study `eval.{key}` is not a shared evaluation setting.")
    # Types and ranges, as `harness train` and `harness evaluate` would check them, before any stage runs.
    shared = {k: v for k, v in cfg.train.items() if k != "seeds"}
    train = TrainConfig(**check_settings(TrainConfig, shared, lambda name: f"{source} `train.{name}`"))
    for part in ("eval", "curve_eval"):
        EvalConfig(**check_settings(EvalConfig, getattr(cfg, part), lambda name, part=part: f"{source} `{part}.{name}`"))
    training_seeds(cfg)
    shares_one_server(cfg)  # `shared_server: true` where the arms cannot share a server is refused here
    if not train.budget_given:
        raise HarnessError("The study needs a matched budget: set train.max_steps and/or train.max_tokens.")
    parse_shots(split_list(cfg.eval.get("shots", ["0", "5", "many"])))


def _check_tasks(cfg: StudyConfig, source: str) -> None:
    """Every task the study names exists, and it trains on at least one that is not a probe: caught here, a
    misspelt task stops the study before its first stage, not inside it with a report and logs already written."""
    if not cfg.tasks:
        raise HarnessError(f"{source} `tasks` is empty; name at least one training task, like [sst2, rte] "
                           "(see `harness tasks list`).")
    for part in ("tasks", "heldout", "probes"):
        names = getattr(cfg, part)
        if not names:
            continue
        try:
            definitions = parse_task_list(names)
        except HarnessError as err:
            raise HarnessError(f"{source} `{part}`: {err}") from None
        probes = [t.name for t in definitions if t.probe]
        if part == "tasks" and probes:
            raise HarnessError(f"{source} `tasks`: {probes[0]} is a probe, never trained on; list it under "
                               "`probes` instead.")


# --------------------------------------------------------------------------- the command


def run_study(cfg: StudyConfig, display: Any = None) -> Path:
    """Run every stage not yet done; returns the study directory. `display` gets progress callbacks."""
    root = cfg.directory
    root.mkdir(parents=True, exist_ok=True)
    write_yaml(root / "study.yaml", to_dict(cfg))
    # A polite kill (SIGTERM) unwinds like Ctrl-C, so the running stage and its children are stopped too.
    with sigterm_as_exit():
        return _run_stages(cfg, root, display or NullDisplay())


def unfinished_stages(root: Path) -> dict[str, str]:
    """The stages of a study's last run that failed or were blocked by a failed one, with their status."""
    manifest = StudyManifest.read(root / "manifest.json")
    return {name: status for name, status in manifest.stages.items() if status in {"failed", "blocked"}}


def _run_stages(cfg: StudyConfig, root: Path, display: Any) -> Path:
    stages = plan_stages(cfg)
    state_path = root / STATE_FILE
    state = StudyState.read(state_path) if state_path.exists() else StudyState()
    results: dict[str, StageResult] = {}
    started = time.time()
    durations: dict[str, list[float]] = {k: list(v) for k, v in state.durations.items()}

    def save_state() -> None:
        StudyState(stages={k: dataclasses.asdict(v) for k, v in results.items()}, durations=durations).write(state_path)

    display.start(len(stages))
    for index, stage in enumerate(stages):
        display.stage(index, stage.name, estimate_left([s.kind for s in stages[index:]], durations),
                      time.time() - started)
        results[stage.name] = _run_one(stage, cfg, root, results, durations, display)
        if stage.kind != "report" and results[stage.name].status in {"done", "failed"}:
            save_state()
    save_state()
    StudyManifest(**Provenance.now(), name=cfg.name, wall_time_s=round(time.time() - started, 1),
                  stages={k: v.status for k, v in results.items()}).write(root / "manifest.json")
    display.finish(time.time() - started)
    return root


def _run_one(stage: Stage, cfg: StudyConfig, root: Path, results: dict[str, StageResult],
             durations: dict[str, list[float]], display: Any) -> StageResult:
    """Run one stage unless it is blocked by a failed one or already done; report it to the display."""
    failed_needs = [n for n in stage.needs if results.get(n) and results[n].status in {"failed", "blocked"}]
    left_out = ""
    if failed_needs and stage.arm == SHARED_ARMS and len(failed_needs) < len(stage.needs):
        left_out = f" (without the arms of {', '.join(failed_needs)}, which failed)"
        stage, failed_needs = without_failed_arms(stage, failed_needs), []
    if failed_needs:
        display.done(stage.name, "blocked")
        return StageResult(stage.name, "blocked", 0.0, results[failed_needs[0]].log)
    if stage.kind == "report":
        t0 = time.time()
        write_outputs(cfg, list(results.values()))
        display.done(stage.name, "done")
        return StageResult(stage.name, "done", time.time() - t0)
    if stage_done(stage):
        display.done(stage.name, "already done")
        return StageResult(stage.name, "skipped", 0.0)
    t0 = time.time()
    code = run_stage_process(stage, root, display.line)
    seconds = time.time() - t0
    log = str(root / "logs" / f"{stage.slug}.log")
    if code != 0:
        display.done(stage.name, f"FAILED (exit {code}); log: {log}")
        return StageResult(stage.name, "failed", seconds, log)
    if stage.kind == "eval":
        mark_done(stage, seconds)
    durations.setdefault(stage.kind, []).append(seconds)
    display.done(stage.name, f"done in {seconds:.0f} s{left_out}")
    return StageResult(stage.name, "done", seconds, log)
