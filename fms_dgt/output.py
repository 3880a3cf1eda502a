"""The output folder: append-only JSONL written as each conversation finishes, and resume.

``final_data.jsonl`` is the source of truth and is only ever appended to (one flushed line per
finished conversation), so a killed run loses nothing that finished. A torn last line left by a
kill is detected and cut off on the next start. ``formatted_output.jsonl`` is derived from it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from fms_dgt.conversation import Conversation
from fms_dgt.errors import ConfigError, Problem
from fms_dgt.formatters import Formatter

logger = logging.getLogger(__name__)

FINAL = "final_data.jsonl"
FORMATTED = "formatted_output.jsonl"
SUMMARY = "run_summary.json"
# Conversations not kept (dropped by a stage, failed on the engine, rejected by the gate), with
# what they had written and the drafts turned down: nothing generated is lost.
DROPPED = "dropped.jsonl"
# The task as this run understood it (for the analysis report and provenance).
TASK_SNAPSHOT = "task.json"
# Derived files, rewritten by every run, deleted by --restart.
REPORTS = ("report.json", "report.md", "report.png")
VIEWER = "viewer.html"
LOCK = ".lock"


class OutputStore:
    def __init__(self, root: Path, task_name: str, formatter: Formatter) -> None:
        self.root = root
        self.dir = root / task_name
        # task_name is validated as safe segments; this is a second line of defence.
        resolved_root = root.resolve()
        if resolved_root not in self.dir.resolve().parents:
            raise ConfigError(Problem(f"task_name {task_name!r} would write outside {root}"))
        self.formatter = formatter
        self.final_path = self.dir / FINAL
        self.formatted_path = self.dir / FORMATTED
        self.summary_path = self.dir / SUMMARY
        self.dropped_path = self.dir / DROPPED
        self._final: IO[str] | None = None
        self._dropped: IO[str] | None = None
        self._lock: IO[str] | None = None
        self._formatted: IO[str] | None = None
        self.ids: set[str] = set()
        self.count = 0

    def open(self, *, restart: bool) -> None:
        """Create the folder, clear it on restart, load what a previous run finished."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        except OSError as exc:
            raise ConfigError(Problem(f"cannot write the output folder: {exc.strerror}", file=self.dir)) from None
        try:
            if restart:
                derived = [self.dir / name for name in (TASK_SNAPSHOT, *REPORTS, VIEWER)]
                for path in (self.final_path, self.formatted_path, self.summary_path, self.dropped_path, *derived):
                    path.unlink(missing_ok=True)
            existing = self._load_existing()
            self._final = self.final_path.open("a", encoding="utf-8")
            self._dropped = self.dropped_path.open("a", encoding="utf-8")
            # Rebuilt from final_data so the two files always agree, whatever happened before.
            self._formatted = self.formatted_path.open("w", encoding="utf-8")
        except OSError as exc:
            self.close()
            raise ConfigError(Problem(f"cannot write the output folder: {exc.strerror}", file=self.dir)) from None
        except ConfigError:
            self.close()
            raise
        for conv in existing:
            self._formatted.write(json.dumps(self.formatter(conv), ensure_ascii=False) + "\n")
        self._formatted.flush()

    def _acquire_lock(self) -> None:
        """One run per output folder. The OS drops the lock when its process dies, however it
        dies, so a lock left by a killed run is simply taken over."""
        handle = (self.dir / LOCK).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                Problem(f"another run (pid {holder}) is writing to this folder; wait for it or stop it", file=self.dir)
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and previous != str(os.getpid()):
            logger.info("%s: taking over the lock of an earlier run (pid %s) that is gone", self.dir, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _load_existing(self) -> list[Conversation]:
        if not self.final_path.exists():
            return []
        raw = self.final_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            logger.warning(
                "%s: discarding a torn last line (%d bytes) left by an interrupted run",
                self.final_path,
                len(raw) - cut,
            )
            with self.final_path.open("r+b") as handle:
                handle.truncate(cut)
            raw = raw[:cut]
        conversations = []
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                conv = Conversation.model_validate_json(line)
            except ValidationError as exc:
                raise ConfigError(
                    Problem(
                        f"cannot resume: this line is not a conversation record ({exc.errors()[0]['msg']});"
                        " fix or remove it, or start over with --restart",
                        file=self.final_path,
                        line=number,
                    )
                ) from None
            if conv.conversation_id in self.ids:
                raise ConfigError(
                    Problem(f"duplicate conversation_id {conv.conversation_id}", file=self.final_path, line=number)
                )
            self.ids.add(conv.conversation_id)
            conversations.append(conv)
        self.count = len(conversations)
        return conversations

    def append(self, conv: Conversation) -> None:
        """Write one finished conversation to both files, flushed, before anything else happens."""
        assert self._final is not None and self._formatted is not None, "open() first"
        formatted = self.formatter(conv)  # raises before anything is written if it is malformed
        self._final.write(conv.model_dump_json() + "\n")
        self._final.flush()
        self._formatted.write(json.dumps(formatted, ensure_ascii=False) + "\n")
        self._formatted.flush()
        self.ids.add(conv.conversation_id)
        self.count += 1

    def append_dropped(self, record: dict[str, Any]) -> None:
        """Write one conversation that was not kept (see ``DROPPED``), flushed."""
        assert self._dropped is not None, "open() first"
        self._dropped.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._dropped.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.summary_path, summary)

    def write_task(self, snapshot: dict[str, Any]) -> None:
        _write_json(self.dir / TASK_SNAPSHOT, snapshot)

    def close(self) -> None:
        for handle in (self._final, self._formatted, self._dropped):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
        self._final = self._formatted = self._dropped = None
        if self._lock is not None:
            # A clean exit leaves no pid behind, so only a killed run's lock is reported as taken over.
            self._lock.truncate(0)
            self._lock.flush()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
