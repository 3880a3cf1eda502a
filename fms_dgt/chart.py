"""``report.png``: bar charts of the report's main distributions, drawn in-process or in a child.

A run draws its chart in a child process (``ChartProcess``) that it starts early: the child
imports matplotlib (0.9 s here) while the run goes on, and draws once the report is computed.
Imported in a thread of the run instead, as before, matplotlib held the run's GIL for that long:
replies were handled late, an adaptive limit read the delay as queueing at the server and cut,
and a 64-slot server was a third idle for about 2 s (benchmarks/server_speed.py, N=1000: the last
reply came 0.8-1.0 s later). Imported after the last reply, it made the command 0.7 s longer.
``python -m fms_dgt.report`` draws in its own process (``draw``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ChartProcess", "draw"]

# The child's exit code when matplotlib is not installed (the report is then written without it).
NO_MATPLOTLIB = 3
PYPLOT = "matplotlib.pyplot"
# Longest wait for the child's chart; a matplotlib that hangs must not hang the end of a run.
DRAW_TIMEOUT = 120.0


def draw(report: dict[str, Any], path: Path) -> bool:
    """Bar charts of the main distributions; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels: list[tuple[str, dict[str, float], dict[str, float] | None]] = []
    turns = report["turns"]["distribution"]
    total = sum(turns.values()) or 1
    panels.append(("exchanges per conversation", {k: v / total for k, v in turns.items()}, None))
    for name, entry in report["attributes"].items():
        if entry["kind"] == "categorical":
            panels.append((name, entry["observed"], entry.get("expected")))
    if report["patterns"]["counts"]:
        panels.append(("flow-controller patterns", report["patterns"]["observed"], report["patterns"]["weight_share"] or None))
    for name, judge in report["judges"].items():
        n = sum(judge["histogram"].values()) or 1
        panels.append((f"judge: {name}", {k: v / n for k, v in judge["histogram"].items()}, None))
    columns = 2
    rows = (len(panels) + columns - 1) // columns
    # Fixed margins in inches (room for the title above and the rotated labels below each
    # panel) instead of tight_layout, which measured every label: half the plot's time.
    height = 3.2 * rows
    figure, axes = plt.subplots(rows, columns, figsize=(12, height), squeeze=False)
    figure.subplots_adjust(left=0.05, right=0.99, top=1 - 0.3 / height, bottom=0.75 / height,
                           wspace=0.15, hspace=1.05 / (3.2 - 1.05))
    for axis, (title, observed, expected) in zip(axes.flat, panels):
        keys = list(dict.fromkeys([*(expected or {}), *observed]))
        xs = range(len(keys))
        axis.bar([x - 0.2 for x in xs], [observed.get(k, 0) for k in keys], width=0.4, label="observed")
        if expected:
            axis.bar([x + 0.2 for x in xs], [expected.get(k, 0) for k in keys], width=0.4, label="expected")
            axis.legend(fontsize=7)
        axis.set_xticks(list(xs), [k.split("/")[-1][:18] for k in keys], rotation=30, ha="right", fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("share", fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


class ChartProcess:
    """A child that imports matplotlib at ``start`` and draws one chart at ``draw``.

    Without a child, ``draw`` draws in this process: when ``start`` was not called, or when
    this process has matplotlib imported already (a notebook, a test session), which costs
    nothing more. The child reads the report from its stdin: when this process ends without
    sending one (an interrupted run, or ``os._exit``), the pipe closes and the child exits.
    """

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self.started = False

    def start(self) -> None:
        if not self.started and PYPLOT not in sys.modules:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "fms_dgt.chart"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            )
        self.started = True

    def draw(self, report: dict[str, Any], path: Path) -> bool:
        """Draw ``report`` to ``path``; False when matplotlib is not installed."""
        child, self._child = self._child, None
        if child is None:
            return draw(report, path)
        job = json.dumps({"report": report, "path": str(path)}).encode()
        try:
            child.communicate(job, timeout=DRAW_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise RuntimeError(f"the chart was not drawn within {DRAW_TIMEOUT:.0f} s") from None
        if child.returncode == NO_MATPLOTLIB:
            return False
        if child.returncode != 0:
            raise RuntimeError(f"the chart process exited with code {child.returncode}")
        return True

    def close(self) -> None:
        """End a child that was never asked to draw."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()


def _main() -> int:
    """The child: import matplotlib, then draw the one report its stdin brings."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 - imported now, while the parent's run goes on
    except ImportError:
        return NO_MATPLOTLIB
    data = sys.stdin.buffer.read()
    if not data:  # the parent ended without a report
        return 0
    job = json.loads(data)
    return 0 if draw(job["report"], Path(job["path"])) else NO_MATPLOTLIB


if __name__ == "__main__":
    sys.exit(_main())
