"""Runs a task: many conversations concurrently on one event loop, stopping at exactly N kept.

Each conversation runs the initialization stages once, then the iteration stages once per
exchange between ``min_turns`` and ``max_turns``, then the termination stages. A conversation
dropped after ``min_turns`` complete exchanges is kept as of its last complete exchange; one
dropped earlier is discarded. Every drop is counted with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fms_dgt import __version__
from fms_dgt.config import LMStageOptions, StageOptions
from fms_dgt.conversation import Conversation
from fms_dgt.datafiles import read_jsonl
from fms_dgt.engines import ENGINES, Engine
from fms_dgt.errors import DgtError, EngineError
from fms_dgt.executors import RayOptions, make_executor
from fms_dgt.formatters import FORMATTERS
from fms_dgt.guard import LimitOverrides, RunGuard
from fms_dgt.lm_client import LMClient
from fms_dgt.task import Task
from fms_dgt.output import OutputStore
from fms_dgt.pacing import Pacer
from fms_dgt.progress import Progress
from fms_dgt.quality import ConversationGate
from fms_dgt.report import write_report
from fms_dgt.spend import Spend, track
from fms_dgt.stages import STAGES, DropConversation, Stage
from fms_dgt.stages.base import ConversationContext, Rejection, Resources
from fms_dgt.stats import RunStats
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
    ray: RayOptions | None = None  # run the conversations on a Ray cluster
    limits: LimitOverrides = field(default_factory=LimitOverrides)  # flags over the task's limits:
    max_attempts: int | None = None  # --estimate: start this many conversations, keep what comes


@dataclass
class Outcome:
    conv: Conversation | None
    drop_reason: str | None = None
    engine_error: EngineError | None = None
    rejected: Rejection | None = None  # the stage's last rejected draft, when a stage dropped it
    attempt: int = -1
    spend: Spend | None = None  # what this conversation cost, kept or not


@dataclass
class RunResult:
    summary: dict[str, Any]
    output_dir: Path
    status: str = "completed"
    error: DgtError | None = None


class Runner:
    def __init__(self, task: Task, options: RunOptions, engines: dict[str, Engine] | None = None) -> None:
        self.task = task
        self.config = task.config
        self.options = options
        self.seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
        self.stats = RunStats()
        used = {e for s in self.config.all_stages() if isinstance(s, LMStageOptions) for e in s.engines_used().values()}
        if engines is None:
            engines = {
                name: ENGINES.get(cfg.type)(name, cfg)  # type: ignore[call-arg]
                for name, cfg in self.config.engines.items()
                if name in used
            }
        self.engines = engines
        self.lm = LMClient(engines, self.stats) if engines else None
        self.store = OutputStore(options.output_dir, self.config.task_name, FORMATTERS.get(self.config.formatter.type))
        seeds = []
        if self.config.seed_datastore is not None:
            seeds = read_jsonl(Path(self.config.seed_datastore.data_path), Conversation, what="seed example")
        self.resources = Resources(lm=self.lm, stats=self.stats, seed_conversations=seeds)
        self.init_stages = self._build(self.config.initialization_stages)
        self.iteration_stages = self._build(self.config.iteration_stages)
        self.termination_stages = self._build(self.config.termination_stages)
        self.pacer = Pacer(engines)
        # A fixed number of conversations in flight, or None to follow the engines' current limits
        # (the Ray driver cannot see its workers' limits: it sends each a fixed number).
        self.concurrency = options.concurrency or (self.pacer.nominal() if options.ray else None)
        self.executor = make_executor(self, options.ray)

    def _build(self, specs: list[StageOptions]) -> list[Stage]:
        stages = []
        for spec in specs:
            stage = STAGES.get(spec.name)(spec, self.resources)
            stage.setup()  # data files are read and checked here, before any LM call
            stages.append(stage)
        return stages

    # -- one conversation -------------------------------------------------------------------

    def _rng(self, attempt: int) -> tuple[random.Random, str]:
        """The conversation's own generator and id: fixed by (seed, attempt), not by timing."""
        rng = random.Random(f"{self.seed}:{attempt}")
        return rng, str(uuid.UUID(int=rng.getrandbits(128), version=4))

    async def run_conversation(self, attempt: int) -> Outcome:
        spend = track()  # this conversation's LM calls, for budgets, the forecast and spares
        self.pacer.enter(attempt, spend)
        outcome = await self._conversation(attempt)
        outcome.attempt, outcome.spend = attempt, spend.finish()
        return outcome

    async def _conversation(self, attempt: int) -> Outcome:
        rng, conversation_id = self._rng(attempt)
        conv = Conversation(task_name=self.config.task_name, conversation_id=conversation_id)
        ctx = ConversationContext(
            rng=rng, max_turns=self.config.max_turns, min_turns=self.config.min_turns, attempt=attempt, seed=self.seed
        )
        min_turns = self.config.min_turns
        target = self.config.target_turns
        try:
            for stage in self.init_stages:
                await stage(conv, ctx)
                # The length is known as soon as its attribute is sampled, so that later
                # initialization stages (lm/conversation) can use it.
                if target is not None and conv.target_turns is None and target.attribute in conv.attributes:
                    conv.target_turns = ctx.max_turns = self._target_turns(conv)
                    ctx.exact_turns = True
            if target is not None and conv.target_turns is None:
                raise DropConversation("target_turns_missing")
            # A stage such as lm/conversation may already have written the whole chat.
            conv.num_turns = ctx.turn = len(conv.contents("assistant"))
            conv.stop_reason = "initialization" if not self.iteration_stages else "max_turns"
            while self.iteration_stages and ctx.turn < ctx.max_turns:
                mark = len(conv.steps)
                try:
                    for stage in self.iteration_stages:
                        await stage(conv, ctx)
                except DropConversation as drop:
                    del conv.steps[mark:]  # back to the last complete exchange
                    if conv.num_turns >= min_turns:
                        conv.stop_reason = f"rescued:{drop.reason}"
                        self.stats.rescued[drop.reason] += 1
                        break
                    raise
                conv.num_turns = len(conv.contents("assistant"))
                ctx.turn += 1
                self.stats.exchanges += 1
                if ctx.last_turn:
                    conv.stop_reason = "flow_controller"
                    break
            if conv.num_turns < min_turns:
                raise DropConversation("below_min_turns")
            for stage in self.termination_stages:
                await stage(conv, ctx)
        except DropConversation as drop:
            return Outcome(None, drop_reason=drop.reason, rejected=drop.rejected)
        except EngineError as exc:
            return Outcome(None, drop_reason="engine_error", engine_error=exc)
        return Outcome(conv)

    def _target_turns(self, conv: Conversation) -> int:
        """The exchanges ``target_turns`` asks of this conversation, within min/max_turns."""
        target = self.config.target_turns
        assert target is not None
        value = conv.attributes[target.attribute]
        try:
            turns = target.exchanges(value)
        except ValueError as exc:
            logger.warning("target_turns: attribute %s: %s", target.attribute, exc)
            raise DropConversation("target_turns_invalid") from None
        if not self.config.min_turns <= turns <= self.config.max_turns:
            logger.warning(
                "target_turns: %s=%r asks for %d exchanges, outside min_turns..max_turns (%d..%d)",
                target.attribute, value, turns, self.config.min_turns, self.config.max_turns,
            )
            raise DropConversation("target_turns_out_of_range")
        return turns

    # -- the whole run ----------------------------------------------------------------------

    async def run(self) -> RunResult:
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        self.guard = RunGuard(  # checks the limits first: a bad one writes nothing
            self.options.limits.apply(self.config.limits), self.stats, target=self.options.num_outputs,
            priced=any(e.config.price is not None for e in self.engines.values()),
            concurrency=lambda: self.executor.capacity, max_attempts=self.options.max_attempts,
        )
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
        if self.lm is not None:
            self.lm.after_call = self.guard.after_call
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
            for engine in self.engines.values():
                await engine.aclose()
            summary = self._summary(started_at, time.perf_counter() - t0, before, target, status, error)
            self.store.write_summary(summary)
            self.store.close()
            if status != "interrupted":
                self._write_report()
        return RunResult(summary=summary, output_dir=self.store.dir, status=status, error=error)

    async def _generate(self, target: int, progress: Progress) -> None:
        pending: set[asyncio.Task[Outcome]] = set()
        attempt = 0
        consecutive_failures = 0
        try:
            while self.store.count < target:
                # Beyond what N still needs, spare conversations use idle capacity (see pacing).
                cap = self.pacer.in_flight_cap(target - self.store.count)
                while len(pending) < min(self.executor.capacity, cap):
                    if self._rng(attempt)[1] in self.store.ids:  # kept by an earlier run, same seed
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
                    if self.gate.rejects(conv):  # conversation-level checks, near-duplicates
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
            write_report(self.store.dir)
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
        engines = {name: engine.report() for name, engine in self.engines.items()}
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
            **self.pacer.report(remote=self.options.ray is not None),
            "executor": self.executor.describe(),
            "engines": engines,
            **self.stats.as_dict(),
            **self.guard.summary(),
        }
