"""Slow imports run in a thread while a run waits on its engines, so they are off its critical path.

datasketch (with scipy: 0.9 s here) is first needed when the first conversation is kept, and
matplotlib (0.9 s) when the report is drawn after the last. Imported where they are used, each
held up the run for that long: the first kept conversation waited for datasketch, the command's
end for matplotlib. A thread importing them while the run waits on the engine costs the run
little, but not nothing: the import holds the GIL, so it slows the loop's handling of replies.
The runner therefore starts datasketch at once and matplotlib only once the engines' limits are
found (``Pacer.limits_found``): while an adaptive limit is still ramping up, every delay on a
reply delays the next window, and importing matplotlib then made a 1000-conversation run 0.6 s
longer (benchmarks/server_speed.py). The code that needs a module calls ``settle(module)``
first and then imports it as usual: Python's import lock would make an ``import`` wait for this
thread, but not code that reads ``sys.modules`` directly (``matplotlib.use`` finds a
half-imported ``matplotlib.pyplot`` there and fails), so it waits for the thread to finish. It
reports a missing extra itself, so a failure here is ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import threading

__all__ = ["prefetch", "prefetched", "settle", "settled"]

_threads: dict[str, threading.Thread] = {}  # by module, once started (kept: ``prefetched`` reads it)


def prefetch(*modules: str) -> threading.Thread:
    """Import ``modules`` in a daemon thread, in order; return the thread."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the module docstring
                pass

    thread = threading.Thread(target=load, name="fms_dgt-prefetch", daemon=True)
    for name in modules:
        _threads[name] = thread
    thread.start()
    return thread


def prefetched(module: str) -> bool:
    """Whether a prefetch of ``module`` was started in this process."""
    return module in _threads


def _pending(modules: tuple[str, ...]) -> list[threading.Thread]:
    names = modules or tuple(_threads)
    return [thread for name, thread in _threads.items() if name in names and thread.is_alive()]


def settle(*modules: str) -> None:
    """Wait until the prefetch of ``modules`` (of every module, with none) has finished; this
    blocks the thread."""
    for thread in _pending(modules):
        thread.join()


async def settled(*modules: str) -> None:
    """``settle`` without stopping the event loop: requests in flight meanwhile are still served.
    Blocking it instead (a join in the loop) stalled every request for as long as the imports
    took, which under load was longer than a short ``timeout``: all of them timed out at once."""
    if _pending(modules):
        await asyncio.to_thread(settle, *modules)
