"""HarnessError: what a person sees."""

from __future__ import annotations

import io

from rich.console import Console

from manyicl.harness.errors import HarnessError


def test_harness_error_prints_literally_through_rich():
    console = Console(width=300, record=True, file=io.StringIO())
    err = HarnessError("Task rte: row rte:train:20 in /data/[exp1]/train.jsonl has :smile: [bold]x[/bold].")
    console.print("[bold red]Error:[/bold red]", err)
    assert console.export_text().strip() == f"Error: {err}"
    console.print(f"[bold red]Error:[/bold red] {err}")  # the f-string form is what mangles the message
    assert "rte:train:20" not in console.export_text()
