"""A run's own config.yaml, given back to `harness train --config`, trains the same model again: task files are
stored by absolute path (the second run starts from another folder), a user's task files are copied into the run,
and the recorded extras (model_path, adapter) are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from manyicl.tasks.registry import TASKS_DIR
from tests.helpers import run_harness

pytestmark = pytest.mark.integration


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_a_runs_config_yaml_trains_the_same_model_again(tiny_model, tiny_data, tmp_path, monkeypatch):
    first_folder, second_folder = tmp_path / "first", tmp_path / "second"
    first_folder.mkdir()
    second_folder.mkdir()
    definition = yaml.safe_load((TASKS_DIR / "sst2.yaml").read_text()) | {"name": "my_sst2"}
    (first_folder / "my_sst2.yaml").write_text(yaml.safe_dump(definition))

    monkeypatch.chdir(first_folder)  # the task file and the data folder are given relative to it
    data = Path("data")
    data.symlink_to(tiny_data)
    code, _, err = run_harness(["train", "--model", str(tiny_model), "--data-dir", str(data), "--tasks",
                                "my_sst2.yaml,rte", "--max-steps", "2", "--max-seq-len", "128", "--lr", "1e-3",
                                "-o", "run"], monkeypatch)
    assert code == 0, err
    run = first_folder / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["tasks"] == [str(first_folder / "my_sst2.yaml"), "rte"]
    assert config["data_dir"] == str(first_folder / "data")
    assert (run / "task_files" / "my_sst2.yaml").read_text() == (first_folder / "my_sst2.yaml").read_text()
    assert not (run / "task_files" / "rte.yaml").exists()  # built-in tasks ship with the code

    monkeypatch.chdir(second_folder)  # relative paths in the file would now point nowhere
    code, _, err = run_harness(["train", "--config", str(run / "config.yaml"), "-o", "again"], monkeypatch)
    assert code == 0, err
    again = second_folder / "again"
    rerun = yaml.safe_load((again / "config.yaml").read_text())
    assert {k: v for k, v in rerun.items() if k != "output_dir"} == \
        {k: v for k, v in config.items() if k != "output_dir"}
    first, second = _tensors(run / "final"), _tensors(again / "final")
    assert first.keys() == second.keys()
    assert all(first[k].equal(second[k]) for k in first)  # the same settings and seed: the same weights
