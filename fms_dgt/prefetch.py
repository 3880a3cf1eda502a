"""Slow imports run in a thread while a run waits on its engines, so they are off its critical path.

datasketch (with scipy: 0.9 s here) is first needed when the first conversation is kept; imported
there, it held up the first kept conversation for that long. A thread importing it while the run
waits on the engine costs the run little, but not nothing: the import holds the GIL, so it slows
the loop's handling of replies (matplotlib, 0.9 s too, is therefore imported by a child process
instead: fms_dgt.chart). The code that needs a module calls ``settle(module)`` first and then
imports it as usual: Python's import lock would make an ``import`` wait for this thread, but not
code that reads ``sys.modules`` directly (``matplotlib.use`` once found a half-imported
``matplotlib.pyplot`` there and failed), so it waits for the thread to finish. It reports a
missing extra itself, so a failure here is ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import threading

__all__ = ["prefetch", "settle", "settled"]

_threads: dict[str, threading.Thread] = {}  # by module, once started


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
