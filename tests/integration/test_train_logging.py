"""`harness train --report-to tensorboard --eval-steps N` on the tiny model: TensorBoard event files in the run
directory, validation loss (on the validation split, packed as the arm packs) in train_log.jsonl and the
manifest, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import one_line
from tests.helpers import run_harness as _harness

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def logged_run(tiny_model, tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("logged") / "run"
    args = ["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--max-seq-len", "256",
            "--tasks", "sst2,rte", "--max-steps", "6", "--lr", "1e-2", "--report-to", "tensorboard",
            "--eval-steps", "3", "-o", str(run)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
        code, out, err = _harness(args, mp)
    assert code == 0, err[-3000:]
    return run, out


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_appear_in_the_run_directory(logged_run):
    run, _ = logged_run
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not (run / "checkpoints").exists()  # the finished run's checkpoints are gone, the logs are not
    scalars = _scalars(run / "tensorboard")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    train_losses = [(row["step"], row["loss"]) for row in log if "loss" in row]
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train_losses] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in train_losses], rel=1e-5)
    assert [s for s, _ in scalars["eval/loss"]] == [0, 3, 6]


def test_validation_loss_is_logged_before_during_and_after_training(logged_run):
    run, out = logged_run
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    evals = [(row["step"], row["eval_loss"]) for row in log if "eval_loss" in row]
    assert [s for s, _ in evals] == [0, 3, 6]
    # the random model learns the answer format at lr 1e-2, and the held-out examples show it
    assert evals[-1][1] < evals[0][1]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["final_eval_loss"] == evals[-1][1]
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["validation"]["rows"] >= 1 and stats["validation"]["examples"] == 8  # 4 of 40 per task
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["report_to"] == ["tensorboard"] and config["eval_steps"] == 3
    assert "final validation loss" in out


@pytest.mark.parametrize("extra, message", [
    (["--report-to", "wandb"], "--report-to wandb needs the `wandb` package"),
    (["--report-to", "mlflowish"], "Unknown --report-to `mlflowish`"),
    (["--report-to", "none,tensorboard"], "cannot be combined"),
    (["--eval-steps", "0"], "--eval-steps must be at least 1"),
])
def test_bad_logging_settings_are_one_line(extra, message, tiny_model, tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    if "wandb" in extra:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    code, _, err = _harness(["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--tasks", "sst2",
                             "--max-steps", "1", "-o", str(tmp_path / "run"), *extra])
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "run").exists()


def test_eval_steps_on_a_task_without_validation_rows_is_refused(tiny_model, tiny_data, tmp_path):
    definition = yaml.safe_load((REPO / "tasks" / "sst2.yaml").read_text())
    definition |= {"name": "sst2_noval", "validation": {"size": 0}}
    path = tmp_path / "sst2_noval.yaml"
    path.write_text(yaml.safe_dump(definition))
    code, _, err = _harness(["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--tasks", str(path),
                             "--max-steps", "1", "--eval-steps", "1", "-o", str(tmp_path / "run")])
    assert code == 2 and "--eval-steps needs validation rows, and sst2_noval has none" in one_line(err)
