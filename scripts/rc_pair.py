#!/usr/bin/env python3
"""Builds a release-candidate pair shaped like a distribution's live image, and measures what
rsync's delta needs to turn the first into the second.

A live ISO is an ISO 9660 image (xorriso) holding one big compressed squashfs of the system's
files. RC2 is RC1's tree rebuilt after a minor fix: a few files edited in place, a few docs
patched (lines inserted, so later bytes shift), one new file. squashfs packs compressed blocks
end to end, so an edit early in the tree moves every later block: fixed-size blocks find nothing
to reuse, and only a rolling or content-defined match does.

Two sizes of change:
- small: 20 edited files, 5 patched docs, one new 1 MB file (the issue's RC2);
- large: 200 edited files, 50 patched docs, one new 10 MB file.

    scripts/rc_pair.py --out /dev/shm/rc             # build both pairs, print rsync's figures
    scripts/rc_pair.py --out DIR --tree 64MiB --change small --compressor zstd

Used as a module by bench_delta.py: `build_pair()` and `rsync_delta_bytes()`.
Needs mksquashfs (squashfs-tools), xorriso and rsync. Python 3.11 stdlib only.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MIB, log, parse_size, table  # noqa: E402

# A fixed date for every timestamp in both images: the pair differs only where the tree does.
EPOCH = 1_700_000_000
WORDS = ("the of and to in is for that with on as by this be are from at or it an which "
         "kernel module package install config system service daemon user network file "
         "directory mount boot image release candidate build fix update security patch "
         "library version option default value error warning debug log path device driver "
         "support enable disable command line argument manual page example see also").split()
CHANGES = {
    "small": {"edited": 20, "docs": 5, "new": 1 * MIB},
    "large": {"edited": 200, "docs": 50, "new": 10 * MIB},
}


def text(rng: random.Random, size: int) -> bytes:
    """Lines of words, like documentation or configuration: compresses about 4:1."""
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def binary(rng: random.Random, size: int) -> bytes:
    """Like an executable or library: runs of random bytes, zero padding and repeated tables,
    so it compresses roughly 2:1, as real binaries do."""
    out, n = bytearray(), 0
    table_ = rng.randbytes(256)
    while n < size:
        kind = rng.random()
        run = rng.randint(64, 4096)
        if kind < 0.5:
            out += rng.randbytes(run)
        elif kind < 0.75:
            out += bytes(run)
        else:
            out += (table_ * (run // 256 + 1))[:run]
        n += run
    return bytes(out[:size])


def make_tree(root: Path, total: int, seed: int) -> list[Path]:
    """Writes a tree of about `total` bytes: usr/bin, usr/lib (binary), usr/share/doc and etc
    (text). Returns the files in a fixed order."""
    rng = random.Random(seed)
    files, written, i = [], 0, 0
    while written < total:
        is_text = rng.random() < 0.4
        # Most files are small (median ~22 KB) but most bytes are in large ones (half of them
        # in files over ~1 MB), as in a system's tree: libraries, firmware, locales.
        size = int(rng.lognormvariate(10, 2)) + 200
        size = min(size, 16 * MIB, total - written + 200)
        if is_text:
            sub = rng.choice(["usr/share/doc", "etc", "usr/share/man"])
            data = text(rng, size)
        else:
            sub = rng.choice(["usr/bin", "usr/lib", "usr/lib/modules", "usr/libexec"])
            data = binary(rng, size)
        path = root / sub / f"f{i:05d}{'.txt' if is_text else ''}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(path)
        written += len(data)
        i += 1
    return files


def apply_change(root: Path, files: list[Path], change: str, seed: int) -> None:
    """RC2's fix: edits in place (same size), doc patches (inserted lines), one new file."""
    spec, rng = CHANGES[change], random.Random(seed)
    binaries = [f for f in files if f.suffix != ".txt"]
    docs = [f for f in files if f.suffix == ".txt"]
    for f in rng.sample(binaries, min(spec["edited"], len(binaries))):
        data = bytearray(f.read_bytes())
        for _ in range(rng.randint(1, 4)):  # a few patched spots, as a rebuilt binary has
            at = rng.randrange(len(data))
            patch = rng.randbytes(min(rng.randint(8, 256), len(data) - at))
            data[at:at + len(patch)] = patch
        f.write_bytes(bytes(data))
    for f in rng.sample(docs, min(spec["docs"], len(docs))):
        lines = f.read_bytes().split(b"\n")
        at = rng.randrange(len(lines) + 1)
        lines[at:at] = [b"patched: " + text(rng, rng.randint(40, 400)).replace(b"\n", b" ")]
        f.write_bytes(b"\n".join(lines))
    new = root / "usr/lib/new-in-rc2.so"
    new.write_bytes(binary(rng, spec["new"]))
    for f in root.rglob("*"):
        os.utime(f, (EPOCH, EPOCH), follow_symlinks=False)


def build_image(tree: Path, out: Path, compressor: str, work: Path) -> None:
    """tree -> live/filesystem.squashfs -> out (an ISO 9660 image), with fixed timestamps."""
    for f in tree.rglob("*"):
        os.utime(f, (EPOCH, EPOCH), follow_symlinks=False)
    iso_root = work / f"iso-{out.stem}"
    shutil.rmtree(iso_root, ignore_errors=True)
    (iso_root / "live").mkdir(parents=True)
    squash = iso_root / "live" / "filesystem.squashfs"
    # SOURCE_DATE_EPOCH sets the filesystem's and every inode's time (mksquashfs refuses it
    # together with -mkfs-time/-all-time) and xorriso's volume dates.
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    subprocess.run(["mksquashfs", str(tree), str(squash), "-comp", compressor, "-noappend",
                    "-no-progress", "-quiet", "-all-root", "-no-xattrs"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    (iso_root / "README.txt").write_text(f"live image {out.stem}\n")
    for f in [iso_root, *iso_root.rglob("*")]:
        os.utime(f, (EPOCH, EPOCH), follow_symlinks=False)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V", "LIVE",
                    "-J", "-R", str(iso_root)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(iso_root)


def build_pair(out: Path, tree_size: int = 256 * MIB, change: str = "small",
               compressor: str = "xz", seed: int = 1) -> tuple[Path, Path]:
    """Builds `out/rc1-CHANGE.iso` and `out/rc2-CHANGE.iso` (kept if already there)."""
    out.mkdir(parents=True, exist_ok=True)
    rc1, rc2 = out / f"rc1-{change}.iso", out / f"rc2-{change}.iso"
    if rc1.exists() and rc2.exists():
        return rc1, rc2
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        log(f"writing a {tree_size / MIB:.0f} MiB tree")
        files = make_tree(tree, tree_size, seed)
        log(f"RC1: {len(files)} files -> {compressor} squashfs -> ISO")
        build_image(tree, rc1, compressor, work)
        apply_change(tree, files, change, seed + 1)
        log(f"RC2 ({change} change) -> ISO")
        build_image(tree, rc2, compressor, work)
    return rc1, rc2


def rsync_delta_bytes(old: Path, new: Path) -> dict[str, int]:
    """rsync --no-whole-file of `new` onto a copy of `old` under the same name: its "Total
    bytes sent" (client -> server, what crosses the uplink) and "Total bytes received"."""
    with tempfile.TemporaryDirectory(dir=new.parent) as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        dst.mkdir()
        os.link(new, src / "image.iso")
        shutil.copyfile(old, dst / "image.iso")
        run = subprocess.run(["rsync", "--no-whole-file", "--stats", "-t",
                              str(src / "image.iso"), str(dst) + "/"],
                             check=True, capture_output=True, text=True)
        if (dst / "image.iso").read_bytes() != new.read_bytes():
            raise SystemExit("rsync did not reproduce RC2")

    def stat(label: str) -> int:
        m = re.search(rf"{label}: ([0-9,]+)", run.stdout)
        if not m:
            raise SystemExit(f"rsync printed no {label!r}:\n{run.stdout}")
        return int(m.group(1).replace(",", ""))

    return {"sent": stat("Total bytes sent"), "received": stat("Total bytes received")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the images go (kept)")
    ap.add_argument("--tree", type=parse_size, default=256 * MIB,
                    help="size of the file tree inside the image (default 256MiB)")
    ap.add_argument("--change", choices=[*CHANGES, "both"], default="both")
    ap.add_argument("--compressor", choices=["xz", "zstd", "gzip"], default="xz")
    args = ap.parse_args()
    for tool in ("mksquashfs", "xorriso", "rsync"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install squashfs-tools xorriso rsync")
    rows = []
    for change in CHANGES if args.change == "both" else [args.change]:
        rc1, rc2 = build_pair(args.out, args.tree, change, args.compressor)
        r = rsync_delta_bytes(rc1, rc2)
        size = rc2.stat().st_size
        rows.append([change, f"{rc1.stat().st_size:,}", f"{size:,}", f"{r['sent']:,}",
                     f"{100 * r['sent'] / size:.2f} %", f"{r['received']:,}"])
    print(table(["change", "RC1 bytes", "RC2 bytes", "rsync sent", "of RC2", "rsync received"],
                rows))


if __name__ == "__main__":
    main()
