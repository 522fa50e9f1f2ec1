#!/usr/bin/env python3
"""Loopback benchmarks of `upload send` / `upload serve`, beside curl, rsync and @tus/server.

Everything runs on 127.0.0.1 and measures in one run, so compare ratios inside one report,
never absolute times from two runs (2 shared cores). Python 3.11 stdlib only.

Parts (--only, comma-separated; default all):
  throttle  `upload send --limit 16KiB/s` and `curl --limit-rate 16K` side by side for
            --seconds, each through a byte-counting TCP proxy that timestamps every recv()
            in the client->server direction: mean rate (first second excluded) as % of the
            target, the largest and smallest 1-second window / target, the longest silence,
            and the client's CPU seconds (/proc/PID/stat utime+stime).
  speed     a --size file (deterministic random bytes) sha256-verified end to end:
            (a) upload send -> upload serve, (b) curl POST + one streamed PATCH -> upload
            serve, (b2) the same while `openssl dgst -sha256` hashes the file beside it: the
            floor for any client that hashes what it sends, (c) rsync -> rsync daemon (if
            rsync is installed); wall time, GiB/s, CPU s/GiB of client and server; --repeat
            interleaved rounds, the median shown; before each case 1.5x --size is written
            and removed in the workdir (--no-warm skips it), see warm_memory. Then the client's peak RSS (VmHWM) sending
            an --rss-size sparse file. With --one-server, (a), (b) and (b2) all go to one
            long-running `upload serve` instead of a fresh one per case, as a user's server
            is: every round re-sends the same file under the same name, so the server already
            holds an identical published copy (and `upload send` gets --no-base, so the whole
            file is sent, not a delta against that copy).
  server    upload serve beside @tus/server (tests/interop/tus_server.mjs): (a) curl POST +
            one streamed PATCH of --size; (b) --slow-count concurrent uploads of --slow-size
            each paced at --slow-rate by a Python tus client; server CPU and peak RSS.

Each server is started fresh for each measurement, so its VmHWM is that measurement's peak.
CPU of a process we started and reaped comes from wait4() (its own and its reaped children's
utime+stime, as /proc/PID/stat would say at exit); of a running server from /proc/PID/stat
deltas (utime+stime+cutime+cstime, so rsync's forked workers count).

The binary is $UPLOAD_BIN, else target/release/upload of this checkout. Build it from a
separate worktree so edits in progress do not break a run:
  git worktree add --detach ../benchtree HEAD
  (cd ../benchtree && cargo build --release)
  scripts/bench_loopback.py --bin ../benchtree/target/release/upload --json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from benchlib import (GIB, KIB, MIB, log, make_file, parse_byte_rate, parse_size, proc_cpu,
                      sha256_file, stop_process, table)

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Processes: CPU and memory from /proc


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes (0 when the process is gone)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1]) * KIB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class MemSampler:
    """Samples VmRSS/VmHWM of one pid every `period` seconds; keeps the maxima."""

    def __init__(self, pid: int, period: float = 0.05):
        self.pid, self.period = pid, period
        self.max_rss = self.hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        m = proc_mem(self.pid)
        self.max_rss = max(self.max_rss, m["VmRSS"])
        self.hwm = max(self.hwm, m["VmHWM"])

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(2)


def wait_rusage(p: subprocess.Popen, timeout: float) -> tuple[int, float, int]:
    """Waits for a child; returns (exit status, CPU seconds, ru_maxrss bytes) from wait4().
    Kills it after `timeout` seconds. ru_maxrss is useless for an exec'd child: exec carries
    the forked Python's peak RSS into it; sample VmHWM from /proc instead (MemSampler)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            code = os.waitstatus_to_exitcode(status)
            p.returncode = code
            return code, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * KIB
        if time.monotonic() > deadline:
            p.kill()
            deadline = time.monotonic() + 10
            timeout = 10
        time.sleep(0.01)


class Server:
    """A server process that prints `listening on http://HOST:PORT/files/` when ready."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None, ready_re: str = r"listening on (http://\S+)"):
        self.name = name
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     cwd=cwd, start_new_session=True)
        self.url = None
        got = threading.Event()

        def drain() -> None:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                self.log.write(b"stdout: " + raw)
                m = re.search(ready_re, line)
                if m and not self.url:
                    self.url = m.group(1)
                    got.set()

        threading.Thread(target=drain, daemon=True).start()
        if not got.wait(30):
            self.stop()
            raise RuntimeError(f"{name} did not print its URL within 30 s; see {log}")
        parsed = urllib.parse.urlsplit(self.url)
        self.host, self.port = parsed.hostname, parsed.port
        self.cpu0 = proc_cpu(self.proc.pid, children=True)

    def cpu(self) -> float:
        """CPU seconds since it became ready."""
        return proc_cpu(self.proc.pid, children=True) - self.cpu0

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def start_ours(bin_: str, dir_: Path, tmp: Path, name: str) -> Server:
    env = dict(os.environ, UPLOAD_DB=str(tmp / f"{name}.db"))
    dir_.mkdir(parents=True, exist_ok=True)  # `serve` refuses a --dir that does not exist
    return Server(name, [bin_, "serve", "--dir", str(dir_), "--listen", "127.0.0.1:0",
                         "--no-auth"], tmp / f"{name}.log", env=env)


def start_node(interop: Path, dir_: Path, tmp: Path, name: str) -> Server:
    return Server(name, ["node", str(interop / "tus_server.mjs"), str(dir_)],
                  tmp / f"{name}.log", cwd=interop)


# ---------------------------------------------------------------------------------------------
# Files


def sha256_zeros(size: int) -> str:
    h, zero = hashlib.sha256(), bytes(4 * MIB)
    while size:
        n = min(size, len(zero))
        h.update(zero[:n] if n < len(zero) else zero)
        size -= n
    return h.hexdigest()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def published(dir_: Path, name: str, upload_id: str | None) -> Path | None:
    """Ours publishes DIR/NAME; @tus/server's FileStore keeps DIR/ID."""
    for p in [dir_ / name] + ([dir_ / upload_id] if upload_id else []):
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------------------
# The byte counter and the PUT sink


class Proxy:
    """TCP proxy 127.0.0.1:port -> upstream; timestamps every client->server recv()."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.events: list[tuple[float, int]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    self.events.append((time.monotonic(), len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (dst,):
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        for s in [self.sock] + self.conns:
            try:
                s.close()
            except OSError:
                pass


class Sink:
    """A raw HTTP/1.1 PUT sink: reads each body and discards it, answers 201."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            f = c.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    return
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if headers.get("expect", "").lower() == "100-continue":
                    c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                left = int(headers.get("content-length", "0"))
                while left:
                    block = f.read1(min(left, 65536))
                    if not block:
                        return
                    self.received += len(block)
                    left -= len(block)
                c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.sock.close()


def smoothness(events: list[tuple[float, int]], begin: float, end: float, target: float) -> dict:
    """Mean rate over [begin, end] and the extreme 1-second windows, relative to `target`."""
    ev = sorted(e for e in events if begin <= e[0] <= end)
    dur = end - begin
    total = sum(n for _, n in ev)
    # Largest window: some maximal window starts at an event.
    best, s, j = 0, 0, 0
    for i in range(len(ev)):
        while j < len(ev) and ev[j][0] < ev[i][0] + 1.0:
            s += ev[j][1]
            j += 1
        best = max(best, s)
        s -= ev[i][1]
    # Smallest window, on a 10 ms grid (windows lying wholly inside the range).
    bins = [0] * max(1, int(dur * 100) + 1)
    for t, n in ev:
        bins[min(len(bins) - 1, int((t - begin) * 100))] += n
    worst = None
    if len(bins) > 100:
        s = sum(bins[:100])
        worst = s
        for k in range(100, len(bins)):
            s += bins[k] - bins[k - 100]
            worst = min(worst, s)
    gap = max((b[0] - a[0] for a, b in zip(ev, ev[1:])), default=None)
    return {
        "seconds": round(dur, 2),
        "bytes": total,
        "mean_Bps": round(total / dur, 1) if dur > 0 else None,
        "mean_pct_of_target": round(100 * total / dur / target, 2) if dur > 0 else None,
        "max_1s_window_ratio": round(best / target, 3),
        "min_1s_window_ratio": round(worst / target, 3) if worst is not None else None,
        "longest_silence_s": round(gap, 3) if gap is not None else None,
        "recv_calls": len(ev),
    }


# ---------------------------------------------------------------------------------------------
# tus by hand: curl and a paced Python client


def tus_create(url: str, length: int, name: str) -> tuple[str, str]:
    """curl POST; returns (absolute upload URL, upload id)."""
    meta = "filename " + base64.b64encode(name.encode()).decode()
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", "Tus-Resumable: 1.0.0", "-H",
         f"Upload-Length: {length}", "-H", f"Upload-Metadata: {meta}", url, "-D", "-",
         "-o", "/dev/null"], capture_output=True, text=True, timeout=30, check=True).stdout
    m = re.search(r"^location:\s*(\S+)", out, re.I | re.M)
    if not m:
        raise RuntimeError(f"creation POST gave no Location:\n{out}")
    loc = urllib.parse.urljoin(url, m.group(1))
    return loc, loc.rstrip("/").rsplit("/", 1)[1]


def curl_patch(upload_url: str, path: Path, timeout: float) -> dict:
    """One PATCH streaming the whole file (-T streams; --data-binary would buffer it)."""
    cmd = ["curl", "-sS", "-X", "PATCH", "-H", "Tus-Resumable: 1.0.0", "-H",
           "Content-Type: application/offset+octet-stream", "-H", "Upload-Offset: 0",
           "-H", "Expect:", "-T", str(path), upload_url, "-D", "-", "-o", "/dev/null"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, cpu, _ = wait_rusage(p, timeout)
    wall = time.monotonic() - t0
    out = p.stdout.read().decode(errors="replace")
    status = re.findall(r"^HTTP/\S+ (\d+)", out, re.M)
    return {"exit": code, "wall": wall, "cpu": cpu, "status": status[-1] if status else None,
            "stderr": p.stderr.read().decode(errors="replace").strip()}


def paced_upload(host: str, port: int, create_path: str, name: str, data: bytes, rate: int,
                 piece: int, result: dict) -> None:
    """POST, then one PATCH whose body goes out in `piece`-byte writes at `rate` B/s."""
    try:
        meta = "filename " + base64.b64encode(name.encode()).decode()
        c = http.client.HTTPConnection(host, port, timeout=60)
        c.request("POST", create_path, headers={"Tus-Resumable": "1.0.0",
                                                "Upload-Length": str(len(data)),
                                                "Upload-Metadata": meta})
        r = c.getresponse()
        r.read()
        if r.status != 201:
            raise RuntimeError(f"POST: {r.status}")
        loc = urllib.parse.urljoin(f"http://{host}:{port}{create_path}", r.getheader("Location"))
        result["id"] = loc.rstrip("/").rsplit("/", 1)[1]
        c.putrequest("PATCH", urllib.parse.urlsplit(loc).path, skip_accept_encoding=True)
        for k, v in (("Tus-Resumable", "1.0.0"), ("Upload-Offset", "0"),
                     ("Content-Type", "application/offset+octet-stream"),
                     ("Content-Length", str(len(data)))):
            c.putheader(k, v)
        c.endheaders()
        start = time.monotonic()
        for at in range(0, len(data), piece):
            due = start + at / rate
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            c.send(data[at:at + piece])
        r = c.getresponse()
        r.read()
        result["status"] = r.status
        result["offset"] = int(r.getheader("Upload-Offset") or -1)
        c.close()
    except Exception as e:  # noqa: BLE001 - reported per upload
        result["error"] = repr(e)


# ---------------------------------------------------------------------------------------------
# Parts


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
        # The speed part's long-running server and its directory, with --one-server.
        self.one_server: tuple[Server, Path] | None = None

    def dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", file=sys.stderr)


def part_throttle(ctx: Ctx) -> dict:
    a = ctx.args
    target = a.rate
    d = ctx.dir("throttle")
    src = d / "throttle-src.bin"
    size = max(4 * MIB, int(target * a.seconds * 3))
    make_file(src, size, seed=2)
    server = proxy_ours = sink = proxy_curl = client = curl = None
    try:
        server = start_ours(a.bin, d / "srv", d, "throttle-server")
        proxy_ours = Proxy((server.host, server.port))
        sink = Sink()
        proxy_curl = Proxy(("127.0.0.1", sink.port))
        env = dict(os.environ, UPLOAD_DB=str(d / "client.db"))
        limit = f"{target / KIB:g}KiB/s" if target % KIB == 0 else f"{target}"
        client_cmd = [a.bin, "send", str(src), f"http://127.0.0.1:{proxy_ours.port}/files/",
                      "--limit", limit, "--json"]
        curl_cmd = ["curl", "-sS", "--limit-rate", f"{target // KIB}K", "-H", "Expect:", "-T",
                    str(src), f"http://127.0.0.1:{proxy_curl.port}/sink/throttle-src.bin",
                    "-o", "/dev/null"]
        log(f"throttle: {' '.join(client_cmd)}  |  {' '.join(curl_cmd)}  for {a.seconds} s")
        client_out = open(d / "client.ndjson", "wb")
        t0 = time.monotonic()
        client = subprocess.Popen(client_cmd, env=env, stdout=client_out,
                                  stderr=open(d / "client.log", "wb"))
        curl = subprocess.Popen(curl_cmd, stderr=subprocess.DEVNULL)
        time.sleep(a.seconds)
        t_end = time.monotonic()
        cpu = {}
        for name, p in (("upload send", client), ("curl", curl)):
            try:
                cpu[name] = proc_cpu(p.pid)
            except FileNotFoundError:
                cpu[name] = None
        finished = {"upload send": client.poll() is not None, "curl": curl.poll() is not None}
        client.send_signal(signal.SIGINT)  # progress is saved; exits 130
        curl.terminate()
        wait_rusage(client, 15)
        wait_rusage(curl, 15)
        rows = {}
        for name, proxy, start in (("upload send", proxy_ours, t0), ("curl", proxy_curl, t0)):
            first = proxy.events[0][0] if proxy.events else start
            r = smoothness(proxy.events, first + 1.0, t_end, target)
            r["cpu_s"] = round(cpu[name], 3) if cpu[name] is not None else None
            r["finished_early"] = finished[name]
            rows[name] = r
        return {"target_Bps": target, "run_seconds": a.seconds, "file_bytes": size,
                "clients": rows}
    finally:
        for p in (client, curl):
            stop_process(p, signal.SIGKILL)
        for x in (proxy_ours, proxy_curl, sink, server):
            if x is not None:
                x.close() if not isinstance(x, Server) else x.stop()
        shutil.rmtree(d, ignore_errors=True)


def run_send(ctx: Ctx, src: Path, server: Server, tag: str, sample_rss: bool) -> dict:
    """`upload send --json` to `server`; wall, CPU, RSS, the `done` event."""
    a = ctx.args
    # One database for every round, as a user's: a file sent again to the same URL is a new
    # transfer (the finished one is not resumed).
    env = dict(os.environ, UPLOAD_DB=str(ctx.tmp / f"{tag}-client.db"))
    cmd = [a.bin, "send", str(src), server.url, "--json"] + (["--chunk", a.chunk] if a.chunk else [])
    cmd += ["--no-base"] if a.one_server else []
    log(f"{tag}: {' '.join(cmd)}")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                         stderr=open(ctx.tmp / f"{tag}-client.log", "wb"))
    sampler = MemSampler(p.pid) if sample_rss else None
    out = []
    threading.Thread(target=lambda: out.extend(p.stdout.readlines()), daemon=True).start()
    code, cpu, _ = wait_rusage(p, a.timeout)
    wall = time.monotonic() - t0
    if sampler:
        sampler.stop()
    time.sleep(0.1)
    done = None
    for line in out:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "done":
            done = ev
    return {"exit": code, "wall": wall, "cpu": cpu,
            "hwm_sampled": sampler.hwm if sampler else None,
            "rss_sampled": sampler.max_rss if sampler else None, "done": done}


def row(name: str, size: int, wall: float, client_cpu: float | None, server_cpu: float | None,
        verified: bool | None, **extra) -> dict:
    g = size / GIB
    return dict({
        "what": name, "bytes": size, "wall_s": round(wall, 3),
        "GiB_per_s": round(g / wall, 3), "MB_per_s": round(size / wall / 1e6, 1),
        "client_cpu_s_per_GiB": None if client_cpu is None else round(client_cpu / g, 3),
        "server_cpu_s_per_GiB": None if server_cpu is None else round(server_cpu / g, 3),
        "sha256_verified": verified,
    }, **extra)


def curl_to(ctx: Ctx, server: Server, src: Path, size: int, sha: str, dir_: Path,
            name: str, what: str, beside: list[str] | None = None) -> dict:
    """POST, then curl's one PATCH of the whole file. With `beside`, that command (printing
    the file's SHA-256 first on its stdout) runs alongside as part of the client: its CPU
    counts, the wall time runs until both are done, and its digest must match."""
    loc, upload_id = tus_create(server.url, size, name)
    log(f"{what}: {' '.join(beside) + ' & ' if beside else ''}curl -X PATCH -T {src} {loc}")
    cpu0 = server.cpu()
    t0 = time.monotonic()
    helper = subprocess.Popen(beside, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) if beside else None
    r = curl_patch(loc, src, ctx.args.timeout)
    wall, cpu, digest_ok = r["wall"], r["cpu"], True
    if helper:
        _, helper_cpu, _ = wait_rusage(helper, ctx.args.timeout)
        wall, cpu = time.monotonic() - t0, cpu + helper_cpu
        digest_ok = helper.stdout.read().decode().split(" ")[0] == sha
    time.sleep(0.3)  # let the server finish publishing before reading its CPU
    server_cpu = server.cpu() - cpu0
    out = published(dir_, name, upload_id)
    ok = digest_ok and out is not None and sha256_file(out) == sha
    if r["exit"] != 0 or r["status"] not in ("204", "200"):
        ctx.note(f"{what}: curl exit {r['exit']}, HTTP {r['status']}: {r['stderr']}")
    return row(what, size, wall, cpu, server_cpu, ok, http_status=r["status"])


def with_server(ctx: Ctx, d: Path, tag: str, measure) -> dict:
    """A fresh `upload serve` in d/tag for one measurement, removed afterwards; with
    --one-server the one long-running server of the speed part instead."""
    if ctx.one_server is not None:
        server, sdir = ctx.one_server
        return measure(server, sdir)
    server = None
    sdir = d / tag
    try:
        server = start_ours(ctx.args.bin, sdir, d, f"speed-server-{tag}")
        return measure(server, sdir)
    finally:
        if server:
            server.stop()
        shutil.rmtree(sdir, ignore_errors=True)


def speed_ours(ctx: Ctx, d: Path, src: Path, sha: str) -> dict:
    def measure(server: Server, sdir: Path) -> dict:
        cpu0 = server.cpu()
        r = run_send(ctx, src, server, "speed-send", sample_rss=True)
        time.sleep(0.3)
        server_cpu = server.cpu() - cpu0
        out = published(sdir, src.name, None)
        ok = (r["exit"] == 0 and r["done"] is not None and r["done"].get("sha256") == sha
              and out is not None and sha256_file(out) == sha)
        if r["exit"] != 0:
            ctx.note(f"speed (a): upload send exited {r['exit']}")
        return row("upload send -> upload serve", ctx.args.size, r["wall"], r["cpu"], server_cpu,
                   ok, client_peak_rss_MiB=round((r["hwm_sampled"] or 0) / MIB, 1),
                   server_peak_rss_MiB=round(proc_mem(server.proc.pid)["VmHWM"] / MIB, 1))
    return with_server(ctx, d, "ours-a", measure)


def speed_curl(ctx: Ctx, d: Path, src: Path, sha: str) -> dict:
    def measure(server: Server, sdir: Path) -> dict:
        r = curl_to(ctx, server, src, ctx.args.size, sha, sdir, src.name,
                    "curl PATCH -> upload serve")
        r["server_peak_rss_MiB"] = round(proc_mem(server.proc.pid)["VmHWM"] / MIB, 1)
        return r
    return with_server(ctx, d, "ours-b", measure)


def speed_floor(ctx: Ctx, d: Path, src: Path, sha: str) -> dict:
    """The floor for any client that SHA-256s what it sends: curl's PATCH while `openssl dgst
    -sha256` (SHA-NI, the fastest SHA-256 here) hashes the same file in a second process:
    perfect overlap, no extra copy."""
    return with_server(ctx, d, "ours-f", lambda server, sdir: curl_to(
        ctx, server, src, ctx.args.size, sha, sdir, src.name,
        "floor: curl PATCH + openssl sha256 beside it",
        beside=["openssl", "dgst", "-sha256", "-r", str(src)]))


def warm_memory(d: Path, size: int) -> None:
    """Writes and removes `size` bytes in `d` (a tmpfs) before a case. A virtual machine that
    hands freed memory back to its host (free page reporting) pays for the first touch of it
    again, so a case that happens to land on returned pages ran up to twice as slow; touching
    as much memory as the case will use first gives every case the same start."""
    block = bytes(4 * MIB)
    path = d / "warm.bin"
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    path.unlink()


def median_row(runs: list[dict]) -> dict:
    """The run with the median wall time, with every run's wall time beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    best = dict(ordered[(len(ordered) - 1) // 2])
    best["runs_wall_s"] = [r["wall_s"] for r in runs]
    best["sha256_verified"] = all(r["sha256_verified"] for r in runs)
    return best


def part_speed(ctx: Ctx) -> dict:
    a = ctx.args
    d = ctx.dir("speed")
    src = d / "speed-src.bin"
    log(f"speed: writing {a.size} deterministic random bytes to {src}")
    sha = make_file(src, a.size, seed=1)
    # (a) ours, (b) curl, (b2) curl with openssl hashing beside it, (c) rsync: interleaved,
    # --repeat rounds, so a noisy neighbour on the shared cores hits every case alike.
    cases = [("a", speed_ours), ("b", speed_curl)]
    if shutil.which("openssl"):
        cases.append(("b2", speed_floor))
    else:
        ctx.note("speed (b2): openssl is not installed; no floor for a hashing client")
    if shutil.which("rsync"):
        cases.append(("c", lambda ctx, d, src, sha: rsync_run(ctx, src, sha, d)))
    else:
        ctx.note("speed (c): rsync is not installed (apt-get install -y rsync); no anchor")
    runs: dict[str, list[dict]] = {tag: [] for tag, _ in cases}
    if a.one_server:
        sdir = d / "one-server"
        ctx.one_server = (start_ours(a.bin, sdir, d, "speed-server-one"), sdir)
    try:
        for round_ in range(a.repeat):
            for tag, case in cases:
                if a.warm:
                    warm_memory(d, a.size + a.size // 2)
                runs[tag].append(case(ctx, d, src, sha))
            log(f"speed: round {round_ + 1}/{a.repeat} done")
    finally:
        if ctx.one_server is not None:
            ctx.one_server[0].stop()
            ctx.one_server = None
    rows = [median_row(runs[tag]) for tag, _ in cases]
    rss = rss_run(ctx, d)
    src.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)
    by_tag = dict(zip((tag for tag, _ in cases), rows))
    # Ours against the floor for a hashing client: above 1.0 ours is faster.
    of_floor = (round(by_tag["b2"]["wall_s"] / by_tag["a"]["wall_s"], 3)
                if "b2" in by_tag else None)
    return {"size": a.size, "repeat": a.repeat, "one_server": a.one_server, "rows": rows,
            "of_floor": of_floor, "rss": rss}


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def rsync_run(ctx: Ctx, src: Path, sha: str, d: Path) -> dict:
    a = ctx.args
    rdir = d / "rsync-dest"
    rdir.mkdir()
    port = free_port()
    conf = d / "rsyncd.conf"
    conf.write_text(f"use chroot = false\nlog file = {d / 'rsyncd.log'}\n"
                    f"pid file = {d / 'rsyncd.pid'}\n"
                    f"[mod]\npath = {rdir}\nread only = false\n"
                    f"uid = {os.getuid()}\ngid = {os.getgid()}\n")
    daemon = None
    try:
        daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                   f"--port={port}", "--address=127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=open(d / "rsyncd.err", "wb"),
                                  start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("rsync daemon did not start")
                time.sleep(0.05)
        cpu0 = proc_cpu(daemon.pid, children=True)
        cmd = ["rsync", str(src), f"rsync://127.0.0.1:{port}/mod/"]
        log(f"rsync: {' '.join(cmd)}")
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        code, cpu, _ = wait_rusage(p, a.timeout)
        wall = time.monotonic() - t0
        if code != 0:
            ctx.note(f"rsync exited {code}: {p.stderr.read().decode(errors='replace')}")
        # The daemon reaps its per-connection worker (which reaped its own helper): wait for
        # their CPU to land in the daemon's cutime.
        t_wait = time.monotonic() + 10
        while time.monotonic() < t_wait and subprocess.run(
                ["pgrep", "-P", str(daemon.pid)], capture_output=True).returncode == 0:
            time.sleep(0.05)
        server_cpu = proc_cpu(daemon.pid, children=True) - cpu0
        out = rdir / src.name
        ok = code == 0 and out.is_file() and sha256_file(out) == sha
        return row("rsync -> rsync daemon", src.stat().st_size, wall, cpu, server_cpu, ok)
    finally:
        stop_process(daemon)
        shutil.rmtree(rdir, ignore_errors=True)


def rss_run(ctx: Ctx, d: Path) -> dict:
    """The client's peak RSS sending a sparse --rss-size file (zeros)."""
    a = ctx.args
    size = a.rss_size
    room = free_bytes(d) - 512 * MIB
    while size > room and size > 64 * MIB:
        size //= 2
    if size != a.rss_size:
        ctx.note(f"rss: {d} has {free_bytes(d) / GIB:.1f} GiB free; sent {size / GIB:g} GiB "
                 f"instead of {a.rss_size / GIB:g} GiB")
    src = d / "rss-src.bin"
    with open(src, "wb") as f:
        f.truncate(size)  # sparse: only the server's copy takes room
    sha = sha256_zeros(size)
    server = None
    try:
        sdir = d / "ours-rss"
        server = start_ours(a.bin, sdir, d, "rss-server")
        r = run_send(ctx, src, server, "rss-send", sample_rss=True)
        ok = r["exit"] == 0 and r["done"] is not None and r["done"].get("sha256") == sha
        return {"bytes": size, "exit": r["exit"], "wall_s": round(r["wall"], 2),
                "client_peak_rss_MiB": round((r["hwm_sampled"] or 0) / MIB, 1),
                "server_peak_rss_MiB": round(proc_mem(server.proc.pid)["VmHWM"] / MIB, 1),
                "sha256_verified": ok}
    finally:
        if server:
            server.stop()
        src.unlink(missing_ok=True)
        shutil.rmtree(d / "ours-rss", ignore_errors=True)


def part_server(ctx: Ctx) -> dict:
    a = ctx.args
    d = ctx.dir("server")
    interop = a.interop
    if not (interop / "node_modules" / "@tus" / "server").is_dir():
        log(f"server: npm ci in {interop}")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=interop, check=True,
                       timeout=600)
    src = d / "server-src.bin"
    log(f"server: writing {a.size} bytes to {src}")
    sha = make_file(src, a.size, seed=3)
    starters = {"upload serve": lambda sdir, tag: start_ours(a.bin, sdir, d, tag),
                "@tus/server": lambda sdir, tag: start_node(interop, sdir, d, tag)}
    out = {"size": a.size, "slow": {"count": a.slow_count, "size": a.slow_size,
                                    "rate_Bps": a.slow_rate, "piece": a.slow_piece},
           "servers": {}}
    datas = [random.Random(100 + i).randbytes(a.slow_size) for i in range(a.slow_count)]
    for name, start in starters.items():
        res = out["servers"][name] = {}
        # (a) one streamed PATCH of the whole file
        server = None
        sdir = d / "a"
        try:
            server = start(sdir, f"{name[:6]}-a".replace("/", "").replace("@", ""))
            sampler = MemSampler(server.proc.pid)
            r = curl_to(ctx, server, src, a.size, sha, sdir, src.name, f"curl PATCH -> {name}")
            sampler.stop()
            r["server_peak_rss_MiB"] = round(max(sampler.hwm, sampler.max_rss) / MIB, 1)
            res["patch"] = r
        finally:
            if server:
                server.stop()
            shutil.rmtree(sdir, ignore_errors=True)
        # (b) many slow uploads in flight at once
        server = None
        sdir = d / "b"
        try:
            server = start(sdir, f"{name[:6]}-b".replace("/", "").replace("@", ""))
            sampler = MemSampler(server.proc.pid, period=0.1)
            base = urllib.parse.urlsplit(server.url)
            results = [{} for _ in range(a.slow_count)]
            log(f"server: {a.slow_count} x {a.slow_size} B at {a.slow_rate} B/s -> {name}")
            threads = [threading.Thread(target=paced_upload, daemon=True, args=(
                base.hostname, base.port, base.path, f"slow-{i:02d}.bin", datas[i], a.slow_rate,
                a.slow_piece, results[i])) for i in range(a.slow_count)]
            cpu0 = server.cpu()
            t0 = time.monotonic()
            for t in threads:
                t.start()
            limit = t0 + a.slow_size / a.slow_rate * 2 + 60
            for t in threads:
                t.join(max(0.1, limit - time.monotonic()))
            wall = time.monotonic() - t0
            time.sleep(0.3)
            server_cpu = server.cpu() - cpu0
            sampler.stop()
            good = 0
            for i, r in enumerate(results):
                f = published(sdir, f"slow-{i:02d}.bin", r.get("id"))
                if (r.get("status") in (200, 204) and r.get("offset") == a.slow_size
                        and f is not None and hashlib.sha256(f.read_bytes()).digest()
                        == hashlib.sha256(datas[i]).digest()):
                    good += 1
            errors = sorted({r["error"] for r in results if "error" in r})
            if errors:
                ctx.note(f"{name} slow uploads: errors {errors[:3]}")
            res["slow"] = {"wall_s": round(wall, 2), "server_cpu_s": round(server_cpu, 3),
                           "server_peak_rss_MiB": round(max(sampler.hwm, sampler.max_rss) / MIB, 1),
                           "server_max_sampled_rss_MiB": round(sampler.max_rss / MIB, 1),
                           "verified": f"{good}/{a.slow_count}"}
        finally:
            if server:
                server.stop()
            shutil.rmtree(sdir, ignore_errors=True)
    src.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Output


def human(report: dict) -> str:
    out = [f"upload loopback benchmark  commit {report['commit']}  binary {report['bin']}",
           f"load before: {report['load_before']}   workdir: {report['workdir']}"]
    if t := report.get("throttle"):
        out += ["", f"THROTTLE  target {t['target_Bps']} B/s, {t['run_seconds']} s, through a "
                    "byte-counting proxy (wants mean within 1 %, max window <= 1.10)",
                table(["client", "mean % of target", "max 1s window", "min 1s window",
                       "longest silence s", "recv() calls", "client CPU s"],
                      [[k, v["mean_pct_of_target"], v["max_1s_window_ratio"],
                        v["min_1s_window_ratio"], v["longest_silence_s"], v["recv_calls"],
                        v["cpu_s"]] for k, v in t["clients"].items()])]
    if s := report.get("speed"):
        servers = ("one long-running server that already holds each file"
                   if s.get("one_server") else "a fresh server per case")
        out += ["", f"SPEED  {s['size'] / GIB:g} GiB, sha256 checked end to end, {servers}; "
                    f"the median of {s['repeat']} interleaved rounds (every round's wall time "
                    f"at the end)",
                table(["path", "wall s", "GiB/s", "MB/s", "client CPU s/GiB",
                       "server CPU s/GiB", "verified", "rounds, wall s"],
                      [[r["what"], r["wall_s"], r["GiB_per_s"], r["MB_per_s"],
                        r["client_cpu_s_per_GiB"], r["server_cpu_s_per_GiB"],
                        r["sha256_verified"], " ".join(str(w) for w in r["runs_wall_s"])]
                       for r in s["rows"]])]
        if s.get("of_floor") is not None:
            out.append(f"upload send against the floor (floor's wall time / ours, medians): "
                       f"{s['of_floor']}x")
        if rss := s.get("rss"):
            out.append(f"client peak RSS sending {rss['bytes'] / GIB:g} GiB: "
                       f"{rss['client_peak_rss_MiB']} MiB (wants < 32 MiB); server "
                       f"{rss['server_peak_rss_MiB']} MiB; {rss['wall_s']} s; "
                       f"exit {rss['exit']}, verified {rss['sha256_verified']}")
    if v := report.get("server"):
        sl = v["slow"]
        out += ["", f"SERVER  (a) curl POST + one PATCH of {v['size'] / GIB:g} GiB;  (b) "
                    f"{sl['count']} uploads x {sl['size'] / MIB:g} MiB at {sl['rate_Bps']} B/s "
                    f"each, in {sl['piece']} B pieces",
                table(["server", "(a) MB/s", "(a) CPU s/GiB", "(a) peak RSS MiB", "(a) ok",
                       "(b) wall s", "(b) CPU s", "(b) peak RSS MiB", "(b) ok"],
                      [[k, x["patch"]["MB_per_s"], x["patch"]["server_cpu_s_per_GiB"],
                        x["patch"]["server_peak_rss_MiB"], x["patch"]["sha256_verified"],
                        x["slow"]["wall_s"], x["slow"]["server_cpu_s"],
                        x["slow"]["server_peak_rss_MiB"], x["slow"]["verified"]]
                       for k, x in v["servers"].items()])]
    for n in report["notes"]:
        out.append(f"note: {n}")
    return "\n".join(out)


def commit_of(bin_: str) -> str:
    try:
        d = Path(bin_).resolve().parent
        head = subprocess.run(["git", "-C", str(d), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(d), "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    default_bin = os.environ.get("UPLOAD_BIN") or str(REPO / "target/release/upload")
    shm = Path("/dev/shm")
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="throttle,speed,server",
                   help="comma-separated parts: throttle, speed, server (default all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--bin", default=default_bin,
                   help=f"the upload binary (default $UPLOAD_BIN or {default_bin})")
    p.add_argument("--seconds", type=float, default=60, help="throttle run length (default 60)")
    p.add_argument("--rate", type=parse_byte_rate, default=16 * KIB,
                   help="throttle target in bytes/s (default 16KiB/s)")
    p.add_argument("--size", type=parse_size, default=GIB,
                   help="file size for speed and server (a) (default 1GiB)")
    p.add_argument("--rss-size", type=parse_size, default=4 * GIB,
                   help="sparse file for the client's peak RSS (default 4GiB)")
    p.add_argument("--chunk", help="pass --chunk SIZE to upload send in the speed part")
    p.add_argument("--repeat", type=int, default=3,
                   help="speed part: rounds of every case, interleaved; the median is shown "
                        "(default 3)")
    p.add_argument("--one-server", action="store_true",
                   help="speed part: one long-running upload serve for every case and round, "
                        "which already holds what it is sent again (default: a fresh one each)")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="speed part: skip writing and removing 1.5x --size in the workdir "
                        "before each case (it steadies figures on a VM that returns freed "
                        "memory to its host)")
    p.add_argument("--slow-count", type=int, default=50, help="concurrent slow uploads (50)")
    p.add_argument("--slow-size", type=parse_size, default=2 * MIB, help="each (2MiB)")
    p.add_argument("--slow-rate", type=parse_byte_rate, default=32 * KIB,
                   help="each one's pace in bytes/s (32KiB/s)")
    p.add_argument("--slow-piece", type=parse_size, default=4 * KIB,
                   help="bytes per timed write of the slow client (4KiB)")
    p.add_argument("--workdir", type=Path,
                   default=shm if shm.is_dir() and free_bytes(shm) > 3 * GIB else Path("/tmp"),
                   help="where test files and server directories go (default /dev/shm if it "
                        "has 3 GiB free, else /tmp): tmpfs measures CPU, not the disk")
    p.add_argument("--interop", type=Path, default=REPO / "tests" / "interop",
                   help="the directory with tus_server.mjs and node_modules")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds before one transfer is killed (default 600)")
    a = p.parse_args()
    parts = [x.strip() for x in a.only.split(",") if x.strip()]
    if bad := set(parts) - {"throttle", "speed", "server"}:
        p.error(f"unknown part(s) {sorted(bad)}")
    if not Path(a.bin).is_file():
        p.error(f"no binary at {a.bin}: build it (see --help) or pass --bin")
    if not shutil.which("curl"):
        p.error("curl is needed")

    ctx = Ctx(a)
    report = {"commit": commit_of(a.bin), "bin": a.bin,
              "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
              "workdir": str(a.workdir), "notes": ctx.notes}
    try:
        if "throttle" in parts:
            report["throttle"] = part_throttle(ctx)
        if "speed" in parts:
            report["speed"] = part_speed(ctx)
        if "server" in parts:
            report["server"] = part_server(ctx)
    except KeyboardInterrupt:
        ctx.note("interrupted")
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    print(json.dumps(report, indent=1) if a.json else human(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
