"""What the simulated server itself serves at most: the part of ``wall/ideal`` that is not ours.

``benchmarks/server_speed.py`` measures the README's command against ``ideal = LM calls x
latency / slots``, a server that turns every slot around in exactly its latency. The simulated
server is a Python process on the same two cores: each request also costs it parsing, a reply
and a late timer. This script sends it the same chat request from the cheapest client there is
(raw HTTP/1.1 on asyncio streams, one keep-alive connection per worker, no JSON decoding) and
prints requests per second against ``slots / latency``: the ratio is the floor under any
client's ``wall/ideal`` on that server.

    python benchmarks/server_ceiling.py                  # 64 slots at 200 ms, 6400 requests
    python benchmarks/server_ceiling.py --connections 96 # more workers than slots: a queue
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from http_cpu import BODY  # the same chat request as the HTTP-cost benchmark
from ray_scaling import start_server  # the simulated server in another process, shared


async def _send_all(host: str, port: int, n: int, connections: int) -> float:
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"X-FMS-DGT-Stage: lm/assistant/naive\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    left = n

    async def worker() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(host, port)
        while left > 0:
            left -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6400)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    server, url = start_server(args.latency, args.slots)
    try:
        host, port = url.split("//")[1].rsplit(":", 1)
        wall = asyncio.run(_send_all(host, int(port), args.n, args.connections))
    finally:
        server.terminate()
        server.wait()
    ideal = args.n * args.latency / args.slots
    print(json.dumps({
        "n": args.n, "slots": args.slots, "latency_s": args.latency, "connections": args.connections,
        "wall_s": round(wall, 2), "requests_per_s": round(args.n / wall, 1),
        "ideal_requests_per_s": round(args.slots / args.latency, 1), "wall_over_ideal": round(wall / ideal, 3),
    }))


if __name__ == "__main__":
    main()
