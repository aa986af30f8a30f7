"""`harness study` end to end on the tiny model: the smoke preset's outputs, resuming (after a finished run and
after the study was killed midway), a failed stage that blocks only what needs it, and bad study files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import alive as _alive
from tests.helpers import one_line as _one_line
from tests.helpers import run_harness as _harness

pytestmark = pytest.mark.integration

SMOKE_ARMS = ["base", "zero-shot", "few-shot", "many-shot-last", "manyicl", "dedicated"]
TRAINED = [a for a in SMOKE_ARMS if a != "base"]
PNG = b"\x89PNG\r\n\x1a\n"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mtimes(root: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob(pattern))}


@pytest.fixture(scope="module")
def study_env(tmp_path_factory):
    """One model cache (the tiny model is built into it once) and results folder for the module's studies."""
    root = tmp_path_factory.mktemp("study-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        mp.setenv("HARNESS_RESULTS_DIR", str(root / "results"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield root


@pytest.fixture(scope="module")
def smoke(study_env, tiny_data):
    """The smoke preset, run once (about two to three minutes on two cores)."""
    directory = study_env / "smoke"
    started = time.monotonic()
    code, out, err = _harness(["study", "--preset", "smoke", "--data-dir", str(tiny_data), "-o", str(directory)])
    assert code == 0, err[-3000:]
    return directory, out, err, time.monotonic() - started


def test_smoke_study_writes_every_output(smoke, study_env):
    root, out, err, _ = smoke
    assert f"Report: {root / 'REPORT.md'}" in _one_line(out)
    assert (study_env / "cache" / "models").is_dir() and any((study_env / "cache" / "models").iterdir())
    for name in ("REPORT.md", "leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard_by_task.md",
                 "state.json", "manifest.json", "study.yaml"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    for png in ("scores_vs_shots.png", "forgetting.png", "learning_curves.png", "training_loss.png"):
        assert (root / "plots" / png).read_bytes()[:8] == PNG, png

    # every trained arm has its checkpoint, the same matched budget, and an evaluation
    for arm in TRAINED:
        manifest = json.loads((root / "runs" / arm / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["method"] == arm
        finals = [root / "runs" / arm / "final"] if arm != "dedicated" else \
            [root / "runs" / arm / task / "final" for task in ("sst2", "rte")]
        for final in finals:
            assert (final / "config.json").is_file(), final
            steps = json.loads((final.parent / "manifest.json").read_text())["steps"]
            assert steps == 3, (final, steps)
    for arm in SMOKE_ARMS:
        summaries = [root / "evals" / arm / "summary.jsonl"] if arm != "dedicated" else \
            [root / "evals" / arm / task / "summary.jsonl" for task in ("sst2", "rte")]
        for summary in summaries:
            records = _records(summary)
            assert records and {r["method"] for r in records} == {arm}, summary
            assert {r["seed"] for r in records} == {1234, 1235}
            assert {r["seed"] for r in records if r["shots"] == "0"} == {1234}  # nothing to draw at 0 shots
            assert {r["max_length"] for r in records} == {2048}  # every model in its training context
            assert {r["task"] for r in records if r["role"] == "probe"} == {"arc_easy"}
        if arm not in ("base", "dedicated"):
            records = _records(summaries[0])
            assert {(r["task"], r["role"]) for r in records} == {
                ("sst2", "train"), ("rte", "train"), ("cb", "heldout"), ("arc_easy", "probe")}
            assert {r["shots"] for r in records if r["role"] != "probe"} == {"0", "2", "many"}
            # the base model's probe scores sit next to each fine-tuned model's, for forgetting
            assert {r["method"] for r in _records(root / "evals" / arm / "base" / "summary.jsonl")} == {"base"}
        assert json.loads((root / "evals" / arm / "study_stage_done.json").read_text())["config"]

    state = json.loads((root / "state.json").read_text())
    expected = ["eval:base"] + [name for arm in TRAINED for name in (
        f"train:{arm}", f"eval:{arm}", *([] if arm == "dedicated" else [f"curve:{arm}@0.5", f"curve:{arm}@1"]))] + \
        ["report"]
    assert list(state["stages"]) == expected
    assert {s["status"] for s in state["stages"].values()} == {"done"}
    assert json.loads((root / "manifest.json").read_text())["stages"] == {name: "done" for name in expected}
    for name in expected[:-1]:
        assert f"{name}: done in" in err

    board = json.loads((root / "leaderboard.json").read_text())
    assert [r["method"] for r in board["rows"]] == SMOKE_ARMS
    assert board["columns"][-1]["kind"] == "forgetting"
    for row in board["rows"]:
        assert ("forgetting @0" in row["cells"]) == (row["method"] != "base")
        assert row["cells"]["mean @many"]["n"] == 2
    csv_header = (root / "leaderboard.csv").read_text().splitlines()[0]
    assert csv_header.startswith("model,method,base_model,classification @0,") and "forgetting @0" in csv_header
    assert (root / "leaderboard.md").read_text().startswith("| model | method | classification @0 |")

    report = (root / "REPORT.md").read_text()
    assert report.startswith("# Study: smoke")
    assert "## Did the claims hold?" in report and "| claim | shots | test | A | B |" in report
    assert "| **ManyICL beats zero-shot fine-tuning** (primary) | many | superiority | manyicl | zero-shot |" in report
    assert "Holm" in report and "training seeds | one training seed ran | **unmeasured**" in report
    assert "gatekeeping" in report and "Verdict words:" in report and "| non-inferior |" in report
    assert "## One-answer models" in report and "majority-class rate" in report
    assert "## What a rerun would need" in report and "/tmp" not in report.split("Base model:")[1].splitlines()[0]
    # every scored document, enough to recompute every claim without rerunning anything
    header = (root / "outcomes.csv").read_text().splitlines()[0]
    assert header.startswith("arm,train_seed,task,role,shots,draw,doc,outcome")
    assert {"per_document", "per_draw", "per_seed"} <= set(json.loads((root / "variance.json").read_text()))
    for png in ("learning_curves.png", "training_loss.png", "scores_vs_shots.png"):
        assert f"(plots/{png})" in report
    # every learning-curve point of every single-model arm, with the tokens and targets it had seen
    manifest = json.loads((root / "runs" / "manyicl" / "manifest.json").read_text())
    assert [p["fraction"] for p in manifest["curve"]] == [0.5, 1.0]
    assert (root / "runs" / "manyicl" / "curve" / "0.5" / "config.json").is_file()
    assert {r["method"] for r in _records(root / "curves" / "manyicl@0.5" / "summary.jsonl")} == {"manyicl@0.5"}
    assert "## Scale caveat" in report and "learns little in-context" in report
    assert "## Budgets actually spent" in report and "| dedicated | per task: sst2=3, rte=3 |" in report
    assert "Stages that did not finish" not in report


def test_second_run_skips_every_finished_stage(smoke, tiny_data):
    root, _, _, _ = smoke
    before = _mtimes(root, "runs/**/manifest.json") | _mtimes(root, "evals/**/summary.jsonl") | \
        _mtimes(root, "runs/**/model.safetensors")
    assert len(before) > 10
    code, _, err = _harness(["study", "--preset", "smoke", "--data-dir", str(tiny_data), "-o", str(root)])
    assert code == 0, err[-2000:]
    # No stage ran again, only the report: what the study records and leaves untouched says so (a wall-clock
    # bound said it too, but failed whenever the shared machine was busy).
    stages = json.loads((root / "state.json").read_text())["stages"]
    assert [name for name, s in stages.items() if s["status"] == "skipped"] == list(stages)[:-1]
    for name in list(stages)[:-1]:
        assert f"{name}: already done" in err
    assert stages["report"]["status"] == "done"
    after = _mtimes(root, "runs/**/manifest.json") | _mtimes(root, "evals/**/summary.jsonl") | \
        _mtimes(root, "runs/**/model.safetensors")
    assert after == before
    assert "## Did the claims hold?" in (root / "REPORT.md").read_text()


# --------------------------------------------------------------------------- a small custom study

SMALL = {
    "name": "small",
    "model": "tiny-random-llama",
    "tasks": ["sst2"],
    "probes": ["arc_easy"],
    "arms": ["base", "zero-shot", "few-shot"],
    # shots 100 is more than the tiny sst2 train split holds: the few-shot arm cannot build one sequence,
    # while the zero-shot arm ignores the setting
    "train": {"max_seq_len": 256, "max_steps": 2, "shots": 100, "learning_rate": 0.001},
    "eval": {"shots": ["0"], "limit": 3, "backend": "hf", "dtype": "float32", "batch_size": 8},
}


def test_a_study_directory_pairs_its_arms_document_by_document(smoke):
    """issue 9 (stats branch): the primary claim's pairs come straight from a study's evaluations, every
    document under both demonstration seeds, and reproduce the difference of the summary scores."""
    from manyicl.harness.paired import compare_arms, pair, read_outcomes

    root, *_ = smoke
    table = read_outcomes([root])
    arms = {"base", "zero-shot", "few-shot", "many-shot-last", "manyicl", "dedicated"}
    # learning-curve points are arms of their own (`manyicl@0.5`), never pooled into the finished model's outcomes
    curve_points = {f"{arm}@{p}" for arm in arms - {"base", "dedicated"} for p in ("0.5", "1")}
    assert set(table.methods) == arms | curve_points
    pairing = pair(table, "manyicl", "zero-shot", shots="many", role="train")
    assert len(pairing.clusters) == 12 and {len(c.diffs) for c in pairing.clusters} == {2}  # 2 tasks x 6, 2 seeds
    assert (pairing.only_a, pairing.only_b) == (0, 0)
    records = [r for r in _records_under(root) if r["shots"] == "many" and r["role"] == "train"]

    def score(method: str) -> float:
        per_task = {}
        for task in ("sst2", "rte"):
            values = [r["value"] for r in records if r["method"] == method and r["task"] == task]
            assert len(values) == 2
            per_task[task] = sum(values) / 2
        return sum(per_task.values()) / 2

    result = compare_arms(table, "manyicl", "zero-shot", shots="many", role="train", iterations=1000)
    assert result.estimate == pytest.approx(score("manyicl") - score("zero-shot"), abs=1e-12)
    assert result.low <= result.estimate <= result.high
    dedicated = pair(table, "dedicated", "base", shots="0", role="train")
    assert {c.stratum for c in dedicated.clusters} == {"sst2", "rte"} and len(dedicated.clusters) == 12


def _records_under(root: Path) -> list[dict]:
    return [r for path in sorted(root.rglob("summary.jsonl")) if path.parent.name != "base" or
            path.parent.parent.name == "evals" for r in _records(path)]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the study exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_killed_study_resumes_and_a_failed_stage_blocks_only_its_evaluation(study_env, tiny_data, tmp_path):
    import psutil

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    root = tmp_path / "small"
    log = tmp_path / "first-run.log"
    cmd = [sys.executable, "-m", "manyicl.harness.cli", "study", "--config", str(config), "--data-dir", str(tiny_data),
           "-o", str(root)]

    def stage_status(name: str):
        state = root / "state.json"
        try:
            return json.loads(state.read_text())["stages"].get(name, {}).get("status") if state.exists() else None
        except json.JSONDecodeError:
            return None

    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"COLUMNS": "200"})
    try:
        _wait_for(lambda: stage_status("train:zero-shot") == "done", 300, "train:zero-shot finished", proc, log)
        # kill it while the next stage (eval:zero-shot) runs in its child process
        children = _wait_for(lambda: [c.pid for c in psutil.Process(proc.pid).children(recursive=True)], 60,
                             "the eval:zero-shot child started", proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # the stage child runs in a session of its own; it must not outlive the study and race with the re-run
    deadline = time.monotonic() + 20
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = _alive(children)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "a stage process outlived the killed study"
    assert stage_status("eval:base") == "done" and stage_status("eval:zero-shot") is None
    assert not (root / "REPORT.md").exists()
    def finished_outputs() -> dict[str, int]:
        # the trained run, and the base evaluation's scores (its config.yaml and manifest.json are rewritten
        # whenever a fine-tuned model's evaluation reuses its probe scores)
        return _mtimes(root, "runs/zero-shot/**/*") | _mtimes(root, "evals/base/summary.jsonl") | \
            _mtimes(root, "evals/base/samples/*") | _mtimes(root, "evals/base/lm_eval_results/*")

    finished = finished_outputs()
    assert any(name.endswith("model.safetensors") for name in finished) and "evals/base/summary.jsonl" in finished

    code, out, err = _harness(["study", "--config", str(config), "--data-dir", str(tiny_data), "-o", str(root)])
    # It finished what it could (the report too), and the exit code says the study is not whole.
    assert code == 1, err[-3000:]
    assert "Error: 1 stage(s) failed (train:few-shot) and 1 more were blocked by them" in _one_line(err)
    text = _one_line(err)
    assert "eval:base: already done" in text and "train:zero-shot: already done" in text
    assert "eval:zero-shot: done in" in text
    failed_log = root / "logs" / "train-few-shot.log"
    assert f"train:few-shot: FAILED (exit 2); log: {failed_log}" in text
    assert "eval:few-shot: blocked" in text and "report: done" in text
    assert finished_outputs() == finished  # not redone
    assert "Error:" in failed_log.read_text()

    stages = json.loads((root / "state.json").read_text())["stages"]
    assert {name: s["status"] for name, s in stages.items()} == {
        "eval:base": "skipped", "train:zero-shot": "skipped", "eval:zero-shot": "done",
        "train:few-shot": "failed", "eval:few-shot": "blocked", "report": "done"}
    assert stages["train:few-shot"]["log"] == str(failed_log) == stages["eval:few-shot"]["log"]
    assert not (root / "runs" / "few-shot" / "final").exists() and not (root / "evals" / "few-shot").exists()
    zero = _records(root / "evals" / "zero-shot" / "summary.jsonl")
    assert {(r["task"], r["shots"], r["role"]) for r in zero} == {("sst2", "0", "train"), ("arc_easy", "0", "probe")}

    report = (root / "REPORT.md").read_text()
    assert "## Stages that did not finish" in report
    assert f"- `train:few-shot`: failed; log: `{failed_log}`" in report
    assert f"- `eval:few-shot`: blocked; log: `{failed_log}`" in report
    assert "## Did the claims hold?" in report and "| not run |" in report  # manyicl was not an arm
    board = json.loads((root / "leaderboard.json").read_text())
    assert [r["method"] for r in board["rows"]] == ["base", "zero-shot"]
    assert "forgetting @0" in board["rows"][1]["cells"]


def test_sigterm_stops_the_study_and_its_running_stage(study_env, tiny_data, tmp_path):
    """A polite kill unwinds like Ctrl-C: the study exits promptly and takes its running stage with it."""
    import psutil

    slow = SMALL | {"arms": ["zero-shot"], "train": {"max_seq_len": 256, "max_steps": 100_000, "learning_rate": 0.001}}
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(slow))
    log = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "manyicl.harness.cli", "study", "--config", str(config), "--data-dir", str(tiny_data),
           "-o", str(tmp_path / "slow")]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        children = _wait_for(lambda: [c.pid for c in psutil.Process(proc.pid).children(recursive=True)], 120,
                             "the train:zero-shot child started", proc, log)
        time.sleep(3)  # let the stage get going
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the study alone, as `kill PID` would
        code = proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 128 + signal.SIGTERM
    assert took < 45, f"the study took {took:.0f} s to stop"
    deadline = time.monotonic() + 20
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(children), "the running stage outlived the study"


# --------------------------------------------------------------------------- bad study files


@pytest.mark.parametrize("change, words", [
    ({"colour": "blue"}, "`colour` is not a setting; known:"),
    ({"arms": ["base", "magic"]}, "Unknown arm `magic`"),
    ({"heldout": ["sst2"]}, "sst2 cannot be both trained on and held out"),
    ({"train": {"max_seq_len": 256}}, "needs a matched budget"),
    ({"train": {"max_steps": 1, "colour": 1}}, "`train.colour` is not a shared training setting"),
    ({"train": {"max_steps": 1, "method": "manyicl"}}, "`train.method` is not a shared training setting"),
    ({"eval": {"model": "x"}}, "`eval.model` is not a shared evaluation setting"),
    ({"eval": {"shots": ["0", "x"]}}, "--shots value `x`"),
])
def test_bad_study_file_is_one_clear_sentence(change, words, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(SMALL | change))
    root = tmp_path / "never"
    code, out, err = _harness(["study", "--config", str(config), "-o", str(root)])
    assert code == 2, (out, err)
    assert words in _one_line(err)
    assert err.strip().startswith("Error:") and len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    assert not root.exists()  # refused before anything ran


def test_unknown_preset_and_missing_study_file(tmp_path):
    code, _, err = _harness(["study", "--preset", "huge"])
    assert code == 2 and ("Unknown preset `huge`; choose one of demo, demo-full, paper, paper-1gpu-lora, "
                          "paper-8gpu-fsdp, smoke.") in _one_line(err)
    code, _, err = _harness(["study", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = _harness(["study"])
    assert code == 2 and "Give a study" in err


@pytest.mark.parametrize("preset", ["demo", "demo-full", "paper", "paper-1gpu-lora", "paper-8gpu-fsdp", "smoke"])
def test_every_preset_dry_runs_on_the_real_data(preset, real_data, tmp_path):
    # The dry run reads the real documents and builds the prompts the evaluation stages will, with the base
    # model's tokenizer where it is here; the paper presets' model is not (offline), and they must still dry-run.
    root = tmp_path / "never"
    code, out, err = _harness(["study", "--preset", preset, "--data-dir", str(real_data), "--dry-run", "-o", str(root)])
    assert code == 0, err[-2000:]
    assert "Prompt fit: " in out
    if preset == "smoke":
        assert "settings fit in 2048 tokens (first 6 documents each)." in _one_line(out)
    assert not root.exists()


def test_the_dry_run_refuses_a_study_whose_prompts_cannot_fit(tiny_data, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(SMALL | {"train": {"max_seq_len": 96, "max_steps": 1},
                                              "eval": {"shots": ["0", "2"], "limit": 2, "backend": "hf"}}))
    root = tmp_path / "never"
    code, out, err = _harness(["study", "--config", str(config), "--data-dir", str(tiny_data), "--dry-run",
                               "-o", str(root)])
    assert code == 2, (out, err)
    # 96 tokens hold a tiny sst2 document alone, not with two demonstrations
    assert ("Error: Study `small` cannot score sst2 as set (demonstration seed 1234): At --shots 2, 2 of 2 sst2 "
            "documents fit only 0-0 demonstrations in 96 tokens; raise --max-length") in _one_line(err)
    assert not out.strip() and "Traceback" not in err and not root.exists()


def test_every_preset_is_a_valid_study():
    from manyicl.harness.study import PRESETS_DIR, load_study, study_presets
    from manyicl.harness.study_estimate import estimate_study
    from manyicl.harness.study_stages import plan_stages, shares_one_server, training_seeds

    assert study_presets() == ["demo", "demo-full", "paper", "paper-1gpu-lora", "paper-8gpu-fsdp", "smoke"]
    assert sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) == ["demo", "demo-full", "paper", "paper-1gpu-lora",
                                                                 "paper-8gpu-fsdp", "recipe-sweep", "smoke"]
    for name in study_presets():
        cfg = load_study(None, name, {"output_dir": "/tmp/unused"})
        stages = plan_stages(cfg)
        adapter_arms = [a for a in cfg.arms if a not in {"base", "dedicated"}]
        curves = len(cfg.train.get("curve_points") or []) * len(adapter_arms)
        assert stages[-1].name == "report"
        # one training stage per arm but base and training seed; one evaluation per arm and seed, or one for all
        # the arms sharing a server
        seeds = max(len(training_seeds(cfg)), 1)
        trained = len(cfg.arms) - ("base" in cfg.arms)
        evaluations = ("base" in cfg.arms) + trained * seeds - (len(adapter_arms) - 1 if shares_one_server(cfg) else 0)
        assert len(stages) == trained * seeds + evaluations + 1 + curves * seeds
        assert ("eval:adapters" in {s.name for s in stages}) == (name == "paper-1gpu-lora")
        if os.environ.get("HARNESS_DATA_DIR"):
            # the time a preset states is the one its own constants give (documents read from the real data)
            minutes = estimate_study(cfg).seconds / 60
            assert cfg.expected_minutes == pytest.approx(minutes, rel=0.05), (name, minutes)
