"""Conversation viewer: ``python -m fms_dgt.view output/<task_name>`` writes ``viewer.html``.

One self-contained page beside the data: the records, the analysis report and the run summary
are embedded as JSON, and the page (``viewer_template.html``, package data) draws the list, the
conversations and the report's charts itself, so it opens from ``file://`` with no server, no
network and nothing to install. Model output is untrusted text: the page only ever puts it in
the DOM as text, and the embedded JSON has ``<``, ``>`` and ``&`` escaped, so that a reply holding
``</script>`` cannot end the data block. The runner writes the page at the end of every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from fms_dgt.output import FINAL, SUMMARY, TASK_SNAPSHOT, VIEWER
from fms_dgt.report import REPORT_JSON, build_report

_PLACEHOLDER = "/*__DGT_DATA__*/"


class ViewerError(ValueError):
    """The folder cannot be shown (no data); the message says where."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def record_lines(path: Path) -> list[str]:
    """The records of ``final_data.jsonl`` as written, one JSON text each, not parsed: at 10,000
    conversations parsing and re-serialising them would be most of the time to write the page.

    Only the last line can be torn (the runner appends whole flushed lines; a kill or a run still
    writing leaves at most a partial last one), so only that one is checked and left out if torn.
    """
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return lines


def _report(folder: Path) -> tuple[dict[str, Any], str]:
    """report.json when it is at least as new as the data, else computed now."""
    saved, data = folder / REPORT_JSON, folder / FINAL
    if saved.is_file() and saved.stat().st_mtime >= data.stat().st_mtime:
        report = _read_json(saved)
        if isinstance(report, dict):
            return report, f"from {REPORT_JSON}"
    try:
        return build_report(folder), f"computed from {FINAL} (no up-to-date {REPORT_JSON})"
    except ValueError as exc:  # a torn last line, a record from another version: show the data anyway
        return {}, f"not available: {str(exc).splitlines()[0]}"


def page_data(folder: Path) -> dict[str, Any]:
    """What the page shows besides the records, as one JSON-ready dict."""
    final = folder / FINAL
    if not final.is_file():
        raise ViewerError(f"{folder}: no {FINAL} here")
    task = _read_json(folder / TASK_SNAPSHOT) or {}
    report, source = _report(folder)
    return {
        "task_name": task.get("task_name") or folder.name,
        "folder": str(folder),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "report": report,
        "report_source": source,
        "summary": _read_json(folder / SUMMARY),
    }


def _escape(text: str) -> str:
    """JSON text made safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left to parse as markup."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def script_json(data: dict[str, Any], records: list[str]) -> str:
    """``data`` with ``records`` (JSON texts) added as its ``records`` list, escaped for a script element."""
    head = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return _escape(head[:-1] + ',"records":[' + ",".join(records) + "]}")


def render(data: dict[str, Any], records: list[str]) -> str:
    template = resources.files("fms_dgt").joinpath("viewer_template.html").read_text(encoding="utf-8")
    head, sep, tail = template.partition(_PLACEHOLDER)
    assert sep, "viewer_template.html lost its data placeholder"
    return head + script_json(data, records) + tail


def write_viewer(folder: Path) -> Path:
    """Write ``viewer.html`` into ``folder`` (atomically) and return its path."""
    data = page_data(folder)
    page = render(data, record_lines(folder / FINAL))
    path = folder / VIEWER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fms_dgt.view",
        description=f"Write {VIEWER}, a self-contained page to browse an output folder's conversations and report.",
    )
    parser.add_argument("folder", type=Path, help="an output folder, e.g. output/public/examples/chit_chat")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: no such folder", file=sys.stderr)
        return 2
    try:
        path = write_viewer(args.folder)
    except ViewerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (open it in a browser: file://{path.resolve()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
