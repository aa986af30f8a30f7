"""A study's outputs: leaderboard files, plots, and REPORT.md, which states from the numbers whether each claim held."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from manyicl.harness.claims import (
    ALPHA,
    APPROACH_MARGIN,
    PRIMARY,
    PRIMARY_SHOTS,
    claim_rows,
    claims_markdown,
    spreads,
    spreads_markdown,
)
from manyicl.harness.errors import HarnessError
from manyicl.harness.leaderboard import build_leaderboard, render
from manyicl.harness.paired import read_outcomes
from manyicl.harness.plots import (
    plot_forgetting,
    plot_learning_curves,
    plot_scores_vs_shots,
    plot_training_loss,
)
from manyicl.harness.results import ResultRecord, read_records
from manyicl.harness.runs import atomic_write_text, hardware
from manyicl.harness.schemas import MANIFEST_FILE, StageResult, TrainManifest
from manyicl.harness.settings import StudyConfig


def _blank(value: object) -> object:
    """Missing numbers print as empty table cells."""
    return "" if value is None else value


def budgets_markdown(root: Path) -> str:
    lines = ["| arm | steps | tokens seen | targets seen | examples seen | train time (s) | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted((root / "runs").glob(f"*/{MANIFEST_FILE}")):
        m = TrainManifest.read(path)
        seen = m.seen or {}
        steps: object = _blank(m.steps)
        if m.method == "dedicated":
            steps = "per task: " + ", ".join(f"{n}={TrainManifest.read(Path(p).parent / MANIFEST_FILE).steps}"
                                             for n, p in (m.models or {}).items())
        train_time = m.train_time_s if m.train_time_s is not None else _blank(m.wall_time_s)
        lines.append(f"| {path.parent.name} | {steps} | {seen.get('tokens', '')} | {seen.get('targets', '')} | "
                     f"{seen.get('examples', '')} | {train_time} | {_blank(m.tokens_per_second)} |")
    return "\n".join(lines)


def learning_curve_points(root: Path) -> dict[str, list[tuple[int, int, float]]]:
    """Run name -> (tokens seen, targets seen, mean score over tasks) at each evaluated curve point: the curve
    evaluations under `curves/` matched to the points their run's manifest lists."""
    seen: dict[Path, tuple[str, int, int]] = {}
    for path in sorted((root / "runs").glob(f"*/{MANIFEST_FILE}")):
        for point in TrainManifest.read(path).curve or []:
            seen[Path(point["path"]).resolve()] = (path.parent.name, point["tokens"], point["targets"])
    out: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    curves = root / "curves"
    for summary in sorted(curves.glob("*/summary.jsonl")) if curves.exists() else []:
        per_model: dict[Path, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in read_records([summary]):
            per_model[Path(r.model_path).resolve()][r.task].append(r.value)
        for model, tasks in per_model.items():
            if model in seen:
                name, tokens, targets = seen[model]
                out[name].append((tokens, targets, statistics.fmean(statistics.fmean(v) for v in tasks.values())))
    return dict(out)


def training_losses(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Run name (`dedicated:<task>` for a dedicated run's models) -> (step, loss) from its train_log.jsonl."""
    out: dict[str, list[tuple[int, float]]] = {}
    for log in sorted((root / "runs").glob("*/train_log.jsonl")) + sorted((root / "runs").glob("*/*/train_log.jsonl")):
        run = log.parent
        name = run.name if run.parent.name == "runs" else f"{run.parent.name}:{run.name}"
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[name] = [(int(row["step"]), float(row["loss"])) for row in rows if "loss" in row and "step" in row]
    return out


def write_outputs(cfg: StudyConfig, stages: list[StageResult]) -> dict[str, Path]:
    """Leaderboard (printed, markdown, CSV, JSON), plots, and REPORT.md for a study directory."""
    from rich.console import Console

    root = cfg.directory
    evals = root / "evals"
    records = read_records([evals]) if evals.exists() else []
    outputs: dict[str, Path] = {}
    console = Console(width=None if sys.stdout.isatty() else 200)
    failed = [s for s in stages if s.status in {"failed", "blocked"}]
    if not records:
        atomic_write_text(root / "REPORT.md", f"# {cfg.name}\n\nNo evaluation finished yet." + _failures(failed))
        return {"report": root / "REPORT.md"}
    board = build_leaderboard(records, by="family")
    console.print(render(board, "table"))
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = root / f"leaderboard.{ext}"
        atomic_write_text(path, str(render(board, fmt)))
        outputs[f"leaderboard.{ext}"] = path
    by_task = root / "leaderboard_by_task.md"
    atomic_write_text(by_task, str(render(build_leaderboard(records, by="task"), "markdown")))
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    try:
        outputs["scores_plot"] = plot_scores_vs_shots(records, plots / "scores_vs_shots.png")
    except HarnessError:
        pass
    try:
        outputs["forgetting_plot"] = plot_forgetting(records, plots / "forgetting.png")
    except HarnessError:
        pass
    try:
        outputs["learning_curves"] = plot_learning_curves(learning_curve_points(root), plots / "learning_curves.png")
    except HarnessError:
        pass
    try:
        outputs["training_loss"] = plot_training_loss(training_losses(root), plots / "training_loss.png")
    except HarnessError:
        pass
    shots_list = sorted({r.shots for r in records if r.role != "probe"}, key=lambda s: math.inf if s == "many" else int(s))
    table = read_outcomes([evals])
    claims = claim_rows(table, shots_list)
    report = _report_text(cfg, records, board, claims, spreads(table), failed, render, outputs)
    atomic_write_text(root / "REPORT.md", report)
    outputs["report"] = root / "REPORT.md"
    return outputs


_PLOTS = (("scores_plot", "Score against shots", ""),
          ("forgetting_plot", "Forgetting on the probes", ""),
          ("learning_curves", "Learning curves",
           "Each arm's checkpoints at the curve points, scored on the training tasks, against the tokens and the "
           "targets (supervised answers) they had seen: ManyICL supervises many answers per token."),
          ("training_loss", "Training loss", "From each run's train_log.jsonl (dedicated: one line per task model)."))


def _plots_markdown(cfg: StudyConfig, outputs: dict[str, Path]) -> str:
    parts = ["## Plots"]
    for key, title, note in _PLOTS:
        if key in outputs:
            rel = outputs[key].relative_to(cfg.directory)
            parts += ["", f"### {title}", "", *([note, ""] if note else []), f"![{title}]({rel})"]
    if "learning_curves" not in outputs:
        parts += ["", "No learning curve: set `train.curve_points` (e.g. [0.25, 0.5, 1.0]) to evaluate intermediate "
                  "checkpoints."]
    return "\n".join(parts)


def _failures(failed: list[StageResult]) -> str:
    if not failed:
        return ""
    lines = ["\n\n## Stages that did not finish\n"]
    lines += [f"- `{s.name}`: {s.status}; log: `{s.log}`" for s in failed]
    return "\n".join(lines) + "\n"


def _report_text(cfg: StudyConfig, records: list[ResultRecord], board, claims, spread_list, failed, render,
                 outputs: dict[str, Path]) -> str:
    hw = hardware()
    models = sorted({r.base_model for r in records})
    docs = sorted({r.num_docs for r in records if r.role == "train"})
    seeds = sorted({r.seed for r in records})
    shots_used = defaultdict(list)
    for r in records:
        if r.shots == "many":
            shots_used[r.task].append(r.shots_mean)
    many = ", ".join(f"{t} ≈{statistics.fmean(v):.0f}" for t, v in sorted(shots_used.items()))
    train = cfg.train
    parts = [
        f"# Study: {cfg.name}",
        "",
        cfg.description.strip(),
        "",
        f"Written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {hw.get('cpu_count')} CPU cores"
        f"{', GPUs: ' + ', '.join(hw['gpus']) if hw.get('gpus') else ', no GPU'}"
        f" ({hw.get('memory_gib', '?')} GiB). Base model: {', '.join(models)}.",
        "",
        "## Setup",
        "",
        f"- Training tasks (the mixture): {', '.join(cfg.tasks)}; held-out tasks: {', '.join(cfg.heldout) or 'none'}; "
        f"forgetting probes: {', '.join(cfg.probes)}.",
        f"- Arms: {', '.join(cfg.arms)}. Matched budget per arm: "
        + ", ".join(f"{k}={v}" for k, v in train.items() if k.startswith("max_") or k in {"shots", "lora_r", "learning_rate"})
        + ". Each dedicated model gets that same budget on its one task.",
        f"- Evaluation: shots {', '.join(str(s) for s in cfg.eval.get('shots', []))}; documents per task {docs}; "
        f"demonstration seeds {seeds}; `many` used on average: {many or 'n/a'}.",
        "- Leaderboard ± values are two standard errors of the mean over documents (lm-eval's stderr), combined "
        "over tasks; the claims below use paired intervals instead. At 0 shots there are no demonstrations to "
        "draw, so 0-shot settings are scored under one demonstration seed.",
        "",
        "## Budgets actually spent",
        "",
        budgets_markdown(cfg.directory),
        "",
        "## Leaderboard (×100; best in each column in bold)",
        "",
        str(render(board, "markdown")),
        "",
        "Per task: `leaderboard_by_task.md`.",
        "",
        _plots_markdown(cfg, outputs),
        "",
        "## Did the claims hold?",
        "",
        f"**Primary claim, named before the study ran: {PRIMARY.text} at `{PRIMARY_SHOTS}` shots on the "
        f"training tasks** ({PRIMARY.a} − {PRIMARY.b}). It is the only claim tested at the plain {100 * ALPHA:.0f}% "
        "level. Every other row is **secondary**: their p-values are corrected together with Holm's method "
        f"(family-wise error {100 * ALPHA:.0f}%), and a secondary claim whose interval excludes 0 but whose "
        "Holm-adjusted p-value is above 0.05 is reported as suggestive, not established.",
        "",
        "Each difference is paired: both arms scored the same documents with the same demonstrations, so A − B is "
        "taken per document (over its demonstration seeds) and averaged within each task, then over tasks. The "
        "95% interval is a bootstrap over documents (10,000 replicates, resampled within each task, a document's "
        "seeds kept together); ± is its half-width; p is a two-sided sign-flip permutation test of "
        "\"no difference\" (docs/study-statistics.md). Verdicts follow from the interval: a claim *held* when "
        "its interval lies above 0, is *reversed* when it lies below, is a *tie* when the arms agree on every "
        "document, and is *not resolved* otherwise. \"Approaches dedicated\" holds when the interval's lower "
        f"end is within {100 * APPROACH_MARGIN:.0f} points of dedicated; it is decided by its interval and is "
        "not part of the Holm family (its p-value tests \"no difference\", which is not the claim). Values ×100.",
        "",
        claims_markdown(claims),
        "",
        f"### Sources of variance (primary claim, `{PRIMARY_SHOTS}` shots)",
        "",
        "The primary difference computed on each demonstration draw alone and on each training seed alone "
        "(both arms of the same training seed paired):",
        "",
        spreads_markdown(spread_list),
        "",
        ("Only one training seed ran per arm, so the variance between training runs is **unmeasured**: the "
         "interval above covers documents and demonstration draws, not a re-run of training with another seed."
         if len(spread_list) < 2 else
         "The interval above averages each arm over its training seeds per document; the spread between training "
         "seeds beside the spread between demonstration draws shows which source dominates."),
        "",
        "## Scale caveat",
        "",
        "These numbers come from the model, budgets, documents and seeds stated above, and hold for them only. "
        "At small scale (a model of a few hundred million parameters or less, a few dozen optimizer steps, a "
        "context of a thousand tokens, one training seed) a model learns little in-context and a difference "
        "between arms can come from the recipe as much as from the method; a held or failed claim here says "
        "little about 7-8B models trained for thousands of steps with long contexts, where the paper's claims "
        "were made. Use the `paper` preset on GPUs to test them at that scale.",
    ]
    return "\n".join(parts) + _failures(failed) + "\n"
