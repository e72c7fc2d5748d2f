#!/usr/bin/env python3
"""Hold idle keep-alive connections for bench/idle.sh (standard library only).

    idlelab.py PORT COUNT

Opens COUNT connections to 127.0.0.1:PORT, sends one GET on each and reads
its whole response (Content-Length or chunked), then keeps them all open and
idle. Prints `ready COUNT` on stdout when done; exits when stdin closes.
Source addresses cycle over 127.0.0.1-127.0.0.8, so that more connections
than one source address has ephemeral ports can be held, and the
connections are spread over child processes of at most PER_PROCESS each, so
that more than one process's open-files limit can be held.
"""
import os
import socket
import sys
import traceback

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
PER_PROCESS = 15000


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


def hold(port, count, first):
    held = []
    for i in range(first, first + count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.%d" % (1 + i % 8), 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(REQUEST)
        read_response(sock)
        held.append(sock)
    return held


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    children = []
    first = 0
    while first < count:
        share = min(PER_PROCESS, count - first)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            try:
                held = hold(port, share, first)
                os.write(ready_w, b"ok")
                sys.stdin.read()  # until stdin closes, holding `held`
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        os.close(ready_w)
        children.append((pid, ready_r))
        first += share
    failed = False
    for pid, ready_r in children:
        if os.read(ready_r, 2) != b"ok":
            failed = True
        os.close(ready_r)
    if failed:
        for pid, _ in children:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        sys.exit("a holder failed")
    print("ready", count, flush=True)
    sys.stdin.read()
    for pid, _ in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
