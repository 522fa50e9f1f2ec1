#!/usr/bin/env python3
"""bench_polite.py - polite mode on a shaped uplink with a deep modem buffer, in figures.

For each link rate (default 128kbit, 1mbit, 10mbit; a 2 s modem buffer, the project's lab in
scripts/linklab), one run of `upload send --polite` against our server, timed phase by phase:

  alone        the first --alone seconds: our share of the link (server-side TCP payload per
               second over the link rate, from 10 s in) and other traffic's TCP connect time
               (probe.py against a listener of its own, every 0.5 s), median and p95;
  competitor   a bulk TCP upload (rawput.py --for --compete to rawsink.py) starts: its share
               from 10 s after its start to its end (target >= 90 %);
  after        it stops: seconds until our share is back above 70 % over one second
               (target <= 5 s), and whether our upload ever stalled or failed.

Beside it, the same alone phase unthrottled (plain `upload send`): its share and the connect
time other traffic sees, the figure polite mode exists to fix. Targets (issue 15): alone >= 90 %
of the link with connect median <= 100 ms; competitor >= 90 %; back >= 70 % within 5 s.

Needs root, iproute2, iptables, python3, a release build (cargo build --release).
  sudo scripts/bench_polite.py                      # three rates, about 8 minutes
  sudo scripts/bench_polite.py --rates 128kbit --runs 3 --json
  sudo scripts/bench_polite.py --rates 128kbit --no-unthrottled --variant-bin ../b/upload
environment: SLOWLINK_PREFIX (default upp), SLOWLINK_NET (default 10.77.11).
"""
import argparse
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
from bench_link import LAB, PORT, PROBE_PORT, Lab, Ours, RxSampler, probe_run  # noqa: E402
from benchlib import latency_stats, log, make_file, table  # noqa: E402

SINK_PORT = 9000
UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def bits(rate: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(kbit|mbit|gbit)", rate)
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {rate!r} (e.g. 128kbit, 1mbit)")
    return float(m.group(1)) * UNITS[m.group(2)]


def rate_series(sampler: RxSampler, t0: float, t1: float, step: float = 1.0) -> list[float]:
    """Bytes per second received in each `step` between t0 and t1."""
    out, t = [], t0
    while t + step <= t1:
        a = [b for tt, b in sampler.samples if tt <= t]
        b = [b for tt, b in sampler.samples if tt <= t + step]
        if a and b:
            out.append((b[-1] - a[-1]) / step)
        t += step
    return out


def mean_rate(sampler: RxSampler, t0: float, t1: float) -> float | None:
    a = [b for tt, b in sampler.samples if tt <= t0]
    b = [b for tt, b in sampler.samples if tt <= t1]
    return (b[-1] - a[-1]) / (t1 - t0) if a and b and t1 > t0 else None


def connect_stats(path: str, t0: float, t1: float) -> dict:
    ms = []
    for line in open(path):
        ts, connect, _ = (float(x) for x in line.split())
        if t0 <= ts <= t1:
            ms.append(connect)
    return latency_stats(ms)


def one_run(a, lab: Lab, work: str, rate: str, polite: bool, n: int = 0, bin_: str | None = None,
            label: str = "") -> dict:
    link = bits(rate) / 8.0  # bytes per second on the wire
    # A directory of its own: a fresh server inbox and client database, so a run never meets
    # the last one's interrupted transfer (the same path, rewritten, is a changed source).
    work = os.path.join(work, f"run-{rate}-{'polite' if polite else 'plain'}-{n}{label}")
    os.makedirs(work)
    total = a.alone + (a.compete + a.after if polite else 0)
    src = os.path.join(work, f"src-{rate}-{polite}.bin")
    make_file(src, int(link * (total + 30)), seed=7)
    ours = Ours(lab, work, bin_ or a.bin)
    ours.start_server()
    sink_dir = os.path.join(work, "sink")
    os.makedirs(sink_dir, exist_ok=True)
    procs = [lab.popen("server", [sys.executable, os.path.join(LAB, "rawsink.py"), str(SINK_PORT),
                                  sink_dir], stdout=subprocess.DEVNULL),
             lab.popen("server", [sys.executable, "-m", "http.server", str(PROBE_PORT), "--bind",
                                  lab.srv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=work)]
    for _ in range(50):
        listening = lab.run("server", ["ss", "-Hltn"])
        if f":{PROBE_PORT} " in listening and f":{SINK_PORT} " in listening:
            break
        time.sleep(0.2)
    ours_rx, sink_rx = RxSampler(lab, PORT), RxSampler(lab, SINK_PORT)
    ours_rx.start()
    sink_rx.start()
    probe, probe_file = probe_run(lab, work, f"{rate}-{polite}")
    res = {"rate": rate, "polite": polite, "bin": label or "current"}
    try:
        time.sleep(2)
        m0, w0 = time.monotonic(), time.time()
        c = ours.client(src, *(["--polite"] if polite else []), tag=f"{rate}-{polite}")
        time.sleep(a.alone)
        m1, w1 = time.monotonic(), time.time()
        res["alone_share"] = share(mean_rate(ours_rx, m0 + 10, m1), link)
        res["alone_connect"] = connect_stats(probe_file, w0 + 10, w1)
        if polite:
            compete = lab.popen("client", [sys.executable, os.path.join(LAB, "rawput.py"), lab.srv,
                                           str(SINK_PORT), "--for", str(a.compete)])
            compete.wait(a.compete + 30)
            m2 = time.monotonic()
            res["competitor_share"] = share(mean_rate(sink_rx, m1 + 10, m2), link)
            res["ours_while_competing"] = share(mean_rate(ours_rx, m1 + 10, m2), link)
            time.sleep(a.after)
            m3 = time.monotonic()
            series = rate_series(ours_rx, m2, m3, 0.5)
            back = None
            for i in range(1, len(series)):  # one second: two half-second steps
                if (series[i - 1] + series[i]) / 2 >= 0.7 * link:
                    back = (i + 1) * 0.5
                    break
            res["back_above_70_s"] = back
            res["after_share"] = share(mean_rate(ours_rx, m3 - 5, m3), link)
        running = c.p.poll() is None
        failed = [e for _, e in c.events if e.get("event") == "retry"]
        res["stalled_or_failed"] = (not running and c.p.returncode != 0) or any(
            "stalled" in str(e.get("error", "")) or "moved no data" in str(e.get("error", ""))
            for e in failed)
        res["retries"] = len(failed)
        states = [e.get("polite", {}).get("state") for _, e in c.events if e.get("event") == "progress"]
        res["polite_states_seen"] = sorted({s for s in states if s})
        if a.timeline:
            res["timeline"] = [(round(t - c.t0, 1), e.get("offset"), e)
                               for t, e in c.events if e.get("event") in ("progress", "polite")]
        c.kill()
    finally:
        probe.terminate()
        for p in procs:
            p.terminate()
        ours_rx.stop.set()
        sink_rx.stop.set()
        ours.stop_server()
        os.unlink(src)
    return res


def competitor_alone(a, lab: Lab, work: str, rate: str) -> dict:
    """The bulk TCP upload alone on the link: the most it can take, beside its share against
    polite mode."""
    link = bits(rate) / 8.0
    sink_dir = os.path.join(work, "sink")
    os.makedirs(sink_dir, exist_ok=True)
    sink = lab.popen("server", [sys.executable, os.path.join(LAB, "rawsink.py"), str(SINK_PORT),
                                sink_dir], stdout=subprocess.DEVNULL)
    for _ in range(50):
        if f":{SINK_PORT} " in lab.run("server", ["ss", "-Hltn"]):
            break
        time.sleep(0.2)
    rx = RxSampler(lab, SINK_PORT)
    rx.start()
    try:
        m1 = time.monotonic()
        p = lab.popen("client", [sys.executable, os.path.join(LAB, "rawput.py"), lab.srv,
                                 str(SINK_PORT), "--for", str(a.compete)])
        p.wait(a.compete + 30)
        m2 = time.monotonic()
        return {"rate": rate, "competitor_alone_share": share(mean_rate(rx, m1 + 10, m2), link)}
    finally:
        rx.stop.set()
        sink.terminate()
        time.sleep(3)  # its queue drains before the next case


def share(rate: float | None, link: float) -> float | None:
    return None if rate is None else round(100.0 * rate / link, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="128kbit,1mbit,10mbit", help="comma-separated tc rates")
    ap.add_argument("--buffer", default="2s", help="the modem's buffer (tbf latency)")
    ap.add_argument("--runs", type=int, default=1, help="polite runs per rate")
    ap.add_argument("--alone", type=float, default=40, help="seconds alone on the link")
    ap.add_argument("--compete", type=float, default=30, help="seconds of the competing upload")
    ap.add_argument("--after", type=float, default=12, help="seconds after it stops")
    ap.add_argument("--no-unthrottled", action="store_true", help="skip the unthrottled reference")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.realpath(__file__))), "target", "release", "upload"))
    ap.add_argument("--variant-bin", metavar="PATH",
                    help="a second build to compare: each polite run is followed by one of it, "
                         "interleaved in one lab")
    ap.add_argument("--route-quickack", action="store_true",
                    help="no delayed ACKs on the server's side of the lab (an experiment)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--timeline", action="store_true",
                    help="with --json: every progress event of our client (offset, polite state)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_polite.py needs root (network namespaces)")
    env = dict(os.environ, SLOWLINK_PREFIX=os.environ.get("SLOWLINK_PREFIX", "upp"),
               SLOWLINK_NET=os.environ.get("SLOWLINK_NET", "10.77.11"))
    lab = Lab(env, keep=False)
    results = []
    alone: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-polite-") as work:
        os.chmod(work, 0o755)
        try:
            for rate in a.rates.split(","):
                burst = "64kb" if bits(rate) >= 5e6 else None
                lab.up(rate=rate, latency=a.buffer, burst=burst)
                if a.route_quickack:
                    for line in lab.run("server", ["ip", "route", "show"]).splitlines():
                        if "lab0" in line and "proto kernel" in line:
                            subprocess.run(["ip", "netns", "exec", f"{lab.prefix}-server", "ip",
                                            "route", "change", *line.split(), "quickack", "1"],
                                           check=True)
                if not a.no_unthrottled:
                    log(f"{rate}: unthrottled, alone")
                    results.append(one_run(a, lab, work, rate, polite=False))
                    log(f"{rate}: the competing upload alone")
                    alone[rate] = competitor_alone(a, lab, work, rate)["competitor_alone_share"]
                for i in range(a.runs):
                    log(f"{rate}: polite run {i + 1}/{a.runs}")
                    results.append(one_run(a, lab, work, rate, polite=True, n=i))
                    if a.variant_bin:
                        log(f"{rate}: polite run {i + 1}/{a.runs}, {a.variant_bin}")
                        results.append(one_run(a, lab, work, rate, polite=True, n=i,
                                               bin_=a.variant_bin, label="variant"))
        finally:
            lab.down()
    for r in results:
        r["competitor_alone_share"] = alone.get(r["rate"])
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    rows = []
    for r in results:
        ac = r["alone_connect"]
        mode = "polite" if r["polite"] else "unthrottled"
        if r.get("bin", "current") != "current":
            mode += f" ({r['bin']})"
        rows.append([r["rate"], mode, r["alone_share"],
                     f"{ac.get('median_ms')} / {ac.get('p95_ms')}",
                     f"{r.get('competitor_share')} (alone {r.get('competitor_alone_share')})"
                     if r["polite"] else None,
                     r.get("ours_while_competing"), r.get("back_above_70_s"),
                     "yes" if r["stalled_or_failed"] else "no"])
    print(table(["link", "mode", "alone % of link", "others' connect ms med / p95",
                 "competitor %", "ours while competing %", "back >70 % after (s)", "stall/fail"],
                rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
