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

from fms_dgt.output import FINAL, SUMMARY, TASK_SNAPSHOT
from fms_dgt.report import REPORT_JSON, build_report

VIEWER = "viewer.html"
_PLACEHOLDER = "/*__DGT_DATA__*/"


class ViewerError(ValueError):
    """The folder cannot be shown (no data, a line that is not JSON); the message says where."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``final_data.jsonl`` as written (a torn last line, left by a kill, is skipped)."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                continue  # a run still writing, or killed mid-line
            raise ViewerError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
    return records


def _report(folder: Path) -> tuple[dict[str, Any], str]:
    """report.json when it is at least as new as the data, else computed now."""
    saved, data = folder / REPORT_JSON, folder / FINAL
    if saved.is_file() and saved.stat().st_mtime >= data.stat().st_mtime:
        report = _read_json(saved)
        if isinstance(report, dict):
            return report, f"from {REPORT_JSON}"
    return build_report(folder), f"computed from {FINAL} (no up-to-date {REPORT_JSON})"


def page_data(folder: Path) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    final = folder / FINAL
    if not final.is_file():
        raise ViewerError(f"{folder}: no {FINAL} here")
    task = _read_json(folder / TASK_SNAPSHOT) or {}
    records = read_records(final)
    report, source = _report(folder)
    return {
        "task_name": task.get("task_name") or (records[0].get("task_name") if records else folder.name),
        "folder": str(folder),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "records": records,
        "report": report,
        "report_source": source,
        "summary": _read_json(folder / SUMMARY),
    }


def script_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left to parse as markup."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict[str, Any]) -> str:
    template = resources.files("fms_dgt").joinpath("viewer_template.html").read_text(encoding="utf-8")
    head, sep, tail = template.partition(_PLACEHOLDER)
    assert sep, "viewer_template.html lost its data placeholder"
    return head + script_json(data) + tail


def write_viewer(folder: Path) -> Path:
    """Write ``viewer.html`` into ``folder`` (atomically) and return its path."""
    page = render(page_data(folder))
    path = folder / VIEWER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fms_dgt.view",
        description="Write viewer.html, a self-contained page to browse an output folder's conversations and report.",
    )
    parser.add_argument("folder", type=Path, help="an output folder, e.g. output/public/examples/chit_chat")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: no such folder", file=sys.stderr)
        return 2
    try:
        path = write_viewer(args.folder)
    except ValueError as exc:  # ViewerError, or a record that does not fit the schema
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.folder}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (open it in a browser: file://{path.resolve()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
