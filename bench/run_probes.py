#!/usr/bin/env python3
"""Helpers of ``bench_run.py`` for finding where the time goes (analysis only, never the measured figures).

    python bench/run_probes.py bot run --config F     the real bot, plus timing probes
    python bench/run_probes.py readloop-client PORT VARIANT N

``bot``: runs ``bollmin.py`` unchanged except that, with ``$PROBE_OUT`` set, a few functions are
wrapped to note ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux: comparable with the
exchange's stamps in another process) at each step of an order's way (``Feed.handle``,
``Bot._on_transition`` and the transition's log line in it, the first step of the order task
``Bot._live``, ``Bot.commit``, ``Exchange.place_market``, aiohttp's ``ClientRequest.send``), written as JSON to
``$PROBE_OUT`` at exit; with ``$PROBE_SQLITE_CACHE_KIB`` set, every SQLite connection gets that
page-cache size (to see how much of the RSS growth is SQLite's cache); with
``$PROBE_SWITCH_INTERVAL_S`` set, ``sys.setswitchinterval`` gets that value (to see whether the DB
writer thread waits for the GIL). Nothing in the product is edited.

``read_loop_costs``: CPU per message of WebSocket read loops, against a local ``websockets.serve``
sender, each followed by ``json.loads``: a bare ``recv()`` loop; the product's own ``feed.Feed``
(``run``/``_read``: plain ``recv()`` plus a watchdog task for stalls) with ``handle`` replaced by
``json.loads``; and ``recv()`` under a per-message ``asyncio.wait_for`` (the stall timeout the feed
used to have), for comparison.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MSG = (b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1748736000003,"s":"BTCUSDT","a":3000000000,'
       b'"p":"95000.10","q":"0.012","nq":"0.012","f":7000000000,"l":7000000000,"T":1748736000000,"m":true}}')
VARIANTS = ("recv", "feed", "wait_for")


# ---- the probed bot --------------------------------------------------------------------------------

def small_sqlite_cache(kib: int) -> None:
    """Give every SQLite connection of the bot a ``kib`` KiB page cache (for the RSS check)."""
    sys.path.insert(0, ROOT)
    import store

    setup = store._setup

    def _setup(conn, readonly):
        conn = setup(conn, readonly)
        conn.execute(f"PRAGMA cache_size = -{int(kib)}")
        return conn

    store._setup = _setup


def install_probes(out_path: str) -> None:
    sys.path.insert(0, ROOT)
    from aiohttp import client_reqrep

    import exchange
    import feed
    import runner

    ns = time.perf_counter_ns
    rec: dict[str, list] = {"transition": [], "task": [], "commit": [], "place": [], "wire": []}
    last_handle = [0]
    last_log = [0, 0]  # perf_counter_ns around the transition's log line

    orig_handle = feed.Feed.handle

    def handle(self, raw):
        last_handle[0] = ns()
        return orig_handle(self, raw)

    class TransitionLog:
        """``runner.log`` with the transition's ``info`` line timed (everything else passed through)."""

        def __init__(self, logger):
            self._logger = logger

        def __getattr__(self, name):
            return getattr(self._logger, name)

        def info(self, msg, *args, **kwargs):
            if not (isinstance(msg, str) and msg.startswith("%s -> %s at")):
                return self._logger.info(msg, *args, **kwargs)
            last_log[0] = ns()
            try:
                return self._logger.info(msg, *args, **kwargs)
            finally:
                last_log[1] = ns()

    orig_transition = runner.Bot._on_transition

    def on_transition(self, tr):
        t = ns()
        last_log[0] = last_log[1] = 0
        orig_transition(self, tr)
        rec["transition"].append((tr.time_ms, last_handle[0], t, last_log[0], last_log[1], ns()))

    orig_live = runner.Bot._live

    async def live(self, tr, orders, cause="tick"):
        rec["task"].append((tr.time_ms, ns()))  # the order task's first step
        return await orig_live(self, tr, orders, cause)

    orig_commit = runner.Bot.commit

    async def commit(self, fn, *args, **kwargs):
        t0, backlog = ns(), self.writer.backlog
        result = await orig_commit(self, fn, *args, **kwargs)
        if getattr(fn, "__name__", "") == "write_transition":
            rec["commit"].append((args[0].time_ms, t0, ns(), backlog))
        return result

    orig_place = exchange.Exchange.place_market

    async def place_market(self, side, qty, reduce_only, client_order_id):
        rec["place"].append((client_order_id, ns()))
        return await orig_place(self, side, qty, reduce_only, client_order_id)

    orig_send = client_reqrep.ClientRequest.send

    async def send(self, conn):
        if self.method == "POST" and self.url.path.endswith("/v1/order"):
            rec["wire"].append(ns())
        return await orig_send(self, conn)

    feed.Feed.handle = handle
    runner.Bot._on_transition = on_transition
    runner.Bot._live = live
    runner.log = TransitionLog(runner.log)
    runner.Bot.commit = commit
    exchange.Exchange.place_market = place_market
    client_reqrep.ClientRequest.send = send

    def dump() -> None:
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(rec, fh)

    atexit.register(dump)


# ---- read-loop costs ---------------------------------------------------------------------------------

async def _client(port: int, variant: str, n: int) -> None:
    import websockets

    loads = json.loads
    if variant == "feed":  # the product's own read loop, with json.loads in place of the full parse
        sys.path.insert(0, ROOT)
        import feed

        got = [0]
        timing: list = []

        async def connected() -> None:
            timing.extend((resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()))

        def count(raw) -> None:
            loads(raw)
            got[0] += 1
            if got[0] == n:
                timing.extend((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)))
                f.stop()

        f = feed.Feed(f"ws://127.0.0.1:{port}/x", "BTCUSDT", "1m", on_trade=lambda t, p: None,
                      on_kline_closed=lambda k: None, on_connected=connected, on_state=lambda s: None)
        f.handle = count
        await asyncio.wait_for(f.run(), 300)
        r0, t0, t1, r1 = timing
        _report(variant, n, t1 - t0, r0, r1)
        return
    async with websockets.connect(f"ws://127.0.0.1:{port}/x", compression=None, max_size=2 ** 20) as ws:
        got = 0
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if variant == "recv":
            while got < n:
                loads(await ws.recv())
                got += 1
        elif variant == "wait_for":
            while got < n:
                loads(await asyncio.wait_for(ws.recv(), timeout=30))
                got += 1
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        _report(variant, n, dt, r0, r1)


def _report(variant: str, n: int, dt: float, r0, r1) -> None:
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    print(json.dumps({"variant": variant, "rate": n / dt, "cpu_us": cpu / n * 1e6, "cpu_pct": cpu / dt * 100}))


async def read_loop_costs(n: int = 200_000) -> list[dict]:
    """Each variant in a fresh client process, one after the other, against one sender."""
    import websockets

    async def handler(ws) -> None:
        for _ in range(n):
            await ws.send(MSG, text=True)
        await ws.wait_closed()

    server = await websockets.serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    results = []
    try:
        for variant in VARIANTS:
            proc = await asyncio.create_subprocess_exec(sys.executable, os.path.abspath(__file__), "readloop-client",
                                                        str(port), variant, str(n),
                                                        stdout=asyncio.subprocess.PIPE)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 120)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                continue
            if proc.returncode == 0 and out:
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        server.close()
        await server.wait_closed()
    return results


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bot":
        if os.environ.get("PROBE_OUT"):
            install_probes(os.environ["PROBE_OUT"])
        if os.environ.get("PROBE_SQLITE_CACHE_KIB"):
            small_sqlite_cache(int(os.environ["PROBE_SQLITE_CACHE_KIB"]))
        if os.environ.get("PROBE_SWITCH_INTERVAL_S"):  # how long a thread waits for the GIL before forcing a switch
            sys.setswitchinterval(float(os.environ["PROBE_SWITCH_INTERVAL_S"]))
        sys.path.insert(0, ROOT)
        import bollmin

        return bollmin.main(argv[1:])
    if argv and argv[0] == "readloop-client":
        asyncio.run(_client(int(argv[1]), argv[2], int(argv[3])))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
