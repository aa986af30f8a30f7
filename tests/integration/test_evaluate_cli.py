"""`harness evaluate` (and `leaderboard`, `plot`) on the tiny model and tiny data with the transformers backend:
the output tree and summary schema, resuming, pinned settings, seeds, clear errors, forgetting probes with the
base model's scores reused, dedicated runs, and plain lm-eval reproducing a generated config."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manyicl.harness.results import SCHEMA_VERSION, ResultRecord
from tests.helpers import run_harness as _harness
from tests.openai_standin import running_standin

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PNG = b"\x89PNG\r\n\x1a\n"
FIELDS = {f.name for f in dataclasses.fields(ResultRecord)}


def _ok(args: list[str]) -> str:
    code, out, err = _harness(args)
    assert code == 0, err[-3000:]
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SimpleEvaluateSpy:
    """Counts lm-eval runs (and what they scored) while still running them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import lm_eval

        self.calls: list[dict] = []
        real = lm_eval.simple_evaluate

        def spy(*args, **kwargs):
            self.calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(lm_eval, "simple_evaluate", spy)

    @property
    def tasks(self) -> list[list[str]]:
        return [list(call["tasks"]) for call in self.calls]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_RESULTS_DIR", str(root / "results"))
        mp.setenv("HF_DATASETS_CACHE", str(root / "datasets-cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield root


@pytest.fixture(scope="module")
def common(tiny_data) -> list[str]:
    return ["--data-dir", str(tiny_data), "--max-length", "512", "--dtype", "float32", "--backend", "hf"]


@pytest.fixture(scope="module")
def evaluated(env, tiny_model, common):
    """The base tiny model on a multiple-choice and a generation task at 0, 2 and many shots."""
    out = env / "base-eval"
    args = ["evaluate", "--model", str(tiny_model), "--tasks", "sst2,asdiv", "--shots", "0,2,many", "--limit", "3",
            *common, "-o", str(out)]
    stdout = _ok(args)
    return out, args, stdout


def test_output_tree(evaluated, tiny_model):
    out, _, stdout = evaluated
    assert {p.name for p in out.iterdir()} == {"config.yaml", "manifest.json", "lm_eval_tasks", "lm_eval_results",
                                              "samples", "summary.jsonl"}
    names = {f"harness_{t}_{s}shot_s1234" for t in ("sst2", "asdiv") for s in ("0", "2", "many")}
    tasks_dir = out / "lm_eval_tasks"
    assert {p.stem for p in tasks_dir.glob("*.yaml")} == names
    assert (tasks_dir / "metrics.py").read_text() == (Path(__file__).parents[2] / "tasks" / "lm_eval_metrics.py").read_text()
    readme = (tasks_dir / "README.md").read_text()
    assert f"--include_path {tasks_dir}" in readme and f"pretrained={Path(tiny_model).resolve()}" in readme
    data_files = sorted((tasks_dir / "data").glob("*.jsonl"))
    assert len(data_files) == 6 and {p.name.rsplit("-", 1)[0] for p in data_files} == names
    for name in names:
        config = yaml.safe_load((tasks_dir / f"{name}.yaml").read_text().replace("!function ", ""))
        assert config["task"] == name and config["num_fewshot"] == 0
        assert Path(config["dataset_kwargs"]["data_files"]["test"]).exists()

    results = list((out / "lm_eval_results").glob("results-*.json"))
    assert len(results) == 1
    assert set(json.loads(results[0].read_text())["results"]) == names
    assert {p.stem for p in (out / "samples").glob("*.jsonl")} == names
    for name in names:
        samples = _records(out / "samples" / f"{name}.jsonl")
        assert len(samples) == 3 and all(s["uid"] and s["response"] is not None for s in samples)

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["format"] == "chat" and config["max_length"] == 512 and config["dtype"] == "float32"
    assert config["limit"] == 3 and config["backend"] == "hf" and config["method"] == "base"
    assert config["model_path"] == str(Path(tiny_model).resolve()) and config["adapter"] is None

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "evaluate" and manifest["backend"] == "hf" and manifest["method"] == "base"
    (run,) = manifest["runs"]
    assert run["documents"] == 18 and run["seconds"] > 0 and run["documents_per_second"] > 0
    assert run["documents_per_second"] == pytest.approx(18 / run["seconds"], rel=0.05)
    assert "lm_eval" in manifest["packages"] and manifest["seed"] == 1234
    assert "Leaderboard by task" in stdout and f"Results in {out}" in _one_line(stdout)


def test_summary_schema_and_values(evaluated, tiny_model):
    out, _, _ = evaluated
    records = _records(out / "summary.jsonl")
    assert [(r["task"], r["shots"]) for r in records] == [
        (t, s) for t in ("sst2", "asdiv") for s in ("0", "2", "many")]
    for r in records:
        assert set(r) == FIELDS, set(r) ^ FIELDS
        ResultRecord(**r)  # loads back as the typed record
        assert r["schema_version"] == SCHEMA_VERSION == 2
        assert r["model"] == Path(tiny_model).name and r["model_path"] == r["base_model"] == str(Path(tiny_model).resolve())
        assert r["method"] == "base" and r["role"] == "train" and r["seed"] == 1234 and r["num_docs"] == 3
        assert r["backend"] == "hf" and r["format"] == "chat" and r["max_length"] == 512
        assert r["metric"] == {"sst2": "accuracy", "asdiv": "exact_match_number"}[r["task"]]
        assert r["family"] == {"sst2": "classification", "asdiv": "math"}[r["task"]]
        assert 0.0 <= r["value"] <= 1.0 and (r["stderr"] is None or r["stderr"] >= 0)
        assert isinstance(r["shots_mean"], float)
        assert r["shots_min"] <= r["shots_mean"] <= r["shots_max"]
        samples = _records(out / "samples" / f"harness_{r['task']}_{r['shots']}shot_s1234.jsonl")
        used = [s["shots_used"] for s in samples]
        assert (min(used), max(used)) == (r["shots_min"], r["shots_max"])
        assert r["shots_mean"] == pytest.approx(statistics.fmean(used), abs=0.01)
        key = "acc" if r["task"] == "sst2" else "exact_match"
        assert r["value"] == pytest.approx(statistics.fmean(s[key] for s in samples))
        if r["shots"] != "many":
            assert r["shots_min"] == r["shots_max"] == int(r["shots"])
        else:
            assert r["shots_min"] > 2  # 512 tokens hold more than the 2-shot prompts
            assert max(s["prompt_tokens"] for s in samples) <= 512
    mc = _records(out / "samples" / "harness_sst2_manyshot_s1234.jsonl")
    assert all(len(s["response"]) == 2 and all(isinstance(x[0], float) for x in s["response"]) for s in mc)


def test_rerun_skips_finished_work_and_adds_only_new_settings(evaluated, tmp_path, monkeypatch):
    source, args, _ = evaluated
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    args = [*args[:-1], str(out)]
    before = (out / "summary.jsonl").read_text()
    spy = SimpleEvaluateSpy(monkeypatch)

    _ok(args)
    assert spy.calls == []  # nothing left to do
    assert (out / "summary.jsonl").read_text() == before
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 1

    tasks_at = args.index("--tasks")
    shots_at = args.index("--shots")
    more = list(args)
    more[tasks_at + 1], more[shots_at + 1] = "sst2", "0,1,many"
    _ok(more)
    assert spy.tasks == [["harness_sst2_1shot_s1234"]]
    records = _records(out / "summary.jsonl")
    assert len(records) == 7 and records[-1]["shots"] == "1" and records[-1]["shots_max"] == 1
    assert "".join(json.dumps(r) + "\n" for r in records[:6]) == before  # earlier records kept as they were
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 2
    assert len(list((out / "lm_eval_results").glob("*.json"))) == 2


@pytest.mark.parametrize("flag, value, old", [("--limit", "2", "3"), ("--max-length", "256", "512"),
                                              ("--dtype", "bfloat16", "'float32'"), ("--format", "plain", "'chat'")])
def test_changed_settings_into_the_same_directory_are_refused(evaluated, tmp_path, monkeypatch, flag, value, old):
    source, args, _ = evaluated
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    args = [*args[:-1], str(out)]
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    config = (out / "config.yaml").read_text()
    spy = SimpleEvaluateSpy(monkeypatch)
    code, _, err = _harness(args)
    assert code == 2 and spy.calls == []
    key = flag.lstrip("-").replace("-", "_")
    shown = repr(int(value)) if value.isdigit() else repr(value)
    assert f"was evaluated with {key}={old}, not {shown}; use another --output-dir" in _one_line(err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (out / "config.yaml").read_text() == config


def test_two_seeds_draw_two_demonstration_sets(env, tiny_model, common, tmp_path):
    out = tmp_path / "seeds"
    _ok(["evaluate", "--model", str(tiny_model), "--tasks", "sst2", "--shots", "2", "--seeds", "2", "--limit", "3",
         *common, "-o", str(out)])
    records = _records(out / "summary.jsonl")
    assert sorted(r["seed"] for r in records) == [1234, 1235]
    prompts = {}
    for seed in (1234, 1235):
        (data,) = (out / "lm_eval_tasks" / "data").glob(f"harness_sst2_2shot_s{seed}-*.jsonl")
        prompts[seed] = [row["prompt"] for row in _records(data)]
    assert prompts[1234] != prompts[1235]
    board = json.loads(_ok(["leaderboard", str(out), "--by", "task", "--format", "json"]))
    assert board["rows"][0]["cells"]["sst2 @2"]["n"] == 2


def test_draws_split_documents_into_blocks_and_shares_split_the_blocks(env, tiny_model, common, tmp_path):
    """`--draws 4`: each document is prompted from its block's draw, and the samples and records say which;
    `--draw-share i/2` scores half the blocks, the two halves together every document exactly once."""
    whole, halves = tmp_path / "draws", [tmp_path / f"half{i}" for i in (1, 2)]
    args = ["evaluate", "--model", str(tiny_model), "--tasks", "sst2", "--shots", "0,2", "--limit", "16",
            "--draws", "4", *common]
    _ok([*args, "-o", str(whole)])
    for i, out in enumerate(halves, 1):
        _ok([*args, "--draw-share", f"{i}/2", "-o", str(out)])
    samples = {d: {row["uid"]: row for row in _records(d / "samples" / "harness_sst2_2shot_s1234.jsonl")}
               for d in (whole, *halves)}
    assert {row["draw"] for row in samples[whole].values()} == {0, 1, 2, 3}
    assert {row["draw"] for row in samples[halves[0]].values()} == {0, 2}
    assert samples[halves[0]].keys() | samples[halves[1]].keys() == samples[whole].keys()
    assert not samples[halves[0]].keys() & samples[halves[1]].keys()
    assert all(row["prediction"] in (0, 1) for row in samples[whole].values())
    for uid, row in samples[halves[1]].items():  # the same prompts, so the same scores, as the whole run
        assert row["acc"] == samples[whole][uid]["acc"] and row["draw"] == samples[whole][uid]["draw"]
    (data,) = (whole / "lm_eval_tasks" / "data").glob("harness_sst2_2shot_s1234-*.jsonl")
    prefixes = {(row["draw"], row["prompt"].rsplit("Review", 1)[0]) for row in _records(data)}
    assert len(prefixes) == 4  # one demonstration prefix per draw block
    record = next(r for r in _records(halves[0] / "summary.jsonl") if r["shots"] == "2")
    assert record["draws"] == 4 and record["draw_share"] == "1/2" and record["num_docs"] == 8
    assert record["train_seed"] is None and 0.5 <= record["top_share"] <= 1 and 0.5 <= record["majority_rate"] <= 1
    run = json.loads((halves[0] / "manifest.json").read_text())["runs"][-1]
    assert run["draws"] == 4 and run["draw_share"] == "1/2"
    assert run["documents_per_draw"]["harness_sst2_2shot_s1234"] == {"0": 4, "2": 4}
    code, _, err = _harness([*args, "--draw-share", "3/2", "-o", str(tmp_path / "bad")])
    assert code == 2 and "--draw-share 3/2: i must be between 1 and n." in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("change, message", [
    ({"--shots": "0,x"}, "--shots value `x` is not a non-negative number or `many`"),
    ({"--shots": "100000"}, "Task sst2 has 36 train examples, fewer than --shots 100000"),  # 40 less 4 validation
    ({"--tasks": "nope"}, "Unknown task `nope`"),
    ({"--backend": "nope"}, "--backend must be one of auto, prefix, hf, vllm, not `nope`."),
    ({"--limit": "0"}, "--limit must be at least 1, not 0."),
    ({"--seeds": "0"}, "--seeds must be at least 1, not 0."),
    ({"--probes": None, "--probe-tasks": "sst2"}, "sst2 is not a probe"),
    ({"--model": "/no/such/model"}, "Model path /no/such/model does not exist"),
])
def test_bad_input_is_one_clear_line(change, message, env, tiny_model, tiny_data, tmp_path, monkeypatch):
    options = {"--model": str(tiny_model), "--data-dir": str(tiny_data), "--tasks": "sst2", "--shots": "0",
               "--max-length": "512", "--backend": "hf", "-o": str(tmp_path / "out")} | change
    args = ["evaluate", *[part for flag, value in options.items() for part in (flag, value) if part is not None]]
    spy = SimpleEvaluateSpy(monkeypatch)
    code, out, err = _harness(args)
    assert code == 2, (out, err)
    assert message in _one_line(err)
    assert err.strip().startswith("Error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert spy.calls == []


def test_console_script_error_has_no_traceback(env, tiny_model, tmp_path):
    result = subprocess.run([str(BIN / "harness"), "evaluate", "--model", str(tiny_model), "--shots", "0,x",
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            env=os.environ | {"COLUMNS": "1000"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --shots value `x` is not a non-negative number or `many`; use e.g. 0,5,many."]


# --------------------------------------------------------------------------- fine-tuned checkpoints and probes


@pytest.fixture(scope="module")
def checkpoint(env, tiny_model, tiny_data) -> Path:
    run = env / "run-manyicl"
    _ok(["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--tasks", "sst2", "--max-steps", "2",
         "--max-seq-len", "256", "--lr", "1e-2", "-o", str(run)])
    return run


@pytest.fixture(scope="module")
def probed(env, checkpoint, common):
    """The checkpoint with the probes, twice: the second time the base model's probe scores come from the cache."""
    args = ["evaluate", "--model", str(checkpoint), "--tasks", "sst2", "--shots", "0", "--probe-tasks", "arc_easy",
            "--limit", "4", *common]
    first = env / "probed-1"
    _ok([*args, "--probes", "-o", str(first)])
    with pytest.MonkeyPatch.context() as mp:
        spy = SimpleEvaluateSpy(mp)
        second = env / "probed-2"
        _ok([*args, "-o", str(second)])  # probes are on by default for a fine-tuned checkpoint
    return first, second, spy


def test_probes_score_the_checkpoint_and_reuse_the_base_scores(probed, checkpoint, tiny_model, env):
    first, second, spy = probed
    records = _records(first / "summary.jsonl")
    assert {(r["task"], r["role"], r["method"]) for r in records} == {("sst2", "train", "manyicl"),
                                                                       ("arc_easy", "probe", "manyicl")}
    assert {r["model_path"] for r in records} == {str((checkpoint / "final").resolve())}
    assert {r["model"] for r in records} == {checkpoint.name}
    assert {r["base_model"] for r in records} == {str(Path(tiny_model).resolve())}
    assert {r["max_length"] for r in records} == {512}
    base = _records(first / "base" / "summary.jsonl")
    assert [(r["task"], r["role"], r["method"], r["shots"]) for r in base] == [("arc_easy", "probe", "base", "0")]
    assert base[0]["model_path"] == str(Path(tiny_model).resolve()) and base[0]["num_docs"] == 4
    (cache,) = (env / "results" / "base-probes").iterdir()
    assert _records(cache / "summary.jsonl") == base

    # second evaluation: one lm-eval run, for the checkpoint; the base model's probes came from the cache
    assert len(spy.calls) == 1
    assert spy.calls[0]["model_args"]["pretrained"] == str((checkpoint / "final").resolve())
    assert sorted(spy.tasks[0]) == ["harness_arc_easy_0shot_s1234", "harness_sst2_0shot_s1234"]
    assert _records(second / "base" / "summary.jsonl") == base
    assert len(json.loads((cache / "manifest.json").read_text())["runs"]) == 1


def test_per_document_outcomes_reproduce_the_summaries_and_pair_arms(evaluated, probed, env):
    """issue 9 (stats branch): harness/paired.py reads what `harness evaluate` wrote."""
    from manyicl.harness.paired import compare_arms, pair, read_outcomes

    out, _, _ = evaluated
    table = read_outcomes([out])  # refuses samples whose mean is not the summary's score
    assert len(table.outcomes) == 18 and {o.method for o in table.outcomes} == {"base"}
    same = compare_arms(table, "base", "base", shots="many", iterations=1000)
    assert (same.estimate, same.half_width, same.documents) == (0.0, 0.0, 6)

    first, _, _ = probed
    (cache,) = (env / "results" / "base-probes").iterdir()
    table = read_outcomes([first, cache])
    assert [(r.task, r.method) for r in table.without_samples] == [("arc_easy", "base")]  # first/base: a copy
    pairing = pair(table, "manyicl", "base", shots="0", role="probe")
    assert len(pairing.clusters) == 4 and (pairing.only_a, pairing.only_b) == (0, 0)
    scores = {(r["method"]): r["value"] for r in _records(first / "summary.jsonl") + _records(cache / "summary.jsonl")
              if r["task"] == "arc_easy"}
    result = compare_arms(table, "manyicl", "base", shots="0", role="probe", iterations=1000)
    assert result.estimate == pytest.approx(scores["manyicl"] - scores["base"])
    assert result.low <= result.estimate <= result.high


def test_base_probe_cache_is_not_shared_across_data_directories(checkpoint, tiny_model, common, tmp_path,
                                                                 monkeypatch):
    from tests.fixtures import build_data_dir

    other_data = build_data_dir(tmp_path / "other-data", rows=24)  # other rows: other probe documents
    args = ["evaluate", "--model", str(checkpoint), "--tasks", "sst2", "--shots", "0", "--probe-tasks", "arc_easy",
            "--limit", "3", *common]
    _ok([*args, "-o", str(tmp_path / "a")])
    spy = SimpleEvaluateSpy(monkeypatch)
    at = args.index("--data-dir")
    args[at + 1] = str(other_data)
    _ok([*args, "-o", str(tmp_path / "b")])
    # the base model is scored again on the other data's probe documents, not taken from the first cache
    assert [call["model_args"]["pretrained"] for call in spy.calls] == [
        str((checkpoint / "final").resolve()), str(Path(tiny_model).resolve())]
    assert len(list((tmp_path / "results" / "base-probes").iterdir())) == 2


def test_base_probes_are_not_scored_on_the_checkpoints_server(checkpoint, tiny_model, common, tmp_path,
                                                               monkeypatch):
    """With --server-url the checkpoint is scored on that server; the base model's probe scores must not be."""
    import manyicl.harness.evaluate

    calls = []

    def fake_run_lm_eval(task_names, include_path, mut, cfg, backend, max_length, log_dir):
        calls.append({"model": mut.model.path, "server_url": cfg.server_url, "served_model": cfg.served_model})
        return {"results": {name: {"acc,none": 0.5, "acc_stderr,none": 0.1} for name in task_names}, "samples": {}}

    monkeypatch.setattr(manyicl.harness.evaluate, "run_lm_eval", fake_run_lm_eval)
    # a real server, since --server-url is checked before anything is written; scoring on it: test_server_url.py
    with running_standin(checkpoint / "final", "--served-model-name", "tuned") as url:
        _ok(["evaluate", "--model", str(checkpoint), "--tasks", "sst2", "--shots", "0", "--probe-tasks", "arc_easy",
             "--limit", "2", "--data-dir", common[1], "--max-length", "512",
             "--server-url", url, "--served-model", "tuned", "-o", str(tmp_path / "out")])
    assert calls[0] == {"model": str((checkpoint / "final").resolve()), "server_url": url, "served_model": "tuned"}
    assert calls[1] == {"model": str(Path(tiny_model).resolve()), "server_url": None, "served_model": None}
    assert len(calls) == 2


def test_leaderboard_shows_forgetting_in_every_format(probed, checkpoint):
    first, _, _ = probed
    tuned = {r["task"]: r["value"] for r in _records(first / "summary.jsonl")}
    base = _records(first / "base" / "summary.jsonl")[0]["value"]
    name = checkpoint.name

    table = _ok(["leaderboard", str(first)])
    assert "forgetting" in table and name in table

    board = json.loads(_ok(["leaderboard", str(first), "--format", "json"]))
    assert [r["model"] for r in board["rows"]] == [name]
    assert [c["key"] for c in board["columns"]] == ["classification @0", "mean @0", "forgetting @0"]
    cells = board["rows"][0]["cells"]
    assert cells["classification @0"]["mean"] == pytest.approx(100 * tuned["sst2"])
    assert cells["forgetting @0"]["mean"] == pytest.approx(100 * (base - tuned["arc_easy"]))

    rows = list(csv.DictReader(io.StringIO(_ok(["leaderboard", str(first), "--format", "csv"]))))
    assert rows[0]["model"] == name and rows[0]["method"] == "manyicl"
    assert float(rows[0]["forgetting @0"]) == pytest.approx(100 * (base - tuned["arc_easy"]), abs=0.05)

    markdown = _ok(["leaderboard", str(first), "--format", "markdown"])
    assert markdown.splitlines()[0] == "| model | method | classification @0 | mean @0 | forgetting @0 |"

    by_task = json.loads(_ok(["leaderboard", str(first), "--by", "task", "--format", "json"]))
    assert [c["key"] for c in by_task["columns"]] == ["sst2 @0", "mean @0", "forgetting @0"]

    code, _, err = _harness(["leaderboard", str(first), "--format", "html"])
    assert code == 2 and "Unknown leaderboard format 'html'" in err


def test_plot_writes_two_pngs(probed, tmp_path):
    first, _, _ = probed
    out = _ok(["plot", str(first), "-o", str(tmp_path / "plots")])
    for name in ("scores_vs_shots.png", "forgetting.png"):
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000, name
        assert f"Wrote {path}" in _one_line(out)


def test_plot_without_probes_writes_the_scores_plot_only(evaluated, tmp_path):
    source, _, _ = evaluated
    code, out, err = _harness(["plot", str(source), "-o", str(tmp_path / "plots")])
    assert code == 0, err
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["scores_vs_shots.png"]
    assert "No forgetting plot" in err


def test_plot_writes_under_the_results_folder_by_default(tmp_path, monkeypatch):
    from tests.integration.test_bad_input import record

    source = tmp_path / "evals" / "a"
    source.mkdir(parents=True)
    (source / "summary.jsonl").write_text(json.dumps(record()) + "\n")
    monkeypatch.chdir(tmp_path)  # a relative default would land here, in ./results/plots
    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tmp_path / "elsewhere"))
    code, out, err = _harness(["plot", str(source)])
    assert code == 0, err
    assert [p.name for p in (tmp_path / "elsewhere" / "plots").iterdir()] == ["scores_vs_shots.png"]
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- dedicated runs


@pytest.fixture(scope="module")
def dedicated(env, tiny_model, tiny_data, common):
    run = env / "run-dedicated"
    _ok(["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--method", "dedicated",
         "--tasks", "sst2,rte", "--max-steps", "1", "--max-seq-len", "256", "--lr", "1e-2", "-o", str(run)])
    out = env / "dedicated-eval"
    with pytest.MonkeyPatch.context() as mp:
        spy = SimpleEvaluateSpy(mp)
        _ok(["evaluate", "--model", str(run), "--tasks", "sst2,rte", "--shots", "0", "--probe-tasks", "arc_easy",
             "--limit", "3", *common, "-o", str(out)])
    return run, out, spy


def test_dedicated_run_scores_each_task_with_its_own_model(dedicated, tiny_model):
    run, out, spy = dedicated
    for task in ("sst2", "rte"):
        records = _records(out / task / "summary.jsonl")
        assert {(r["task"], r["role"]) for r in records} == {(task, "train"), ("arc_easy", "probe")}
        assert {r["model_path"] for r in records} == {str((run / task / "final").resolve())}
        assert {(r["model"], r["method"]) for r in records} == {(run.name, "dedicated")}
        assert {r["method"] for r in _records(out / task / "base" / "summary.jsonl")} == {"base"}
    # the sst2 model, the base model's probes (once), the rte model
    assert len(spy.calls) == 3
    pretrained = [call["model_args"]["pretrained"] for call in spy.calls]
    assert pretrained.count(str(Path(tiny_model).resolve())) == 1


def test_dedicated_run_is_one_leaderboard_row_averaging_its_models(dedicated):
    run, out, _ = dedicated
    board = json.loads(_ok(["leaderboard", str(out), "--by", "task", "--format", "json"]))
    assert [(r["model"], r["method"]) for r in board["rows"]] == [(run.name, "dedicated")]
    cells = board["rows"][0]["cells"]
    value = {task: _records(out / task / "summary.jsonl") for task in ("sst2", "rte")}
    for task in ("sst2", "rte"):
        own = next(r["value"] for r in value[task] if r["task"] == task)
        assert cells[f"{task} @0"]["mean"] == pytest.approx(100 * own)
    probe = [next(r["value"] for r in value[t] if r["task"] == "arc_easy") for t in ("sst2", "rte")]
    base = _records(out / "sst2" / "base" / "summary.jsonl")[0]["value"]
    assert cells["forgetting @0"]["mean"] == pytest.approx(100 * (base - statistics.fmean(probe)))


# --------------------------------------------------------------------------- plain lm-eval


def test_plain_lm_eval_reproduces_a_generated_config(evaluated, tiny_model, env, tmp_path):
    out, _, _ = evaluated
    name = "harness_sst2_2shot_s1234"
    result = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
         f"pretrained={tiny_model},max_length=512,dtype=float32", "--include_path", str(out / "lm_eval_tasks"),
         "--tasks", name, "--device", "cpu", "--output_path", str(tmp_path / "lm"), "--log_samples"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (tmp_path / "lm").rglob("results_*.json")
    accuracy = json.loads(results_file.read_text())["results"][name]["acc,none"]
    summary = next(r for r in _records(out / "summary.jsonl") if r["task"] == "sst2" and r["shots"] == "2")
    assert accuracy == pytest.approx(summary["value"], abs=1e-9)
    # the same log-likelihoods, document by document
    (samples_file,) = (tmp_path / "lm").rglob(f"samples_{name}_*.jsonl")
    theirs = {s["doc"]["uid"]: [float(pair[0]) for pair in s["filtered_resps"]]  # lm-eval logs strings
              for s in _records(samples_file)}
    ours = {s["uid"]: [pair[0] for pair in s["response"]] for s in _records(out / "samples" / f"{name}.jsonl")}
    assert theirs.keys() == ours.keys()
    for uid in ours:
        assert theirs[uid] == pytest.approx(ours[uid], abs=1e-4), uid
