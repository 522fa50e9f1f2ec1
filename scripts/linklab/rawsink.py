#!/usr/bin/env python3
"""rawsink.py PORT DIR: the plain-TCP receiver, the ceiling any upload protocol can reach.

Each connection's bytes are written to DIR/raw.bin. After the sender's EOF the sink answers
"OK <bytes>", so the sender times the delivery rather than the write into its own socket buffer.
A connection that ends with a reset (rawput.py --for) is dropped without an answer.
"""
import os
import socket
import sys


def serve(port: int, dest: str) -> None:
    listener = socket.create_server(("0.0.0.0", port), reuse_port=True)
    while True:
        conn, _ = listener.accept()
        with conn, open(os.path.join(dest, "raw.bin"), "wb") as out:
            received = 0
            try:
                while block := conn.recv(1 << 16):
                    out.write(block)
                    received += len(block)
                out.flush()
                conn.sendall(b"OK %d\n" % received)
            except OSError:
                continue


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    serve(int(sys.argv[1]), sys.argv[2])
