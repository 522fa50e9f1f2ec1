"""What the benchmark scripts share: sizes, test files, hashes, process CPU, latency statistics,
logging and tables. Imported by bench_loopback.py, bench_link.py and linklab/anchor_bench.py, so
each figure is computed one way. Python 3.11 stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": KIB, "m": 10**6, "mb": 10**6, "mib": MIB,
         "g": 10**9, "gb": 10**9, "gib": GIB}


def parse_size(text: str) -> int:
    """Bytes as people write them: 1GiB, 512MiB, 64KiB, 4.7GB, 2097152 (k, M, G are decimal)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, 64KiB, 2097152)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def parse_byte_rate(text: str) -> int:
    """Bytes per second, e.g. 16KiB/s or 32KiB."""
    return parse_size(text.removesuffix("/s"))


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_file(path: Path | str, size: int, seed: int = 1) -> str:
    """Writes `size` deterministic pseudo-random bytes in 4 MiB blocks; returns their sha256."""
    rng, h = random.Random(seed), hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, 4 * MIB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def proc_cpu(pid: int, children: bool = False) -> float:
    """utime+stime (and cutime+cstime with children) in seconds from /proc/PID/stat; 0 when the
    process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def stop_process(p: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 5) -> None:
    """Ends a process we started (by its pid), escalating to SIGKILL."""
    if p is None or p.returncode is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    except (ProcessLookupError, ChildProcessError):
        pass


def latency_stats(ms: list[float]) -> dict:
    """Median, p95 and maximum of latencies in ms; -1 marks a failed attempt and is counted."""
    ok = sorted(x for x in ms if x >= 0)
    if not ok:
        return {"n": len(ms), "failed": len(ms)}
    return {"n": len(ms), "failed": len(ms) - len(ok), "median_ms": round(statistics.median(ok), 1),
            "p95_ms": round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 1),
            "max_ms": round(ok[-1], 1)}


def probe_lines(path: Path | str, t_start: float, t_end: float, settle: float = 3) -> dict:
    """probe.py's lines split into idle (before t_start) and busy (from t_start + settle, the
    queue's time to fill, to t_end): {"idle"|"busy": {"connect"|"request": latency_stats}}."""
    idle, busy = [], []
    for line in open(path):
        ts, connect, request = (float(x) for x in line.split())
        if ts < t_start:
            idle.append((connect, request))
        elif t_start + settle <= ts <= t_end:
            busy.append((connect, request))
    return {name: {"connect": latency_stats([x[0] for x in xs]),
                   "request": latency_stats([x[1] for x in xs])}
            for name, xs in (("idle", idle), ("busy", busy))}


def table(headers: list[str], rows: list[list]) -> str:
    """Columns padded to their widest cell, a rule under the headers; None prints as '-'."""
    cells = [[("-" if v is None else str(v)) for v in r] for r in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
