"""The bad-input corpus: things a person gets wrong, run through the real CLI (in-process). Each must end in the
expected exit code with one line naming the problem, no traceback, and nothing half-written.

One parametrized test runs every `Case` in `CASES`. To add cases, append `Case(...)`s to `CASES` (or a new group
list added to it): `argv` builds the command line from an `Env` (a fresh folder per case, the tiny model and
data, and helpers that write task and data files); `expect` is a regular expression the message must match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_harness

pytestmark = pytest.mark.integration


@dataclass
class Env:
    """What a case may use. `out` is the output path the command is given; it must not exist afterwards
    when the command fails (nothing half-written)."""

    tmp: Path
    model: Path  # the tiny model (shared: never modify it)
    tiny_data: Path  # the tiny data directory (shared: never modify it)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def data(self) -> Path:
        """A data directory of the case's own."""
        return self.tmp / "data"

    def file(self, rel: str, content: str | bytes) -> Path:
        """Write a file under the case's folder (relative to it)."""
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def task(self, stem: str = "mini", raw: str | None = None, **fields) -> str:
        """The task file tasks/<stem>.yaml: a sound sst2-like definition named `stem` with `fields` replacing its
        own (None removes one), or the `raw` text as is. Its data is written too (mini/train, mini/test) unless already there."""
        if not (self.data / "mini" / "train").exists():
            self.file("data/mini/train", "".join(f"{i % 2} train sentence number {i} .\n" for i in range(12)))
            self.file("data/mini/test", "1 a test sentence .\n0 another test sentence .\n")
        if raw is None:
            body = {"name": stem, "family": "classification",
                    "source": {"format": "label_text_lines", "files": {"train": "mini/train", "test": "mini/test"}},
                    "prompt": "Review: {text}\nSentiment:", "choices": ["negative", "positive"],
                    "labels": {"0": "negative", "1": "positive"}, "metric": "accuracy"}
            body.update(fields)
            raw = yaml.safe_dump({k: v for k, v in body.items() if v is not None}, sort_keys=False)
        return str(self.file(f"tasks/{stem}.yaml", raw))

    def jsonl_task(self, train: str | bytes, test: str | bytes | None = None, fmt: str = "jsonl", **fields) -> str:
        """An NLI task over the case's own train/test files (test defaults to two sound rows)."""
        ext = "csv" if fmt == "csv" else "jsonl"
        self.file(f"data/nli/train.{ext}", train)
        default_test = ("premise,hypothesis,label\nan only test premise,h,entailment\n" if fmt == "csv" else
                        "".join(json.dumps({"premise": f"test premise {i}", "hypothesis": "h", "label": "entailment"})
                                + "\n" for i in range(2)))
        self.file(f"data/nli/test.{ext}", default_test if test is None else test)
        body = {"family": "nli", "source": {"format": fmt, "files": {"train": f"nli/train.{ext}",
                                                                     "test": f"nli/test.{ext}"}},
                "prompt": "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", "choices": ["True", "False"],
                "labels": {"entailment": "True", "not_entailment": "False"}}
        body.update(fields)
        return self.task("nli", **body)

    def train(self, tasks: str, *extra: str, model: str | None = None, data: Path | None = None) -> list[str]:
        return ["train", "--model", model or str(self.model), "--data-dir", str(data or self.data), "--tasks", tasks,
                "--max-steps", "1", "--max-seq-len", "128", "-o", str(self.out), *extra]

    def summary(self, *lines: str | bytes | dict, folder: str = "evals/a") -> Path:
        """A summary.jsonl of the given lines (dicts are written as JSON) in its own evaluation folder."""
        data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x.encode() if isinstance(x, str) else x)
                        + b"\n" for x in lines)
        return self.file(f"{folder}/summary.jsonl", data).parent


def record(**changes) -> dict:
    """A sound version-1 result record."""
    base = {"model": "base-model", "model_path": "/m", "base_model": "/m", "method": "base", "task": "sst2",
            "family": "classification", "role": "train", "shots": "0", "shots_min": 0, "shots_mean": 0.0,
            "shots_max": 0, "metric": "accuracy", "value": 0.5, "stderr": 0.1, "seed": 1234, "num_docs": 2,
            "backend": "hf", "format": "chat", "max_length": 256, "created": "2026-01-01T00:00:00",
            "schema_version": 1}
    return base | changes


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    argv: Callable[[Env], list[str]]
    expect: str  # regular expression the one-line message must match
    code: int = 2
    warns: str | None = None  # regular expression a logged warning must match
    why_xfail: str | None = None  # a known gap, with the change that closes it (strict: passing makes it fail)
    marks: tuple = field(default=())


# --------------------------------------------------------------------------- task files

TASK_FILES = [
    Case("task files", "labels given as a list", lambda e: e.train(e.task(labels=["negative", "positive"])),
         r"mini\.yaml: `labels` must map each raw label to a choice text"),
    Case("task files", "prompt is a list", lambda e: e.train(e.task(prompt=["Review:", "{text}"])),
         r"`prompt` must be a text, got a list"),
    Case("task files", "prompt is a number", lambda e: e.train(e.task(prompt=42)), r"`prompt` must be a text"),
    Case("task files", "metric is a list", lambda e: e.train(e.task(metric=["accuracy"])),
         r"`metric` must be a text, got a list"),
    Case("task files", "family is a mapping", lambda e: e.train(e.task(family={"a": 1})), r"`family` must be a text"),
    Case("task files", "choices is one text", lambda e: e.train(e.task(choices="negative,positive")),
         r"`choices` must be a list of at least two answer texts"),
    Case("task files", "label value is a boolean", lambda e: e.train(e.task(
        choices=["True", "False"], labels={"0": True, "1": False})), r"quote values such as \"True\""),
    Case("task files", "labels outside choices", lambda e: e.train(e.task(labels={"0": "neg", "1": "positive"})),
         r"`labels` maps to \['neg'\], which are not in `choices`"),
    Case("task files", "max_gen_toks is a word", lambda e: e.train(e.task(
        metric="exact_match_number", answer="{label}", choices=None, labels=None, max_gen_toks="many")),
        r"`max_gen_toks` must be a positive whole number"),
    Case("task files", "test_size is a fraction above one", lambda e: e.train(e.task(
        source={"format": "label_text_lines", "files": {"test": "mini/train"}}, split={"seed": 1, "test_size": 1.5})),
        r"`split.test_size` must be a count of rows \(a whole number\) or a fraction"),
    Case("task files", "split seed is a word", lambda e: e.train(e.task(
        source={"format": "label_text_lines", "files": {"test": "mini/train"}}, split={"seed": "abc", "test_size": 2})),
        r"`split.seed` must be a whole number"),
    Case("task files", "probe is a word", lambda e: e.train(e.task(probe="maybe")), r"`probe` must be true or false"),
    Case("task files", "name differs from the file name", lambda e: e.train(e.task(name="other")),
         r"`name: other` must equal the file name `mini`"),
    Case("task files", "a built-in task's name without replaces", lambda e: e.train(e.task("sst2")),
         r"`name: sst2` is a built-in task's name; add `replaces: sst2`"),
    Case("task files", "replaces names no built-in task", lambda e: e.train(e.task(replaces="sst3")),
         r"`replaces: sst3` names no built-in task"),
    Case("task files", "two definitions share a name", lambda e: e.train(
        "sst2," + e.task("sst2", replaces="sst2")), r"Two task definitions are named sst2"),
    Case("task files", "a misspelt field", lambda e: e.train(e.task(promt="x")), r"unknown field `promt`"),
    Case("task files", "positional placeholder", lambda e: e.train(e.task(prompt="Review: {}\nSentiment:")),
         r"`prompt` has the placeholder \{\}; name a record field"),
    Case("task files", "placeholder with a conversion", lambda e: e.train(e.task(prompt="Review: {text!r}")),
         r"`prompt` formats \{text\} with a conversion or spec"),
    Case("task files", "unbalanced brace", lambda e: e.train(e.task(prompt="Review: {text")),
         r"`prompt` is not a valid template"),
    Case("task files", "source files as a list", lambda e: e.train(e.task(
        source={"format": "label_text_lines", "files": ["mini/train", "mini/test"]})),
        r"`source.files` must map `train` and/or `test` to paths"),
    Case("task files", "hub path is a number", lambda e: e.train(e.task(source={"hub": {"path": 3}})),
         r"`source.hub` needs at least `path`"),
    Case("task files", "a hub source without a train split", lambda e: e.train(e.task(source={"hub": {"path": "x/y"}})),
         r"`source.hub` has no train split; add `train` to `source.hub.splits`"),
    Case("task files", "YAML syntax error", lambda e: e.train(e.task(raw="name: mini\nfamily: [qa\n")),
         r"mini\.yaml: line \d+ is not valid YAML"),
    Case("task files", "not UTF-8", lambda e: e.train(str(e.file(
        "tasks/latin.yaml", "name: latin\ndescription: caf\xe9\n".encode("latin-1")))),
        r"latin\.yaml: line 2 is not UTF-8 text"),
    Case("task files", "a list at the top level", lambda e: e.train(e.task(raw="- name: mini\n")),
         r"expected a mapping of fields at the top level"),
    Case("task files", "an empty file", lambda e: e.train(e.task(raw="")),
         r"expected a mapping of fields at the top level"),
    Case("task files", "a folder named like a task file", lambda e: e.train(str(e.file("tasks/dir.yaml/x", "")
                                                                                .parent)),
         r"dir\.yaml is a folder, not a task file"),
    Case("task files", "a task file that does not exist", lambda e: e.train(str(e.tmp / "nowhere.yaml")),
         r"Task file .*nowhere\.yaml does not exist"),
]

# --------------------------------------------------------------------------- data files

def _mini_over(e: Env, train: str | None) -> str:
    """The mini task reading its train split from `mini/bad`: this text, or a folder when None."""
    if train is None:
        (e.data / "mini" / "bad").mkdir(parents=True)
    else:
        e.file("data/mini/bad", train)
    return e.task(source={"format": "label_text_lines", "files": {"train": "mini/bad", "test": "mini/test"}})


def _mc_rows(n: int, start: int = 0, options: object = ("x", "y"), gold: object = 0) -> str:
    return "".join(json.dumps({"q": f"q{i}", "options": options, "gold": gold}) + "\n" for i in range(start, start + n))


def _rows(n: int) -> str:
    return "".join(json.dumps({"premise": f"premise {i}", "hypothesis": "h", "label": "entailment"}) + "\n"
                   for i in range(n))


DATA_FILES = [
    Case("data files", "not UTF-8, file and line", lambda e: e.train(e.jsonl_task(
        (_rows(2) + '{"premise": "caf\xe9", "hypothesis": "h", "label": "entailment"}\n').encode("latin-1"))),
        r"nli/train\.jsonl:3: not UTF-8 text \(byte 0xe9 at column \d+\)"),
    Case("data files", "a truncated last line", lambda e: e.train(e.jsonl_task(_rows(3) + '{"premise": "cut sh')),
         r"nli/train\.jsonl:4: not valid JSON .*the file looks truncated"),
    Case("data files", "a line that is not an object", lambda e: e.train(e.jsonl_task(_rows(2) + "[1, 2]\n")),
         r"nli/train\.jsonl:3: expected a JSON object per line"),
    Case("data files", "a row without a template field", lambda e: e.train(e.jsonl_task(
        _rows(2) + json.dumps({"premise": "p", "label": "entailment"}) + "\n")), r"has no field `hypothesis`"),
    Case("data files", "an empty train file", lambda e: e.train(e.jsonl_task("")),
         r"Task nli: the train file .*nli/train\.jsonl holds no rows"),
    Case("data files", "an empty test file", lambda e: e.train(e.jsonl_task(_rows(3), test="\n")),
         r"Task nli: the test file .*nli/test\.jsonl holds no rows"),
    Case("data files", "train and test are the same rows", lambda e: e.train(e.jsonl_task(_rows(3), test=_rows(3))),
         r"Task nli: the train split is empty \(all 3 of its rows also appear in the test split\)"),
    Case("data files", "near-duplicates of the test rows only", lambda e: e.train(e.jsonl_task(
        _rows(2).upper().replace('"PREMISE', '"premise').replace('"HYPOTHESIS', '"hypothesis')
        .replace('"LABEL": "ENTAILMENT"', '"label": "entailment"'), test=_rows(2))),
        r"the train split is empty \(all 2 of its rows also appear in the test split\)"),
    Case("data files", "a label outside the choices", lambda e: e.train(e.jsonl_task(
        _rows(2) + json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"}) + "\n")),
        r"row nli:train:2 has label 'maybe', which is not one of the choices"),
    Case("data files", "a test row id prints literally", lambda e: e.train(e.jsonl_task(
        _rows(3), test=json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"}) + "\n")),
        r"row nli:test:0 has label 'maybe'"),
    Case("data files", "label_text_lines line without text", lambda e: e.train(_mini_over(e, "1 fine line\n0")),
         r"mini/bad:2: expected `LABEL text`, got '0' \(it is the last line .*the file looks truncated\)"),
    Case("data files", "csv row with a missing column", lambda e: e.train(e.jsonl_task(
        "premise,hypothesis,label\na,b,entailment\nc,d\n", fmt="csv")),
        r"nli/train\.csv:3: expected 3 columns \(premise, hypothesis, label\), got 2"),
    Case("data files", "csv with an unclosed quote", lambda e: e.train(e.jsonl_task(
        'premise,hypothesis,label\na,b,entailment\n"c,d,entailment\n', fmt="csv")),
        r"nli/train\.csv:3: not valid CSV \(unexpected end of data\); check the quotes"),
    Case("data files", "csv header with a repeated name", lambda e: e.train(e.jsonl_task(
        "premise,premise,label\na,b,entailment\n", fmt="csv")),
        r"nli/train\.csv:1: the header row needs distinct, non-empty column names"),
    Case("data files", "choices field is not a list", lambda e: e.train(e.jsonl_task(
        _mc_rows(3, options="a b"), test=_mc_rows(1, start=9),
        prompt="{q}", choices=None, labels=None, choices_field="options", gold_field="gold")),
        r"has `options` that is not a list of at least two choices"),
    Case("data files", "gold is a letter", lambda e: e.train(e.jsonl_task(
        _mc_rows(3, gold="A"), test=_mc_rows(1, start=9),
        prompt="{q}", choices=None, labels=None, choices_field="options", gold_field="gold")),
        r"has `gold: 'A'`, not the index of a choice"),
    Case("data files", "a data file that is a folder", lambda e: e.train(_mini_over(e, None)),
         r"mini/bad is a folder, not a data file"),
    Case("data files", "data files not found", lambda e: e.train("sst2", data=e.tmp),
         r"Task sst2: .*stsa\.binary\.train.* not found in"),
    Case("data files", "data directory does not exist", lambda e: e.train("sst2", data=e.tmp / "nowhere"),
         r"Data directory .*nowhere does not exist"),
    Case("data files", "test_size leaves no train rows", lambda e: e.train(e.task(
        source={"format": "label_text_lines", "files": {"test": "mini/train"}}, split={"seed": 1, "test_size": 12})),
        r"`split.test_size: 12` leaves no train or no test rows out of 12"),
    Case("data files", "tasks validate reports every file", lambda e: ["tasks", "validate", e.task(
        labels=["a"]), e.jsonl_task(_rows(1) + "{cut", test="[1]\n"), "sst2", "--data-dir", str(e.data)],
        r"(?s)mini\.yaml: `labels` must map.*nli/train\.jsonl:2: not valid JSON.*nli/test\.jsonl:1: expected a "
        r"JSON object.*sst2.*data files not found", code=1),
]

# --------------------------------------------------------------------------- results files: leaderboard and plot

RESULTS = [
    Case("results files", "only truncated lines", lambda e: ["leaderboard", str(e.summary('{"model": "a", "val'))],
         r"No results found", warns=r"evals/a/summary\.jsonl:1: skipped a result line: not valid JSON"),
    Case("results files", "a truncated line among good ones is skipped", lambda e: [
        "leaderboard", "--format", "csv", str(e.summary(record(), '{"model": "b", "val'))],
        r"^model,method", code=0, warns=r"summary\.jsonl:2: skipped a result line: not valid JSON"),
    Case("results files", "an old schema version", lambda e: ["leaderboard", str(e.summary(record(schema_version=0)))],
         r"No results found", warns=r"summary\.jsonl:1: skipped a result line: schema_version 0, not 1"),
    Case("results files", "no schema version", lambda e: ["leaderboard", str(e.summary(
        {k: v for k, v in record().items() if k != "schema_version"}))], r"No results found",
        warns=r"schema_version None, not 1"),
    Case("results files", "a missing field", lambda e: ["leaderboard", str(e.summary(
        {k: v for k, v in record().items() if k != "value"}))], r"No results found", warns=r"missing field value"),
    Case("results files", "a value that is text", lambda e: ["leaderboard", str(e.summary(record(value="high")))],
         r"No results found", warns=r"field `value` is 'high', not a int or float"),
    Case("results files", "shots that are not a number", lambda e: ["plot", str(e.summary(record(shots="five"))),
                                                                   "-o", str(e.out)],
         r"No results found", warns=r"field `shots` is 'five', not a number or `many`"),
    Case("results files", "a line that is not UTF-8", lambda e: ["leaderboard", str(e.summary(b'{"model": "caf\xe9"}'))],
         r"No results found", warns=r"summary\.jsonl:1: skipped a result line: not UTF-8 text"),
    Case("results files", "a line that is a list", lambda e: ["plot", str(e.summary("[1, 2]")), "-o", str(e.out)],
         r"No results found", warns=r"not a JSON object"),
    Case("results files", "a directory that does not exist", lambda e: ["leaderboard", str(e.tmp / "nowhere")],
         r"nowhere does not exist; pass evaluation or study directories"),
    Case("results files", "a file that is not a summary", lambda e: ["leaderboard", str(e.file("notes.txt", "hi"))],
         r"notes\.txt is not a summary\.jsonl file"),
    Case("results files", "an unknown leaderboard format", lambda e: [
        "leaderboard", "--format", "xlsx", str(e.summary(record()))], r"Unknown leaderboard format 'xlsx'"),
    Case("results files", "an unknown grouping", lambda e: ["leaderboard", "--by", "colour", str(e.summary(record()))],
         r"Unknown leaderboard grouping 'colour'"),
]

# --------------------------------------------------------------------------- models


def _model_copy(e: Env, drop: str | None = None, write: tuple[str, str] | None = None) -> str:
    """A copy of the tiny model's small files, with one removed or overwritten (the weights are linked)."""
    folder = e.tmp / "model"
    folder.mkdir()
    for item in e.model.iterdir():
        if item.name != drop:
            (folder / item.name).symlink_to(item)
    if write:
        (folder / write[0]).unlink(missing_ok=True)
        (folder / write[0]).write_text(write[1])
    return str(folder)


MODELS = [
    Case("models", "a weights file instead of a folder", lambda e: e.train("sst2", model=str(e.model / "model.safetensors"),
                                                                       data=e.tiny_data),
         r"Model .*model\.safetensors is a file; pass the folder that holds it"),
    Case("models", "a folder without weights", lambda e: e.train("sst2", model=_model_copy(e, drop="model.safetensors"),
                                                             data=e.tiny_data),
         r"has config\.json but no weights"),
    Case("models", "a folder without a tokenizer", lambda e: e.train("sst2", model=_model_copy_without_tokenizer(e),
                                                                 data=e.tiny_data), r"has no tokenizer"),
    Case("models", "a broken config.json", lambda e: e.train("sst2", model=_model_copy(e, write=("config.json", "{\"mo")),
                                                         data=e.tiny_data), r"config\.json cannot be read as JSON"),
    Case("models", "a folder with no model files", lambda e: e.train("sst2", model=str(e.file("empty/x.txt", "").parent),
                                                                  data=e.tiny_data),
         r"holds neither config\.json nor adapter_config\.json"),
    Case("models", "an adapter folder without weights", lambda e: e.train("sst2", model=str(e.file(
        "adapter/adapter_config.json", json.dumps({"base_model_name_or_path": str(e.model)})).parent), data=e.tiny_data),
        r"has adapter_config\.json but no adapter weights"),
    Case("models", "a path that does not exist", lambda e: e.train("sst2", model="./no/such/model", data=e.tiny_data),
         r"Model path \./no/such/model does not exist"),
]


def _model_copy_without_tokenizer(e: Env) -> str:
    folder = Path(_model_copy(e))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    return str(folder)


# --------------------------------------------------------------------------- output paths

OUTPUT_PATHS = [
    Case("output paths", "plot into a file", lambda e: ["plot", str(e.summary(record())), "-o",
                                                         str(e.file("out", "a file"))],
         r"Cannot write .*: .*/out is a file, not a folder"),
    Case("output paths", "plot into a folder under a file", lambda e: [
        "plot", str(e.summary(record())), "-o", str(e.file("out", "a file") / "plots")],
        r"Cannot write .*: .*/out is a file, not a folder"),
    Case("output paths", "a folder in the way of the figure", lambda e: [
        "plot", str(e.summary(record())), "-o", str(e.file("out/scores_vs_shots.png/x", "").parent.parent)],
        r"scores_vs_shots\.png: a folder of that name is in the way"),
]

CASES: list[Case] = [*TASK_FILES, *DATA_FILES, *RESULTS, *MODELS, *OUTPUT_PATHS]


def _params():
    for case in CASES:
        marks = list(case.marks)
        if case.why_xfail:
            marks.append(pytest.mark.xfail(reason=case.why_xfail, strict=True))
        yield pytest.param(case, id=f"{case.group}: {case.name}", marks=marks)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path, tiny_model, tiny_data, monkeypatch, caplog):
    env = Env(tmp=tmp_path / "case", model=tiny_model, tiny_data=tiny_data)
    env.tmp.mkdir()
    argv = case.argv(env)
    before = _snapshot(env.tmp)
    out_existed = env.out.exists()
    try:
        code, out, err = run_harness(argv, monkeypatch)
    except Exception as crash:  # anything but HarnessError escapes main() and would be a traceback
        pytest.fail(f"traceback: {type(crash).__name__}: {crash}")
    assert "Traceback" not in out + err
    assert code == case.code, f"exit {code}, expected {case.code}; stdout: {out!r}; stderr: {err!r}"
    if case.code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"not one line: {err!r}"
        assert re.search(case.expect, lines[0]), f"{case.expect!r} not in {lines[0]!r}"
        assert not out.strip(), f"a failed command printed results: {out!r}"
        # Nothing half-written: the case's folder is as it was, and the output path was not created.
        assert _snapshot(env.tmp) == before
        assert env.out.exists() == out_existed
    else:
        assert re.search(case.expect, out + err, re.MULTILINE), f"{case.expect!r} not in {out + err!r}"
    if case.warns:
        warnings = " | ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        assert re.search(case.warns, warnings), f"{case.warns!r} not among the warnings {warnings!r}"


def test_the_corpus_covers_its_groups_with_distinct_cases():
    groups = {c.group for c in CASES}
    assert {"task files", "data files", "results files", "models", "output paths"} <= groups  # more may be added
    assert len({(c.group, c.name) for c in CASES}) == len(CASES), "two cases share a name (test ids would clash)"
