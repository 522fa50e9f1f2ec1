#!/usr/bin/env python3
"""bench_polite_signal.py - which delay signal tracks the modem's real queue (issue 15).

While `upload send --polite` runs over the project's lab (scripts/linklab, a 2 s modem buffer;
default 128kbit and 1mbit), four views of the uplink's queue are sampled side by side:

  true        the one-way queueing delay itself: small timestamped datagrams from the client
              namespace to a receiver in the server namespace (linklab/owd.py; one machine, one
              CLOCK_MONOTONIC: receive minus send time, minus its minimum), by send time;
  controller  what polite mode sees: its queue_delay (round trip over the base, less its own
              packet's serialisation), every 100 ms from its trace (RUST_LOG=upload::polite=
              trace), and the raw round trip it reads from TCP_INFO over tcpi_min_rtt;
  probe       the same datagrams as a server-timestamped probe would report them: each known
              when it arrives, so it lags the queue by the queue itself, as any signal must;
  kernel      the upload connection's plain TCP_INFO, srtt - min_rtt, as `ss -ti` shows it
              every 100 ms (the kernel's smoothed round trip, the candidate without our undoing);
  others      what other traffic sees: probe.py's TCP connect times against a listener of its
              own, over the connect time of the idle link.

Phases: idle (no upload: the base connect time, which bounds what polite mode can reach), our
upload alone, a competing bulk TCP upload (rawput.py), and after it. For each signal it prints
the median and p95 alone and while competing, and against the true queue over the whole upload
(on a 100 ms grid, each signal interpolated between its samples): the mean absolute difference, the
correlation, and the lag (the shift of the signal, 0-4 s, that correlates best) with the
correlation and difference there.

Needs root, iproute2, python3, a release build (cargo build --release).
  sudo scripts/bench_polite_signal.py                   # two rates, about 4 minutes
  sudo scripts/bench_polite_signal.py --rates 128kbit --runs 2 --json
environment: SLOWLINK_PREFIX (default upsig), SLOWLINK_NET (default 10.77.17).
"""
import argparse
import bisect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from bench_link import LAB, PORT, PROBE_PORT, Lab, Ours, probe_run  # noqa: E402
from bench_polite import SINK_PORT, bits  # noqa: E402
from benchlib import latency_stats, log, make_file, stop_process, table  # noqa: E402

OWD_PORT = 9100
GRID = 0.1
MAX_LAG = 4.0


class Lines(threading.Thread):
    """A pipe's lines, each stamped with CLOCK_MONOTONIC as it arrives."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []
        self.start()

    def run(self):
        for line in self.pipe:
            self.lines.append((time.monotonic(), line))


class TcpInfo(threading.Thread):
    """srtt and min_rtt (ms) of the client's connection to our server, from `ss -ti` in the
    client namespace every 100 ms: the busiest connection's (most bytes acknowledged)."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab, self.samples, self.stop = lab, [], threading.Event()
        self.start()

    def run(self):
        argv = ["ip", "netns", "exec", f"{self.lab.prefix}-client", "ss", "-HtinO", "state",
                "established", f"( dport = :{PORT} )"]
        while not self.stop.is_set():
            t = time.monotonic()
            out = subprocess.run(argv, capture_output=True, text=True).stdout
            best = None
            for line in out.splitlines():
                rtt = re.search(r"\brtt:([0-9.]+)/", line)
                minrtt = re.search(r"\bminrtt:([0-9.]+)", line)
                acked = re.search(r"bytes_acked:(\d+)", line)
                if rtt and minrtt:
                    a = int(acked.group(1)) if acked else 0
                    if best is None or a > best[0]:
                        best = (a, float(rtt.group(1)), float(minrtt.group(1)))
            if best:
                self.samples.append((t, best[1], best[2]))
            self.stop.wait(max(0.0, GRID - (time.monotonic() - t)))


def on_grid(series, grid, max_gap):
    """Each grid time's value, interpolated between the samples either side of it (no more than
    `max_gap` apart); None where there are none. Interpolated, not held: a held value is half a
    sampling interval late on average, which would show as lag."""
    times = [t for t, _ in series]
    out = []
    for g in grid:
        i = bisect.bisect_right(times, g)
        if i == 0 or i == len(times):
            out.append(None)
            continue
        (t0, v0), (t1, v1) = series[i - 1], series[i]
        if t1 - t0 > max_gap:
            out.append(None)
        else:
            out.append(v0 + (v1 - v0) * (g - t0) / (t1 - t0) if t1 > t0 else v1)
    return out


def pearson(xs, ys):
    if len(xs) < 10:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    return None if sx == 0 or sy == 0 else sxy / (sx * sy)


def against(true, signal, grid):
    """MAE and correlation of `signal` with `true` on `grid`, unshifted and at the lag (the
    signal shifted later by 0..MAX_LAG) that correlates best."""
    step = round(MAX_LAG / GRID)
    best = None
    for k in range(step + 1):
        pairs = [(true[i], signal[i + k]) for i in range(len(grid) - k)
                 if true[i] is not None and signal[i + k] is not None]
        if len(pairs) < 50:
            continue
        r = pearson([p[0] for p in pairs], [p[1] for p in pairs])
        mae = statistics.fmean(abs(a - b) for a, b in pairs)
        row = {"lag_s": round(k * GRID, 1), "r": r, "mae_ms": mae}
        if k == 0:
            zero = row
        if r is not None and (best is None or r > best["r"]):
            best = row
    if best is None:
        return {}
    rnd = lambda v: None if v is None else round(v, 2 if abs(v) < 2 else 0)  # noqa: E731
    return {"mae_ms": rnd(zero["mae_ms"]), "r": rnd(zero["r"]), "lag_s": best["lag_s"],
            "r_at_lag": rnd(best["r"]), "mae_at_lag_ms": rnd(best["mae_ms"])}


def stats(series, t0, t1):
    return latency_stats([v for t, v in series if t0 <= t <= t1])


def one_run(a, lab: Lab, work: str, rate: str, n: int) -> dict:
    link = bits(rate) / 8.0
    work = os.path.join(work, f"run-{rate}-{n}")
    os.makedirs(work)
    src = os.path.join(work, "src.bin")
    make_file(src, int(link * (a.alone + a.compete + a.after + 30)), seed=11)
    ours = Ours(lab, work, a.bin)
    ours.start_server()
    sink_dir = os.path.join(work, "sink")
    os.makedirs(sink_dir)
    procs = [lab.popen("server", [sys.executable, os.path.join(LAB, "rawsink.py"), str(SINK_PORT),
                                  sink_dir], stdout=subprocess.DEVNULL),
             lab.popen("server", [sys.executable, "-m", "http.server", str(PROBE_PORT), "--bind",
                                  lab.srv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=work)]
    owd_rx = lab.popen("server", [sys.executable, os.path.join(LAB, "owd.py"), "recv",
                                  str(OWD_PORT)], stdout=subprocess.PIPE, text=True)
    procs.append(owd_rx)
    owd_lines = Lines(owd_rx.stdout)
    for _ in range(50):
        listening = lab.run("server", ["ss", "-Hltn"])
        if f":{PROBE_PORT} " in listening and f":{SINK_PORT} " in listening:
            break
        time.sleep(0.2)
    # A datagram is 58 bytes on the wire: at most 1.5 % of the link, and ten a second at most.
    interval = max(0.1, 58 / (0.015 * link))
    procs.append(lab.popen("client", [sys.executable, os.path.join(LAB, "owd.py"), "send",
                                      lab.srv, str(OWD_PORT), f"{interval:.3f}"]))
    wall = time.time() - time.monotonic()  # probe.py stamps wall-clock time
    probe, probe_file = probe_run(lab, work, rate)
    res = {"rate": rate, "owd_interval_s": round(interval, 3)}
    tcp = None
    client = None
    try:
        time.sleep(a.idle)
        m0 = time.monotonic()
        env = dict(lab.env, UPLOAD_DB=os.path.join(work, "client.db"),
                   RUST_LOG="warn,upload::polite=trace")
        client = lab.popen("client", [*ours.send_argv(src, "--polite"), "--log-format", "json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        out, err = Lines(client.stdout), Lines(client.stderr)
        tcp = TcpInfo(lab)
        time.sleep(a.alone)
        m1 = time.monotonic()
        compete = lab.popen("client", [sys.executable, os.path.join(LAB, "rawput.py"), lab.srv,
                                       str(SINK_PORT), "--for", str(a.compete)])
        compete.wait(a.compete + 30)
        m2 = time.monotonic()
        time.sleep(a.after)
        m3 = time.monotonic()
        res["client_running"] = client.poll() is None
    finally:
        if tcp:
            tcp.stop.set()
        stop_process(client)
        stop_process(probe)
        for p in procs:
            stop_process(p)
        ours.stop_server()
        os.unlink(src)

    owd = []
    for _, line in owd_lines.lines:
        at, sent, _ = line.split()
        owd.append((float(sent), (float(at) - float(sent)) * 1000))
    base_owd = min(v for _, v in owd)
    true = [(t, v - base_owd) for t, v in owd]
    # The same datagrams as a server-timestamped probe would report them: known when they
    # arrive (plus a downlink trip back to the client, nothing in this lab), not when sent.
    stamped = sorted((t + v / 1000, v - base_owd) for t, v in owd)
    ticks = []
    for t, line in err.lines:
        try:
            f = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if f.get("message") == "polite tick":
            ticks.append((t, f))
    controller = [(t, f["queue_delay_ms"]) for t, f in ticks]
    raw = [(t, f["rtt_ms"] - f["min_rtt_ms"]) for t, f in ticks]
    kernel = [(t, srtt - minrtt) for t, srtt, minrtt in tcp.samples]
    connects = []
    for line in open(probe_file):
        ts, connect, _ = (float(x) for x in line.split())
        if connect >= 0:
            connects.append((ts - wall, connect))
    idle = latency_stats([c for t, c in connects if t < m0])
    base_connect = idle.get("median_ms", 0.0)
    others = [(t, c - base_connect) for t, c in connects]
    res["idle_connect"] = idle
    res["base_owd_ms"] = round(base_owd, 2)
    retries = [e for _, line in out.lines for e in [json.loads(line)] if e.get("event") == "retry"]
    res["retries"] = len(retries)

    grid = [m0 + 5 + i * GRID for i in range(int((m3 - m0 - 5) / GRID))]
    true_g = on_grid(true, grid, max(0.5, 3 * interval))
    signals = {"true one-way queue (datagrams)": true,
               "server-stamped probe (by arrival)": stamped,
               "controller's queue_delay": controller,
               "controller's raw rtt - min_rtt": raw,
               "kernel srtt - min_rtt (ss)": kernel,
               "others' connect - idle base": others}
    res["signals"] = {}
    for name, series in signals.items():
        row = {"alone": stats(series, m0 + 10, m1), "competing": stats(series, m1, m2),
               "after": stats(series, m2, m3), "samples": len(series)}
        if name != "true one-way queue (datagrams)":
            # The connect probe comes every 0.5 s, the others every 0.1 s.
            row["vs_true"] = against(true_g, on_grid(series, grid, 1.1), grid)
        res["signals"][name] = row
    res["phases_s"] = {"alone": round(m1 - m0, 1), "competing": round(m2 - m1, 1),
                       "after": round(m3 - m2, 1)}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="128kbit,1mbit", help="comma-separated tc rates")
    ap.add_argument("--buffer", default="2s", help="the modem's buffer (tbf latency)")
    ap.add_argument("--runs", type=int, default=1, help="runs per rate")
    ap.add_argument("--idle", type=float, default=15, help="seconds with no upload first")
    ap.add_argument("--alone", type=float, default=40, help="seconds of our upload alone")
    ap.add_argument("--compete", type=float, default=20, help="seconds of the competing upload")
    ap.add_argument("--after", type=float, default=15, help="seconds after it stops")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.realpath(__file__))), "target", "release", "upload"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--report", metavar="FILE", help="print the tables of a saved --json output")
    a = ap.parse_args()
    if a.report:
        report(json.load(open(a.report)), a.buffer)
        return 0
    if os.geteuid() != 0:
        sys.exit("bench_polite_signal.py needs root (network namespaces)")
    env = dict(os.environ, SLOWLINK_PREFIX=os.environ.get("SLOWLINK_PREFIX", "upsig"),
               SLOWLINK_NET=os.environ.get("SLOWLINK_NET", "10.77.17"))
    lab = Lab(env, keep=False)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-polite-signal-") as work:
        os.chmod(work, 0o755)
        try:
            for rate in a.rates.split(","):
                burst = "64kb" if bits(rate) >= 5e6 else None
                lab.up(rate=rate, latency=a.buffer, burst=burst)
                for i in range(a.runs):
                    log(f"{rate}: run {i + 1}/{a.runs}")
                    results.append(one_run(a, lab, work, rate, i))
        finally:
            lab.down()
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    report(results, a.buffer)
    return 0


def report(results: list, buffer: str) -> None:
    for r in results:
        ic = r["idle_connect"]
        print(f"\n{r['rate']}, {buffer} buffer: idle link connect {ic.get('median_ms')} / "
              f"{ic.get('p95_ms')} ms (median / p95), base one-way {r['base_owd_ms']} ms, "
              f"datagrams every {r['owd_interval_s']} s, retries {r['retries']}")
        rows = []
        for name, s in r["signals"].items():
            v = s.get("vs_true", {})
            ph = lambda p: f"{s[p].get('median_ms')} / {s[p].get('p95_ms')}"  # noqa: E731
            rows.append([name, ph("alone"), ph("competing"), ph("after"), v.get("mae_ms"),
                         v.get("r"), v.get("lag_s"), v.get("r_at_lag"), v.get("mae_at_lag_ms")])
        print(table(["signal (ms)", "alone med / p95", "competing med / p95", "after med / p95",
                     "MAE vs true", "r", "lag s", "r at lag", "MAE at lag"], rows))


if __name__ == "__main__":
    sys.exit(main())
