#!/usr/bin/env python3
"""probe.py HOST PORT [INTERVAL]: what other traffic on the link feels (bufferbloat).

Every INTERVAL seconds (default 0.5) times a TCP connect to HOST:PORT and a tiny HTTP request
on it, and prints one line "UNIX_TIME CONNECT_MS REQUEST_MS" (-1 for a failure or a 10 s
timeout), until killed. A full modem buffer shows as connect times of hundreds of ms.
"""
import socket
import sys
import time


def once(host: str, port: int) -> tuple[float, float]:
    connect_ms = request_ms = -1.0
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            t1 = time.monotonic()
            connect_ms = (t1 - t0) * 1000
            s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            if s.recv(1024):
                request_ms = (time.monotonic() - t1) * 1000
    except OSError:
        pass
    return connect_ms, request_ms


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    host, port = sys.argv[1], int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) == 4 else 0.5
    while True:
        start, t0 = time.time(), time.monotonic()
        connect_ms, request_ms = once(host, port)
        print(f"{start:.3f} {connect_ms:.1f} {request_ms:.1f}", flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))


if __name__ == "__main__":
    main()
