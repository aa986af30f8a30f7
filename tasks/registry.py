"""Task definitions (tasks/*.yaml): loading, validation, and the examples they yield with a fixed train/test split."""

from __future__ import annotations

import os
import random
import string
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.settings import DEFAULT_SEED, FAMILIES
from tasks.formats import HUB_ADAPTERS, PARSERS

TASKS_DIR = Path(__file__).resolve().parent
DATA_DIR_ENV = "HARNESS_DATA_DIR"
METRICS = {"accuracy": "multiple_choice", "exact_match_number": "generation", "rouge_l": "generation"}
SPLITS = ("train", "test")

_TOP_KEYS = {"name", "family", "probe", "description", "source", "split", "validation", "prompt", "answer",
             "choices", "labels", "label_field", "choices_field", "gold_field", "metric", "max_gen_toks"}
_SOURCE_KEYS = {"format", "files", "hub"}
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
    dropped_overlap: int = 0  # train rows dropped because their input equals a test input
    # Carved from the train split (see ValidationRule); `train` no longer holds these rows.
    validation: tuple[Example, ...] = ()
    dropped_validation_overlap: int = 0  # train rows dropped because their input equals a validation input

    @property
    def train_split_size(self) -> int:
        """The train split's rows before the validation split was carved out of it."""
        return len(self.train) + len(self.validation) + self.dropped_validation_overlap


# --------------------------------------------------------------------------- definitions


def _problems_in(raw: Any, path: Path) -> list[str]:
    """Every problem in a raw definition, each one sentence naming the field and the fix."""
    where = path.name
    if not isinstance(raw, dict):
        return [f"{where}: expected a mapping of fields at the top level."]
    problems = [f"{where}: unknown field `{k}`; allowed: {', '.join(sorted(_TOP_KEYS))}." for k in raw
                if k not in _TOP_KEYS]
    for key in ("name", "family", "source", "prompt", "metric"):
        if key not in raw:
            problems.append(f"{where}: missing required field `{key}`.")
    if raw.get("name") and raw["name"] != path.stem:
        problems.append(f"{where}: `name: {raw['name']}` must equal the file name `{path.stem}`.")
    if "family" in raw and raw["family"] not in FAMILIES:
        problems.append(f"{where}: `family: {raw['family']}` is not one of {', '.join(FAMILIES)}.")
    if "metric" in raw and raw["metric"] not in METRICS:
        problems.append(f"{where}: `metric: {raw['metric']}` is not one of {', '.join(METRICS)}.")
    source = raw.get("source") or {}
    if not isinstance(source, dict):
        problems.append(f"{where}: `source` must be a mapping with `format` and `files` and/or `hub`.")
        source = {}
    problems += [f"{where}: unknown field `source.{k}`; allowed: {', '.join(sorted(_SOURCE_KEYS))}."
                 for k in source if k not in _SOURCE_KEYS]
    if "files" in source and source.get("format") not in PARSERS:
        problems.append(f"{where}: `source.format: {source.get('format')}` is not one of {', '.join(PARSERS)}.")
    files = source.get("files") or {}
    if not isinstance(files, dict) or any(k not in SPLITS for k in files):
        problems.append(f"{where}: `source.files` must map `train` and/or `test` to paths under the data directory.")
        files = {}
    hub = source.get("hub")
    if not files and not hub:
        problems.append(f"{where}: `source` needs `files` (under the data directory) or `hub` (a dataset id).")
    if hub is not None:
        if not isinstance(hub, dict) or "path" not in hub:
            problems.append(f"{where}: `source.hub` needs at least `path` (the hub dataset id).")
        else:
            problems += [f"{where}: unknown field `source.hub.{k}`; allowed: {', '.join(sorted(_HUB_KEYS))}."
                         for k in hub if k not in _HUB_KEYS]
            if hub.get("adapter") and hub["adapter"] not in HUB_ADAPTERS:
                problems.append(f"{where}: `source.hub.adapter: {hub['adapter']}` is not one of "
                                f"{', '.join(HUB_ADAPTERS)}.")
    split = raw.get("split")
    single_split = "train" not in files or (hub and "train" not in (hub.get("splits") or {}))
    if split is None and files and "train" not in files:
        problems.append(f"{where}: the source has no train split; add `split: {{seed: {DEFAULT_SEED}, test_size: 500}}`.")
    if split is not None:
        if not isinstance(split, dict) or set(split) != _SPLIT_KEYS:
            problems.append(f"{where}: `split` must have exactly `seed` and `test_size`.")
        elif not (isinstance(split["test_size"], int | float) and split["test_size"] > 0):
            problems.append(f"{where}: `split.test_size` must be a positive count or a fraction below 1.")
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
    kind = METRICS.get(raw.get("metric"))
    if kind == "multiple_choice":
        if not raw.get("choices") and not raw.get("choices_field"):
            problems.append(f"{where}: metric `accuracy` needs `choices` (a fixed list) or `choices_field`.")
        if raw.get("choices") and raw.get("choices_field"):
            problems.append(f"{where}: give either `choices` or `choices_field`, not both.")
        if raw.get("choices") is not None and (not isinstance(raw["choices"], list) or len(raw["choices"]) < 2):
            problems.append(f"{where}: `choices` must be a list of at least two answer texts.")
        labels = raw.get("labels")
        if labels is not None and raw.get("choices"):
            outside = [v for v in labels.values() if v not in raw["choices"]]
            if outside:
                problems.append(f"{where}: `labels` maps to {outside}, which are not in `choices`; add them to "
                                "`choices` or fix the mapping.")
    elif kind == "generation" and not raw.get("answer"):
        problems.append(f"{where}: a generation task needs `answer`, a template like '{{summary}}'.")
    for key in ("prompt", "answer"):
        if isinstance(raw.get(key), str):
            try:
                list(string.Formatter().parse(raw[key]))
            except ValueError as err:
                problems.append(f"{where}: `{key}` is not a valid template ({err}); write fields as {{name}}.")
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
        max_gen_toks=int(raw.get("max_gen_toks", 256)),
        path=path,
        validation=ValidationRule(**raw.get("validation") or {}),
    )


def read_definition(path: Path) -> tuple[TaskDef | None, list[str]]:
    """Parse one definition file; returns the task (or None) and every problem found."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path}: no such task file; check the path."]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        return None, [f"{path.name}:{line} is not valid YAML ({getattr(err, 'problem', err)}); fix the syntax."]
    problems = _problems_in(raw, path)
    return (None if problems else _build(raw, path)), problems


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
    seen: set[str] = set()
    return [t for t in out if not (t.name in seen or seen.add(t.name))]


# --------------------------------------------------------------------------- data


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The data directory: `--data-dir`, else $HARNESS_DATA_DIR, else None (the hub fallback)."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise HarnessError(f"Data directory {path} does not exist; pass --data-dir or set {DATA_DIR_ENV} "
                           "to the folder holding the task data.")
    return path.resolve()


def _files_present(task: TaskDef, data_dir: Path | None) -> bool:
    return bool(task.files) and data_dir is not None and all((data_dir / f).exists() for f in task.files.values())


def _read_files(task: TaskDef, data_dir: Path) -> dict[str, list[dict]]:
    parser = PARSERS[task.format]
    return {split: parser(data_dir / rel) for split, rel in task.files.items()}


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


def render_example(task: TaskDef, record: dict, uid: str) -> Example:
    """One raw record -> an Example: the prompt and answer texts, and the choices for multiple-choice tasks."""
    fields = _Fields(record, task, uid)
    text = string.Formatter().vformat(task.prompt, (), fields)
    if task.kind == "generation":
        return Example(uid=uid, input=text, answer=string.Formatter().vformat(task.answer, (), fields))
    if task.choices_field:
        choices = tuple(str(c).strip() for c in _field(record, task.choices_field, task, uid))
        gold = int(_field(record, task.gold_field, task, uid))
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
        raise HarnessError(f"Task {task.name}: `split.test_size: {size}` leaves no train or no test rows out of {n}; "
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
    test_inputs = {ex.input for ex in test}
    train_all = [render_example(task, r, f"{task.name}:train:{i}") for i, r in train_rows]
    # A row published in both splits would let a test row become a demonstration or a target.
    train = [ex for ex in train_all if ex.input not in test_inputs]
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
        val_inputs = {ex.input for ex in validation}
        # A duplicate of a validation row left in train would be trained on and then scored as unseen.
        train = [ex for i, ex in enumerate(train) if i not in held and ex.input not in val_inputs]
    return TaskData(task=task, train=tuple(train), test=test, source=source, dropped_overlap=dropped,
                    validation=tuple(validation),
                    dropped_validation_overlap=len(train_all) - dropped - len(validation) - len(train))


def load_examples(task: TaskDef, data_dir: str | Path | None = None) -> TaskData:
    """The task's examples with its fixed train/validation/test split. Test rows never appear in the train split;
    validation rows (training tasks only) are neither in the train split nor in the demonstration pool."""
    return _load_examples_cached(task.path, resolve_data_dir(data_dir))


def validate(path_or_name: str, data_dir: str | Path | None = None) -> list[str]:
    """Every problem with a definition and its data, as sentences; an empty list means it is sound."""
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
    if not _files_present(task, resolved):
        missing = [str((resolved or Path("<data-dir>")) / f) for f in task.files.values()
                   if resolved is None or not (resolved / f).exists()]
        return [f"{path.name}: data files not found: {', '.join(missing)}; set --data-dir or {DATA_DIR_ENV}."]
    try:
        raw = _read_files(task, resolved)  # type: ignore[arg-type]
    except HarnessError as err:
        return [str(err)]
    rows = [(s, i, r) for s, rs in raw.items() for i, r in enumerate(rs)]
    for split, i, record in rows:
        try:
            render_example(task, record, f"{task.name}:{split}:{i}")
        except HarnessError as err:
            problems.append(str(err))
            if len(problems) >= 20:
                problems.append(f"{path.name}: stopped after 20 problems.")
                return problems
    if not problems:
        try:
            data = load_examples(task, resolved)
        except HarnessError as err:
            return [str(err)]
        if not data.train:
            problems.append(f"{path.name}: the train split is empty; demonstrations and training need train rows.")
    return problems
