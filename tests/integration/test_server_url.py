"""`harness evaluate --server-url` against a real server process: the OpenAI-compatible stand-in
(tests/openai_standin.py, transformers behind vLLM's completions API) serving the tiny model. The scores, and every
document's per-choice log-likelihoods and generations, must equal what `--backend hf` gives on the same model and
documents; a server that is not serving the model, or refuses the key, is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_harness, shaken_model
from tests.openai_standin import running_standin

pytestmark = pytest.mark.integration

SERVED = "tiny-standin"
KEY = "standin-test-key"
TOLERANCE = 1e-4  # float32 on both sides; only the batching differs
# one-token choices, multi-token choices, and generation (greedy, stopped by the stop strings), at 0 and 1 shots
TASKS = "sst2,trec,asdiv"
SHOTS = "0,1"


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with shaken weights: choices' log-likelihoods differ between documents and greedy
    generation says more than newlines, so a wrong number cannot pass for a right one."""
    return shaken_model(tiny_model, tmp_path_factory.mktemp("standin-model"), noise=0.2)


@pytest.fixture(scope="module")
def server(model) -> str:
    with running_standin(model, "--served-model-name", SERVED, "--api-key", KEY) as url:
        yield url


@pytest.fixture
def with_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _args(model: Path, data: Path, out: Path, *extra: str, limit: str = "4") -> list[str]:
    return ["evaluate", "--model", str(model), "--tasks", TASKS, "--shots", SHOTS, "--limit", limit,
            "--data-dir", str(data), "--max-length", "512", "--dtype", "float32", "-o", str(out), *extra]


def _ok(args: list[str], monkeypatch) -> None:
    code, _, err = run_harness(args, monkeypatch)
    assert code == 0, err[-3000:]


def _summary(out: Path) -> dict[tuple, dict]:
    records = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines() if line.strip()]
    return {(r["task"], r["shots"], r["seed"]): r for r in records}


def _samples(out: Path) -> dict[str, dict[str, dict]]:
    """Per lm-eval task, the harness's per-document samples by document id."""
    found = {}
    for path in sorted((out / "samples").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found[path.stem] = {row["uid"]: row for row in rows}
    return found


def _same(served, reference, where: str, counts: dict[str, int]) -> None:
    """Walk two responses together: log-likelihoods within TOLERANCE, is_greedy flags and texts equal."""
    if isinstance(reference, list):
        assert isinstance(served, list) and len(served) == len(reference), f"{where}: {served!r} vs {reference!r}"
        for i, (s, r) in enumerate(zip(served, reference, strict=True)):
            _same(s, r, f"{where}[{i}]", counts)
    elif isinstance(reference, bool) or isinstance(reference, str):
        assert served == reference, f"{where}: {served!r} (server) vs {reference!r} (hf)"
        counts["texts" if isinstance(reference, str) else "flags"] += 1
    else:
        assert abs(float(served) - float(reference)) <= TOLERANCE, f"{where}: {served} (server) vs {reference} (hf)"
        counts["log-likelihoods"] += 1


def test_server_url_scores_equal_hf(model, tiny_data, server, with_key, tmp_path, monkeypatch):
    served_out, hf_out = tmp_path / "served", tmp_path / "hf"
    _ok(_args(model, tiny_data, served_out, "--server-url", server, "--served-model", SERVED), monkeypatch)
    _ok(_args(model, tiny_data, hf_out, "--backend", "hf"), monkeypatch)

    served, reference = _summary(served_out), _summary(hf_out)
    assert len(reference) == 3 * 2 and served.keys() == reference.keys()
    for key, ref in reference.items():
        assert served[key]["backend"] == "vllm" and ref["backend"] == "hf"
        assert served[key]["num_docs"] == ref["num_docs"] == 4
        assert served[key]["value"] == pytest.approx(ref["value"], abs=1e-9), key

    served_samples, hf_samples = _samples(served_out), _samples(hf_out)
    assert served_samples.keys() == hf_samples.keys() and len(hf_samples) == 6
    counts = {"log-likelihoods": 0, "flags": 0, "texts": 0}
    for task, documents in hf_samples.items():
        assert served_samples[task].keys() == documents.keys()
        for uid, row in documents.items():
            _same(served_samples[task][uid]["response"], row["response"], f"{task} {uid}", counts)
    # 4 documents x 2 shots: sst2 2 choices, trec 6; asdiv one generation each
    assert counts == {"log-likelihoods": 8 * (2 + 6), "flags": 8 * (2 + 6), "texts": 8}
    assert any(row["response"] != [""] for row in hf_samples[next(t for t in hf_samples if "asdiv" in t)].values())

    config = yaml.safe_load((served_out / "config.yaml").read_text())
    assert (config["server_url"], config["served_model"]) == (server, SERVED)
    manifest = json.loads((served_out / "manifest.json").read_text())
    assert manifest["backend"] == "vllm" and "--server-url" in manifest["backend_reason"]
    # the stand-in has no /metrics: the prefix-cache reading is absent, not an error
    assert manifest["runs"][0]["prefix_cache"] is None


def test_the_only_served_model_is_scored_without_served_model(model, tiny_data, server, with_key, tmp_path,
                                                              monkeypatch):
    out = tmp_path / "out"
    _ok(["evaluate", "--model", str(model), "--tasks", "sst2", "--shots", "0", "--limit", "1", "--data-dir",
         str(tiny_data), "--max-length", "512", "--server-url", server + "/", "-o", str(out)], monkeypatch)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["server_url"], config["served_model"]) == (server, SERVED)  # the trailing slash is dropped
    assert [r["num_docs"] for r in _summary(out).values()] == [1]


@pytest.mark.parametrize(("key", "extra", "expect"), [
    (KEY, ["--served-model", "other"], rf"The server at {{url}} serves {SERVED}, not other; pass one of those"),
    ("wrong-key", [], r"The server at {url} refused the API key \(HTTP 401\); set OPENAI_API_KEY"),
], ids=["a model the server does not serve", "a wrong API key"])
def test_a_server_that_cannot_score_the_model_is_refused_before_writing(model, tiny_data, server, tmp_path,
                                                                        monkeypatch, key, extra, expect):
    import re

    monkeypatch.setenv("OPENAI_API_KEY", key)
    out = tmp_path / "out"
    code, stdout, err = run_harness(_args(model, tiny_data, out, "--server-url", server, *extra), monkeypatch)
    assert code == 2 and not stdout.strip() and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(expect.format(url=re.escape(server)), lines[0]), err
    assert not out.exists()
