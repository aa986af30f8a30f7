"""The leaderboard: one row per model, one column per (task family or task, shot setting), seeds aggregated."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from manyicl.harness.errors import HarnessError
from manyicl.harness.results import ResultRecord
from manyicl.harness.settings import ARMS, FAMILIES, ONE_ANSWER, shots_order

if TYPE_CHECKING:
    from rich.table import Table

METHOD_ORDER = ARMS
FAMILY_ORDER = FAMILIES
ROLES = ("train", "heldout", "probe")
# Train groups carry the bare family or task name; the others are prefixed so unseen tasks read separately.
ROLE_PREFIX = {"train": "", "heldout": "heldout:", "probe": "probe:"}
FORMATS = ("table", "markdown", "csv", "json")
FORGETTING = "forgetting"
MEAN = "mean"


def method_sort_key(method: str) -> tuple[int, str]:
    """Arms in the study's order (base first); unknown arms after, alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def family_sort_key(family: str) -> tuple[int, str]:
    return (FAMILY_ORDER.index(family), "") if family in FAMILY_ORDER else (len(FAMILY_ORDER), family)


@dataclass(frozen=True)
class Cell:
    """One aggregated value in [0, 1] (shown ×100)."""

    mean: float  # mean over seeds (over tasks, then groups, each weighted equally, for aggregate columns)
    std: float | None  # sample standard deviation over seeds; None with fewer than two seeds
    n: int  # seeds behind the spread (for aggregates: the seeds every part of the cell has)


class Column(NamedTuple):
    """A leaderboard column; compares equal to a plain `(group, shots)` tuple."""

    group: str  # family or task (prefixed `heldout:` / `probe:` off the train role), `mean`, or `forgetting`
    shots: str  # "0", "5", ..., "many"; for forgetting the probes' shot settings joined by "/"

    @property
    def kind(self) -> str:
        """score | mean | forgetting."""
        if self.group == FORGETTING:
            return FORGETTING
        return MEAN if self.group.rsplit(":", 1)[-1] == MEAN else "score"

    @property
    def higher_is_better(self) -> bool:
        return self.kind != FORGETTING

    @property
    def label(self) -> str:
        """One-line name, used as the markdown, csv and json key: `classification @5`."""
        return f"{self.group} @{self.shots}"


@dataclass(frozen=True)
class Row:
    model: str
    method: str
    base_model: str


@dataclass
class Leaderboard:
    """Models by columns; `cells` holds only the cells that have a value."""

    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]  # (model, column) -> cell
    best: dict[Column, frozenset[str]]  # models holding the best value; empty with fewer than two cells
    by: str  # family | task
    roles: tuple[str, ...]
    # (model, task, shots) where the model gave one answer to at least ONE_ANSWER of the documents (multiple
    # choice): its score there is the class balance, not skill
    one_answer: tuple[tuple[str, str, str], ...] = ()

    def cell(self, model: str, column: tuple[str, str]) -> Cell | None:
        return self.cells.get((model, Column(*column)))

    def is_best(self, model: str, column: tuple[str, str]) -> bool:
        return model in self.best.get(Column(*column), frozenset())

    def to_dict(self) -> dict:
        """The machine-readable form (values ×100, full precision, with std and n)."""
        return {
            "by": self.by,
            "roles": list(self.roles),
            "scale": 100,
            "columns": [{"key": c.label, "group": c.group, "shots": c.shots, "kind": c.kind,
                         "higher_is_better": c.higher_is_better} for c in self.columns],
            "rows": [{"model": r.model, "method": r.method, "base_model": r.base_model,
                      "cells": {c.label: {"mean": _x100(cell.mean), "std": _x100(cell.std), "n": cell.n,
                                          "best": self.is_best(r.model, c)}
                                for c in self.columns if (cell := self.cell(r.model, c)) is not None}}
                     for r in self.rows],
        }


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class _Score:
    """A value with its per-seed values, so aggregates can carry a spread over seeds."""

    mean: float
    per_seed: dict[int, float]

    def cell(self) -> Cell:
        values = list(self.per_seed.values())
        return Cell(self.mean, statistics.stdev(values) if len(values) > 1 else None, len(values))


def _combine(parts: Iterable[_Score]) -> _Score:
    """Equal-weight mean of the parts; per seed only over the seeds every part has."""
    parts = list(parts)
    seeds = set.intersection(*(set(p.per_seed) for p in parts))
    return _Score(statistics.fmean(p.mean for p in parts),
                  {s: statistics.fmean(p.per_seed[s] for p in parts) for s in sorted(seeds)})


def latest_records(records: Iterable[ResultRecord]) -> list[ResultRecord]:
    """One record per (model, model path, task, shots, seed): a re-run evaluation (later `created`) replaces the
    older one. A row may hold several model paths: a dedicated run has one model per task."""
    kept: dict[tuple[str, str, str, str, int], ResultRecord] = {}
    for record in records:
        key = (record.model, record.model_path, record.task, record.shots, record.seed)
        if key not in kept or record.created >= kept[key].created:
            kept[key] = record
    return list(kept.values())


def _task_scores(records: Iterable[ResultRecord]) -> dict[tuple[str, str, str], _Score]:
    # Several model paths under one row are averaged, weighted by their documents: a dedicated run's per-task models
    # each scored every probe document (equal weights), and a study's training seeds each scored their own share
    # of the documents (so the row's score is the arm's accuracy over every document, as the claims pool it).
    per_path: dict[tuple[str, str, str], dict[int, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))
    for r in latest_records(records):
        per_path[(r.model, r.task, r.shots)][r.seed].append((r.value, r.num_docs))
    per_seed = {key: {seed: math.fsum(v * n for v, n in parts) / sum(n for _, n in parts)
                      for seed, parts in seeds.items()}
                for key, seeds in per_path.items()}
    return {key: _Score(statistics.fmean(seeds.values()), dict(sorted(seeds.items())))
            for key, seeds in per_seed.items()}


def task_scores(records: Iterable[ResultRecord]) -> dict[tuple[str, str, str], Cell]:
    """(model, task, shots) -> mean, std and n over seeds."""
    return {key: score.cell() for key, score in _task_scores(records).items()}


def _forgetting_scores(records: list[ResultRecord]) -> dict[str, dict[str, _Score]]:
    """model -> probe -> base score minus the model's score, matched on (probe, shots), averaged over shots."""
    probes = [r for r in records if r.role == "probe"]
    scores = _task_scores(probes)
    base_by_path: dict[str, str] = {}
    for r in probes:
        if r.method == "base":
            base_by_path.setdefault(r.model_path, r.model)
    out: dict[str, dict[str, list[_Score]]] = defaultdict(lambda: defaultdict(list))
    tuned = {(r.model, r.task, r.shots): r.base_model for r in probes if r.method != "base"}
    for (model, task, shots), base_path in sorted(tuned.items()):
        base_model = base_by_path.get(base_path)
        base = scores.get((base_model, task, shots)) if base_model else None
        if base is None:
            continue
        own = scores[(model, task, shots)]
        seeds = sorted(set(base.per_seed) & set(own.per_seed))
        out[model][task].append(_Score(base.mean - own.mean, {s: base.per_seed[s] - own.per_seed[s] for s in seeds}))
    return {model: {task: _combine(parts) for task, parts in sorted(by_task.items())}
            for model, by_task in out.items()}


def forgetting(records: Iterable[ResultRecord]) -> dict[str, dict[str, float]]:
    """Fine-tuned model -> probe -> forgetting in [−1, 1] (base minus model: positive means worse than base)."""
    return {model: {probe: score.mean for probe, score in probes.items()}
            for model, probes in _forgetting_scores(list(records)).items()}


def forgetting_cells(records: Iterable[ResultRecord]) -> dict[str, dict[str, Cell]]:
    """Like `forgetting`, with the spread over the seeds both the base and the model were scored with."""
    return {model: {probe: score.cell() for probe, score in probes.items()}
            for model, probes in _forgetting_scores(list(records)).items()}


def _rows(records: list[ResultRecord]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for r in records:
        row = Row(r.model, r.method, r.base_model)
        if rows.setdefault(r.model, row) != row:
            old = rows[r.model]
            raise HarnessError(f"Model name {r.model!r} appears as method {old.method!r} (base {old.base_model}) "
                               f"and as {row.method!r} (base {row.base_model}); give the runs distinct names.")
    return rows


def build_leaderboard(records: list[ResultRecord], by: str = "family",
                      roles: tuple[str, ...] = ("train", "heldout")) -> Leaderboard:
    """Aggregate records into a leaderboard.

    Scores are grouped per role (train, then held-out tasks as `heldout:<family>`), one column per group and shot
    setting, followed per role by a `mean` over the groups per shot setting, then a `forgetting` column. A cell
    that aggregates several tasks is filled only when the model has every one of them, so a column compares like
    with like.
    """
    _check_request(by, roles)
    records = latest_records(records)
    if not records:
        raise HarnessError("No result records to rank; pass evaluation or study directories holding summary.jsonl.")
    rows = _rows(records)
    scored = [r for r in records if r.role in roles]
    columns: list[Column] = []
    values: dict[tuple[str, Column], _Score] = {}
    for role in (role for role in ROLES if role in roles):
        _add_role_columns(role, scored, by, list(rows), columns, values)
    _add_forgetting_column(records, columns, values)

    cells = {key: score.cell() for key, score in values.items()}
    columns = [c for c in columns if any(col == c for (_, col) in cells)]
    # a model scored in these roles keeps its row even when no cell is comparable, so the reader sees it exists
    used = {r.model for r in scored} | {model for (model, _) in cells}
    ordered = sorted((rows[m] for m in used), key=lambda r: (*method_sort_key(r.method), r.model))
    if not ordered:
        raise HarnessError(f"No records with role {' or '.join(roles)} and no forgetting probes to rank; "
                           "check --roles or the directories passed.")
    flagged = tuple(sorted({(r.model, r.task, r.shots) for r in records
                            if r.top_share is not None and r.top_share >= ONE_ANSWER and r.role in roles}))
    return Leaderboard(ordered, columns, cells, _best(columns, cells, used), by, tuple(roles), flagged)


def _check_request(by: str, roles: tuple[str, ...]) -> None:
    if by not in ("family", "task"):
        raise HarnessError(f"Unknown leaderboard grouping {by!r}; use `family` or `task`.")
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise HarnessError(f"Unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}.")


def _add_role_columns(role: str, scored: list[ResultRecord], by: str, models: list[str], columns: list[Column],
                      values: dict[tuple[str, Column], _Score]) -> None:
    """One role's group columns (a family or task at a shot setting), then its `mean` columns."""
    scores = _task_scores(scored)
    families = {r.task: r.family for r in scored}
    role_of: dict[tuple[str, str], str] = {}  # (model, task) -> role; a task's role can differ between studies
    for r in scored:
        role_of[(r.model, r.task)] = r.role
    # group -> shots -> tasks that some model has in this role at these shots
    groups: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for (model, task, shots) in scores:
        if role_of[(model, task)] == role:
            groups[families[task] if by == "family" else task][shots].add(task)
    order = sorted(groups, key=lambda g: (*family_sort_key(families.get(g, g) if by == "task" else g), g))
    shot_settings = sorted({s for g in groups.values() for s in g}, key=shots_order)
    group_columns: dict[str, list[Column]] = defaultdict(list)  # shots -> this role's group columns
    for group in order:
        for shots in sorted(groups[group], key=shots_order):
            column = Column(ROLE_PREFIX[role] + group, shots)
            tasks = groups[group][shots]
            for model in models:
                if all((model, t, shots) in scores and role_of.get((model, t)) == role for t in tasks):
                    values[(model, column)] = _combine(scores[(model, t, shots)] for t in sorted(tasks))
            columns.append(column)
            group_columns[shots].append(column)
    if role == "train" or len(groups) > 1:
        for shots in shot_settings:
            column = Column(ROLE_PREFIX[role] + MEAN, shots)
            parts = group_columns[shots]
            for model in models:
                if all((model, c) in values for c in parts):
                    values[(model, column)] = _combine(values[(model, c)] for c in parts)
            columns.append(column)


def _add_forgetting_column(records: list[ResultRecord], columns: list[Column],
                           values: dict[tuple[str, Column], _Score]) -> None:
    """Base minus model on the probes, for models scored on every probe, at the shots the base shares."""
    forgot = _forgetting_scores(records)
    if not forgot:
        return
    base_shots = {r.shots for r in records if r.role == "probe" and r.method == "base"}
    probe_shots = sorted({r.shots for r in records if r.role == "probe" and r.method != "base"} & base_shots,
                         key=shots_order)
    column = Column(FORGETTING, "/".join(probe_shots))
    probes = set().union(*(set(p) for p in forgot.values()))
    for model, per_probe in forgot.items():
        if set(per_probe) == probes:
            values[(model, column)] = _combine(per_probe[p] for p in sorted(probes))
    columns.append(column)


def _best(columns: list[Column], cells: dict[tuple[str, Column], Cell], used: set[str]) -> dict[Column, frozenset[str]]:
    """Per column, the models holding the best value (ties included); none with fewer than two filled cells."""
    best: dict[Column, frozenset[str]] = {}
    for column in columns:
        filled = {m: cells[(m, column)].mean for m in used if (m, column) in cells}
        target = (max if column.higher_is_better else min)(filled.values())
        best[column] = frozenset(m for m, v in filled.items() if math.isclose(v, target, abs_tol=1e-12)
                                 ) if len(filled) > 1 else frozenset()
    return best


# --------------------------------------------------------------------------- rendering


def _x100(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 6)


def _common_n(lb: Leaderboard) -> int:
    return Counter(cell.n for cell in lb.cells.values()).most_common(1)[0][0]


def _cell_text(cell: Cell, common_n: int) -> str:
    text = f"{100 * cell.mean:.1f}"
    if cell.std is not None:
        text += f" ± {100 * cell.std:.1f}"
    if cell.n != common_n:
        text += f" (n={cell.n})"
    return text


def _note(lb: Leaderboard, bold: str) -> str:
    n = _common_n(lb)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    note = f"Scores ×100: mean ± sample std over {seeds} (n= where a cell has another count); {bold} = best in column."
    if any(c.kind == FORGETTING for c in lb.columns):
        note += " Forgetting = base minus model on the probes (lower is better; positive = worse than base)."
    if lb.one_answer:
        note += (f" One answer to ≥ {100 * ONE_ANSWER:.0f}% of the documents (the score is the class balance, not "
                 "skill): " + ", ".join(f"{m} on {t} at {s} shots" for m, t, s in lb.one_answer) + ".")
    return note


def _table(lb: Leaderboard) -> Table:
    from rich.table import Table
    from rich.text import Text

    n = _common_n(lb)
    table = Table(title=f"Leaderboard by {lb.by}", caption=_note(lb, "★ bold green"), caption_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for c in lb.columns:
        header = f"forgetting ↓\n{c.shots}-shot probes" if c.kind == FORGETTING else f"{c.group}\n{c.shots}-shot"
        table.add_column(header, justify="right", style="bold" if c.kind == MEAN else None)
    for row in lb.rows:
        cells: list[Text | str] = [row.model, row.method]
        for c in lb.columns:
            cell = lb.cell(row.model, c)
            if cell is None:
                cells.append(Text("—", style="dim"))
            elif lb.is_best(row.model, c):
                cells.append(Text(_cell_text(cell, n) + " ★", style="bold green"))
            else:
                cells.append(Text(_cell_text(cell, n)))
        table.add_row(*cells)
    return table


def _markdown(lb: Leaderboard) -> str:
    n = _common_n(lb)
    lines = ["| model | method | " + " | ".join(c.label for c in lb.columns) + " |",
             "|---|---|" + "---:|" * len(lb.columns)]
    for row in lb.rows:
        texts = []
        for c in lb.columns:
            cell = lb.cell(row.model, c)
            text = "—" if cell is None else _cell_text(cell, n)
            texts.append(f"**{text}**" if lb.is_best(row.model, c) else text)
        lines.append(f"| {row.model} | {row.method} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n\n" + _note(lb, "**bold**") + "\n"


def _csv(lb: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "method", "base_model"]
                    + [h for c in lb.columns for h in (c.label, f"{c.label} std", f"{c.label} n")])
    for row in lb.rows:
        values: list[str | int] = [row.model, row.method, row.base_model]
        for c in lb.columns:
            cell = lb.cell(row.model, c)
            if cell is None:
                values += ["", "", ""]
            else:
                values += [f"{100 * cell.mean:.1f}", "" if cell.std is None else f"{100 * cell.std:.1f}", cell.n]
        writer.writerow(values)
    return out.getvalue()


def render(lb: Leaderboard, fmt: str = "table") -> str | Table:
    """`table` gives a rich Table; `markdown`, `csv` and `json` give text."""
    if fmt not in FORMATS:
        raise HarnessError(f"Unknown leaderboard format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if not lb.rows or not lb.columns:
        raise HarnessError("The leaderboard is empty: no records to show.")
    if fmt == "table":
        return _table(lb)
    if fmt == "markdown":
        return _markdown(lb)
    if fmt == "csv":
        return _csv(lb)
    return json.dumps(lb.to_dict(), indent=2) + "\n"
