"""Task definitions (tasks/*.yaml): loading, validation, and the examples they yield with a fixed train/test split."""

from __future__ import annotations

import dataclasses
import os
import random
import string
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import DEFAULT_SEED, FAMILIES
from manyicl.tasks.formats import HUB_ADAPTERS, PARSERS, parse_csv

TASKS_DIR = Path(__file__).resolve().parent
DATA_DIR_ENV = "HARNESS_DATA_DIR"
METRICS = {"accuracy": "multiple_choice", "exact_match_number": "generation", "rouge_l": "generation"}
SPLITS = ("train", "test")
DEFAULT_MAX_GEN_TOKS = 256  # tokens a generation task may generate when its definition gives no `max_gen_toks`

_TOP_KEYS = {"name", "family", "probe", "description", "source", "split", "validation", "prompt", "answer",
             "choices", "labels", "label_field", "choices_field", "gold_field", "metric", "max_gen_toks", "replaces"}
_SOURCE_KEYS = {"format", "files", "hub", "columns", "delimiter"}
_HUB_KEYS = {"path", "name", "splits", "columns", "adapter"}
_SPLIT_KEYS = {"seed", "test_size"}
_VALIDATION_KEYS = {"seed", "size", "cap"}


@dataclass(frozen=True)
class HubSource:
    """Where users with hub access get the same data: `datasets.load_dataset(path, name, split=...)`."""

    path: str
    name: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split
    columns: dict[str, str] = field(default_factory=dict)  # hub column -> record field
    adapter: str | None = None  # a function in tasks/formats.py HUB_ADAPTERS


@dataclass(frozen=True)
class SplitRule:
    """A deterministic train/test split of a single-split source: shuffle row indices with `seed`, the first
    `test_size` rows (a count, or a fraction when below 1) are the test split, the rest the train split."""

    seed: int
    test_size: float


@dataclass(frozen=True)
class ValidationRule:
    """The validation split of a training task, carved from its train split so that a recipe (learning rate,
    steps) is chosen without the test set: shuffle the train rows with `seed` and hold out `size` of them (a
    count, or a fraction when below 1, rounded down), at most `cap`. Held-out rows are neither trained on nor
    used as demonstrations. `size: 0` turns it off."""

    seed: int = 1234
    size: float = 0.1
    cap: int = 500

    def count(self, rows: int) -> int:
        return min(self.cap, int(self.size * rows) if self.size < 1 else int(self.size))


@dataclass(frozen=True)
class TaskDef:
    """One task: where its data is, how an example renders, and how it is scored."""

    name: str
    family: str
    probe: bool
    description: str
    format: str
    files: dict[str, str]
    hub: HubSource | None
    split: SplitRule | None
    prompt: str
    answer: str | None
    choices: tuple[str, ...] | None
    labels: dict[str, str] | None
    label_field: str
    choices_field: str | None
    gold_field: str
    metric: str
    max_gen_toks: int
    path: Path
    validation: ValidationRule = ValidationRule()  # ignored for probes, which are never trained on
    columns: tuple[str, ...] | None = None  # csv: field names of the columns, when the file has no header row
    delimiter: str = ","  # csv: the field separator
    replaces: str | None = None  # the built-in task this file stands in for (same name)

    @property
    def kind(self) -> str:
        """`multiple_choice` (scored by log-likelihood of each choice) or `generation`."""
        return METRICS[self.metric]


@dataclass(frozen=True)
class Example:
    """One input and its answer, rendered as text. `choices`/`gold` are set for multiple-choice tasks."""

    uid: str
    input: str
    answer: str
    choices: tuple[str, ...] | None = None
    gold: int | None = None


@dataclass(frozen=True)
class TaskData:
    task: TaskDef
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str  # where the rows came from, for manifests
    dropped_overlap: int = 0  # train rows dropped: their input equals a test input up to whitespace and case
    # Carved from the train split (see ValidationRule); `train` no longer holds these rows.
    validation: tuple[Example, ...] = ()
    dropped_validation_overlap: int = 0  # train rows dropped because their input equals a validation input

    @property
    def train_split_size(self) -> int:
        """The train split's rows before the validation split was carved out of it."""
        return len(self.train) + len(self.validation) + self.dropped_validation_overlap


# --------------------------------------------------------------------------- definitions


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str | int | float | bool) and isinstance(v, str | int | float)
                                           and not isinstance(v, bool) for k, v in value.items())


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _template_problem(where: str, key: str, template: str) -> str | None:
    """Why a prompt/answer template cannot be filled from a record's named fields, or None."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        return f"{where}: `{key}` is not a valid template ({err}); write fields as {{name}}."
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or not name.isidentifier():
            return (f"{where}: `{key}` has the placeholder {{{name}}}; name a record field, like {{text}} "
                    "(write a literal brace as {{ or }}).")
        if spec or conversion:
            return f"{where}: `{key}` formats {{{name}}} with a conversion or spec; write the plain field {{{name}}}."
    return None


def _problems_in(raw: Any, path: Path) -> list[str]:
    """Every problem in a raw definition, each one sentence naming the field and the fix."""
    where = path.name
    if not isinstance(raw, dict):
        return [f"{where}: expected a mapping of fields at the top level (like `name: {path.stem}`)."]
    problems = [f"{where}: unknown field `{k}`; allowed: {', '.join(sorted(_TOP_KEYS))}." for k in raw
                if k not in _TOP_KEYS]
    for key in ("name", "family", "source", "prompt", "metric"):
        if key not in raw:
            problems.append(f"{where}: missing required field `{key}`.")
    # Types first: a list where a text belongs must be one sentence, never a crash further down.
    for key in ("name", "family", "description", "prompt", "answer", "metric", "label_field", "choices_field",
                "gold_field", "replaces"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{where}: `{key}` must be a text, got {_kind(raw[key])}; quote it or fix the value.")
    text = {k: raw[k] for k in raw if isinstance(raw[k], str)}
    if "probe" in raw and not isinstance(raw["probe"], bool):
        problems.append(f"{where}: `probe` must be true or false, got {_kind(raw['probe'])}.")
    if "max_gen_toks" in raw and not (_is_count(raw["max_gen_toks"]) and raw["max_gen_toks"] > 0):
        problems.append(f"{where}: `max_gen_toks` must be a positive whole number of tokens, got "
                        f"{raw['max_gen_toks']!r}.")
    if "name" in text and text["name"] != path.stem:
        problems.append(f"{where}: `name: {text['name']}` must equal the file name `{path.stem}`.")
    problems += _replaces_problems(raw, path, where)
    if "family" in text and text["family"] not in FAMILIES:
        problems.append(f"{where}: `family: {text['family']}` is not one of {', '.join(FAMILIES)}.")
    if "metric" in text and text["metric"] not in METRICS:
        problems.append(f"{where}: `metric: {text['metric']}` is not one of {', '.join(METRICS)}.")
    source = raw.get("source") or {}
    if not isinstance(source, dict):
        problems.append(f"{where}: `source` must be a mapping with `format` and `files` and/or `hub`.")
        source = {}
    problems += [f"{where}: unknown field `source.{k}`; allowed: {', '.join(sorted(_SOURCE_KEYS))}."
                 for k in source if k not in _SOURCE_KEYS]
    fmt = source.get("format")
    if "files" in source and (not isinstance(fmt, str) or fmt not in PARSERS):
        problems.append(f"{where}: `source.format: {fmt}` is not one of {', '.join(PARSERS)}.")
    problems += _csv_problems(source, where)
    files = source.get("files") or {}
    if (not isinstance(files, dict) or any(k not in SPLITS for k in files)
            or any(not isinstance(v, str) or not v for v in files.values())):
        problems.append(f"{where}: `source.files` must map `train` and/or `test` to paths under the data directory.")
        files = {}
    hub = source.get("hub")
    if not files and not hub:
        problems.append(f"{where}: `source` needs `files` (under the data directory) or `hub` (a dataset id).")
    if hub is not None:
        if not isinstance(hub, dict) or not isinstance(hub.get("path"), str):
            problems.append(f"{where}: `source.hub` needs at least `path` (the hub dataset id, a text).")
            hub = {}
        else:
            problems += [f"{where}: unknown field `source.hub.{k}`; allowed: {', '.join(sorted(_HUB_KEYS))}."
                         for k in hub if k not in _HUB_KEYS]
            if hub.get("name") is not None and not isinstance(hub["name"], str):
                problems.append(f"{where}: `source.hub.name` must be a text (the dataset configuration).")
            for key in ("splits", "columns"):
                if hub.get(key) is not None and not _is_str_map(hub[key]):
                    problems.append(f"{where}: `source.hub.{key}` must map names to names, like {{train: train}}.")
            if "splits" in hub and _is_str_map(hub["splits"]) and any(k not in SPLITS for k in hub["splits"]):
                problems.append(f"{where}: `source.hub.splits` maps our `train`/`test` to hub split names.")
            adapter = hub.get("adapter")
            if adapter is not None and (not isinstance(adapter, str) or adapter not in HUB_ADAPTERS):
                problems.append(f"{where}: `source.hub.adapter: {adapter}` is not one of {', '.join(HUB_ADAPTERS)}.")
    split = raw.get("split")
    hub_splits = hub.get("splits") if isinstance(hub, dict) and isinstance(hub.get("splits"), dict) else {}
    single_split = "train" not in files or (hub and "train" not in hub_splits)
    if split is None and files and "train" not in files:
        problems.append(f"{where}: the source has no train split; add `split: {{seed: {DEFAULT_SEED}, test_size: 0.2}}`.")
    elif split is None and hub and "train" not in hub_splits:
        problems.append(f"{where}: `source.hub` has no train split; add `train` to `source.hub.splits` or a "
                        f"`split: {{seed: {DEFAULT_SEED}, test_size: 0.2}}` rule.")
    if split is not None:
        if not isinstance(split, dict) or set(split) != _SPLIT_KEYS:
            problems.append(f"{where}: `split` must have exactly `seed` and `test_size`.")
        else:
            size = split["test_size"]
            if not _is_count(split["seed"]):
                problems.append(f"{where}: `split.seed` must be a whole number, got {split['seed']!r}.")
            if isinstance(size, bool) or not isinstance(size, int | float) or size <= 0 or (size >= 1 and size != int(size)):
                problems.append(f"{where}: `split.test_size` must be a count of rows (a whole number) or a fraction "
                                f"between 0 and 1, got {size!r}.")
            elif not single_split:
                problems.append(f"{where}: `split` is only for sources with a single split; remove it.")
    validation = raw.get("validation")
    if validation is not None:
        if not isinstance(validation, dict) or not set(validation) <= _VALIDATION_KEYS:
            problems.append(f"{where}: `validation` may only have `seed`, `size` and `cap`.")
        elif not (isinstance(validation.get("size", 0), int | float) and validation.get("size", 0) >= 0
                  and isinstance(validation.get("cap", 0), int) and validation.get("cap", 0) >= 0
                  and isinstance(validation.get("seed", 0), int)):
            problems.append(f"{where}: `validation.size` must be a count or a fraction (0 turns it off), "
                            "`validation.cap` a count and `validation.seed` an integer.")
    kind = METRICS.get(text.get("metric"))
    choices = raw.get("choices")
    if kind == "multiple_choice":
        if not choices and not raw.get("choices_field"):
            problems.append(f"{where}: metric `accuracy` needs `choices` (a fixed list) or `choices_field`.")
        if choices and raw.get("choices_field"):
            problems.append(f"{where}: give either `choices` or `choices_field`, not both.")
    if choices is not None and (not isinstance(choices, list) or len(choices) < 2
                                or not all(isinstance(c, str) and c.strip() for c in choices)):
        problems.append(f"{where}: `choices` must be a list of at least two answer texts, like [\"yes\", \"no\"].")
        choices = None
    labels = raw.get("labels")
    if labels is not None:
        if not _is_str_map(labels):
            problems.append(f"{where}: `labels` must map each raw label to a choice text, like "
                            "{0: negative, 1: positive} (quote values such as \"True\"), got "
                            f"{_kind(labels) if not isinstance(labels, dict) else 'a mapping with other values'}.")
        elif choices:
            outside = [str(v) for v in labels.values() if str(v) not in choices]
            if outside:
                problems.append(f"{where}: `labels` maps to {outside}, which are not in `choices`; add them to "
                                "`choices` or fix the mapping.")
    if kind == "generation" and not raw.get("answer"):
        problems.append(f"{where}: a generation task needs `answer`, a template like '{{summary}}'.")
    for key in ("prompt", "answer"):
        if isinstance(raw.get(key), str):
            problem = _template_problem(where, key, raw[key])
            if problem:
                problems.append(problem)
    return problems


def _kind(value: Any) -> str:
    """How a YAML value reads to a person: `a list`, `a number (3)`, ..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return f"a text ({value[:30]!r})"
    return type(value).__name__


def _replaces_problems(raw: dict, path: Path, where: str) -> list[str]:
    """A file outside tasks/ may reuse a built-in task's name only when it says `replaces: <that name>`."""
    name, replaces = raw.get("name"), raw.get("replaces")
    if not isinstance(name, str) or (replaces is not None and not isinstance(replaces, str)):
        return []
    builtin = {p.stem for p in builtin_task_files()}
    is_builtin_file = path.resolve().parent == TASKS_DIR
    if replaces is not None and replaces not in builtin:
        return [f"{where}: `replaces: {replaces}` names no built-in task; remove it or name one of "
                f"{', '.join(sorted(builtin))}."]
    if replaces is not None and replaces != name:
        return [f"{where}: `replaces: {replaces}` must equal `name` ({name}): a replacement keeps the built-in's name."]
    if name in builtin and not is_builtin_file and replaces is None:
        return [f"{where}: `name: {name}` is a built-in task's name; add `replaces: {name}` to use this file instead "
                "of the built-in, or rename the task (and its file)."]
    return []


def _csv_problems(source: dict, where: str) -> list[str]:
    problems = []
    columns, delimiter = source.get("columns"), source.get("delimiter")
    if (columns is not None or delimiter is not None) and source.get("format") != "csv":
        problems.append(f"{where}: `source.columns` and `source.delimiter` are only for `format: csv`.")
    if columns is not None and (not isinstance(columns, list) or not columns
                                or not all(isinstance(c, str) and c.isidentifier() for c in columns)
                                or len(set(columns)) != len(columns)):
        problems.append(f"{where}: `source.columns` must list distinct field names (letters, digits, _), one per "
                        "CSV column, like [label, title, description].")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n"):
        problems.append(f"{where}: `source.delimiter` must be one character, like \",\" or \"\\t\".")
    return problems


def _build(raw: dict, path: Path) -> TaskDef:
    source = raw["source"]
    hub = source.get("hub")
    split = raw.get("split")
    return TaskDef(
        name=raw["name"],
        family=raw["family"],
        probe=bool(raw.get("probe", False)),
        description=raw.get("description", ""),
        format=source.get("format", "jsonl"),
        files=dict(source.get("files") or {}),
        hub=HubSource(path=hub["path"], name=hub.get("name"), splits=dict(hub.get("splits") or {}),
                      columns=dict(hub.get("columns") or {}), adapter=hub.get("adapter")) if hub else None,
        split=SplitRule(seed=int(split["seed"]), test_size=float(split["test_size"])) if split else None,
        prompt=raw["prompt"],
        answer=raw.get("answer"),
        choices=tuple(raw["choices"]) if raw.get("choices") else None,
        labels={str(k): str(v) for k, v in raw["labels"].items()} if raw.get("labels") else None,
        label_field=raw.get("label_field", "label"),
        choices_field=raw.get("choices_field"),
        gold_field=raw.get("gold_field", "gold"),
        metric=raw["metric"],
        max_gen_toks=int(raw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        path=path,
        validation=ValidationRule(**raw.get("validation") or {}),
        columns=tuple(source["columns"]) if source.get("columns") else None,
        delimiter=source.get("delimiter", ","),
        replaces=raw.get("replaces"),
    )


def read_definition(path: Path) -> tuple[TaskDef | None, list[str]]:
    """Parse one definition file; returns the task (or None) and every problem found."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path}: no such task file; check the path."]
    except IsADirectoryError:
        return None, [f"{path} is a folder, not a task file; pass the .yaml file inside it."]
    except UnicodeDecodeError as err:
        return None, [f"{path.name}: line {_line_of(path, err.start)} is not UTF-8 text; save the file as UTF-8."]
    except OSError as err:
        return None, [f"{path}: cannot be read ({err.strerror}); check its permissions."]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        return None, [f"{path.name}:{line} is not valid YAML ({getattr(err, 'problem', err)}); fix the syntax."]
    problems = _problems_in(raw, path)
    return (None if problems else _build(raw, path)), problems


def _line_of(path: Path, offset: int) -> int:
    return path.read_bytes()[:offset].count(b"\n") + 1


def builtin_task_files() -> list[Path]:
    return sorted(TASKS_DIR.glob("*.yaml"))


@cache
def _load_path(path: Path) -> TaskDef:
    path = path.resolve()
    task, problems = read_definition(path)
    if problems:
        raise HarnessError(problems[0] + (f" ({len(problems) - 1} more: run `harness tasks validate {path}`)"
                                          if len(problems) > 1 else ""))
    assert task is not None
    return task


def load_task(name_or_path: str) -> TaskDef:
    """A built-in task by name, or a definition file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.exists():
            raise HarnessError(f"Task file {candidate} does not exist; check the path.")
        return _load_path(candidate.resolve())
    path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in builtin_task_files())
        raise HarnessError(f"Unknown task `{name_or_path}`; choose one of {known}, or pass a path to a .yaml file.")
    return _load_path(path)


def list_tasks() -> list[TaskDef]:
    return [_load_path(p) for p in builtin_task_files()]


def parse_task_list(spec: str | list[str] | tuple[str, ...]) -> list[TaskDef]:
    """`sst2,rte` (or a list) -> task definitions; `all-train` and `all-probes` expand to the built-in groups."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise HarnessError("No tasks given; pass --tasks like sst2,rte (see `harness tasks list`).")
    out: list[TaskDef] = []
    for name in names:
        if name in {"all-train", "all-probes"}:
            out += [t for t in list_tasks() if t.probe == (name == "all-probes")]
        else:
            out.append(load_task(name))
    by_name: dict[str, TaskDef] = {}
    for task in out:
        other = by_name.setdefault(task.name, task)
        if other.path != task.path:
            raise HarnessError(f"Two task definitions are named {task.name} ({other.path} and {task.path}); pass "
                               "only one of them.")
    return list(by_name.values())


# --------------------------------------------------------------------------- data


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The data directory: `--data-dir`, else $HARNESS_DATA_DIR, else None (the hub fallback)."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():  # "does not exist" would send the person looking for a path that is there
        raise HarnessError(f"Data directory {path} is a file, not a folder; pass --data-dir or set {DATA_DIR_ENV} "
                           "to the folder holding the task data.")
    if not path.is_dir():
        raise HarnessError(f"Data directory {path} does not exist; pass --data-dir or set {DATA_DIR_ENV} "
                           "to the folder holding the task data.")
    return path.resolve()


def _files_present(task: TaskDef, data_dir: Path | None) -> bool:
    return bool(task.files) and data_dir is not None and all((data_dir / f).exists() for f in task.files.values())


def _read_files(task: TaskDef, data_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for split, rel in task.files.items():
        path = data_dir / rel
        if task.format == "csv":
            rows = parse_csv(path, task.columns, task.delimiter)
        else:
            rows = PARSERS[task.format](path)
        if not rows:
            # An empty file would silently drop the task from training, or leave nothing to score.
            raise HarnessError(f"Task {task.name}: the {split} file {path} holds no rows; fill it or point "
                               f"`source.files.{split}` in {task.path.name} at the right file.")
        out[split] = rows
    return out


def _read_hub(task: TaskDef) -> dict[str, list[dict]]:
    import datasets

    hub = task.hub
    assert hub is not None
    splits = hub.splits or {"test": "test"}
    out: dict[str, list[dict]] = {}
    for ours, theirs in splits.items():
        try:
            ds = datasets.load_dataset(hub.path, hub.name, split=theirs)
        except Exception as err:  # the hub raises many types; the person needs one sentence
            raise HarnessError(
                f"Task {task.name}: could not load hub dataset {hub.path} ({type(err).__name__}); put the files "
                f"under the data directory (--data-dir or {DATA_DIR_ENV}) or allow hub access."
            ) from None
        label_cols = {k: f for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
        rows = []
        for row in ds:
            row = {k: (label_cols[k].int2str(v) if k in label_cols and v >= 0 else v) for k, v in row.items()}
            row = {hub.columns.get(k, k): v for k, v in row.items()}
            rows.append(HUB_ADAPTERS[hub.adapter](row) if hub.adapter else row)
        out[ours] = rows
    return out


def _field(record: dict, name: str, task: TaskDef, uid: str) -> Any:
    if name not in record:
        raise HarnessError(f"Task {task.name}: row {uid} has no field `{name}` (it has {', '.join(record)}); "
                           f"fix the data or the template in {task.path.name}.")
    return record[name]


class _Fields(dict):
    """Template fields that strip surrounding whitespace, which raw datasets carry inconsistently."""

    def __init__(self, record: dict, task: TaskDef, uid: str):
        super().__init__(record)
        self._task, self._uid = task, uid

    def __missing__(self, key: str) -> Any:
        return _field(self, key, self._task, self._uid)

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key) if key in self else self.__missing__(key)
        return value.strip() if isinstance(value, str) else value


def _fill(template: str, fields: _Fields, task: TaskDef, uid: str, key: str) -> str:
    try:
        return string.Formatter().vformat(template, (), fields)
    except (ValueError, IndexError, AttributeError, TypeError) as err:
        raise HarnessError(f"Task {task.name}: row {uid} cannot fill `{key}` ({err}); fix the template in "
                           f"{task.path.name} or the row.") from None


def render_example(task: TaskDef, record: dict, uid: str) -> Example:
    """One raw record -> an Example: the prompt and answer texts, and the choices for multiple-choice tasks."""
    fields = _Fields(record, task, uid)
    text = _fill(task.prompt, fields, task, uid, "prompt")
    if task.kind == "generation":
        assert task.answer is not None
        return Example(uid=uid, input=text, answer=_fill(task.answer, fields, task, uid, "answer"))
    if task.choices_field:
        raw_choices = _field(record, task.choices_field, task, uid)
        if not isinstance(raw_choices, list) or len(raw_choices) < 2:
            raise HarnessError(f"Task {task.name}: row {uid} has `{task.choices_field}` that is not a list of at "
                               "least two choices; fix the row.")
        choices = tuple(str(c).strip() for c in raw_choices)
        raw_gold = _field(record, task.gold_field, task, uid)
        try:
            gold = int(raw_gold)
        except (TypeError, ValueError):
            raise HarnessError(f"Task {task.name}: row {uid} has `{task.gold_field}: {raw_gold!r}`, not the index of "
                               "a choice (0, 1, ...); fix the row.") from None
        if not 0 <= gold < len(choices):
            raise HarnessError(f"Task {task.name}: row {uid} has `{task.gold_field}: {gold}` outside its "
                               f"{len(choices)} choices; fix the row.")
    else:
        assert task.choices is not None
        raw = str(_field(record, task.label_field, task, uid)).strip()
        label = task.labels.get(raw, raw) if task.labels else raw
        if label not in task.choices:
            raise HarnessError(f"Task {task.name}: row {uid} has label {raw!r}, which is not one of the choices "
                               f"{list(task.choices)}; add it to `labels`/`choices` in {task.path.name} or fix the row.")
        choices, gold = task.choices, task.choices.index(label)
    return Example(uid=uid, input=text, answer=choices[gold], choices=choices, gold=gold)


def _split_single(task: TaskDef, rows: list[dict]) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]]:
    assert task.split is not None
    n = len(rows)
    size = task.split.test_size
    n_test = int(round(size * n)) if size < 1 else int(size)
    if not 0 < n_test < n:
        raise HarnessError(f"Task {task.name}: `split.test_size: {size:g}` leaves no train or no test rows out of {n}; "
                           "lower it.")
    order = list(range(n))
    random.Random(task.split.seed).shuffle(order)
    test_ids = set(order[:n_test])
    train = [(i, r) for i, r in enumerate(rows) if i not in test_ids]
    test = [(i, r) for i, r in enumerate(rows) if i in test_ids]
    return train, test


@lru_cache(maxsize=64)
def _load_examples_cached(path: Path, data_dir: Path | None) -> TaskData:
    task = _load_path(path)
    if _files_present(task, data_dir):
        assert data_dir is not None
        raw = _read_files(task, data_dir)
        source = "files: " + ", ".join(f"{s}={data_dir / p}" for s, p in task.files.items())
    elif task.hub is not None and os.environ.get("HF_HUB_OFFLINE") != "1":
        raw = _read_hub(task)
        source = f"hub: {task.hub.path}" + (f" ({task.hub.name})" if task.hub.name else "")
    else:
        where = str(data_dir) if data_dir else f"no data directory (pass --data-dir or set {DATA_DIR_ENV})"
        wanted = ", ".join(task.files.values()) or "files"
        raise HarnessError(f"Task {task.name}: {wanted} not found in {where}, and the hub is not reachable "
                           "(HF_HUB_OFFLINE=1); point the data directory at the task data.")
    if "train" in raw:
        train_rows = list(enumerate(raw["train"]))
        test_rows = list(enumerate(raw["test"]))
    else:
        train_rows, test_rows = _split_single(task, raw["test"])
    test = tuple(render_example(task, r, f"{task.name}:test:{i}") for i, r in test_rows)
    test_inputs = {normalized(ex.input) for ex in test}
    train_all = [render_example(task, r, f"{task.name}:train:{i}") for i, r in train_rows]
    # A row published in both splits (also re-typed: other spacing or case) would let a test row become a
    # demonstration or a target.
    train = [ex for ex in train_all if normalized(ex.input) not in test_inputs]
    if not train:
        why = (f"all {len(train_all)} of its rows also appear in the test split" if train_all
               else "it holds no rows")
        raise HarnessError(f"Task {task.name}: the train split is empty ({why}); training and demonstrations need "
                           f"train rows: check `source.files` / `split` in {task.path.name}.")
    dropped = len(train_all) - len(train)
    validation: list[Example] = []
    n_val = 0 if task.probe else task.validation.count(len(train))
    if n_val:
        if n_val >= len(train):
            raise HarnessError(f"Task {task.name}: `validation.size: {task.validation.size}` leaves no train rows "
                               f"out of {len(train)}; lower it.")
        order = list(range(len(train)))
        random.Random(f"{task.validation.seed}:{task.name}:validation").shuffle(order)
        held = set(order[:n_val])
        validation = [ex for i, ex in enumerate(train) if i in held]
        val_inputs = {normalized(ex.input) for ex in validation}
        # A duplicate of a validation row left in train would be trained on and then scored as unseen.
        train = [ex for i, ex in enumerate(train) if i not in held and normalized(ex.input) not in val_inputs]
    return TaskData(task=task, train=tuple(train), test=test, source=source, dropped_overlap=dropped,
                    validation=tuple(validation),
                    dropped_validation_overlap=len(train_all) - dropped - len(validation) - len(train))

def normalized(text: str) -> str:
    """The text as overlap checks compare it: runs of whitespace made one space, case folded."""
    return " ".join(text.split()).casefold()


def load_examples(task: TaskDef, data_dir: str | Path | None = None) -> TaskData:
    """The task's examples with its fixed train/validation/test split. Test rows never appear in the train split;
    validation rows (training tasks only) are neither in the train split nor in the demonstration pool."""
    return _load_examples_cached(task.path, resolve_data_dir(data_dir))


def validate(path_or_name: str, data_dir: str | Path | None = None, max_row_problems: int = 20) -> list[str]:
    """Every problem with a definition and its data, as sentences; an empty list means it is sound.

    Never raises for a person's mistake: each data file is read on its own, so a broken train file does not hide
    the test file's problems, and at most `max_row_problems` row problems are listed per file.
    """
    path = Path(path_or_name) if Path(path_or_name).suffix in {".yaml", ".yml"} else TASKS_DIR / f"{path_or_name}.yaml"
    task, problems = read_definition(path)
    if task is None:
        return problems
    try:
        resolved = resolve_data_dir(data_dir)
    except HarnessError as err:
        return [str(err)]
    if not task.files:
        return problems  # a hub-only task: its data is checked when it loads
    missing = [str((resolved or Path("<data-dir>")) / f) for f in task.files.values()
               if resolved is None or not (resolved / f).exists()]
    if missing:
        return [f"{path.name}: data files not found: {', '.join(missing)}; set --data-dir or {DATA_DIR_ENV}."]
    assert resolved is not None
    for split, rel in task.files.items():
        try:
            rows = _read_files(dataclasses.replace(task, files={split: rel}), resolved)[split]
        except HarnessError as err:
            problems.append(str(err))
            continue
        file_problems = []
        for i, record in enumerate(rows):
            try:
                render_example(task, record, f"{task.name}:{split}:{i}")
            except HarnessError as err:
                file_problems.append(str(err))
                if len(file_problems) == max_row_problems:
                    file_problems.append(f"{path.name}: stopped listing rows of {resolved / rel} after "
                                         f"{max_row_problems} problems.")
                    break
        problems += file_problems
    if not problems:
        try:
            load_examples(task, resolved)
        except HarnessError as err:
            problems.append(str(err))
    return problems

