"""A study's outputs: leaderboard files, plots, and REPORT.md, which states from the numbers whether each claim held."""

from __future__ import annotations

import datetime as dt
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.claims import APPROACH_MARGIN, claim_rows, claims_markdown
from harness.errors import HarnessError
from harness.leaderboard import build_leaderboard, render
from harness.plots import plot_forgetting, plot_scores_vs_shots
from harness.results import ResultRecord, read_records
from harness.runs import atomic_write_text, hardware
from harness.schemas import MANIFEST_FILE, StageResult, TrainManifest
from harness.settings import StudyConfig


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
    shots_list = sorted({r.shots for r in records if r.role != "probe"}, key=lambda s: math.inf if s == "many" else int(s))
    claims = claim_rows(records, shots_list)
    report = _report_text(cfg, records, board, claims, failed, render)
    atomic_write_text(root / "REPORT.md", report)
    outputs["report"] = root / "REPORT.md"
    return outputs


def _averaged(row: dict[str, Any]) -> bool:
    """Rows of the "averaged over the shot settings" table: the all-shots rows, and the probe rows (probes are
    scored at their own shots only, so they have no per-shot table)."""
    return row["shots"] == "all" or row["role"] == "probe"


def _failures(failed: list[StageResult]) -> str:
    if not failed:
        return ""
    lines = ["\n\n## Stages that did not finish\n"]
    lines += [f"- `{s.name}`: {s.status}; log: `{s.log}`" for s in failed]
    return "\n".join(lines) + "\n"


def _report_text(cfg: StudyConfig, records: list[ResultRecord], board, claims, failed, render) -> str:
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
        "- Spread: ± values are two standard errors of the mean over documents (lm-eval's stderr), combined over "
        "tasks; with several seeds the leaderboard also shows the spread over seeds.",
        "",
        "## Budgets actually spent",
        "",
        budgets_markdown(cfg.directory),
        "",
        "## Leaderboard (×100; best in each column in bold)",
        "",
        str(render(board, "markdown")),
        "",
        "Per task: `leaderboard_by_task.md`. Plots: `plots/scores_vs_shots.png`, `plots/forgetting.png`.",
        "",
        "## Did the claims hold?",
        "",
        "A claim *held* when the difference is in its favour by more than two standard errors, is *reversed* when "
        "it is against it by more than that, and is *not resolved* otherwise. \"Approaches dedicated\" holds when the "
        f"gap to dedicated, minus two standard errors, is still within {100 * APPROACH_MARGIN:.0f} points.",
        "",
        "Averaged over the shot settings (probes at their own shots):",
        "",
        claims_markdown([c for c in claims if _averaged(c)]),
        "",
        "At each shot setting:",
        "",
        claims_markdown([c for c in claims if not _averaged(c)]),
        "",
        "## Scale caveat",
        "",
        "These numbers come from the model, budgets, documents and seeds stated above. At small scale (a "
        "135M-parameter model, a few dozen optimizer steps, tens of documents per task) the differences between arms "
        "are of the order of the noise, a model this size learns little in-context, and a held or failed claim here "
        "says little about 7-8B models trained for thousands of steps with long contexts, where the paper's claims "
        "were made. Use the `paper` preset on GPUs to test them at that scale.",
    ]
    return "\n".join(parts) + _failures(failed) + "\n"
