"""The bad-input corpus: things a person gets wrong, run through the real CLI (in-process). Each must end in the
expected exit code with one line naming the problem, no traceback, and nothing half-written.

One parametrized test runs every `Case` in `CASES`. To add cases, append `Case(...)`s to `CASES` (or a new group
list added to it): `argv` builds the command line from an `Env` (a fresh folder per case, the tiny model and
data, and helpers that write task and data files); `expect` is a regular expression the message must match.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    environ: tuple[tuple[str, str], ...] = ()  # environment variables the command runs with


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
    Case("data files", "data directory is a file", lambda e: e.train("sst2", data=e.file("data.jsonl", "{}\n")),
         r"Data directory .*data\.jsonl is a file, not a folder; pass --data-dir"),
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
         r"No results found", warns=r"summary\.jsonl:1: skipped a result line: schema_version 0, not 2"),
    Case("results files", "no schema version", lambda e: ["leaderboard", str(e.summary(
        {k: v for k, v in record().items() if k != "schema_version"}))], r"No results found",
        warns=r"schema_version None, not 2"),
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
    Case("models", "a weights file cut short", lambda e: _evaluate(e, model=_model_with_cut_weights(e)),
         r"model\.safetensors is cut short or damaged \([\d,]+ bytes, not a whole safetensors file\)"),
    Case("models", "an empty weights file", lambda e: e.train("sst2", model=_model_copy(
        e, write=("model.safetensors", "")), data=e.tiny_data),
        r"model\.safetensors is cut short or damaged \(0 bytes, not a whole safetensors file\)"),
    Case("models", "a path that does not exist", lambda e: e.train("sst2", model="./no/such/model", data=e.tiny_data),
         r"Model path \./no/such/model does not exist"),
]


def _model_with_cut_weights(e: Env) -> str:
    """The tiny model with its weights file cut in half, as an interrupted download leaves it."""
    folder = Path(_model_copy(e, drop="model.safetensors"))
    weights = (e.model / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return str(folder)


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
    Case("output paths", "train into a file", lambda e: [*e.train("sst2", data=e.tiny_data)[:-2], "-o",
                                                         str(e.file("out", "a file"))],
         r"Cannot use .*/out as --output-dir: .*/out is a file, not a folder"),
    Case("output paths", "train into a folder under a file", lambda e: [
        *e.train("sst2", data=e.tiny_data)[:-2], "-o", str(e.file("out", "a file") / "run")],
        r"Cannot use .*/out/run as --output-dir: .*/out is a file, not a folder"),
    Case("output paths", "evaluate into a file", lambda e: [
        "evaluate", "--model", str(e.model), "--data-dir", str(e.tiny_data), "--tasks", "sst2", "--shots", "0",
        "--backend", "hf", "-o", str(e.file("out", "a file"))], r"Cannot use .*/out as --output-dir: .* is a file"),
    Case("output paths", "study into a file", lambda e: [
        "study", "--preset", "smoke", "--data-dir", str(e.tiny_data), "-o", str(e.file("out", "a file"))],
        r"Cannot use .*/out as --output-dir: .* is a file"),
]

# --------------------------------------------------------------------------- flags and config files

def _evaluate(e: Env, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(e.model), "--data-dir", str(e.tiny_data), "--tasks", "sst2", "--shots", "0",
            "--limit", "2", "--backend", "hf", "-o", str(e.out), *extra]


def _train_tiny(e: Env, *extra: str) -> list[str]:
    return e.train("sst2", *extra, data=e.tiny_data)


FLAGS: list[Case] = [
    Case("flags", "max-seq-len 0", lambda e: _train_tiny(e, "--max-seq-len", "0"),
         r"^Error: --max-seq-len must be at least 16, not 0\.$"),
    Case("flags", "max-seq-len beyond the model's context", lambda e: _train_tiny(e, "--max-seq-len", "100000"),
         r"--max-seq-len 100000 is beyond .*'s context of 4096 tokens"),
    Case("flags", "negative learning rate", lambda e: _train_tiny(e, "--learning-rate=-0.001"),
         r"--learning-rate must be above 0, not -0\.001"),
    Case("flags", "learning rate 0", lambda e: _train_tiny(e, "--lr", "0"), r"--learning-rate must be above 0"),
    Case("flags", "learning rate above 1", lambda e: _train_tiny(e, "--learning-rate", "5"),
         r"--learning-rate must be at most 1, not 5"),
    Case("flags", "batch size 0", lambda e: _train_tiny(e, "--batch-size", "0"), r"--batch-size must be at least 1"),
    Case("flags", "grad-accum 0", lambda e: _train_tiny(e, "--grad-accum", "0"), r"--grad-accum must be at least 1"),
    Case("flags", "examples per task 0", lambda e: _train_tiny(e, "--examples-per-task", "0"),
         r"--examples-per-task must be at least 1, not 0"),
    Case("flags", "unknown format", lambda e: _train_tiny(e, "--format", "xml"),
         r"--format must be one of auto, chat, plain, not `xml`"),
    Case("flags", "negative seed", lambda e: _train_tiny(e, "--seed=-1"), r"--seed must be at least 0, not -1"),
    Case("flags", "a budget beyond memory", lambda e: _train_tiny(e, "--max-steps", "1000000000000"),
         r"The budget asks for about [\d,]+ training rows .* lower --max-steps"),
    Case("flags", "curve point above 1", lambda e: _train_tiny(e, "--curve-points", "0.5,1.5"),
         r"curve_points must be fractions in \(0, 1\]"),
    Case("flags", "preview max-seq-len 0", lambda e: ["preview", "--task", "sst2", "--model", str(e.model),
                                                      "--data-dir", str(e.tiny_data), "--max-seq-len", "0"],
         r"^Error: --max-seq-len must be at least 16, not 0\.$"),
    Case("flags", "evaluate max-length 0", lambda e: _evaluate(e, "--max-length", "0"),
         r"--max-length must be at least 16, not 0"),
    Case("flags", "evaluate max-length beyond the model's context", lambda e: _evaluate(e, "--max-length", "9000"),
         r"--max-length 9000 is beyond .*'s context of 4096 tokens"),
    Case("flags", "unknown dtype", lambda e: _evaluate(e, "--dtype", "fp8"),
         r"--dtype must be one of auto, bfloat16, float16, float32, not `fp8`"),
    Case("flags", "zero demonstration seeds", lambda e: _evaluate(e, "--seeds", "0"), r"--seeds must be at least 1"),
    Case("flags", "limit 0", lambda e: _evaluate(e, "--limit", "0"), r"--limit must be at least 1, not 0"),
    Case("flags", "evaluate batch size 0", lambda e: _evaluate(e, "--batch-size", "0"),
         r"--batch-size must be at least 1"),
    Case("flags", "unknown backend", lambda e: _evaluate(e, "--backend", "tpu"),
         r"--backend must be one of auto, prefix, hf, vllm, not `tpu`"),
    Case("flags", "shots not a number", lambda e: _evaluate(e, "--shots", "0,3x"), r"--shots value `3x` is not"),
    Case("flags", "evaluate under an outside launcher", lambda e: _evaluate(e),
         r"harness evaluate is running as one of 2 launched processes; run it as one process with "
         r"--num-processes N", environ=(("WORLD_SIZE", "2"), ("RANK", "0"))),  # as torchrun starts it
    Case("flags", "evaluate num-processes 0", lambda e: _evaluate(e, "--num-processes", "0"),
         r"--num-processes must be at least 1, not 0"),
    Case("flags", "num-processes with the vLLM backend", lambda e: _evaluate(
        e, "--num-processes", "2", "--backend", "vllm"),
        r"--num-processes applies to the transformers-side backends \(prefix, hf\); for vLLM pass "
        r"--data-parallel-size instead"),
    Case("flags", "num-processes with vLLM parallel sizes", lambda e: _evaluate(
        e, "--num-processes", "2", "--tensor-parallel-size", "2"),
        r"--num-processes shares documents over transformers-side scorers \(prefix, hf\), while "
        r"--tensor-parallel-size and --data-parallel-size size a vLLM server; give one kind"),
    Case("flags", "k shots where fewer fit", lambda e: _evaluate(e, "--shots", "6", "--max-length", "120"),
         r"At --shots 6, \d+ of \d+ sst2 documents fit only \d+-\d+ demonstrations in 120 tokens; raise "
         r"--max-length, lower --shots, or use `many`"),
]


def _config(e: Env, text: str | bytes, name: str = "config.yaml") -> str:
    return str(e.file(name, text))


CONFIGS: list[Case] = [
    Case("configs", "max_steps: two", lambda e: _train_tiny(e, "--config", _config(e, "max_steps: two\n")),
         r"config\.yaml: `max_steps` must be a whole number, not the text \"two\""),
    Case("configs", "a quoted number", lambda e: _train_tiny(e, "--config", _config(e, 'max_seq_len: "256"\n')),
         r"`max_seq_len` must be a whole number, not the text \"256\"; write it without quotes"),
    Case("configs", "learning rate as a word", lambda e: _train_tiny(e, "--config", _config(e, "learning_rate: fast\n")),
         r"`learning_rate` must be a number, not the text \"fast\""),
    Case("configs", "negative warm-up", lambda e: _train_tiny(e, "--config", _config(e, "warmup_ratio: -0.1\n")),
         r"`warmup_ratio` must be at least 0, not -0\.1"),
    Case("configs", "warm-up ratio 1.5", lambda e: _train_tiny(e, "--config", _config(e, "warmup_ratio: 1.5\n")),
         r"`warmup_ratio` must be below 1, not 1\.5"),
    Case("configs", "misspelt scheduler", lambda e: _train_tiny(e, "--config", _config(e, "lr_scheduler: cosin\n")),
         r"`lr_scheduler` must be one of linear, cosine, .* not `cosin`"),
    Case("configs", "tasks as a mapping", lambda e: _train_tiny(e, "--config", _config(e, "tasks: {sst2: 1}\n")),
         r"`tasks` must be a list, not a mapping"),
    Case("configs", "a yes/no setting quoted", lambda e: _train_tiny(e, "--config", _config(e, 'lora_merge: "yes"\n')),
         r"`lora_merge` must be true or false, not the text \"yes\""),
    Case("configs", "max_seq_len 0 in the file", lambda e: _train_tiny(e, "--config", _config(e, "max_seq_len: 0\n")),
         r"`max_seq_len` must be at least 16, not 0"),
    Case("configs", "misspelt setting", lambda e: _train_tiny(e, "--config", _config(e, "max_step: 5\n")),
         r"unknown setting `max_step`"),
    Case("configs", "a list, not a mapping", lambda e: _train_tiny(e, "--config", _config(e, "- max_steps: 5\n")),
         r"must be a mapping of settings \(name: value lines\), not a list"),
    Case("configs", "not YAML", lambda e: _train_tiny(e, "--config", _config(e, "max_steps: [1,\n")),
         r"config\.yaml is not valid YAML at line \d+"),
    Case("configs", "a folder", lambda e: _train_tiny(e, "--config", str(e.file("conf/x", "").parent)),
         r"Config file .*conf is a folder; give the YAML file"),
    Case("configs", "not UTF-8", lambda e: _train_tiny(e, "--config", _config(e, b"max_steps: 1\n# caf\xe9\n")),
         r"config\.yaml is not UTF-8 text"),
    Case("configs", "evaluate: seeds 1.5", lambda e: _evaluate(e, "--config", _config(e, "seeds: 1.5\n")),
         r"`seeds` must be a whole number, not a number \(1\.5\)"),
    Case("configs", "evaluate: shots as a mapping", lambda e: _evaluate(e, "--config", _config(e, "shots: {a: 1}\n")),
         r"`shots` must be a list, not a mapping"),
    Case("configs", "evaluate: dtype misspelt", lambda e: _evaluate(e, "--config", _config(e, "dtype: bf16\n")),
         r"`dtype` must be one of auto, bfloat16, float16, float32, not `bf16`"),
]

# --------------------------------------------------------------------------- resume and checkpoints

def _stopped_run(e: Env, finished: bool = False, raw_config: str | None = None, **old) -> Env:
    """A run folder at `e.out` as `harness train` leaves it when stopped after checkpoint 1 (or `finished`): its
    config.yaml says it was trained as `e.train("sst2", data=e.tiny_data)` asks, with `old` replacing settings,
    and a complete checkpoint. Written by hand: these refusals come before any training."""
    from manyicl.harness.settings import TrainConfig, to_dict
    from manyicl.train.checkpoints import write_marker

    config = to_dict(TrainConfig(model=str(e.model), tasks=["sst2"], data_dir=str(e.tiny_data), max_steps=1,
                                 max_seq_len=128, output_dir=str(e.out)))
    config |= {"format": "chat", "model_path": str(e.model.resolve()), "adapter": None} | old
    e.file("out/config.yaml", raw_config if raw_config is not None else yaml.safe_dump(config, sort_keys=False))
    e.file("out/manifest.json", json.dumps({"kind": "train", "status": "complete" if finished else "running"}))
    e.file("out/train_log.jsonl", json.dumps({"step": 1, "loss": 3.0}) + "\n")
    if not finished:
        e.file("out/checkpoints/checkpoint-1/model.safetensors", b"\0" * 64)
        write_marker(e.out / "checkpoints" / "checkpoint-1", 1)
    return e


def _resume(e: Env, *extra: str, **old) -> list[str]:
    return _stopped_run(e, **old).train("sst2", "--resume", *extra, data=e.tiny_data)


RESUME: list[Case] = [
    Case("resume", "another method", lambda e: _resume(e, method="few-shot"),
         r"Cannot resume .*/out: it was trained with --method few-shot, not manyicl; resume with the same settings"),
    Case("resume", "other tasks", lambda e: _resume(e, tasks=["sst2", "rte"]),
         r"it was trained with --tasks sst2,rte, not sst2;"),
    Case("resume", "another model", lambda e: _resume(e, model_path="/elsewhere/model"),
         r"it was trained with --model /elsewhere/model, not .*tiny-model"),
    Case("resume", "another max_seq_len", lambda e: _resume(e, max_seq_len=256),
         r"it was trained with --max-seq-len 256, not 128;"),
    Case("resume", "another format", lambda e: _resume(e, format="plain"),
         r"it was trained with --format plain, not chat;"),  # `auto` resolved through the tokenizer
    Case("resume", "another seed", lambda e: _resume(e, seed=7), r"it was trained with --seed 7, not 1234;"),
    Case("resume", "other shots of a few-shot run", lambda e: _resume(e, "--method", "few-shot", "--shots", "2",
                                                                      method="few-shot", shots=4),
         r"it was trained with --shots 4, not 2;"),
    Case("resume", "another learning rate", lambda e: _resume(e, learning_rate=0.001),
         r"it was trained with --lr 0\.001, not 2e-05;"),  # the default (full fine-tuning), as it acts
    Case("resume", "another budget", lambda e: _resume(e, max_steps=5), r"it was trained with --max-steps 5, not 1;"),
    Case("resume", "LoRA instead of full fine-tuning", lambda e: _resume(e, lora_r=8),
         r"it was trained with --lora-r 8, not 0;"),
    Case("resume", "another data directory", lambda e: _resume(e, data_dir="/elsewhere/data"),
         r"it was trained with --data-dir /elsewhere/data, not .*data"),
    Case("resume", "other rows per optimizer step", lambda e: _resume(e, "--batch-size", "2"),
         r"was trained with 1 rows per optimizer step .* not 2; resume with the same product"),
    Case("resume", "a finished run reused with another method", lambda e: _stopped_run(e, finished=True).train(
        "sst2", "--method", "few-shot", data=e.tiny_data),
        r"out holds a finished run trained with --method manyicl, not few-shot; give the same settings"),
    Case("resume", "an unreadable config.yaml", lambda e: _resume(e, raw_config="method: [manyicl\n"),
         r"Cannot resume .*/out: its config\.yaml is not valid YAML"),
    Case("resume", "a damaged manifest.json", lambda e: (e.file("out/manifest.json", '{"status": "compl'),
                                                         _train_tiny(e, "--resume"))[1],
         r"out/manifest\.json cannot be read as JSON; the run folder looks damaged"),
]

# --------------------------------------------------------------------------- servers

_HELD_SOCKETS: list[socket.socket] = []
_STUB: list[str] = []


def _closed_port_url() -> str:
    """A URL on a 127.0.0.1 port that is bound but never listens: connections are refused, and no other process
    can take the port while the tests run."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD_SOCKETS.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


class _StubHandler(BaseHTTPRequestHandler):
    """An HTTP server that is not vLLM: /v1/models lists another model, /short/v1 one with a 64-token context,
    /keyed/v1 wants a key, the rest is 404."""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        status, body = {"/v1/models": (200, {"object": "list", "data": [{"id": "served-elsewhere"}]}),
                        "/short/v1/models": (200, {"data": [{"id": "short", "max_model_len": 64}]}),
                        "/keyed/v1/models": (401, {"error": "Unauthorized"})}.get(self.path, (404, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _stub_url(path: str = "/v1") -> str:
    """The stub server's URL (started once, in a daemon thread of the test process)."""
    if not _STUB:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _STUB.append(f"http://127.0.0.1:{server.server_address[1]}")
    return _STUB[0] + path


def _evaluate(e: Env, *extra: str, model: str | None = None) -> list[str]:
    return ["evaluate", "--model", model or str(e.model), "--tasks", "sst2", "--shots", "0", "--limit", "1",
            "--data-dir", str(e.tiny_data), "--max-length", "256", "-o", str(e.out), *extra]


def _dedicated_run(e: Env) -> str:
    """A dedicated training run's folder: one model per task, named in its manifest."""
    e.file("dedicated/manifest.json", json.dumps({"kind": "train", "method": "dedicated", "status": "complete",
                                                  "model": str(e.model), "models": {"sst2": str(e.model)}}))
    return str(e.tmp / "dedicated")


SERVERS = [
    Case("servers", "nothing listens at the URL", lambda e: _evaluate(e, "--server-url", _closed_port_url()),
         r"Cannot reach the server at http://127\.0\.0\.1:\d+/v1 \(Connection refused\); start it, or fix --server-url"),
    Case("servers", "a URL without a scheme", lambda e: _evaluate(e, "--server-url", "localhost:8000"),
         r"--server-url localhost:8000 is not an http\(s\) URL; write it as http://HOST:PORT/v1"),
    Case("servers", "a port out of range", lambda e: _evaluate(e, "--server-url", "http://127.0.0.1:99999/v1"),
         r"--server-url http://127\.0\.0\.1:99999/v1 has an invalid port"),
    Case("servers", "--backend hf with --server-url", lambda e: _evaluate(
        e, "--backend", "hf", "--server-url", _closed_port_url()),
        r"--backend hf scores in this process and --server-url on a server; drop one of them"),
    Case("servers", "--backend prefix with --server-url", lambda e: _evaluate(
        e, "--backend", "prefix", "--server-url", _closed_port_url()),
        r"--backend prefix scores in this process and --server-url on a server; drop one of them"),
    Case("servers", "--num-processes with --server-url", lambda e: _evaluate(
        e, "--num-processes", "2", "--server-url", _closed_port_url()),
        r"--num-processes shares documents over transformers-side scorers in this machine's processes, and "
        r"--server-url scores on a server; drop one of them"),
    Case("servers", "several models with --num-processes", lambda e: _evaluate(
        e, "--num-processes", "2", model=f"{e.model},{e.model}"),
        r"Several adapters are scored on one vLLM server, and --num-processes shares documents over "
        r"transformers-side scorers; drop it"),
    Case("servers", "several models with --server-url", lambda e: _evaluate(
        e, "--server-url", _closed_port_url(), model=f"{e.model},{e.model}"),
        r"--server-url scores one model on a server you run; give one --model with it"),
    Case("servers", "a dedicated run with --server-url", lambda e: _evaluate(
        e, "--server-url", _closed_port_url(), model=_dedicated_run(e)),
        r"dedicated is a dedicated run with one model per task, and --server-url serves one model"),
    Case("servers", "a server that is not an OpenAI API", lambda e: _evaluate(e, "--server-url", _stub_url("/api")),
         r"The server at http://127\.0\.0\.1:\d+/api answered HTTP 404 to GET /models; .* did you mean "
         r"http://127\.0\.0\.1:\d+/api/v1\?"),
    Case("servers", "a server URL without /v1", lambda e: _evaluate(e, "--server-url", _stub_url("")),
         r"answered HTTP 404 to GET /models; .* did you mean http://127\.0\.0\.1:\d+/v1\?"),
    Case("servers", "a server that refuses the key", lambda e: _evaluate(e, "--server-url", _stub_url("/keyed/v1")),
         r"The server at http://127\.0\.0\.1:\d+/keyed/v1 refused the API key \(HTTP 401\); set OPENAI_API_KEY"),
    Case("servers", "a served model the server does not serve", lambda e: _evaluate(
        e, "--server-url", _stub_url(), "--served-model", "mine"),
        r"The server at http://127\.0\.0\.1:\d+/v1 serves served-elsewhere, not mine; pass one of those as "
        r"--served-model"),
    Case("servers", "a server context shorter than --max-length", lambda e: _evaluate(
        e, "--server-url", _stub_url("/short/v1")),
        r"serves short with a context of 64 tokens; --max-length 256 needs 257: restart it with --max-model-len 257 "
        r"or pass --max-length 63"),
]

# --------------------------------------------------------------------------- study files

_STUDY = {"name": "s", "model": "tiny-random-llama", "tasks": ["sst2"], "probes": [], "arms": ["base", "manyicl"],
          "train": {"max_seq_len": 128, "max_steps": 1}, "eval": {"shots": ["0"], "limit": 2, "backend": "hf"}}


def _study(e: Env, change: dict | None = None, raw: str | bytes | None = None) -> list[str]:
    text = raw if raw is not None else yaml.safe_dump(_STUDY | (change or {}))
    return ["study", "--config", _config(e, text, "study.yaml"), "--data-dir", str(e.tiny_data), "-o", str(e.out)]


STUDY_FILES: list[Case] = [
    Case("study files", "not YAML", lambda e: _study(e, raw="arms: [base,\n"), r"study\.yaml is not valid YAML"),
    Case("study files", "a list", lambda e: _study(e, raw="- base\n"), r"must be a mapping of settings"),
    Case("study files", "missing", lambda e: ["study", "--config", str(e.tmp / "nope.yaml"), "-o", str(e.out)],
         r"Study file .*nope\.yaml does not exist"),
    Case("study files", "unknown arm", lambda e: _study(e, {"arms": ["base", "magic"]}), r"Unknown arm `magic`"),
    Case("study files", "misspelt setting", lambda e: _study(e, {"armz": ["base"]}),
         r"Study file .*: `armz` is not a setting"),
    Case("study files", "tasks as a number", lambda e: _study(e, {"tasks": 3}),
         r"`tasks` must be a list, not a whole number \(3\)"),
    Case("study files", "train is not a mapping", lambda e: _study(e, {"train": 5}),
         r"`train` must be a mapping, not a whole number"),
    Case("study files", "train.max_steps: two", lambda e: _study(e, {"train": {"max_steps": "two"}}),
         r"`train\.max_steps` must be a whole number, not the text \"two\""),
    Case("study files", "train.learning_rate negative", lambda e: _study(
        e, {"train": {"max_steps": 1, "learning_rate": -1}}), r"`train\.learning_rate` must be above 0, not -1"),
    Case("study files", "eval.seeds 0", lambda e: _study(e, {"eval": {"seeds": 0}}),
         r"`eval\.seeds` must be at least 1, not 0"),
    Case("study files", "curve_eval.dtype misspelt", lambda e: _study(e, {"curve_eval": {"dtype": "half"}}),
         r"`curve_eval\.dtype` must be one of"),
    Case("study files", "train.method set", lambda e: _study(e, {"train": {"max_steps": 1, "method": "x"}}),
         r"`train\.method` is not a shared training setting"),
    Case("study files", "no budget", lambda e: _study(e, {"train": {"max_seq_len": 128}}), r"needs a matched budget"),
    Case("study files", "trained and held out", lambda e: _study(e, {"heldout": ["sst2"]}),
         r"sst2 cannot be both trained on and held out"),
    Case("study files", "an unknown task", lambda e: _study(e, {"tasks": ["sst2", "sst3"]}),
         r"Study file .*study\.yaml: `tasks`: Unknown task `sst3`; choose one of"),
    Case("study files", "no tasks", lambda e: _study(e, {"tasks": []}),
         r"Study file .*study\.yaml: `tasks` is empty; name at least one training task"),
    Case("study files", "an unknown held-out task", lambda e: _study(e, {"heldout": ["cbb"]}),
         r"`heldout`: Unknown task `cbb`"),
    Case("study files", "an unknown probe", lambda e: _study(e, {"probes": ["arc_easy", "piqa2"]}),
         r"`probes`: Unknown task `piqa2`"),
    Case("study files", "a probe as a training task", lambda e: _study(e, {"tasks": ["sst2", "piqa"]}),
         r"`tasks`: piqa is a probe, never trained on; list it under `probes` instead"),
    Case("study files", "bad shots", lambda e: _study(e, {"eval": {"shots": ["0", "lots"]}}), r"--shots value `lots`"),
]

CASES: list[Case] = [*TASK_FILES, *DATA_FILES, *RESULTS, *MODELS, *OUTPUT_PATHS, *FLAGS, *CONFIGS, *RESUME,
                     *SERVERS, *STUDY_FILES]


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
    for name, value in case.environ:
        monkeypatch.setenv(name, value)
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
