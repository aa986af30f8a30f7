"""Settings: defaults < --config YAML < command-line flags; unknown keys are errors; tasks as text or list."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import (
    LR_SCHEDULERS,
    EvalConfig,
    TrainConfig,
    check_settings,
    help_for,
    load_settings,
    to_dict,
)


def _yaml(tmp_path: Path, data) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults():
    cfg = load_settings(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.method == "manyicl" and cfg.tasks == ["sst2", "rte"] and cfg.max_seq_len == 2048
    assert cfg.max_steps is None and not cfg.budget_given
    assert cfg.lr == 2e-5


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = _yaml(tmp_path, {"method": "few-shot", "shots": 8, "max_seq_len": 512, "lora_r": 4, "seed": 7})
    cfg = load_settings(TrainConfig, path, {"shots": 2, "seed": None, "max_steps": 5})
    assert cfg.method == "few-shot"  # from YAML
    assert cfg.max_seq_len == 512  # from YAML
    assert cfg.shots == 2  # the flag wins over YAML
    assert cfg.seed == 7  # a flag left unset (None) does not erase the YAML value
    assert cfg.max_steps == 5  # a flag over the default
    assert cfg.batch_size == 1  # neither: the default
    assert cfg.lr == 2e-4  # derived: LoRA's default learning rate
    assert cfg.budget_given


def test_false_and_zero_flags_still_override(tmp_path):
    path = _yaml(tmp_path, {"lora_merge": True, "lora_r": 8})
    cfg = load_settings(TrainConfig, path, {"lora_merge": False, "lora_r": 0})
    assert cfg.lora_merge is False and cfg.lora_r == 0


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = _yaml(tmp_path, {"method": "manyicl", "learning_rat": 1e-4})
    with pytest.raises(HarnessError, match=r"unknown setting `learning_rat`"):
        load_settings(TrainConfig, path)


@pytest.mark.parametrize("text, message", [
    ("method: [unclosed\n", "is not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_yaml_is_an_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HarnessError, match=message):
        load_settings(TrainConfig, path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        load_settings(TrainConfig, tmp_path / "absent.yaml")


def test_empty_yaml_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_settings(TrainConfig, path) == TrainConfig()


@pytest.mark.parametrize("value", ["sst2, rte ,trec", ["sst2", "rte", "trec"], ["sst2 ", " rte", "trec"], "sst2,rte,trec,"])
def test_tasks_as_comma_string_or_list(tmp_path, value):
    assert load_settings(TrainConfig, None, {"tasks": value}).tasks == ["sst2", "rte", "trec"]
    assert load_settings(TrainConfig, _yaml(tmp_path, {"tasks": value})).tasks == ["sst2", "rte", "trec"]


def test_every_setting_has_help_and_round_trips():
    for f in fields(TrainConfig):
        assert help_for(TrainConfig, f.name), f"{f.name} has no help"
    cfg = TrainConfig(tasks="cb", max_tokens=100)
    assert TrainConfig(**to_dict(cfg)) == cfg
    with pytest.raises(KeyError):
        help_for(TrainConfig, "nope")


def test_list_defaults_are_not_shared():
    a, b = TrainConfig(), TrainConfig()
    a.tasks.append("cb")
    assert b.tasks == ["sst2", "rte"]


# --------------------------------------------------------------------------- the same rule through `harness train`


@pytest.fixture
def captured(monkeypatch):
    """Run `harness train` without training: capture the settings it would train with."""
    import manyicl.harness.cli
    import manyicl.train.trainer

    seen: list[TrainConfig] = []

    def fake_run_training(cfg):
        seen.append(cfg)
        return Path("/nonexistent")

    monkeypatch.setattr(manyicl.train.trainer, "run_training", fake_run_training)
    monkeypatch.setattr(manyicl.harness.cli, "_print_run_summary", lambda run_dir: None)
    return seen


def test_cli_flags_override_the_config_file(tmp_path, captured):
    from manyicl.harness.cli import app

    path = _yaml(tmp_path, {"method": "few-shot", "shots": 8, "tasks": ["cb", "trec"], "lora_merge": False,
                            "resume": True, "max_tokens": 1000, "save_steps": 3})
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--shots", "3", "--tasks", "sst2"])
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert cfg.method == "few-shot" and cfg.shots == 3 and cfg.tasks == ["sst2"]
    assert cfg.lora_merge is False  # not given on the command line: the file's value stands
    assert cfg.resume is True  # --resume absent does not switch the file's resume off
    assert cfg.save_steps == 3 and cfg.max_tokens == 1000 and cfg.max_steps is None

    result = CliRunner().invoke(app, ["train", "--config", str(path), "--lora-merge", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert captured[1].lora_merge is True and captured[1].max_steps == 2 and captured[1].max_tokens == 1000


def test_cli_without_budget_trains_twenty_steps(captured):
    from manyicl.harness.cli import app

    result = CliRunner().invoke(app, ["train", "--tasks", "cb"])
    assert result.exit_code == 0, result.output
    assert captured[0].max_steps == 20 and captured[0].tasks == ["cb"]


def test_cli_unknown_key_in_config_file(tmp_path, captured):
    from manyicl.harness.cli import app

    result = CliRunner().invoke(app, ["train", "--config", str(_yaml(tmp_path, {"colour": "red"}))])
    assert isinstance(result.exception, HarnessError)
    assert "unknown setting `colour`" in str(result.exception)
    assert captured == []


# --------------------------------------------------------------------------- values checked before use


@pytest.mark.parametrize("values, message", [
    ({"max_steps": "two"}, r"`max_steps` must be a whole number, not the text \"two\"\.$"),
    ({"max_seq_len": "256"}, r"not the text \"256\"; write it without quotes"),
    ({"max_seq_len": 15}, r"`max_seq_len` must be at least 16, not 15"),
    ({"max_steps": True}, r"must be a whole number, not true or false"),
    ({"learning_rate": 0}, r"must be above 0, not 0"),
    ({"learning_rate": "fast"}, r"must be a number, not the text \"fast\""),
    ({"warmup_ratio": 1.0}, r"must be below 1, not 1"),
    ({"lora_merge": "no"}, r"must be true or false"),
    ({"tasks": {"sst2": 1}}, r"must be a list, not a mapping"),
    ({"tasks": ["sst2", ["rte"]]}, r"must be a list of texts"),
    ({"curve_points": [0.5, "half"]}, r"must be a list of numbers"),
    ({"method": "manyICL"}, r"must be one of zero-shot, .* not `manyICL`"),
    ({"lr_scheduler": "cosine_annealing"}, r"must be one of linear, cosine"),
    ({"batch_size": None}, r"must be a whole number, not empty"),
])
def test_a_bad_value_names_the_setting_in_the_file(tmp_path, values, message):
    path = _yaml(tmp_path, values)
    with pytest.raises(HarnessError) as err:
        load_settings(TrainConfig, path)
    assert str(err.value).startswith(f"Config file {path}: `{next(iter(values))}` ")
    assert re.search(message, str(err.value)), str(err.value)


def test_a_bad_flag_is_named_as_a_flag():
    with pytest.raises(HarnessError, match=r"^--max-seq-len must be at least 16, not 0\.$"):
        load_settings(TrainConfig, None, {"max_seq_len": 0})
    with pytest.raises(HarnessError, match=r"^--dtype must be one of auto, bfloat16, float16, float32, not `fp16`\.$"):
        load_settings(EvalConfig, None, {"dtype": "fp16"})


def test_sound_values_are_taken_and_converted(tmp_path):
    # PyYAML reads 2e-5 (no dot) as text: a float field takes it as the number it means
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2e-5\nwarmup_ratio: 0\nmax_tokens: 1000\ncurve_points: [0.5, 1]\n")
    cfg = load_settings(TrainConfig, path)
    assert cfg.learning_rate == 2e-5 and isinstance(cfg.warmup_ratio, float) and cfg.max_tokens == 1000
    assert cfg.curve_points == [0.5, 1.0]


def test_the_scheduler_choices_are_transformers_own():
    from transformers import SchedulerType

    assert set(LR_SCHEDULERS) == {t.value for t in SchedulerType}


def test_check_settings_names_where_a_value_came_from():
    with pytest.raises(HarnessError, match=r"^Study s\.yaml: `train\.seed` must be at least 0, not -1\.$"):
        check_settings(TrainConfig, {"seed": -1}, lambda name: f"Study s.yaml: `train.{name}`")
    with pytest.raises(HarnessError, match=r"`train\.colour` is not a setting; known: "):
        check_settings(TrainConfig, {"colour": 1}, lambda name: f"`train.{name}`")


def test_a_runs_config_yaml_loads_back_with_absolute_task_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_settings(TrainConfig, None, {"tasks": "mine.yaml,rte", "data_dir": "data", "max_steps": 2})
    assert cfg.tasks == [str(tmp_path / "mine.yaml"), "rte"] and cfg.data_dir == str(tmp_path / "data")
    recorded = to_dict(cfg) | {"format": "chat", "model_path": "/models/x", "adapter": None}  # what a run writes
    path = _yaml(tmp_path, recorded)
    monkeypatch.chdir("/")
    again = load_settings(TrainConfig, path)
    assert again == TrainConfig(**(to_dict(cfg) | {"format": "chat"}))


def test_the_backend_choices_are_the_registered_runners():
    from dataclasses import fields as dataclass_fields

    from manyicl.harness.lm_eval_bridge import BACKENDS

    backend = next(f for f in dataclass_fields(EvalConfig) if f.name == "backend")
    assert set(backend.metadata["choices"]) == set(BACKENDS)  # a new runner must be named in the setting too
