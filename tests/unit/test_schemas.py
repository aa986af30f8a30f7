"""On-disk schemas: round trips, files written before the schemas existed, newer versions refused, and the
completeness check the trainer and the study share."""

from __future__ import annotations

import json

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.schemas import (
    SCHEMA_VERSION,
    CheckpointInfo,
    EvalManifest,
    StudyState,
    TrainManifest,
    is_complete,
)


def test_train_manifest_round_trip_leaves_out_what_a_running_run_lacks(tmp_path):
    manifest = TrainManifest(created="t", command=["harness"], seed=7, method="manyicl", status="running",
                             model="/m", data_sources={"rte": "files"})
    manifest.write(tmp_path / "manifest.json")
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert "steps" not in raw and "checkpoint" not in raw and raw["schema_version"] == SCHEMA_VERSION
    assert TrainManifest.read(tmp_path / "manifest.json") == manifest
    assert not is_complete(tmp_path)


def test_manifest_written_before_the_schemas_reads(tmp_path):
    old = {"created": "2026-01-01T00:00:00+00:00", "command": ["harness", "train"], "git": {"sha": None},
           "packages": {}, "hardware": {}, "seed": 1234, "kind": "train", "method": "zero-shot",
           "status": "complete", "model": "/m", "steps": 3, "seen": {"tokens": 10}, "final_train_loss": 1.5,
           "an_old_field": "ignored"}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    manifest = TrainManifest.read(tmp_path / "manifest.json")
    assert manifest.steps == 3 and manifest.is_complete and manifest.checkpoint is None
    assert is_complete(tmp_path)


def test_eval_manifest_and_checkpoint_info_without_optional_fields():
    manifest = EvalManifest.from_json({"model": "/m", "method": "base", "backend": "hf"})
    assert manifest.adapter is None and manifest.runs == [] and manifest.kind == "evaluate"
    info = CheckpointInfo.from_json({"method": "manyicl", "format": "chat", "base_model": "/m"})
    assert info.max_seq_len is None and info.adapter_only is False


def test_newer_schema_version_is_refused_in_one_sentence():
    with pytest.raises(HarnessError, match="schema_version 2 is newer"):
        StudyState.from_json({"schema_version": 2, "stages": {}}, "state.json")


def test_missing_required_field_names_the_file():
    with pytest.raises(HarnessError, match="m.json is missing a field"):
        TrainManifest.from_json({"method": "manyicl"}, "m.json")
