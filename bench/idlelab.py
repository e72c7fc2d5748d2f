#!/usr/bin/env python3
"""Hold idle keep-alive connections for bench/idle.sh (standard library only).

    idlelab.py PORT COUNT

Opens COUNT connections to 127.0.0.1:PORT, sends one GET on each and reads
its whole response (Content-Length or chunked), then keeps them all open and
idle. Prints `ready COUNT` on stdout when done; exits when stdin closes.
Source addresses cycle over 127.0.0.1-127.0.0.8, so that more connections
than one source address has ephemeral ports can be held.
"""
import socket
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in a chunked body")
            rest += chunk
        return
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in a body")
        rest += chunk


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    held = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.%d" % (1 + i % 8), 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(REQUEST)
        read_response(sock)
        held.append(sock)
    print("ready", len(held), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
