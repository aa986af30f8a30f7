"""Shared fixtures: the tiny model and data directory (built once per session), and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures import build_data_dir, build_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real task data (CI sets HARNESS_DATA_DIR to ../shared/data); tests needing it skip without it."""
    candidates = [os.environ.get("HARNESS_DATA_DIR"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sst2").is_dir():
            return Path(candidate).resolve()
    pytest.skip("real task data not found: set HARNESS_DATA_DIR")


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path, monkeypatch):
    """Runs write under a per-test results folder, never into the repository."""
    monkeypatch.setenv("HARNESS_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
