"""Helpers the test tiers share: running the CLI in-process, checking that processes are gone, and a tiny model
with shaken weights."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest


def run_harness(args: list[str], monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    """Run `harness ARGS` in this process through the console-script entry point (`main`, which turns a
    HarnessError into one line and an exit code). Returns the exit code, stdout and stderr. With a
    `monkeypatch`, its changes (argv, COLUMNS) are left for the test's own teardown."""
    from manyicl.harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    ctx = monkeypatch or pytest.MonkeyPatch()
    try:
        ctx.setattr(sys, "argv", ["harness", *args])
        ctx.setenv("COLUMNS", "1000")  # rich wraps long lines at 80 columns; one message is one line
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        if monkeypatch is None:
            ctx.undo()
    return code, out.getvalue(), err.getvalue()


def one_line(text: str) -> str:
    return " ".join(text.split())


def alive(pids: list[int]) -> list[int]:
    """The pids that still run (zombies count as gone)."""
    import psutil

    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def shaken_model(tiny_model: Path, target: Path, noise: float, seed: int = 3) -> Path:
    """The tiny model with seeded noise on every weight, saved with its tokenizer into `target`: choices'
    log-likelihoods then differ between documents and greedy generation says more than newlines."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * noise)
    net.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(target)
    return target
