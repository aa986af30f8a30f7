"""Training on two CPU processes (torchrun under `accelerate launch`, gloo between them) against one process with
the same global batch: the same losses step by step, the same final weights, the same counts, one writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import one_line
from tests.helpers import run_harness as _harness

pytestmark = pytest.mark.integration

STEPS = 4


def _weights(path: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_data, tmp_path_factory) -> dict[str, Path]:
    """One process x 2 rows per step, and two processes x 1 row each: the same 2 rows per optimizer step."""
    root = tmp_path_factory.mktemp("distributed")
    common = ["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--tasks", "sst2,rte",
              "--max-seq-len", "256", "--max-steps", str(STEPS), "--lr", "1e-3", "--seed", "7"]
    out = {}
    for name, extra in {"one": ["--batch-size", "2"], "two": ["--batch-size", "1", "--num-processes", "2"]}.items():
        run = root / name
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HARNESS_RESULTS_DIR", str(root / "results"))
            code, _, err = _harness([*common, *extra, "-o", str(run)], mp)
        assert code == 0, err
        out[name] = run
    return out


def test_two_processes_train_the_same_rows_as_one(runs):
    one, two = (json.loads((runs[k] / "manifest.json").read_text()) for k in ("one", "two"))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert one["steps"] == two["steps"] == STEPS
    assert one["seen"] == two["seen"]  # the same rows, each once
    assert one["seen"]["rows"] == 2 * STEPS
    # The Trainer's own count, gathered over both ranks, equals the count taken from the rows.
    assert one["tokens_seen_by_trainer"] == two["tokens_seen_by_trainer"] == two["seen"]["tokens"]
    assert yaml.safe_load((runs["two"] / "config.yaml").read_text())["num_processes"] == 2


def test_only_rank_zero_writes_the_log(runs):
    steps = [json.loads(line)["step"] for line in (runs["two"] / "train_log.jsonl").read_text().splitlines()]
    assert steps.count(STEPS) == 2  # the last step's loss line and the end-of-training summary, not twice that
    assert len(_losses(runs["two"])) == STEPS


def test_losses_match_one_process(runs):
    one, two = _losses(runs["one"]), _losses(runs["two"])
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, rel=1e-3)
    assert one[0] != pytest.approx(one[-1], rel=1e-2)  # the loss moved, so agreement is not trivial


def test_final_weights_match_one_process(runs, tiny_model):
    import torch

    base, one, two = _weights(tiny_model), _weights(runs["one"] / "final"), _weights(runs["two"] / "final")
    moved = torch.cat([(one[k] - base[k]).flatten() for k in base]).norm().item()
    apart = torch.cat([(one[k] - two[k]).flatten() for k in base]).norm().item()
    assert moved > 1e-2  # training changed the weights
    # Both are saved in bf16, so an element may land one rounding step apart; the whole difference must stay far
    # below the change training made.
    assert apart < 0.05 * moved, (apart, moved)


def test_a_config_that_would_launch_one_process_is_refused(tiny_model, tiny_data, tmp_path):
    code, _, err = _harness(["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--max-steps", "1",
                             "--num-processes", "2", "--accelerate-config", "single-device", "-o", str(tmp_path / "r")])
    assert code == 2
    assert "distributed_type NO, which launches one process, not 2" in one_line(err)
    assert not (tmp_path / "r").exists()


def test_a_run_resumes_on_two_processes_where_it_stopped(runs, tiny_model, tiny_data, tmp_path):
    """Interrupted after checkpoint 2 (one process x 2 rows), resumed on two processes x 1 row: the same global
    batch, so it continues at step 3 on the same rows and ends where the uninterrupted runs ended."""
    from transformers import Trainer

    run = tmp_path / "run"
    common = ["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--tasks", "sst2,rte",
              "--max-seq-len", "256", "--max-steps", str(STEPS), "--lr", "1e-3", "--seed", "7", "-o", str(run)]
    settings = tmp_path / "settings.yaml"
    settings.write_text("save_steps: 1\n")
    real_save = Trainer._save_checkpoint

    def save_then_stop(self, *a, **kw):
        real_save(self, *a, **kw)
        if self.state.global_step == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_save_checkpoint", save_then_stop)
        code, _, err = _harness([*common, "--config", str(settings), "--batch-size", "2"], mp)
    assert code == 130, err
    code, _, err = _harness([*common, "--config", str(settings), "--batch-size", "1", "--num-processes", "2",
                             "--resume"])
    assert code == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_processes"] == 2
    assert manifest["seen"] == json.loads((runs["one"] / "manifest.json").read_text())["seen"]
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1)), "resumed at step 3"
    assert _losses(run) == pytest.approx(_losses(runs["one"]), rel=1e-3)


def test_a_study_trains_its_arms_on_the_processes_it_names(tiny_model, tiny_data, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "two-processes", "model": str(tiny_model), "tasks": ["sst2"], "probes": ["arc_easy"],
        "arms": ["manyicl"],
        "train": {"max_seq_len": 256, "max_steps": 2, "learning_rate": 0.001, "num_processes": 2},
        "eval": {"shots": ["0"], "limit": 2, "backend": "hf", "dtype": "float32"}}))
    root = tmp_path / "study"
    code, _, err = _harness(["study", "--config", str(config), "--data-dir", str(tiny_data), "-o", str(root)])
    assert code == 0, err[-3000:]
    manifest = json.loads((root / "runs" / "manyicl" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["num_processes"] == 2 and manifest["steps"] == 2
    assert manifest["seen"]["rows"] == 4  # 1 row x 2 processes per step
    assert manifest["tokens_seen_by_trainer"] == manifest["seen"]["tokens"]  # counted over both ranks
    assert (root / "evals" / "manyicl" / "summary.jsonl").exists()
