"""`harness evaluate --backend vllm` runs the server with prefix caching on, and a generation task at k shots
(every document behind the same demonstrations) records a prefix-cache hit rate above zero in its manifest."""

from __future__ import annotations

import functools
import json

import pytest

from manyicl.harness.serve import vllm_available
from tests.helpers import run_harness

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]


def test_generation_at_k_shots_records_prefix_cache_hits(tiny_model, tiny_data, tmp_path, monkeypatch):
    import manyicl.harness.serve

    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # eager mode starts in seconds rather than a minute; caching behaves the same
    monkeypatch.setattr(manyicl.harness.serve, "vllm_server", functools.partial(
        manyicl.harness.serve.vllm_server, fast_start=True, cache_root=tmp_path / "vllm-cache", startup_timeout=600))
    out = tmp_path / "eval"
    code, _, err = run_harness(["evaluate", "--model", str(tiny_model), "--tasks", "asdiv", "--shots", "8",
                                "--limit", "8", "--max-length", "512", "--dtype", "float32", "--backend", "vllm",
                                "--data-dir", str(tiny_data), "--output-dir", str(out)], monkeypatch)
    assert code == 0, err
    assert "--enable-prefix-caching" in (out / "vllm_server.log").read_text().splitlines()[0]
    run = json.loads((out / "manifest.json").read_text())["runs"][0]
    usage = run["prefix_cache"]
    assert usage is not None, "the server's /metrics gave no prefix-cache counters"
    # 8 documents behind the same 8 demonstrations: every one after the first few reads them from the cache.
    assert usage["queried_tokens"] > 0 and usage["hit_tokens"] > 0 and usage["hit_rate"] > 0, usage
    assert usage["hit_tokens"] <= usage["queried_tokens"]
