#!/usr/bin/env python3
"""Load for packaging/test.sh's binary-upgrade step: keep-alive clients and a
loop of fresh connections against ADDR until STOP_FILE exists; prints one JSON
line: requests that succeeded, failed, and connections refused."""
import http.client
import json
import os
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
stop_file = sys.argv[2]
lock = threading.Lock()
tally = {"ok": 0, "failed": 0, "refused": 0, "errors": []}


def record(key, error=None):
    with lock:
        tally[key] += 1
        if error is not None and len(tally["errors"]) < 10:
            tally["errors"].append(error)


def keep_alive():
    conn = None
    while not os.path.exists(stop_file):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                record("ok")
            else:
                record("failed", f"status {response.status}")
            if response.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except ConnectionRefusedError as err:
            record("refused", str(err))
            conn = None
        except Exception as err:  # noqa: BLE001 - every failure counts
            record("failed", f"keep-alive: {err!r}")
            conn = None


def fresh():
    while not os.path.exists(stop_file):
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            conn.close()
            record("ok" if response.status == 200 else "failed")
        except ConnectionRefusedError as err:
            record("refused", str(err))
        except Exception as err:  # noqa: BLE001
            record("failed", f"fresh: {err!r}")
        time.sleep(0.01)


threads = [threading.Thread(target=keep_alive) for _ in range(16)]
threads += [threading.Thread(target=fresh) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(tally))
