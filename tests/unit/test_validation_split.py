"""The validation split carved from each training task's train split: seeded, sized, and disjoint from the test
split, from the demonstration pool evaluation draws from, and from the rows training reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.prompts import demonstration_pool
from manyicl.harness.settings import TrainConfig
from manyicl.tasks.registry import load_examples, load_task, validate
from manyicl.train.sequences import Renderer


def _task(folder: Path, name: str, rows: int = 50, validation: dict | None = None, duplicate: bool = False,
          probe: bool = False) -> Path:
    """A task with `rows` train rows (the last repeating row 0's input when `duplicate`) and 10 test rows."""
    data = folder / "data" / name
    data.mkdir(parents=True, exist_ok=True)
    train = [{"premise": f"premise {i}", "hypothesis": f"h {i}", "label": ["entailment", "not_entailment"][i % 2]}
             for i in range(rows)]
    if duplicate:
        train[-1] = dict(train[0])
    test = [{"premise": f"test premise {i}", "hypothesis": "h", "label": "entailment"} for i in range(10)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    body = {"name": name, "family": "nli", "probe": probe,
            "source": {"format": "jsonl", "files": {"train": f"{name}/train.jsonl", "test": f"{name}/test.jsonl"}},
            "prompt": "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", "choices": ["True", "False"],
            "labels": {"entailment": "True", "not_entailment": "False"}, "metric": "accuracy"}
    if validation is not None:
        body["validation"] = validation
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _load(path: Path, folder: Path):
    return load_examples(load_task(str(path)), folder / "data")


def _uids(examples) -> set[str]:
    return {ex.uid for ex in examples}


def test_default_is_ten_percent_rounded_down_and_disjoint_from_train_and_test(tmp_path):
    data = _load(_task(tmp_path, "nli_a", rows=57), tmp_path)
    assert len(data.validation) == 5 and len(data.train) == 52 and data.train_split_size == 57
    assert not _uids(data.validation) & _uids(data.train)
    assert not {ex.input for ex in data.validation} & {ex.input for ex in data.train + data.test}
    assert all(":train:" in uid for uid in _uids(data.validation))  # carved from the train split
    # what stays in train keeps the published order
    assert [ex.uid for ex in data.train] == sorted(_uids(data.train), key=lambda u: int(u.rsplit(":", 1)[1]))


def test_validation_is_seeded_and_deterministic(tmp_path):
    first = _load(_task(tmp_path / "one", "nli_s", validation={"seed": 7}), tmp_path / "one")
    again = _load(_task(tmp_path / "two", "nli_s", validation={"seed": 7}), tmp_path / "two")  # another file
    other = _load(_task(tmp_path / "three", "nli_s", validation={"seed": 8}), tmp_path / "three")
    assert [ex.uid for ex in first.validation] == [ex.uid for ex in again.validation]
    assert _uids(first.validation) != _uids(other.validation)
    assert len(other.validation) == len(first.validation) == 5


@pytest.mark.parametrize("rule, expected", [({"size": 12}, 12), ({"size": 0.5, "cap": 8}, 8), ({"size": 0}, 0),
                                            ({"size": 0.2}, 10)])
def test_size_count_fraction_cap_and_off(tmp_path, rule, expected):
    data = _load(_task(tmp_path, "nli_size", validation=rule), tmp_path)
    assert len(data.validation) == expected and len(data.train) == 50 - expected


def test_probes_keep_their_whole_demonstration_pool(tmp_path):
    data = _load(_task(tmp_path, "probe_like", probe=True), tmp_path)
    assert data.validation == () and len(data.train) == 50


def test_a_train_row_repeating_a_validation_input_is_dropped(tmp_path):
    # Row 49 repeats row 0's input; with size 49 every row but one is held out, so row 0 (or 49) is validation
    # and its twin must not stay in train.
    data = _load(_task(tmp_path, "nli_dup", duplicate=True, validation={"size": 49, "cap": 49}), tmp_path)
    assert len(data.validation) == 49
    assert not {ex.input for ex in data.validation} & {ex.input for ex in data.train}
    assert data.train_split_size == 50 and len(data.train) + data.dropped_validation_overlap == 1


def test_validation_leaving_no_train_rows_is_one_sentence(tmp_path):
    with pytest.raises(HarnessError, match="leaves no train rows"):
        _load(_task(tmp_path, "nli_all", validation={"size": 50, "cap": 100}), tmp_path)


@pytest.mark.parametrize("rule, snippet", [({"sizes": 3}, "may only have"), ({"size": -1}, "count or a fraction"),
                                           ({"cap": 1.5}, "count or a fraction")])
def test_bad_validation_rules_are_reported(tmp_path, rule, snippet):
    problems = validate(str(_task(tmp_path, "nli_bad", validation=rule)), tmp_path / "data")
    assert any(snippet in p for p in problems), problems


def test_demonstration_pool_never_holds_a_validation_row(tiny_data):
    for name in ("sst2", "rte", "gsm8k", "asdiv"):
        data = load_examples(load_task(name), tiny_data)
        assert data.validation, name
        for seed in (1, 2, 3):
            pool = demonstration_pool(data, seed)
            assert _uids(pool) == _uids(data.train) and not _uids(pool) & _uids(data.validation)


def test_training_rows_never_hold_a_validation_row(tiny_model, tiny_data):
    from transformers import AutoTokenizer

    from manyicl.train.trainer import build_training_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    renderer = Renderer(tokenizer, "chat")
    datasets = [load_examples(load_task(name), tiny_data) for name in ("sst2", "rte")]
    held = [ex for d in datasets for ex in d.validation]
    kept = [ex for d in datasets for ex in d.train]
    for method in ("zero-shot", "manyicl"):
        cfg = TrainConfig(method=method, tasks=["sst2", "rte"], max_seq_len=256, max_steps=60)
        training = build_training_data(cfg, renderer, datasets)
        used = {uid for p in training.packings for s in p.sequences for uid in s.example_uids}
        assert used and not used & _uids(held)
        # every row of every epoch drawn, by its text: no validation input, while train inputs do appear
        assert training.epochs > 1
        text = "\n".join(tokenizer.decode(row.input_ids) for row in training.rows)
        assert not [ex.uid for ex in held if ex.input in text]
        assert sum(ex.input in text for ex in kept) > len(kept) // 2


def test_real_training_tasks_hold_out_ten_percent_capped(real_data):
    sst2 = load_examples(load_task("sst2"), real_data)
    assert len(sst2.validation) == 500  # 10% of ~6,920 is above the cap
    rte = load_examples(load_task("rte"), real_data)
    assert len(rte.validation) == rte.train_split_size // 10
    assert not _uids(rte.validation) & _uids(rte.train)
    assert load_examples(load_task("arc_easy"), real_data).validation == ()
