#!/usr/bin/env python3
"""rawput.py: send over plain TCP to rawsink.py.

  rawput.py HOST PORT FILE        send FILE, then wait for the sink's "OK <bytes>" (exit 0 when
                                  the sink counted every byte)
  rawput.py HOST PORT --for SECS  a competing bulk flow: as fast as TCP allows for SECS seconds,
                                  then a reset, so none of it lingers in the kernel's send buffer
                                  after it ends (a plain close would keep sending what is queued)
"""
import os
import select
import socket
import struct
import sys
import time


def send_file(host: str, port: int, path: str) -> int:
    size = os.path.getsize(path)
    with socket.create_connection((host, port)) as s, open(path, "rb") as f:
        s.sendfile(f)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64).split()
    return 0 if answer[:1] == [b"OK"] and answer[1:2] == [str(size).encode()] else 1


def flood(host: str, port: int, seconds: float) -> int:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    s.setblocking(False)
    block, end = os.urandom(1 << 16), time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            s.send(block)
        except BlockingIOError:
            select.select([], [s], [], min(left, 0.2))
    s.close()
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 4 and args[2] == "--for":
        sys.exit(flood(args[0], int(args[1]), float(args[3])))
    if len(args) == 3:
        sys.exit(send_file(args[0], int(args[1]), args[2]))
    sys.exit(__doc__)
