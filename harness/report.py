"""A study's outputs: leaderboard files, plots, and REPORT.md, which states from the numbers whether each claim held."""

from __future__ import annotations

import datetime as dt
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.results import ResultRecord, read_records
from harness.runs import atomic_write_text, hardware, read_json

if TYPE_CHECKING:
    from harness.study import StageResult, StudyConfig

Z = 2.0  # a difference counts when it exceeds two standard errors


@dataclass(frozen=True)
class Estimate:
    """A mean score over tasks (or probes) with its standard error, in [0, 1]."""

    value: float
    se: float
    parts: int

    def minus(self, other: Estimate) -> Estimate:
        return Estimate(self.value - other.value, math.hypot(self.se, other.se), min(self.parts, other.parts))


def _arm_records(records: list[ResultRecord]) -> dict[str, list[ResultRecord]]:
    by_method: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    return by_method


def estimate(records: list[ResultRecord], role: str, shots: str | None) -> Estimate | None:
    """Mean over tasks of (mean over seeds and models) with a standard error from lm-eval's per-document stderr."""
    per_task: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        if r.role == role and (shots is None or r.shots == shots):
            per_task[r.task].append(r)
    if not per_task:
        return None
    values, variances = [], []
    for rows in per_task.values():
        values.append(statistics.fmean(r.value for r in rows))
        errs = [r.stderr or 0.0 for r in rows]
        variances.append(statistics.fmean(e * e for e in errs) / len(rows))
    return Estimate(statistics.fmean(values), math.sqrt(sum(variances)) / len(values), len(values))


def verdict(diff: Estimate, higher_is_better: bool = True) -> str:
    signed = diff.value if higher_is_better else -diff.value
    if signed > Z * diff.se:
        return "held"
    if signed < -Z * diff.se:
        return "reversed"
    return "not resolved (within noise)"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}" if x else "0.0"


def _claim_rows(records: list[ResultRecord], shots_list: list[str]) -> list[dict[str, Any]]:
    arms = _arm_records(records)
    rows: list[dict[str, Any]] = []

    def compare(claim: str, a: str, b: str, role: str, shots: str | None, higher: bool = True) -> None:
        if a not in arms or b not in arms:
            rows.append({"claim": claim, "shots": shots or "all", "a": a, "b": b, "result": "not run"})
            return
        ea, eb = estimate(arms[a], role, shots), estimate(arms[b], role, shots)
        if ea is None or eb is None:
            rows.append({"claim": claim, "shots": shots or "all", "a": a, "b": b, "result": "no scores"})
            return
        diff = ea.minus(eb)
        rows.append({"claim": claim, "shots": shots or "all", "a": a, "b": b, "va": ea.value, "vb": eb.value,
                     "diff": diff.value, "se": diff.se, "result": verdict(diff, higher)})

    for shots in [*shots_list, None]:
        compare("ManyICL beats zero-shot fine-tuning", "manyicl", "zero-shot", "train", shots)
        compare("ManyICL beats few-shot fine-tuning", "manyicl", "few-shot", "train", shots)
        compare("Loss on every answer beats loss on the last (ablation)", "manyicl", "many-shot-last", "train", shots)
        compare("ManyICL approaches dedicated fine-tuning (gap = ManyICL − dedicated)", "manyicl", "dedicated",
                "train", shots)
    probe_shots = sorted({r.shots for r in records if r.role == "probe"})
    for shots in probe_shots:
        compare("ManyICL forgets less than zero-shot FT (probe score difference)", "manyicl", "zero-shot", "probe", shots)
        compare("ManyICL forgets less than few-shot FT (probe score difference)", "manyicl", "few-shot", "probe", shots)
        compare("ManyICL keeps the base model's probe scores (ManyICL − base)", "manyicl", "base", "probe", shots)
    if any(r.role == "heldout" for r in records):
        for shots in [*shots_list, None]:
            compare("On unseen tasks ManyICL beats zero-shot FT", "manyicl", "zero-shot", "heldout", shots)
            compare("On unseen tasks ManyICL beats few-shot FT", "manyicl", "few-shot", "heldout", shots)
            compare("On unseen tasks ManyICL beats the base model", "manyicl", "base", "heldout", shots)
    return rows


APPROACH_MARGIN = 0.05  # "approaches dedicated": the gap is shown to be under 5 points


def _dedicated_sentence(row: dict[str, Any]) -> str:
    """"Approaches" needs evidence of closeness, not just a gap hidden in the noise: it holds when even the
    pessimistic end of the interval (gap − 2 SE) is within APPROACH_MARGIN of dedicated."""
    if "diff" not in row:
        return row["result"]
    low, high = row["diff"] - Z * row["se"], row["diff"] + Z * row["se"]
    if low >= -APPROACH_MARGIN:
        return "held" if low < 0 else "held (ManyICL above dedicated)"
    if high < 0:
        return "not held (dedicated measurably better)"
    return f"not resolved (interval reaches below −{100 * APPROACH_MARGIN:.0f} points)"


def claims_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| claim | shots | A | B | A (×100) | B (×100) | A − B (±2 SE) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        result = _dedicated_sentence(r) if "dedicated" in r["claim"] else r["result"]
        if "diff" in r:
            lines.append(f"| {r['claim']} | {r['shots']} | {r['a']} | {r['b']} | {100 * r['va']:.1f} | "
                         f"{100 * r['vb']:.1f} | {_pct(r['diff'])} ± {200 * r['se']:.1f} | {result} |")
        else:
            lines.append(f"| {r['claim']} | {r['shots']} | {r['a']} | {r['b']} | | | | {result} |")
    return "\n".join(lines)


def budgets_markdown(root: Path) -> str:
    lines = ["| arm | steps | tokens seen | targets seen | examples seen | train time (s) | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for manifest in sorted((root / "runs").glob("*/manifest.json")):
        m = read_json(manifest)
        seen = m.get("seen", {})
        steps = m.get("steps", "")
        if m.get("method") == "dedicated":
            steps = "per task: " + ", ".join(f"{n}={read_json(Path(p).parent / 'manifest.json').get('steps')}"
                                             for n, p in m.get("models", {}).items())
        lines.append(f"| {manifest.parent.name} | {steps} | {seen.get('tokens', '')} | {seen.get('targets', '')} | "
                     f"{seen.get('examples', '')} | {m.get('train_time_s', m.get('wall_time_s', ''))} | "
                     f"{m.get('tokens_per_second', '')} |")
    return "\n".join(lines)


def write_outputs(cfg: StudyConfig, stages: list[StageResult]) -> dict[str, Path]:
    """Leaderboard (printed, markdown, CSV, JSON), plots, and REPORT.md for a study directory."""
    from rich.console import Console

    from harness.leaderboard import build_leaderboard, render
    from harness.plots import plot_forgetting, plot_scores_vs_shots

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
    claims = _claim_rows(records, shots_list)
    report = _report_text(cfg, records, board, claims, failed, render)
    atomic_write_text(root / "REPORT.md", report)
    outputs["report"] = root / "REPORT.md"
    return outputs


def _failures(failed: list) -> str:
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
        claims_markdown([c for c in claims if c["shots"] == "all" or "probe" in c["claim"] or "base model's" in c["claim"]]),
        "",
        "At each shot setting:",
        "",
        claims_markdown([c for c in claims if not (c["shots"] == "all" or "probe" in c["claim"] or "base model's" in c["claim"])]),
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
