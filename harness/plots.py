"""Figures from result records: score against shot setting per task, and forgetting per probe."""

from __future__ import annotations

import math
import os
import statistics
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from manyicl.harness.errors import HarnessError
from manyicl.harness.leaderboard import (
    _combine,
    _forgetting_scores,
    family_sort_key,
    latest_records,
    method_sort_key,
    task_scores,
)
from manyicl.harness.results import ResultRecord
from manyicl.harness.runs import blocking_file
from manyicl.harness.settings import shots_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
ROLE_NOTE = {"train": "", "heldout": ", held-out"}


def _series_labels(records: list[ResultRecord]) -> dict[str, str]:
    """model -> legend label: the method alone when it has one model, else `method: model`; in arm order."""
    methods = {r.model: r.method for r in records}
    per_method: dict[str, int] = defaultdict(int)
    for method in methods.values():
        per_method[method] += 1
    ordered = sorted(methods, key=lambda m: (*method_sort_key(methods[m]), m))
    return {m: methods[m] if per_method[methods[m]] == 1 else f"{methods[m]}: {m}" for m in ordered}


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig: Figure, out_path: Path) -> Path:
    """Render with Agg into a temporary file beside the target, then rename it into place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise HarnessError(f"Cannot write {out_path}: {blocking_file(out_path.parent)} is a file, not a folder; "
                           "choose another --output-dir.") from None
    except OSError as err:
        raise HarnessError(f"Cannot create the folder {out_path.parent} ({err.strerror}); choose another "
                           "--output-dir.") from None
    if out_path.is_dir():
        raise HarnessError(f"Cannot write {out_path}: a folder of that name is in the way; move it or choose "
                           "another --output-dir.")
    FigureCanvasAgg(fig)
    fmt = out_path.suffix.lstrip(".").lower() or "png"
    # a fresh name rather than mkstemp, so the figure gets the usual permissions rather than 0600
    tmp = out_path.parent / f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{fmt}"
    try:
        fig.savefig(tmp, dpi=DPI, format=fmt)
        os.replace(tmp, out_path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise HarnessError(f"Cannot write {out_path} ({err.strerror}); choose another --output-dir or free space."
                           ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def plot_scores_vs_shots(records: list[ResultRecord], out_path: Path) -> Path:
    """One panel per train or held-out task: score ×100 against shot setting, a line per model, std over seeds."""
    from matplotlib.figure import Figure

    records = [r for r in latest_records(records) if r.role in ("train", "heldout")]
    if not records:
        raise HarnessError("Nothing to plot: no records of train or held-out tasks; pass evaluation or study "
                           "directories holding summary.jsonl.")
    scores = task_scores(records)
    labels = _series_labels(records)
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    info = {r.task: (r.family, r.metric) for r in records}
    roles: dict[str, set[str]] = defaultdict(set)
    for r in records:
        roles[r.task].add(r.role)
    tasks = sorted(info, key=lambda t: ("train" not in roles[t], *family_sort_key(info[t][0]), t))

    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks, strict=False):
        family, metric = info[task]
        shots = sorted({s for (_, t, s) in scores if t == task}, key=shots_order)
        ticks = []
        for s in shots:
            used = [r.shots_mean for r in records if r.task == task and r.shots == s]
            ticks.append(f"{s} (≈{statistics.fmean(used):.0f})" if s == "many" else s)
        models = [m for m in labels if any((m, task, s) in scores for s in shots)]
        for i, model in enumerate(models):
            xs, ys, errs = [], [], []
            for x, s in enumerate(shots):
                cell = scores.get((model, task, s))
                if cell is not None:
                    # a small sideways offset per line keeps overlapping error bars apart
                    xs.append(x + 0.06 * (i - (len(models) - 1) / 2))
                    ys.append(100 * cell.mean)
                    errs.append(100 * (cell.std or 0.0))
            ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=4, capsize=3, linewidth=1.5,
                        color=colors[model], label=labels[model])
        role = "/".join(sorted(roles[task])) if len(roles[task]) > 1 else next(iter(roles[task]))
        ax.set_title(f"{task} ({family}{ROLE_NOTE.get(role, ', ' + role)})", fontsize=11)
        ax.set_xticks(range(len(shots)), ticks)
        ax.set_xlim(-0.4, len(shots) - 0.6)
        ax.set_xlabel("demonstrations in the prompt")
        ax.set_ylabel(f"{metric} ×100")
        ax.grid(axis="y", alpha=0.3)
    handles, names = [], []
    for ax in axes[: len(tasks)]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    order = [names.index(label) for label in labels.values() if label in names]
    fig.legend([handles[i] for i in order], [names[i] for i in order], loc="outside lower center",
               ncols=min(len(order), 4), frameon=False)
    fig.suptitle("Score against shot setting (mean ± std over seeds)", fontsize=12)
    return _save(fig, out_path)


def plot_forgetting(records: list[ResultRecord], out_path: Path) -> Path:
    """Grouped bars per fine-tuned model: forgetting (base minus model, ×100) per probe and their mean."""
    from matplotlib.figure import Figure

    records = latest_records(records)
    scores = _forgetting_scores(records)
    if not scores:
        raise HarnessError("Nothing to plot: no probe records of a fine-tuned model matched by its base model's "
                           "probe records (method `base`, model_path equal to the model's base_model).")
    labels = {m: label for m, label in _series_labels(records).items() if m in scores}
    probes = sorted(set().union(*(set(p) for p in scores.values())))
    bars = [*probes, "mean"]
    colors = dict(zip(probes, _colors(len(probes)), strict=True))
    width = 0.8 / len(bars)
    fig = Figure(figsize=(max(7.5, min(18.0, 2.0 + len(labels) * (0.4 * len(bars) + 0.5))), 4.4),
                 layout="constrained")
    ax = fig.add_subplot()
    for j, name in enumerate(bars):
        xs, ys, errs = [], [], []
        for i, model in enumerate(labels):
            per_probe = scores[model]
            if name == "mean":
                score = _combine(per_probe.values())
            elif name in per_probe:
                score = per_probe[name]
            else:
                continue
            xs.append(i + (j - (len(bars) - 1) / 2) * width)
            ys.append(100 * score.mean)
            cell = score.cell()
            errs.append(100 * (cell.std or 0.0))
        if name == "mean":
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color="0.25", edgecolor="black", label="mean over probes")
            for x, y, err in zip(xs, ys, errs, strict=True):
                # the value sits beyond the error bar, on the side the bar points to
                ax.annotate(f"{y:+.1f}", (x, y + math.copysign(err, y)), xytext=(0, 3 if y >= 0 else -3),
                            textcoords="offset points", ha="center", va="bottom" if y >= 0 else "top",
                            fontsize=8, fontweight="bold")
        else:
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color=colors[name], label=name)
    ax.axhline(0, color="black", linewidth=0.9)
    crowded = len(labels) > 4
    ax.set_xticks(range(len(labels)), list(labels.values()), rotation=20 if crowded else 0,
                  ha="right" if crowded else "center")
    ax.set_ylabel("forgetting ×100 (base − model)")
    fig.suptitle("Forgetting on probe tasks (mean ± std over seeds): above zero = worse than the base model",
                 fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    fig.legend(loc="outside lower center", ncols=min(len(bars), 6), frameon=False, fontsize=9)
    return _save(fig, out_path)


def plot_learning_curves(points: dict[str, list[tuple[int, int, float]]], out_path: Path, shots: str = "many") -> Path:
    """Score ×100 against tokens seen (left) and targets seen (right), one line per arm: the efficiency argument.
    `points`: arm -> [(tokens, targets, score in [0, 1])] at its curve points."""
    from matplotlib.figure import Figure

    series = {arm: sorted(p) for arm, p in points.items() if p}
    if not series:
        raise HarnessError("No learning-curve points to plot; set train.curve_points in the study.")
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    arms = sorted(series, key=method_sort_key)
    for color, arm in zip(_colors(len(arms)), arms, strict=True):
        tokens, targets, scores = zip(*series[arm], strict=True)
        for ax, xs in zip(axes, (tokens, targets), strict=True):
            ax.plot(xs, [100 * s for s in scores], marker="o", color=color, label=arm)
    for ax, what in zip(axes, ("tokens seen", "targets (supervised answers) seen"), strict=True):
        ax.set_xlabel(what)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"mean score over training tasks @{shots} (×100)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Learning curves: the same checkpoints against tokens and against targets")
    fig.tight_layout()
    return _save(fig, out_path)


def plot_training_loss(losses: dict[str, list[tuple[int, float]]], out_path: Path) -> Path:
    """Training loss against optimizer step, one line per arm (per task model for dedicated runs)."""
    from matplotlib.figure import Figure

    series = {name: sorted(v) for name, v in losses.items() if v}
    if not series:
        raise HarnessError("No training loss was logged; train_log.jsonl files are missing or empty.")
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    names = sorted(series, key=lambda n: (*method_sort_key(n.split(":")[0]), n))
    for color, name in zip(_colors(len(names)), names, strict=True):
        steps, values = zip(*series[name], strict=True)
        ax.plot(steps, values, color=color, label=name, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over trained tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Training loss per arm")
    fig.tight_layout()
    return _save(fig, out_path)
