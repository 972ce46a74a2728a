"""Where the time goes: pyinstrument around an in-process call, py-spy on another process.

Profiles are written to bench/results/profiles/ as text, for BENCHMARKS.md's analysis.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

PROFILES = Path(__file__).resolve().parent / "results" / "profiles"


def profile_call(name: str, call):
    """Run `call()` under pyinstrument; write the call tree as text; return its result."""
    from pyinstrument import Profiler

    PROFILES.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(interval=0.002)
    profiler.start()
    try:
        return call()
    finally:
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        (PROFILES / f"{name}.txt").write_text(text)


def py_spy(name: str, pid: int, seconds: int) -> subprocess.Popen:
    """Start sampling process `pid` (and its threads) for `seconds`; then `summarize(name)`."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")), "record",
            "--pid", str(pid), "--duration", str(seconds), "--idle", "--subprocesses",
            "--format", "raw", "--output", str(PROFILES / f"{name}.folded"), "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarize(name: str, top: int = 30) -> None:
    """The folded stacks as two tables: time in each function (inclusive) and on-CPU leaves.

    Waiting threads (Waitress's idle workers) are filtered: a stack ending in a lock or a
    select is a thread with nothing to do, not where a request's time goes.
    """
    folded = PROFILES / f"{name}.folded"
    if not folded.is_file():
        return
    inclusive: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in ("wait (threading", "select (", "_worker (concurrent", "poll (")):
            continue
        n = int(count)
        total += n
        leaves[leaf] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{name}: {total} busy samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self (leaf):"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in leaves.most_common(top)]
    (PROFILES / f"{name}.txt").write_text("\n".join(lines) + "\n")
