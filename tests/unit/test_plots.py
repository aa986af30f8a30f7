"""The figures are written atomically as real PNG files, and refuse to draw nothing."""

from __future__ import annotations

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.plots import plot_forgetting, plot_scores_vs_shots
from tests.unit.test_leaderboard import build_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    assert b"IEND" in data[-12:]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind


def test_scores_vs_shots_writes_a_png(tmp_path):
    out = plot_scores_vs_shots(build_records(), tmp_path / "figs" / "scores.png")
    assert out == tmp_path / "figs" / "scores.png"
    assert_png(out, min_bytes=30_000)


def test_forgetting_writes_a_png(tmp_path):
    out = plot_forgetting(build_records(), tmp_path / "forgetting.png")
    assert_png(out)


def test_plots_replace_an_existing_file(tmp_path):
    target = tmp_path / "forgetting.png"
    target.write_bytes(b"old")
    plot_forgetting(build_records(), target)
    assert_png(target)


def test_nothing_to_plot_is_a_clear_error(tmp_path):
    probes_only = [r for r in build_records() if r.role == "probe"]
    with pytest.raises(HarnessError, match="no records of train or held-out tasks"):
        plot_scores_vs_shots(probes_only, tmp_path / "scores.png")
    without_base = [r for r in build_records() if r.method != "base"]
    with pytest.raises(HarnessError, match="base"):
        plot_forgetting(without_base, tmp_path / "forgetting.png")
    with pytest.raises(HarnessError):
        plot_forgetting([], tmp_path / "forgetting.png")
    assert list(tmp_path.iterdir()) == []
