"""``--executor ray``: conversations run on Ray actors; this process, the driver, writes them.

Each worker is an async actor that builds the task's pipeline itself from a ``PipelineFactory``
(the task and the seed), so its engines connect to their servers from the worker's node, and runs
``Pipeline.run(attempt)`` for the attempts the driver sends it, up to ``--concurrency`` at a time.
A finished conversation comes back with the worker's ``Counters`` since its previous answer (LM
calls and tokens per stage and engine, rescues, rejected drafts, retries, calls per endpoint),
which the driver adds to its own pipeline's. The driver alone picks attempts, writes the output
and stops at exactly N, cancelling the rest; when it closes, each worker reports what it counted
since its last answer.

A worker that dies loses only its conversations in flight. They are sent again with the same
attempt numbers, to the worker's replacement or another worker: the same attempt gives the same
conversation id and the same random choices, so the output does not depend on which worker died
or when, and no id can be written twice (an attempt is written only once it comes back).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fms_dgt import __version__
from fms_dgt.errors import ConfigError, DgtError
from fms_dgt.executors.base import Executor, register_executor
from fms_dgt.flag_types import positive

if TYPE_CHECKING:
    from fms_dgt.pipeline import Counters, Outcome, Pipeline, PipelineFactory

logger = logging.getLogger(__name__)

# Seconds for the workers to be placed on the cluster and to check their engines.
START_TIMEOUT = 120.0
# Seconds a worker gets to report its last counts when the run ends.
CLOSE_TIMEOUT = 30.0
# Seconds to wait for the head node to accept a connection (Ray itself retries for minutes).
CONNECT_TIMEOUT = 10.0
# More worker deaths than this in one run means something kills them all: stop.
MAX_LOST_WORKERS = 10
# Read by Ray when it is imported: "0" keeps a single-machine cluster on 127.0.0.1 instead of the
# machine's network address. Set only when this run starts its own local cluster.
RAY_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayOptions:
    """``--executor ray``: which cluster, and how many workers to start on it."""

    address: str | None = None  # None: start a local cluster for this run
    workers: int | None = None  # None: one per CPU of the cluster


def check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when a ``host:port`` head address does not answer."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise DgtError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is its head node"
            " running (`ray start --head`), and is this the address it printed?"
        ) from None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'fms_dgt[ray]'") from None
    return ray


class ConversationWorker:
    """A Ray actor (the driver wraps it with ``ray.remote``) that runs conversations of one task."""

    def __init__(self, factory: PipelineFactory, cwd: str, env: dict[str, str], log_level: int) -> None:
        self.factory = factory
        self.cwd, self.env, self.log_level = cwd, env, log_level
        self.pipeline: Pipeline | None = None

    async def start(self) -> dict[str, Any]:
        """Build the pipeline here, check its engines, and say where this worker runs.

        Done here rather than in ``__init__`` so that an error (a data file missing on this node,
        a server it cannot reach) comes back to the driver as that error."""
        if os.path.isdir(self.cwd):
            os.chdir(self.cwd)  # relative data paths mean what they mean on the driver
        os.environ.update(self.env)  # API keys and default URLs, as the driver has them
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger = logging.getLogger("fms_dgt")
        package_logger.handlers[:] = [handler]
        package_logger.setLevel(self.log_level)
        package_logger.propagate = False

        self.pipeline = self.factory.build()
        await self.pipeline.check()
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "version": __version__}

    async def run(self, attempt: int) -> tuple[Outcome, Counters]:
        assert self.pipeline is not None, "start() first"
        outcome = await self.pipeline.run(attempt)
        return outcome, self.pipeline.take_counts()

    async def close(self) -> Counters:
        """Release the engines; return what was counted since the last answer."""
        assert self.pipeline is not None
        await self.pipeline.aclose()
        return self.pipeline.take_counts()


@dataclass(eq=False)
class _Worker:
    index: int
    actor: Any
    ready: asyncio.Future[dict[str, Any]]  # the actor's start()
    in_flight: int = 0
    pid: int | None = None


@register_executor("ray")
class RayExecutor(Executor):
    """Workers build pipelines from ``factory``, with ``environment`` set; ``in_flight()``
    conversations run on each; every ``Counters`` they send back goes to ``on_counts``."""

    remote = True

    def __init__(
        self,
        factory: PipelineFactory,
        options: RayOptions,
        in_flight: Callable[[], int],
        *,
        environment: dict[str, str],
        on_counts: Callable[[Counters], None],
    ) -> None:
        self.factory = factory
        self.options = options
        self._in_flight = in_flight
        self.environment = environment
        self.on_counts = on_counts
        if options.address is None and "ray" not in sys.modules:
            # A cluster private to this run: keep its traffic on loopback.
            os.environ.setdefault(RAY_LOOPBACK_ONLY, "0")
        self.ray = import_ray()
        self.workers: list[_Worker] = []
        self.lost = 0  # workers that died
        self.resent = 0  # conversations sent again because their worker died
        self.nodes: set[str] = set()  # Ray node ids the workers ran on
        self._connected = False
        self._actor_class: Any = None
        self.start_seconds = 0.0  # joining or starting the cluster, placing and starting the workers

    @classmethod
    def build(cls, pipeline: Pipeline, options: RayOptions | None, in_flight: Callable[[], int]) -> RayExecutor:
        """Ray is imported only here: a clear error if the ``ray`` extra is missing."""
        return cls(
            pipeline.factory, options or RayOptions(), in_flight,
            environment=pipeline.environment(), on_counts=pipeline.add_counts,
        )

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        return [
            group.add_argument(
                "--ray-address", metavar="ADDRESS",
                help="with --executor ray: the cluster to join (host:port of its head node, or auto);"
                " default: start a local cluster for this run and stop it at the end",
            ),
            group.add_argument(
                "--workers", type=positive, metavar="K",
                help="with --executor ray: worker actors to start, 1 CPU each (default: one per CPU of the cluster)",
            ),
        ]

    @classmethod
    def options_from(cls, args: argparse.Namespace) -> RayOptions:
        return RayOptions(address=args.ray_address, workers=args.workers)

    @property
    def per_worker(self) -> int:
        return self._in_flight()

    @property
    def capacity(self) -> int:
        return len(self.workers) * self.per_worker

    # -- lifecycle --------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        if self.options.address is not None:
            check_reachable(self.options.address)
        if ray.is_initialized():  # a process already connected (a test, a notebook) uses that
            return
        on_main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
        quiet = logging.getLogger("fms_dgt").getEffectiveLevel() > logging.INFO
        common = {"logging_level": logging.ERROR if quiet else logging.WARNING, "log_to_driver": True}
        try:
            if self.options.address is None:
                # Ray's CPUs are bookkeeping: a private cluster has room for every worker asked for
                # (they mostly wait on LM servers), and one per core otherwise.
                cpus = max(os.cpu_count() or 1, self.options.workers or 0)
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
            else:
                ray.init(address=self.options.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.options.address or "a new local cluster"
            raise DgtError(f"cannot start Ray on {where}: {exc}") from None
        finally:
            # ray.init replaces the SIGTERM handler with one that exits at once; keep ours, which
            # cancels the run so that it saves everything finished and writes its summary.
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self._connected = True

    async def start(self) -> None:
        started = time.perf_counter()
        self._connect()
        ray = self.ray
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = self.options.workers or max(1, cpus)
        # One CPU each, so Ray spreads the workers over the nodes; room for close() beside the runs.
        self._actor_class = ray.remote(ConversationWorker).options(
            num_cpus=1, max_concurrency=self.per_worker + 2
        )
        self.workers = [self._spawn(index) for index in range(count)]
        try:
            async with asyncio.timeout(START_TIMEOUT):
                infos = await asyncio.gather(*(worker.ready for worker in self.workers))
        except TimeoutError:
            free = int(ray.available_resources().get("CPU", 0))
            raise DgtError(
                f"{count} Ray workers did not start within {START_TIMEOUT:g} s; each needs 1 CPU and the"
                f" cluster has {cpus} ({free} free): use fewer --workers or a larger cluster"
            ) from None
        except ray.exceptions.RayTaskError as exc:
            cause = self._cause(exc)
            if isinstance(cause, DgtError):
                raise cause from None
            raise DgtError(f"a Ray worker could not start: {_last_line(exc)}") from None
        except ray.exceptions.RayError as exc:  # e.g. died while starting: fms_dgt missing on a node
            raise DgtError(f"a Ray worker could not start: {_last_line(exc)}") from None
        versions = {info["version"] for info in infos}
        if versions != {__version__}:
            raise ConfigError(
                f"the Ray workers run fms_dgt {', '.join(sorted(versions))} but this driver runs"
                f" {__version__}: install the same version on every node"
            )
        for worker, info in zip(self.workers, infos):
            worker.pid = info["pid"]
            self.nodes.add(info["node"])
        self.start_seconds = time.perf_counter() - started
        nodes = len(self.nodes)
        logger.info(
            "%d Ray workers ready on %d node%s in %.1f s, %d conversations in flight each",
            count, nodes, "s" if nodes > 1 else "", self.start_seconds, self.per_worker,
        )

    def _spawn(self, index: int) -> _Worker:
        actor = self._actor_class.remote(
            self.factory, os.getcwd(), self.environment, logging.getLogger("fms_dgt").getEffectiveLevel()
        )
        return _Worker(index=index, actor=actor, ready=asyncio.ensure_future(actor.start.remote()))

    async def close(self) -> None:
        if not self._connected and not self.workers:
            return
        ray = self.ray
        for worker in self.workers:
            if not worker.ready.done():
                worker.ready.cancel()
        await asyncio.gather(*(worker.ready for worker in self.workers), return_exceptions=True)

        async def last_report(worker: _Worker) -> None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    self.on_counts(await worker.actor.close.remote())
            except (ray.exceptions.RayError, TimeoutError, asyncio.CancelledError):
                pass  # a dead worker's counts since its last answer are lost with it

        await asyncio.gather(*(last_report(w) for w in self.workers if not w.ready.cancelled()))
        for worker in self.workers:
            ray.kill(worker.actor)
        if self._connected:
            ray.shutdown()
            self._connected = False

    # -- one conversation -------------------------------------------------------------------

    def submit(self, attempt: int) -> asyncio.Task[Outcome]:
        return asyncio.create_task(self._run(attempt))

    async def _run(self, attempt: int) -> Outcome:
        ray = self.ray
        while True:
            worker = min(self.workers, key=lambda w: w.in_flight)
            actor = worker.actor
            worker.in_flight += 1
            try:
                info = await worker.ready
                worker.pid = info["pid"]
                self.nodes.add(info["node"])  # a replacement may start on another node
                ref = actor.run.remote(attempt)
                try:
                    outcome, counts = await ref
                except asyncio.CancelledError:
                    ray.cancel(ref)
                    raise
            except ray.exceptions.RayActorError as exc:
                self._replace(worker, actor, exc)
                self.resent += 1
                continue  # the same attempt again, on whichever worker is least busy
            except ray.exceptions.RayTaskError as exc:
                raise self._cause(exc) from None
            finally:
                worker.in_flight -= 1
            self.on_counts(counts)
            return outcome

    def _replace(self, worker: _Worker, dead: Any, error: Exception) -> None:
        """Start a new actor in place of a dead one (once, however many runs saw it die)."""
        if worker.actor is not dead:
            return
        self.lost += 1
        if self.lost > MAX_LOST_WORKERS:
            raise DgtError(f"stopping: {self.lost} Ray workers died in this run; last: {error}")
        logger.warning(
            "Ray worker %d (pid %s) died; starting another, and sending its conversations in flight again",
            worker.index, worker.pid,
        )
        self.ray.kill(dead)
        replacement = self._spawn(worker.index)
        worker.actor, worker.ready, worker.pid = replacement.actor, replacement.ready, None

    @staticmethod
    def _cause(exc: Exception) -> Exception:
        """A worker's own error (a DgtError: server unreachable, bad data file) as the driver's."""
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, DgtError) else exc

    def describe(self) -> dict[str, Any]:
        return {
            "type": "ray",
            "address": self.options.address or "local",
            "workers": len(self.workers),
            "nodes": len(self.nodes),
            "conversations_per_worker": self.per_worker,
            "workers_lost": self.lost,
            "conversations_resent": self.resent,
            "start_seconds": round(self.start_seconds, 3),
        }


def _last_line(exc: Exception) -> str:
    """The last line of a Ray error (the remote exception), without the remote traceback."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
