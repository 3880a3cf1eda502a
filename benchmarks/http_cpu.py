"""CPU per request of the HTTP exchange alone, by client path: why an LM call costs what it does.

Sends the same chat-completions request (a 1.4 kB body, the simulated server's ~20-token reply)
N times, C at a time, to ``python -m fms_dgt.testing.lm_server`` in another process, through:

- ``transport``: one ``httpx.AsyncHTTPTransport`` per slot (the engine's path before);
- ``connection``: one httpcore connection per slot on httpcore's default (anyio) network layer;
- ``engine``: ``ConnectionSlots`` as the OpenAI engine uses it (httpcore connection, asyncio
  network backend: ``fms_dgt.engines.network``).

Each path runs in a fresh process; the figure is that process's CPU time (user + sys) over the
timed requests divided by N, JSON encoding of the body and decoding of the reply included. It is
the floor under ``benchmarks/server_speed.py``'s CPU per LM call, which adds the pipeline's own
work (prompts, checks, the gate and limiter, output). Paths run alternately ``--repeat`` times,
since the cores are shared with the server.

    python benchmarks/http_cpu.py                 # N=5000, 64 at a time, 200 ms per request
    python benchmarks/http_cpu.py --latency 0     # the server answers at once
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATHS = ("transport", "connection", "engine")
BODY = {
    "model": "sim-model",
    "messages": [
        {"role": "system", "content": "You are a user who writes short messages. " * 20},
        {"role": "user", "content": "Tell me about your favourite season and why. " * 10},
    ],
    "max_tokens": 100,
}


async def _measure(path: str, url: str, n: int, concurrency: int) -> dict[str, float]:
    import httpcore
    import httpx

    from fms_dgt.engines.connection_slots import ConnectionSlots

    chat = httpx.URL(url + "/v1/chat/completions")
    headers = [(b"Accept", b"application/json"), (b"Content-Type", b"application/json")]
    timeout = httpx.Timeout(60.0).as_dict()
    gate = asyncio.Semaphore(concurrency)
    slots = ConnectionSlots()
    free: list[object] = []
    origin = httpcore.Origin(chat.raw_scheme, chat.raw_host, chat.port or 80)
    target = httpcore.URL(scheme=chat.raw_scheme, host=chat.raw_host, port=chat.port, target=chat.raw_path)

    async def one() -> None:
        async with gate:
            content = json.dumps(BODY, separators=(",", ":")).encode()
            if path == "engine":
                reply = await slots.send(b"POST", chat, headers, content, timeout)
                json.loads(reply.content)
                return
            item = free.pop() if free else (
                httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1)) if path == "transport"
                else httpcore.AsyncHTTPConnection(origin)
            )
            try:
                if path == "transport":
                    request = httpx.Request("POST", chat, headers=headers, content=content,
                                            extensions={"timeout": timeout})
                    response = await item.handle_async_request(request)  # type: ignore[attr-defined]
                    json.loads(await response.aread())
                else:
                    request = httpcore.Request(
                        b"POST", target, content=content, extensions={"timeout": timeout},
                        headers=[(b"Host", chat.netloc), *headers, (b"Content-Length", str(len(content)).encode())],
                    )
                    response = await item.handle_async_request(request)  # type: ignore[attr-defined]
                    json.loads(await response.aread())
                    await response.aclose()
            finally:
                free.append(item)

    await asyncio.gather(*(one() for _ in range(concurrency * 2)))  # connections open, code warm
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await slots.aclose()
    for item in free:
        await item.aclose()  # type: ignore[attr-defined]
    return {"cpu_ms_per_request": round(cpu / n * 1000, 3), "requests_per_s": round(n / wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="timed requests per path")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request on the server")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the three paths")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child[0], args.child[1], args.n, args.concurrency))))
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--latency", str(args.latency),
         "--slots", str(max(512, args.concurrency)), "--plausible"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]  # type: ignore[union-attr]
        print(f"# load before: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs", flush=True)
        for _ in range(args.repeat):
            for path in PATHS:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", path, url, "--n", str(args.n),
                     "--concurrency", str(args.concurrency)],
                    capture_output=True, text=True, cwd=REPO, check=True,
                )
                figures = json.loads(done.stdout)
                print(json.dumps({"path": path, "n": args.n, "concurrency": args.concurrency,
                                  "latency_s": args.latency, **figures}), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
