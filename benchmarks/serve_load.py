"""A bounded load test of `hdlm serve` on 127.0.0.1: C concurrent clients send R completion
requests in all (each client its share, one after another), with a deadline; reports
throughput, p50/p99 latency of the answered requests, and how many were refused with 503 (the
bounded queue) or failed otherwise. The server is `hdlm serve CKPT` in its own process; the
clients run in this one (httpx, asyncio). Stops by itself: every request has a timeout and the
run a deadline.

    python benchmarks/serve_load.py CKPT --clients 32 --requests 256 --queue-size 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, queue_size: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hdlm", "serve", checkpoint, "--port", str(port),
               "--queue-size", str(queue_size)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if "Uvicorn running on" in line:  # then keep draining its log, or it would block
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return server
    raise SystemExit(f"the server did not start (exit {server.wait()})")


async def client(http: httpx.AsyncClient, count: int, body: dict, outcomes: list) -> None:
    """Send `count` requests one after another; record (status, seconds) of each."""
    for _ in range(count):
        start = time.perf_counter()
        try:
            status = (await http.post("/v1/completions", json=body)).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        outcomes.append((status, time.perf_counter() - start))


async def load(url: str, clients: int, requests: int, body: dict, deadline: float) -> dict:
    outcomes: list = []
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    async with httpx.AsyncClient(base_url=url, timeout=deadline) as http:
        start = time.perf_counter()
        runs = [client(http, share, body, outcomes) for share in shares]
        await asyncio.wait_for(asyncio.gather(*runs), deadline)
        elapsed = time.perf_counter() - start
    ok = sorted(seconds for status, seconds in outcomes if status == 200)
    return {
        "clients": clients, "requests": requests, "seconds": round(elapsed, 2),
        "answered": len(ok), "refused_503": sum(s == 503 for s, _ in outcomes),
        "failed": sum(s not in (200, 503) for s, _ in outcomes),
        "throughput_rps": round(len(ok) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
        "p99_ms": round(1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))], 1) if ok else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--options", default="{}", help="extra JSON fields, e.g. '{\"steps\": 16}'")
    args = parser.parse_args()
    port = free_port()
    server = start_server(args.checkpoint, port, args.queue_size)
    body = {"prompt": "The", "max_tokens": args.max_tokens, **json.loads(args.options)}
    try:
        result = asyncio.run(
            load(f"http://127.0.0.1:{port}", args.clients, args.requests, body, args.deadline)
        )
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps({"checkpoint": os.path.basename(args.checkpoint.rstrip("/")),
                      "queue_size": args.queue_size, "body": body, **result}))  # fmt: skip


if __name__ == "__main__":
    main()
