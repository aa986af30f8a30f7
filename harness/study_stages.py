"""A study's stages: which `harness train` / `harness evaluate` runs it needs, how each runs as a child process,
and how a finished stage is recognised from its directory (so a killed study resumes)."""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manyicl.harness.errors import HarnessError
from manyicl.harness.processes import die_with_parent, stop_process_group
from manyicl.harness.runs import write_yaml
from manyicl.harness.schemas import STAGE_DONE_FILE, StageDone, is_complete
from manyicl.harness.settings import CURVE_DIR, DEFAULT_MAX_LENGTH, STUDY_DRAWS, StudyConfig, split_list


@dataclass
class Stage:
    """One step of a study, run as a child `harness` command over the settings file the study writes."""

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
    max_length = cfg.eval.get("max_length") or cfg.train.get("max_seq_len") or DEFAULT_MAX_LENGTH
    eval_common = {"draws": STUDY_DRAWS} | dict(cfg.eval) | {
        "tasks": cfg.tasks, "heldout": cfg.heldout, "probes": bool(cfg.probes), "probe_tasks": cfg.probes,
        "data_dir": cfg.data_dir, "max_length": max_length, "base_results": base_evals}
    shared_train = {k: v for k, v in cfg.train.items() if k != "seeds"}
    seeds = training_seeds(cfg)
    served_together = shares_one_server(cfg)
    adapters: list[tuple[str, Path]] = []  # (stage label, run directory) of the arms scored on the shared server
    for arm in cfg.arms:
        if arm == "base":
            stages.append(Stage("eval:base", "eval", arm, [], eval_common | {
                "model": cfg.model, "method": "base", "output_dir": base_evals}))
            continue
        for index, seed in enumerate(seeds or [None]):
            # Several training seeds: one run per seed, named `<arm>-seed<N>` (the report pairs arms by it).
            name = arm if seed is None else f"{arm}-seed{seed}"
            run_dir = root / "runs" / name
            train = shared_train | {"method": arm, "model": cfg.model, "tasks": cfg.tasks, "output_dir": str(run_dir),
                                    "data_dir": cfg.data_dir, "resume": True}
            if seed is not None:
                train["seed"] = seed
            label = arm if seed is None else f"{arm}:seed{seed}"
            stages.append(Stage(f"train:{label}", "train", arm, [], train))
            if served_together and arm != "dedicated":
                adapters.append((label, run_dir))
            else:
                # Several training seeds: each seed's model scores its own share of the draw blocks, so T seeds
                # cost one evaluation's documents, and arms are paired seed by seed on the same blocks.
                share = {"draw_share": f"{index + 1}/{len(seeds)}"} if seeds else {}
                stages.append(Stage(f"eval:{label}", "eval", arm, [f"train:{label}"], eval_common | share | {
                    "model": str(run_dir), "output_dir": str(root / "evals" / name)}))
            if arm != "dedicated":  # one model per task has no single curve; its tasks' models would each need one
                stages += _curve_stages(cfg, arm, label, name, run_dir, eval_common)
    if adapters:
        # One `harness evaluate --model RUN_A,RUN_B,...`: one vLLM server, each arm scored by its run's name into
        # evals/<name>/, the directory its own stage would have written.
        stages.append(Stage("eval:adapters", "eval", SHARED_ARMS, [f"train:{label}" for label, _ in adapters],
                            eval_common | {"model": ",".join(str(run) for _, run in adapters),
                                           "output_dir": str(root / "evals")}))
    stages.append(Stage("report", "report", "", []))
    return stages


SHARED_ARMS = "adapters"  # the `arm` of the stage that scores several arms on one server


def without_failed_arms(stage: Stage, failed: list[str]) -> Stage:
    """The shared-server stage for the arms whose training finished: one arm's failed training must not hold back
    the others' scores. A rerun (after the fix) plans the whole stage again, trains the missing arm and scores only
    what has no records yet. One arm left is scored on its own, into its own `evals/<arm>/`."""
    keep = [(need, run) for need, run in zip(stage.needs, split_list(stage.config["model"]), strict=True)
            if need not in failed]  # type: ignore[index]
    config = dict(stage.config or {}) | {"model": ",".join(run for _, run in keep)}
    if len(keep) == 1:
        config["output_dir"] = str(Path(config["output_dir"]) / Path(keep[0][1]).name)
    return dataclasses.replace(stage, needs=[need for need, _ in keep], config=config)


def shares_one_server(cfg: StudyConfig) -> bool:
    """Whether the study scores its arms' LoRA adapters from one vLLM server (`shared_server`; by default when
    it can), instead of starting a server per arm. `shared_server: true` where it cannot is an error."""
    ev, train = cfg.eval, cfg.train
    adapter_arms = [a for a in cfg.arms if a not in ("base", "dedicated")]
    reasons = [why for why, blocked in (
        ("eval.backend is not vllm", ev.get("backend") != "vllm"),
        ("eval.server_url names a server of your own", bool(ev.get("server_url"))),
        ("the arms are not LoRA adapters (train.lora_r is 0)", not train.get("lora_r")),
        ("the adapters are merged into full weights (set train.lora_merge: false)", train.get("lora_merge", True)),
        ("vLLM data parallelism is refused with adapters (eval.data_parallel_size)",
         int(ev.get("data_parallel_size", 1) or 1) > 1),
        ("fewer than two arms are adapters", len(adapter_arms) * max(len(training_seeds(cfg)), 1) < 2),
        ("several training seeds each score their own share of the draw blocks", len(training_seeds(cfg)) > 1),
    ) if blocked]
    if cfg.shared_server and reasons:
        raise HarnessError(f"The study sets shared_server: true, but {reasons[0]}; one server serves the LoRA "
                           "adapters of one base model scored through vLLM.")
    return cfg.shared_server is not False and not reasons


def _curve_stages(cfg: StudyConfig, arm: str, label: str, name: str, run_dir: Path,
                  eval_common: dict[str, Any]) -> list[Stage]:
    """One evaluation per learning-curve point (`train.curve_points`) on the training tasks, into `curves/` (kept
    out of `evals/`, so the leaderboard and the claims see only the finished models)."""
    common = eval_common | {"heldout": [], "probes": False, "shots": ["many"], "seeds": 1} | dict(cfg.curve_eval)
    stages = []
    for fraction in sorted(float(p) for p in cfg.train.get("curve_points") or []):
        model = run_dir if fraction >= 1 else run_dir / CURVE_DIR / f"{fraction:g}"
        stages.append(Stage(f"curve:{label}@{fraction:g}", "eval", arm, [f"train:{label}"], common | {
            # its own arm label (`manyicl@0.5`), so no reader that pools a study's records mixes it with the arm
            "model": str(model), "method": f"{arm}@{fraction:g}",
            "output_dir": str(cfg.directory / "curves" / f"{name}@{fraction:g}")}))
    return stages


def training_seeds(cfg: StudyConfig) -> list[int]:
    """`train.seeds`: train every arm once per seed (the report then shows the spread between training seeds).
    Empty when absent or a single seed, which keeps one run per arm under `runs/<arm>`."""
    seeds = cfg.train.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise HarnessError(f"Study `train.seeds` must be a list of distinct integers, not {seeds!r}.")
    if len(seeds) == 1:
        return []
    draws = cfg.eval.get("draws", STUDY_DRAWS)
    if isinstance(draws, int) and len(seeds) > draws:
        raise HarnessError(f"Study `train.seeds` lists {len(seeds)} seeds but `eval.draws` is {draws}; each seed "
                           "scores its own share of the draw blocks, so set eval.draws to at least the seeds.")
    return seeds


def stage_done(stage: Stage) -> bool:
    """Whether a train or eval stage's outputs are complete, read from its run or evaluation directory.
    (The report stage always runs: it is cheap and reflects whatever finished.)"""
    out = Path(stage.config["output_dir"])  # type: ignore[index]
    if stage.kind == "train":
        return is_complete(out)
    marker = out / STAGE_DONE_FILE
    return marker.exists() and StageDone.read(marker).config == stage.config


def mark_done(stage: Stage, seconds: float) -> None:
    """An evaluation stage leaves its exact settings behind, so a changed stage runs again."""
    StageDone(config=stage.config or {}, seconds=round(seconds, 1)).write(
        Path(stage.config["output_dir"]) / STAGE_DONE_FILE)  # type: ignore[index]


def _child_command(stage: Stage, config_path: Path) -> list[str]:
    return [sys.executable, "-m", "manyicl.harness.cli", stage.kind if stage.kind != "eval" else "evaluate",
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
            # SIGINT first: the child unwinds like Ctrl-C and stops what it started (its vLLM server).
            stop_process_group(proc, first_signal=signal.SIGINT, grace=30.0)
            raise
