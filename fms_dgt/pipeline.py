"""One conversation, from its attempt number to its ``Outcome``: the task's stages and engines, built once.

A conversation runs the initialization stages once, then the iteration stages once per exchange
between ``min_turns`` and ``max_turns``, then the termination stages. A conversation dropped after
``min_turns`` complete exchanges is kept as of its last complete exchange; one dropped earlier is
discarded (to ``dropped.jsonl``). Every drop comes back with its reason, and what the cut
exchange had written stays in ``Conversation.cut_exchange``.

The pipeline knows nothing of the run around it (output folder, N, limits, progress): the driver
(``runner``) decides which attempts to run and what to keep, and an executor runs ``run(attempt)``
wherever the conversation runs. A conversation is fixed by the run's seed and its attempt number,
so it is the same whichever pipeline ran it; a Ray worker builds its own pipeline from a
``PipelineFactory`` (picklable: the task and the seed) and sends back one ``Counters``.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fms_dgt.config import LMStageOptions, StageOptions
from fms_dgt.conversation import Conversation, CutExchange
from fms_dgt.datafiles import read_jsonl
from fms_dgt.engines import ENGINES, Engine
from fms_dgt.engines import gate
from fms_dgt.engines.base import EngineCounts
from fms_dgt.errors import EngineError
from fms_dgt.lm_client import LMClient
from fms_dgt.spend import Spend, track
from fms_dgt.stages import STAGES, DropConversation, Stage
from fms_dgt.stages.base import ConversationContext, Rejection, Resources
from fms_dgt.stats import RunStats
from fms_dgt.task import Task

logger = logging.getLogger(__name__)


def choose_seed(seed: int | None) -> int:
    """The run's seed: the one asked for, or a random one (recorded in the run summary)."""
    return seed if seed is not None else random.SystemRandom().randrange(2**31)


@dataclass
class Outcome:
    """One finished conversation: kept (``conv``) or dropped with its reason."""

    conv: Conversation | None
    drop_reason: str | None = None
    engine_error: EngineError | None = None
    rejected: Rejection | None = None  # the stage's last rejected draft, when a stage dropped it
    partial: Conversation | None = None  # a dropped conversation's complete exchanges, for dropped.jsonl
    attempt: int = -1
    spend: Spend | None = None  # what this conversation cost, kept or not


@dataclass
class Counters:
    """What a pipeline counted since it was last asked, in one object: the run's stats (LM calls
    and tokens per stage and engine, rescues, rejected drafts, verdicts, ...) and what each engine
    counted besides (retries by cause, requests per endpoint). A Ray worker sends one back with
    every conversation; the driver adds it to its own pipeline's with ``add_counts``."""

    stats: RunStats
    engines: dict[str, EngineCounts]


@dataclass(frozen=True)
class PipelineFactory:
    """What it takes to build a task's pipeline anywhere (picklable: Ray sends it to its workers)."""

    task: Task
    seed: int

    def build(self, engines: dict[str, Engine] | None = None) -> Pipeline:
        return Pipeline(self.task, self.seed, engines)


class Pipeline:
    """The stages and engines of a task, and the counters of every conversation run on them.

    ``engines`` replaces the task's (tests and the preview hand in a scripted one); otherwise the
    engines the stages use are built from the task. Building reads and checks the data files
    (personas, seed examples) but sends nothing: ``check()`` reaches the engines.
    """

    def __init__(self, task: Task, seed: int, engines: dict[str, Engine] | None = None) -> None:
        self.task = task
        self.config = task.config
        self.seed = seed
        self.stats = RunStats()
        if engines is None:
            used = {
                e for s in self.config.all_stages() if isinstance(s, LMStageOptions) for e in s.engines_used().values()
            }
            engines = {
                name: ENGINES.get(cfg.type)(name, cfg)  # type: ignore[call-arg]
                for name, cfg in self.config.engines.items()
                if name in used
            }
        self.engines = engines
        self.lm = LMClient(engines, self.stats) if engines else None
        seeds = []
        if self.config.seed_datastore is not None:
            seeds = read_jsonl(Path(self.config.seed_datastore.data_path), Conversation, what="seed example")
        self.resources = Resources(lm=self.lm, stats=self.stats, seed_conversations=seeds)
        self.init_stages = self._build(self.config.initialization_stages)
        self.iteration_stages = self._build(self.config.iteration_stages)
        self.termination_stages = self._build(self.config.termination_stages)
        # Called first thing in each conversation's task with its attempt and spend (the driver's
        # pacing keeps the spend of conversations that may turn out to be spare).
        self.on_start: Callable[[int, Spend], None] | None = None

    @property
    def factory(self) -> PipelineFactory:
        return PipelineFactory(self.task, self.seed)

    def _build(self, specs: list[StageOptions]) -> list[Stage]:
        stages = []
        for spec in specs:
            stage = STAGES.get(spec.name)(spec, self.resources)
            stage.setup()  # data files are read and checked here, before any LM call
            stages.append(stage)
        return stages

    # -- engines ----------------------------------------------------------------------------

    async def check(self) -> None:
        """Check every engine where this pipeline runs (the server answers, the model loads)."""
        for engine in self.engines.values():
            await engine.check()

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()

    def environment(self) -> dict[str, str]:
        """The environment variables its engines read, as set here: a Ray worker sets them too, so
        that its engines reach the same servers with the same keys."""
        return {
            name: os.environ[name]
            for engine in self.engines.values()
            for name in engine.environment_variables()
            if name in os.environ
        }

    def take_counts(self) -> Counters:
        """Everything counted so far, zeroed here (stages keep references to the stats object)."""
        return Counters(
            stats=self.stats.take(), engines={name: engine.take_counts() for name, engine in self.engines.items()}
        )

    def add_counts(self, counts: Counters) -> None:
        """Add what another pipeline counted (a Ray worker's) to these counters."""
        self.stats.merge(counts.stats)
        for name, engine_counts in counts.engines.items():
            self.engines[name].add_counts(engine_counts)

    # -- one conversation -------------------------------------------------------------------

    def _rng(self, attempt: int) -> tuple[random.Random, str]:
        """The conversation's own generator and id: fixed by (seed, attempt), not by timing."""
        rng = random.Random(f"{self.seed}:{attempt}")
        return rng, str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def conversation_id(self, attempt: int) -> str:
        return self._rng(attempt)[1]

    async def run(self, attempt: int) -> Outcome:
        """Run conversation ``attempt``; LM calls made meanwhile are charged to its ``Outcome.spend``."""
        spend = track()  # this conversation's LM calls, for budgets, the forecast and spares
        gate.priority.set(attempt)  # earlier conversations' requests go first at the engines' gates
        if self.on_start is not None:
            self.on_start(attempt, spend)
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
                    conv.cut_exchange = cut_exchange(conv, mark, drop)  # back to the last complete exchange
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
            return Outcome(None, drop_reason=drop.reason, rejected=drop.rejected, partial=conv)
        except EngineError as exc:
            return Outcome(None, drop_reason="engine_error", engine_error=exc, partial=conv)
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


def cut_exchange(conv: Conversation, mark: int, drop: DropConversation) -> CutExchange:
    """Cut ``conv`` back to its steps before ``mark``, keeping what the cut exchange had written."""
    rejected = drop.rejected
    cut = CutExchange(
        reason=drop.reason,
        stage=rejected.stage if rejected is not None else None,
        steps=conv.steps[mark:],
        rejected_drafts=[] if rejected is None else rejected.records(),
    )
    del conv.steps[mark:]
    return cut
