#!/usr/bin/env python3
"""anchor_bench.py TOOL FILE [options]: time one upload by an established tool across the lab
(receivers from `anchors start`) and print one JSON object, so `upload` is compared with them
on the same link in the same run.

TOOL: raw rsync rsyncd scp sftp rclone-sftp rclone-dav curl-dav
  raw          rawput.py -> rawsink.py, plain TCP: the ceiling
  rsync        rsync over ssh; rsyncd: to the rsync daemon
  scp, sftp    OpenSSH; rclone-sftp, rclone-dav: rclone copyto; curl-dav: curl -T to webdav

options:
  --mode link|loop  link: from the client namespace across the shaped link (default);
                    loop: inside the server namespace over 127.0.0.1 (unshaped)
  --limit KIB       the tool's own limit in KiB/s (rsync --bwlimit, scp/sftp -l, rclone
                    --bwlimit, curl --limit-rate)
  --probe           run probe.py from the client namespace against the webdav port: --idle
                    seconds before the upload, then during it
  --idle SECS       idle probing time (default 10)

Output keys: tool, mode, limit_kib, bytes, rc, ok (the received copy's sha256 matches), wall_s,
first_byte_s and data_phase_s (first to last byte seen in the receiver's directory, sampled
every 100 ms), client_cpu_s, server_cpu_s (the receivers' processes), wire_rx_bytes (arriving
at the server's interface), tbf_drops (the uplink's), argv, and with --probe probe_idle and
probe_busy ({connect, request}: n, failed, median_ms, p95_ms, max_ms).
Environment: SLOWLINK_PREFIX (the lab), LINKLAB_STATE (as for anchors).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # scripts/, for benchlib

from benchlib import probe_lines, proc_cpu, sha256_file  # noqa: E402

PREFIX = os.environ.get("SLOWLINK_PREFIX", "slowlink")
STATE = os.environ.get("LINKLAB_STATE", f"/dev/shm/linklab-{PREFIX}")
SLOWLINK = os.path.join(HERE, "slowlink")
RECEIVERS = ("sshd", "rsyncd", "webdav", "rawsink")
TOOLS = ("raw", "rsync", "rsyncd", "scp", "sftp", "rclone-sftp", "rclone-dav", "curl-dav")


def lab_env() -> dict[str, str]:
    """The LAB_* variables `anchors start` wrote."""
    path = os.path.join(STATE, "env")
    if not os.path.exists(path):
        sys.exit(f"anchor_bench.py: no {path}: run `anchors start` in lab {PREFIX} first")
    out = {}
    for line in open(path):
        for pair in line.split()[1:]:
            key, value = pair.split("=", 1)
            out[key] = value
    return out


def argv_for(tool: str, path: str, lab: dict, host: str, ip: str, limit: int | None) -> list[str]:
    """The command that uploads `path` with `tool`; host is the ssh/rclone alias (lab or lo)."""
    name, dest, ssh = os.path.basename(path), lab["LAB_DEST"], lab["LAB_SSH_CONFIG"]
    if tool == "raw":
        return [sys.executable, os.path.join(HERE, "rawput.py"), ip, "9000", path]
    if tool == "rsync":
        return ["rsync", "-e", f"ssh -F {ssh}"] + ([f"--bwlimit={limit}"] if limit else []) + [
            path, f"{host}:{dest}/"]
    if tool == "rsyncd":
        return ["rsync"] + ([f"--bwlimit={limit}"] if limit else []) + [
            path, f"rsync://{ip}:8873/dest/"]
    if tool in ("scp", "sftp"):
        speed = ["-l", str(limit * 8)] if limit else []  # Kbit/s, K = 1024
        if tool == "scp":
            return ["scp", "-F", ssh] + speed + [path, f"{host}:{dest}/"]
        batch = os.path.join(STATE, "sftp.batch")
        with open(batch, "w") as f:
            f.write(f"put {path} {dest}/{name}\n")
        return ["sftp", "-q", "-F", ssh] + speed + ["-b", batch, host]
    if tool in ("rclone-sftp", "rclone-dav"):
        target = f"{host}sftp:{dest}/{name}" if tool == "rclone-sftp" else f"{host}dav:{name}"
        return ["rclone", "copyto", path, target] + (["--bwlimit", f"{limit}k"] if limit else [])
    if tool == "curl-dav":
        return ["curl", "-sS", "-f", "-o", "/dev/null", "-T", path] + (
            ["--limit-rate", f"{limit}k"] if limit else []) + [f"http://{ip}:8080/{name}"]
    sys.exit(f"anchor_bench.py: unknown tool {tool!r}; one of {', '.join(TOOLS)}")


def dir_bytes(d: str) -> int:
    """Bytes in the receiver's directory, temporary files included (rsync's .name.XXXX)."""
    total = 0
    for e in os.scandir(d):
        try:
            total += e.stat().st_size if e.is_file() else 0
        except FileNotFoundError:  # renamed into place between scandir and stat
            pass
    return total


def rx_bytes(pid: int, dev: str) -> int:
    """Bytes received by `dev` in the network namespace of `pid`."""
    try:
        for line in open(f"/proc/{pid}/net/dev"):
            name, _, counters = line.partition(":")
            if name.strip() == dev:
                return int(counters.split()[0])
    except OSError:
        pass
    return 0


def tbf_drops() -> int | None:
    out = subprocess.run(["tc", "-n", f"{PREFIX}-modem", "-s", "qdisc", "show", "dev", "wan"],
                         capture_output=True, text=True).stdout
    if not out.startswith("qdisc tbf") or "dropped" not in out:
        return None
    return int(out.split("dropped", 1)[1].split(",")[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tool", choices=TOOLS)
    ap.add_argument("file")
    ap.add_argument("--mode", choices=("link", "loop"), default="link")
    ap.add_argument("--limit", type=int, help="the tool's own limit, KiB/s")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--idle", type=float, default=10)
    a = ap.parse_args()

    lab = lab_env()
    dest = lab["LAB_DEST"]
    link = a.mode == "link"
    src = os.path.abspath(a.file)
    argv = argv_for(a.tool, src, lab, "lab" if link else "lo",
                    lab["LAB_SRV"] if link else "127.0.0.1", a.limit)
    receivers = []
    for name in RECEIVERS:
        try:
            receivers.append(int(open(os.path.join(STATE, f"{name}.run.pid")).read()))
        except (OSError, ValueError):
            pass
    if not receivers:
        sys.exit(f"anchor_bench.py: no receivers running in lab {PREFIX}: `anchors start` first")
    for e in os.scandir(dest):
        os.unlink(e.path)
    size = os.path.getsize(src)
    dev = "lab0" if link else "lo"

    probe = probe_out = None
    if a.probe:
        probe_out = os.path.join(STATE, "probe.txt")
        probe = subprocess.Popen([SLOWLINK, "exec", "client", sys.executable,
                                  os.path.join(HERE, "probe.py"), lab["LAB_SRV"], "8080", "0.5"],
                                 stdout=open(probe_out, "w"))
        # The idle period starts with the probe's first line: on a loaded machine starting
        # Python inside the namespace can take seconds, which left no idle samples at all.
        ready = time.monotonic() + 20
        while os.path.getsize(probe_out) == 0 and time.monotonic() < ready:
            time.sleep(0.05)
        time.sleep(a.idle)

    drops0 = tbf_drops() if link else None
    cpu0 = sum(proc_cpu(p, children=True) for p in receivers)
    rx0 = rx_bytes(receivers[0], dev)
    client_log = open(os.path.join(STATE, f"client-{a.tool}.log"), "w")
    env = dict(os.environ, RCLONE_CONFIG=lab["RCLONE_CONFIG"])
    t_start, m0 = time.time(), time.monotonic()
    p = subprocess.Popen([SLOWLINK, "exec", "client" if link else "server", *argv], env=env,
                         stdin=subprocess.DEVNULL, stdout=client_log, stderr=subprocess.STDOUT)
    samples = []  # (seconds since start, bytes in dest)
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        samples.append((time.monotonic() - m0, dir_bytes(dest)))
        time.sleep(0.1)
    wall = time.monotonic() - m0
    t_end = time.time()
    samples.append((wall, dir_bytes(dest)))
    time.sleep(1)  # the receivers finish writing and reap their workers
    if probe:
        time.sleep(2)
        probe.terminate()
        probe.wait()
    client_log.close()

    target = os.path.join(dest, "raw.bin" if a.tool == "raw" else os.path.basename(src))
    res = {"lab": PREFIX, "tool": a.tool, "mode": a.mode, "limit_kib": a.limit, "bytes": size,
           "rc": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 2),
           "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
           "server_cpu_s": round(sum(proc_cpu(p, children=True) for p in receivers) - cpu0, 2),
           "wire_rx_bytes": rx_bytes(receivers[0], dev) - rx0, "argv": argv,
           "ok": os.path.exists(target) and os.path.getsize(target) == size
           and sha256_file(target) == sha256_file(src)}
    if link:
        drops1 = tbf_drops()
        res["tbf_drops"] = None if drops0 is None or drops1 is None else drops1 - drops0
    growing = [t for t, b in samples if b > 0]
    full = [t for t, b in samples if b >= size]
    if growing:
        res["first_byte_s"] = round(growing[0], 2)
        res["data_phase_s"] = round((full[0] if full else samples[-1][0]) - growing[0], 2)
    if probe:
        split = probe_lines(probe_out, t_start, t_end)
        res["probe_idle"], res["probe_busy"] = split["idle"], split["busy"]
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
