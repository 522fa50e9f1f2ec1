#!/usr/bin/env python3
"""ssh:// on loopback, beside the tools a maintainer would otherwise use over the same ssh.

Starts a throwaway sshd on 127.0.0.1 (its own host and user keys in a temp dir, as the tests'
helper does; run as root or as a user sshd accepts), then:

  overhead    ssh's framing: bytes ssh writes to its TCP socket per payload byte it reads from
              stdin (`/proc/PID/io` wchar of the ssh client), with the default cipher. This is
              the figure `estimate`'s wire model uses for ssh:// (SSH_OVERHEAD_PER_MIB).
  speed       a FILE (default 256 MiB, in /dev/shm) by `upload send ssh://...` (release build),
              `rsync -e ssh` and `scp`, interleaved over --repeat rounds, each verified by
              SHA-256 on arrival; median throughput and client CPU per GiB.

  pacing      `upload send ssh://... --limit 16KiB/s` for 60 s on loopback, seen below ssh:
              bytes sshd's TCP received (ss bytes_received, every 100 ms): the mean against the
              limit (ssh's framing included) and the busiest 1-s window against the mean.
  lab         (root) on the shaped 128 kbit/s link of scripts/linklab, with sshd in the server
              namespace (`anchors`): the goodput of a 4 MiB upload over ssh beside rsync over
              the same sshd, and a 60 s silent cut mid-transfer (data flowing again after the
              restore), computed by bench_link.py's own cases with ssh:// as the destination.

  scripts/bench_ssh.py [--size 256MiB] [--repeat 3] [--only overhead|speed|lab]

Python 3.11 stdlib only; needs sshd, ssh, ssh-keygen, rsync, scp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UPLOAD = ROOT / "target" / "release" / "upload"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """sshd on a free loopback port with throwaway keys; `self.ssh` is the client command."""

    def __init__(self, work: Path):
        self.keys = work / "ssh"
        self.keys.mkdir()
        for key in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.keys / key)], check=True)
        shutil.copy(self.keys / "user_key.pub", self.keys / "authorized_keys")
        os.makedirs("/run/sshd", exist_ok=True)
        self.port = free_port()
        config = self.keys / "sshd_config"
        k = self.keys
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {k}/host_key\n"
            f"PidFile {k}/sshd.pid\nAuthorizedKeysFile {k}/authorized_keys\nStrictModes no\n"
            "PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"UsePAM no\nSubsystem sftp internal-sftp\n"
            f"SetEnv PATH={UPLOAD.parent}:/usr/local/bin:/usr/bin:/bin\n")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                     stderr=open(k / "sshd.log", "w"))
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        host_key = (k / "host_key.pub").read_text()
        (k / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key}")
        client = k / "ssh_config"
        client.write_text(
            f"Host *\n  Port {self.port}\n  IdentityFile {k}/user_key\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {k}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n")
        self.ssh = f"ssh -F {client}"

    def stop(self):
        bl.stop_process(self.proc)


def overhead(sshd: Sshd, work: Path, size: int) -> dict:
    """Bytes ssh wrote to its socket per payload byte, and the cipher it chose."""
    src = work / "overhead.bin"
    bl.make_file(src, size, seed=5)
    # The remote side lingers a second after the data, so the client's counters can be read.
    p = subprocess.Popen(sshd.ssh.split() + ["-v", "127.0.0.1", "cat > /dev/null; sleep 1"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(src, "rb") as f:
        while block := f.read(1 << 20):
            p.stdin.write(block)
    p.stdin.close()
    time.sleep(0.5)
    io = dict(line.split(": ") for line in open(f"/proc/{p.pid}/io").read().splitlines())
    wchar = int(io["wchar"])
    err = p.stderr.read().decode(errors="replace")
    p.wait()
    cipher = next((line.split("cipher: ")[1].split()[0] for line in err.splitlines()
                   if "cipher:" in line and "client->server" in line), "?")
    # wchar also counts ssh's -v lines on stderr; take them off.
    wire = wchar - len(err.encode())
    return {"payload": size, "socket_bytes": wire, "cipher": cipher,
            "overhead_per_mib": round((wire - size) / (size / bl.MIB), 1),
            "ratio": round(wire / size, 5)}


def run_timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its children, ssh included)."""
    t0 = time.time()
    before = os.times()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    after = os.times()
    return (time.time() - t0,
            (after.children_user - before.children_user)
            + (after.children_system - before.children_system))


def speed(sshd: Sshd, work: Path, size: int, repeat: int) -> dict:
    shm = Path(tempfile.mkdtemp(prefix="bench_ssh.", dir="/dev/shm"))
    try:
        src = shm / "image.bin"
        digest = bl.make_file(src, size, seed=9)
        inbox = shm / "inbox"
        results: dict[str, list[tuple[float, float]]] = {"upload": [], "rsync": [], "scp": []}
        for round_ in range(repeat):
            for tool in results:
                if inbox.exists():
                    shutil.rmtree(inbox)
                inbox.mkdir()
                db = work / f"state.{tool}.{round_}.db"
                if tool == "upload":
                    env = dict(os.environ, UPLOAD_DB=str(db))
                    cmd = [str(UPLOAD), "send", str(src), f"ssh://127.0.0.1:{sshd.port}{inbox}/",
                           "--ssh-command", sshd.ssh]
                elif tool == "rsync":
                    env = None
                    cmd = ["rsync", "-e", sshd.ssh, str(src), f"127.0.0.1:{inbox}/"]
                else:
                    env = None
                    cmd = ["scp", "-q", "-F", sshd.ssh.split()[-1], str(src),
                           f"127.0.0.1:{inbox}/"]
                wall, cpu = run_timed(cmd, env)
                got = bl.sha256_file(inbox / "image.bin")
                assert got == digest, f"{tool}: the copy differs"
                results[tool].append((wall, cpu))
                bl.log(f"round {round_ + 1} {tool}: {size / wall / bl.MIB:.1f} MiB/s, "
                       f"{cpu:.2f} CPU s")
        out = {}
        for tool, xs in results.items():
            wall = statistics.median(x[0] for x in xs)
            cpu = statistics.median(x[1] for x in xs)
            out[tool] = {"MiB_per_s": round(size / wall / bl.MIB, 1),
                         "client_cpu_s_per_GiB": round(cpu / (size / bl.GIB), 2),
                         "rounds": [round(size / w / bl.MIB, 1) for w, _ in xs]}
        return out
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def sshd_received(port: int) -> int:
    """Bytes sshd's TCP connections on `port` received, summed (ss -tin)."""
    out = subprocess.run(["ss", "-HtinO", "state", "all", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return sum(int(m) for m in __import__("re").findall(r"bytes_received:(\d+)", out))


def pacing(sshd: Sshd, work: Path, seconds: float = 60, limit: int = 16 * bl.KIB) -> dict:
    src = work / "paced.bin"
    bl.make_file(src, int(limit * (seconds + 30)), seed=11)
    inbox = work / "paced-inbox"
    inbox.mkdir()
    env = dict(os.environ, UPLOAD_DB=str(work / "paced.db"))
    p = subprocess.Popen([str(UPLOAD), "send", str(src), f"ssh://127.0.0.1:{sshd.port}{inbox}/",
                          "--ssh-command", sshd.ssh, "--limit", "16KiB/s"], env=env,
                         stderr=subprocess.DEVNULL)
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds + 5:
        samples.append((time.monotonic() - t0, sshd_received(sshd.port)))
        time.sleep(0.1)
    bl.stop_process(p)
    # From 5 s on (the session's start and the first chunk's ramp are not pacing).
    window = [(t, b) for t, b in samples if t >= 5]
    (ta, ba), (tb, bb) = window[0], window[-1]
    mean = (bb - ba) / (tb - ta)
    busiest = 0.0
    for i, (t, b) in enumerate(window):
        j = next((k for k in range(i, len(window)) if window[k][0] >= t + 1.0), None)
        if j is None:
            break
        busiest = max(busiest, (window[j][1] - b) / (window[j][0] - t))
    return {"limit_Bps": limit, "seconds": round(tb - ta, 1), "mean_Bps": round(mean),
            "mean_pct_of_limit": round(100 * mean / limit, 2),
            "busiest_1s_over_mean": round(busiest / mean, 2)}


def lab(args) -> dict:
    """bench_link.py's goodput and outage cases, with the destination over the lab's sshd."""
    import bench_link as bk

    env = dict(os.environ)
    env.setdefault("SLOWLINK_PREFIX", "sshb")
    env.setdefault("SLOWLINK_NET", "10.77.19")
    os.environ.update(SLOWLINK_PREFIX=env["SLOWLINK_PREFIX"], SLOWLINK_NET=env["SLOWLINK_NET"])
    state = env.get("LINKLAB_STATE", f"/dev/shm/linklab-{env['SLOWLINK_PREFIX']}")
    ssh_config = f"{state}/ssh_config"

    class OverSsh(bk.Ours):
        """Our client to ssh://lab/STATE/dest/ssh/ through the anchors' sshd: no server of
        ours to start, the remote side is `upload serve --stdio` started by ssh."""

        def start_server(self):
            # Beside the anchors' dest/, which anchor_bench.py empties before each run.
            self.dir = f"{state}/ssh-inbox"
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            self.url = f"ssh://lab{self.dir}/"
            # bench_link.py counts the server's interruptions in its log: the remote servers'
            # logs go to the client's stderr (ssh's), so there is none to read here.
            self.server_log = open(os.path.join(self.work, "server.log"), "w")

        def stop_server(self):
            pass

        def send_argv(self, path, *opts):
            return [self.bin, "send", path, self.url, "--ssh-command", f"ssh -F {ssh_config}",
                    "--remote-upload", self.bin, "--json", *opts]

    bk.Ours = OverSsh
    bk.PORT = 2222  # the receiver's bytes are counted on sshd's port
    lab = bk.Lab(env, keep=False)
    work = Path(tempfile.mkdtemp(prefix="bench_ssh_lab."))
    a = argparse.Namespace(goodput_size=4 * bl.MIB, outage_size=2 * bl.MIB, chunk=None,
                           bin=str(UPLOAD), anchors=["rsync"], cut_seconds=args.cut_seconds,
                           cut_at=0.4)
    out = {}
    try:
        for name, case in (("goodput", bk.case_goodput), ("outage", bk.case_outage)):
            lab.up()
            lab.anchors()
            case_dir = work / name
            case_dir.mkdir()
            bl.log(f"lab case {name}")
            out[name] = case(a, lab, str(case_dir))
            lab.down()
    finally:
        lab.down()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256MiB", type=bl.parse_size)
    ap.add_argument("--repeat", default=3, type=int)
    ap.add_argument("--only", choices=["overhead", "speed", "pacing", "lab"])
    ap.add_argument("--cut-seconds", type=float, default=60)
    args = ap.parse_args()
    if args.only == "lab":
        print(json.dumps(lab(args), indent=2))
        return
    if not UPLOAD.exists():
        sys.exit(f"build first: cargo build --release ({UPLOAD} is missing)")
    work = Path(tempfile.mkdtemp(prefix="bench_ssh."))
    sshd = Sshd(work)
    report = {}
    try:
        if args.only in (None, "overhead"):
            # Two sizes: the difference is the per-byte framing, the rest the session's
            # fixed cost (key exchange, authentication, the channel's opening).
            small, big = overhead(sshd, work, bl.MIB), overhead(sshd, work, 65 * bl.MIB)
            per_mib = (big["socket_bytes"] - small["socket_bytes"]) / 64 - bl.MIB
            report["overhead"] = {"cipher": big["cipher"], "framing_per_mib": round(per_mib, 1),
                                  "session_bytes": round(small["socket_bytes"] - bl.MIB - per_mib),
                                  "samples": [small, big]}
            bl.log(f"overhead: {report['overhead']}")
        if args.only in (None, "pacing"):
            report["pacing"] = pacing(sshd, work)
            bl.log(f"pacing: {report['pacing']}")
        if args.only in (None, "speed"):
            report["speed"] = speed(sshd, work, args.size, args.repeat)
    finally:
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if "speed" in report:
        print(bl.table(["tool", "MiB/s (median)", "client CPU s/GiB", "rounds"],
                       [[t, r["MiB_per_s"], r["client_cpu_s_per_GiB"], r["rounds"]]
                        for t, r in report["speed"].items()]))


if __name__ == "__main__":
    main()
