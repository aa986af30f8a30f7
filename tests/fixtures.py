"""Tiny hand-built fixtures: a Llama model of a few hundred thousand weights with its own BPE tokenizer and
SmolLM-style chat template, and a data directory with a few rows of every built-in task in its raw format."""

from __future__ import annotations

import json
import random
from pathlib import Path

from manyicl.harness.tiny import WORDS, build_tiny_model  # noqa: F401 - re-exported for the tests


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_data_dir(root: Path, rows: int = 40) -> Path:
    """A data directory holding `rows` rows of every built-in task, each file in its raw published format."""
    rng = random.Random(1)

    def sentence(k: int = 6) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    coarse = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    for split, n in (("train", rows), ("dev", rows // 4), ("test", rows // 2)):
        _text(root / "sst2" / f"stsa.binary.{split}", [f"{i % 2} {sentence()} ." for i in range(n)])
    for split, n in (("train", rows), ("test", rows // 2)):
        _text(root / "trec" / f"{split}.txt", [f"{coarse[i % 6]}:other {sentence()} ?" for i in range(n)])
    for name, labels in (("rte", ["entailment", "not_entailment"]), ("cb", ["entailment", "contradiction", "neutral"])):
        for split, n in (("train", rows), ("val", rows // 2)):
            _jsonl(root / name / f"{split}.jsonl", [{"premise": sentence(10), "hypothesis": sentence(5),
                                                      "label": labels[i % len(labels)], "idx": i} for i in range(n)])
    for split, n in (("train", rows), ("test", rows // 2)):
        rows_ = []
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            rows_.append({"question": f"{sentence(4)} {a} and {b} how many ?",
                          "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"})
        _jsonl(root / "gsm8k" / f"{split}.jsonl", rows_)
    _jsonl(root / "boolq" / "test.jsonl", [{"query": f"Passage: {sentence(12)}\nQuestion: {sentence(4)}?",
                                            "choices": ["no", "yes"], "gold": i % 2} for i in range(rows)])
    _jsonl(root / "xsum" / "test.jsonl", [{"id": str(i), "document": sentence(30), "summary": sentence(6)}
                                          for i in range(rows)])
    _jsonl(root / "asdiv" / "test.jsonl", [{"passage": sentence(8), "question": "How many apples ?",
                                            "answer": f"{i % 9 + 1} apples"} for i in range(rows)])
    for name in ("arc_easy", "arc_challenge", "openbook_qa", "piqa"):
        n_choices = 2 if name == "piqa" else 4
        prefix = "Question: " if name != "openbook_qa" else ""
        _jsonl(root / name / "test.jsonl", [{"query": f"{prefix}{sentence(6)}?" + ("\n" if name == "piqa" else ""),
                                              "choices": [sentence(3) for _ in range(n_choices)],
                                              "gold": i % n_choices} for i in range(rows)])
    _jsonl(root / "commonsense_qa" / "test.jsonl", [
        {"query": f"Question: {sentence(6)}?\nChoices:\nA. {sentence(2)}\nB. {sentence(2)}\nC. {sentence(2)}\n"
                  f"D. {sentence(2)}\nAnswer:", "choices": ["A", "B", "C", "D"], "gold": i % 4} for i in range(rows)])
    wino = []
    for i in range(rows):
        stem = sentence(6)
        wino.append({"context_options": [f"{stem} so the sun", f"{stem} so the plant"],
                     "continuation": f"{sentence(4)}.", "gold": i % 2})
    _jsonl(root / "winogrande" / "test.jsonl", wino)
    _jsonl(root / "mmlu" / "test.jsonl", [
        {"question": f"{sentence(8)}?", "options": "A. one\nB. two\nC. three\nD. four",
         "answer": ["A. one", "B. two", "C. three", "D. four"][i % 4]} for i in range(rows)])
    return root
