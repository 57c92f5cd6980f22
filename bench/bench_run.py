#!/usr/bin/env python3
"""Benchmark of the running bot: the real ``python bollmin.py run`` process on loopback.

    .venv/bin/python bench/bench_run.py            print the markdown section (tables + analysis) on stdout
    .venv/bin/python bench/bench_run.py --write    also regenerate the run section of BENCHMARKS.md
                                                   (between <!-- run:begin --> and <!-- run:end -->)

stdout carries the section and nothing else (``bench/run_all.py run`` pastes it into
BENCHMARKS.md too); progress goes to stderr; ``--raw PATH`` saves every measured value as JSON
and ``--from-raw PATH`` renders such a file again without measuring anything.
About 6 to 7 minutes on a quiet 2-core machine (more while waiting for a quiet one).

Four measures, each against a fresh bot process with its own config, DB and log in a temp dir:

1. **Tick-to-order latency** (live mode, MARKET orders). A ``SimExchange`` runs on this process's
   event loop, replaying the bundled May 2025 1m BTCUSDT file fast (``--speed``, default 4000×:
   one tick every 5 ms, except the close tick and the next open tick, which are 1 ms of data
   apart). It is wrapped, not edited: a ``StreamHub`` subclass takes ``time.perf_counter_ns()``
   right after each aggTrade frame has been handed to the socket (aiohttp's ``send_str``
   returns), and a ``_serve_rest`` override takes it when ``POST /fapi/v1/order`` reaches the
   exchange (headers parsed, before the body is read). Each order is matched to its crossing
   tick *exactly*: the bot's ``orders.time_ms`` is the exchange time ``T`` of the tick that caused
   the transition, and the order's ``newClientOrderId`` names that row. Only the first order of
   a transition counts (the open of a reversal waits for the close's fill and is shown apart).
   As a cross-check, the table also gives how often "the last tick sent before the order
   arrived" is that same tick.
2. **The same latency while the dashboard is hammered** (``--load-crossings``, default as many
   crossings as the plain run; 0 skips it): right after the plain run, a fresh bot on the same
   replay, plus the real dashboard (``python dashboard.py --config F``, ``F`` pointing at that
   bot's DB, on a free 127.0.0.1 port) and ``bench/dashboard_load.py`` in a process of its own
   (4 threads, each one keep-alive connection issuing back-to-back GETs of ``/api/status``,
   ``/api/candles``, ``/api/trades``, ``/``) for the whole measurement. Reported: both
   latencies, their difference, the dashboard's requests/s and where the CPU went. Then a
   control run (``--control-crossings``, default 600; 0 skips it): the same clients on
   ``/healthz`` only, which never opens the DB — what CPU contention alone does.
3. **Saturation message rate** (paper mode). A plain ``websockets.serve`` server on 127.0.0.1
   serves the routed path ``/market/stream?streams=btcusdt@kline_1m/btcusdt@aggTrade`` (no
   permessage-deflate) and sends pre-serialized aggTrade messages back to back; ``send`` waits
   when the socket buffer is full, so the bot's reading speed sets the pace. REST history comes
   from a paused ``SimExchange`` holding synthetic candles that join the stream. The prices are
   a random walk around 95 000 (0.1 tick, σ ≈ 0.8 USDT per trade, weak pull back to 95 000), a
   trade every 60 ms of exchange time (1 000 trades per 1m candle), with a closed-kline message
   at each candle boundary, so candles roll on exchange timestamps and the strategy trades.
   The rate is the slope of the bot's own ``status.messages`` counter against its
   ``status.heartbeat_ms`` (written about once a second) while the stream is saturated; CPU
   is from psutil (whole process, and its main thread alone).
4. **RSS** of the bot process after 10⁵ and after 10⁶ ticks of that firehose (and after
   ``--plateau-ticks``, default 2·10⁶, to show whether growth levels off): the sender stops at
   each mark, waits until the bot has read every message and its DB writer is idle, then reads
   ``memory_info().rss``.

Then, unless ``--breakdown 0``, *where the time goes* (analysis, not the figures above): a third
latency run with the same bot started through ``bench/run_probes.py bot`` (a few functions wrapped
to note ``perf_counter_ns`` at each step of an order's way, the transition's log line and the
order task's first step included), the CPU per message of WebSocket read loops (bare ``recv``, the
product's own ``Feed`` loop, a per-message ``asyncio.wait_for`` for comparison), the in-process
cost of ``Feed.handle`` + ``Engine.on_trade``, and — only when RSS grew by 1 MB or more — a
firehose run with a small SQLite page cache and (when the DB writer's queue piled up) one with a
shorter GIL switch interval in the bot, to see what the growth is made of. The section ends with
the earlier suggestions the code has taken up (checked against these figures and the code) and
the bottlenecks left.

The machine may be shared: before each part the bench waits (at most ``--wait-quiet`` s) for
other processes to use < 25 % of a core, and it reports how much CPU they used during each part
(system-wide busy time minus the bot's and its own) and the load average at the start.

Only 127.0.0.1 is used; every process started here is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

import common  # bench/common.py: machine line and BENCHMARKS.md sections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402
import websockets  # noqa: E402
from aiohttp import web  # noqa: E402

from history import Candle  # noqa: E402
from simexchange import DEMO_API_KEY, DEMO_API_SECRET, SimExchange  # noqa: E402
from simmarket import Replay, StreamHub  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_probes  # noqa: E402

DATA_1M = os.path.join(ROOT, "marketdata", "btcusdt_um_1m_2025-05.csv.gz")
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")
PROBES = os.path.join(ROOT, "bench", "run_probes.py")
SMALL_CACHE_KIB = 100
SMALL_CACHE_CHECK_MB = 1.0  # RSS growth from which the breakdown reruns the firehose with a small SQLite cache
SWITCH_INTERVAL_S = 0.0005  # ... and with this GIL switch interval in the bot (CPython's default: 0.005 s)
BEGIN, END = "<!-- run:begin -->", "<!-- run:end -->"
COMMAND = "python bench/bench_run.py --write"

TARGET_P99_MS = 5.0
TARGET_RATE = 20_000
TARGET_GROWTH_MB = 2.0
TARGET_RSS_MB = 150.0

SYMBOL = "BTCUSDT"
STREAMS_PATH = "/market/stream"
STREAMS_QUERY = "streams=btcusdt@kline_1m/btcusdt@aggTrade"
MINUTE_MS = 60_000
FIREHOSE_STEP_MS = 60           # exchange time between two trades of the firehose
FIREHOSE_BASE_TENTHS = 950_000  # 95 000.0 USDT
FIREHOSE_T0_MS = 1_748_736_000_000  # 2025-06-01 00:00 UTC: the forming candle the firehose starts in
HISTORY_CANDLES = 60
LOAD_THREADS = 4                # dashboard load generator: keep-alive clients
CONTROL_PATHS = ("/healthz",)   # the control run's only route: Flask and JSON, no SQLite


# ---- helpers ------------------------------------------------------------------------------------

def machine() -> str:
    return common.machine()


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(math.ceil(p / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[min(k, len(sorted_values) - 1)]


def query(db_path: str, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def bot_status(db_path: str) -> dict[str, str]:
    try:
        return {r["key"]: r["value"] for r in query(db_path, "SELECT key, value FROM status")}
    except sqlite3.Error:
        return {}


def write_config(path: str, **values: Any) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for k, v in values.items():
            fh.write(f"{k} = {v!r}\n")
    return path


class BotProcess:
    """``python bollmin.py run --config F`` as a child process (stderr to a file)."""

    def __init__(self, workdir: str, **settings: Any) -> None:
        self.workdir = workdir
        self.db = os.path.join(workdir, "bot.db")
        values = {"INTERVAL": "1m", "DB_PATH": self.db, "LOG_FILE": os.path.join(workdir, "bot.log"),
                  "AUTO_RESTART": False, **settings}
        self.config = write_config(os.path.join(workdir, "config.py"), **values)
        self.argv = [sys.executable, os.path.join(ROOT, "bollmin.py"), "run", "--config", self.config]
        self.stderr_path = os.path.join(workdir, "stderr.txt")
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self.extra_env: dict[str, str] = {}

    def probed(self, **env: str) -> BotProcess:
        """Run the bot through ``run_probes.py bot`` (same code, plus probes chosen by ``env``) instead."""
        self.argv = [sys.executable, PROBES, "bot", *self.argv[2:]]
        self.extra_env.update(env)
        return self

    def start(self) -> BotProcess:
        env = {k: v for k, v in os.environ.items()
               if k not in ("BOLLMIN_CONFIG", "BINANCE_API_KEY", "BINANCE_API_SECRET", "NOTIFY_SOCKET")}
        env.update(self.extra_env)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.ps = psutil.Process(self.proc.pid)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, n: int = 15) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` (blocking)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    async def astop(self, timeout: float = 15.0) -> int | None:
        """Stop without blocking the event loop (the exchange on it must keep serving the bot)."""
        return await asyncio.to_thread(self.stop, timeout)

    def rss(self) -> int:
        assert self.ps is not None
        return self.ps.memory_info().rss

    def cpu(self) -> tuple[float, float]:
        """(CPU seconds of the whole process, of its main thread)."""
        assert self.ps is not None
        t = self.ps.cpu_times()
        main = next((th.user_time + th.system_time for th in self.ps.threads() if th.id == self.ps.pid), 0.0)
        return t.user + t.system, main


async def wait_until(predicate: Any, timeout: float, what: str, bot: BotProcess, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not bot.alive():
            raise RuntimeError(f"the bot exited ({bot.proc.returncode}) while waiting for {what}:\n"
                               + bot.stderr_tail())
        value = predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}:\n" + bot.stderr_tail())


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; steal counted as busy)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class LoadMeter:
    """CPU used by *other* processes (not the bot, not this bench) between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.bot: BotProcess | None = None
        self._t0 = self._busy0 = self._ours0 = 0.0
        self.others_pct = float("nan")

    def _ours(self) -> float:
        t = self.me.cpu_times()
        ours = t.user + t.system
        if self.bot is not None and self.bot.alive():
            ours += self.bot.cpu()[0]
        return ours

    def start(self, bot: BotProcess | None = None) -> None:
        self.bot = bot
        self._t0, self._busy0, self._ours0 = time.monotonic(), _busy_s(), self._ours()

    def stop(self) -> float:
        span = time.monotonic() - self._t0
        self.others_pct = max(_busy_s() - self._busy0 - (self._ours() - self._ours0), 0.0) / span * 100
        return self.others_pct


async def wait_quiet(max_s: float, log: Any, limit_pct: float = 25.0) -> float:
    """Wait (at most ``max_s``) until other processes use less than ``limit_pct`` of one core over 2 s.

    Returns the last reading; the bench goes on either way (the load is reported with the figures).
    """
    deadline = time.monotonic() + max_s
    meter = LoadMeter()
    while True:
        meter.start()
        await asyncio.sleep(2.0)
        load = meter.stop()
        if load < limit_pct or time.monotonic() >= deadline:
            break
        log(f"other processes use {load:.0f} % of a core; waiting for a quieter machine")
    return load


# ---- 1. tick-to-order latency ----------------------------------------------------------------------

class TimedHub(StreamHub):
    """``StreamHub`` that notes when each aggTrade frame has been written to the socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trade_sent_ns: dict[int, int] = {}   # exchange time T of the trade -> perf_counter_ns
        self.sent_times: list[int] = []           # perf_counter_ns of every aggTrade, in order
        self.sent_T: list[int] = []

    async def sender(self, client: Any) -> None:  # same as StreamHub.sender, plus the time stamp
        try:
            while True:
                text = await client.queue.get()
                if client.queue.qsize() <= self.queue_size // 4:
                    client.drained.set()
                await client.ws.send_str(text)
                if '"e":"aggTrade"' in text:
                    now = time.perf_counter_ns()
                    i = text.rfind('"T":') + 4
                    t = int(text[i:text.index(",", i)])
                    self.trade_sent_ns.setdefault(t, now)
                    self.sent_times.append(now)
                    self.sent_T.append(t)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, RuntimeError):
            return
        except Exception:  # a dying socket: the client is gone
            return


class TimedSim(SimExchange):
    """``SimExchange`` with a ``TimedHub`` and the arrival time of every ``POST /fapi/v1/order``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = TimedHub(self.market, self.hub.queue_size)
        self.replay = Replay(self.market, self.hub, self.replay.speed, self.replay.paused)
        self.app = self._make_app()  # routes bound to the new hub
        self.order_arrivals: list[tuple[int, str]] = []  # (perf_counter_ns, newClientOrderId)

    async def _serve_rest(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/fapi/v1/order":
            return await super()._serve_rest(request, handler)
        now = time.perf_counter_ns()
        response = await super()._serve_rest(request, handler)
        # the exchange keeps (raw query, raw body, params) on the request; the body cannot be read twice
        raw = next((v for v in request.values() if isinstance(v, tuple) and len(v) == 3 and isinstance(v[2], dict)),
                   None)
        self.order_arrivals.append((now, raw[2].get("newClientOrderId", "") if raw else ""))
        return response


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class DashboardLoad:
    """The real dashboard (``python dashboard.py --config F``, F pointing at the bot's DB) on a free
    127.0.0.1 port, hammered by ``bench/dashboard_load.py`` (its own process, ``threads`` keep-alive clients)."""

    def __init__(self, bot: BotProcess, threads: int = LOAD_THREADS, paths: tuple[str, ...] = (),
                 nice: int = 0) -> None:
        self.bot, self.threads = bot, threads
        self.paths, self.nice = paths, nice  # for experiments: other routes, a lower CPU priority
        self.port = free_port()
        self.config = write_config(os.path.join(bot.workdir, "dashboard-config.py"), DB_PATH=bot.db, INTERVAL="1m",
                                   DASHBOARD_HOST="127.0.0.1", DASHBOARD_PORT=self.port, LOG_LEVEL="WARNING")
        self.stderr_path = os.path.join(bot.workdir, "dashboard-stderr.txt")
        self.server: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self.load: asyncio.subprocess.Process | None = None
        self.marks: list[dict[str, Any]] = []

    async def start(self, log: Any) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BOLLMIN_") and k not in ("BINANCE_API_KEY", "BINANCE_API_SECRET")}
        with open(self.stderr_path, "ab") as err:
            prefix = ["nice", "-n", str(self.nice)] if self.nice else []
            self.server = subprocess.Popen([*prefix, sys.executable, os.path.join(ROOT, "dashboard.py"), "--config",
                                            self.config], cwd=self.bot.workdir, env=env, stdout=subprocess.DEVNULL,
                                           stderr=err)
        self.ps = psutil.Process(self.server.pid)
        try:  # as bollmin-dashboard.service runs it (CPUSchedulingPolicy=idle)
            os.sched_setscheduler(self.server.pid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            log(f"latency: could not put the dashboard in the idle scheduling class: {exc}")
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_http_ok, f"http://127.0.0.1:{self.port}/healthz"):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start:\n" + self._stderr_tail())
            await asyncio.sleep(0.2)
        log(f"latency: dashboard on 127.0.0.1:{self.port} (pid {self.server.pid}); starting the load generator "
            f"({self.threads} keep-alive clients)")
        self.load = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(ROOT, "bench", "dashboard_load.py"), str(self.port),
            "--threads", str(self.threads), *(["--paths", *self.paths] if self.paths else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(2.0)  # warm up: every client connected, every route served at least once
        first = await self.mark()
        if not first["requests"]:
            raise RuntimeError(f"the dashboard load generator got no answer ({first['last_error']}):\n"
                               + self._stderr_tail())
        self.marks.clear()

    def _stderr_tail(self, n: int = 10) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-n:])
        except OSError:
            return ""

    async def mark(self) -> dict[str, Any]:
        """Counts of the load generator now, plus the dashboard's CPU seconds."""
        assert self.load is not None and self.load.stdin is not None and self.load.stdout is not None
        self.load.stdin.write(b"\n")
        await self.load.stdin.drain()
        line = await asyncio.wait_for(self.load.stdout.readline(), 30)
        m = json.loads(line)
        t = self.ps.cpu_times() if self.ps is not None and self.server.poll() is None else None
        m["dash_cpu_s"] = t.user + t.system if t else float("nan")
        self.marks.append(m)
        return m

    def summary(self) -> dict[str, Any]:
        if len(self.marks) < 2:
            return {}
        a, b = self.marks[0], self.marks[-1]
        span = b["t"] - a["t"]
        try:
            nice = self.ps.nice() if self.ps is not None else None
            policy = {os.SCHED_IDLE: "idle", os.SCHED_BATCH: "batch"}.get(os.sched_getscheduler(self.ps.pid), "normal")
        except (psutil.Error, OSError, AttributeError):
            nice, policy = None, None
        return {"threads": self.threads, "seconds": span, "requests": b["requests"] - a["requests"], "nice": nice,
                "policy": policy,
                "rps": (b["requests"] - a["requests"]) / span,
                "by_path": {k: b["by_path"][k] - a["by_path"][k] for k in b["by_path"]},
                "errors": b["errors"] - a["errors"], "last_error": b["last_error"],
                "dash_cpu": (b["dash_cpu_s"] - a["dash_cpu_s"]) / span * 100,
                "load_cpu": (b["cpu_s"] - a["cpu_s"]) / span * 100}

    async def stop(self) -> None:
        if self.load is not None and self.load.returncode is None:
            try:
                assert self.load.stdin is not None
                self.load.stdin.close()
                await asyncio.wait_for(self.load.communicate(), 20)
            except (TimeoutError, OSError, ValueError):
                self.load.kill()
                await self.load.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                await asyncio.to_thread(self.server.wait, 10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                await asyncio.to_thread(self.server.wait, 5)


async def bench_latency(workdir: str, speed: float, crossings: int, max_s: float, log: Any,
                        probe_out: str | None = None, dashboard_load: bool = False,
                        load_paths: tuple[str, ...] = ()) -> dict[str, Any]:
    sim = TimedSim(DATA_1M, speed=speed, paused=True, target_interval="1m")
    port = await sim.start("127.0.0.1", 0)
    bot = BotProcess(workdir, REST_BASE_URL=f"http://127.0.0.1:{port}", WS_BASE_URL=f"ws://127.0.0.1:{port}",
                     PAPER_TRADING=False, API_KEY=DEMO_API_KEY, API_SECRET=DEMO_API_SECRET)
    if probe_out:
        bot.probed(PROBE_OUT=probe_out)
    log(f"latency: simexchange on 127.0.0.1:{port}, speed {speed:g}x; starting {' '.join(bot.argv)}")
    dash = DashboardLoad(bot, paths=load_paths) if dashboard_load else None
    load: dict[str, Any] = {}
    try:
        bot.start()
        await wait_until(lambda: bot_status(bot.db).get("connection") == "connected", 60, "the bot to connect", bot)
        if dash is not None:
            await dash.start(log)
        await asyncio.sleep(0.5)
        cpu0, wall0 = bot.cpu()[0], time.monotonic()
        me0 = sum(psutil.Process().cpu_times()[:2])
        meter = LoadMeter()
        meter.start(bot)
        if dash is not None:
            await dash.mark()
        sim.replay.resume()
        started = time.monotonic()
        # first legs only: an open-leg "-o" that follows a "-c" of the same transition is a second leg
        while time.monotonic() - started < max_s and not sim.market.finished:
            firsts = {cid.rsplit("-", 1)[0] for _t, cid in sim.order_arrivals}
            if len(firsts) >= crossings:
                break
            if not bot.alive():
                raise RuntimeError("the bot exited during the latency run:\n" + bot.stderr_tail())
            await asyncio.sleep(0.5)
        sim.replay.pause()
        wal_bytes = os.path.getsize(bot.db + "-wal") if os.path.exists(bot.db + "-wal") else 0
        if dash is not None:
            await dash.mark()
            load = dash.summary()
        others = meter.stop()
        replay_s = time.monotonic() - started
        bot_cpu = (bot.cpu()[0] - cpu0) / (time.monotonic() - wall0) * 100
        bench_cpu = (sum(psutil.Process().cpu_times()[:2]) - me0) / (time.monotonic() - wall0) * 100
        ticks = len(sim.hub.sent_times)
        if dash is not None:
            await dash.stop()
        await asyncio.sleep(1.0)  # let the last order finish
        code = await bot.astop()
    finally:
        if dash is not None:
            await dash.stop()
        if bot.alive():
            await bot.astop()
        await sim.stop()
    rows = query(bot.db, "SELECT client_order_id, transition_id, time_ms, status FROM orders WHERE paper = 0 "
                         "ORDER BY id")
    by_cid = {r["client_order_id"]: r for r in rows}
    first_of: dict[int, str] = {}
    for r in rows:
        first_of.setdefault(r["transition_id"], r["client_order_id"])
    first, second, unmatched, agree = [], [], 0, 0
    for arrived, cid in sim.order_arrivals:
        row = by_cid.get(cid)
        sent = sim.hub.trade_sent_ns.get(row["time_ms"]) if row is not None else None
        if sent is None:
            unmatched += 1
            continue
        ms = (arrived - sent) / 1e6
        if first_of.get(row["transition_id"]) == cid:
            first.append(ms)
            i = bisect.bisect_left(sim.hub.sent_times, arrived) - 1
            agree += i >= 0 and sim.hub.sent_T[i] == row["time_ms"]
        else:
            second.append(ms)
    first.sort()
    second.sort()
    filled = sum(r["status"] == "filled" for r in rows)
    segments = breakdown(probe_out, sim, rows) if probe_out else {}
    return {"speed": speed, "tick_gap_ms": 20_000 / speed, "ticks": ticks, "replay_s": replay_s, "n": len(first),
            "n_wanted": crossings,
            "p50": pct(first, 50), "p90": pct(first, 90), "p99": pct(first, 99), "max": first[-1] if first else 0.0,
            "mean": sum(first) / len(first) if first else 0.0, "second_n": len(second),
            "second_p50": pct(second, 50), "second_p99": pct(second, 99), "orders": len(sim.order_arrivals),
            "filled": filled, "unmatched": unmatched, "agree": agree, "bot_cpu": bot_cpu, "bench_cpu": bench_cpu,
            "others_pct": others,
            "exit": code, "segments": segments, "dashboard": load, "db_busy": count_lines(bot, "database busy"),
            "wal_bytes": wal_bytes}


def count_lines(bot: BotProcess, needle: str) -> int:
    """Lines of the bot's stderr containing ``needle`` (e.g. the writer's "database busy" retries)."""
    try:
        with open(bot.stderr_path, encoding="utf-8", errors="replace") as fh:
            return sum(needle in line for line in fh)
    except OSError:
        return 0


SEGMENTS = (
    "exchange wrote the tick → bot starts parsing it (`Feed.handle`): loopback, websockets, event loop",
    "parse + `Engine.on_trade` → `Bot._on_transition` called",
    "`_on_transition` up to its log line: the order task is created (`create_task`)",
    "the transition's log line (format; stderr, rotating file, `events` row queued for the writer)",
    "`_on_transition` returns, the feed's read loop yields, the event loop starts the order task",
    "order task: `LiveBroker.make_intents` → intent commit starts",
    "intent + transition committed by the writer thread (`Bot.commit(write_transition)`)",
    "commit done → `Exchange.place_market` called",
    "python-binance builds and signs the request → aiohttp `ClientRequest.send`",
    "aiohttp writes it → the exchange has parsed the request",
    "total (first orders with every probe)",
)
SEG_LOG, SEG_WAKE, SEG_COMMIT, SEG_BINANCE = 3, 4, 6, 8  # indices used by the analysis


def breakdown(probe_out: str, sim: TimedSim, rows: list[sqlite3.Row]) -> dict[str, Any]:
    """Percentiles of each step of the first order of a transition (probed bot + exchange stamps)."""
    try:
        with open(probe_out, encoding="utf-8") as fh:
            probe = json.load(fh)
    except (OSError, ValueError):
        return {}
    arrivals = {cid: t for t, cid in sim.order_arrivals}
    transition = {x[0]: x for x in probe["transition"]}
    tasks = {x[0]: x[1] for x in probe["task"]}
    commits = {x[0]: x for x in probe["commit"]}
    places = dict(probe["place"])
    wire = sorted(probe["wire"])
    first: dict[int, sqlite3.Row] = {}
    for r in rows:
        first.setdefault(r["transition_id"], r)
    parts: list[list[float]] = [[] for _ in SEGMENTS]
    backlog = []
    for r in first.values():
        t_ms, cid = r["time_ms"], r["client_order_id"]
        sent = sim.hub.trade_sent_ns.get(t_ms)
        if (sent is None or t_ms not in transition or t_ms not in tasks or t_ms not in commits or cid not in places
                or cid not in arrivals):
            continue
        _, handled, tr0, log0, log1, _tr1 = transition[t_ms]
        _, c0, c1, queued = commits[t_ms]
        placed, arrived = places[cid], arrivals[cid]
        i = bisect.bisect_left(wire, placed)
        if not log0 or i >= len(wire) or wire[i] > arrived:
            continue
        stamps = (sent, handled, tr0, log0, log1, tasks[t_ms], c0, c1, placed, wire[i], arrived)
        for k in range(len(stamps) - 1):
            parts[k].append((stamps[k + 1] - stamps[k]) / 1e6)
        parts[-1].append((arrived - sent) / 1e6)
        backlog.append(queued)
    out = {}
    for name, values in zip(SEGMENTS, parts, strict=True):
        values.sort()
        out[name] = {"p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99), "n": len(values)}
    out["_writer_busy"] = sum(1 for q in backlog if q) / len(backlog) if backlog else 0.0
    return out


# ---- 2 + 3. firehose: saturation rate and RSS -------------------------------------------------------

def fmt_price(tenths: int) -> str:
    return f"{tenths // 10}.{tenths % 10}0"


def synthetic_history(rng: random.Random) -> list[Candle]:
    """HISTORY_CANDLES closed 1m candles ending at 95 000 and the (empty) forming candle at T0."""
    closes, p = [], FIREHOSE_BASE_TENTHS
    for _ in range(HISTORY_CANDLES):
        closes.append(p)
        p += round(rng.gauss(0, 250))
    closes.reverse()  # the walk runs backwards from 95 000, so the last close is 95 000
    candles, prev = [], closes[0] + round(rng.gauss(0, 250))
    for i, c in enumerate(closes):
        t = FIREHOSE_T0_MS - (HISTORY_CANDLES - i) * MINUTE_MS
        hi, lo = max(prev, c) + rng.randint(0, 150), min(prev, c) - rng.randint(0, 150)
        candles.append(Candle(t, prev / 10, hi / 10, lo / 10, c / 10, round(rng.uniform(50, 300), 3)))
        prev = c
    candles.append(Candle(FIREHOSE_T0_MS, prev / 10, prev / 10, prev / 10, prev / 10, 0.0))
    return candles


def firehose_messages(n_ticks: int, rng: random.Random) -> tuple[list[bytes], list[int]]:
    """Pre-serialized combined-stream messages and, for each tick count k, the message index after tick k.

    A closed-kline message goes out before the first trade of each new candle.
    """
    msgs: list[bytes] = []
    after_tick: list[int] = [0]
    p = FIREHOSE_BASE_TENTHS
    agg, trade_id = 3_000_000_000, 7_000_000_000
    bar_open, o = FIREHOSE_T0_MS, p
    h = lo = c = p
    v = 0
    n = 0
    first_id = trade_id
    gauss = rng.gauss
    for k in range(n_ticks):
        t = FIREHOSE_T0_MS + k * FIREHOSE_STEP_MS
        open_ms = t - t % MINUTE_MS
        if open_ms != bar_open and n:
            kline = (f'{{"stream":"btcusdt@kline_1m","data":{{"e":"kline","E":{bar_open + MINUTE_MS},'
                     f'"s":"{SYMBOL}","k":{{"t":{bar_open},"T":{bar_open + MINUTE_MS - 1},"s":"{SYMBOL}",'
                     f'"i":"1m","f":{first_id},"L":{trade_id - 1},"o":"{fmt_price(o)}","c":"{fmt_price(c)}",'
                     f'"h":"{fmt_price(h)}","l":"{fmt_price(lo)}","v":"{v // 1000}.{v % 1000:03d}","n":{n},'
                     f'"x":true,"q":"0","V":"0","Q":"0","B":"0"}}}}}}')
            msgs.append(kline.encode())
            bar_open, o, h, lo, v, n, first_id = open_ms, p, p, p, 0, 0, trade_id
        p += round(gauss(0, 8)) - (p - FIREHOSE_BASE_TENTHS) // 5000
        qty = 1 + int(rng.expovariate(1 / 15))
        n_trades = 1 + (qty > 20)
        q = f"{qty // 1000}.{qty % 1000:03d}"
        msg = (f'{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":{t + 3},"s":"{SYMBOL}","a":{agg},'
               f'"p":"{fmt_price(p)}","q":"{q}","nq":"{q}","f":{trade_id},"l":{trade_id + n_trades - 1},'
               f'"T":{t},"m":{"true" if k % 3 else "false"}}}}}')
        msgs.append(msg.encode())
        agg += 1
        trade_id += n_trades
        h, lo, c, v, n = max(h, p), min(lo, p), p, v + qty, n + n_trades
        after_tick.append(len(msgs))
    return msgs, after_tick


class Firehose:
    """A ``websockets.serve`` server that sends ``msgs`` on the routed stream path as fast as it is read."""

    def __init__(self, msgs: list[bytes]) -> None:
        self.msgs = msgs
        self.sent = 0
        self.limit = 0                 # send up to (not including) this index, then wait for a new limit
        self.more = asyncio.Event()
        self.connections = 0
        self.rejected: list[str] = []
        self.server: Any = None
        self.port = 0

    async def start(self) -> int:
        self.server = await websockets.serve(self.handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                                             max_size=2 ** 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def allow(self, limit: int) -> None:
        self.limit = min(limit, len(self.msgs))
        self.more.set()

    async def handler(self, ws: Any) -> None:
        path, _, q = ws.request.path.partition("?")
        if path != STREAMS_PATH or q != STREAMS_QUERY:
            self.rejected.append(ws.request.path)
            await ws.close(1008, "unknown stream path")
            return
        self.connections += 1
        msgs, send = self.msgs, ws.send
        try:
            while self.sent < len(msgs):
                if self.sent >= self.limit:
                    self.more.clear()
                    await self.more.wait()
                    continue
                i, stop = self.sent, self.limit
                while i < stop:
                    await send(msgs[i], text=True)
                    i += 1
                    self.sent = i
            await ws.wait_closed()
        except websockets.ConnectionClosed:
            pass

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Sampler:
    """Samples the bot (status row, CPU) and this process (CPU) every ``every`` seconds."""

    def __init__(self, bot: BotProcess, every: float = 0.25) -> None:
        self.bot, self.every = bot, every
        self.rows: list[dict[str, float]] = []
        self.me = psutil.Process()
        self._task: asyncio.Task | None = None

    def sample(self) -> dict[str, float]:
        st = bot_status(self.bot.db)
        cpu, main = self.bot.cpu()
        mine = self.me.cpu_times()
        row = {"wall": time.monotonic(), "cpu": cpu, "main": main, "me": mine.user + mine.system,
               "messages": float(st.get("messages") or 0), "heartbeat_ms": float(st.get("heartbeat_ms") or 0),
               "backlog": float(st.get("db_backlog") or 0), "rss": float(self.bot.rss())}
        self.rows.append(row)
        return row

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def settle(bot: BotProcess, want_messages: int, timeout: float) -> dict[str, str]:
    """Wait until the bot has read ``want_messages`` and its DB writer queue is empty; return its status."""
    def done() -> dict[str, str] | None:
        st = bot_status(bot.db)
        ok = int(st.get("messages") or 0) >= want_messages and st.get("db_backlog") in ("0", None)
        return st if ok else None

    st = await wait_until(done, timeout, f"the bot to read {want_messages:,} messages", bot, every=0.2)
    await asyncio.sleep(1.5)  # one more heartbeat; the writer finishes what the last messages queued
    return st


def db_bytes(db_path: str) -> int:
    """Logical size of the bot's SQLite DB (pages, WAL included)."""
    row = query(db_path, "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()")[0]
    return int(row["n"])


def saturated_rate(rows: list[dict[str, float]], lo: float, hi: float) -> tuple[float, ...]:
    """(messages, seconds by the bot's heartbeats, bot CPU s, main-thread CPU s, sender CPU s, wall s) while
    the bot's counter was between ``lo`` and ``hi`` (the stream was full there)."""
    window = [r for r in rows if lo <= r["messages"] <= hi]
    beats: dict[float, float] = {}
    for r in window:
        beats.setdefault(r["heartbeat_ms"], r["messages"])
    pts = sorted(beats.items())
    if len(pts) < 2 or len(window) < 2:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    a, b = window[0], window[-1]
    return (pts[-1][1] - pts[0][1], (pts[-1][0] - pts[0][0]) / 1000, b["cpu"] - a["cpu"], b["main"] - a["main"],
            b["me"] - a["me"], b["wall"] - a["wall"])


async def bench_firehose(workdir: str, marks: list[int], log: Any, probe_env: dict[str, str] | None = None
                         ) -> dict[str, Any]:
    """Stream ``marks[-1]`` ticks, stopping at each mark (a tick count) to read the bot's RSS."""
    rng = random.Random(20250601)
    history = synthetic_history(rng)
    t0 = time.monotonic()
    msgs, after_tick = firehose_messages(marks[-1], rng)
    log(f"firehose: {len(msgs):,} messages ({marks[-1]:,} ticks) serialized in {time.monotonic() - t0:.1f}s, "
        f"{sum(map(len, msgs)) / len(msgs):.0f} bytes each on average")
    rest = SimExchange(history, paused=True, history_candles=len(history) - 1, target_interval="1m")
    rest_port = await rest.start("127.0.0.1", 0)
    hose = Firehose(msgs)
    ws_port = await hose.start()
    bot = BotProcess(workdir, REST_BASE_URL=f"http://127.0.0.1:{rest_port}", WS_BASE_URL=f"ws://127.0.0.1:{ws_port}",
                     PAPER_TRADING=True)
    if probe_env:  # the same bot through run_probes.py, with an experiment (small SQLite cache, GIL switch interval)
        bot.probed(**probe_env)
    log(f"firehose: REST history on 127.0.0.1:{rest_port}, stream on 127.0.0.1:{ws_port}; "
        f"starting {' '.join(bot.argv)}")
    sampler = Sampler(bot)
    meter = LoadMeter()
    phases: list[tuple[int, int, int]] = []  # (first sampler row, messages at start, messages at the mark)
    readings: list[dict[str, Any]] = []
    try:
        bot.start()
        await wait_until(lambda: bot_status(bot.db).get("connection") == "connected", 60, "the bot to connect", bot)
        rss_start = bot.rss()
        sampler.start()
        meter.start(bot)
        for mark in marks:
            target = after_tick[mark]
            phases.append((len(sampler.rows), hose.sent, target))
            hose.allow(target)
            st = await settle(bot, target, 600)
            readings.append({"ticks": mark, "rss": bot.rss(), "db_bytes": db_bytes(bot.db),
                             "dropped": int(st.get("dropped") or 0), "reconnects": int(st.get("reconnects") or 0)})
            log(f"firehose: {mark:,} ticks read; RSS {readings[-1]['rss'] / 2**20:.2f} MB")
        others = meter.stop()
        await sampler.stop()
        code = await bot.astop()
    finally:
        await sampler.stop()
        if bot.alive():
            await bot.astop()
        await hose.stop()
        await rest.stop()

    # Each phase after the first mark, away from its ends (5 %), is saturated: the sender always has data.
    tot = [0.0] * 6
    for i, (row0, _start, _end) in enumerate(phases):  # the writer's deepest queue on the way to each mark
        rows = sampler.rows[row0:phases[i + 1][0]] if i + 1 < len(phases) else sampler.rows[row0:]
        readings[i]["backlog_peak"] = int(max((x["backlog"] for x in rows), default=0))
    for i, (row0, start, end) in enumerate(phases[1:], 1):
        rows = sampler.rows[row0:phases[i + 1][0]] if i + 1 < len(phases) else sampler.rows[row0:]
        part = saturated_rate(rows, start + 0.05 * (end - start), start + 0.95 * (end - start))
        tot = [x + y for x, y in zip(tot, part, strict=True)]
    n, secs, cpu, main, me, wall = tot
    counts = query(bot.db, "SELECT (SELECT count(*) FROM transitions) AS tr, (SELECT count(*) FROM orders) AS o, "
                           "(SELECT count(*) FROM candles) AS c, (SELECT count(*) FROM events) AS e")[0]
    return {"marks": marks, "messages": len(msgs), "readings": readings, "rss_start": rss_start,
            "rate": n / secs if secs else float("nan"), "window_s": secs,
            "cpu": cpu / wall * 100 if wall else float("nan"), "main_cpu": main / wall * 100 if wall else float("nan"),
            "sender_cpu": me / wall * 100 if wall else float("nan"),
            "transitions": counts["tr"], "orders": counts["o"], "candles": counts["c"], "events": counts["e"],
            "connections": hose.connections, "others_pct": others, "exit": code}


def handle_cost_us(n: int = 200_000) -> float:
    """µs per message of ``Feed.handle`` + ``Engine.on_trade`` on firehose messages, in-process (best of 3)."""
    from engine import Engine
    from feed import Feed

    msgs = [m.decode() for m in firehose_messages(n, random.Random(7))[0]]
    closes = [95_000.0 + i for i in range(19)]
    best = float("inf")

    async def nothing() -> None:
        return None

    for _ in range(3):
        engine = Engine(20, 2.0, 0, MINUTE_MS, closes=closes, last_closed_open_ms=FIREHOSE_T0_MS - MINUTE_MS)
        feed = Feed("ws://127.0.0.1:9/market/stream", SYMBOL, "1m", on_trade=engine.on_trade,
                    on_kline_closed=lambda k: None, on_connected=nothing, on_state=lambda s: None)
        handle = feed.handle
        t0 = time.perf_counter()
        for m in msgs:
            handle(m)
        best = min(best, (time.perf_counter() - t0) / len(msgs) * 1e6)
    return best


# ---- report ---------------------------------------------------------------------------------------------

def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def render(r: dict[str, Any]) -> str:
    lat, fh = r["latency"], r["firehose"]
    mb = 2 ** 20
    rd = fh["readings"]
    r1, r2 = rd[0], rd[1]
    growth = (r2["rss"] - r1["rss"]) / mb
    lines = [
        "## Running bot (`bollmin.py run` on loopback)",
        "",
        f"Machine: {r['machine']}  ",
        f"Command: `{r.get('command', COMMAND)}` ({r['date']}; whole bench {r['total_s']:.0f} s)",
        "",
        "| measure | result | target | met |",
        "|---|---:|---:|:---:|",
        f"| tick-to-order latency p50 (live, MARKET: aggTrade written by the exchange → `POST /fapi/v1/order` "
        f"received; n = {lat['n']:,} crossings) | {lat['p50']:.2f} ms | — | |",
        f"| tick-to-order latency p99 (same n; p90 {lat['p90']:.2f} ms, max {lat['max']:.2f} ms) | "
        f"{lat['p99']:.2f} ms | ≤ {TARGET_P99_MS:g} ms | {_ok(lat['p99'] <= TARGET_P99_MS and lat['n'] >= 1000)} |",
        *loaded_rows(lat, r.get("loaded") or {}),
        f"| saturation rate (paper; aggTrade firehose read as fast as the bot can; its own message counter "
        f"over {fh['window_s']:.0f} s) | {fh['rate']:,.0f} msg/s | ≥ {TARGET_RATE:,} msg/s | "
        f"{_ok(fh['rate'] >= TARGET_RATE)} |",
        f"| bot CPU at saturation (whole process / main thread; 100 % = one core) | {fh['cpu']:.0f} % / "
        f"{fh['main_cpu']:.0f} % | — | |",
        f"| RSS after {r1['ticks']:,} ticks | {r1['rss'] / mb:.1f} MB | — | |",
        f"| RSS after {r2['ticks']:,} ticks | {r2['rss'] / mb:.1f} MB | < {TARGET_RSS_MB:g} MB | "
        f"{_ok(r2['rss'] / mb < TARGET_RSS_MB)} |",
        f"| RSS growth from {r1['ticks']:,} to {r2['ticks']:,} ticks | {growth:+.2f} MB | "
        f"< {TARGET_GROWTH_MB:g} MB | {_ok(growth < TARGET_GROWTH_MB)} |",
    ]
    for prev, cur in zip(rd[1:], rd[2:], strict=False):
        lines.append(f"| RSS growth from {prev['ticks']:,} to {cur['ticks']:,} ticks (does it level off?) | "
                     f"{(cur['rss'] - prev['rss']) / mb:+.2f} MB | — | |")
    lines += [
        "",
        f"**Latency run.** The bundled 1m BTCUSDT file (May 2025) replayed by an in-process `SimExchange` at "
        f"{lat['speed']:g}× (a tick every {lat['tick_gap_ms']:.0f} ms; a candle's close tick and the next open "
        f"tick come back to back), {lat['ticks']:,} ticks in {lat['replay_s']:.0f} s; the exchange received "
        f"{lat['orders']:,} orders ({lat['filled']:,} filled). Mean {lat['mean']:.2f} ms. Each order is matched "
        f"to its crossing tick by the exchange time the bot stored with the intent (`orders.time_ms`); the last "
        f"tick sent before the order arrived was that tick for {lat['agree']:,} of {lat['n']:,} (for the others, "
        f"a later tick had already gone out when the order arrived). Not counted above: the open leg of a "
        f"reversal, sent only after the close filled — tick → second order p50 {lat['second_p50']:.2f} ms, "
        f"p99 {lat['second_p99']:.2f} ms (n = {lat['second_n']:,}). Bot CPU during the replay "
        f"{lat['bot_cpu']:.0f} %; other processes on the machine {lat['others_pct']:.0f} % of a core.",
        "",
        *loaded_text(lat, r.get("loaded") or {}),
        f"**Firehose run.** {fh['messages']:,} pre-serialized messages ({fh['marks'][-1]:,} synthetic ticks: a "
        f"random walk around 95 000 with a 0.1 tick, one trade per {FIREHOSE_STEP_MS} ms of exchange time, plus a "
        f"closed kline per 1m candle) from a `websockets.serve` server (no compression) on the routed path; "
        f"REST history from a paused `SimExchange`. The sender stops at each mark until the bot has read "
        f"everything and its DB writer is idle, then RSS is read; the rate is measured between marks only. The "
        f"bot recorded {fh['transitions']:,} transitions, {fh['orders']:,} paper orders, {fh['candles']:,} "
        f"candles and {fh['events']:,} events; dropped {rd[-1]['dropped']} messages, reconnected "
        f"{rd[-1]['reconnects']} times. The sending bench used {fh['sender_cpu']:.0f} % of a core (not the limit); "
        f"other processes {fh['others_pct']:.0f} % of a core. RSS right after connecting: "
        f"{fh['rss_start'] / mb:.1f} MB. Size of the bot's SQLite DB at the marks: "
        + ", ".join(f"{x['db_bytes'] / mb:.1f} MB" for x in rd) + "; deepest DB writer queue (`db_backlog`, "
        "sampled 4× a second) on the way to each mark: " + ", ".join(f"{x.get('backlog_peak', 0):,}" for x in rd)
        + " writes.",
        "",
        f"Bot exit codes: {lat['exit']} (latency), "
        + (f"{r['loaded']['exit']} (latency, dashboard under load), " if r.get("loaded") else "")
        + f"{fh['exit']} (firehose). Load average when the bench started: "
        + " / ".join(f"{x:.2f}" for x in r.get("loadavg", ())) + " (1 / 5 / 15 min).",
    ]
    busy = max(lat["others_pct"], fh["others_pct"])
    if busy > 25:
        lines += ["", f"⚠ Other processes used up to {busy:.0f} % of a core during these runs (the machine has "
                      f"{os.cpu_count()}); the figures are pessimistic."]
    if r.get("probe"):
        lines += ["", *render_breakdown(r)]
    if r.get("notes"):
        lines += ["", r["notes"].rstrip()]
    return "\n".join(lines) + "\n"


def loaded_rows(lat: dict[str, Any], ld: dict[str, Any]) -> list[str]:
    """Table rows of the latency run with the dashboard under load (none when it was skipped)."""
    if not ld:
        return []
    d = ld.get("dashboard") or {}
    return [
        f"| tick-to-order latency p50 **while the dashboard is hammered** (same method, a fresh bot; n = "
        f"{ld['n']:,} crossings) | {ld['p50']:.2f} ms | — | |",
        f"| tick-to-order latency p99 while the dashboard is hammered (p90 {ld['p90']:.2f} ms, max "
        f"{ld['max']:.2f} ms) | {ld['p99']:.2f} ms | ≤ {TARGET_P99_MS:g} ms | "
        f"{_ok(ld['p99'] <= TARGET_P99_MS and ld['n'] >= min(1000, ld['n_wanted']))} |",
        f"| change under dashboard load, p50 / p99 (hammered − plain) | {ld['p50'] - lat['p50']:+.2f} / "
        f"{ld['p99'] - lat['p99']:+.2f} ms | — | |",
        f"| dashboard requests served meanwhile ({d.get('threads', LOAD_THREADS)} keep-alive clients in a "
        f"separate process, back to back: `/api/status`, `/api/candles`, `/api/trades`, `/` in turn) | "
        f"{d.get('rps', float('nan')):,.0f} requests/s | — | |",
    ] + ([] if not ld.get("control") else [
        f"| control, p50 / p99: the same clients on `/healthz` only (Flask, no SQLite; n = "
        f"{ld['control']['n']:,} crossings, {ld['control']['dashboard'].get('rps', float('nan')):,.0f} "
        f"requests/s) | {ld['control']['p50']:.2f} / {ld['control']['p99']:.2f} ms | — | |"])


def loaded_text(lat: dict[str, Any], ld: dict[str, Any]) -> list[str]:
    """The paragraph on the dashboard-load run: what ran, where the CPU went, what the difference means."""
    if not ld:
        return []
    d = ld.get("dashboard") or {}
    bp = d.get("by_path", {})
    contenders = d.get("dash_cpu", 0.0) + d.get("load_cpu", 0.0)
    rest = max(ld["others_pct"] - contenders, 0.0)
    busy = ld["bot_cpu"] + ld["bench_cpu"] + ld["others_pct"]
    dp50, dp99 = ld["p50"] - lat["p50"], ld["p99"] - lat["p99"]
    noise = dp99 <= max(0.25 * lat["p99"], 0.5) and dp50 <= max(0.25 * lat["p50"], 0.25)
    what = (f"the difference ({dp50:+.2f} ms at p50, {dp99:+.2f} ms at p99) is within run-to-run noise" if noise
            else f"the {dp50:+.2f} ms at p50 and {dp99:+.2f} ms at p99 are CPU contention")
    return [
        f"**Dashboard load.** Right after the plain run, the same replay against a fresh bot while the real "
        f"dashboard (`python dashboard.py --config F`, `F` pointing at that bot's DB, on 127.0.0.1) was hammered "
        f"for the whole measurement by `bench/dashboard_load.py`: a process of its own, "
        f"{d.get('threads', LOAD_THREADS)} threads, each with one keep-alive connection requesting "
        f"`/api/status`, `/api/candles`, `/api/trades` and `/` in turn, back to back — {d.get('requests', 0):,} "
        f"requests in {d.get('seconds', 0):.0f} s ({bp.get('/api/status', 0):,} / {bp.get('/api/candles', 0):,} / "
        f"{bp.get('/api/trades', 0):,} / {bp.get('/', 0):,}; {d.get('errors', 0)} errors). The exchange received "
        f"{ld['orders']:,} orders ({ld['filled']:,} filled). The dashboard ran in the {d.get('policy')} "
        f"scheduling class at nice {d.get('nice')}, as its unit runs it (`CPUSchedulingPolicy=idle`, `Nice=10`, "
        f"`CPUWeight=20`; started by hand it only lowers itself to nice 10). "
        f"CPU meanwhile, in % of one core: dashboard "
        f"{d.get('dash_cpu', 0):.0f}, load generator {d.get('load_cpu', 0):.0f}, bot {ld['bot_cpu']:.0f} (plain "
        f"run {lat['bot_cpu']:.0f}), this bench with its exchange {ld['bench_cpu']:.0f} (plain run "
        f"{lat['bench_cpu']:.0f}), anything else {rest:.0f}: {busy:.0f} of the machine's "
        f"{os.cpu_count() * 100}. "
        f"The dashboard is a separate process reading the SQLite file read-only (`mode=ro`) in WAL mode, where "
        f"readers and the writer never wait for each other (\"database busy\" lines in the bot's log: "
        f"{ld['db_busy']}; the WAL ended at {ld['wal_bytes'] / 2**20:.1f} MB against "
        f"{lat['wal_bytes'] / 2**20:.1f} MB in the plain run, so the readers did not hold back checkpoints "
        f"either); {what}: with {contenders / 100:.1f} of the {os.cpu_count()} cores busy serving and generating "
        f"requests, the bot's event loop, its writer thread and the exchange wait for a core more often."
        f"{control_text(lat, ld)} (An open browser tab polls `/api/status` every 2 s, not "
        f"{d.get('rps', 0):,.0f} times a second.)",
        "",
    ]


def control_text(lat: dict[str, Any], ld: dict[str, Any]) -> str:
    """One sentence on the control run (the same load on /healthz, no SQLite), or nothing."""
    c = ld.get("control")
    if not c:
        return ""
    cd = c.get("dashboard") or {}
    dp50, cp50 = ld["p50"] - lat["p50"], c["p50"] - lat["p50"]
    if dp50 <= 0.3 or cp50 >= 0.5 * dp50:
        verdict = "CPU alone, without SQLite, does about this much"
    else:
        verdict = "here the real routes cost the bot clearly more than CPU alone"
    return (f" The control run puts the same clients on `/healthz`, which never opens the DB: "
            f"{cd.get('rps', 0):,.0f} requests/s, dashboard {cd.get('dash_cpu', 0):.0f} % CPU, and the bot's "
            f"latency moves {c['p50'] - lat['p50']:+.2f} ms at p50 and {c['p99'] - lat['p99']:+.2f} ms at p99 "
            f"(n = {c['n']:,}) against {ld['p50'] - lat['p50']:+.2f} / {ld['p99'] - lat['p99']:+.2f} ms with "
            f"the real routes — {verdict} (single runs: a few tenths of a ms at "
            f"p50 and a ms or two at p99 are run-to-run noise on this machine).")


def render_breakdown(r: dict[str, Any]) -> list[str]:
    """'Where the time goes': the probed latency run, the read-loop costs and what follows from them."""
    fh, probe = r["firehose"], r["probe"]
    plat = probe["latency"]
    seg = plat.get("segments") or {}
    loops = {x["variant"]: x for x in probe.get("readloop", [])}
    per_msg = per_message_us(fh)
    out = ["### Where the time goes", ""]
    if seg and seg[SEGMENTS[-1]]["n"]:
        n = seg[SEGMENTS[-1]]["n"]
        out += [f"One order's way, from a third latency run with timing probes (`bench/run_probes.py bot`: the "
                f"same bot with a few functions wrapped to note `perf_counter_ns`, CLOCK_MONOTONIC like the "
                f"exchange's stamps; {n:,} first orders; its p50/p99 end to end {plat['p50']:.2f} / "
                f"{plat['p99']:.2f} ms, other processes {plat['others_pct']:.0f} % of a core). Percentiles are "
                f"per step; only the p50 column roughly adds up to the total:", "",
                "| step | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|"]
        for name in SEGMENTS:
            v = seg[name]
            out.append(f"| {name} | {v['p50']:.3f} | {v['p90']:.3f} | {v['p99']:.3f} |")
        out += ["", f"The writer thread still had earlier writes queued when the intent was submitted for "
                    f"{seg['_writer_busy'] * 100:.0f} % of these orders.", ""]
    if loops:
        out += [f"Reading the stream: CPU per message of a read loop + `json.loads` (200,000 messages from a local "
                f"`websockets` sender, each variant in a fresh process), against the bot's {per_msg:.1f} µs of "
                f"main-thread CPU per message at saturation:", "",
                "| read loop | CPU µs / message |", "|---|---:|"]
        labels = {"recv": "bare `await ws.recv()` loop",
                  "feed": "the product's `Feed.run` / `Feed._read` (plain `recv()`, watchdog task for stalls), "
                          "`handle` replaced by `json.loads`",
                  "wait_for": "`await asyncio.wait_for(ws.recv(), timeout)` per message (the stall timeout "
                              "`Feed._read` no longer uses), for comparison"}
        for k, label in labels.items():
            if k in loops:
                out.append(f"| {label} | {loops[k]['cpu_us']:.1f} |")
        out += ["", f"`Feed.handle` + `Engine.on_trade` (parse, checks, live BOLL, table step) in-process: "
                    f"{probe['handle_us']:.1f} µs per message.", ""]
    out += applied(r)
    out += ["", *suggestions(r)]
    return out


def writer_batches() -> bool:
    """Whether the product's DB writer commits queued writes together (``store.Writer._run_batch``)."""
    import store

    return hasattr(store.Writer, "_run_batch")


def per_message_us(fh: dict[str, Any]) -> float:
    """The bot's main-thread CPU per message at saturation (µs)."""
    rate = fh["rate"]
    return fh["main_cpu"] / 100 / rate * 1e6 if rate == rate and rate else float("nan")


def applied(r: dict[str, Any]) -> list[str]:
    """The earlier suggestions the product has taken up, checked against this run's figures."""
    lat, fh, probe = r["latency"], r["firehose"], r["probe"]
    seg = probe["latency"].get("segments") or {}
    loops = {x["variant"]: x["cpu_us"] for x in probe.get("readloop", [])}
    per_msg = per_message_us(fh)
    items = ["**Changes already made, as these figures show them:**", ""]
    if {"recv", "feed", "wait_for"} <= loops.keys():
        items.append(
            f"- Stream reading (`feed.py: Feed._read`): a plain `recv()` loop with a watchdog task instead of an "
            f"`asyncio.wait_for` per message. The feed's loop costs {loops['feed']:.1f} µs per message against "
            f"{loops['recv']:.1f} µs for a bare loop (the watchdog wakes once a second: free) and "
            f"{loops['wait_for']:.1f} µs with the per-message timeout. At saturation the bot reads "
            f"{fh['rate']:,.0f} msg/s ({fh['rate'] / TARGET_RATE:.1f}× the target) at {per_msg:.1f} µs of "
            f"main-thread CPU per message: read + `json.loads` ≈ {loops['feed']:.0f} µs, `Feed.handle` + engine "
            f"≈ {probe['handle_us']:.0f} µs, the rest is the event loop, the status heartbeat and the "
            f"transitions' log lines and writes.")
    if seg:
        log_ms, wake_ms = seg[SEGMENTS[SEG_LOG]]["p50"], seg[SEGMENTS[SEG_WAKE]]["p50"]
        items.append(
            f"- `runner.py: Bot._on_transition` now creates the order task before it logs the transition, but "
            f"that does **not** take the log line off the critical path: `create_task` only schedules the task, "
            f"whose first step runs once `_on_transition` has returned and the feed's read loop has yielded to "
            f"the event loop — after the log line. The line still costs p50 {log_ms:.2f} ms before the order "
            f"task starts, and the hand-back to the loop another {wake_ms:.2f} ms (see suggestion 1).")
    if lat.get("second_n"):
        items.append(
            f"- Reversals (`livebroker.py: LiveBroker._record_fill`): the close's fee is estimated from the "
            f"account's commission rate (`Exchange.taker_rate`, read at start) and the real commission is read "
            f"afterwards in the background (`Bot._settle_fees`), so no `GET /fapi/v1/userTrades` sits between "
            f"the two legs. The open leg goes out p50 {lat['second_p50']:.2f} ms / p99 {lat['second_p99']:.2f} ms "
            f"after the tick (n = {lat['second_n']:,}).")
    rd = fh["readings"]
    if writer_batches() and len(rd) >= 2:
        items.append(
            f"- DB writer (`store.py: Writer._run`): the writes queued at a moment are committed together, each "
            f"in a savepoint of its own. Under the firehose its queue still peaks at "
            f"{max(x.get('backlog_peak', 0) for x in rd):,} writes (below).")
    if len(rd) >= 2:
        mb = 2 ** 20
        growth = [(b["rss"] - a["rss"]) / mb for a, b in zip(rd, rd[1:], strict=False)]
        peaks = [x.get("backlog_peak", 0) for x in rd]
        phases = ", ".join(f"{g:+.2f} MB from {a['ticks']:,} to {b['ticks']:,} ticks"
                           for g, a, b in zip(growth, rd, rd[1:], strict=False))
        text = (f"- Memory (`store.py: _setup`): the writer's SQLite page cache is capped at 512 KiB. RSS grows "
                f"{phases} (target < {TARGET_GROWTH_MB:g} MB for the first of these) while the DB grows "
                + " → ".join(f"{x['db_bytes'] / mb:.1f}" for x in rd) + " MB")
        sc = probe.get("small_cache")
        small = None
        if sc and len(sc["readings"]) >= 2:
            small = (sc["readings"][1]["rss"] - sc["readings"][0]["rss"]) / mb
            text += (f". With a {SMALL_CACHE_KIB} KiB cache (`run_probes.py`) the same run grew {small:+.2f} MB "
                     f"over the first of these, so "
                     + ("the cache is most of it" if small < 0.5 * growth[0] else "the cache is not what grows"))
        # Growth without a deeper writer queue than before cannot be the queue: that would be a leak.
        unexplained = [g for k, g in enumerate(growth, 1) if g >= 0.25 and peaks[k] <= max(peaks[:k]) * 1.1]
        if max(growth) >= SMALL_CACHE_CHECK_MB and max(peaks) >= 100:
            tps = fh["transitions"] / fh["marks"][-1] * fh["rate"] if fh["marks"][-1] else float("nan")
            text += (". What the growth follows is the DB writer's queue: its deepest point on the way to each "
                     "mark was " + ", ".join(f"{p:,}" for p in peaks) + " writes, and RSS rises when the queue "
                     f"reaches a new depth, then keeps that memory once the writes are done (the allocators keep "
                     f"what they got): a high-water mark that depends on how far the writer fell behind in this "
                     f"run. At saturation the strategy trades ~{tps:,.0f} times a second (each transition queues "
                     f"its record and its log lines' `events` rows) and the writer thread falls behind although a "
                     f"core is free: the process uses {fh['cpu']:.0f} % CPU, {fh['main_cpu']:.0f} of it the main "
                     f"thread")
            sw = probe.get("switch")
            if sw and len(sw["readings"]) >= 2:
                a_, b_ = sw["readings"][0], sw["readings"][1]
                text += (f". The same run with the bot's GIL switch interval at {SWITCH_INTERVAL_S * 1000:g} ms "
                         f"instead of CPython's 5 ms (`run_probes.py`) kept the queue under "
                         f"{max(a_.get('backlog_peak', 0), b_.get('backlog_peak', 0)):,} writes and grew "
                         f"{(b_['rss'] - a_['rss']) / mb:+.2f} MB over the first phase at {sw['rate']:,.0f} msg/s: "
                         f"the writer waits for the GIL (every SQLite call releases it, and while the main thread "
                         f"is busy, getting it back takes up to a switch interval)")
            else:
                text += ", so the writer is most likely waiting for the GIL rather than working"
        if unexplained:
            text += (f". But RSS also grew {max(unexplained):+.2f} MB in a phase without a deeper queue than "
                     f"before: look for a leak")
        items.append(text + f". The {fh['rss_start'] / mb:.0f} MB baseline is mostly imports: pandas (for the "
                            f"startup check of the history) and python-binance.")
    return items


def suggestions(r: dict[str, Any]) -> list[str]:
    """Bottlenecks left, with the numbers of this run (file:function, what to change)."""
    lat, probe, ld = r["latency"], r["probe"], r.get("loaded") or {}
    seg = probe["latency"].get("segments") or {}
    items = ["**Bottlenecks left and suggestions** (not applied: product code is not edited by the bench):", ""]
    if seg:
        log_ms = seg[SEGMENTS[SEG_LOG]]["p50"]
        commit, binance = seg[SEGMENTS[SEG_COMMIT]], seg[SEGMENTS[SEG_BINANCE]]["p50"]
        items.append(
            f"1. Latency — the transition's log line (`runner.py: Bot._on_transition`; format, synchronous writes "
            f"to stderr and the rotating file, an `events` row for the writer) still runs before the order task: "
            f"p50 {log_ms:.2f} ms. Defer it past the task's first step — "
            f"`asyncio.get_running_loop().call_soon(log.info, ...)` right after `create_task` runs it once the "
            f"task has handed its intent to the writer, i.e. while the commit is in flight — or log from `_live` "
            f"once `place_market` has been called; `logging.handlers.QueueHandler`/`QueueListener` would also "
            f"move the file and stderr I/O off the event loop. Expected gain: most of the {log_ms:.2f} ms at p50.")
        worst = max(seg[name]["p99"] for name in SEGMENTS[:-1]) == commit["p99"]
        items.append(
            f"2. Latency{' tail' if worst else ''} — the intent commit (`runner.py: Bot.commit` → "
            f"`store.py: Writer`){' is the most variable step' if worst else ''}: p50 {commit['p50']:.2f} ms, "
            f"p99 {commit['p99']:.2f} ms. The writer is one FIFO: the intent waits behind the `events` row that "
            f"the transition's own log line queued just before it (suggestion 1 reverses that order), behind "
            f"heartbeats and status rows, then a thread hand-off each way. Give intents a priority lane in "
            f"`Writer` (a second queue drained first), or write the transition's event row inside the intent's "
            f"transaction (`livebroker.py: write_transition`).")
        items.append(
            f"3. Latency — `exchange.py: Exchange.place_market` → python-binance `futures_create_order` spends "
            f"p50 {binance:.2f} ms building and signing the request before aiohttp writes it. SPEC §4 asks for "
            f"python-binance; if that is relaxed for the hot path, a prebuilt signed POST on the same aiohttp "
            f"session (`hmac` + `urlencode`) would cut most of it.")
    if lat.get("second_n"):
        items.append(
            f"{len(items) - 1}. Reversals — between the close's reply and the open's send there are still two "
            f"writer round trips and a log line (`runner.py: Bot._live` → `LiveBroker._record_fill` commits the "
            f"fill and logs it through `LiveBroker.event`, whose `events` row goes into the writer queue ahead of "
            f"the open's intent; then `write_intent` is committed): the open leg goes out p50 "
            f"{lat['second_p50']:.2f} ms after the tick, against {lat['p50']:.2f} ms for the first order. "
            f"Committing the close's fill and the open's intent in one writer transaction would save one round trip.")
    rd = r["firehose"]["readings"]
    grew = [(b["rss"] - a["rss"]) / 2 ** 20 for a, b in zip(rd, rd[1:], strict=False)]
    sw = probe.get("switch") if probe.get("switch") and len(probe["switch"]["readings"]) >= 2 else None
    peak = max((x.get("backlog_peak", 0) for x in rd), default=0)
    if grew and max(grew) >= TARGET_GROWTH_MB and peak >= 100:
        missed = grew[0] >= TARGET_GROWTH_MB
        items.append(
            f"{len(items) - 1}. Memory under a firehose — RSS growth follows the DB writer's queue, which reaches "
            f"{peak:,} writes while the main thread saturates (see above), so the figure against the "
            f"{TARGET_GROWTH_MB:g} MB target depends on how far the writer falls behind in a run"
            + (" and is missed in this one" if missed else f"; it is met in this run, but a later phase grew "
               f"{max(grew):+.2f} MB") + ". The writer thread needs the GIL for every statement, committing in "
            f"batches or not. Options, cheapest first: `sys.setswitchinterval({SWITCH_INTERVAL_S:g})` at the bot's "
            f"start"
            + (f" (measured above: queue ≤ {max(x.get('backlog_peak', 0) for x in sw['readings']):,}, "
               f"{(sw['readings'][1]['rss'] - sw['readings'][0]['rss']) / 2 ** 20:+.2f} MB, "
               f"{sw['rate'] / r['firehose']['rate'] * 100 - 100:+.0f} % msg/s)" if sw else "")
            + "; fewer SQLite calls per write" + (" (the savepoint pair per write adds two)" if writer_batches()
                                                  else "") + "; a bound on `Writer.post` "
            "(coalesce or drop `events` rows beyond it, counted) to cap the memory whatever the cause. A real "
            "BTCUSDT stream does not trade the strategy hundreds of times a second, so this is a limit of the "
            "stress test more than of production.")
    if ld and ld.get("dashboard") and ld["p99"] > TARGET_P99_MS:
        d = ld["dashboard"]
        items.append(
            f"{len(items) - 1}. Dashboard next to the bot — under back-to-back requests the dashboard takes "
            f"{d['dash_cpu'] / 100:.1f} cores ({d['rps']:,.0f} requests/s) and the bot's latency moves "
            f"{ld['p50'] - lat['p50']:+.2f} ms at p50, {ld['p99'] - lat['p99']:+.2f} ms at p99. Nothing in "
            f"the code links the two; on a 2-core machine the "
            f"cure is scheduling: the dashboard ran in the {d.get('policy')} scheduling class here; if that is "
            f"not enough, cap its CPU (`CPUQuota=` in `bollmin-dashboard.service`).")
    return items


def write_section(section: str) -> None:
    common.replace_section("run", section)


def read_notes(path: str = BENCH_MD) -> str:
    """Hand-written analysis kept below the table: the text after ``<!-- run:notes -->`` in the section."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return ""
    if BEGIN not in text or END not in text:
        return ""
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    marker = "<!-- run:notes -->"
    return section[section.index(marker):] if marker in section else ""


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    def log(msg: str) -> None:
        sys.stderr.write(f"[bench_run] {msg}\n")
        sys.stderr.flush()

    started = time.monotonic()
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bollmin-bench-run-") as tmp:
        lat_dir, fh_dir = os.path.join(tmp, "latency"), os.path.join(tmp, "firehose")
        os.makedirs(lat_dir)
        os.makedirs(fh_dir)
        quiet = [await wait_quiet(args.wait_quiet, log)]
        latency = await bench_latency(lat_dir, args.speed, args.crossings, args.max_latency_s, log)
        log(f"latency: n={latency['n']} p50={latency['p50']:.2f} ms p99={latency['p99']:.2f} ms")
        loaded: dict[str, Any] = {}
        if args.load_crossings:
            load_dir = os.path.join(tmp, "latency-dashboard")
            os.makedirs(load_dir)
            quiet.append(await wait_quiet(args.wait_quiet, log))
            log("latency again, with the dashboard serving a load generator")
            loaded = await bench_latency(load_dir, args.speed, args.load_crossings, args.max_latency_s, log,
                                         dashboard_load=True)
            log(f"latency under dashboard load: n={loaded['n']} p50={loaded['p50']:.2f} ms "
                f"p99={loaded['p99']:.2f} ms; dashboard {loaded['dashboard'].get('rps', 0):,.0f} requests/s")
            if args.control_crossings:
                control_dir = os.path.join(tmp, "latency-healthz")
                os.makedirs(control_dir)
                quiet.append(await wait_quiet(args.wait_quiet, log))
                log("latency again, control: the same load on /healthz only (no SQLite)")
                loaded["control"] = await bench_latency(control_dir, args.speed, args.control_crossings,
                                                        args.max_latency_s, log, dashboard_load=True,
                                                        load_paths=CONTROL_PATHS)
                c = loaded["control"]
                log(f"control: n={c['n']} p50={c['p50']:.2f} ms p99={c['p99']:.2f} ms; "
                    f"{c['dashboard'].get('rps', 0):,.0f} requests/s")
        quiet.append(await wait_quiet(args.wait_quiet, log))
        firehose = await bench_firehose(fh_dir, sorted({args.first_mark, args.ticks, args.plateau_ticks}), log)
        log(f"firehose: {firehose['rate']:,.0f} msg/s at {firehose['cpu']:.0f} % CPU")
        probe: dict[str, Any] = {}
        if args.breakdown:
            probe_dir = os.path.join(tmp, "probed")
            os.makedirs(probe_dir)
            await wait_quiet(args.wait_quiet / 2, log)
            log("breakdown: latency again with timing probes (run_probes.py bot)")
            probe["latency"] = await bench_latency(probe_dir, args.speed, args.breakdown, args.max_latency_s, log,
                                                   probe_out=os.path.join(probe_dir, "probe.json"))
            log("breakdown: read-loop variants and Feed.handle + Engine.on_trade in-process")
            probe["readloop"] = await run_probes.read_loop_costs(200_000)
            probe["handle_us"] = handle_cost_us()
            rd = firehose["readings"]
            if max((b["rss"] - a["rss"]) / 2 ** 20 for a, b in zip(rd, rd[1:], strict=False)) >= SMALL_CACHE_CHECK_MB:
                cache_dir = os.path.join(tmp, "small-cache")
                os.makedirs(cache_dir)
                log(f"breakdown: firehose to {args.ticks:,} ticks again, SQLite page cache {SMALL_CACHE_KIB} KiB")
                probe["small_cache"] = await bench_firehose(cache_dir, [args.first_mark, args.ticks], log,
                                                            probe_env={"PROBE_SQLITE_CACHE_KIB": str(SMALL_CACHE_KIB)})
                if max(x.get("backlog_peak", 0) for x in rd) >= 100:
                    switch_dir = os.path.join(tmp, "switch-interval")
                    os.makedirs(switch_dir)
                    log(f"breakdown: firehose to {args.ticks:,} ticks again, GIL switch interval "
                        f"{SWITCH_INTERVAL_S * 1000:g} ms in the bot")
                    probe["switch"] = await bench_firehose(
                        switch_dir, [args.first_mark, args.ticks], log,
                        probe_env={"PROBE_SWITCH_INTERVAL_S": str(SWITCH_INTERVAL_S)})
        if args.keep:
            keep = os.path.join(ROOT, "artifacts", "bench_run")
            os.makedirs(keep, exist_ok=True)
            for d in (lat_dir, os.path.join(tmp, "latency-dashboard"), os.path.join(tmp, "latency-healthz"), fh_dir):
                for name in ("stderr.txt", "bot.log"):
                    src = os.path.join(d, name)
                    if os.path.exists(src):
                        os.replace(src, os.path.join(keep, f"{os.path.basename(d)}-{name}"))
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "latency": latency,
            "loaded": loaded, "loadavg": loadavg, "firehose": firehose, "probe": probe, "quiet_before": quiet,
            "total_s": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate the run section of BENCHMARKS.md")
    parser.add_argument("--speed", type=float, default=4000.0, help="latency replay speed (× real time)")
    parser.add_argument("--crossings", type=int, default=1100, help="crossings (first orders) to collect")
    parser.add_argument("--load-crossings", type=int, default=1100, metavar="N",
                        help="crossings of the second latency run, with the dashboard under load (0: skip)")
    parser.add_argument("--control-crossings", type=int, default=600, metavar="N",
                        help="crossings of a control run: the same load on /healthz only, no SQLite (0: skip)")
    parser.add_argument("--max-latency-s", type=float, default=240.0, help="cap on the latency replay (s)")
    parser.add_argument("--ticks", type=int, default=1_000_000, help="firehose ticks")
    parser.add_argument("--first-mark", type=int, default=100_000, help="tick count of the first RSS reading")
    parser.add_argument("--plateau-ticks", type=int, default=2_000_000,
                        help="go on to this many ticks for a last RSS reading (does growth level off?)")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each part, wait up to S seconds for other processes to calm down")
    parser.add_argument("--breakdown", type=int, default=400, metavar="N",
                        help="afterwards, N crossings with the probed bot + read-loop costs (0: skip)")
    parser.add_argument("--raw", metavar="PATH", help="also write every measured value as JSON to PATH")
    parser.add_argument("--from-raw", metavar="PATH", help="measure nothing: render the results saved by --raw")
    parser.add_argument("--keep", action="store_true", help="keep the bots' logs under artifacts/bench_run/")
    args = parser.parse_args()
    if not 0 < args.first_mark < args.ticks:
        parser.error("--first-mark must be between 0 and --ticks")
    args.plateau_ticks = max(args.plateau_ticks, args.ticks)

    if args.from_raw:
        with open(args.from_raw, encoding="utf-8") as fh:
            results = json.load(fh)
    else:
        results = asyncio.run(run_all(args))
        results["command"] = " ".join(["python bench/bench_run.py", *sys.argv[1:]])
    results["notes"] = read_notes()
    section = render(results)
    sys.stdout.write(section)  # stdout is exactly the section (bench/run_all.py pastes it into BENCHMARKS.md)
    if args.raw:
        with open(args.raw, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in results.items() if k != "notes"}, fh, indent=1, default=str)
    if args.write:
        write_section(section)
        sys.stderr.write(f"[bench_run] section written to {BENCH_MD}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
