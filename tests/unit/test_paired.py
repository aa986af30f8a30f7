"""Per-document outcomes read from hand-built evaluation directories, and two arms paired on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.paired import compare_arms, pair, read_outcomes
from manyicl.harness.results import ResultRecord, write_records


def write_eval(out: Path, model: str, method: str, scores: dict[tuple[str, str, int], list[float]],
               role: str = "train", model_path: str | None = None) -> Path:
    """An evaluation directory as `harness evaluate` writes it: summary.jsonl and samples/<lm-eval task>.jsonl
    with one row per document (uid, shots_used, ..., acc)."""
    records = []
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for (task, shots, seed), values in scores.items():
        rows = [{"uid": f"{task}:test:{i}", "shots_used": 0 if shots == "0" else 3, "prompt_tokens": 50,
                 "target": 0, "response": [[-1.0, False]], "acc": v} for i, v in enumerate(values)]
        (out / "samples" / f"harness_{task}_{shots}shot_s{seed}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        records.append(ResultRecord(
            model=model, model_path=model_path or f"/runs/{model}", base_model="/base", method=method, task=task,
            family="nli", role=role if task != "arc_easy" else "probe", shots=shots, shots_min=0, shots_mean=0.0,
            shots_max=0, metric="accuracy", value=sum(values) / len(values), stderr=0.1, seed=seed,
            num_docs=len(values), backend="hf", format="chat", max_length=512, created="2026-01-01T00:00:00+00:00"))
    write_records(out / "summary.jsonl", records)
    return out


def test_outcomes_are_read_per_document_and_paired_per_seed(tmp_path):
    write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "many", 1): [1, 1, 0], ("rte", "many", 2): [1, 0, 0],
                                                    ("cb", "many", 1): [1, 1, 1]})
    write_eval(tmp_path / "b", "run-b", "zero-shot", {("rte", "many", 1): [0, 1, 0], ("rte", "many", 2): [0, 0, 1],
                                                      ("cb", "many", 1): [0, 1, 1]})
    table = read_outcomes([tmp_path])
    assert table.methods == ["manyicl", "zero-shot"] and len(table.outcomes) == 18
    assert table.arm("manyicl")[("rte", "many", 2, "rte:test:0")] == 1.0
    pairing = pair(table, "manyicl", "zero-shot", shots="many")
    got = {(c.stratum, c.uid): c.diffs for c in pairing.clusters}
    # rte document 0: seed 1 gives 1 - 0, seed 2 gives 1 - 0; document 2: 0 - 0 and 0 - 1
    assert got == {("cb", "cb:test:0"): (1.0,), ("cb", "cb:test:1"): (0.0,), ("cb", "cb:test:2"): (0.0,),
                   ("rte", "rte:test:0"): (1.0, 1.0), ("rte", "rte:test:1"): (0.0, 0.0),
                   ("rte", "rte:test:2"): (0.0, -1.0)}
    assert pairing.document_means() == [1.0, 0.0, 0.0, 1.0, 0.0, -0.5]
    assert pairing.discordance == 4 / 9  # cb:0, rte:0 twice, rte:2 once
    result = compare_arms(table, "manyicl", "zero-shot", shots="many", iterations=1000)
    # rte: (2 + 0 - 1) / 6 pairs = 1/6; cb: 1 / 3 pairs = 1/3; the mean over the two tasks is 1/4, the same as
    # the summaries' mean over seeds and tasks: ((2/3 - 1/3) + (1/3 - 1/3)) / 2 = 1/6 for rte, 1 - 2/3 for cb.
    # Per document: cb:0 and rte:0 win, rte:2 loses (mean -1/2), the other three tie.
    assert result.estimate == pytest.approx(0.25)
    assert (result.documents, result.pairs, result.wins, result.losses, result.ties) == (6, 9, 2, 1, 3)


def test_identical_arms_read_from_disk_differ_by_exactly_zero(tmp_path):
    scores = {("rte", "0", 1): [1, 0, 1, 1, 0]}
    write_eval(tmp_path / "a", "run-a", "manyicl", scores)
    write_eval(tmp_path / "b", "run-b", "zero-shot", scores)
    result = compare_arms(read_outcomes([tmp_path]), "manyicl", "zero-shot", shots="0", iterations=1000)
    assert (result.estimate, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_documents_one_arm_lacks_are_counted_not_paired(tmp_path):
    write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "many", 1): [1, 0, 1]})
    write_eval(tmp_path / "b", "run-b", "zero-shot", {("rte", "many", 1): [1, 0]})  # the third did not fit
    pairing = pair(read_outcomes([tmp_path]), "manyicl", "zero-shot", shots="many")
    assert [c.uid for c in pairing.clusters] == ["rte:test:0", "rte:test:1"]
    assert (pairing.only_a, pairing.only_b) == (1, 0)


def test_dedicated_pairs_each_task_with_its_own_model_and_averages_the_probes(tmp_path):
    run = tmp_path / "dedicated-eval"
    write_eval(run / "rte", "run-ded", "dedicated", {("rte", "0", 1): [1, 1], ("arc_easy", "0", 1): [1, 0]},
               model_path="/runs/ded/rte/final")
    write_eval(run / "cb", "run-ded", "dedicated", {("cb", "0", 1): [0, 1], ("arc_easy", "0", 1): [1, 1]},
               model_path="/runs/ded/cb/final")
    write_eval(tmp_path / "base", "base", "base", {("rte", "0", 1): [0, 1], ("cb", "0", 1): [0, 0],
                                                   ("arc_easy", "0", 1): [0, 1]}, model_path="/base")
    table = read_outcomes([tmp_path])
    ded = table.arm("dedicated")
    assert ded[("rte", "0", 1, "rte:test:0")] == 1.0 and ded[("cb", "0", 1, "cb:test:1")] == 1.0
    # arc_easy document 1: the rte model scored 0, the cb model 1 -> their mean 0.5, as the leaderboard averages
    assert ded[("arc_easy", "0", 1, "arc_easy:test:1")] == 0.5
    tasks = pair(table, "dedicated", "base", shots="0", role="train")
    assert [(c.uid, c.diffs) for c in tasks.clusters] == [("cb:test:0", (0.0,)), ("cb:test:1", (1.0,)),
                                                          ("rte:test:0", (1.0,)), ("rte:test:1", (0.0,))]
    probes = pair(table, "base", "dedicated", shots="0", role="probe")
    assert [(c.uid, c.diffs) for c in probes.clusters] == [("arc_easy:test:0", (-1.0,)),
                                                           ("arc_easy:test:1", (0.5,))]


def test_summary_copies_without_samples_are_listed_not_read(tmp_path):
    write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "0", 1): [1, 0]})
    copy = tmp_path / "a" / "base"
    copy.mkdir()
    (copy / "summary.jsonl").write_text((tmp_path / "a" / "summary.jsonl").read_text())
    table = read_outcomes([tmp_path])
    assert len(table.outcomes) == 2 and len(table.without_samples) == 1


def test_the_same_directory_passed_twice_counts_once(tmp_path):
    out = write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "0", 1): [1, 0]})
    assert len(read_outcomes([out, out / "summary.jsonl", tmp_path]).outcomes) == 2


def test_samples_that_disagree_with_the_summary_are_refused(tmp_path):
    out = write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "0", 1): [1, 0]})
    sample = out / "samples" / "harness_rte_0shot_s1.jsonl"
    sample.write_text(sample.read_text().replace('"acc": 0', '"acc": 1'))
    with pytest.raises(HarnessError, match="does not reproduce its summary"):
        read_outcomes([out])


@pytest.mark.parametrize("args, message", [(("manyicl", "few-shot"), "share no scored document"),
                                           (("manyicl", "zero-shot"), "several shot settings")])
def test_pairing_errors_are_one_sentence(tmp_path, args, message):
    write_eval(tmp_path / "a", "run-a", "manyicl", {("rte", "0", 1): [1, 0], ("rte", "many", 1): [1, 0]})
    write_eval(tmp_path / "b", "run-b", "zero-shot", {("rte", "0", 1): [1, 0], ("rte", "many", 1): [1, 1]})
    with pytest.raises(HarnessError, match=message):
        pair(read_outcomes([tmp_path]), *args)
