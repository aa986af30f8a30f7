"""Metrics for generated lm-eval task configs (copied next to them as metrics.py; imports nothing of ours, so
plain `lm_eval --include_path DIR` runs the configs too)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The answer's number: the first after GSM8K's `####` marker when present, else the last in the text."""
    if "####" in text:
        after = text.split("####", 1)[1]
        found = _NUMBER.findall(after)
        return float(found[0].replace(",", "")) if found else None
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def exact_match_number(doc: dict, results: list[str]) -> dict[str, float]:
    """1.0 when the generation's final number equals the reference's final number."""
    predicted = final_number(results[0])
    gold = final_number(doc["target"])
    hit = predicted is not None and gold is not None and abs(predicted - gold) < 1e-6
    return {"exact_match": float(hit)}


def rouge_l(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE-L F-measure (with stemming) of the generation against the reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return {"rouge_l": scorer.score(doc["target"], results[0].strip())["rougeL"].fmeasure}
