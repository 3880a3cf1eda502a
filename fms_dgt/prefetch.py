"""Slow imports started in a thread at the start of a run, so they are off its critical path.

datasketch (with scipy: 0.9 s here) is first needed when the first conversation is kept, and
matplotlib (0.75 s) when the report is drawn after the last. Imported where they are used, each
held up the run for that long: the first requests waited for datasketch, the command's end for
matplotlib. The first seconds of a run are mostly waits on the engine, so a thread importing them
then costs the run nothing. The code that needs a module calls ``settle()`` first and then
imports it as usual: Python's import lock would make an ``import`` wait for this thread, but
not code that reads ``sys.modules`` directly (``matplotlib.use`` finds a half-imported
``matplotlib.pyplot`` there and fails), so it waits for the thread to finish. It reports a
missing extra itself, so a failure here is ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import threading

__all__ = ["prefetch", "settle", "settled"]

_threads: list[threading.Thread] = []


def prefetch(*modules: str) -> threading.Thread:
    """Import ``modules`` in a daemon thread, in order; return the thread."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the module docstring
                pass

    thread = threading.Thread(target=load, name="fms_dgt-prefetch", daemon=True)
    thread.start()
    _threads.append(thread)
    return thread


def settle() -> None:
    """Wait until every prefetch started in this process has finished (blocks the thread)."""
    while _threads:
        _threads.pop().join()


async def settled() -> None:
    """``settle`` without stopping the event loop: requests in flight meanwhile are still served.
    Blocking it instead (a join in the loop) stalled every request for as long as the imports
    took, which under load was longer than a short ``timeout``: all of them timed out at once."""
    if _threads:
        await asyncio.to_thread(settle)
