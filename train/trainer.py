"""Training: build the arm's rows, hand them to TRL's SFTTrainer as a pre-tokenized `labels` dataset, save the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manyicl.harness.errors import STORAGE_ERRORS, HarnessError
from manyicl.harness.models import (
    CHECKPOINT_INFO,
    ResolvedModel,
    check_context,
    load_tokenizer,
    resolve_model,
)
from manyicl.harness.runs import check_output_folder, new_run_dir, publish_dir, write_json, write_yaml
from manyicl.harness.schemas import CheckpointInfo, Provenance, TrainManifest, is_complete
from manyicl.harness.settings import CURVE_DIR, TrainConfig, check_ranges, effective_lora_alpha, to_dict
from manyicl.tasks.registry import TASKS_DIR, TaskData, load_examples, parse_task_list
from manyicl.train import checkpoints, distributed
from manyicl.train.sequences import (
    Budget,
    Renderer,
    Row,
    TaskPacking,
    mix,
    pack_rows,
    pack_task,
    resolve_format,
    select_rows,
)

log = logging.getLogger(__name__)

REPORTERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"  # under the run directory; checkpoints/ is deleted when the run finishes


@dataclasses.dataclass
class TrainingData:
    """The rows one run trains on, and the numbers that describe them."""

    rows: list[Row]
    packings: list[TaskPacking]
    epochs: int
    steps: int

    def stats(self) -> dict[str, Any]:
        per_task = {}
        for p in self.packings:
            seqs = p.sequences
            per_task[p.task] = {
                "sequences_per_epoch": len(seqs),
                "examples_per_sequence": _spread([s.num_examples for s in seqs]),
                "targets_per_sequence": _spread([s.num_targets for s in seqs]),
                "tokens_per_sequence": _spread([s.num_tokens for s in seqs]),
                "skipped_too_long": p.skipped_too_long,
            }
        return {
            "rows": len(self.rows),
            "steps": self.steps,
            "epochs_started": self.epochs,
            "tokens": sum(r.num_tokens for r in self.rows),
            "trained_tokens": sum(r.num_trained_tokens for r in self.rows),
            "targets": sum(r.num_targets for r in self.rows),
            "examples": sum(r.num_examples for r in self.rows),
            "per_task": per_task,
        }


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(statistics.mean(values), 2), "max": max(values)}


def build_training_data(cfg: TrainConfig, renderer: Renderer, datasets: list[TaskData]) -> TrainingData:
    """Pack every task, mix, place into rows, and take rows epoch by epoch until the budget is met."""
    if not cfg.budget_given:
        raise HarnessError("Give a training budget: --max-steps, --max-tokens or --max-targets.")
    # an optimizer step takes batch x grad_accum rows on each of the N processes
    budget = Budget(cfg.max_steps, cfg.max_tokens, cfg.max_targets,
                    rows_per_step=cfg.rows_per_step)
    tokenized = {d.task.name: renderer.tokenize_examples(d.train) for d in datasets}
    first: list[TaskPacking] = []

    def epochs() -> Iterator[list[Row]]:
        epoch = 0
        while True:
            seed = cfg.seed + 1000 * epoch  # a new order every epoch, the same for every arm
            packings = [pack_task(d, renderer, cfg.method, cfg.max_seq_len, seed, shots=cfg.shots,
                                  max_examples=cfg.examples_per_task, tokenized=tokenized[d.task.name])
                        for d in datasets]
            if epoch == 0:
                first.extend(packings)
            yield pack_rows(mix(packings, seed), cfg.max_seq_len)
            epoch += 1

    rows, n_epochs = select_rows(epochs(), budget)
    return TrainingData(rows=rows, packings=first, epochs=n_epochs, steps=len(rows) // budget.rows_per_step)


def build_validation_rows(cfg: TrainConfig, renderer: Renderer, datasets: list[TaskData]) -> list[Row]:
    """The validation split packed exactly as this arm packs its training rows (same method, sequence length
    and shots), once, in a fixed order: its loss is the training objective on examples never trained on."""
    held = [dataclasses.replace(d, train=d.validation, validation=()) for d in datasets if d.validation]
    empty = [d.task.name for d in datasets if not d.validation]
    if empty:
        raise HarnessError(f"--eval-steps needs validation rows, and {', '.join(empty)} has none (a train split "
                           "too small, or `validation.size: 0` in its definition); drop --eval-steps or the task.")
    packings = [pack_task(d, renderer, cfg.method, cfg.max_seq_len, cfg.seed, shots=cfg.shots,
                          max_examples=cfg.eval_examples_per_task) for d in held]
    rows = pack_rows(mix(packings, cfg.seed), cfg.max_seq_len)
    if not rows:
        raise HarnessError(f"The validation split yields no {cfg.method} sequence (too few examples for "
                           f"--shots {cfg.shots}); raise `validation.size` or drop --eval-steps.")
    return rows


def _reporters(cfg: TrainConfig) -> list[str]:
    """TRL's `report_to`, checked: each integration named must be importable here."""
    import importlib.util

    wanted = [r.lower() for r in cfg.report_to] or ["none"]
    unknown = [r for r in wanted if r not in REPORTERS]
    if unknown:
        raise HarnessError(f"Unknown --report-to `{unknown[0]}`; use one of {', '.join(REPORTERS)}.")
    if "none" in wanted and len(wanted) > 1:
        raise HarnessError("--report-to none cannot be combined with other integrations; give one or the other.")
    for name in wanted:
        if name != "none" and importlib.util.find_spec(name) is None:
            raise HarnessError(f"--report-to {name} needs the `{name}` package, which is not installed; "
                               f"`pip install {name}` or use --report-to none.")
    return [r for r in wanted if r != "none"]


def _load_train_tasks(cfg: TrainConfig) -> list[TaskData]:
    tasks = parse_task_list(cfg.tasks)
    probes = [t.name for t in tasks if t.probe]
    if probes:
        raise HarnessError(f"{', '.join(probes)} {'is a probe' if len(probes) == 1 else 'are probes'}, never "
                           "trained on; remove it from --tasks.")
    return [load_examples(t, cfg.data_dir) for t in tasks]


def _check(cfg: TrainConfig) -> None:
    check_ranges(cfg)  # the fields' own ranges and choices (the CLI checked them already; a library call has not)
    _reporters(cfg)


def run_training(cfg: TrainConfig) -> Path:
    """Train one arm (or, for `dedicated`, one model per task) and return the run directory."""
    _check(cfg)
    if distributed.needs_launch(cfg):  # --num-processes N > 1 re-runs this under `accelerate launch`
        # Refuse a changed setting here, once, rather than in each launched process (N errors, a failed launch).
        if cfg.output_dir and _existing_run(cfg, Path(cfg.output_dir), resolve_model(cfg.model)):
            return Path(cfg.output_dir)
        return distributed.launch_training(cfg)
    distributed.adopt_world(cfg)  # the launched world size, and one run directory for all ranks
    model = resolve_model(cfg.model)
    check_context(model, cfg.max_seq_len, "--max-seq-len")
    run_dir = Path(cfg.output_dir) if cfg.output_dir else new_run_dir("runs", model.name, cfg.method)
    check_output_folder(run_dir)
    if _existing_run(cfg, run_dir, model):
        return run_dir  # finished earlier with these settings: nothing to redo
    distributed.barrier()  # every rank has checked the directory before rank 0 writes into it
    if cfg.method == "dedicated":
        return _run_dedicated(cfg, model, run_dir)
    _train_one(cfg, model, run_dir)
    distributed.barrier()  # rank 0 has finished the run directory
    return run_dir


def _existing_run(cfg: TrainConfig, run_dir: Path, model: ResolvedModel) -> bool:
    """Whether `run_dir` holds a finished run made with these settings (reuse it). Refuses, before anything is
    written, an unfinished run without --resume, and a finished or resumed run whose settings differ."""
    finished = is_complete(run_dir)
    if not finished and run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume:
        raise HarnessError(f"Run directory {run_dir} already holds an unfinished run; pass --resume to continue it "
                           "or choose another --output-dir.")
    if finished or cfg.resume:
        _refuse_changed_settings(cfg, run_dir, model, finished)
    return finished


def _refuse_changed_settings(cfg: TrainConfig, run_dir: Path, model: ResolvedModel, finished: bool) -> None:
    """A run is continued (or reused) only with the settings it was started with (train/checkpoints.py says which
    may differ): a checkpoint trained one way and continued another would be neither run."""
    import os

    import yaml

    from manyicl.tasks.registry import DATA_DIR_ENV

    path = run_dir / "config.yaml"
    if not path.exists():
        return  # stopped before it recorded anything: there is nothing to differ from
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise HarnessError(f"Cannot resume {run_dir}: its config.yaml is not valid YAML "
                           f"({getattr(err, 'problem', None) or err}); restore it or choose another --output-dir."
                           ) from None
    if not isinstance(old, dict):
        raise HarnessError(f"Cannot resume {run_dir}: its config.yaml is not a mapping of settings; restore it or "
                           "choose another --output-dir.")
    if cfg.resume:
        distributed.check_resume(run_dir, old, cfg)  # its own message for the rows per optimizer step
    tokenizer: list[Any] = []

    def resolve(fmt: str) -> str:
        if fmt != "auto":
            return fmt
        if not tokenizer:  # loaded only when one side says `auto`
            tokenizer.append(load_tokenizer(model))
        return resolve_format(tokenizer[0], fmt)

    new = to_dict(cfg) | {"model_path": model.path, "adapter": model.adapter}
    change = checkpoints.changed_setting(old, new, data_dir_env=os.environ.get(DATA_DIR_ENV), resolve_format=resolve)
    if change is None:
        return
    if finished:
        raise HarnessError(f"{run_dir} holds a finished run trained with {change.sentence()}; give the same settings "
                           "to reuse it, or choose another --output-dir.")
    raise HarnessError(f"Cannot resume {run_dir}: it was trained with {change.sentence()}; resume with the same "
                       "settings, or start a new run in another --output-dir.")


def _run_dedicated(cfg: TrainConfig, model: ResolvedModel, run_dir: Path) -> Path:
    datasets = _load_train_tasks(cfg)  # fail early on bad task names
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process():  # the model as resolved, as _start_run records it (a resume compares it)
        write_yaml(run_dir / "config.yaml", to_dict(cfg) | {"model_path": model.path, "adapter": model.adapter})
    started = time.time()
    children = {}
    for data in datasets:
        sub = dataclasses.replace(cfg, method=cfg.dedicated_method, tasks=[data.task.name],
                                  output_dir=str(run_dir / data.task.name))
        _train_one(sub, model, run_dir / data.task.name)
        distributed.barrier()  # rank 0 has written the child's manifest
        children[data.task.name] = TrainManifest.read(run_dir / data.task.name / "manifest.json")
    if distributed.is_main_process():
        TrainManifest(
            **Provenance.now(cfg.seed), method="dedicated", status="complete", model=model.path,
            models={name: str(run_dir / name / "final") for name in children},
            wall_time_s=round(time.time() - started, 1), num_processes=cfg.num_processes,
            seen={k: sum(c.seen[k] for c in children.values()) for k in ("tokens", "targets", "examples")},  # type: ignore[index]
        ).write(run_dir / "manifest.json")
    return run_dir


@dataclasses.dataclass
class _Prepared:
    """What one run trains on and with: the tokenizer, its format, the tasks' data and the budgeted rows."""

    tokenizer: Any
    format: str
    datasets: list[TaskData]
    data: TrainingData
    eval_rows: list[Row]  # the validation split packed as this arm packs (empty unless --eval-steps)


def _train_one(cfg: TrainConfig, model: ResolvedModel, run_dir: Path) -> Path:
    """One model on one arm's rows, read top to bottom: prepare the data, record the run, build the trainer,
    train, save the final checkpoint, close the manifest."""
    if is_complete(run_dir):
        return run_dir
    started = time.time()
    prepared = _prepare_data(cfg, model)
    manifest = _start_run(cfg, model, run_dir, prepared)
    trainer = _build_trainer(cfg, model, run_dir, prepared)
    resume_from = _resume_point(cfg, run_dir, prepared.data.steps) if cfg.resume else None
    train_started = time.time()
    # An explicit, verified checkpoint (or none: from step 0), never transformers' "highest number" pick.
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - train_started
    info = _save_final(trainer, cfg, model, run_dir, prepared)
    if info is None:
        return run_dir  # the other ranks: rank 0 alone closes the run directory
    _finish_run(cfg, manifest, run_dir, prepared, info, steps=result.global_step, started=started,
                train_seconds=train_seconds, tokens_seen_by_trainer=trainer.state.num_input_tokens_seen)
    return run_dir


def _resume_point(cfg: TrainConfig, run_dir: Path, steps: int) -> Path | None:
    """The newest complete checkpoint to continue from (None: from step 0). Every rank reads the same folders;
    then rank 0 alone sets the incomplete checkpoints aside (transformers must never pick one, and the resumed run
    rewrites their step), drops the log lines and learning-curve points of the steps to be redone, and says where
    it resumes."""
    folder = run_dir / "checkpoints"
    log_path = run_dir / "train_log.jsonl"
    plan = checkpoints.plan_resume(folder)
    tried_before = plan.checkpoint is not None or bool(plan.broken) or log_path.exists()
    distributed.barrier()  # every rank has read the folders before rank 0 renames any
    if distributed.is_main_process():
        said = plan.describe(folder)  # before the renames it names
        for broken, _ in plan.broken:
            checkpoints.set_aside(broken)
        checkpoints.trim_log(log_path, plan.step)
        # A point past the checkpoint was saved by the attempt being redone; the resumed run saves it again.
        for step, fraction in curve_steps(cfg, steps).items():
            if step > plan.step and fraction < 1:
                shutil.rmtree(curve_folder(run_dir, fraction), ignore_errors=True)
        if tried_before:
            log.warning("%s", said)
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": plan.step, "time": round(time.time(), 3),
                                         "resumed_from": plan.checkpoint.name if plan.checkpoint else None,
                                         "skipped": {p.name: why for p, why in plan.broken}}) + "\n")
    distributed.barrier()  # the folders are settled before any rank loads the checkpoint
    return plan.checkpoint


def _prepare_data(cfg: TrainConfig, model: ResolvedModel) -> _Prepared:
    from transformers import set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(model)
    fmt = resolve_format(tokenizer, cfg.format)
    renderer = Renderer(tokenizer, fmt)
    datasets = _load_train_tasks(cfg)
    return _Prepared(tokenizer=tokenizer, format=fmt, datasets=datasets,
                     data=build_training_data(cfg, renderer, datasets),
                     eval_rows=build_validation_rows(cfg, renderer, datasets) if cfg.eval_steps else [])


def _start_run(cfg: TrainConfig, model: ResolvedModel, run_dir: Path, prepared: _Prepared) -> TrainManifest:
    """The resolved settings, the data's numbers and a `running` manifest, before the long part starts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = to_dict(cfg) | {"format": prepared.format, "model_path": model.path, "adapter": model.adapter}
    stats = prepared.data.stats()
    eval_rows = prepared.eval_rows
    if eval_rows:
        stats["validation"] = {"rows": len(eval_rows), "tokens": sum(r.num_tokens for r in eval_rows),
                               "targets": sum(r.num_targets for r in eval_rows),
                               "examples": sum(r.num_examples for r in eval_rows)}
    manifest = TrainManifest(**Provenance.now(cfg.seed), method=cfg.method, status="running", model=model.path,
                             data_sources={d.task.name: d.source for d in prepared.datasets},
                             num_processes=cfg.num_processes)
    if distributed.is_main_process():  # only rank 0 writes the run directory
        write_yaml(run_dir / "config.yaml", resolved)
        _copy_task_files(prepared.datasets, run_dir)
        write_json(run_dir / "data_stats.json", stats)
        manifest.write(run_dir / "manifest.json")
    return manifest


def _copy_task_files(datasets: list[TaskData], run_dir: Path) -> None:
    """A user's own task definitions, copied into the run (task_files/): config.yaml names them by absolute path,
    and the copy keeps the definition this run trained on if the original is later edited or moved."""
    for data in datasets:
        source = Path(data.task.path)
        if source.parent != TASKS_DIR:
            (run_dir / "task_files").mkdir(exist_ok=True)
            shutil.copyfile(source, run_dir / "task_files" / f"{data.task.name}{source.suffix}")


def fused_head_on_trained_positions_only() -> bool:
    """[throughput] Make TRL's fused LM head project only the positions that carry a label, on CPU as on CUDA.

    TRL 1.16 (trl/trainer/utils.py, `add_fused_lm_head`) scores only labelled positions where Triton runs and
    every position elsewhere, to keep tile shapes fixed for compiling backends (Neuron). Nothing is compiled on
    CPU, and there the other positions (every input token: most of a ManyICL row, nearly all of a few-shot one)
    cost the 49k-vocabulary projection twice (forward and its recomputation in backward), its gradient, and the
    per-token entropy and accuracy folds, all to be multiplied by zero: same loss, same gradients, same logged
    metrics without them. Applied once per process; returns whether TRL still has the switch (a guard test fails
    when it does not, and training then simply runs at TRL's own speed)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "harness_compact_on_cpu", False):
        return True

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.harness_compact_on_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu
    return True


def _build_trainer(cfg: TrainConfig, model: ResolvedModel, run_dir: Path, prepared: _Prepared):
    """TRL's SFTTrainer over the pre-built rows, with the model (and LoRA) loaded for this device."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    def as_dataset(rows: list[Row]) -> Dataset:
        return Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows],
                                  "seq_lengths": [r.seq_lengths for r in rows]})

    dataset = as_dataset(prepared.data.rows)
    eval_rows = prepared.eval_rows
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() or not cuda
    # On a GPU the weights are loaded in bf16; on CPU they stay fp32 and bf16 autocast does the math.
    weights_dtype = torch.bfloat16 if cuda and bf16 else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=weights_dtype)
    peft_config = None
    if model.adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, model.adapter, is_trainable=True)
    elif cfg.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=effective_lora_alpha(cfg.lora_alpha, cfg.lora_r), lora_dropout=0.05,
                                 target_modules="all-linear", task_type="CAUSAL_LM")

    fused_head_on_trained_positions_only()  # [throughput]
    steps = prepared.data.steps
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * steps),
        weight_decay=cfg.weight_decay,
        logging_steps=1,
        save_steps=cfg.save_steps,
        # Rotation is ours (MarkCompleteThenRotate): transformers' deletes the older checkpoint inside
        # _save_checkpoint, before the new one is known to be complete.
        save_total_limit=None,
        report_to=_reporters(cfg),
        run_name=run_dir.name,
        # Validation loss on the arm's own kind of sequences, before training and every eval_steps; loss only,
        # since gathering logits over a 49k vocabulary would cost gigabytes.
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=cfg.eval_steps,
        eval_on_start=bool(eval_rows),
        per_device_eval_batch_size=cfg.batch_size,
        prediction_loss_only=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Rows are pre-built (whole examples, budgeted, in a fixed order): TRL must neither pack, truncate nor
        # shuffle them; padding-free keeps the sequences inside a row apart through `seq_lengths`.
        packing=False,
        padding_free=True,
        max_length=None,
        shuffle_dataset=False,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all",  # the Trainer's own count, gathered over ranks (manifest)
    )
    log_path = run_dir / "train_log.jsonl"

    class NoCheckpointAtTheEnd(TrainerCallback):
        # [throughput] transformers saves a checkpoint (weights and optimizer state: ~1.6 GB for SmolLM2) at the
        # last step, which _save_final deletes seconds later once final/ is written; the save only cost time.
        # Runs after transformers' DefaultFlowCallback, so it has the last word on `should_save`.
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    class MarkCompleteThenRotate(TrainerCallback):
        # transformers calls on_save right after _save_checkpoint returns, so every file of the checkpoint exists
        # (weights, optimizer, scheduler, RNG states, trainer state); the marker goes last, then older checkpoints.
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            distributed.barrier()  # every rank has written its own files (rng_state_<rank>.pth, optimizer shards)
            if state.is_world_process_zero:
                checkpoints.write_marker(folder, state.global_step)
                checkpoints.rotate(folder.parent, keep=folder)
            return control

    class LogToFile(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # one log, rank 0's (losses are already gathered)
                return
            with open(log_path, "a", encoding="utf-8") as handle:
                # `time` (Unix seconds) lets steady-state throughput be read from the log (bench/train_throughput.py).
                handle.write(json.dumps({"step": state.global_step, "time": round(time.time(), 3), **(logs or {})})
                             + "\n")

    points = curve_steps(cfg, steps)

    class SaveCurvePoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            fraction = points.get(state.global_step)
            # the whole budget's point is final/; every earlier fraction gets its folder, even on the last step
            if fraction is not None and fraction < 1 and model is not None and state.is_world_process_zero:
                _save_curve_point(model, cfg, model_info=model_ref, run_dir=run_dir, prepared=prepared,
                                  fraction=fraction)

    model_ref = model
    trainer = SFTTrainer(model=lm, args=args, train_dataset=dataset,
                         eval_dataset=as_dataset(eval_rows) if eval_rows else None,
                         processing_class=prepared.tokenizer, peft_config=peft_config,
                         callbacks=[LogToFile(), SaveCurvePoints(), NoCheckpointAtTheEnd(),
                                    MarkCompleteThenRotate()])
    _tensorboard_into(trainer, run_dir / TENSORBOARD_DIR)
    return trainer


def curve_steps(cfg: TrainConfig, steps: int) -> dict[int, float]:
    """Optimizer step -> the learning-curve fraction saved after it (the last fraction wins a shared step)."""
    return {max(1, round(fraction * steps)): fraction for fraction in sorted(cfg.curve_points)}


def curve_folder(run_dir: Path, fraction: float) -> Path:
    return run_dir / CURVE_DIR / f"{fraction:g}"


def _save_curve_point(lm, cfg: TrainConfig, *, model_info: ResolvedModel, run_dir: Path, prepared: _Prepared,
                      fraction: float) -> None:
    """The model as it is now, as a finished folder any harness command loads: full weights copied to bf16 (the
    training weights are left untouched), or the adapter alone for LoRA. A point already saved (a resumed run)
    is kept."""
    import torch

    folder = curve_folder(run_dir, fraction)
    if folder.exists():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    adapter = hasattr(lm, "peft_config")
    if adapter:
        lm.save_pretrained(tmp)
    else:
        lm.save_pretrained(tmp, state_dict={k: v.detach().to(torch.bfloat16) for k, v in lm.state_dict().items()})
    prepared.tokenizer.save_pretrained(tmp)
    CheckpointInfo(method=cfg.method, format=prepared.format, base_model=model_info.path, tasks=cfg.tasks,
                   max_seq_len=cfg.max_seq_len, lora_r=cfg.lora_r, lora_merged=False,
                   adapter_only=adapter, seed=cfg.seed).write(tmp / CHECKPOINT_INFO)
    publish_dir(tmp, folder)


def _curve_entries(cfg: TrainConfig, run_dir: Path, prepared: _Prepared, steps: int) -> list[dict[str, Any]] | None:
    """The manifest's learning-curve points: where each model is and what it had seen (rows are trained in
    order, so the first step x rows-per-step rows are exactly what it saw). The last point is final/."""
    if not cfg.curve_points:
        return None
    per_step = cfg.rows_per_step
    entries = []
    for step, fraction in sorted(curve_steps(cfg, steps).items()):
        path = run_dir / "final" if fraction >= 1 else curve_folder(run_dir, fraction)
        rows = prepared.data.rows[:min(step, steps) * per_step]
        entries.append({"fraction": fraction, "step": min(step, steps), "path": str(path),
                        "tokens": sum(r.num_tokens for r in rows), "targets": sum(r.num_targets for r in rows),
                        "examples": sum(r.num_examples for r in rows)})
    return entries


def _save_final(trainer, cfg: TrainConfig, model: ResolvedModel, run_dir: Path,
                prepared: _Prepared) -> CheckpointInfo | None:
    """The trained model (LoRA merged when asked) in bf16 with its tokenizer and checkpoint info, published
    atomically as final/; intermediate checkpoints are removed. None on every rank but 0, which writes nothing."""
    final = run_dir / "final"
    tmp = run_dir / "final.tmp"
    if tmp.exists() and distributed.is_main_process():
        shutil.rmtree(tmp)
    try:
        # every rank calls it (FSDP/ZeRO-3 gather collectively); rank 0 saves, merged LoRA in bf16
        merged = distributed.save_final_model(trainer, tmp, cfg.lora_merge)
        if not distributed.is_main_process():
            return None  # rank 0 finishes the run directory; `harness train` waits for every rank
        prepared.tokenizer.save_pretrained(tmp)
        info = CheckpointInfo(method=cfg.method, format=prepared.format, base_model=model.path, tasks=cfg.tasks,
                              max_seq_len=cfg.max_seq_len, lora_r=cfg.lora_r, lora_merged=merged,
                              adapter_only=bool(cfg.lora_r or model.adapter) and not merged, seed=cfg.seed)
        info.write(tmp / CHECKPOINT_INFO)
    except Exception as err:
        adapter = hasattr(trainer.model, "merge_and_unload") and not cfg.lora_merge  # as save_final_model saves it
        refused = _storage_refusal(err, tmp, "adapter_model.safetensors" if adapter else "model.safetensors")
        if distributed.is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)  # half a model must not be mistaken for one
        if refused is not None:
            raise refused from None
        raise
    publish_dir(tmp, final)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: intermediate checkpoints are dead weight
    return info


def _storage_refusal(err: Exception, folder: Path, weights_file: str) -> HarnessError | None:
    """A full (or read-only) disk met while writing `folder`, as one sentence naming the file; None for any other
    error. safetensors reports it as a SafetensorError whose text carries the OS error number but no path (and it
    removes the partial file), so the file named is the weights file `folder` was to get (a model large enough to
    be saved in shards writes model-0000i-of-0000n.safetensors instead; the folder is still the right one)."""
    if isinstance(err, OSError):
        code, name = err.errno, err.filename
    else:
        # "I/O error: File too large (os error 27)"; older releases wrote "IoError(Os { code: 27, ... })"
        found = re.search(r"(?:os error |\bcode: )(\d+)", str(err))
        code, name = (int(found.group(1)) if found else None), None
    if code not in STORAGE_ERRORS:
        return None
    if not name:
        name = folder / weights_file
    return HarnessError(f"Cannot write {name}: {os.strerror(code)}; free space (or fix the folder's permissions) "
                        "and rerun with --resume, which continues from the run's last complete checkpoint.")


def _finish_run(cfg: TrainConfig, manifest: TrainManifest, run_dir: Path, prepared: _Prepared, info: CheckpointInfo,
                *, steps: int, started: float, train_seconds: float, tokens_seen_by_trainer: int) -> None:
    stats = prepared.data.stats()
    done = dataclasses.replace(
        manifest, status="complete", wall_time_s=round(time.time() - started, 1),
        train_time_s=round(train_seconds, 1), steps=steps,
        seen={k: stats[k] for k in ("tokens", "trained_tokens", "targets", "examples", "rows")},
        tokens_per_second=round(stats["tokens"] / max(train_seconds, 1e-9), 1),
        tokens_seen_by_trainer=tokens_seen_by_trainer,  # summed over ranks by the Trainer
        final_train_loss=_last_loss(run_dir / "train_log.jsonl"),
        final_eval_loss=_last_loss(run_dir / "train_log.jsonl", "eval_loss"), checkpoint=str(run_dir / "final"),
        checkpoint_kind="adapter" if info.adapter_only else "full", curve=_curve_entries(cfg, run_dir, prepared, steps))
    done.write(run_dir / "manifest.json")


def _last_loss(log_path: Path, key: str = "loss") -> float | None:
    if not log_path.exists():
        return None
    losses = [row[key] for row in map(json.loads, log_path.read_text().splitlines()) if key in row]
    return losses[-1] if losses else None


def _tensorboard_into(trainer, folder: Path) -> None:
    """TensorBoard events go to the run directory (transformers' default is under output_dir, which is our
    checkpoints/ folder, deleted at the end), unless $TENSORBOARD_LOGGING_DIR says otherwise."""
    import os

    from transformers.integrations import TensorBoardCallback

    if os.environ.get("TENSORBOARD_LOGGING_DIR"):
        return
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(folder)
