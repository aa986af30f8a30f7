"""Evaluation as one story: plan what to score (tasks, roles, shots, seeds), score what is not done yet through
lm-eval, record one summary record per (model, task, shots, seed); then the base model's probe scores for
forgetting, and dedicated runs (one model per task). Prompt fitting lives in harness/prompts.py, the lm-eval
call in harness/lm_eval_bridge.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from manyicl.harness import launch
from manyicl.harness.errors import HarnessError
from manyicl.harness.lm_eval_bridge import (
    PREFIX_CACHE_KEY,
    choose_backend,
    connect_external_server,
    lm_eval_dtype,
    run_lm_eval,
    write_lm_eval_readme,
    write_lm_eval_task,
)
from manyicl.harness.models import ModelUnderTest, check_context, describe_model, load_tokenizer
from manyicl.harness.prompts import PromptSet, build_prompts, parse_shots
from manyicl.harness.results import SUMMARY_FILE, ResultRecord, read_records, write_records
from manyicl.harness.runs import (
    atomic_write_text,
    check_output_folder,
    new_run_dir,
    results_dir,
    utc_stamp,
    write_json,
    write_yaml,
)
from manyicl.harness.schemas import MANIFEST_FILE, EvalManifest, Provenance, TrainManifest
from manyicl.harness.settings import DEFAULT_MAX_LENGTH, METRIC_KEYS, EvalConfig, check_ranges, to_dict
from manyicl.tasks.registry import TaskData, TaskDef, load_examples, parse_task_list, resolve_data_dir
from manyicl.train.sequences import Renderer, resolve_format

log = logging.getLogger(__name__)
# Settings that change the numbers: a re-run into the same directory must keep them.
_PINNED = ("limit", "max_length", "format", "dtype", "data_dir", "draws", "draw_share", "split")
# (task, role, shots): one entry of what to score; each is scored at every seed.
PlanEntry = tuple[TaskDef, str, str]


def context_length(cfg: EvalConfig, mut: ModelUnderTest) -> int:
    """The context prompts are fitted into: --max-length, else the checkpoint's max_seq_len, else the default."""
    return cfg.max_length or mut.max_seq_len or DEFAULT_MAX_LENGTH


def requested_format(cfg: EvalConfig, mut: ModelUnderTest) -> str:
    """--format, else the format the checkpoint was trained in, else auto (chat when there is a template)."""
    return cfg.format if cfg.format != "auto" else (mut.format or "auto")


# --------------------------------------------------------------------------- plan


def _plan(cfg: EvalConfig, mut: ModelUnderTest) -> list[PlanEntry]:
    """(task, role, shots) for everything asked, probes included when on."""
    shots = parse_shots(cfg.shots)
    probe_shots = parse_shots(cfg.probe_shots, "--probe-shots")
    plan: list[PlanEntry] = []
    tasks = parse_task_list(cfg.tasks) if cfg.tasks else []
    held = parse_task_list(cfg.heldout) if cfg.heldout else []
    heldout = {t.name for t in held}
    listed_names = {t.name for t in tasks}
    for task in tasks + [t for t in held if t.name not in listed_names]:
        role = "probe" if task.probe else ("heldout" if task.name in heldout else "train")
        plan += [(task, role, s) for s in (probe_shots if task.probe else shots)]
    probes_on = mut.is_finetuned if cfg.probes is None else cfg.probes
    if probes_on:
        listed = {t.name for t, _, _ in plan}
        for probe in parse_task_list(cfg.probe_tasks):
            if not probe.probe:
                raise HarnessError(f"{probe.name} is not a probe; list only probes in --probe-tasks.")
            if probe.name not in listed:
                plan += [(probe, "probe", s) for s in probe_shots]
    if not plan:
        raise HarnessError("Nothing to evaluate; pass --tasks and/or --probes.")
    return plan



def run_evaluation(cfg: EvalConfig) -> Path:
    """Evaluate one model; returns the evaluation directory. Finished (task, shots, seed) entries are skipped."""
    check_ranges(cfg)  # the fields' own ranges and choices (the CLI checked them already; a library call has not)
    if launch.world_size() > 1:  # N copies of this would each write the same evaluation directory
        raise HarnessError(f"harness evaluate is running as one of {launch.world_size()} launched processes; run it "
                           "as one process with --num-processes N, and it launches its N scorers itself.")
    dedicated = _dedicated_models(cfg.model)
    if dedicated and cfg.server_url:
        raise HarnessError(f"{cfg.model} is a dedicated run with one model per task, and --server-url serves one "
                           "model; evaluate the per-task models one by one, each with its served name.")
    if dedicated:
        return _evaluate_dedicated(cfg, dedicated)
    mut = describe_model(cfg.model, cfg.method)
    plan = _plan(cfg, mut)
    backend, backend_reason = choose_backend(cfg, {task.kind for task, _, _ in plan})
    if cfg.server_url:
        # Reachable and serving the model, checked before anything is written; the name found is recorded.
        server = connect_external_server(cfg, mut, context_length(cfg, mut))
        cfg = dataclasses.replace(cfg, server_url=server.base_url, served_model=server.model_name)
    out = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("evals", mut.display_name, "eval")
    check_output_folder(out)
    tokenizer = load_tokenizer(mut.model)
    fmt = resolve_format(tokenizer, requested_format(cfg, mut))
    max_length = context_length(cfg, mut)
    check_context(mut.model, max_length, "--max-length")
    resolved = _resolved_settings(cfg, mut, fmt, max_length)
    _check_pinned(out, resolved)

    summary_path = out / SUMMARY_FILE
    records = read_records([summary_path]) if summary_path.exists() else []
    todo = _not_done(cfg, mut, plan, records)
    renderer = Renderer(tokenizer, fmt)
    # Every prompt is fitted before anything is written: a setting that cannot be built (k shots that do not fit)
    # is refused with the output folder untouched.
    prompts = [(build_prompts(_split(load_examples(task, cfg.data_dir), cfg.split), renderer, shots, seed,
                              max_length, cfg.limit, cfg.draws, cfg.share), role)
               for task, role, shots, seed in todo]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").exists():
        # The first call's settings pin the directory (see _check_pinned); later calls are listed in the manifest.
        write_yaml(out / "config.yaml", resolved)

    timing: dict[str, Any] = {}
    if todo:
        new, timing = _score(prompts, cfg, mut, renderer, backend, max_length, out)
        records += new
        write_records(summary_path, records)  # after every batch, so an interrupted run keeps what it finished
    _record_manifest(out, cfg, mut, backend, backend_reason, timing)
    if any(role == "probe" for _, role, _ in plan) and mut.is_finetuned:
        _base_probe_records(cfg, mut, plan, out)
    write_lm_eval_readme(out, mut, max_length)
    return out


def _split(data: TaskData, split: str) -> TaskData:
    """The task's data with the documents to score in `test`: its validation split when asked (probes have none)."""
    if split == "test":
        return data
    if not data.validation:
        raise HarnessError(f"Task {data.task.name} has no validation split (probes and held-out tasks are never "
                           "trained on, so none is carved); score it with --split test.")
    return dataclasses.replace(data, test=data.validation)


def _resolved_settings(cfg: EvalConfig, mut: ModelUnderTest, fmt: str, max_length: int) -> dict[str, Any]:
    """The settings as they were applied, defaults resolved: what config.yaml holds."""
    data_dir = resolve_data_dir(cfg.data_dir)
    return to_dict(cfg) | {"format": fmt, "max_length": max_length, "dtype": lm_eval_dtype(cfg),
                           "model_path": mut.model.path, "adapter": mut.model.adapter, "method": mut.method,
                           "data_dir": str(data_dir) if data_dir else None}


def _not_done(cfg: EvalConfig, mut: ModelUnderTest, plan: list[PlanEntry],
              existing: list[ResultRecord]) -> list[tuple[TaskDef, str, str, int]]:
    """(task, role, shots, seed) for every planned score without a record yet."""
    done = {r.key for r in existing}
    model_key = mut.model.adapter or mut.model.path
    return [(t, role, s, seed) for t, role, s in plan for seed in demonstration_seeds(cfg, s)
            if (model_key, t.name, s, seed) not in done]


def demonstration_seeds(cfg: EvalConfig, shots: str) -> list[int]:
    """The demonstration draws scored at one shot setting: `--seeds` of them for k > 0, one at 0 shots, where
    there are no demonstrations to draw and every seed would score the same prompts again."""
    return [cfg.seed] if shots == "0" else [cfg.seed + i for i in range(cfg.seeds)]


# --------------------------------------------------------------------------- score


def _score(todo: list[tuple[PromptSet, str]], cfg: EvalConfig, mut: ModelUnderTest, renderer: Renderer,
           backend: str, max_length: int, out: Path) -> tuple[list[ResultRecord], dict[str, Any]]:
    """Export the fitted prompts (with each one's role) as lm-eval tasks, score them all in one lm-eval call;
    returns the new records and the call's timing entry for the manifest."""
    include = out / "lm_eval_tasks"
    include.mkdir(exist_ok=True)
    prompt_sets: dict[str, tuple[PromptSet, str]] = {}
    for prompts, role in todo:
        prompt_sets[write_lm_eval_task(prompts, renderer, include)] = (prompts, role)
    started = time.time()
    results = run_lm_eval(list(prompt_sets), include, mut, cfg, backend, max_length, out)
    seconds = time.time() - started
    n_docs = sum(len(p.docs) for p, _ in prompt_sets.values())
    skipped = {name: p.skipped for name, (p, _) in prompt_sets.items() if p.skipped}
    for name, count in skipped.items():
        log.warning("%s: %d document(s) do not fit in %d tokens even without demonstrations; skipped.",
                    name, count, max_length)
    timing = {"tasks": sorted({p.task.name for p, _ in todo}), "shots": sorted({p.shots for p, _ in todo}),
              "backend": backend, "documents": n_docs, "skipped_documents": skipped, "seconds": round(seconds, 3),
              "documents_per_second": round(n_docs / max(seconds, 1e-9), 3), "num_processes": cfg.num_processes,
              # which draw block each document was prompted from: samples/<name>.jsonl, field `draw`
              "draws": cfg.draws, "draw_share": cfg.draw_share or "1/1",
              "documents_per_draw": {name: dict(sorted(Counter(d.draw for d in p.docs).items()))
                                     for name, (p, _) in prompt_sets.items() if p.draws > 1}}
    if PREFIX_CACHE_KEY in results:
        # vLLM's prefix-cache use during the call, as its /metrics reported it: generation requests read the
        # cache, log-likelihood requests (they ask for prompt log-probs) skip it.
        timing["prefix_cache"] = results[PREFIX_CACHE_KEY]
    return _collect(results, prompt_sets, mut, backend, renderer.format, max_length, out), timing


# --------------------------------------------------------------------------- record


def _record_manifest(out: Path, cfg: EvalConfig, mut: ModelUnderTest, backend: str, backend_reason: str,
                     timing: dict[str, Any]) -> None:
    """Rewrite the manifest with this call's provenance, keeping every earlier call's timing entry."""
    path = out / MANIFEST_FILE
    history = EvalManifest.read(path).runs if path.exists() else []
    EvalManifest(**Provenance.now(cfg.seed), model=mut.model.path, adapter=mut.model.adapter, method=mut.method,
                 backend=backend, backend_reason=backend_reason, runs=history + ([timing] if timing else [])).write(path)


def _check_pinned(out: Path, resolved: dict[str, Any]) -> None:
    previous = out / "config.yaml"
    if not previous.exists():
        return
    old = yaml.safe_load(previous.read_text()) or {}
    for key in _PINNED + ("model_path", "adapter"):
        if key in old and old[key] != resolved[key]:
            raise HarnessError(f"{out} was evaluated with {key}={old[key]!r}, not {resolved[key]!r}; use another "
                               "--output-dir so results stay comparable.")


def _collect(results: dict[str, Any], prompt_sets: dict[str, tuple[PromptSet, str]], mut: ModelUnderTest,
             backend: str, fmt: str, max_length: int, out: Path) -> list[ResultRecord]:
    stamp = utc_stamp()
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lm_dir = out / "lm_eval_results"
    lm_dir.mkdir(exist_ok=True)
    samples = results.pop("samples", {}) or {}
    # One file per lm-eval call; two calls can fall in the same second.
    target = lm_dir / f"results-{stamp}.json"
    serial = 1
    while target.exists():
        serial += 1
        target = lm_dir / f"results-{stamp}-{serial}.json"
    write_json(target, results)
    samples_dir = out / "samples"
    samples_dir.mkdir(exist_ok=True)
    records = []
    for name, (prompts, role) in prompt_sets.items():
        task = prompts.task
        metric = METRIC_KEYS[task.metric]
        scores = results["results"].get(name)
        if scores is None:
            raise HarnessError(f"lm-eval returned no result for {name}; see {lm_dir}.")
        value = float(scores[f"{metric},none"])
        stderr = scores.get(f"{metric}_stderr,none")
        stderr = float(stderr) if isinstance(stderr, int | float) else None
        used = prompts.shots_used
        lines = []
        # in document order: a sharded call (--num-processes) gathers them rank by rank
        predictions = []
        for sample in sorted(samples.get(name, []), key=lambda sample: sample.get("doc_id", 0)):
            doc = sample.get("doc", {})
            response = _short(sample.get("filtered_resps"))
            prediction = _prediction(response) if task.kind == "multiple_choice" else None
            predictions.append(prediction)
            lines.append(json.dumps({
                "uid": doc.get("uid"), "draw": doc.get("draw", 0), "shots_used": doc.get("shots_used"),
                "prompt_tokens": doc.get("prompt_tokens"), "target": sample.get("target"), "prediction": prediction,
                "response": response, **{k: sample[k] for k in (metric,) if k in sample}}) + "\n")
        atomic_write_text(samples_dir / f"{name}.jsonl", "".join(lines))  # whole or not at all (a full disk)
        records.append(ResultRecord(
            model=mut.display_name, model_path=mut.model.adapter or mut.model.path, base_model=mut.base_model,
            method=mut.method, task=task.name, family=task.family, role=role, shots=prompts.shots,
            shots_min=min(used), shots_mean=round(statistics.fmean(used), 2), shots_max=max(used),
            metric=task.metric, value=value, stderr=stderr, seed=prompts.seed, num_docs=len(prompts.docs),
            backend=backend, format=fmt, max_length=max_length, created=created, train_seed=mut.train_seed,
            draws=prompts.draws, draw_share=f"{prompts.share[0]}/{prompts.share[1]}",
            top_share=_top_share(predictions), majority_rate=_majority_rate(prompts)))
    return records


def _prediction(response: Any) -> int | None:
    """The chosen answer of a multiple-choice document: the choice with the highest log-likelihood."""
    try:
        scores = [float(r[0] if isinstance(r, list | tuple) else r) for r in response]
    except (TypeError, ValueError, IndexError):
        return None
    return max(range(len(scores)), key=scores.__getitem__) if scores else None


def _top_share(predictions: list[int | None]) -> float | None:
    """The share of documents given the model's most frequent answer (multiple choice only): 1.0 is a model that
    answers everything alike, whose accuracy is the class balance, not skill."""
    chosen = [p for p in predictions if p is not None]
    if not chosen:
        return None
    return round(max(chosen.count(c) for c in set(chosen)) / len(chosen), 4)


def _majority_rate(prompts: PromptSet) -> float | None:
    """The share of the scored documents whose gold answer is the most frequent one (multiple choice only): the
    accuracy of always giving that answer."""
    golds = [d.gold for d in prompts.docs if d.gold is not None]
    if not golds:
        return None
    return round(max(golds.count(g) for g in set(golds)) / len(golds), 4)


def _short(value: Any) -> Any:
    """Per-sample responses, with log-likelihood pairs flattened to numbers."""
    if isinstance(value, list | tuple):
        return [_short(v) for v in value]
    return value



def _base_probe_records(cfg: EvalConfig, mut: ModelUnderTest, plan: list[PlanEntry], out: Path) -> None:
    """The base model's probe scores under the same settings, reused from a cache when present, copied into
    `out/base/` so a leaderboard over `out` can compute forgetting."""
    # the data directory is part of the key: other data means other probe documents
    max_length, fmt = context_length(cfg, mut), requested_format(cfg, mut)
    key = json.dumps([mut.base_model, cfg.limit, max_length, fmt if fmt != "auto" else None, cfg.dtype,
                      resolve_data_dir(cfg.data_dir)] + ([cfg.draws] if cfg.draws > 1 else [])
                     + ([cfg.split] if cfg.split != "test" else []), default=str)
    cache = Path(cfg.base_results) if cfg.base_results else (
        results_dir() / "base-probes" / (Path(mut.base_model).name[:40] + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]))
    probe_names = sorted({t.name for t, role, _ in plan if role == "probe"})
    shots = sorted({s for _, role, s in plan if role == "probe"})
    # --server-url serves the checkpoint: the base model is scored by a backend of our own, never on that server
    base_cfg = dataclasses.replace(cfg, model=mut.base_model, tasks=probe_names, heldout=[], probes=False,
                                   shots=shots, method="base", output_dir=str(cache), base_results=None,
                                   server_url=None, served_model=None, draw_share=None,  # every block
                                   max_length=max_length, format=fmt)
    run_evaluation(base_cfg)
    target = out / "base"
    target.mkdir(exist_ok=True)
    write_records(target / SUMMARY_FILE, read_records([cache / SUMMARY_FILE]))


# --------------------------------------------------------------------------- dedicated runs


def _dedicated_models(spec: str | None) -> dict[str, str] | None:
    """A dedicated training run's task -> model map, or None when `spec` is not a dedicated run."""
    if not spec:
        return None
    path = Path(spec) / MANIFEST_FILE
    if path.exists():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        # Evaluation and study directories hold manifests too; only a training run's can be dedicated.
        if manifest.get("kind", "train") == "train" and manifest.get("method") == "dedicated":
            return TrainManifest.from_json(manifest, path).models or {}
    return None


def _evaluate_dedicated(cfg: EvalConfig, models: dict[str, str]) -> Path:
    """A dedicated run holds one model per task: each task is scored with its own model, and the probes with
    every one of them (the leaderboard averages them)."""
    run_name = Path(cfg.model).resolve().name  # type: ignore[arg-type]
    out = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("evals", run_name, "eval")
    wanted = parse_task_list(cfg.tasks) if cfg.tasks else []
    missing = [t.name for t in wanted if not t.probe and t.name not in models]
    if missing:
        raise HarnessError(f"The dedicated run {cfg.model} has no model for {', '.join(missing)}; it trained "
                           f"{', '.join(models)}.")
    for task_name, path in models.items():
        tasks = [t.name for t in wanted if t.name == task_name]
        sub = dataclasses.replace(cfg, model=path, tasks=tasks, heldout=[], method="dedicated",
                                  output_dir=str(out / task_name))
        if tasks or sub.probes is not False:
            run_evaluation(sub)
    _rename_dedicated(out, run_name)
    return out


def _rename_dedicated(out: Path, run_name: str) -> None:
    """Records of the per-task models carry the run's name, so the leaderboard shows one dedicated row."""
    for summary in out.glob(f"*/{SUMMARY_FILE}"):
        records = [dataclasses.replace(r, model=run_name) if r.method == "dedicated" else r
                   for r in read_records([summary])]
        write_records(summary, records)
