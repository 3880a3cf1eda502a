"""report.png drawn by a run's chart process (fms_dgt.chart), and without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fms_dgt.chart import PYPLOT, ChartProcess

pytest.importorskip("matplotlib")

REPORT = {
    "turns": {"distribution": {"2": 3, "3": 1}},
    "attributes": {"mood": {"kind": "categorical", "observed": {"happy": 0.75, "sad": 0.25}, "expected": {"happy": 0.5, "sad": 0.5}}},
    "patterns": {"counts": {"a": 2}, "observed": {"a": 1.0}, "weight_share": {"a": 1.0}},
    "judges": {},
}


@pytest.fixture
def no_pyplot(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as the command line has it: matplotlib not imported (the suite imports it)."""
    monkeypatch.delitem(sys.modules, PYPLOT)


def test_a_started_chart_process_draws_the_chart(tmp_path: Path, no_pyplot: None) -> None:
    chart = ChartProcess()
    chart.start()
    child = chart._child
    assert chart.started and child is not None
    assert chart.draw(REPORT, tmp_path / "report.png") is True
    assert child.returncode == 0
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert PYPLOT not in sys.modules  # drawn in the child, not here


def test_without_start_or_with_matplotlib_loaded_the_chart_is_drawn_here(tmp_path: Path) -> None:
    assert ChartProcess().draw(REPORT, tmp_path / "a.png") is True  # never started
    chart = ChartProcess()
    chart.start()  # pyplot already in sys.modules: no child to start
    assert chart.started and chart._child is None
    assert chart.draw(REPORT, tmp_path / "b.png") is True
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_a_chart_process_never_asked_to_draw_is_ended(no_pyplot: None) -> None:
    chart = ChartProcess()
    chart.start()
    child = chart._child
    assert child is not None
    chart.close()
    assert child.poll() is not None
    chart.close()  # twice is harmless


def test_the_child_exits_when_its_parent_sends_nothing() -> None:
    """An interrupted run, or one that ends with os._exit, closes the pipe without a report."""
    done = subprocess.run([sys.executable, "-m", "fms_dgt.chart"], input=b"", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_child_without_matplotlib_reports_it(tmp_path: Path, no_pyplot: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """draw() answers False, as in-process without the [report] extra: the report is written without it."""
    (tmp_path / "matplotlib.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the child finds this matplotlib first
    chart = ChartProcess()
    chart.start()
    assert chart.draw(REPORT, tmp_path / "report.png") is False
    assert not (tmp_path / "report.png").exists()
