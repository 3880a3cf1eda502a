"""The run driver: many conversations at once, stopping at exactly N kept.

The driver owns everything around the conversations: the output folder (``OutputStore``), the
progress line, the executor that runs them, the stop rules (``guard``: keep-rate breaker, budgets,
``--estimate``; N; consecutive engine failures), the quality gate, pacing and spares, and the run
summary. Each conversation is ``Pipeline.run(attempt)`` (``pipeline``), on this process or on a Ray
worker; the driver's own pipeline holds the run's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fms_dgt import __version__
from fms_dgt.chart import ChartProcess
from fms_dgt.engines import Engine
from fms_dgt.errors import ConfigError, DgtError, EngineError
from fms_dgt.executors import EXECUTORS
from fms_dgt.formatters import FORMATTERS
from fms_dgt.guard import LimitOverrides, RunGuard
from fms_dgt.task import Task
from fms_dgt.output import OutputStore
from fms_dgt.pacing import Pacer
from fms_dgt.prefetch import prefetch, settled
from fms_dgt.conversation import Conversation
from fms_dgt.pipeline import Outcome, Pipeline, choose_seed
from fms_dgt.progress import Progress
from fms_dgt.quality import ConversationGate
from fms_dgt.report import write_report
from fms_dgt.view import write_viewer

logger = logging.getLogger(__name__)

# Stop instead of burning through calls when conversations keep failing on the engine.
MAX_CONSECUTIVE_ENGINE_FAILURES = 10


@dataclass
class RunOptions:
    num_outputs: int
    output_dir: Path = Path("output")
    restart: bool = False
    seed: int | None = None
    # Conversations in flight per process (with Ray, per worker); None: follow the engines' limits.
    concurrency: int | None = None
    progress: bool = True
    executor: str = "local"  # where conversations run: a name in the executors' registry
    executor_options: Any = None  # that executor's options (``RayOptions`` for ray); None: its defaults
    limits: LimitOverrides = field(default_factory=LimitOverrides)  # flags over the task's limits:
    max_attempts: int | None = None  # --estimate: start this many conversations, keep what comes


@dataclass
class RunResult:
    summary: dict[str, Any]
    output_dir: Path
    status: str = "completed"
    error: DgtError | None = None


class Runner:
    """Drives one run of a task; ``engines`` replaces the task's (tests hand in a scripted one)."""

    def __init__(self, task: Task, options: RunOptions, engines: dict[str, Engine] | None = None) -> None:
        self.task = task
        self.config = task.config
        self.options = options
        self.seed = choose_seed(options.seed)
        self.pipeline = Pipeline(task, self.seed, engines)
        self.stats = self.pipeline.stats  # the run's counters (with Ray, the workers' are added in)
        self.store = OutputStore(options.output_dir, self.config.task_name, FORMATTERS.get(self.config.formatter.type))
        self.pacer = Pacer(self.pipeline.engines)
        self.chart = ChartProcess()  # draws report.png; started during the run
        self.pipeline.on_start = self.pacer.enter
        try:
            kind = EXECUTORS.get(options.executor)
        except KeyError as exc:
            raise ConfigError(str(exc)) from None
        # A fixed number of conversations in flight, or None to follow the engines' current limits
        # (a driver cannot see the limits of workers elsewhere, e.g. Ray's: it sends each a fixed number).
        self.concurrency = options.concurrency or (self.pacer.nominal() if kind.remote else None)
        self.executor = kind.build(
            self.pipeline, options.executor_options, lambda: self.concurrency or self.pacer.wanted()
        )

    # -- the whole run ----------------------------------------------------------------------

    async def run(self) -> RunResult:
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        self.guard = RunGuard(  # checks the limits first: a bad one writes nothing
            self.options.limits.apply(self.config.limits), self.stats, target=self.options.num_outputs,
            priced=any(e.config.price is not None for e in self.pipeline.engines.values()),
            concurrency=lambda: self.executor.capacity, max_attempts=self.options.max_attempts,
        )
        # Imported while the run waits on its engines (fms_dgt.prefetch): the gate's index needs
        # datasketch from the first kept conversation.
        if self.config.quality.near_duplicate_threshold is not None:
            prefetch("datasketch")
        self.store.open(restart=self.options.restart)
        self.store.write_task(self.config.model_dump(mode="json"))
        self.gate = ConversationGate(self.config.quality, self.stats)  # in the driver only
        self.gate.index_existing(self.store.final_path)
        before = self.store.count
        target = self.options.num_outputs
        status, error = "completed", None
        progress = Progress(target, initial=before, enabled=self.options.progress, stats=self.stats,
                            describe=self.guard.status, limits=self.pacer.limits,
                            exchanges_per_conversation=(self.config.min_turns + self.config.max_turns) / 2)
        progress.start()
        if self.pipeline.lm is not None:
            self.pipeline.lm.after_call = self.guard.after_call
        try:
            if before < target:
                await self.executor.start()
                logger.info(
                    "%s: %d conversations to generate (%d already in %s), %d in flight",
                    self.config.task_name, target - before, before, self.store.dir,
                    min(self.executor.capacity, target - before),
                )
                await self._generate(target, progress)
                if self.guard.budget.exhausted and self.store.count < target:
                    status = "budget_exhausted"
        except DgtError as exc:
            status, error = "failed", exc
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            progress.close()
            await self.executor.close()
            await self.pipeline.aclose()
            summary = self._summary(started_at, time.perf_counter() - t0, before, target, status, error)
            self.store.write_summary(summary)
            self.store.close()
            if status != "interrupted":
                self._write_report()
            self.chart.close()
        return RunResult(summary=summary, output_dir=self.store.dir, status=status, error=error)

    async def _generate(self, target: int, progress: Progress) -> None:
        pending: set[asyncio.Task[Outcome]] = set()
        attempt = 0
        consecutive_failures = 0
        try:
            while self.store.count < target:
                # Beyond what N still needs, spare conversations use idle capacity (see pacing).
                cap = self.pacer.in_flight_cap(target - self.store.count, len(pending))
                while len(pending) < min(self.executor.capacity, cap):
                    if self.pipeline.conversation_id(attempt) in self.store.ids:  # kept by an earlier run, same seed
                        attempt += 1
                        continue
                    if not self.guard.may_start(attempt, len(pending)):  # budgets, --estimate
                        break
                    task = self.executor.submit(attempt)
                    pending.add(task)
                    self.pacer.track(task, attempt, len(pending))
                    attempt += 1
                    self.stats.attempts += 1
                if not pending:  # the guard started nothing more
                    break
                if not self.chart.started and (self.pacer.limits_found or self.executor.remote):
                    self.chart.start()  # its import takes a core for 0.9 s: not while a limit ramps up
                # Woken too when a budget is spent, or when an engine's limit grows.
                done, pending = await self.guard.wait(pending, self.pacer.waker())
                for finished in sorted(done, key=self.pacer.attempt):
                    if self.store.count >= target:  # N reached earlier in this batch
                        self.pacer.spare([finished])
                        continue
                    self.pacer.finished(finished)
                    outcome = finished.result()
                    if outcome.conv is None:
                        assert outcome.drop_reason is not None
                        self.stats.dropped[outcome.drop_reason] += 1
                        self.store.append_dropped(dropped_record(outcome, outcome.drop_reason, outcome.partial))
                        progress.update(0)
                        if outcome.engine_error is not None:
                            if outcome.engine_error.fatal:
                                raise outcome.engine_error
                            consecutive_failures += 1
                            logger.warning("conversation failed: %s", outcome.engine_error)
                            if consecutive_failures >= MAX_CONSECUTIVE_ENGINE_FAILURES:
                                raise EngineError(
                                    f"stopping: {consecutive_failures} conversations in a row failed on"
                                    f" the engine; last error: {outcome.engine_error}"
                                )
                        continue
                    consecutive_failures = 0
                    conv = outcome.conv
                    await settled("datasketch")  # the gate's index needs it: wait off the loop
                    reason = self.gate.rejects(conv)  # conversation-level checks, near-duplicates
                    if reason is not None:
                        self.store.append_dropped(dropped_record(outcome, reason, conv))
                        outcome.conv = None  # not kept, for the guard's forecast too
                        continue
                    self.store.append(conv)
                    self.pacer.kept()
                    self.stats.accepted += 1
                    self.stats.stop_reasons[conv.stop_reason or "unknown"] += 1
                    self.stats.turns[conv.num_turns] += 1
                    progress.update(1)
                if self.guard.observe(done, self.store.count):  # keep-rate breaker, budgets, forecast
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                if self.store.count >= target:
                    self.pacer.spare(pending)

    def _write_report(self) -> None:
        """The analysis report and the viewer; a failure here is logged, never fatal: the data is on disk."""
        try:
            write_report(self.store.dir, self.chart.draw)
        except Exception as exc:  # noqa: BLE001 - the report is a convenience
            logger.warning("could not write the report: %s (run python -m fms_dgt.report %s)", exc, self.store.dir)
        try:
            write_viewer(self.store.dir)
        except Exception as exc:  # noqa: BLE001 - likewise
            logger.warning("could not write the viewer: %s (run python -m fms_dgt.view %s)", exc, self.store.dir)

    def _summary(
        self,
        started_at: datetime,
        wall: float,
        before: int,
        target: int,
        status: str,
        error: DgtError | None,
    ) -> dict[str, Any]:
        engines = {name: engine.report() for name, engine in self.pipeline.engines.items()}
        return {
            "task_name": self.config.task_name,
            "task_file": str(self.task.path),
            "task_sha256": self.task.sha256,
            "fms_dgt_version": __version__,
            "status": status,
            "error": str(error) if error else None,
            "seed": self.seed,
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 3),
            "requested": target,
            "already_done": before,
            "total": self.store.count,
            "concurrency": self.concurrency,
            **self.pacer.report(remote=self.executor.remote),
            "executor": self.executor.describe(),
            "engines": engines,
            **self.stats.as_dict(),
            **self.guard.summary(),
        }


def dropped_record(outcome: Outcome, reason: str, conv: Conversation | None) -> dict[str, Any]:
    """A line of dropped.jsonl: why the conversation was not kept, the drafts its last turn had
    turned down, and every complete exchange it had written."""
    rejected = outcome.rejected
    return {
        "attempt": outcome.attempt,
        "conversation_id": conv.conversation_id if conv is not None else None,
        "reason": reason,
        "engine_error": str(outcome.engine_error) if outcome.engine_error is not None else None,
        "rejected": None if rejected is None else {"stage": rejected.stage, "reason": rejected.reason,
                                                   "drafts": rejected.records()},
        "conversation": conv.model_dump(mode="json") if conv is not None else None,
    }
