"""Dashboard benchmark: /api/status latency with 10 000 orders in the DB, and the page weight.

    .venv/bin/python bench/bench_dashboard.py [--requests N]

Builds a throw-away DB (2 000 real 15m candles, 10 000 filled orders with fills, 5 000 events, a
fresh heartbeat), starts the real server (``python dashboard.py --config ...``) on 127.0.0.1
and sends sequential requests with ``http.client`` over one keep-alive connection. Targets:
status p99 < 20 ms; HTML + every static asset the page loads < 150 kB. Prints the markdown section
(``bench/run_all.py dashboard`` pastes it into BENCHMARKS.md); exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import common  # bench/common.py: machine line and BENCHMARKS.md sections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import history  # noqa: E402
import store  # noqa: E402

MARKET_15M = os.path.join(ROOT, "marketdata", "btcusdt_um_15m_2023.csv.gz")
TARGET_STATUS_P99_MS = 20.0
TARGET_PAGE_BYTES = 150_000


def build_db(path: str, orders: int = 10_000, events: int = 5_000) -> None:
    candles = history.read_candles(MARKET_15M)[:2000]
    db = store.Store(path)
    now = store.now_ms()
    with db.transaction():
        db.add_candles("BTCUSDT", "15m", 900_000, candles)
        for i in range(orders):
            c = candles[i % len(candles)]
            action = ("open_long", "close_long", "open_short", "close_short")[i % 4]
            cid = f"bench-{i}"
            oid = db.add_order(client_order_id=cid, transition_id=None, time_ms=c.open_time_ms + i % 900_000,
                               symbol="BTCUSDT", action=action, reason="entry" if action.startswith("open") else
                               "take_profit", side="BUY" if action in ("open_long", "close_short") else "SELL",
                               qty=0.01, reduce_only=action.startswith("close"), paper=i % 3 != 0,
                               tick_price=c.close, status="filled")
            db.update_order(cid, fill_price=c.close, filled_qty=0.01, fee_usdt=0.1, realized_pnl_usdt=0.5)
            db.add_fill(oid, c.open_time_ms, c.close, 0.01, 0.1, 0.5, i % 3 != 0)
        for i in range(events):
            db.add_event("INFO" if i % 10 else "ERROR", f"event {i}", candles[i % len(candles)].open_time_ms)
        db.set_status({"heartbeat_ms": now, "started_ms": now, "pid": os.getpid(), "mode": "PAPER",
                       "symbol": "BTCUSDT", "interval": "15m", "state": "LONG", "price": candles[-1].close,
                       "price_time_ms": candles[-1].open_time_ms, "band_up": 1.0, "band_mid": 1.0, "band_dn": 1.0,
                       "position_qty": 0.01, "entry_price": candles[-1].open, "unrealized_pnl_usdt": 1.0,
                       "realized_pnl_usdt": 2.0, "connection": "connected", "last_message_ms": now, "db_role": "bot"})
    db.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> bytes:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {resp.status}")
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return body
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def timed(client: Client, path: str, n: int) -> list[float]:
    for _ in range(min(100, n)):
        client.get(path)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(path)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def machine() -> str:
    return common.machine(with_load=True)


def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per endpoint (default 2000)")
    args = parser.parse_args()
    where = machine()
    tmp = tempfile.mkdtemp(prefix="bollmin-bench-")
    try:
        rows, sizes, build_s = measure(tmp, args.requests)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(s for _, s in sizes)
    status_p99 = rows[0][4]
    ok_latency = status_p99 < TARGET_STATUS_P99_MS
    ok_weight = total < TARGET_PAGE_BYTES
    command = " ".join(["python bench/bench_dashboard.py", *sys.argv[1:]])
    print("## Dashboard\n")
    print(f"Machine: {where}  ")
    print(f"Command: `{command}` ({time.strftime('%Y-%m-%d', time.gmtime())})\n")
    print("| measure | result | target | met |")
    print("|---|---:|---:|:---:|")
    print(f"| `/api/status` p99 ({rows[0][1]:,} sequential requests on one keep-alive connection; DB with 10 000 "
          f"orders) | {status_p99:.2f} ms | < {TARGET_STATUS_P99_MS:g} ms | {_ok(ok_latency)} |")
    print(f"| page weight: HTML + every static asset the page loads | {total / 1000:.1f} kB | "
          f"< {TARGET_PAGE_BYTES / 1000:g} kB | {_ok(ok_weight)} |")
    print()
    print(f"DB: 10 000 orders, 10 000 fills, 5 000 events, 2 000 candles (built in {build_s:.1f} s); "
          f"server: `python dashboard.py` on 127.0.0.1, one keep-alive `http.client` connection, requests one "
          f"after the other (warm-up of 100 not counted)\n")
    print("| endpoint | requests | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, n, p50, p95, p99, mx in rows:
        print(f"| `{path}` | {n:,} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {mx:.2f} |")
    print()
    print("| page part | bytes |")
    print("|---|---:|")
    for name, size in sizes:
        print(f"| `{name}` | {size:,} |")
    print(f"| **total** | **{total:,}** ({total / 1024:.1f} KiB) |")
    return 0 if ok_latency and ok_weight else 1


def measure(tmp: str, requests: int) -> tuple[list[tuple], list[tuple[str, int]], float]:
    """Build the DB in ``tmp``, serve it with the real dashboard, time the endpoints, weigh the page."""
    db_path = os.path.join(tmp, "bench.db")
    t0 = time.perf_counter()
    build_db(db_path)
    build_s = time.perf_counter() - t0
    port = free_port()
    cfg = os.path.join(tmp, "config.py")
    with open(cfg, "w") as fh:
        fh.write(f"DB_PATH = {db_path!r}\nDASHBOARD_PORT = {port}\nLOG_LEVEL = 'WARNING'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLLMIN_")}
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "dashboard.py"), "--config", cfg], cwd=tmp, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                Client(port).get("/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the dashboard did not start") from None
                time.sleep(0.1)
        client = Client(port)
        rows = []
        for path in ("/api/status", "/api/trades?paper=1&page=50", "/api/candles", "/api/events"):
            n = requests if path == "/api/status" else max(200, requests // 5)
            ms = timed(client, path, n)
            rows.append((path, n, statistics.median(ms), pct(ms, 95), pct(ms, 99), max(ms)))
        html = client.get("/")
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', html.decode())
        sizes = [("/ (HTML)", len(html))] + [(a, len(client.get(a))) for a in assets]
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
    return rows, sizes, build_s


if __name__ == "__main__":
    sys.exit(main())
