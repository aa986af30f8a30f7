"""Per-document outcomes from evaluation directories (`samples/*.jsonl`), and the pairing of two arms on the same
(task, shots, demonstration seed, document) for the paired statistics in `harness.stats`."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from manyicl.harness.errors import HarnessError
from manyicl.harness.results import SUMMARY_FILE, ResultRecord, lm_eval_task_name, read_records
from manyicl.harness.settings import METRIC_KEYS
from manyicl.harness.stats import Cluster, PairedResult, Unit, compare

OutcomeKey = tuple[str, str, int, str]  # (task, shots, seed, uid): what two arms are paired on
# lm-eval's mean of the per-document values is the record's value; a larger gap means the samples are not the
# ones the summary was computed from.
_AGREEMENT = 1e-6


@dataclass(frozen=True)
class Outcome:
    """One document's score under one model, task, shot setting and demonstration seed."""

    model: str
    model_path: str
    method: str
    task: str
    role: str
    shots: str
    seed: int
    uid: str
    value: float
    train_seed: int | None = None  # the model's training seed; None for the base model
    draw: int = 0  # the document's draw block
    draws: int = 1  # G of its setting: a draw effect exists only with G > 1 at k > 0 shots
    prediction: int | None = None  # multiple choice: the answer chosen
    gold: int | None = None

    @property
    def key(self) -> OutcomeKey:
        return (self.task, self.shots, self.seed, self.uid)


@dataclass
class OutcomeTable:
    """Every per-document outcome found, and the records whose samples were not there (copies of the base
    model's probe scores under `base/` carry only the summary)."""

    outcomes: list[Outcome]
    without_samples: list[ResultRecord] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        return sorted({o.method for o in self.outcomes})

    def arm(self, method: str, model: str | None = None, role: str | None = None) -> dict[OutcomeKey, float]:
        """(task, shots, seed, uid) -> the arm's outcome. A key scored by several models of the arm (a dedicated
        run's per-task models on a probe, or several training seeds) gets their mean, as in the leaderboard."""
        values: dict[OutcomeKey, list[float]] = defaultdict(list)
        for o in self.outcomes:
            if o.method == method and (model is None or o.model == model) and (role is None or o.role == role):
                values[o.key].append(o.value)
        return {k: math.fsum(v) / len(v) for k, v in values.items()}


def read_outcomes(paths: Iterable[Path | str]) -> OutcomeTable:
    """Per-document outcomes of every record in the summary.jsonl files at or under `paths`, read from the
    `samples/` folder next to each summary. Each file's values must reproduce its record's score."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += [path] if path.is_file() else sorted(path.rglob(SUMMARY_FILE)) if path.is_dir() else []
    if not files:
        raise HarnessError(f"No {SUMMARY_FILE} under {', '.join(map(str, paths))}; pass evaluation or study "
                           "directories.")
    seen: dict[tuple[str, str, str, int, str], Path] = {}
    outcomes: list[Outcome] = []
    missing: list[ResultRecord] = []
    for summary in files:
        for record in read_records([summary]):
            sample_file = summary.parent / "samples" / f"{lm_eval_task_name(record.task, record.shots, record.seed)}.jsonl"
            if not sample_file.exists():
                missing.append(record)
                continue
            # The same model's outcome read twice (an evaluation directory inside a study passed twice) counts once.
            ident = (record.model_path, record.task, record.shots, record.seed, record.method)
            if ident in seen:
                continue
            seen[ident] = sample_file
            outcomes += _read_samples(sample_file, record)
    return OutcomeTable(outcomes=outcomes, without_samples=missing)


def _read_samples(path: Path, record: ResultRecord) -> list[Outcome]:
    metric = METRIC_KEYS[record.metric]
    out: list[Outcome] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("uid") is None or not isinstance(row.get(metric), int | float):
            raise HarnessError(f"{path}:{lineno}: a sample needs `uid` and a numeric `{metric}`; re-run the "
                               "evaluation with this version.")
        out.append(Outcome(model=record.model, model_path=record.model_path, method=record.method, task=record.task,
                           role=record.role, shots=record.shots, seed=record.seed, uid=str(row["uid"]),
                           value=float(row[metric]), train_seed=record.train_seed, draw=int(row.get("draw") or 0),
                           draws=record.draws, prediction=row.get("prediction"),
                           gold=row.get("target") if isinstance(row.get("target"), int) else None))
    uids = [o.uid for o in out]
    if len(set(uids)) != len(uids):
        raise HarnessError(f"{path} scores a document twice; re-run the evaluation into a fresh directory.")
    if len(out) != record.num_docs or abs(statistics.fmean(o.value for o in out) - record.value) > _AGREEMENT:
        raise HarnessError(f"{path} does not reproduce its summary record ({record.num_docs} documents, "
                           f"{record.metric} {record.value:.4f}); re-run the evaluation into a fresh directory.")
    return out


@dataclass(frozen=True)
class Pairing:
    """Two arms' outcomes matched on (task, shots, seed, document), grouped into one cluster per document."""

    a: str
    b: str
    clusters: list[Cluster]
    only_a: int  # (task, shots, seed, document) keys the other arm did not score (e.g. a query that did not fit)
    only_b: int

    def document_means(self) -> list[float]:
        """Each document's difference averaged over its seeds: the pilot `stats.documents_needed` takes."""
        return [math.fsum(c.diffs) / len(c.diffs) for c in self.clusters]

    @property
    def discordance(self) -> float:
        """The share of (document, seed) pairs on which the arms' outcomes differ."""
        pairs = [d for c in self.clusters for d in c.diffs]
        return sum(d != 0 for d in pairs) / len(pairs)


def pair(table: OutcomeTable, a: str, b: str, *, shots: str | None = None, role: str | None = None,
         tasks: Iterable[str] | None = None, model_a: str | None = None, model_b: str | None = None) -> Pairing:
    """Arm `a` minus arm `b` per document, over the chosen shot setting, task role and tasks. A document's
    differences under its demonstration seeds form one cluster (they share the document), in seed order."""
    wanted = set(tasks) if tasks is not None else None

    def keep(key: OutcomeKey) -> bool:
        return (shots is None or key[1] == shots) and (wanted is None or key[0] in wanted)

    arm_a = {k: v for k, v in table.arm(a, model_a, role).items() if keep(k)}
    arm_b = {k: v for k, v in table.arm(b, model_b, role).items() if keep(k)}
    shared = arm_a.keys() & arm_b.keys()
    if not shared:
        raise HarnessError(f"Arms `{a}` and `{b}` share no scored document"
                           f"{f' at {shots} shots' if shots else ''}{f' on {role} tasks' if role else ''}; "
                           "evaluate both on the same tasks, shots and seeds.")
    if shots is None and len({k[1] for k in shared}) > 1:
        raise HarnessError(f"Arms `{a}` and `{b}` were scored at several shot settings; choose one to compare.")
    grouped: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for task, _shots, seed, uid in shared:
        grouped[(task, uid)].append((seed, arm_a[(task, _shots, seed, uid)] - arm_b[(task, _shots, seed, uid)]))
    clusters = [Cluster(stratum=task, uid=uid, diffs=tuple(d for _, d in sorted(diffs)))
                for (task, uid), diffs in sorted(grouped.items())]
    return Pairing(a=a, b=b, clusters=clusters, only_a=len(arm_a.keys() - shared), only_b=len(arm_b.keys() - shared))


def compare_arms(table: OutcomeTable, a: str, b: str, *, shots: str | None = None, role: str | None = None,
                 tasks: Iterable[str] | None = None, confidence: float = 0.95, iterations: int = 10_000,
                 seed: int = 0, bootstrap: str = "percentile") -> PairedResult:
    """`a` minus `b` with its bootstrap interval and permutation p-value (see `harness.stats.compare`)."""
    pairing = pair(table, a, b, shots=shots, role=role, tasks=tasks)
    return compare(pairing.clusters, confidence=confidence, iterations=iterations, seed=seed, bootstrap=bootstrap)


def paired_units(table: OutcomeTable, a: str, b: str, *, shots: str, role: str | None = None,
                 tasks: Iterable[str] | None = None) -> list[Unit]:
    """Arm `a` minus arm `b` per document at one shot setting, with the random factors each document was sampled
    under (harness.stats.Unit): its draw block when G > 1 draws were scored at k > 0 shots, and the training seed
    of the arms' models (paired seed by seed: both arms' seed-t models scored the same share of the blocks). A
    document scored under several crossed demonstration seeds (`--seeds`) is one unit, its seeds averaged, and
    its draws then count as fixed."""
    wanted = set(tasks) if tasks is not None else None

    def collect(method: str) -> dict[OutcomeKey, list[Outcome]]:
        out: dict[OutcomeKey, list[Outcome]] = defaultdict(list)
        for o in table.outcomes:
            if o.method == method and o.shots == shots and (role is None or o.role == role) and (
                    wanted is None or o.task in wanted):
                out[o.key].append(o)
        return out

    arm_a, arm_b = collect(a), collect(b)
    shared = sorted(arm_a.keys() & arm_b.keys())
    if not shared:
        raise HarnessError(f"Arms `{a}` and `{b}` share no scored document at {shots} shots"
                           f"{f' on {role} tasks' if role else ''}; evaluate both on the same tasks, shots and seeds.")
    by_doc: dict[tuple[str, str], list[OutcomeKey]] = defaultdict(list)
    for key in shared:
        by_doc[(key[0], key[3])].append(key)
    crossed = any(len(keys) > 1 for keys in by_doc.values())
    units = []
    for (task, _uid), keys in sorted(by_doc.items()):
        diffs = []
        for key in keys:
            oa, ob = arm_a[key], arm_b[key]
            diffs.append(math.fsum(o.value for o in oa) / len(oa) - math.fsum(o.value for o in ob) / len(ob))
        first_a, first_b = arm_a[keys[0]][0], arm_b[keys[0]][0]
        seeds = {o.train_seed for o in arm_a[keys[0]] + arm_b[keys[0]] if o.train_seed is not None}
        seed = None if not seeds else "|".join(str(s) for s in sorted(seeds))
        drawn = not crossed and shots != "0" and max(first_a.draws, first_b.draws) > 1
        units.append(Unit(stratum=task, value=math.fsum(diffs) / len(diffs),
                          block=str(first_a.draw) if drawn else None, seed=seed))
    return units


OUTCOME_COLUMNS = ("arm", "train_seed", "task", "role", "shots", "draw", "doc", "outcome", "draws", "seed",
                   "prediction")


def write_outcomes_csv(table: OutcomeTable, path: Path) -> Path:
    """Every scored document as one CSV row, enough to recompute every interval and claim without rerunning:
    arm, train_seed (empty for the base model), task, role, shots, draw (its block), doc, outcome; then draws (G
    of the setting), seed (the demonstration seed) and prediction (multiple choice)."""
    import csv
    import io

    from manyicl.harness.runs import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OUTCOME_COLUMNS)
    for o in sorted(table.outcomes, key=lambda o: (o.method, o.train_seed or -1, o.task, o.shots, o.seed, o.uid,
                                                   o.model_path)):
        writer.writerow([o.method, "" if o.train_seed is None else o.train_seed, o.task, o.role, o.shots, o.draw,
                         o.uid, repr(o.value), o.draws, o.seed, "" if o.prediction is None else o.prediction])
    atomic_write_text(path, buffer.getvalue())
    return path


def read_outcomes_csv(path: Path | str) -> OutcomeTable:
    """An outcomes.csv back as the table the claims are computed from (`harness claims` reads it)."""
    import csv

    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as err:
        raise HarnessError(f"{path} cannot be read ({err}); pass an outcomes.csv a study wrote.") from None
    missing = [c for c in OUTCOME_COLUMNS[:8] if rows and c not in rows[0]]
    if not rows or missing:
        raise HarnessError(f"{path} is not an outcomes.csv (missing column {missing[0] if missing else 'rows'}).")
    out = []
    for i, row in enumerate(rows, 2):
        try:
            seed = row.get("train_seed") or ""
            out.append(Outcome(
                model=f"{row['arm']}-seed{seed}" if seed else row["arm"], model_path=f"{row['arm']}:{seed}",
                method=row["arm"], task=row["task"], role=row["role"], shots=row["shots"],
                seed=int(row.get("seed") or 0), uid=row["doc"], value=float(row["outcome"]),
                train_seed=int(seed) if seed else None, draw=int(row["draw"] or 0), draws=int(row.get("draws") or 1),
                prediction=int(row["prediction"]) if row.get("prediction") else None))
        except (KeyError, ValueError) as err:
            raise HarnessError(f"{path}:{i}: cannot read this row ({err}).") from None
    return OutcomeTable(outcomes=out)
