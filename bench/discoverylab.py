#!/usr/bin/env python3
"""Helpers for bench/discovery.sh (standard library only).

  discoverylab.py backends --port P --ips FIRST-LAST
      One HTTP/1.1 backend on each loopback address 127.0.1.FIRST..LAST, port P
      (asyncio, one process): keep-alive GET answers 200 "ok"; a WebSocket upgrade
      is accepted and every frame echoed.
  discoverylab.py websockets --port P --count N --every S --seconds T
      Opens N WebSockets to 127.0.0.1:P, one every S seconds, each sending a frame every
      0.2 s and waiting for its echo, until T seconds after the start; then closes them.
      Prints opened=N cut=K (connections that broke before the end) failed_open=F.
  discoverylab.py tree --pid PID
      Prints procs=N: PID and its live descendants.

Every command prints one line of `key=value` results on stdout.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# One WebSocket framing for the benchmarks (and the RFC 6455 key GUID).
from wslab import GUID, frame, read_frame  # noqa: E402


# ---------------------------------------------------------------- backends

async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def serve_backend(reader, writer):
    try:
        while True:
            request_line, headers = await read_head(reader)
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            if headers.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(
                    hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()
                ).decode()
                writer.write(
                    (
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    ).encode()
                )
                await writer.drain()
                while True:
                    opcode, payload = await read_frame(reader)
                    if opcode == 8:
                        writer.write(frame(8, b"", False))
                        await writer.drain()
                        return
                    writer.write(frame(opcode, payload, False))
                    await writer.drain()
            body = b"ok\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError):
        pass
    finally:
        writer.close()


async def backends_main(args):
    first, last = (int(x) for x in args.ips.split("-"))
    servers = []
    for n in range(first, last + 1):
        servers.append(
            await asyncio.start_server(serve_backend, f"127.0.1.{n}", args.port, backlog=1024)
        )
    print(f"backends={len(servers)}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# ---------------------------------------------------------------- WebSocket clients

async def ws_client(port, deadline, stats):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status_line, _ = await asyncio.wait_for(read_head(reader), 5)
        if " 101 " not in status_line + " ":
            stats["failed_open"] += 1
            writer.close()
            return
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        stats["failed_open"] += 1
        return
    stats["opened"] += 1
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            payload = f"ping {n}".encode()
            writer.write(frame(1, payload, True))
            await writer.drain()
            opcode, echoed = await asyncio.wait_for(read_frame(reader), 5)
            if opcode != 1 or echoed != payload:
                raise ConnectionError("bad echo")
            await asyncio.sleep(0.2)
        writer.write(frame(8, b"", True))
        await writer.drain()
        writer.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        stats["cut"] += 1


async def websockets_main(args):
    stats = {"opened": 0, "cut": 0, "failed_open": 0}
    start = time.monotonic()
    deadline = start + args.seconds
    tasks = []
    for i in range(args.count):
        at = start + i * args.every
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        tasks.append(asyncio.create_task(ws_client(args.port, deadline, stats)))
    await asyncio.gather(*tasks)
    print(f"opened={stats['opened']} cut={stats['cut']} failed_open={stats['failed_open']}")


# ---------------------------------------------------------------- process tree

def tree_main(args):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    seen, todo = [], [args.pid]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            seen.append(pid)
            todo.extend(children.get(pid, []))
    print(f"procs={len(seen)}")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ips", required=True)
    p = sub.add_parser("websockets")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--every", type=float, default=0.25)
    p.add_argument("--seconds", type=float, default=14)
    p = sub.add_parser("tree")
    p.add_argument("--pid", type=int, required=True)
    args = parser.parse_args()
    if args.command == "backends":
        asyncio.run(backends_main(args))
    elif args.command == "websockets":
        asyncio.run(websockets_main(args))
    else:
        tree_main(args)


if __name__ == "__main__":
    main()
