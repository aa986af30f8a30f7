"""`--model` resolution: folders, run directories, LoRA adapters, hub ids, the default model, and mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import manyicl.harness.models as models
from manyicl.harness.errors import HarnessError
from manyicl.harness.models import DEFAULT_HUB_ID, DEFAULT_MODEL, resolve_model

EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a whole safetensors file holding no tensors


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(EMPTY_SAFETENSORS)  # resolution checks the files exist; nothing loads them here
    (path / "tokenizer.json").write_text("{}")
    return path


def _adapter_folder(path: Path, base: str | None) -> Path:
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": 4}
    if base is not None:
        cfg["base_model_name_or_path"] = base
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    (path / "adapter_model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    return path


def test_model_folder(tmp_path):
    folder = _model_folder(tmp_path / "my model")
    resolved = resolve_model(str(folder))
    assert resolved.path == str(folder.resolve())
    assert resolved.adapter is None
    assert resolved.name == "my-model"
    assert resolved.is_local


def test_run_directory_uses_its_final_checkpoint(tmp_path):
    run = tmp_path / "20261128T000000Z-tiny-manyicl"
    final = _model_folder(run / "final")
    (run / "manifest.json").write_text("{}")
    (run / "checkpoints").mkdir()
    resolved = resolve_model(str(run))
    assert resolved.path == str(final.resolve())
    assert resolved.adapter is None
    assert resolved.name == run.name  # named after the run, which says model and method
    assert resolve_model(str(final)) == resolved


def test_lora_adapter_folder_puts_the_adapter_on_its_base(tmp_path):
    base = _model_folder(tmp_path / "base")
    adapter = _adapter_folder(tmp_path / "adapter", str(base))
    resolved = resolve_model(str(adapter))
    assert resolved.path == str(base.resolve())
    assert resolved.adapter == str(adapter.resolve())
    assert resolved.name == "adapter"


def test_adapter_only_run_directory(tmp_path):
    base = _model_folder(tmp_path / "base")
    run = tmp_path / "run-lora"
    _adapter_folder(run / "final", str(base))
    (run / "manifest.json").write_text("{}")
    resolved = resolve_model(str(run))
    assert resolved.adapter == str((run / "final").resolve())
    assert resolved.path == str(base.resolve())
    assert resolved.name == "run-lora"


def test_adapter_on_a_hub_base(tmp_path):
    adapter = _adapter_folder(tmp_path / "adapter", "org/base-model")
    resolved = resolve_model(str(adapter))
    assert resolved.path == "org/base-model" and resolved.adapter == str(adapter.resolve())


def test_adapter_without_base_is_an_error(tmp_path):
    adapter = _adapter_folder(tmp_path / "adapter", None)
    with pytest.raises(HarnessError, match="names no base_model_name_or_path"):
        resolve_model(str(adapter))


def test_adapter_whose_base_folder_is_gone_is_an_error(tmp_path):
    adapter = _adapter_folder(tmp_path / "adapter", str(tmp_path / "deleted" / "base"))
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_model(str(adapter))


@pytest.mark.parametrize("spec", ["/nonexistent/model", "./missing-model", "~/missing-model-xyz", "a/b/c"])
def test_missing_path_is_an_error(spec):
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_model(spec)


def test_folder_without_weights_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="neither config.json nor adapter_config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("spec, name", [("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
                                        ("gpt2", "gpt2")])
def test_hub_id_passes_through(spec, name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    resolved = resolve_model(spec)
    assert resolved.path == spec and resolved.adapter is None and resolved.name == name
    assert not resolved.is_local


def test_default_model_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    cached = _model_folder(tmp_path / "models" / "SmolLM2-135M-Instruct")
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("converted although cached"))
    for spec in (None, DEFAULT_MODEL):
        resolved = resolve_model(spec)
        assert Path(resolved.path) == cached and resolved.name == DEFAULT_MODEL and resolved.adapter is None


def test_default_model_without_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "gguf_file", lambda: None)
    with pytest.raises(HarnessError, match="not available offline"):
        resolve_model(None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_model(None).path == DEFAULT_HUB_ID


def test_default_model_converts_from_the_wheel_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    source = tmp_path / "wheel" / "model.gguf"
    monkeypatch.setattr(models, "gguf_file", lambda: source)
    calls = []

    def convert(src, target):
        calls.append((src, target))
        return _model_folder(target)

    monkeypatch.setattr(models, "convert_gguf", convert)
    first = resolve_model(None)
    second = resolve_model(None)
    assert calls == [(source, tmp_path / "models" / "SmolLM2-135M-Instruct")]
    assert first == second and Path(first.path) == tmp_path / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("remove, write, message", [
    ("model.safetensors", None, "has config.json but no weights"),
    ("tokenizer.json", None, "has no tokenizer"),
    (None, ("config.json", '{"model_type": "lla'), "config.json cannot be read as JSON"),
    (None, ("config.json", "[1]"), "is not a JSON object"),
])
def test_incomplete_model_folder_is_one_sentence(tmp_path, remove, write, message):
    folder = _model_folder(tmp_path / "copy")
    if remove:
        (folder / remove).unlink()
    if write:
        (folder / write[0]).write_text(write[1])
    with pytest.raises(HarnessError, match=message):
        resolve_model(str(folder))


def test_sharded_weights_count_as_weights(tmp_path):
    folder = _model_folder(tmp_path / "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    assert resolve_model(str(folder)).path == str(folder.resolve())


def test_adapter_without_weights_and_model_file_are_errors(tmp_path):
    adapter = _adapter_folder(tmp_path / "adapter", "org/base")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(HarnessError, match="no adapter weights"):
        resolve_model(str(adapter))
    weights = _model_folder(tmp_path / "m") / "model.safetensors"
    with pytest.raises(HarnessError, match=r"is a file; pass the folder that holds it"):
        resolve_model(str(weights))
