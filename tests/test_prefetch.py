"""The runner's prefetch of slow imports, and why code that reads sys.modules must settle it first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fms_dgt.prefetch import prefetch, settle


def test_settle_waits_until_a_prefetched_module_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fms_dgt_slow_module.py").write_text("import time\ntime.sleep(0.5)\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prefetch("fms_dgt_slow_module", "fms_dgt_no_such_module")  # a missing one is ignored
    try:
        # While the thread imports it, sys.modules holds the module half made (as matplotlib.use
        # found a half-imported pyplot there): reading it directly, without the import lock, fails.
        for _ in range(100):
            if "fms_dgt_slow_module" in sys.modules:
                break
            __import__("time").sleep(0.01)
        assert not hasattr(sys.modules["fms_dgt_slow_module"], "VALUE")
        settle()
        assert sys.modules["fms_dgt_slow_module"].VALUE == 1
    finally:
        settle()
        sys.modules.pop("fms_dgt_slow_module", None)


async def test_settled_waits_without_stopping_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner awaits the prefetch before its gate needs datasketch; requests in flight then
    must still be served (a join in the loop made every one of them time out at once)."""
    import asyncio

    from fms_dgt.prefetch import settled

    (tmp_path / "fms_dgt_slow_module2.py").write_text("import time\ntime.sleep(0.5)\nVALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    try:
        prefetch("fms_dgt_slow_module2")
        await settled()
        assert sys.modules["fms_dgt_slow_module2"].VALUE == 2
        assert ticks >= 10  # the loop kept running for most of the half second
    finally:
        beat.cancel()
        settle()
        sys.modules.pop("fms_dgt_slow_module2", None)
