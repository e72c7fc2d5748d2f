#!/usr/bin/env python3
"""WebSockets across reloads, for bench/reload.sh case e (standard library only).

  wslab.py echo PORT
      A WebSocket upstream (RFC 6455) that echoes every text or binary message.
  wslab.py run --port P --pid PID --signal SIG --template T --config C
               [--conns 1000] [--every 0.1] [--reloads 20] [--interval 0.5]
      Opens CONNS WebSockets through the proxy on P; each sends a numbered message
      every EVERY seconds and checks that every echo is the next number. Meanwhile
      writes C from T (@GEN@ -> 2, 3, ...) and sends SIG to PID RELOADS times,
      INTERVAL apart, keeps talking TAIL (3) seconds more, and samples PID's process
      tree (count, RSS) every 50 ms.

Prints one line of key=value results: connections cut (closed or reset by the proxy
before the end), messages lost (sent, never echoed), out_of_order (an echo that
was not the next number: duplicated or reordered), peak processes and RSS, and
how long after each reload every process but the master that ran at the reload was
gone (only the new generation left): the worst of all reloads, and after the last.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import random
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reloadlab import rss_kib, signum, tree, write_config  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Seconds between two samples of the process tree.
SAMPLE = 0.05


async def read_frame(reader):
    """(opcode, payload) of the next frame; raises IncompleteReadError at EOF."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack(">Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


def frame(opcode, payload, masked):
    head = bytearray([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += struct.pack(">H", n)
    else:
        head.append(bit | 127)
        head += struct.pack(">Q", n)
    if masked:
        mask = os.urandom(4)
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


# ---------------------------------------------------------------- echo upstream

async def echo_conn(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 8:
                writer.write(frame(8, payload[:2], False))
                break
            if opcode in (1, 2):
                writer.write(frame(opcode, payload, False))
            elif opcode == 9:
                writer.write(frame(10, payload, False))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


def echo(args):
    async def serve():
        server = await asyncio.start_server(echo_conn, "127.0.0.1", args.port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# ---------------------------------------------------------------- clients

class Conn:
    def __init__(self):
        self.sent = 0
        self.echoed = 0
        self.out_of_order = 0
        self.cut = False
        self.opened = False


async def client(i, args, conn, sending, opening):
    async with opening:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            key = base64.b64encode(os.urandom(16))
            writer.write(
                b"GET /ws/%d HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n" % (i, key)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            return
        conn.opened = True

    async def reading():
        try:
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == 8:
                    break
                seq = int(payload.split(b":")[1])
                if seq == conn.echoed:
                    conn.echoed += 1
                else:
                    conn.out_of_order += 1
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        if sending.is_set():
            conn.cut = True

    reader_task = asyncio.create_task(reading())
    await asyncio.sleep(random.uniform(0, args.every))
    try:
        while sending.is_set() and not reader_task.done():
            writer.write(frame(1, b"%d:%d" % (i, conn.sent), True))
            conn.sent += 1
            await writer.drain()
            await asyncio.sleep(args.every)
    except ConnectionError:
        pass
    # The last echoes, then a clean close.
    deadline = time.monotonic() + 5
    while conn.echoed < conn.sent and not reader_task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    try:
        writer.write(frame(8, b"\x03\xe8", True))
        await writer.drain()
    except ConnectionError:
        pass
    reader_task.cancel()
    writer.close()


def run(args):
    samples = []  # (t, {pid}, rss_kib)
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            pids = {p for p in tree(args.pid) if os.path.exists(f"/proc/{p}")}
            samples.append((time.monotonic(), pids, sum(rss_kib(p) for p in pids)))
            time.sleep(SAMPLE)

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    conns = [Conn() for _ in range(args.conns)]
    reload_times = []

    async def main():
        sending = asyncio.Event()
        sending.set()
        opening = asyncio.Semaphore(64)
        tasks = [asyncio.create_task(client(i, args, c, sending, opening)) for i, c in enumerate(conns)]
        # Every connection open and talking before the first reload.
        deadline = time.monotonic() + 30
        while sum(c.opened for c in conns) < args.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        base = len(samples[-1][1])
        for i in range(args.reloads):
            write_config(args.template, args.config, i + 2)
            reload_times.append(time.monotonic())
            os.kill(args.pid, signum(args.signal))
            await asyncio.sleep(args.interval)
        # The same time for every proxy: their old processes may leave.
        await asyncio.sleep(args.tail)
        sending.clear()
        await asyncio.gather(*tasks)
        return base

    base = asyncio.run(main())
    stop.set()
    sampling.join()

    def gone_after(t0):
        """Seconds from reload t0 until every process but the master that ran at t0
        (the generations then serving or draining) is gone."""
        before = [pids for t, pids, _ in samples if t < t0]
        old = set(before[-1] if before else ()) - {args.pid}
        for t, pids, _ in samples:
            if t >= t0 and not old & pids:
                return t - t0
        return None

    gone = [gone_after(t0) for t0 in reload_times]
    never = sum(g is None for g in gone)
    worst = max((g for g in gone if g is not None), default=None)
    last = gone[-1] if gone else None
    fmt = lambda g: "never" if g is None else f"{g:.2f}"
    opened = sum(c.opened for c in conns)
    print(
        f"conns={args.conns} opened={opened} cut={sum(c.cut for c in conns)} "
        f"sent={sum(c.sent for c in conns)} lost={sum(c.sent - c.echoed for c in conns if c.opened)} "
        f"out_of_order={sum(c.out_of_order for c in conns)} "
        f"base_procs={base} peak_procs={max(len(p) for _, p, _ in samples)} "
        f"peak_rss_mib={max(r for _, _, r in samples) / 1024:.1f} end_procs={len(samples[-1][1])} "
        f"gone_worst_s={'never' if never else fmt(worst)} reloads_never_gone={never} "
        f"gone_last_s={fmt(last)} reloads={len(reload_times)} "
        f"gone_each_s={','.join(fmt(g) for g in gone)}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo")
    p.add_argument("port", type=int)
    p.set_defaults(fn=echo)
    p = sub.add_parser("run")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--signal", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--every", type=float, default=0.1)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--tail", type=float, default=3.0)
    p.set_defaults(fn=run)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
