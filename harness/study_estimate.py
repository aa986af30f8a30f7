"""What a study will do and how long it will take, before anything runs (`harness study --dry-run`): its stages,
the documents per task and shot setting, the seeds, and time and memory estimated from the measured throughput
constants its preset records (`throughput:`, each with where it came from)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from manyicl.harness.errors import HarnessError
from manyicl.harness.prompts import parse_shots
from manyicl.harness.settings import (
    DEFAULT_MAX_LENGTH,
    STUDY_DRAWS,
    StudyConfig,
    parse_share,
    rows_per_step,
    split_list,
)
from manyicl.harness.stats import t_quantile
from manyicl.harness.study_stages import SHARED_ARMS, Stage, plan_stages, training_seeds

GIB = 1024**3
# What `throughput:` may hold. Rates are per stage process; `source` says where the numbers were measured.
THROUGHPUT_KEYS = {
    "train_tokens_per_s": "training tokens per second of one run (rows x max_seq_len per step)",
    "eval_documents_per_s": "documents per second per shot kind: `0`, `k` (a number of shots), `many`",
    "stage_start_s": "seconds each child process spends before its work: {train: s, eval: s}",
    "peak_memory_gib": "measured peak memory of a training run (GiB); else computed from model_shape",
    "model_shape": "params_b, layers, hidden, vocab (and lora_params_m): to compute a training run's memory",
    "eval_prefix_s": "seconds to compute one demonstration draw's shared prefix per shot kind: {k: s, many: s} "
                     "(a draw's prefix is computed once for its block of documents)",
    "source": "where and when every constant above was measured (or how it was derived)",
}
# What `planned_variance:` holds: the primary claim's variance per unit, as a study's variance.json records it.
PLANNED_VARIANCE_KEYS = ("per_document", "per_draw", "per_seed", "effect", "source")


@dataclass
class StageEstimate:
    """One stage of the plan with its work and estimated seconds."""

    name: str
    kind: str
    seconds: float
    work: str  # what it does, in words: tokens to train, or documents to score
    documents: dict[str, int] = field(default_factory=dict)  # eval: "task @shots" -> documents x seeds


@dataclass
class StudyEstimate:
    stages: list[StageEstimate]
    documents: dict[str, int]  # task -> documents scored per (shots, seed)
    demonstration_seeds: int
    training_seeds: list[int]
    memory_gib: float | None
    memory_note: str
    source: str

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def _throughput(cfg: StudyConfig) -> dict[str, Any]:
    t = dict(cfg.throughput)
    unknown = sorted(set(t) - set(THROUGHPUT_KEYS))
    if unknown:
        raise HarnessError(f"Study `throughput.{unknown[0]}` is unknown; known: {', '.join(THROUGHPUT_KEYS)}.")
    for key in ("train_tokens_per_s", "eval_documents_per_s"):
        if key not in t:
            raise HarnessError(f"Study `{cfg.name}` has no `throughput.{key}`; record the measured constant in its "
                               "preset to estimate its time.")
    rates = t["eval_documents_per_s"]
    if not isinstance(rates, dict) or not {"0", "k", "many"} <= set(map(str, rates)):
        raise HarnessError(f"Study `{cfg.name}`: `throughput.eval_documents_per_s` needs rates for `0`, `k` and "
                           "`many`.")
    return t


def _shot_kind(shots: str) -> str:
    return shots if shots in {"0", "many"} else "k"


def documents_per_task(cfg: StudyConfig, tasks: list[str]) -> dict[str, int]:
    """Documents scored per task and setting: the test split (read from the data where it is at hand), capped by
    `eval.limit`. Where a task's data cannot be read here, the limit stands for it."""
    from manyicl.tasks.registry import load_examples, parse_task_list

    limit = cfg.eval.get("limit")
    out: dict[str, int] = {}
    for task in parse_task_list(tasks):
        try:
            size = len(load_examples(task, cfg.data_dir).test)
        except (HarnessError, OSError, ValueError):
            if limit is None:
                raise HarnessError(f"Cannot read {task.name}'s data to count its documents and `eval.limit` is "
                                   "not set; give --data-dir or set a limit.") from None
            size = limit
        out[task.name] = min(size, limit) if limit else size
    return out


def _eval_documents(cfg: StudyConfig, stage: Stage, docs: dict[str, int]) -> dict[str, int]:
    """(task @shots) -> documents x demonstration seeds that one evaluation stage scores."""
    ev = stage.config or {}
    seeds = int(ev.get("seeds", 1))
    limit = ev.get("limit")
    # a training seed's model scores its share (i/n) of the draw blocks, so about 1/n of the documents
    share = parse_share(ev.get("draw_share"), int(ev.get("draws", 1)))[1]
    docs = {task: -(-(min(n, limit) if limit else n) // share) for task, n in docs.items()}
    shots = parse_shots(split_list(ev.get("shots", ["0", "5", "many"])))
    probe_shots = parse_shots(split_list(ev.get("probe_shots", ["0"])))
    # A dedicated run holds one model per training task: each scores its task and every probe.
    probe_copies = len(cfg.tasks) if stage.arm == "dedicated" else 1
    # The shared-server stage scores several arms (`--model RUN_A,RUN_B`): every document once per arm.
    arms = len(split_list(ev.get("model"))) if stage.arm == SHARED_ARMS else 1
    tasks = list(ev.get("tasks", [])) + ([] if stage.arm == "dedicated" else list(ev.get("heldout", [])))
    out: dict[str, int] = {}
    for task in tasks:
        for s in shots:
            out[f"{task} @{s}"] = docs[task] * (1 if s == "0" else seeds) * arms
    for probe in ev.get("probe_tasks", []) if ev.get("probes") else []:
        for s in probe_shots:
            out[f"{probe} @{s}"] = docs[probe] * (1 if s == "0" else seeds) * probe_copies * arms
    return out


def _prefix_seconds(t: dict[str, Any], stage: Stage, per: dict[str, int]) -> float:
    """Each draw block's shared prefix, computed once per (task, k > 0 shots) for the blocks a stage scores."""
    prefix = {str(k): float(v) for k, v in (t.get("eval_prefix_s") or {}).items()}
    ev = stage.config or {}
    draws = int(ev.get("draws", 1))
    blocks = -(-draws // parse_share(ev.get("draw_share"), draws)[1]) * int(ev.get("seeds", 1))
    return sum(blocks * prefix.get(_shot_kind(key.split(" @")[1]), 0.0) for key in per if not key.endswith("@0"))


def _train_tokens(cfg: StudyConfig) -> int:
    t = cfg.train
    rows = rows_per_step(t)  # over all processes, as the trainer counts a step
    by_steps = t["max_steps"] * rows * t.get("max_seq_len", DEFAULT_MAX_LENGTH) if t.get("max_steps") else None
    budgets = [b for b in (by_steps, t.get("max_tokens")) if b]
    if not budgets:
        raise HarnessError(f"Study `{cfg.name}` has no token or step budget to estimate its training time from.")
    return int(min(budgets))


def memory(cfg: StudyConfig, t: dict[str, Any]) -> tuple[float | None, str]:
    """A training run's peak memory: the measured constant, else weights + LoRA/optimizer + checkpointed
    activations + logits from the model's shape (bf16 weights, fp32 logits and their gradient)."""
    if "peak_memory_gib" in t:
        return float(t["peak_memory_gib"]), "measured"
    shape = t.get("model_shape")
    if not shape:
        return None, "no memory constant recorded"
    params, layers, hidden, vocab = (float(shape[k]) for k in ("params_b", "layers", "hidden", "vocab"))
    train = cfg.train
    seq = float(train.get("max_seq_len", DEFAULT_MAX_LENGTH)) * float(train.get("batch_size", 1))
    weights = params * 1e9 * 2
    # full fine-tuning keeps fp32 Adam moments and master weights (12 bytes) and bf16 gradients (2) per parameter
    # LoRA: the adapter's weights, gradients and Adam moments in fp32 (16 bytes per adapter parameter)
    optimizer = float(shape.get("lora_params_m", 0)) * 1e6 * 16 if train.get("lora_r") else params * 1e9 * 14
    per_layer = seq * hidden * 2 * (1 if train.get("gradient_checkpointing") else 34)
    activations = layers * per_layer + (seq * hidden * 34 if train.get("gradient_checkpointing") else 0)
    logits = seq * vocab * 4 * 3  # fp32 logits, their softmax and their gradient
    total = (weights + optimizer + activations + logits) / GIB + 2.0  # + CUDA context and allocator slack
    return total, (f"computed: weights {weights / GIB:.0f} + optimizer {optimizer / GIB:.0f} + activations "
                   f"{activations / GIB:.1f} + logits {logits / GIB:.1f} + 2 GiB context")


def estimate_study(cfg: StudyConfig, documents: dict[str, int] | None = None) -> StudyEstimate:
    """The plan with every stage's work and estimated time, from the study's throughput constants. `documents`
    (task -> test documents) is read from the data when not given."""
    t = _throughput(cfg)
    rates = {str(k): float(v) for k, v in t["eval_documents_per_s"].items()}
    start = {"train": 0.0, "eval": 0.0} | {k: float(v) for k, v in (t.get("stage_start_s") or {}).items()}
    docs = documents if documents is not None else documents_per_task(cfg, [*cfg.tasks, *cfg.heldout, *cfg.probes])
    tokens = _train_tokens(cfg)
    stages: list[StageEstimate] = []
    for stage in plan_stages(cfg):
        if stage.kind == "train":
            runs = len(cfg.tasks) if stage.arm == "dedicated" else 1  # one model per task, each the same budget
            seconds = runs * (start["train"] + tokens / float(t["train_tokens_per_s"]))
            stages.append(StageEstimate(stage.name, "train", seconds, f"{runs} x {tokens:,} tokens"))
        elif stage.kind == "eval":
            per = _eval_documents(cfg, stage, docs)
            seconds = start["eval"] * (len(cfg.tasks) if stage.arm == "dedicated" else 1)
            seconds += sum(n / rates[_shot_kind(key.split(" @")[1])] for key, n in per.items())
            seconds += _prefix_seconds(t, stage, per)
            stages.append(StageEstimate(stage.name, "eval", seconds, f"{sum(per.values()):,} documents", per))
        else:
            stages.append(StageEstimate(stage.name, "report", 0.0, "leaderboard, plots, REPORT.md"))
    mem, note = memory(cfg, t)
    return StudyEstimate(stages=stages, documents=docs, demonstration_seeds=int(cfg.eval.get("seeds", 1)),
                         training_seeds=training_seeds(cfg) or [int(cfg.train.get("seed", 1234))],
                         memory_gib=mem, memory_note=note, source=str(t.get("source", "not recorded")).strip())


@dataclass
class PowerPlan:
    """The primary claim's planned precision: variance per unit from the last study in the same directory (its
    variance.json), else the preset's `planned_variance:`, scaled to this study's documents, draws and seeds."""

    per_document: float
    per_draw: float
    per_seed: float
    documents: int
    draws: int  # draw blocks over the training tasks
    seeds: int
    tasks: int
    effect: float  # the effect (points) the power is stated for
    source: str

    @property
    def se(self) -> float:
        """Standard error of the primary difference, metric units."""
        return math.sqrt(self.per_document / self.documents + self.per_draw / max(self.draws, 1)
                         + self.per_seed / max(self.seeds, 1))

    @property
    def df(self) -> float:
        """Satterthwaite's degrees of freedom, as `stats.components_interval` will take them: documents and draws
        (clusters within task and seed) have the blocks less their strata; a seed variance above zero is read
        from the spread of T seed estimates, each carrying its share's documents and draws, on T - 1."""
        seed = self.per_seed / max(self.seeds, 1)
        rest = self.per_document / self.documents + self.per_draw / max(self.draws, 1)
        strata = self.tasks * self.seeds
        rest_df = max((self.draws if self.draws > self.tasks else self.documents) - strata, 1)
        if self.seeds < 2 or seed <= 0:
            return float(rest_df)
        spread = seed + rest
        return spread**2 / (2 * rest**2 / rest_df + spread**2 / (self.seeds - 1))

    @property
    def half_width(self) -> float:
        """The expected 95% half-width, metric units: t at the planned degrees of freedom times the SE."""
        return t_quantile(0.95, self.df) * self.se

    @property
    def power(self) -> float:
        """Approximate power of the two-sided 5% test at `effect` (the t quantile in place of 1.96)."""
        return NormalDist().cdf(abs(self.effect) / 100 / self.se - t_quantile(0.95, self.df)) if self.se > 0 else 1.0


def power_plan(cfg: StudyConfig, docs: dict[str, int]) -> PowerPlan | None:
    """The planned variance components and the power they give this study's design; None when neither a previous
    study nor the preset records them."""
    import json

    from manyicl.harness.claims import PRIMARY_SHOTS

    planned = dict(cfg.planned_variance)
    unknown = sorted(set(planned) - set(PLANNED_VARIANCE_KEYS))
    if unknown:
        raise HarnessError(f"Study `planned_variance.{unknown[0]}` is unknown; known: {', '.join(PLANNED_VARIANCE_KEYS)}.")
    measured = cfg.directory / "variance.json"
    source = str(planned.get("source", "the preset")).strip()
    if measured.exists():
        try:
            last = json.loads(measured.read_text(encoding="utf-8"))
            planned |= {k: last[k] for k in ("per_document", "per_draw", "per_seed")}
            source = f"measured by the last study in {cfg.directory} (variance.json)"
        except (OSError, ValueError, KeyError):
            pass
    if not {"per_document", "per_draw", "per_seed"} <= set(planned):
        return None
    shots = split_list(cfg.eval.get("shots", ["0", "5", "many"]))
    draws = int(cfg.eval.get("draws", STUDY_DRAWS)) if PRIMARY_SHOTS in shots else 1
    seeds = max(len(training_seeds(cfg)), 1)
    return PowerPlan(float(planned["per_document"]), float(planned["per_draw"]), float(planned["per_seed"]),
                     sum(docs[t] for t in docs if t in set(cfg.tasks)), draws * len(cfg.tasks), seeds,
                     len(cfg.tasks), float(planned.get("effect", 5.0)), source)


def _fmt(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.1f} min"


def dry_run_text(cfg: StudyConfig, est: StudyEstimate) -> str:
    """The plan as plain text: what `harness study --dry-run` prints. Nothing is written."""
    shots = split_list(cfg.eval.get("shots", ["0", "5", "many"]))
    lines = [f"Study `{cfg.name}` (dry run: nothing is written) -> {cfg.directory}",
             f"Model: {cfg.model or 'SmolLM2-135M-Instruct (default)'}; arms: {', '.join(cfg.arms)}",
             f"Training tasks: {', '.join(cfg.tasks)}; held out: {', '.join(cfg.heldout) or 'none'}; "
             f"probes: {', '.join(cfg.probes) or 'none'}",
             f"Shots: {', '.join(shots)} (probes at {', '.join(split_list(cfg.eval.get('probe_shots', ['0'])))}); "
             f"demonstration draws: {cfg.eval.get('draws', STUDY_DRAWS)} per (task, k > 0 shots), each scoring its "
             f"block of documents; demonstration seeds: {est.demonstration_seeds} for k > 0, 1 at 0 shots; training seeds: "
             f"{', '.join(map(str, est.training_seeds))}"
             + (" (each seed's models score their own share of the draw blocks)" if len(est.training_seeds) > 1
                else ""),
             "Documents per task and setting (per seed): "
             + ", ".join(f"{task} {n}" for task, n in est.documents.items()),
             "",
             f"{'stage':<34} {'work':<28} {'estimate':>10}"]
    for s in est.stages:
        lines.append(f"{s.name:<34} {s.work:<28} {_fmt(s.seconds):>10}")
    by_kind = {k: sum(s.seconds for s in est.stages if s.kind == k) for k in ("train", "eval")}
    lines += ["", f"Estimated total: {_fmt(est.seconds)} (training {_fmt(by_kind['train'])}, evaluation "
              f"{_fmt(by_kind['eval'])})" + (f"; preset says {cfg.expected_minutes:g} min on {cfg.hardware}"
                                             if cfg.expected_minutes else ""),
              (f"Peak memory of a training run: {est.memory_gib:.1f} GiB ({est.memory_note})"
               if est.memory_gib is not None else f"Peak memory: {est.memory_note}"),
              f"Constants: {est.source}"]
    plan = power_plan(cfg, est.documents)
    if plan is None:
        lines += ["Power: no variance components recorded (run the study once, or set `planned_variance:`)."]
    else:
        lines += [
            f"Planned variance of the primary difference, per unit ({plan.source}): document {plan.per_document:.4f},"
            f" draw {plan.per_draw:.4f}, training seed {plan.per_seed:.4f}",
            f"With {plan.documents} paired documents, {plan.draws} draw blocks and {plan.seeds} training seed(s): "
            f"standard error {100 * plan.se:.2f} points, about {plan.df:.0f} degrees of freedom, 95% half-width "
            f"about ±{100 * plan.half_width:.1f}; power "
            f"{100 * plan.power:.0f}% for a {plan.effect:g}-point effect"
            + (" (80% wanted)" if plan.power < 0.8 else "")]
    return "\n".join(lines)
