"""Transformers-side scoring on two CPU processes (`harness evaluate --num-processes 2`: torchrun under
`accelerate launch`, gloo between them) against one process: each process scores about half of the requests,
and the evaluation directory holds the same documents, once each, with the same numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_harness

pytestmark = pytest.mark.integration

# sst2 is scored by log-likelihood (two choices per document), gsm8k by greedy generation.
COMMON = ["--tasks", "sst2,gsm8k", "--shots", "0,many", "--max-length", "512", "--no-probes", "--limit", "12"]
SHARE_LINE = re.compile(r"Scoring process (\d) of 2: lm-eval rank (\d) of 2, (\d+) requests scored\.")


def _samples(folder: Path) -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((folder / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (path.stem, row["uid"])
            assert key not in out, f"{key} recorded twice"
            out[key] = row
    return out


def _values(folder: Path) -> dict[tuple[str, str, int], float]:
    rows = [json.loads(line) for line in (folder / "summary.jsonl").read_text().splitlines()]
    return {(r["task"], r["shots"], r["seed"]): r["value"] for r in rows}


@pytest.mark.parametrize("backend", ["prefix", "hf"])
def test_two_processes_score_the_same_documents_as_one(backend, tiny_model, tiny_data, tmp_path, monkeypatch,
                                                       capfd):
    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tmp_path / "results"))
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"p{n}"
        code, _, err = run_harness(["evaluate", "--model", str(tiny_model), "--data-dir", str(tiny_data), *COMMON,
                                    "--backend", backend, "--num-processes", str(n), "-o", str(outs[n])], monkeypatch)
        assert code == 0, err
    printed = capfd.readouterr()
    shares = {int(m[1]): (int(m[2]), int(m[3])) for m in SHARE_LINE.finditer(printed.out + printed.err)}

    one, two = _samples(outs[1]), _samples(outs[2])
    assert one.keys() == two.keys() and len(one) == 2 * 2 * 12  # 2 tasks x 2 shot settings x 12 documents
    for key, row in one.items():
        other = two[key]
        assert {k: v for k, v in row.items() if k != "response"} == {k: v for k, v in other.items() if k != "response"}
        if key[0].startswith("harness_sst2"):  # [[log-likelihood, greedy], ...] per choice
            for (a, _), (b, _) in zip(row["response"], other["response"], strict=True):
                assert b == pytest.approx(a, abs=1e-4), key
        else:
            assert row["response"] == other["response"], key
    assert _values(outs[1]) == _values(outs[2])

    # Each process got its own share: lm-eval ranks 0 and 1, about half the requests each (the evaluator pads the
    # shorter share with repeats), and together every request once.
    total = sum(len(r["response"]) if k[0].startswith("harness_sst2") else 1 for k, r in one.items())
    assert sorted(shares) == [1, 2] and {rank for rank, _ in shares.values()} == {0, 1}
    counts = [n for _, n in shares.values()]
    assert total <= sum(counts) <= total + 4 and max(counts) <= total // 2 + 2

    manifest = json.loads((outs[2] / "manifest.json").read_text())
    assert manifest["backend"] == backend and manifest["runs"][-1]["num_processes"] == 2
