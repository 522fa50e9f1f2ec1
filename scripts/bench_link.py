#!/usr/bin/env python3
"""bench_link.py - measure `upload send`/`upload serve` over a slow uplink in the project's lab.

Runs our client in the lab's client namespace against our server in its server namespace
(scripts/linklab: slowlink, anchors, anchor_bench.py, probe.py), over a 128 kbit/s uplink with
a 500 ms modem buffer, and compares it with established tools timed on the same link.

cases (all by default; pick some with --only NAME, repeatable):
  goodput      4 MiB unthrottled: goodput as % of the link rate (target >= 95 %),
               beside anchor_bench.py tools (--anchors, default rsync)
  probe        --limit 12KiB/s upload; TCP connect time of other traffic idle and
               during the upload (target median <= 1 ms), beside anchor_bench.py curl-dav
               and rsync --limit 12 --probe (--probe-anchors)
  outage       2 MiB unthrottled; a silent cut of --cut-seconds (60) mid-transfer:
               time from restore until the server receives data again (target <= 3 s),
               the client's retry events, connection attempts (tcpdump, if installed)
  silent-kill  1 MiB with --chunk 64KiB: cut mid-transfer, kill -9 the client, restore,
               rerun the same command: bytes re-sent beyond what the server lacked
               (target <= one chunk)

Each case builds the lab (`slowlink up`), tears it down in the end (`slowlink down`, unless
--keep), is bounded in time, and checks the published file's SHA-256 against the source.
Server-side received bytes come from `ss -ti` (tcp_info bytes_received) in the server
namespace every 100 ms: the part file only grows in 1 MiB writes, and interface counters
also count packets the cut drops.

Prints a table; with --json one JSON object instead. Needs root, iptables, python3; the
anchors need what scripts/linklab/anchors needs (Debian: rsync rclone openssh-server
openssh-client curl); tcpdump and ethtool are used when installed.

examples:
  sudo scripts/bench_link.py                          # all four cases, ~20 min
  sudo scripts/bench_link.py --only outage --cut-seconds 30 --json
  sudo scripts/bench_link.py --only goodput --anchors raw,rsync --bin ../other/target/release/upload
environment: SLOWLINK_PREFIX (default upl), SLOWLINK_NET (default 10.77.9).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import KIB, MIB, log, make_file, parse_size, probe_lines, sha256_file, table

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(HERE)
LAB = os.path.join(HERE, "linklab")
SLOWLINK = os.path.join(LAB, "slowlink")
RATE_BPS = 128000
PORT = 8090  # our server; anchors use 2222 8873 8080 9000
PROBE_PORT = 8181  # the tiny listener probed while our client runs
CASES = ("goodput", "probe", "outage", "silent-kill")


def source(work, name, size):
    """A fresh random source file in the case's work dir; its path."""
    path = os.path.join(work, name)
    make_file(path, size, seed=int.from_bytes(os.urandom(4), "big"))
    return path


class Lab:
    def __init__(self, env, keep):
        self.env, self.keep = env, keep
        self.prefix = env["SLOWLINK_PREFIX"]
        self.srv = self.cli = None

    def sl(self, *args, check=True):
        return subprocess.run([SLOWLINK, *args], env=self.env, check=check, capture_output=True,
                              text=True, timeout=60).stdout

    def up(self, rate="128kbit", latency="500ms", burst=None):
        out = self.sl("up", "--rate", rate, "--latency", latency,
                      *(["--burst", burst] if burst else []))
        self.srv = re.search(r"^server (\S+)", out, re.M).group(1)
        self.cli = self.sl("addr", "client").strip()
        log(out.strip().splitlines()[0])
        # A fresh lab loses its first packets (the first SYN took 1.02 s: one retransmission);
        # knock on a closed port until the RST comes back at once.
        warm = ("import socket,time\nfor _ in range(50):\n t=time.time()\n try:\n"
                f"  socket.create_connection(('{self.srv}',9),timeout=2).close()\n"
                " except OSError: pass\n if time.time()-t<0.1: break\n time.sleep(0.1)")
        self.run("client", [sys.executable, "-c", warm], timeout=60)

    def down(self):
        if self.keep:
            log(f"--keep: lab {self.prefix} left up")
            return
        self.sl("down", check=False)

    def cut(self):
        self.sl("cut")

    def restore(self):
        self.sl("restore")

    def popen(self, ns, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen([SLOWLINK, "exec", ns, *argv], env=kw.pop("env", self.env), **kw)

    def run(self, ns, argv, timeout=30):
        return subprocess.run([SLOWLINK, "exec", ns, *argv], env=self.env, capture_output=True,
                              text=True, timeout=timeout).stdout

    def anchors(self):
        subprocess.run([os.path.join(LAB, "anchors"), "start"], env=self.env, check=True,
                       capture_output=True, timeout=60)

    def bench(self, tool, path, *opts, timeout=900):
        """one anchor_bench.py run; its JSON object, or {"error": ...}."""
        argv = [sys.executable, os.path.join(LAB, "anchor_bench.py"), tool, path, *opts]
        log("anchor: " + " ".join(argv[1:]))
        try:
            p = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"tool": tool, "error": f"timed out after {timeout} s"}
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"tool": tool, "error": (p.stderr or p.stdout)[-400:]}


class RxSampler(threading.Thread):
    """Payload bytes the server's TCP accepted on PORT (sum over connections of tcp_info
    bytes_received), sampled every 100 ms from `ss` in the server namespace."""

    def __init__(self, lab, port, period=0.1):
        super().__init__(daemon=True)
        self.lab, self.port, self.period = lab, port, period
        self.seen = {}  # connection -> largest bytes_received
        self.samples = []  # (monotonic, total)
        self.stop = threading.Event()

    def total(self):
        return sum(self.seen.values())

    def poll(self):
        out = subprocess.run(["ip", "netns", "exec", f"{self.lab.prefix}-server", "ss", "-HtinO",
                              "state", "all", f"( sport = :{self.port} )"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            v = line.split()
            m = re.search(r"bytes_received:(\d+)", line)
            if m and len(v) > 4:
                key = (v[3], v[4])
                self.seen[key] = max(self.seen.get(key, 0), int(m.group(1)))
        return self.total()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            self.samples.append((t, self.poll()))
            self.stop.wait(max(0.0, self.period - (time.monotonic() - t)))

    def first_at_least(self, value, after=0.0):
        return next((t for t, b in self.samples if t >= after and b >= value), None)


class Ours:
    """our server in the server namespace, clients in the client namespace."""

    def __init__(self, lab, work, bin_):
        self.lab, self.work, self.bin = lab, work, bin_
        self.dir = os.path.join(work, "inbox")
        self.token = os.path.join(work, "token")
        with open(self.token, "w") as f:
            f.write("bench-link-" + os.urandom(8).hex() + "\n")
        self.server = None
        self.url = None

    def start_server(self):
        os.makedirs(self.dir, exist_ok=True)
        env = dict(self.lab.env, UPLOAD_DB=os.path.join(self.work, "server.db"))
        self.server_log = open(os.path.join(self.work, "server.log"), "w")
        self.server = self.lab.popen("server", [self.bin, "serve", "--dir", self.dir, "--listen",
                                                f"{self.lab.srv}:{PORT}", "--token-file", self.token],
                                     stdout=subprocess.PIPE, stderr=self.server_log, text=True, env=env)
        line = self.server.stdout.readline()  # "listening on http://ADDR/files/"
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line!r}; see {self.server_log.name}")
        self.url = line.split("listening on", 1)[1].strip()
        threading.Thread(target=self.server.stdout.read, daemon=True).start()

    def stop_server(self):
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()

    def send_argv(self, path, *opts):
        return [self.bin, "send", path, self.url, "--token-file", self.token, "--json", *opts]

    def client(self, path, *opts, tag="client"):
        return Client(self, self.send_argv(path, *opts), tag)

    def published(self, path):
        p = os.path.join(self.dir, os.path.basename(path))
        return sha256_file(p) if os.path.exists(p) else None


class Client:
    """one `upload send --json` run; events are stamped with monotonic time as they arrive."""

    def __init__(self, ours, argv, tag):
        self.argv = argv
        self.events = []
        self.err = open(os.path.join(ours.work, f"{tag}.stderr"), "w")
        env = dict(ours.lab.env, UPLOAD_DB=os.path.join(ours.work, "client.db"))
        self.t0 = time.monotonic()
        self.p = ours.lab.popen("client", argv, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.events.append((time.monotonic(), json.loads(line)))
            except ValueError:
                pass

    def wait(self, timeout):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        self.t1 = time.monotonic()
        self.reader.join(5)
        return rc

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)  # slowlink exec keeps the PID
            self.p.wait()

    def of(self, kind):
        return [(t, e) for t, e in self.events if e.get("event") == kind]

    def first(self, kind):
        ev = self.of(kind)
        return ev[0] if ev else (None, None)

    def last(self, kind):
        ev = self.of(kind)
        return ev[-1] if ev else (None, None)


def pct(bits_per_s):
    return round(100.0 * bits_per_s / RATE_BPS, 1)


# ---------------------------------------------------------------- cases

def server_interruptions(ours):
    """the server's 'body interrupted' log lines: (time, why, bytes received then)."""
    out = []
    for line in open(ours.server_log.name):
        m = re.match(r"(\S+)\s+INFO body interrupted .*why=(\w+) received=(\d+)", line)
        if m:
            out.append({"at": m.group(1)[11:19], "why": m.group(2), "received": int(m.group(3))})
    return out


def case_goodput(a, lab, work):
    size = a.goodput_size
    src = source(work, "goodput.bin", size)
    ours = Ours(lab, work, a.bin)
    ours.start_server()
    rx = RxSampler(lab, PORT)
    rx.start()
    opts = ["--chunk", a.chunk] if a.chunk else []
    c = ours.client(src, *opts)
    rc = c.wait(timeout=size * 8 / RATE_BPS * 1.3 + 60)
    rx.stop.set()
    rx.join()
    ours.stop_server()
    res = {"bytes": size, "server_interruptions": server_interruptions(ours),
           "retry_events": [{"t_s": round(t - c.t0, 2), "attempt": e["attempt"], "error": e["error"]}
                            for t, e in c.of("retry")], "rc": rc, "argv": c.argv, "wall_s": round(c.t1 - c.t0, 2)}
    res["goodput_wall_pct"] = pct(size * 8 / (c.t1 - c.t0))
    t_start, ev_start = c.first("started")
    progress = c.of("progress")
    if progress:
        t_last, last = progress[-1]
        if len(progress) >= 2:  # first to last confirmed progress
            t_first, first = progress[0]
            res["first_to_last_progress_s"] = round(t_last - t_first, 2)
            res["goodput_progress_pct"] = pct((last["offset"] - first["offset"]) * 8 / (t_last - t_first))
        if t_start is not None:  # 'started' (offset known, first PATCH begins) to the last ack
            res["started_to_last_progress_s"] = round(t_last - t_start, 2)
            res["goodput_started_pct"] = pct((size - ev_start["offset"]) * 8 / (t_last - t_start))
        res["progress_events"] = len(progress)
    # server side, like anchor_bench.py's data_phase_s: first byte to the last growth seen (the
    # connection may close before a sample shows the very last bytes)
    t_first_rx = rx.first_at_least(1)
    top = max((b for _, b in rx.samples), default=0)
    t_top = rx.first_at_least(top) if top else None
    if t_first_rx and t_top and t_top > t_first_rx:
        res["server_data_phase_s"] = round(t_top - t_first_rx, 2)
        res["server_bytes_seen"] = top
        res["goodput_server_pct"] = pct(top * 8 / (t_top - t_first_rx))
    done = c.last("done")[1] or {}
    res["resent_bytes"] = done.get("resent_bytes")
    res["sha256_ok"] = done.get("sha256") == sha256_file(src) == ours.published(src)
    anchors = {}
    if a.anchors:
        lab.anchors()
        for tool in a.anchors:
            r = lab.bench(tool, src)
            if "wall_s" in r:
                r["goodput_wall_pct"] = pct(size * 8 / r["wall_s"])
                if r.get("data_phase_s"):
                    r["goodput_data_pct"] = pct(size * 8 / r["data_phase_s"])
            anchors[tool] = r
    res["anchors"] = anchors
    res["target"] = ">= 95 % of 128 kbit/s"
    res["pass"] = bool(res["sha256_ok"] and res.get("goodput_started_pct", 0) >= 95)
    return res


def probe_run(lab, work, tag):
    out = open(os.path.join(work, f"probe-{tag}.txt"), "w")
    return lab.popen("client", [sys.executable, os.path.join(LAB, "probe.py"), lab.srv,
                                str(PROBE_PORT), "0.5"], stdout=out), out.name


def probe_stats(path, t_start, t_end):
    """TCP connect times of other traffic: {"idle": ..., "busy": ...} (benchlib.latency_stats)."""
    return {k: v["connect"] for k, v in probe_lines(path, t_start, t_end).items()}


def case_probe(a, lab, work):
    size = a.probe_size
    src = source(work, "probe.bin", size)
    ours = Ours(lab, work, a.bin)
    ours.start_server()
    listener = lab.popen("server", [sys.executable, "-m", "http.server", str(PROBE_PORT), "--bind",
                                    lab.srv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=work)
    for _ in range(50):
        if f":{PROBE_PORT} " in lab.run("server", ["ss", "-Hltn"]):
            break
        time.sleep(0.2)
    probe, probe_file = probe_run(lab, work, "ours")
    try:
        ready = time.monotonic() + 20  # idle time counts from the probe's first line
        while os.path.getsize(probe_file) == 0 and time.monotonic() < ready:
            time.sleep(0.05)
        time.sleep(a.idle)
        t_start = time.time()
        c = ours.client(src, "--limit", "12KiB/s")
        rc = c.wait(timeout=size / (12 * KIB) * 2 + 120)
        t_end = time.time()
        time.sleep(2)
    finally:
        probe.terminate()
        probe.wait()
        listener.terminate()
        listener.wait()
        ours.stop_server()
    done = c.last("done")[1] or {}
    res = {"bytes": size, "rc": rc, "argv": c.argv, "wall_s": round(c.t1 - c.t0, 2),
           "probe_connect": probe_stats(probe_file, t_start, t_end),
           "sha256_ok": done.get("sha256") == sha256_file(src) == ours.published(src)}
    anchors = {}
    if a.probe_anchors:
        lab.anchors()
        for tool in a.probe_anchors:
            r = lab.bench(tool, src, "--limit", "12", "--probe", "--idle", str(a.idle))
            anchors[tool] = {k: r.get(k) for k in ("rc", "ok", "wall_s", "probe_idle", "probe_busy",
                                                   "argv", "error") if k in r}
    res["anchors"] = anchors
    med = res["probe_connect"]["busy"].get("median_ms")
    res["target"] = "busy connect median <= 1 ms"
    res["pass"] = bool(res["sha256_ok"] and med is not None and med <= 1.0)
    return res


class Tcpdump:
    """SYN/FIN/RST to our port seen on the client's interface (outgoing packets are seen even
    while the cut drops them on arrival)."""

    def __init__(self, lab, work):
        self.p = None
        self.client_ip = lab.cli
        self.path = os.path.join(work, "tcpdump.txt")
        if shutil.which("tcpdump"):
            self.p = lab.popen("client", ["tcpdump", "-l", "-n", "-tt", "-i", "lab0",
                                          f"tcp port {PORT} and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0)"],
                               stdout=open(self.path, "w"), stderr=subprocess.DEVNULL)

    def stop(self):
        if self.p:
            time.sleep(0.5)
            self.p.terminate()
            self.p.wait()

    def events(self, t_wall0, m0):
        """[(seconds on the monotonic clock, 'S'|'S.'|'R'...)] (client SYNs and RSTs)."""
        out = []
        if not self.p:
            return out
        for line in open(self.path):
            m = re.match(r"(\d+\.\d+) IP (\S+) > (\S+): Flags \[([^\]]+)\]", line)
            if m and m.group(2).startswith(self.client_ip):
                out.append((float(m.group(1)) - t_wall0 + m0, m.group(4)))
        return out


def case_outage(a, lab, work):
    size = a.outage_size
    src = source(work, "outage.bin", size)
    ours = Ours(lab, work, a.bin)
    ours.start_server()
    rx = RxSampler(lab, PORT)
    rx.start()
    dump = Tcpdump(lab, work)
    time.sleep(1)
    opts = ["--chunk", a.chunk] if a.chunk else []
    c = ours.client(src, *opts)
    wall0, m0 = time.time(), time.monotonic()
    res = {"bytes": size, "argv": c.argv, "cut_seconds": a.cut_seconds}
    deadline = time.monotonic() + size * 8 / RATE_BPS + 60
    while rx.total() < size * a.cut_at and time.monotonic() < deadline and c.p.poll() is None:
        time.sleep(0.1)
    t_cut = time.monotonic()
    res["rx_at_cut"] = rx.total()
    lab.cut()
    log(f"outage: cut at {res['rx_at_cut']} bytes received; restore in {a.cut_seconds} s")
    time.sleep(max(0.0, a.cut_seconds - 1))
    res["client_sockets_before_restore"] = lab.run("client", ["ss", "-HtinO", "state", "all",
                                                              f"( dport = :{PORT} )"]).strip().splitlines()
    time.sleep(max(0.0, t_cut + a.cut_seconds - time.monotonic()))
    lab.restore()
    t_restore = time.monotonic()
    rx_restore = rx.total()
    rc = c.wait(timeout=size * 8 / RATE_BPS * 1.5 + 120)
    time.sleep(0.5)
    rx.stop.set()
    rx.join()
    dump.stop()
    ours.stop_server()
    rel = lambda t: None if t is None else round(t - t_restore, 2)  # noqa: E731
    res["rc"] = rc
    res["wall_s"] = round(c.t1 - c.t0, 2)
    res["rx_at_restore"] = rx_restore
    res["first_rx_after_restore_s"] = rel(rx.first_at_least(rx_restore + 1, t_restore))
    res["data_flows_after_restore_s"] = rel(rx.first_at_least(rx_restore + 4096, t_restore))
    res["first_progress_after_restore_s"] = rel(next((t for t, e in c.of("progress") if t > t_restore), None))
    res["retry_events"] = [{"t_after_cut_s": round(t - t_cut, 2), "attempt": e["attempt"],
                            "delay_s": round(e["delay_seconds"], 2), "error": e["error"]}
                           for t, e in c.of("retry")]
    res["connects"] = [{"t_after_cut_s": round(t - t_cut, 2), "flags": f}
                       for t, f in dump.events(wall0, m0) if t >= t_cut - 1]
    done = c.last("done")[1] or {}
    res["bytes_sent"], res["resent_bytes"] = done.get("bytes_sent"), done.get("resent_bytes")
    res["server_interruptions"] = server_interruptions(ours)
    res["sha256_ok"] = done.get("sha256") == sha256_file(src) == ours.published(src)
    res["target"] = "data flows <= 3 s after restore"
    flow = res["data_flows_after_restore_s"]
    res["pass"] = bool(res["sha256_ok"] and flow is not None and flow <= 3.0)
    return res


def case_silent_kill(a, lab, work):
    size, chunk = a.kill_size, a.kill_chunk
    src = source(work, "silentkill.bin", size)
    ours = Ours(lab, work, a.bin)
    ours.start_server()
    rx = RxSampler(lab, PORT)
    rx.start()
    c1 = ours.client(src, "--chunk", chunk, tag="client1")
    deadline = time.monotonic() + size * 8 / RATE_BPS + 60
    # mid-transfer, and mid-chunk: past the half and half a chunk into the next
    while time.monotonic() < deadline and c1.p.poll() is None:
        acked = (c1.last("progress")[1] or {}).get("offset", 0)
        if acked >= size // 2 and rx.total() >= acked + parse_size(chunk) // 2:
            break
        time.sleep(0.05)
    res = {"bytes": size, "chunk": chunk, "argv": c1.argv}
    res["first_run_acked"] = (c1.last("progress")[1] or {}).get("offset", 0)
    res["rx_at_cut"] = rx.total()
    lab.cut()
    time.sleep(0.5)
    c1.kill()
    c1.wait(5)
    time.sleep(a.kill_gap)
    lab.restore()
    t_restore = time.monotonic()
    c2 = ours.client(src, "--chunk", chunk, tag="client2")
    rc = c2.wait(timeout=size * 8 / RATE_BPS * 2 + 180)
    rx.stop.set()
    rx.join()
    ours.stop_server()
    _, st = c2.first("started")
    done = c2.last("done")[1] or {}
    res["rc"] = rc
    res["rerun_wall_s"] = round(c2.t1 - c2.t0, 2)
    res["rerun_started_offset"] = st.get("offset") if st else None
    res["rerun_bytes_sent"] = done.get("bytes_sent")
    res["rerun_resent_bytes"] = done.get("resent_bytes")
    res["rerun_retries"] = [{"t_after_restore_s": round(t - t_restore, 2), "error": e["error"],
                             "delay_s": round(e["delay_seconds"], 2)} for t, e in c2.of("retry")]
    if st and done:
        res["resent_beyond_lacking"] = done["bytes_sent"] - (size - st["offset"])
    res["sha256_ok"] = done.get("sha256") == sha256_file(src) == ours.published(src)
    res["target"] = f"re-sent <= one chunk ({parse_size(chunk)} bytes)"
    extra = res.get("resent_beyond_lacking")
    res["pass"] = bool(rc == 0 and res["sha256_ok"] and extra is not None and extra <= parse_size(chunk))
    return res


# ---------------------------------------------------------------- output

def fmt_ms(s):
    return "-" if not s or "median_ms" not in s else f"{s['median_ms']}/{s['p95_ms']} ms"


def report(results):
    rows = []
    for name, r in results.items():
        if "error" in r and "pass" not in r:
            rows.append((name, "ERROR", r["error"][-200:]))
            continue
        verdict = "PASS" if r.get("pass") else "MISS"
        if name == "goodput":
            rows.append((name, verdict, f"ours {r.get('goodput_started_pct')} % (started->last ack), "
                         f"{r.get('goodput_server_pct')} % (server first->last byte), "
                         f"{r.get('goodput_wall_pct')} % (whole command {r.get('wall_s')} s, rc {r.get('rc')}); "
                         f"{len(r.get('retry_events', []))} retries; sha {r.get('sha256_ok')}"))
            for e in r.get("retry_events", [])[:6]:
                rows.append(("", "retry", f"+{e['t_s']} s #{e['attempt']}: {e['error']}"))
            for tool, x in r.get("anchors", {}).items():
                rows.append(("", "anchor", f"{tool}: {x.get('goodput_data_pct')} % (data phase), "
                             f"{x.get('goodput_wall_pct')} % (wall {x.get('wall_s')} s) ok={x.get('ok')} {x.get('error', '')}"))
        elif name == "probe":
            p = r["probe_connect"]
            rows.append((name, verdict, f"ours connect median/p95 idle {fmt_ms(p['idle'])}, during upload "
                         f"{fmt_ms(p['busy'])}; sha {r.get('sha256_ok')}"))
            for tool, x in r.get("anchors", {}).items():
                rows.append(("", "anchor", f"{tool}: idle {fmt_ms((x.get('probe_idle') or {}).get('connect'))}, "
                             f"during {fmt_ms((x.get('probe_busy') or {}).get('connect'))} {x.get('error', '')}"))
        elif name == "outage":
            rows.append((name, verdict, f"data flows {r.get('data_flows_after_restore_s')} s after restore "
                         f"(first byte {r.get('first_rx_after_restore_s')} s, first ack "
                         f"{r.get('first_progress_after_restore_s')} s); {len(r.get('retry_events', []))} retries; "
                         f"resent {r.get('resent_bytes')} B; sha {r.get('sha256_ok')}"))
            for e in r.get("retry_events", []):
                rows.append(("", "retry", f"cut+{e['t_after_cut_s']} s #{e['attempt']} wait {e['delay_s']} s: {e['error']}"))
            for e in r.get("server_interruptions", []):
                rows.append(("", "server", f"{e['at']} body interrupted ({e['why']}) after {e['received']} B"))
            syn = [x["t_after_cut_s"] for x in r.get("connects", []) if x["flags"] == "S"]
            if syn:
                rows.append(("", "SYNs", "cut+ " + ", ".join(f"{t}" for t in syn)))
        elif name == "silent-kill":
            rows.append((name, verdict, f"re-sent beyond lacking {r.get('resent_beyond_lacking')} B "
                         f"(chunk {r.get('chunk')}); rerun from {r.get('rerun_started_offset')}, "
                         f"rc {r.get('rc')}, {r.get('rerun_wall_s')} s; sha {r.get('sha256_ok')}"))
    return table(["case", "", "figures"], [list(r) for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=CASES, help="run this case (repeatable)")
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "release", "upload"),
                    help="the upload binary (default REPO/target/release/upload)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--keep", action="store_true", help="leave the lab up after each case")
    ap.add_argument("--anchors", default="rsync", help="anchor_bench.py tools beside goodput, comma-separated ('' = none)")
    ap.add_argument("--probe-anchors", default="curl-dav,rsync", help="anchor_bench.py tools beside probe ('' = none)")
    ap.add_argument("--chunk", help="--chunk for goodput and outage (default: the client's)")
    ap.add_argument("--cut-seconds", type=float, default=60, help="outage length (default 60)")
    ap.add_argument("--cut-at", type=float, default=0.4, help="outage: cut once this share of the file arrived")
    ap.add_argument("--idle", type=float, default=10, help="probe: idle seconds before the upload")
    ap.add_argument("--goodput-size", type=parse_size, default=4 * MIB)
    ap.add_argument("--probe-size", type=parse_size, default=512 * KIB)
    ap.add_argument("--outage-size", type=parse_size, default=2 * MIB)
    ap.add_argument("--kill-size", type=parse_size, default=1 * MIB)
    ap.add_argument("--kill-chunk", default="64KiB", help="silent-kill: --chunk (default 64KiB)")
    ap.add_argument("--kill-gap", type=float, default=2, help="silent-kill: seconds cut after the kill")
    a = ap.parse_args()
    a.anchors = [x for x in a.anchors.split(",") if x]
    a.probe_anchors = [x for x in a.probe_anchors.split(",") if x]
    if os.geteuid() != 0:
        sys.exit("bench_link.py: must run as root (network namespaces)")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"bench_link.py: no binary at {a.bin} (cargo build --release, or --bin)")
    env = dict(os.environ)
    env.setdefault("SLOWLINK_PREFIX", "upl")
    env.setdefault("SLOWLINK_NET", "10.77.9")
    os.environ.update(SLOWLINK_PREFIX=env["SLOWLINK_PREFIX"], SLOWLINK_NET=env["SLOWLINK_NET"])
    runners = {"goodput": case_goodput, "probe": case_probe, "outage": case_outage,
               "silent-kill": case_silent_kill}
    results = {}
    for name in a.only or CASES:
        lab = Lab(env, a.keep)
        work = tempfile.mkdtemp(prefix=f"bench_link-{name}-")
        log(f"{name}: work dir {work}")
        t = time.monotonic()
        try:
            lab.up()
            results[name] = runners[name](a, lab, work)
        except Exception as e:  # one case failing must not hide the others
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            lab.down()
        results[name]["case_seconds"] = round(time.monotonic() - t, 1)
        results[name]["work_dir"] = work
        log(f"{name}: done in {results[name]['case_seconds']} s")
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.realpath(a.bin)))), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"bin": a.bin, "commit": commit or None, "lab": env["SLOWLINK_PREFIX"], "cases": results}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"binary {a.bin} (commit {commit or '?'}), lab {env['SLOWLINK_PREFIX']}")
        print(report(results))
    return 0 if all(r.get("pass") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
