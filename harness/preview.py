"""`harness preview` and `harness tasks show`: what the model sees, and which tokens carry loss."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from manyicl.harness.errors import HarnessError
from manyicl.harness.models import load_tokenizer, resolve_model
from manyicl.harness.settings import DEFAULT_MAX_LENGTH, DEFAULT_SEED, TrainConfig, check_settings, flag_name
from manyicl.tasks.registry import load_examples, load_task
from manyicl.train.sequences import Renderer, TrainingSequence, pack_task, resolve_format


def preview_sequence(task: str, method: str, model: str | None = None, fmt: str = "auto", max_seq_len: int = DEFAULT_MAX_LENGTH,
                     shots: int = 4, seed: int = DEFAULT_SEED, data_dir: str | None = None, index: int = 0) -> dict[str, Any]:
    """Build the task's sequences exactly as training would and describe sequence number `index`."""
    # The same ranges as `harness train`: a preview of a length or shot count training refuses would mislead.
    check_settings(TrainConfig, {"max_seq_len": max_seq_len, "shots": shots, "seed": seed}, flag_name)
    definition = load_task(task)
    if definition.probe:
        raise HarnessError(f"{definition.name} is a probe, never trained on; preview a training task.")
    tokenizer = load_tokenizer(resolve_model(model))
    renderer = Renderer(tokenizer, resolve_format(tokenizer, fmt))
    packing = pack_task(load_examples(definition, data_dir), renderer, method, max_seq_len, seed, shots=shots)
    if not packing.sequences:
        raise HarnessError(f"Task {task} yields no {method} sequences (too few train examples).")
    if not 0 <= index < len(packing.sequences):
        raise HarnessError(f"--index {index} is out of range; task {task} has {len(packing.sequences)} sequences.")
    seq = packing.sequences[index]
    return describe(seq, tokenizer, renderer.format, method) | {
        "sequences_in_task": len(packing.sequences),
        "skipped_too_long": packing.skipped_too_long,
        "max_seq_len": max_seq_len,
    }


def describe(seq: TrainingSequence, tokenizer, fmt: str, method: str) -> dict[str, Any]:
    return {
        "task": seq.task,
        "method": method,
        "format": fmt,
        "num_examples": seq.num_examples,
        "num_targets": seq.num_targets,
        "num_tokens": seq.num_tokens,
        "num_trained_tokens": seq.num_trained_tokens,
        "target_spans": [list(span) for span in seq.target_spans],
        "target_texts": [tokenizer.decode(seq.input_ids[a:b]) for a, b in seq.target_spans],
        "example_uids": seq.example_uids,
        "input_ids": seq.input_ids,
        "labels": seq.labels,
    }


def render_preview(info: dict[str, Any], tokenizer, max_chars: int = 6000) -> Group:
    """The decoded sequence with trained tokens highlighted, then the counts."""
    text = Text()
    for token_id, label in zip(info["input_ids"], info["labels"], strict=True):
        piece = tokenizer.decode([token_id])
        text.append(piece, style="bold black on green" if label != -100 else "dim")
        if len(text) > max_chars:
            text.append(f"\n… ({info['num_tokens']} tokens in all; use --json for every one)", style="italic")
            break
    counts = Table(show_header=False, box=None)
    for key in ("task", "method", "format", "num_examples", "num_targets", "num_tokens", "num_trained_tokens",
                "sequences_in_task", "skipped_too_long"):
        counts.add_row(key, str(info[key]))
    counts.add_row("first target spans", ", ".join(f"[{a},{b})" for a, b in info["target_spans"][:6]))
    legend = Text.assemble(("trained", "bold black on green"), "  ", ("not trained (labels = -100)", "dim"))
    return Group(Panel(text, title=f"{info['task']} · {info['method']} · sequence", subtitle=legend), counts)


def show_examples(task: str, model: str | None, fmt: str, data_dir: str | None, count: int = 3) -> Group:
    """Three train examples rendered as the model sees them at evaluation: prompt, then the answer."""
    definition = load_task(task)
    data = load_examples(definition, data_dir)
    tokenizer = load_tokenizer(resolve_model(model))
    renderer = Renderer(tokenizer, resolve_format(tokenizer, fmt))
    pool = data.train or data.test
    panels = []
    for ex in pool[:count]:
        body = Text(renderer.prompt([], ex.input), style="dim")
        body.append(renderer.answer_text(ex.answer), style="bold green")
        if ex.choices:
            body.append(f"\n\nchoices: {list(ex.choices)}", style="italic")
        panels.append(Panel(body, title=Text(ex.uid)))  # Text: a str title reads `:train:` as an emoji code
    header = Text(f"{definition.name} ({definition.family}{', probe' if definition.probe else ''}): "
                  f"{definition.description}\nsource: {data.source}\ntrain {len(data.train)} / validation "
                  f"{len(data.validation)} / test {len(data.test)}"
                  f" · metric {definition.metric} · format {renderer.format}"
                  + (f"\n{data.dropped_overlap} train rows dropped: the same input as a test row (up to whitespace "
                     "and case)" if data.dropped_overlap else ""))
    return Group(header, *panels)
