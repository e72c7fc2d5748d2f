#!/usr/bin/env python3
"""Helpers for bench/reload.sh (standard library only).

  reloadlab.py slow-upstream PORT [--hold SECS]
      HTTP/1.1 upstream: /slow is answered after SECS (default 60), anything else at once.
  reloadlab.py hup-loop --pid PID --signal SIG --template T --config C --interval S --count N
      N times: write C from T (@GEN@ -> 2, 3, ...), send SIG to PID, sleep S.
  reloadlab.py latency --port P --pid PID --signal SIG --template T --config C --count N
      N times: write C with a new @GEN@, send SIG, poll http://127.0.0.1:P/ with a fresh
      connection every ~2 ms until the response header x-gen equals the new value.
  reloadlab.py procs --port P --pid PID --signal SIG --template T --config C
      Opens a /slow request every 100 ms through the proxy and keeps it open, reloads 20 times
      500 ms apart, and samples the process count and total RSS of PID's tree every 100 ms.

  reloadlab.py upgrades --kind river|nginx|haproxy --port P --pid-file F --count N --interval S
      N binary upgrades S apart under load (16 keep-alive clients and a loop of fresh
      connections): River `riverctl -s SOCKET upgrade`; nginx USR2 to the master, then WINCH and
      QUIT to the old one; HAProxy USR2 to its -W master (it re-executes its binary). Counts
      failed requests and refused connections, and how long the old processes live on.

Every command prints one line of `key=value` results on stdout.
"""

import argparse
import http.client
import os
import signal
import socket
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def write_config(template, config, gen):
    with open(template) as f:
        text = f.read()
    tmp = config + ".tmp"
    with open(tmp, "w") as f:
        f.write(text.replace("@GEN@", str(gen)))
    os.replace(tmp, config)


def signum(name):
    return getattr(signal, "SIG" + name.upper().removeprefix("SIG"))


# ---------------------------------------------------------------- slow upstream

def slow_upstream(args):
    hold = args.hold

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/slow"):
                time.sleep(hold)
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    Server(("127.0.0.1", args.port), Handler).serve_forever()


# ---------------------------------------------------------------- hup loop

def hup_loop(args):
    sig = signum(args.signal)
    start = time.monotonic()
    sent = 0
    for i in range(args.count):
        write_config(args.template, args.config, i + 2)
        os.kill(args.pid, sig)
        sent += 1
        # keep the cadence: sleep to the next slot, not a fixed amount
        next_at = start + (i + 1) * args.interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(f"signals={sent} seconds={time.monotonic() - start:.2f}")


# ---------------------------------------------------------------- reload latency

def get_gen(port, timeout=1.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-gen")
    finally:
        conn.close()


def latency(args):
    sig = signum(args.signal)
    results = []
    poll_errors = 0
    non200 = 0
    timeouts = 0
    for i in range(args.count):
        gen = args.first_gen + i
        write_config(args.template, args.config, gen)
        t0 = time.monotonic()
        os.kill(args.pid, sig)
        seen = None
        while time.monotonic() - t0 < args.max_wait:
            try:
                status, value = get_gen(args.port)
                if status != 200:
                    non200 += 1
                if value == str(gen):
                    seen = time.monotonic() - t0
                    break
            except (OSError, http.client.HTTPException):
                poll_errors += 1
            time.sleep(0.002)
        if seen is None:
            timeouts += 1
            seen = args.max_wait
        results.append(seen * 1000)
        time.sleep(args.pause)
    print(
        f"median_ms={statistics.median(results):.1f} max_ms={max(results):.1f} "
        f"min_ms={min(results):.1f} reloads={len(results)} poll_errors={poll_errors} "
        f"non200={non200} not_seen={timeouts} all_ms={','.join(f'{r:.0f}' for r in results)}"
    )


# ---------------------------------------------------------------- processes and RSS

def tree(root):
    """pids of root and all its descendants"""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def procs(args):
    sig = signum(args.signal)
    stop = threading.Event()
    samples = []  # (t, nprocs, rss_kib)
    conns = []
    open_errors = [0]

    def sampler():
        while not stop.is_set():
            pids = [p for p in tree(args.pid) if os.path.exists(f"/proc/{p}")]
            samples.append((time.monotonic(), len(pids), sum(rss_kib(p) for p in pids)))
            time.sleep(args.sample)

    def opener():
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", args.port), timeout=2)
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: bench\r\n\r\n")
                s.setblocking(False)
                conns.append(s)
            except OSError:
                open_errors[0] += 1
            time.sleep(args.open_every)

    threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=opener, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(args.open_every * 5)  # a few long requests before the first reload
    for i in range(args.reloads):
        write_config(args.template, args.config, i + 2)
        os.kill(args.pid, sig)
        time.sleep(args.interval)
    time.sleep(args.tail)
    stop.set()
    for t in threads:
        t.join()
    # which long requests already ended (answered early, reset or closed by the proxy)?
    ended = 0
    for s in conns:
        try:
            data = s.recv(4096)
            ended += 1  # data (an early answer) or b"" (closed)
        except BlockingIOError:
            pass  # still waiting, as it should
        except OSError:
            ended += 1
        s.close()
    peak_n = max(n for _, n, _ in samples)
    peak_rss = max(r for _, _, r in samples)
    _, end_n, end_rss = samples[-1]
    print(
        f"peak_procs={peak_n} peak_rss_mib={peak_rss / 1024:.1f} end_procs={end_n} "
        f"end_rss_mib={end_rss / 1024:.1f} long_requests={len(conns)} long_ended_early={ended} "
        f"open_errors={open_errors[0]} samples={len(samples)}"
    )


# ---------------------------------------------------------------- binary upgrades

def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return False


def wait_for(check, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return None


def upgrades(args):
    stop = threading.Event()
    lock = threading.Lock()
    tally = {"ok": 0, "failed": 0, "refused": 0}
    errors = []

    def record(key, error=None):
        with lock:
            tally[key] += 1
            if error and len(errors) < 5:
                errors.append(error)

    def keep_alive():
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                record("ok" if resp.status == 200 else "failed", None if resp.status == 200 else f"status {resp.status}")
                if (resp.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except ConnectionRefusedError as err:
                record("refused", repr(err))
                conn = None
            except (OSError, http.client.HTTPException) as err:
                record("failed", f"keep-alive {err!r}")
                conn = None

    def fresh():
        while not stop.is_set():
            try:
                status, _ = get_gen(args.port, timeout=30)
                record("ok" if status == 200 else "failed")
            except ConnectionRefusedError as err:
                record("refused", repr(err))
            except (OSError, http.client.HTTPException) as err:
                record("failed", f"fresh {err!r}")
            time.sleep(0.005)

    threads = [threading.Thread(target=keep_alive, daemon=True) for _ in range(16)]
    threads += [threading.Thread(target=fresh, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    retired = []  # [old pids, time of the upgrade, seconds until all were gone or None]

    def monitor():
        while not stop.is_set():
            now = time.monotonic()
            with lock:
                for entry in retired:
                    if entry[2] is None and not any(alive(p) for p in entry[0]):
                        entry[2] = now - entry[1]
            time.sleep(0.02)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    upgrade_errors = 0
    start = time.monotonic()
    for i in range(args.count):
        master = read_pid(args.pid_file)
        t0 = time.monotonic()
        if args.kind == "river":
            old = [master] + [p for p in tree(master) if p != master]
            done = os.system(f"{args.riverctl} -s {args.socket} upgrade >/dev/null 2>&1") == 0
            if not done:
                upgrade_errors += 1
        elif args.kind == "nginx":
            # nginx ignores USR2 while the previous old master still runs.
            with lock:
                previous = [e for e in retired if e[2] is None]
            wait_for(lambda: all(e[2] is not None for e in previous), args.max_wait, step=0.02)
            master = read_pid(args.pid_file)
            t0 = time.monotonic()
            old = tree(master)
            os.kill(master, signal.SIGUSR2)
            new = wait_for(lambda: (p := read_pid(args.pid_file)) != master and p, 10)
            if not new or not wait_for(lambda: len(tree(new)) > 1, 10):
                upgrade_errors += 1
                old = []
            else:
                os.kill(master, signal.SIGWINCH)
                os.kill(master, signal.SIGQUIT)
        else:
            old = [p for p in tree(master) if p != master]
            os.kill(master, signal.SIGUSR2)
            if not wait_for(lambda: any(p not in old for p in tree(master) if p != master), 10):
                upgrade_errors += 1
        with lock:
            retired.append([old, t0, None])
        next_at = start + (i + 1) * args.interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    wait_for(lambda: all(e[2] is not None for e in retired), args.max_wait, step=0.05)
    gone_after = [e[2] if e[2] is not None else float("inf") for e in retired]
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=35)
    finite = [g for g in gone_after if g != float("inf")]
    print(
        f"ok={tally['ok']} failed={tally['failed']} refused={tally['refused']} "
        f"upgrade_errors={upgrade_errors} upgrades={len(retired)} seconds={elapsed:.1f} "
        f"old_gone_max_s={max(finite):.2f} old_never_gone={len(gone_after) - len(finite)} "
        f"errors={'|'.join(errors).replace(' ', '_') or '-'}"
        if finite else
        f"ok={tally['ok']} failed={tally['failed']} refused={tally['refused']} "
        f"upgrade_errors={upgrade_errors} upgrades={len(retired)} seconds={elapsed:.1f} old_gone_max_s=- "
        f"old_never_gone={len(gone_after)} errors={'|'.join(errors).replace(' ', '_') or '-'}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("slow-upstream")
    p.add_argument("port", type=int)
    p.add_argument("--hold", type=float, default=60.0)
    p.set_defaults(fn=slow_upstream)

    def common(p):
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--signal", required=True)
        p.add_argument("--template", required=True)
        p.add_argument("--config", required=True)

    p = sub.add_parser("hup-loop")
    common(p)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--count", type=int, default=33)
    p.set_defaults(fn=hup_loop)

    p = sub.add_parser("latency")
    common(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=15)
    p.add_argument("--first-gen", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.3)
    p.add_argument("--max-wait", type=float, default=10.0)
    p.set_defaults(fn=latency)

    p = sub.add_parser("procs")
    common(p)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--open-every", type=float, default=0.1)
    p.add_argument("--sample", type=float, default=0.1)
    p.add_argument("--tail", type=float, default=1.0)
    p.set_defaults(fn=procs)

    p = sub.add_parser("upgrades")
    p.add_argument("--kind", choices=["river", "nginx", "haproxy"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid-file", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--max-wait", type=float, default=30.0)
    p.add_argument("--riverctl", default="riverctl")
    p.add_argument("--socket", default="")
    p.set_defaults(fn=upgrades)

    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
