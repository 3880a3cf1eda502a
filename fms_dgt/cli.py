"""Command line: ``python -m fms_dgt.public --task-paths TASK --num-outputs-to-generate N``.

Parses flags, configures logging (only here), runs each task, prints the run summary on stderr
and returns an exit code: 0 done, 1 runtime failure, 2 bad input, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from fms_dgt import __version__
from fms_dgt.engines import ENGINES
from fms_dgt.errors import ConfigError, DgtError, Problem
from fms_dgt.executors import EXECUTORS
from fms_dgt.flag_types import positive as _positive
from fms_dgt.forecast import MIN_KEPT, describe
from fms_dgt.guard import LimitOverrides
from fms_dgt.loader import EngineOverride, find_task_files, load_task
from fms_dgt.plugins import load_plugins
from fms_dgt.preview import preview_tasks
from fms_dgt.runner import RunOptions, RunResult, Runner
from fms_dgt.validate import validate_tasks


class _Parser(argparse.ArgumentParser):
    # Each executor's own flags (``Executor.add_arguments``), refused with another executor.
    executor_flags: dict[str, list[argparse.Action]]

    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _number(kind: type, low: float, *, strict: bool = False, high: float | None = None) -> Any:
    """An argparse type: a number of ``kind`` at least ``low`` (above it with ``strict``)."""

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number < low or (strict and number == low) or (high is not None and number >= high):
            bound = f"more than {low:g}" if strict else f"at least {low:g}"
            if high is not None:
                bound += f" and less than {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return number

    return parse


def build_parser() -> _Parser:
    load_plugins()  # their engines and executors are choices too
    parser = _Parser(
        prog="python -m fms_dgt.public",
        description="Generate synthetic multi-turn conversations from a YAML task file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--task-paths", nargs="+", required=True, metavar="PATH",
        help="task files, or folders searched for task.yaml",
    )
    parser.add_argument(
        "--num-outputs-to-generate", type=_positive, default=2, metavar="N",
        help="conversations to keep per task; a resumed run only generates what is missing",
    )
    parser.add_argument(
        "--restart", action="store_true",
        help="delete the task's earlier output and start over instead of resuming",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("output"), help="root of the output folders")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (random if not given; recorded)")
    executor = parser.add_argument_group("executor (where conversations run; the output is always written here)")
    executor.add_argument(
        "--executor", choices=EXECUTORS.names(), default="local",
        help="local: in this process; ray: on workers of a Ray cluster (pip install 'fms_dgt[ray]')",
    )
    parser.executor_flags = {name: kind.add_arguments(executor) for name, kind in EXECUTORS.items()}
    engine = parser.add_argument_group("engine override (applies to every engine of the task)")
    engine.add_argument("--engine", choices=ENGINES.names(), help="engine type")
    engine.add_argument("--model", help="model name, catalogue name or GGUF path")
    engine.add_argument(
        "--base-url", action="append", metavar="URL",
        help="server URL (ollama, openai); give it again for each further server of the same model:"
        " requests go to the least busy one, and a failing one is left out for a while",
    )
    engine.add_argument(
        "--concurrency", type=_positive, default=None, metavar="K",
        help="pin the requests in flight to each server at K (for the local engine: its llama.cpp"
        " slots), instead of the task's max_concurrency; by default servers get `auto`, a limit"
        " found by measuring latency that grows while the server keeps up and backs off when it"
        " queues, slows down or answers 429. Conversations in flight follow the limits (twice"
        " the largest); with --executor ray every worker has its own limits",
    )
    inspect = parser.add_argument_group("look before a run (nothing is written to the output folder)")
    inspect.add_argument(
        "--validate", action="store_true",
        help="check the task, its data files and engines, print what a run would do; no generation call",
    )
    inspect.add_argument(
        "--preview", type=_positive, nargs="?", const=1, default=None, metavar="K",
        help="run K conversations (default 1) one by one and print every step live on stdout",
    )
    limits = parser.add_argument_group(
        "limits (when a run stops by itself; each flag wins over the task's limits: section)"
    )
    limits.add_argument(
        "--min-keep-rate", type=_number(float, 0, high=1), metavar="RATE",
        help="stop (exit 1) once the share of conversations kept is, with 99%% confidence, below RATE;"
        " 0 turns the breaker off (default 0.05)",
    )
    limits.add_argument(
        "--keep-rate-min-attempts", type=_positive, metavar="K",
        help="finished conversations the keep-rate breaker needs before it may stop a run (default 20)",
    )
    limits.add_argument("--max-tokens", type=_positive, metavar="N", help="prompt + completion tokens this run may spend")
    limits.add_argument("--max-calls", type=_positive, metavar="N", help="LM calls this run may make")
    limits.add_argument(
        "--max-cost", type=_number(float, 0, strict=True), metavar="X",
        help="cost this run may spend, in the unit of the engines' price: entries",
    )
    limits.add_argument(
        "--max-time", type=_number(float, 0, strict=True), metavar="SECONDS", help="wall time this run may take"
    )
    limits.add_argument(
        "--estimate", type=_positive, metavar="K",
        help="run K conversations in a temporary folder (nothing is written to the output folder)"
        " and print the forecast for --num-outputs-to-generate",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stderr")
    parser.add_argument("--debug", action="store_true", help="debug logging, and tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"fms_dgt {__version__}")
    return parser


def configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def format_summary(result: RunResult) -> str:
    s = result.summary
    new = s["total"] - s["already_done"]
    lines = [
        f"{s['task_name']}: {s['status']}; {s['total']}/{s['requested']} conversations in"
        f" {result.output_dir} ({new} new, {s['already_done']} from earlier runs) in {s['wall_seconds']:.1f} s",
    ]
    if s["turns"]:
        lines.append("  exchanges per conversation: " + ", ".join(f"{k}: {v}" for k, v in s["turns"].items()))
    for key in ("dropped", "rescued", "flow_controller_fallbacks", "rejected_drafts"):
        if s[key]:
            lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in sorted(s[key].items())))
    if s["per_stage"]:
        tokens = sum(v["prompt_tokens"] + v["completion_tokens"] for v in s["per_stage"].values())
        lines.append(f"  LM calls: {s['lm_calls']} ({tokens} tokens); by stage: " + ", ".join(
            f"{k} {v['calls']}" for k, v in s["per_stage"].items()
        ))
    cost = s.get("cost")
    if cost:
        per_kept = cost["per_kept_conversation"]
        lines.append(
            f"  cost: {cost['total']:.4g}" + (f", {per_kept:.4g} per kept conversation" if per_kept is not None else "")
            + "; by engine: " + ", ".join(f"{k} {v:.4g}" for k, v in cost["per_engine"].items())
            + "; by stage: " + ", ".join(f"{k} {v:.4g}" for k, v in cost["per_stage"].items())
        )
    for name, info in s["engines"].items():
        if info.get("retries"):
            lines.append(f"  retries on {name}: " + ", ".join(f"{k} {v}" for k, v in info["retries"].items()))
        if len(info.get("endpoints", {})) > 1:
            lines.append(f"  endpoints of {name}: " + ", ".join(
                f"{url} {c['calls']} calls ({c['errors']} errors)" for url, c in info["endpoints"].items()
            ))
    if s.get("time_to_first_kept_seconds") is not None:
        spare = s["spare"]
        tokens = f", {spare['tokens']} tokens" if spare.get("tokens") is not None else ""
        lines.append(
            f"  first kept after {s['time_to_first_kept_seconds']:.1f} s; spare conversations (started for"
            f" the tail, not kept): {spare['conversations']}{tokens}"
        )
    for name, info in s["engines"].items():
        if info.get("concurrency"):
            lines.append(f"  concurrency limit of {name}: " + ", ".join(
                f"{url} {c['final']} (peak {c['peak']}, {c['mode']})" for url, c in info["concurrency"].items()
            ))
    executor = s.get("executor") or {}
    if executor.get("type") == "ray":
        lines.append(
            f"  ray: {executor['workers']} workers at {executor['address']}, {executor['workers_lost']} lost,"
            f" {executor['conversations_resent']} conversations sent again"
        )
    if s["error"]:  # its first line; the CLI prints the whole error once more, last
        lines.append(f"  error: {s['error'].splitlines()[0]}")
    return "\n".join(lines)


async def _run_all(args: argparse.Namespace, paths: list[Path], override: EngineOverride) -> list[RunResult]:
    # Load every task first so a typo in the last one fails before the first one starts.
    tasks = [load_task(p, override) for p in paths]
    names = [t.config.task_name for t in tasks]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(Problem(f"two task files share the task_name {clash[0]!r}"))
    # The run allocates many short-lived objects (requests, replies, prompts) and few cycles:
    # the startup objects are left out of collections and the youngest generation is collected
    # every 50,000 allocations instead of 700, which removed the pauses that cut throughput by a
    # fifth for a second every few seconds at 320 calls/s (benchmarks/server_speed.py: 64 slots,
    # N=1000, 45.7 s -> 44.7 s).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    results = []
    executor_options = EXECUTORS.get(args.executor).options_from(args)
    limits = LimitOverrides(
        min_keep_rate=args.min_keep_rate, min_attempts=args.keep_rate_min_attempts, max_tokens=args.max_tokens,
        max_calls=args.max_calls, max_cost=args.max_cost, max_time=args.max_time,
    )
    for task in tasks:
        options = RunOptions(
            num_outputs=args.num_outputs_to_generate,
            output_dir=args.output_dir,
            restart=args.restart,
            seed=args.seed,
            progress=not args.quiet,
            executor=args.executor,
            executor_options=executor_options,
            limits=limits,
        )
        if args.estimate:
            result = await _estimate(task, options, args.estimate)
        else:
            result = await Runner(task, options).run()
            if not args.quiet:
                print(format_summary(result), file=sys.stderr)
            if result.status == "budget_exhausted":  # one line, even with --quiet
                print(budget_line(result), file=sys.stderr)
        results.append(result)
        if result.error is not None:
            break
    return results


def budget_line(result: RunResult) -> str:
    s = result.summary
    return (
        f"{s['task_name']}: budget exhausted: {s['budget']['exhausted']}; {s['total']}/{s['requested']}"
        " conversations are saved; run the same command again to continue with a new budget"
    )


async def _estimate(task: Any, options: RunOptions, attempts: int) -> RunResult:
    """``--estimate K``: K conversations in a temporary folder, then the forecast for N on stdout."""
    total = options.num_outputs
    with tempfile.TemporaryDirectory(prefix="fms_dgt_estimate_") as scratch:
        options.output_dir, options.restart = Path(scratch), True
        options.num_outputs, options.max_attempts = attempts, attempts
        runner = Runner(task, options)
        result = await runner.run()
    if result.error is not None:
        return result
    s = result.summary
    tried = s["accepted"] + sum(s["dropped"].values())
    projection = runner.guard.projection(total, fresh=True)
    head = f"{s['task_name']}: estimate from {tried} conversations: {s['accepted']} kept"
    if projection is None:
        print(f"{head}; too few kept to forecast (at least {MIN_KEPT} are needed): try a larger --estimate", file=sys.stdout)
        return result
    per_kept_calls = projection.estimates["calls"].value / total
    per_kept_tokens = projection.estimates["tokens"].value / total
    print(
        f"{head} (keep rate {projection.keep_rate:.0%}), {per_kept_calls:.1f} LM calls and"
        f" {per_kept_tokens:,.0f} tokens per kept conversation, {runner.executor.capacity} in flight\n"
        f"  {describe(projection, runner.guard.priced)}",
        file=sys.stdout,
    )
    return result


def _run_with_signals(coro: Any) -> tuple[Any, int | None]:
    """Run ``coro``; SIGTERM cancels it like Ctrl-C does. Returns (result, signal exit code)."""
    received: list[int] = []

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            received.append(143)
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGTERM, on_term)
        except (NotImplementedError, RuntimeError):  # not on the main thread, or Windows
            pass
        return await coro

    try:
        return asyncio.run(main()), None
    except KeyboardInterrupt:
        return None, 130
    except asyncio.CancelledError:
        return None, received[0] if received else 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.validate and args.preview:
        parser.error("--validate and --preview do not go together")
    for name, flags in parser.executor_flags.items():
        for flag in flags if name != args.executor else ():
            if getattr(args, flag.dest) is not None:
                parser.error(f"{flag.option_strings[0]} needs --executor {name}")
    configure_logging(args.debug, args.quiet)
    base_urls = tuple(args.base_url) if args.base_url else None
    override = EngineOverride(
        type=args.engine, model=args.model, base_url=base_urls, max_concurrency=args.concurrency
    )
    try:
        paths = find_task_files(args.task_paths)
        if args.validate or args.preview:
            look = validate_tasks(paths, override, args.output_dir, args.num_outputs_to_generate) if args.validate \
                else preview_tasks(paths, override, args.preview, args.seed)
            code, interrupted = _run_with_signals(look)
            return code if interrupted is None else interrupted
        results, interrupted = _run_with_signals(_run_all(args, paths, override))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DgtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so in one line unless --debug asks for the traceback
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    if interrupted is not None:
        print("interrupted: every finished conversation is saved; run again to resume", file=sys.stderr)
        return interrupted
    for result in results:
        if result.error is not None:
            print(f"error: {result.error}", file=sys.stderr)
            return result.error.exit_code
    return 0


def run() -> None:
    """Process entry point. It exits at once, without the interpreter's teardown: by now the
    output is closed and synced and the logs are flushed. The teardown only costs time (0.4 s
    at the end of a 1000-conversation run with matplotlib and datasketch loaded), and after an
    interruption an embedded-model request still running in a worker thread cannot be
    cancelled, only abandoned."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
