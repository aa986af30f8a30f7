"""summary.jsonl reading: sound lines become records; a bad line is skipped with a warning naming file and line."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.results import _FIELD_TYPES, _OPTIONAL_TYPES, ResultRecord, read_records, write_records

GOOD = {"model": "m", "model_path": "/m", "base_model": "/m", "method": "base", "task": "sst2",
        "family": "classification", "role": "train", "shots": "many", "shots_min": 3, "shots_mean": 3.5,
        "shots_max": 4, "metric": "accuracy", "value": 0.5, "stderr": None, "seed": 1, "num_docs": 2,
        "backend": "hf", "format": "chat", "max_length": 256, "created": "2026-01-01T00:00:00", "schema_version": 1}


def test_every_field_of_the_schema_is_checked():
    assert set(_FIELD_TYPES) | set(_OPTIONAL_TYPES) == {f.name for f in dataclasses.fields(ResultRecord)}


def test_a_version_1_line_reads_with_the_version_2_defaults(tmp_path):
    (tmp_path / "summary.jsonl").write_text(json.dumps(GOOD | {"schema_version": 1}) + "\n")
    (record,) = read_records([tmp_path], strict=True)
    assert record.train_seed is None and record.draws == 1 and record.draw_share == "1/1"


def test_round_trip(tmp_path):
    record = ResultRecord(**GOOD)
    write_records(tmp_path / "summary.jsonl", [record])
    assert read_records([tmp_path]) == [record]


@pytest.mark.parametrize("line, why", [
    ('{"model": "m", "val', "not valid JSON"),
    ("[1]", "not a JSON object"),
    (json.dumps(GOOD | {"schema_version": 3}), "schema_version 3, not 2"),
    (json.dumps({k: v for k, v in GOOD.items() if k not in ("task", "seed")}), "missing fields task, seed"),
    (json.dumps(GOOD | {"seed": "1"}), "field `seed` is '1', not a int"),
    (json.dumps(GOOD | {"num_docs": True}), "field `num_docs` is True"),
    (json.dumps(GOOD | {"shots": "5.5"}), "field `shots` is '5.5', not a number or `many`"),
    (json.dumps(GOOD | {"value": float("nan")}), "field `value` is nan, not a finite number"),
])
def test_a_bad_line_is_skipped_with_file_and_line_or_refused_when_strict(tmp_path, caplog, line, why):
    summary = tmp_path / "summary.jsonl"
    summary.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with caplog.at_level(logging.WARNING):
        records = read_records([tmp_path])
    assert records == [ResultRecord(**GOOD)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{summary}:3: skipped a result line: ") and why in warning
    with pytest.raises(HarnessError, match=rf"{summary}:3: cannot read this result line: .*{why[:12]}"):
        read_records([summary], strict=True)


def test_paths_that_are_not_summaries(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HarnessError, match="is not a summary.jsonl file"):
        read_records([tmp_path / "notes.txt"])
    with pytest.raises(HarnessError, match="does not exist"):
        read_records([tmp_path / "nowhere"])
    (tmp_path / "evals" / "summary.jsonl").mkdir(parents=True)  # a folder of that name is not a summary
    assert read_records([tmp_path]) == []
