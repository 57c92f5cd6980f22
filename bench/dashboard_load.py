#!/usr/bin/env python3
"""Load generator for the dashboard (used by ``bench_latency.py``): back-to-back keep-alive GETs.

    python bench/dashboard_load.py PORT [--threads 4] [--paths /api/status /api/candles ...]

Each thread keeps one ``http.client`` connection to ``127.0.0.1:PORT`` and requests
``/api/status``, ``/api/candles``, ``/api/trades``, ``/`` in turn, as fast as the server answers.
It runs in a process of its own, so its work never shares a GIL with the bench's exchange.

Control is by stdin: every line read makes it print one JSON line on stdout with the counts so
far (``{"t": perf_counter, "requests": N, "by_path": {...}, "errors": N, "cpu_s": ...}``); EOF
stops it (after a last line). It also stops by itself after ``--max-s`` seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time

PATHS = ("/api/status", "/api/candles", "/api/trades", "/")


class Worker(threading.Thread):
    def __init__(self, port: int, offset: int, stop: threading.Event, paths: tuple[str, ...] = PATHS) -> None:
        super().__init__(daemon=True)
        self.port, self.offset, self.stop, self.paths = port, offset, stop, paths
        self.counts = [0] * len(paths)
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = self.offset
        while not self.stop.is_set():
            k = i % len(self.paths)
            i += 1
            try:
                conn.request("GET", self.paths[k], headers={"Host": f"127.0.0.1:{self.port}"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {self.paths[k]}: HTTP {resp.status}")
                if (resp.getheader("Connection") or "").lower() == "close":
                    conn.close()
                self.counts[k] += 1
            except (OSError, http.client.HTTPException, RuntimeError) as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                conn.close()
                time.sleep(0.01)
        conn.close()


def snapshot(workers: list[Worker]) -> dict:
    t = os.times()
    by_path = {p: sum(w.counts[k] for w in workers) for k, p in enumerate(workers[0].paths)}
    return {"t": time.perf_counter(), "requests": sum(by_path.values()), "by_path": by_path,
            "errors": sum(w.errors for w in workers),
            "last_error": next((w.last_error for w in workers if w.last_error), ""),
            "cpu_s": t.user + t.system}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-s", type=float, default=900.0, help="stop by itself after this long")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), help="the routes requested in turn")
    args = parser.parse_args()
    stop = threading.Event()
    workers = [Worker(args.port, k, stop, tuple(args.paths)) for k in range(args.threads)]
    for w in workers:
        w.start()
    timer = threading.Timer(args.max_s, stop.set)
    timer.daemon = True
    timer.start()
    try:
        for _line in sys.stdin:
            print(json.dumps(snapshot(workers)), flush=True)
            if stop.is_set():
                break
    finally:
        stop.set()
        for w in workers:
            w.join(12)
        print(json.dumps(snapshot(workers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
