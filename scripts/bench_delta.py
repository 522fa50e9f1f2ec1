#!/usr/bin/env python3
"""Delta uploads (issue 13) measured: the bytes a delta of RC2 against RC1 sends from client to
server, headers included, beside rsync --no-whole-file's "Total bytes sent" for the same pair,
the index bytes downloaded first, and the client's CPU for chunking and matching.

For each pair (scripts/rc_pair.py builds them: a live-ISO-like image, a small and a larger
change), on loopback:
  1. `upload serve` in a fresh directory; RC1 is sent whole (not counted);
  2. `upload send RC2 --base rc1.iso` through a counting TCP proxy: every byte the client
     writes (request lines, headers, bodies, the OPTIONS/GET/POST/HEAD around them) is "ours
     up", every byte back (the index included) "ours down";
  3. the published file is compared with RC2;
  4. `upload estimate RC2 --base-file RC1` under /usr/bin/time: CPU of indexing RC1 and
     matching RC2 (a client pays only the matching half; the criterion bench
     `cargo bench --bench delta` times each half).

    scripts/bench_delta.py                       # images in /dev/shm/rc (built when missing)
    scripts/bench_delta.py --images DIR --tree 512MiB --bin target/release/upload

The binary is $UPLOAD_BIN, else target/release/upload of this checkout. Python 3.11 stdlib
only (plus what rc_pair.py needs: mksquashfs, xorriso, rsync).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MIB, log, parse_size, sha256_file, stop_process, table  # noqa: E402
from rc_pair import CHANGES, build_pair, rsync_delta_bytes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class CountingProxy:
    """A loopback TCP proxy to `target` that counts the bytes each way."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.up = 0
        self.down = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self.pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, "down"), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(1 << 16):
                with self.lock:
                    setattr(self, way, getattr(self, way) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def serve(binary: str, inbox: Path) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([binary, "serve", "--dir", str(inbox), "--listen", "127.0.0.1:0",
                          "--no-auth"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    line = p.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)/files/", line)
    if not m:
        raise SystemExit(f"upload serve said: {line!r}")
    return p, int(m.group(1))


def send(binary: str, db: Path, file: Path, url: str, *extra: str) -> str:
    run = subprocess.run([binary, "send", str(file), url, *extra],
                         env=dict(os.environ, UPLOAD_DB=str(db)), capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"upload send {file.name} failed ({run.returncode}):\n{run.stderr}")
    return run.stderr


def cpu_of(cmd: list[str]) -> tuple[float, str]:
    run = subprocess.run(["/usr/bin/time", "-f", "CPU %U %S", *cmd], capture_output=True,
                         text=True, check=True)
    user, system = map(float, re.search(r"CPU ([0-9.]+) ([0-9.]+)", run.stderr).groups())
    return user + system, run.stdout


def measure(binary: str, rc1: Path, rc2: Path, work: Path) -> dict:
    inbox, db = work / "inbox", work / "state.db"
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir(parents=True)
    db.unlink(missing_ok=True)
    server, port = serve(binary, inbox)
    try:
        url = f"http://127.0.0.1:{port}/files/"
        send(binary, db, rc1, url, "--name", "rc1.iso")
        proxy = CountingProxy(("127.0.0.1", port))
        said = send(binary, db, rc2, f"http://127.0.0.1:{proxy.port}/files/", "--base", "rc1.iso",
                    "--name", "rc2.iso")
        if sha256_file(inbox / "rc2.iso") != sha256_file(rc2):
            raise SystemExit("the published rc2.iso is not RC2")
        line = next((l for l in said.splitlines() if "delta against" in l), "")
        index = subprocess.run([binary, "estimate", str(rc2), "--base", "rc1.iso", "--to", url,
                                "--json"], capture_output=True, text=True, check=True)
        import json
        plan = json.loads(index.stdout)["delta"]
    finally:
        stop_process(server)
    cpu, _ = cpu_of([binary, "estimate", str(rc2), "--base-file", str(rc1), "--json"])
    return {"up": proxy.up, "down": proxy.down, "recipe": plan["recipe_bytes"],
            "index": plan["index_bytes"], "copied": plan["copied_percent"], "line": line,
            "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path("/dev/shm/rc"),
                    help="where rc_pair.py's images are, or go (default /dev/shm/rc)")
    ap.add_argument("--tree", type=parse_size, default=256 * MIB,
                    help="tree size for images that must be built (default 256MiB)")
    ap.add_argument("--bin", default=os.environ.get("UPLOAD_BIN")
                    or str(REPO / "target/release/upload"))
    args = ap.parse_args()
    if not Path(args.bin).is_file():
        raise SystemExit(f"{args.bin} not found: cargo build --release first, or give --bin")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.images.parent if args.images.parent.exists()
                                     else None) as tmp:
        for change in CHANGES:
            rc1, rc2 = build_pair(args.images, args.tree, change)
            log(f"{change}: rsync --no-whole-file")
            rsync = rsync_delta_bytes(rc1, rc2)
            log(f"{change}: upload send --base through a counting proxy")
            m = measure(args.bin, rc1, rc2, Path(tmp))
            size = rc2.stat().st_size
            rows.append([change, f"{size:,}", f"{rsync['sent']:,}", f"{m['up']:,}",
                         f"{m['up'] / rsync['sent']:.2f}x", f"{100 * m['up'] / size:.2f} %",
                         f"{m['recipe']:,}", f"{m['index']:,}", f"{m['down']:,}",
                         f"{m['copied']:.1f} %", f"{m['cpu']:.2f} s"])
            log(m["line"])
    print(table(["change", "RC2 bytes", "rsync sent", "ours up (headers incl.)", "of rsync",
                 "of RC2", "recipe", "index", "ours down", "copied", "CPU index+match"], rows))


if __name__ == "__main__":
    main()
