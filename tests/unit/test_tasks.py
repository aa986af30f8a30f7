"""Task definitions and data: raw-format parsers, rendering, seeded splits, no test row in train, validation,
every built-in task against the tiny and the real data, and the hub fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from manyicl.harness.errors import HarnessError
from manyicl.tasks.formats import (
    PARSERS,
    parse_csv,
    parse_jsonl,
    parse_label_text_lines,
    parse_mmlu_jsonl,
    parse_trec_lines,
    parse_winogrande_jsonl,
)
from manyicl.tasks.registry import (
    builtin_task_files,
    list_tasks,
    load_examples,
    load_task,
    parse_task_list,
    validate,
)

BUILTIN = builtin_task_files()
BUILTIN_IDS = [p.stem for p in BUILTIN]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _task_file(folder: Path, name: str, body: dict) -> Path:
    return _write(folder / f"{name}.yaml", yaml.safe_dump({"name": name, **body}, sort_keys=False))


def _nli_jsonl_task(folder: Path, prompt: str) -> Path:
    """The task file `nli` over data/nli/{train,val}.jsonl (premise, hypothesis, label) with the given prompt."""
    return _task_file(folder, "nli", {
        "family": "nli", "source": {"format": "jsonl", "files": {"train": "nli/train.jsonl", "test": "nli/val.jsonl"}},
        "prompt": prompt, "choices": ["True", "False"],
        "labels": {"entailment": "True", "not_entailment": "False"}, "metric": "accuracy"})


# --------------------------------------------------------------------------- raw formats


def test_label_text_lines(tmp_path):
    path = _write(tmp_path / "train", "1 a stirring , funny film .\n\n0 apparently reassembled  \n")
    assert parse_label_text_lines(path) == [{"label": "1", "text": "a stirring , funny film ."},
                                            {"label": "0", "text": "apparently reassembled"}]


@pytest.mark.parametrize("bad", ["1", "1 ", "1    "])
def test_label_text_lines_malformed_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "train", f"1 fine line\n\n{bad}\n0 another\n")
    with pytest.raises(HarnessError, match=rf"{path}:3: expected `LABEL text`"):
        parse_label_text_lines(path)


def test_trec_lines(tmp_path):
    path = _write(tmp_path / "train.txt", "DESC:manner How did serfdom develop ?\nNUM:date When was it ?")
    assert parse_trec_lines(path) == [
        {"label": "DESC", "fine": "manner", "text": "How did serfdom develop ?"},
        {"label": "NUM", "fine": "date", "text": "When was it ?"},
    ]


@pytest.mark.parametrize("bad", ["DESC How did it ?", "DESC:manner", "How"])
def test_trec_lines_malformed_line_names_file_and_line(tmp_path, bad):
    path = _write(tmp_path / "train.txt", f"NUM:date When ?\n{bad}\n")
    with pytest.raises(HarnessError, match=rf"{path}:2: expected `COARSE:fine question`"):
        parse_trec_lines(path)


def test_jsonl(tmp_path):
    path = _write(tmp_path / "x.jsonl", '{"a": 1}\n\n{"a": 2, "b": "x"}\n')
    assert parse_jsonl(path) == [{"a": 1}, {"a": 2, "b": "x"}]


@pytest.mark.parametrize("bad, message", [('{"a": 1', "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "x.jsonl", '{"a": 1}\n{"a": 2}\n' + bad + "\n")
    with pytest.raises(HarnessError, match=rf"{path}:3: {message}"):
        parse_jsonl(path)


def test_mmlu_jsonl(tmp_path):
    row = {"question": "Which?", "options": "A. $25000 $0\nB. $0 $25000\nC. one\nD. two", "answer": "C. one"}
    (record,) = parse_mmlu_jsonl(_jsonl(tmp_path / "mmlu.jsonl", [row]))
    assert record["choices"] == ["A", "B", "C", "D"]
    assert record["gold"] == 2
    assert record["question"] == "Which?"


@pytest.mark.parametrize("bad", [
    {"question": "Which?", "options": "A. one\nB. two", "answer": "E. five"},  # answer not an option
    {"question": "Which?", "answer": "A. one"},  # no options
    {"question": "Which?", "options": 3, "answer": "A. one"},  # options not text
])
def test_mmlu_jsonl_malformed_line_names_file_and_line(tmp_path, bad):
    good = {"question": "Q", "options": "A. one\nB. two", "answer": "A. one"}
    path = _jsonl(tmp_path / "mmlu.jsonl", [good, bad])
    with pytest.raises(HarnessError, match=rf"{path}:2: "):
        parse_mmlu_jsonl(path)


def test_winogrande_jsonl_recasts_partial_scoring_as_a_blank(tmp_path):
    rows = [{"context_options": ["Sarah was a much better surgeon than Maria so Sarah",
                                 "Sarah was a much better surgeon than Maria so Maria"],
             "continuation": "always got the easier cases.", "gold": 1},
            {"context_options": ["He put the cup on the mat because the man", "He put the cup on the mat because the mailman"],
             "continuation": "was tired.", "gold": "0"}]
    first, second = parse_winogrande_jsonl(_jsonl(tmp_path / "w.jsonl", rows))
    assert first == {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                     "choices": ["Sarah", "Maria"], "gold": 1}
    # fillers sharing a prefix are cut at the word boundary, not mid-word
    assert second == {"sentence": "He put the cup on the mat because the _ was tired.",
                      "choices": ["man", "mailman"], "gold": 0}


@pytest.mark.parametrize("bad", [
    {"continuation": "x.", "gold": 0},  # no context_options
    {"context_options": ["only one"], "continuation": "x.", "gold": 0},
    {"context_options": ["a b", "a c"], "continuation": "x.", "gold": "first"},
])
def test_winogrande_jsonl_malformed_line_names_file_and_line(tmp_path, bad):
    good = {"context_options": ["it was a b", "it was a c"], "continuation": "x.", "gold": 0}
    path = _jsonl(tmp_path / "w.jsonl", [good, good, bad])
    with pytest.raises(HarnessError, match=rf"{path}:3: "):
        parse_winogrande_jsonl(path)


def test_every_builtin_format_has_a_parser():
    assert {t.format for t in list_tasks()} <= set(PARSERS)
    assert set(PARSERS) == {"label_text_lines", "trec_lines", "jsonl", "mmlu_jsonl", "winogrande_jsonl", "csv"}


# --------------------------------------------------------------------------- rendering and splits


def _sst_like(folder: Path, name: str = "mini_sst", labels: tuple[str, ...] = ("0", "1", "1", "0")) -> Path:
    _write(folder / "data" / name / "train", "".join(f"{lab} train sentence {i} .\n" for i, lab in enumerate(labels)))
    _write(folder / "data" / name / "test", "1 a test sentence .\n0 another test sentence .\n")
    return _task_file(folder, name, {
        "family": "classification", "source": {"format": "label_text_lines",
                                               "files": {"train": f"{name}/train", "test": f"{name}/test"}},
        "prompt": "Review: {text}\nSentiment:", "choices": ["negative", "positive"],
        "labels": {"0": "negative", "1": "positive"}, "metric": "accuracy"})


def test_render_label_task(tmp_path):
    data = load_examples(load_task(str(_sst_like(tmp_path))), tmp_path / "data")
    first = data.train[0]
    assert first.input == "Review: train sentence 0 .\nSentiment:"
    assert first.answer == "negative" and first.gold == 0 and first.choices == ("negative", "positive")
    assert [ex.answer for ex in data.train] == ["negative", "positive", "positive", "negative"]
    assert [ex.uid for ex in data.test] == ["mini_sst:test:0", "mini_sst:test:1"]


def test_label_outside_choices_is_an_error(tmp_path):
    task = load_task(str(_sst_like(tmp_path, labels=("0", "1", "2"))))
    with pytest.raises(HarnessError, match=r"row mini_sst:train:2 has label '2', which is not one of the choices"):
        load_examples(task, tmp_path / "data")
    problems = validate(str(task.path), tmp_path / "data")
    assert len(problems) == 1 and "mini_sst:train:2" in problems[0]


def test_gold_outside_choices_is_an_error(tmp_path):
    _jsonl(tmp_path / "data" / "mc" / "all.jsonl", [{"q": f"q{i}", "choices": ["x", "y"], "gold": i} for i in range(4)])
    path = _task_file(tmp_path, "mc", {"family": "qa", "source": {"format": "jsonl", "files": {"test": "mc/all.jsonl"}},
                                       "split": {"seed": 1, "test_size": 1}, "prompt": "{q}",
                                       "choices_field": "choices", "metric": "accuracy"})
    with pytest.raises(HarnessError, match="outside its 2 choices"):
        load_examples(load_task(str(path)), tmp_path / "data")


def test_missing_template_field_is_an_error(tmp_path):
    _jsonl(tmp_path / "data" / "gen" / "all.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(6)])
    path = _task_file(tmp_path, "gen", {"family": "math", "source": {"format": "jsonl", "files": {"test": "gen/all.jsonl"}},
                                        "split": {"seed": 1, "test_size": 2}, "prompt": "{question} {passage}",
                                        "answer": "{answer}", "metric": "exact_match_number"})
    with pytest.raises(HarnessError, match="has no field `passage`"):
        load_examples(load_task(str(path)), tmp_path / "data")


def _single_split(folder: Path, name: str, seed: int, test_size: float, rows: int = 50) -> Path:
    _jsonl(folder / "data" / "single" / "all.jsonl",
           [{"document": f"document number {i}", "summary": f"summary {i}"} for i in range(rows)])
    return _task_file(folder, name, {
        "family": "summarization", "source": {"format": "jsonl", "files": {"test": "single/all.jsonl"}},
        "split": {"seed": seed, "test_size": test_size}, "prompt": "Document: {document}\nSummary:",
        "answer": "{summary}", "metric": "rouge_l"})


def _inputs(examples) -> list[str]:
    return [ex.input for ex in examples]


def test_single_split_is_deterministic_and_seeded(tmp_path):
    data_dir = tmp_path / "data"
    a = load_examples(load_task(str(_single_split(tmp_path, "split_a", 7, 0.3))), data_dir)
    a_again = load_examples(load_task(str(_single_split(tmp_path / "again", "split_a", 7, 0.3))),
                            data_dir)  # a separate file with the same rule
    b = load_examples(load_task(str(_single_split(tmp_path, "split_b", 8, 0.3))), data_dir)
    assert len(a.test) == 15 and a.train_split_size == 35  # validation is carved from these 35
    assert _inputs(a.test) == _inputs(a_again.test) and _inputs(a.train) == _inputs(a_again.train)
    assert set(_inputs(a.test)) != set(_inputs(b.test))
    assert len(b.test) == 15
    for data in (a, b):
        assert not set(_inputs(data.train)) & set(_inputs(data.test))
        assert len(set(_inputs(data.train + data.validation)) | set(_inputs(data.test))) == 50


def test_single_split_test_size_count_and_too_large(tmp_path):
    data = load_examples(load_task(str(_single_split(tmp_path, "count", 1, 12))), tmp_path / "data")
    assert (data.train_split_size, len(data.test)) == (38, 12)
    with pytest.raises(HarnessError, match="leaves no train or no test rows"):
        load_examples(load_task(str(_single_split(tmp_path, "toobig", 1, 50))), tmp_path / "data")


def test_row_published_in_both_splits_never_reaches_train(tmp_path):
    rows = [{"premise": f"premise {i}", "hypothesis": f"h {i}", "label": "entailment"} for i in range(6)]
    test_rows = [rows[2], {"premise": "only in test", "hypothesis": "h", "label": "not_entailment"}]
    _jsonl(tmp_path / "data" / "nli" / "train.jsonl", rows)
    _jsonl(tmp_path / "data" / "nli" / "val.jsonl", test_rows)
    path = _nli_jsonl_task(tmp_path, "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:")
    data = load_examples(load_task(str(path)), tmp_path / "data")
    assert data.dropped_overlap == 1
    assert len(data.train) == 5 and len(data.test) == 2
    assert not set(_inputs(data.train)) & set(_inputs(data.test))
    assert "nli:train:2" not in {ex.uid for ex in data.train}


# --------------------------------------------------------------------------- definitions and validate()


def test_validate_reports_every_problem_as_sentences(tmp_path):
    path = _write(tmp_path / "bad_task.yaml", yaml.safe_dump({
        "name": "other_name", "family": "poetry", "metric": "bleu", "colour": "blue",
        "source": {"format": "jsonl", "files": {"test": "x/test.jsonl"}, "mirror": "x"}}))
    problems = validate(str(path))
    expected = ["unknown field `colour`", "unknown field `source.mirror`", "missing required field `prompt`",
                "`family: poetry` is not one of", "`metric: bleu` is not one of",
                "`name: other_name` must equal the file name `bad_task`", "has no train split; add `split:"]
    for snippet in expected:
        assert sum(snippet in p for p in problems) == 1, f"{snippet!r} not reported once in {problems}"
    assert len(problems) == len(expected)
    for problem in problems:
        assert problem.startswith("bad_task.yaml: ")
        assert problem.endswith(".") and "\n" not in problem


@pytest.mark.parametrize("body, snippet", [
    ({"family": "qa", "source": {"format": "jsonl", "files": {"test": "t.jsonl"}}, "split": {"seed": 1},
      "prompt": "{q}", "choices": ["a", "b"], "metric": "accuracy"}, "`split` must have exactly `seed` and `test_size`"),
    ({"family": "qa", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}},
      "split": {"seed": 1, "test_size": 3}, "prompt": "{q}", "choices": ["a", "b"], "metric": "accuracy"},
     "`split` is only for sources with a single split"),
    ({"family": "qa", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}}, "prompt": "{q}",
      "metric": "accuracy"}, "needs `choices` (a fixed list) or `choices_field`"),
    ({"family": "qa", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}}, "prompt": "{q}",
      "choices": ["a"], "metric": "accuracy"}, "at least two answer texts"),
    ({"family": "qa", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}}, "prompt": "{q}",
      "choices": ["a", "b"], "labels": {"x": "c"}, "metric": "accuracy"}, "not in `choices`"),
    ({"family": "math", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}}, "prompt": "{q}",
      "metric": "exact_match_number"}, "a generation task needs `answer`"),
    ({"family": "math", "source": {"format": "xml", "files": {"train": "a", "test": "b"}}, "prompt": "{q",
      "answer": "{a}", "metric": "exact_match_number"}, "`source.format: xml` is not one of"),
    ({"family": "math", "source": {"format": "jsonl", "files": {"train": "a", "test": "b"}}, "prompt": "{q",
      "answer": "{a}", "metric": "exact_match_number"}, "`prompt` is not a valid template"),
    ({"family": "math", "source": {"format": "jsonl"}, "prompt": "{q}", "answer": "{a}",
      "metric": "exact_match_number"}, "needs `files` (under the data directory) or `hub`"),
    ({"family": "math", "source": {"hub": {"path": "x/y", "adapter": "nope", "revision": 2}}, "prompt": "{q}",
      "answer": "{a}", "metric": "exact_match_number"}, "`source.hub.adapter: nope` is not one of"),
])
def test_validate_names_each_kind_of_problem(tmp_path, body, snippet):
    problems = validate(str(_task_file(tmp_path, "t", body)))
    assert any(snippet in p for p in problems), problems


def test_validate_yaml_syntax_error_and_missing_file(tmp_path):
    broken = _write(tmp_path / "broken.yaml", "name: broken\nfamily: [qa\nprompt: x\n")
    (problem,) = validate(str(broken))
    assert "is not valid YAML" in problem and "line" in problem
    (problem,) = validate(str(tmp_path / "absent.yaml"))
    assert "no such task file" in problem


def test_validate_reports_missing_data_files(tmp_path):
    (problem,) = validate("sst2", tmp_path)
    assert "data files not found" in problem and "stsa.binary.train" in problem
    (problem,) = validate("sst2", tmp_path / "nowhere")
    assert "does not exist" in problem


def test_load_task_errors():
    with pytest.raises(HarnessError, match="Unknown task `sst3`; choose one of"):
        load_task("sst3")
    with pytest.raises(HarnessError, match="does not exist"):
        load_task("/nowhere/task.yaml")


def test_parse_task_list_groups_and_dedupes():
    assert [t.name for t in parse_task_list("sst2, rte,sst2")] == ["sst2", "rte"]
    assert [t.name for t in parse_task_list(["rte", "cb"])] == ["rte", "cb"]
    train = {t.name for t in parse_task_list("all-train")}
    probes = {t.name for t in parse_task_list("all-probes")}
    assert probes == {"arc_easy", "arc_challenge", "commonsense_qa", "openbook_qa", "piqa", "winogrande", "mmlu"}
    assert not train & probes and train | probes == set(BUILTIN_IDS)
    with pytest.raises(HarnessError, match="No tasks given"):
        parse_task_list(" , ")


# --------------------------------------------------------------------------- every built-in task


@pytest.mark.parametrize("path", BUILTIN, ids=BUILTIN_IDS)
def test_builtin_task_validates_against_the_tiny_data(path, tiny_data):
    assert validate(str(path), tiny_data) == []
    data = load_examples(load_task(path.stem), tiny_data)
    assert data.train and data.test
    assert not set(_inputs(data.train)) & set(_inputs(data.test))
    task = data.task
    for ex in data.train[:5] + data.test[:5]:
        assert ex.input and ex.answer
        if task.kind == "multiple_choice":
            assert ex.choices[ex.gold] == ex.answer


# rows in the published files (non-empty lines), and the test rows each task's definition yields from them
REAL = {
    "sst2": (6920 + 1821, 1821), "trec": (5452 + 500, 500), "rte": (2490 + 277, 277), "cb": (250 + 56, 56),
    "gsm8k": (7473 + 1319, 1319), "boolq": (3270, 981), "xsum": (1000, 200), "asdiv": (2305, 461),
    "arc_easy": (2376, 2138), "arc_challenge": (1172, 1055), "commonsense_qa": (1221, 1099),
    "openbook_qa": (500, 450), "piqa": (1838, 1654), "winogrande": (1267, 1140), "mmlu": (2850, 2565),
}


# train rows whose input equals a test input up to whitespace and case (trec: 10 exact, 1 differing in case only)
DROPPED = {"arc_challenge": 1, "arc_easy": 1, "asdiv": 1, "mmlu": 2, "piqa": 5, "sst2": 3, "trec": 11}


def test_real_table_covers_every_builtin_task():
    assert set(REAL) == set(BUILTIN_IDS)


@pytest.mark.parametrize("path", BUILTIN, ids=BUILTIN_IDS)
def test_builtin_task_against_the_real_data(path, real_data):
    assert validate(str(path), real_data) == []
    data = load_examples(load_task(path.stem), real_data)
    rows, n_test = REAL[path.stem]
    assert len(data.test) == n_test
    assert data.train_split_size + len(data.test) + data.dropped_overlap == rows
    assert data.dropped_overlap == DROPPED.get(path.stem, 0)
    assert not set(_inputs(data.train)) & set(_inputs(data.test)), "a test input appears in train"
    if data.task.kind == "multiple_choice":
        golds = {ex.gold for ex in data.test}
        assert len(golds) > 1, "every test row has the same answer: the labels are misread"


def test_real_data_row_counts_named_in_the_brief(real_data):
    sst2 = load_examples(load_task("sst2"), real_data)
    assert 6917 <= sst2.train_split_size <= 6920
    assert len(load_examples(load_task("gsm8k"), real_data).test) == 1319
    boolq = load_examples(load_task("boolq"), real_data)
    assert len(boolq.test) == round(0.3 * 3270)
    assert boolq.train_split_size + len(boolq.test) + boolq.dropped_overlap == 3270


# --------------------------------------------------------------------------- the hub fallback


def _fake_hub(monkeypatch, expected_path: str, expected_name: str | None, splits: dict):
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        assert path == expected_path and name == expected_name
        calls.append(split)
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def _rte_rows(n: int, offset: int = 0) -> list[dict]:
    labels = ["entailment", "not_entailment"]
    return [{"premise": f"premise {offset + i} .", "hypothesis": f"hypothesis {offset + i}", "label": labels[i % 2],
             "idx": i} for i in range(n)]


def test_hub_fallback_rte_renders_like_the_files(tmp_path, monkeypatch):
    import datasets

    train, val = _rte_rows(6), _rte_rows(3, offset=100)
    _jsonl(tmp_path / "files" / "rte" / "train.jsonl", train)
    _jsonl(tmp_path / "files" / "rte" / "val.jsonl", val)
    task = load_task("rte")
    from_files = load_examples(task, tmp_path / "files")

    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"]),
                                  "idx": datasets.Value("int32")})

    def glue(rows):
        return datasets.Dataset.from_dict({"sentence1": [r["premise"] for r in rows],
                                           "sentence2": [r["hypothesis"] for r in rows],
                                           "label": [["entailment", "not_entailment"].index(r["label"]) for r in rows],
                                           "idx": [r["idx"] for r in rows]}, features=features)

    calls = _fake_hub(monkeypatch, "nyu-mll/glue", "rte", {"train": glue(train), "validation": glue(val)})
    (tmp_path / "empty").mkdir()
    from_hub = load_examples(task, tmp_path / "empty")
    assert sorted(calls) == ["train", "validation"]
    assert from_hub.source.startswith("hub: nyu-mll/glue")
    assert from_hub.train == from_files.train and from_hub.test == from_files.test
    assert [ex.answer for ex in from_hub.train[:2]] == ["True", "False"]


def test_hub_fallback_boolq_renders_like_the_files(tmp_path, monkeypatch):
    import datasets

    rows = [{"question": f"is thing {i} true", "passage": f"Thing {i} is described here .", "answer": i % 3 == 0}
            for i in range(20)]
    _jsonl(tmp_path / "files" / "boolq" / "test.jsonl",
           [{"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"],
             "gold": int(r["answer"])} for r in rows])
    task = load_task("boolq")
    from_files = load_examples(task, tmp_path / "files")
    hub = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("question", "passage", "answer")})
    assert hub.features["answer"].dtype == "bool"
    _fake_hub(monkeypatch, "google/boolq", None, {"validation": hub})
    (tmp_path / "empty").mkdir()
    from_hub = load_examples(task, tmp_path / "empty")
    assert len(from_hub.test) == round(0.3 * 20)
    assert from_hub.train == from_files.train and from_hub.test == from_files.test
    assert {ex.answer for ex in from_hub.test + from_hub.train} == {"yes", "no"}


def test_hub_fallback_sst2_class_labels(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features({"idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    train = datasets.Dataset.from_dict({"idx": [0, 1, 2], "sentence": ["good film ", "bad film", "fine"],
                                        "label": [1, 0, 1]}, features=features)
    val = datasets.Dataset.from_dict({"idx": [0], "sentence": ["awful"], "label": [0]}, features=features)
    _fake_hub(monkeypatch, "stanfordnlp/sst2", None, {"train": train, "validation": val})
    data = load_examples(load_task("sst2"), tmp_path)
    assert [(ex.input, ex.answer) for ex in data.train] == [("Review: good film\nSentiment:", "positive"),
                                                            ("Review: bad film\nSentiment:", "negative"),
                                                            ("Review: fine\nSentiment:", "positive")]
    assert data.test[0].gold == 0


def test_hub_failure_is_one_sentence(tmp_path, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HarnessError, match="could not load hub dataset CogComp/trec"):
        load_examples(load_task("trec"), tmp_path)


def test_offline_without_files_says_where_it_looked(tmp_path):
    with pytest.raises(HarnessError, match=r"not found in .*HF_HUB_OFFLINE=1"):
        load_examples(load_task("cb"), tmp_path)



# --------------------------------------------------------------------------- csv, replacements, hygiene


def test_csv_with_a_header_row(tmp_path):
    path = _write(tmp_path / "x.csv", 'label,text\n1,"a, quoted ""film"""\n\n0,"two\nlines"\n')
    assert parse_csv(path) == [{"label": "1", "text": 'a, quoted "film"'}, {"label": "0", "text": "two\nlines"}]


def test_csv_with_named_columns_and_a_delimiter(tmp_path):
    path = _write(tmp_path / "x.tsv", "3\tWall St.\tShort-sellers\n1\tOil\tPrices rise\n")
    assert parse_csv(path, ("label", "title", "text"), "\t")[1] == {"label": "1", "title": "Oil", "text": "Prices rise"}


def test_csv_row_problems_name_the_line(tmp_path):
    path = _write(tmp_path / "x.csv", 'a,b\n1,2\n"3,\n4\n')  # the quote opened on line 3 swallows the rest
    with pytest.raises(HarnessError, match=rf"{path}:3: not valid CSV"):
        parse_csv(path)
    cut = _write(tmp_path / "cut.csv", "1,2,3\n4,5")
    with pytest.raises(HarnessError, match=rf"{cut}:2: expected 3 columns \(x, y, z\), got 2 \(the file looks truncated\)"):
        parse_csv(cut, ("x", "y", "z"))


def test_ag_news_from_its_raw_csv(tmp_path):
    """The task that once needed a hand-written converter: AG News as published (no header, classes 1-4)."""
    rows = [f'"{i % 4 + 1}","Title {i}","Body of story {i}, with a comma."' for i in range(12)]
    _write(tmp_path / "data" / "ag_news" / "train.csv", "\n".join(rows[:9]) + "\n")
    _write(tmp_path / "data" / "ag_news" / "test.csv", "\n".join(rows[9:]) + "\n")
    path = _task_file(tmp_path, "ag_news", {
        "family": "classification",
        "source": {"format": "csv", "columns": ["class", "title", "description"],
                   "files": {"train": "ag_news/train.csv", "test": "ag_news/test.csv"}},
        "prompt": "{title}\n{description}\nTopic:", "choices": ["World", "Sports", "Business", "Science"],
        "labels": {1: "World", 2: "Sports", 3: "Business", 4: "Science"}, "label_field": "class",
        "metric": "accuracy"})
    assert validate(str(path), tmp_path / "data") == []
    data = load_examples(load_task(str(path)), tmp_path / "data")
    assert (len(data.train), len(data.test)) == (9, 3)
    assert data.train[1].input == "Title 1\nBody of story 1, with a comma.\nTopic:" and data.train[1].answer == "Sports"


@pytest.mark.parametrize("body, snippet", [
    ({"source": {"format": "jsonl", "columns": ["a"], "files": {"train": "a", "test": "b"}}},
     "only for `format: csv`"),
    ({"source": {"format": "csv", "columns": ["a", "a"], "files": {"train": "a", "test": "b"}}},
     "`source.columns` must list distinct field names"),
    ({"source": {"format": "csv", "delimiter": ";;", "files": {"train": "a", "test": "b"}}},
     "`source.delimiter` must be one character"),
])
def test_csv_options_are_checked(tmp_path, body, snippet):
    base = {"family": "qa", "prompt": "{q}", "choices": ["a", "b"], "metric": "accuracy"}
    assert any(snippet in p for p in validate(str(_task_file(tmp_path, "t", base | body))))


def test_a_user_task_may_replace_a_builtin_only_when_it_says_so(tmp_path):
    _sst_like(tmp_path, name="sst2")
    (problem,) = validate(str(tmp_path / "sst2.yaml"), tmp_path / "data")
    assert "`name: sst2` is a built-in task's name; add `replaces: sst2`" in problem
    path = _task_file(tmp_path / "mine", "sst2", {**yaml.safe_load((tmp_path / "sst2.yaml").read_text()),
                                                  "replaces": "sst2"})
    task = load_task(str(path))
    assert task.replaces == "sst2" and task.path == path.resolve()
    assert [t.path for t in parse_task_list(["rte", str(path)])] == [load_task("rte").path, path.resolve()]
    with pytest.raises(HarnessError, match="Two task definitions are named sst2"):
        parse_task_list(["sst2", str(path)])
    assert not any("replaces" in p for p in validate("sst2", tmp_path))  # the built-in file itself needs none


def test_near_duplicates_of_test_rows_are_dropped_from_train_and_counted(tmp_path):
    rows = [{"premise": f"premise {i}", "hypothesis": f"h {i}", "label": "entailment"} for i in range(6)]
    retyped = {"premise": "  PREMISE   2 ", "hypothesis": "H\t2", "label": "not_entailment"}
    _jsonl(tmp_path / "data" / "nli" / "train.jsonl", rows)
    _jsonl(tmp_path / "data" / "nli" / "val.jsonl", [retyped, {"premise": "p", "hypothesis": "h 2x", "label": "entailment"}])
    path = _nli_jsonl_task(tmp_path, "{premise}\nQuestion: {hypothesis}\nAnswer:")
    data = load_examples(load_task(str(path)), tmp_path / "data")
    assert data.dropped_overlap == 1
    assert "nli:train:2" not in {ex.uid for ex in data.train} and len(data.train) == 5


def test_validate_reports_the_problems_of_each_data_file(tmp_path):
    _write(tmp_path / "data" / "two" / "train.jsonl", '{"q": "a", "a": "1"}\n{"q": "b"\n')
    (tmp_path / "data" / "two" / "test.jsonl").write_bytes(b'{"q": "caf\xe9", "a": "2"}\n')
    path = _task_file(tmp_path, "two", {"family": "math", "source": {"format": "jsonl", "files": {
        "train": "two/train.jsonl", "test": "two/test.jsonl"}}, "prompt": "{q}", "answer": "{a}",
        "metric": "exact_match_number"})
    problems = validate(str(path), tmp_path / "data")
    assert len(problems) == 2
    assert "two/train.jsonl:2: not valid JSON" in problems[0] and "two/test.jsonl:1: not UTF-8 text" in problems[1]
