"""Leaderboard aggregation and rendering on hand-built records with hand-computed numbers."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from rich.console import Console
from rich.table import Table

from manyicl.harness.errors import HarnessError
from manyicl.harness.leaderboard import (
    Cell,
    Column,
    build_leaderboard,
    forgetting,
    forgetting_cells,
    latest_records,
    render,
)
from manyicl.harness.results import ResultRecord

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
FAMILY = {"sst2": "classification", "trec": "classification", "rte": "nli", "cb": "nli", "piqa": "qa", "mmlu": "qa"}
ROLE = {"sst2": "train", "trec": "train", "rte": "train", "cb": "heldout", "piqa": "probe", "mmlu": "probe"}

# model -> (method, task -> shots -> (seed 0 value, seed 1 value))
SCORES = {
    "smollm2-135m": ("base", {
        "sst2": {"0": (0.50, 0.60), "5": (0.60, 0.70), "many": (0.70, 0.80)},
        "trec": {"0": (0.20, 0.20), "5": (0.30, 0.40), "many": (0.40, 0.40)},
        "rte": {"0": (0.50, 0.50), "5": (0.55, 0.55), "many": (0.60, 0.60)},
        "cb": {"0": (0.40, 0.40), "5": (0.45, 0.45), "many": (0.50, 0.50)},
        "piqa": {"0": (0.70, 0.70)},
        "mmlu": {"0": (0.40, 0.40)},
    }),
    "run-manyicl": ("manyicl", {
        "sst2": {"0": (0.80, 0.90), "5": (0.85, 0.85), "many": (0.90, 0.92)},
        "trec": {"0": (0.60, 0.70), "5": (0.70, 0.70), "many": (0.80, 0.80)},
        "rte": {"0": (0.70, 0.60), "5": (0.70, 0.70), "many": (0.75, 0.75)},
        "cb": {"0": (0.50, 0.50), "5": (0.60, 0.60), "many": (0.65, 0.65)},
        "piqa": {"0": (0.65, 0.65)},
        "mmlu": {"0": (0.40, 0.38)},
    }),
    "run-few": ("few-shot", {
        "sst2": {"0": (0.60, 0.60), "5": (0.90, 0.94), "many": (0.80, 0.80)},
        "trec": {"0": (0.30, 0.30), "5": (0.60, 0.60), "many": (0.50, 0.50)},
        "rte": {"0": (0.50, 0.50), "5": (0.60, 0.60), "many": (0.55, 0.55)},
        "cb": {"0": (0.40, 0.40), "5": (0.50, 0.50), "many": (0.45, 0.45)},
        "piqa": {"0": (0.72, 0.72)},
        "mmlu": {"0": (0.41, 0.41)},
    }),
    # a dedicated model scored on its own task only: family and mean cells stay empty for it
    "run-dedicated-sst2": ("dedicated", {
        "sst2": {"0": (0.88, 0.88), "5": (0.89, 0.89), "many": (0.95, 0.95)},
    }),
}


def record(model: str, method: str, task: str, shots: str, seed: int, value: float, **over) -> ResultRecord:
    path = BASE if method == "base" else f"/results/runs/{model}"
    fields = dict(model=model, model_path=path, base_model=BASE, method=method, task=task, family=FAMILY[task],
                  role=ROLE[task], shots=shots, shots_min=0 if shots == "0" else 5,
                  shots_mean={"0": 0.0, "5": 5.0}.get(shots, 41.5), shots_max=0 if shots == "0" else 60,
                  metric="accuracy", value=value, stderr=0.01, seed=seed, num_docs=100, backend="hf",
                  format="chat", max_length=2048, created="2025-01-01T00:00:00+00:00")
    fields.update(over)
    return ResultRecord(**fields)


def build_records() -> list[ResultRecord]:
    return [record(model, method, task, shots, seed, value)
            for model, (method, tasks) in SCORES.items()
            for task, by_shots in tasks.items()
            for shots, values in by_shots.items()
            for seed, value in enumerate(values)]


@pytest.fixture
def records() -> list[ResultRecord]:
    return build_records()


@pytest.fixture
def lb(records):
    return build_leaderboard(records)


def close(cell: Cell | None, mean: float, std: float | None, n: int) -> None:
    assert cell is not None
    assert cell.mean == pytest.approx(mean, abs=1e-9)
    assert (cell.std is None) if std is None else cell.std == pytest.approx(std, abs=1e-9)
    assert cell.n == n


def test_columns_by_family_in_order_with_many_last_then_mean_heldout_forgetting(lb):
    expected = [(group, shots) for group in ("classification", "nli", "mean", "heldout:nli")
                for shots in ("0", "5", "many")] + [("forgetting", "0")]
    assert lb.columns == expected
    assert [c.kind for c in lb.columns[-4:]] == ["score", "score", "score", "forgetting"]
    assert lb.columns[6].kind == "mean"


def test_rows_base_first_then_method_order(lb):
    assert [(r.model, r.method) for r in lb.rows] == [
        ("smollm2-135m", "base"), ("run-few", "few-shot"), ("run-manyicl", "manyicl"),
        ("run-dedicated-sst2", "dedicated")]


def test_family_cells_average_tasks_and_spread_over_seeds(lb):
    # classification @0 for manyicl: sst2 (0.80, 0.90), trec (0.60, 0.70) -> per seed 0.70, 0.80
    close(lb.cell("run-manyicl", ("classification", "0")), 0.75, math.sqrt(0.005), 2)
    # a single task's cell: rte (0.70, 0.60)
    close(lb.cell("run-manyicl", ("nli", "0")), 0.65, math.sqrt(0.005), 2)
    # mean over the groups: per seed (0.70 + 0.70) / 2 and (0.80 + 0.60) / 2 -> no spread
    close(lb.cell("run-manyicl", ("mean", "0")), 0.70, 0.0, 2)
    close(lb.cell("smollm2-135m", ("classification", "5")), 0.50, math.sqrt(0.005), 2)
    close(lb.cell("run-few", ("heldout:nli", "many")), 0.45, 0.0, 2)


def test_aggregate_cells_need_every_task(lb):
    assert lb.cell("run-dedicated-sst2", ("classification", "0")) is None
    assert lb.cell("run-dedicated-sst2", ("mean", "many")) is None
    assert lb.cell("run-dedicated-sst2", ("forgetting", "0")) is None
    assert lb.cell("smollm2-135m", ("forgetting", "0")) is None  # the base model is the reference


def test_forgetting_is_base_minus_model_per_probe(records, lb):
    assert forgetting(records) == {
        "run-few": {"mmlu": pytest.approx(-0.01), "piqa": pytest.approx(-0.02)},
        "run-manyicl": {"mmlu": pytest.approx(0.01), "piqa": pytest.approx(0.05)},
    }
    cells = forgetting_cells(records)
    close(cells["run-manyicl"]["mmlu"], 0.01, math.sqrt(0.0002), 2)  # per seed 0.00 and 0.02
    # manyicl: per seed (0.05 + 0.00) / 2 and (0.05 + 0.02) / 2
    close(lb.cell("run-manyicl", ("forgetting", "0")), 0.03, math.sqrt(0.00005), 2)
    close(lb.cell("run-few", ("forgetting", "0")), -0.015, 0.0, 2)


def test_forgetting_only_against_the_matching_base(records):
    other = [record("other-base", "base", "piqa", "0", s, 0.99, model_path="other/base", base_model="other/base")
             for s in (0, 1)]
    assert forgetting(records + other)["run-manyicl"]["piqa"] == pytest.approx(0.05)
    no_base = [r for r in records if r.method != "base"]
    assert forgetting(no_base) == {}


def test_best_is_max_for_scores_and_min_for_forgetting(lb):
    assert lb.best[Column("classification", "5")] == {"run-manyicl"}  # 0.775 against 0.76 and 0.50
    assert lb.best[Column("heldout:nli", "many")] == {"run-manyicl"}
    assert lb.best[Column("forgetting", "0")] == {"run-few"}  # -0.015 is lowest
    assert lb.is_best("run-few", ("forgetting", "0"))
    assert not lb.is_best("run-manyicl", ("forgetting", "0"))


def test_by_task_gives_one_column_per_task_and_shots(records):
    lb = build_leaderboard(records, by="task")
    groups = list(dict.fromkeys(c.group for c in lb.columns))
    assert groups == ["sst2", "trec", "rte", "mean", "heldout:cb", "forgetting"]
    assert [c.shots for c in lb.columns if c.group == "sst2"] == ["0", "5", "many"]
    close(lb.cell("run-dedicated-sst2", ("sst2", "many")), 0.95, 0.0, 2)
    assert lb.best[Column("sst2", "many")] == {"run-dedicated-sst2"}
    assert lb.best[Column("sst2", "5")] == {"run-few"}  # 0.92
    # mean over the three tasks at 5 shots for manyicl: (0.85 + 0.70 + 0.70) / 3
    close(lb.cell("run-manyicl", ("mean", "5")), 0.75, 0.0, 2)


def test_roles_select_the_score_columns(records):
    lb = build_leaderboard(records, roles=("heldout",))
    assert [c.group for c in lb.columns] == ["heldout:nli"] * 3 + ["forgetting"]
    probes = build_leaderboard(records, roles=("train", "probe"), by="task")
    assert ("probe:piqa", "0") in probes.columns and ("probe:mmlu", "0") in probes.columns
    assert ("probe:mean", "0") in probes.columns
    close(probes.cell("run-manyicl", ("probe:mean", "0")), (0.65 + 0.39) / 2, math.sqrt(0.0002) / 2, 2)


def test_latest_record_replaces_an_earlier_run(records):
    rerun = record("run-manyicl", "manyicl", "sst2", "0", 0, 0.20, created="2025-02-01T00:00:00+00:00")
    lb = build_leaderboard(records + [rerun], by="task")
    close(lb.cell("run-manyicl", ("sst2", "0")), 0.55, math.sqrt(0.245), 2)
    assert len(latest_records(records + [rerun])) == len(records)


def test_markdown(lb):
    text = render(lb, "markdown")
    lines = text.splitlines()
    assert lines[0] == ("| model | method | classification @0 | classification @5 | classification @many | nli @0 | "
                        "nli @5 | nli @many | mean @0 | mean @5 | mean @many | heldout:nli @0 | heldout:nli @5 | "
                        "heldout:nli @many | forgetting @0 |")
    assert lines[1] == "|---|---|" + "---:|" * 13
    manyicl = next(line for line in lines if line.startswith("| run-manyicl |"))
    cells = [c.strip() for c in manyicl.strip("|").split("|")]
    assert cells[2] == "**75.0 ± 7.1**"  # classification @0: few-shot has 45.0, base 37.5
    assert cells[3] == "**77.5 ± 0.0**"
    assert cells[-1] == "3.0 ± 0.7"
    few = next(line for line in lines if line.startswith("| run-few |"))
    assert few.endswith("| **-1.5 ± 0.0** |")
    dedicated = next(line for line in lines if line.startswith("| run-dedicated-sst2 |"))
    assert dedicated.count("—") == 13
    assert "over 2 seeds" in text and "base minus model" in text


def test_markdown_marks_cells_with_another_seed_count(records):
    extra = record("run-manyicl", "manyicl", "rte", "0", 2, 0.65)
    text = render(build_leaderboard(records + [extra]), "markdown")
    row = next(line for line in text.splitlines() if line.startswith("| run-manyicl |"))
    # nli @0 has three seeds (0.70, 0.60, 0.65); classification @0 still two, the usual count
    assert "| **65.0 ± 5.0 (n=3)** |" in row
    assert "| **75.0 ± 7.1** |" in row


def test_csv(lb):
    rows = list(csv.DictReader(io.StringIO(render(lb, "csv"))))
    assert [r["model"] for r in rows] == ["smollm2-135m", "run-few", "run-manyicl", "run-dedicated-sst2"]
    manyicl = rows[2]
    assert manyicl["method"] == "manyicl" and manyicl["base_model"] == BASE
    assert (manyicl["classification @0"], manyicl["classification @0 std"], manyicl["classification @0 n"]) == \
        ("75.0", "7.1", "2")
    assert manyicl["forgetting @0"] == "3.0"
    assert rows[0]["forgetting @0"] == "" and rows[3]["mean @many"] == ""


def test_json_holds_std_n_and_best(lb):
    data = json.loads(render(lb, "json"))
    assert data["by"] == "family" and data["scale"] == 100
    assert data["columns"][-1] == {"key": "forgetting @0", "group": "forgetting", "shots": "0",
                                   "kind": "forgetting", "higher_is_better": False}
    row = next(r for r in data["rows"] if r["model"] == "run-manyicl")
    cell = row["cells"]["classification @0"]
    assert cell["mean"] == pytest.approx(75.0) and cell["std"] == pytest.approx(100 * math.sqrt(0.005))
    assert cell["n"] == 2 and cell["best"] is True
    assert row["cells"]["forgetting @0"]["best"] is False
    dedicated = next(r for r in data["rows"] if r["model"] == "run-dedicated-sst2")
    assert dedicated["cells"] == {}


def test_rich_table_marks_the_best(lb):
    table = render(lb, "table")
    assert isinstance(table, Table)
    assert len(table.columns) == 2 + len(lb.columns)
    console = Console(record=True, width=400, color_system=None)
    console.print(table)
    body, caption = console.export_text().split("Scores ×100")
    assert body.count("★") == sum(len(models) for models in lb.best.values()) == 13
    assert "★ bold green = best" in caption
    best_cell = table.columns[2 + lb.columns.index(Column("forgetting", "0"))]._cells[1]  # run-few's row
    assert "★" in best_cell.plain and "green" in str(best_cell.style)


def test_single_seed_has_no_std():
    recs = [record("m", "manyicl", "sst2", "0", 0, 0.5), record("m2", "few-shot", "sst2", "0", 0, 0.6)]
    lb = build_leaderboard(recs, by="task")
    close(lb.cell("m", ("sst2", "0")), 0.5, None, 1)
    assert "| 50.0 |" in render(lb, "markdown")


def test_errors_are_clear():
    with pytest.raises(HarnessError, match="No result records"):
        build_leaderboard([])
    recs = build_records()
    with pytest.raises(HarnessError, match="grouping"):
        build_leaderboard(recs, by="model")
    with pytest.raises(HarnessError, match="role"):
        build_leaderboard(recs, roles=("test",))
    with pytest.raises(HarnessError, match="format 'html'"):
        render(build_leaderboard(recs), "html")
    clash = record("run-few", "manyicl", "sst2", "0", 9, 0.5)
    with pytest.raises(HarnessError, match="run-few"):
        build_leaderboard(recs + [clash])


def test_a_row_with_several_model_paths_averages_them():
    """A dedicated run is one row holding one model per task; each of them is scored on the same probe and seed,
    and the row's probe score (and its forgetting) is their mean, not whichever record came last."""
    paths = {"sst2": "/results/runs/run-ded/sst2/final", "rte": "/results/runs/run-ded/rte/final"}
    probe = {("sst2", 0): 0.60, ("rte", 0): 0.70, ("sst2", 1): 0.50, ("rte", 1): 0.70}
    recs = [record("run-ded", "dedicated", "piqa", "0", seed, value, model_path=paths[task])
            for (task, seed), value in probe.items()]
    recs += [record("run-ded", "dedicated", task, "0", seed, 0.9, model_path=paths[task])
             for task in paths for seed in (0, 1)]
    recs += [record("smollm2-135m", "base", "piqa", "0", seed, 0.70) for seed in (0, 1)]
    lb = build_leaderboard(recs, by="task", roles=("train", "probe"))
    assert [r.model for r in lb.rows] == ["smollm2-135m", "run-ded"]
    # per seed: (0.60 + 0.70) / 2 = 0.65 and (0.50 + 0.70) / 2 = 0.60; over seeds 0.625
    close(lb.cell("run-ded", ("probe:piqa", "0")), 0.625, math.sqrt(0.00125), 2)
    close(lb.cell("run-ded", ("forgetting", "0")), 0.70 - 0.625, math.sqrt(0.00125), 2)
    assert forgetting(recs) == {"run-ded": {"piqa": pytest.approx(0.075)}}
    close(lb.cell("run-ded", ("sst2", "0")), 0.9, 0.0, 2)
    assert len(latest_records(recs)) == len(recs)  # both models' records are kept
