"""The pure pieces of a safe resume (train/checkpoints.py) on folders built here: which checkpoint is complete,
which one a resume takes, what is set aside and rotated away, and which changed setting a resume refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manyicl.harness.settings import TrainConfig, to_dict
from manyicl.train import checkpoints
from manyicl.train.checkpoints import Change, changed_setting, plan_resume


def _checkpoint(root: Path, step: int, complete: bool = True, weights: bytes = b"w" * 100) -> Path:
    """A checkpoint folder like transformers writes (weights, optimizer, a nested file), marked complete or not."""
    folder = root / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "optimizer.pt").write_bytes(b"o" * 50)
    (folder / "sub" / "rng_state_1.pth").write_bytes(b"r" * 7)
    if complete:
        checkpoints.write_marker(folder, step)
    return folder


# --------------------------------------------------------------------------- the marker


def test_a_checkpoint_is_complete_only_once_its_marker_lists_its_files(tmp_path):
    folder = _checkpoint(tmp_path, 4, complete=False)
    assert checkpoints.problem(folder) == "no completion marker"
    checkpoints.write_marker(folder, 4)
    marker = json.loads((folder / checkpoints.MARKER).read_text())
    assert marker == {"step": 4, "files": {"model.safetensors": 100, "optimizer.pt": 50, "sub/rng_state_1.pth": 7}}
    assert checkpoints.problem(folder) is None
    assert not list(folder.glob(".complete*")), "the marker's temporary file is gone"


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "model.safetensors").write_bytes(b"w" * 40), "model.safetensors has 40 bytes, not the 100"),
    (lambda f: (f / "sub" / "rng_state_1.pth").unlink(), "sub/rng_state_1.pth is missing"),
    (lambda f: (f / checkpoints.MARKER).write_text('{"step": 4, "fil'), "its complete.json is unreadable"),
    (lambda f: (f / checkpoints.MARKER).write_text('{"step": 4, "files": {}}'), "its complete.json is unreadable"),
    (lambda f: (f / checkpoints.MARKER).write_text('{"step": 3, "files": {"optimizer.pt": 50}}'),
     "its complete.json names step 3"),
])
def test_a_checkpoint_that_no_longer_matches_its_marker_is_not_complete(tmp_path, damage, why):
    folder = _checkpoint(tmp_path, 4)
    damage(folder)
    assert why in checkpoints.problem(folder)


def test_an_empty_folder_is_never_marked_complete(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        checkpoints.write_marker(tmp_path / "checkpoint-1", 1)


# --------------------------------------------------------------------------- choosing where to resume


def test_resume_takes_the_newest_complete_checkpoint_by_step_not_by_name(tmp_path):
    _checkpoint(tmp_path, 2)
    newest_complete = _checkpoint(tmp_path, 9)
    killed = _checkpoint(tmp_path, 10, complete=False)  # "checkpoint-10" < "checkpoint-9" as text
    truncated = _checkpoint(tmp_path, 11)
    (truncated / "model.safetensors").write_bytes(b"w")
    (tmp_path / "incomplete-checkpoint-12").mkdir()  # set aside earlier: not a candidate
    (tmp_path / "checkpoint-13.tmp").mkdir()
    plan = plan_resume(tmp_path)
    assert plan.checkpoint == newest_complete and plan.step == 9
    assert [(p.name, why.split(" ")[0]) for p, why in plan.broken] == [("checkpoint-11", "model.safetensors"),
                                                                        ("checkpoint-10", "no")]
    text = plan.describe(tmp_path)
    assert text.startswith(f"Resuming from {newest_complete} (step 9); skipped checkpoint-11 (model.safetensors has "
                           "1 bytes, not the 100 it was written with), set aside as incomplete-checkpoint-11; "
                           "checkpoint-10 (no completion marker")
    assert killed.exists(), "planning changes nothing"


def test_only_broken_checkpoints_start_over_and_say_so(tmp_path):
    _checkpoint(tmp_path, 3, complete=False)
    plan = plan_resume(tmp_path)
    assert plan.checkpoint is None and plan.step == 0 and [p.name for p, _ in plan.broken] == ["checkpoint-3"]
    assert plan.describe(tmp_path) == (f"No complete checkpoint in {tmp_path}: skipped checkpoint-3 (no completion "
                                       "marker), set aside as incomplete-checkpoint-3; starting over from step 0.")


def test_no_checkpoint_folder_at_all(tmp_path):
    plan = plan_resume(tmp_path / "checkpoints")
    assert plan.checkpoint is None and plan.broken == []
    assert "No checkpoint in" in plan.describe(tmp_path / "checkpoints")


def test_set_aside_renames_and_never_overwrites(tmp_path):
    first = checkpoints.set_aside(_checkpoint(tmp_path, 3, complete=False))
    again = _checkpoint(tmp_path, 3, complete=False)
    assert "set aside as incomplete-checkpoint-3-2" in plan_resume(tmp_path).describe(tmp_path)  # the name it gets
    second = checkpoints.set_aside(again)
    assert (first.name, second.name) == ("incomplete-checkpoint-3", "incomplete-checkpoint-3-2")
    assert (first / "model.safetensors").exists() and not (tmp_path / "checkpoint-3").exists()


def test_rotation_keeps_the_new_complete_checkpoint_and_what_was_set_aside(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, complete=False)
    aside = checkpoints.set_aside(_checkpoint(tmp_path, 5, complete=False))
    keep = _checkpoint(tmp_path, 3)
    (tmp_path / ".deleting-checkpoint-0").mkdir()  # rotations killed mid-delete
    (tmp_path / ".deleting-checkpoint-1").mkdir()  # (the name checkpoint-1 is renamed to on its way out)
    gone = checkpoints.rotate(tmp_path, keep)
    assert sorted(p.name for p in gone) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", aside.name]
    assert plan_resume(tmp_path).checkpoint == keep


def test_trim_log_keeps_the_steps_not_redone(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (0, 1, 2, 3)) + '{"step": 4, "lo')
    checkpoints.trim_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2]
    checkpoints.trim_log(tmp_path / "absent.jsonl", 2)  # nothing to trim
    assert not (tmp_path / "absent.jsonl").exists()


# --------------------------------------------------------------------------- the settings a resume keeps


def _config(**changes) -> dict:
    """A run's config.yaml as `_start_run` writes it: the settings, the resolved format and the model."""
    return _new(**changes) | {"format": "chat"}


def _new(**changes) -> dict:
    """The settings a resume is asked for, as the trainer hands them over: the TrainConfig (`format: auto`
    unresolved) and the model as resolved."""
    return to_dict(TrainConfig(**changes)) | {"model_path": "/models/tiny", "adapter": None}


def _diff(old: dict, new: dict, env: str | None = None) -> Change | None:
    return changed_setting(old, new, data_dir_env=env, resolve_format=lambda f: "chat" if f == "auto" else f)


def test_the_same_settings_resume():
    assert _diff(_config(), _new()) is None  # `auto` is what resolved to chat


@pytest.mark.parametrize("new", [
    dict(resume=True, report_to=["tensorboard"], save_steps=7, output_dir="elsewhere", gradient_checkpointing=True,
         accelerate_config="fsdp"),
    dict(batch_size=2, grad_accum=1, num_processes=2),  # 4 rows per step, as before
    dict(learning_rate=2e-5),  # what the old run's unset learning rate meant
    dict(format="chat"),  # what its `auto` resolved to
    dict(shots=9, dedicated_method="few-shot"),  # neither acts on a ManyICL run
    dict(eval_examples_per_task=5),  # no validation loss is computed
])
def test_settings_that_do_not_change_the_run_may_change(new):
    old = _config(batch_size=1, grad_accum=4)
    assert _diff(old, _new(batch_size=1, grad_accum=4) | new) is None


@pytest.mark.parametrize("old, new, expected", [
    (dict(method="few-shot"), {}, Change("method", "few-shot", "manyicl")),
    (dict(tasks=["sst2", "rte"]), dict(tasks=["rte", "sst2"]), Change("tasks", ["sst2", "rte"], ["rte", "sst2"])),
    (dict(max_seq_len=256), {}, Change("max_seq_len", 256, 2048)),
    (dict(seed=7), {}, Change("seed", 7, 1234)),
    (dict(learning_rate=1e-3), {}, Change("learning_rate", 1e-3, 2e-5)),
    (dict(max_steps=10), dict(max_tokens=10), Change("max_steps", 10, None)),
    (dict(lora_r=8, learning_rate=1e-4), dict(learning_rate=1e-4), Change("lora_r", 8, 0)),
    (dict(lora_r=8), dict(lora_r=8, lora_alpha=32), Change("lora_alpha", 16, 32)),
    (dict(lora_r=8), {}, Change("lora_r", 8, 0)),  # named before the default learning rates it implies differ
    (dict(lora_r=8), dict(lora_r=8, learning_rate=1e-4), Change("learning_rate", 2e-4, 1e-4)),  # the default, as it acted
    (dict(method="few-shot", shots=4), dict(method="few-shot", shots=2), Change("shots", 4, 2)),
    (dict(method="dedicated"), dict(method="dedicated", dedicated_method="manyicl"),
     Change("dedicated_method", "zero-shot", "manyicl")),
    (dict(eval_steps=5), dict(eval_steps=10), Change("eval_steps", 5, 10)),
    (dict(curve_points=[0.5]), {}, Change("curve_points", [0.5], [])),
    (dict(batch_size=2), {}, Change("rows_per_step", 2, 1)),
])
def test_a_changed_setting_is_named_with_both_values(old, new, expected):
    assert _diff(_config(**old), _new(**new)) == expected


def test_format_compares_as_resolved():
    assert _diff(_config(), _new(format="plain")) == Change("format", "chat", "plain")
    assert _diff(_config() | {"format": "plain"}, _new()) == Change("format", "plain", "chat")  # `auto` -> chat
    assert _diff(_config() | {"format": "auto"}, _new(format="chat")) is None  # a dedicated run's own config


def test_paths_compare_as_the_files_they_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = tmp_path / "my.yaml"
    old = _config(tasks=["sst2", str(task)], data_dir=str(tmp_path / "data"))
    assert _diff(old, _new(tasks=["sst2", "my.yaml"], data_dir="data")) is None
    assert _diff(old, _new(tasks=["sst2", "other/my.yaml"], data_dir="data")).name == "tasks"
    # an unset data directory means $HARNESS_DATA_DIR
    assert _diff(old, _new(tasks=["sst2", "my.yaml"]), env=str(tmp_path / "data")) is None
    assert _diff(old, _new(tasks=["sst2", "my.yaml"])) == Change("data_dir", str(tmp_path / "data"), None)


def test_the_model_compares_as_resolved_where_recorded():
    old = _config(model="tiny")
    assert _diff(old, _new(model="./elsewhere/../tiny")) is None  # the same resolved model_path
    change = _diff(old, _new() | {"model_path": "/models/other", "adapter": "/runs/a/final"})
    assert change == Change("model", "/models/tiny", "/models/other with adapter /runs/a/final")
    assert change.sentence() == "--model /models/tiny, not /models/other with adapter /runs/a/final"
    # a config without model_path (written by an older harness) compares the model as given
    legacy = {k: v for k, v in old.items() if k != "model_path"}
    assert _diff(legacy, _new(model="other")).name == "model"


def test_a_setting_the_old_config_lacks_is_not_compared():
    old = {k: v for k, v in _config().items() if k != "weight_decay"}
    assert _diff(old, _new(weight_decay=0.1)) is None
    assert _diff(_config(), _new(weight_decay=0.1)) == Change("weight_decay", 0.0, 0.1)


def test_messages_use_the_flags_people_type():
    assert Change("learning_rate", 1e-3, 2e-5).sentence() == "--lr 0.001, not 2e-05"
    assert Change("tasks", ["sst2", "rte"], ["sst2"]).sentence() == "--tasks sst2,rte, not sst2"
    assert Change("max_tokens", None, 100).sentence() == "--max-tokens unset, not 100"
    assert Change("rows_per_step", 2, 1).flag.startswith("rows per optimizer step")


def test_only_the_declared_settings_may_change():
    """A setting added to TrainConfig later is compared unless it is added to MAY_CHANGE on purpose."""
    fields = set(to_dict(TrainConfig()))
    assert checkpoints.MAY_CHANGE <= fields
    assert checkpoints.MAY_CHANGE == {"resume", "output_dir", "report_to", "save_steps", "batch_size", "grad_accum",
                                      "num_processes", "accelerate_config", "gradient_checkpointing"}
