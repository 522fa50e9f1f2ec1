#!/usr/bin/env python3
"""owd.py: the uplink's one-way delay, from small timestamped datagrams.

  owd.py send HOST PORT [INTERVAL]   (client namespace) a 16-byte UDP datagram every INTERVAL
                                     seconds (default 0.1): its sequence number and send time
  owd.py recv PORT                   (server namespace) one line per datagram:
                                     "RECV_TIME SEND_TIME SEQ", until killed

Times are CLOCK_MONOTONIC seconds, which the lab's namespaces share with each other and with
the process that starts them (network namespaces have no clock of their own): RECV - SEND is
the one-way delay with no clock synchronisation, and over its minimum it is the queueing delay
the modem's buffer adds upstream, untouched by anything downstream. Each datagram is 58 bytes
on the wire: at 0.25 s apart, 1.8 % of a 128 kbit/s link.
"""
import socket
import struct
import sys
import time

FORMAT = "!Qd"  # sequence number, send time


def send(host: str, port: int, interval: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq, t0 = 0, time.monotonic()
    while True:
        s.sendto(struct.pack(FORMAT, seq, time.monotonic()), (host, port))
        seq += 1
        # On a schedule, not after a sleep: the sender's own lateness does not pile up.
        time.sleep(max(0.0, t0 + seq * interval - time.monotonic()))


def recv(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, _ = s.recvfrom(64)
        at = time.monotonic()
        if len(data) == struct.calcsize(FORMAT):
            seq, sent = struct.unpack(FORMAT, data)
            print(f"{at:.6f} {sent:.6f} {seq}", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if len(args) in (3, 4) and args[0] == "send":
        send(args[1], int(args[2]), float(args[3]) if len(args) == 4 else 0.1)
    elif len(args) == 2 and args[0] == "recv":
        recv(int(args[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
