"""The two backends agree: `run_evaluation` through transformers (lm-eval `hf`) and through a vLLM server
(lm-eval `local-completions`, tokenized requests) on the same documents, in float32."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from manyicl.harness.serve import vllm_available
from tests.helpers import shaken_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

TASKS = ["sst2", "asdiv"]
SHOTS = ["0", "many"]
NOISE = 0.2


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its weights shaken, so greedy generation says something other than newlines and the
    choices' log-likelihoods differ from document to document."""
    return shaken_model(tiny_model, tmp_path_factory.mktemp("noisy-tiny"), NOISE)


@pytest.fixture(scope="module")
def both(model, tiny_data, tmp_path_factory):
    """One evaluation per backend of the same tasks, shots and documents (vLLM started once)."""
    import manyicl.harness.serve
    from manyicl.harness.evaluate import run_evaluation
    from manyicl.harness.settings import EvalConfig

    root = tmp_path_factory.mktemp("backends")
    outs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_RESULTS_DIR", str(root / "results"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        # eager mode starts in seconds rather than a minute; the numbers are the same
        mp.setattr(manyicl.harness.serve, "vllm_server", functools.partial(
            manyicl.harness.serve.vllm_server, fast_start=True, cache_root=root / "vllm-cache", startup_timeout=600))
        for backend in ("hf", "vllm"):
            cfg = EvalConfig(model=str(model), tasks=TASKS, shots=SHOTS, limit=8, max_length=512,
                             dtype="float32", backend=backend, data_dir=str(tiny_data), batch_size=4,
                             output_dir=str(root / backend))
            outs[backend] = run_evaluation(cfg)
    return outs


def _by_key(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["task"], r["shots"]): r for r in _records(out / "summary.jsonl")}


def test_the_same_documents_and_prompts(both):
    hf, vllm = _by_key(both["hf"]), _by_key(both["vllm"])
    assert set(hf) == set(vllm) == {(t, s) for t in TASKS for s in SHOTS}
    assert {r["backend"] for r in hf.values()} == {"hf"} and {r["backend"] for r in vllm.values()} == {"vllm"}
    for key in hf:
        for field in ("num_docs", "shots_min", "shots_mean", "shots_max", "max_length", "format"):
            assert hf[key][field] == vllm[key][field], (key, field)
    assert hf[("sst2", "many")]["shots_min"] > 0 and hf[("sst2", "0")]["num_docs"] == 8
    for name in (p.name for p in (both["hf"] / "lm_eval_tasks" / "data").glob("*.jsonl")):
        assert (both["hf"] / "lm_eval_tasks" / "data" / name).read_text() == \
            (both["vllm"] / "lm_eval_tasks" / "data" / name).read_text()


@pytest.mark.parametrize("shots", SHOTS)
def test_multiple_choice_accuracy_and_log_likelihoods_match(both, shots):
    name = f"harness_sst2_{shots}shot_s1234"
    assert _by_key(both["hf"])[("sst2", shots)]["value"] == _by_key(both["vllm"])[("sst2", shots)]["value"]
    hf = {s["uid"]: s for s in _records(both["hf"] / "samples" / f"{name}.jsonl")}
    vllm = {s["uid"]: s for s in _records(both["vllm"] / "samples" / f"{name}.jsonl")}
    assert hf.keys() == vllm.keys() and len(hf) == 8
    worst = 0.0
    for uid in hf:
        assert hf[uid]["acc"] == vllm[uid]["acc"], uid
        ours = [pair[0] for pair in hf[uid]["response"]]
        theirs = [pair[0] for pair in vllm[uid]["response"]]
        assert len(ours) == len(theirs) == 2 and all(v < 0 for v in ours)
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
    assert worst < 1e-3, worst


@pytest.mark.parametrize("shots", SHOTS)
def test_generation_outputs_are_identical(both, shots):
    name = f"harness_asdiv_{shots}shot_s1234"
    hf = {s["uid"]: s for s in _records(both["hf"] / "samples" / f"{name}.jsonl")}
    vllm = {s["uid"]: s for s in _records(both["vllm"] / "samples" / f"{name}.jsonl")}
    assert hf.keys() == vllm.keys() and hf
    texts = [s["response"][0] for s in hf.values()]
    assert any(t.strip() for t in texts) and len(set(texts)) > 1, texts  # not one degenerate answer
    for uid in hf:
        # the same tokens; only a trailing incomplete UTF-8 byte sequence (cut at max_gen_toks) is decoded
        # differently: transformers shows it as U+FFFD, vLLM's incremental detokenizer holds it back
        ours, theirs = (s[uid]["response"][0].rstrip("\ufffd") for s in (hf, vllm))
        assert ours == theirs, uid
        assert hf[uid]["exact_match"] == vllm[uid]["exact_match"]
    assert _by_key(both["hf"])[("asdiv", shots)]["value"] == _by_key(both["vllm"])[("asdiv", shots)]["value"]


def test_the_vllm_run_is_recorded(both):
    log = both["vllm"] / "vllm_server.log"
    assert log.exists() and log.stat().st_size > 0
    manifest = json.loads((both["vllm"] / "manifest.json").read_text())
    assert manifest["backend"] == "vllm"
    assert manifest["runs"][0]["documents"] == 8 * len(TASKS) * len(SHOTS)  # every document fitted
