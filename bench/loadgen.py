"""HTTP load: wrk for throughput (closed loop), an open-loop generator for latency.

wrk keeps 32 connections busy and counts completed requests: saturation throughput. Latency
at a fixed rate needs an open loop (requests sent on a schedule whatever the answers, each
timed from when it was due, so a stalled server cannot hide its queue: "coordinated
omission"); Debian's wrk has no fixed-rate mode, so a small asyncio client does it here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.stats import percentile


@dataclass
class WrkResult:
    rps: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    output: str = ""


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int = 32) -> WrkResult:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(args + [url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()[-300:]}")
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, requests, errors, out if errors else "")


@dataclass
class OpenLoopResult:
    latencies_ms: list[float]
    errors: int
    sent: int
    kinds: dict[str, int]

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


async def _request(reader, writer, raw: bytes) -> int:
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _open_loop(url: str, headers: dict[str, str], rate: float, seconds: float):
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    idle: list = []
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}

    async def one(due: float) -> None:
        nonlocal errors
        try:
            reused = bool(idle)
            conn = idle.pop() if idle else await asyncio.open_connection(parts.hostname, parts.port)
            try:
                status = await _request(*conn, raw)
            except (ConnectionError, asyncio.IncompleteReadError):
                if not reused:
                    raise
                # The server closed an idle keep-alive connection (gunicorn after 2 s): retry
                # once on a new one, as every HTTP client does; the wait still counts.
                conn[1].close()
                conn = await asyncio.open_connection(parts.hostname, parts.port)
                status = await _request(*conn, raw)
            latencies.append((time.perf_counter() - due) * 1000)
            if status >= 300:
                errors += 1
                kinds[str(status)] = kinds.get(str(status), 0) + 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors += 1
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1

    count = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    for _reader, writer in idle:
        writer.close()
    return OpenLoopResult(latencies, errors, count, kinds)


def open_loop(url: str, headers: dict[str, str], rate: float, seconds: float) -> OpenLoopResult:
    """GET `url` `rate` times a second for `seconds`; latencies from each request's due time."""
    return asyncio.run(_open_loop(url, headers, rate, seconds))
