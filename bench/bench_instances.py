#!/usr/bin/env python3
"""What one more bot instance costs: memory (each bot, the one dashboard) and Binance request weight.

    python bench/bench_instances.py              print the markdown section on stdout (progress on stderr)
    python bench/bench_instances.py --quick      a short smoke run (about 1 minute; the figures mean little)
    python bench/bench_instances.py --write      also put it in BENCHMARKS.md (<!-- instances:begin/end -->)
    python bench/bench_instances.py --raw F      also save every measured value as JSON
    python bench/bench_instances.py --from-raw F render a saved run again, measuring nothing

Several instances run on one server, one per symbol, each with its own SQLite DB in one data
directory; one dashboard shows them all. Everything here is the real product on 127.0.0.1:
``python bollmin.py run`` in live mode against the simulated exchange (``simexchange``, in
threads of this process) and ``python dashboard.py``.

1. **Bot RSS per live instance.** One live bot (BTCUSDT) alone, then two (BTCUSDT + ETHUSDT, one
   account, their DBs ``bollmin.db`` and ``ETHUSDT.db`` in one data directory), each run on a
   fresh exchange. Once connected (market and user-data stream) the replay runs at speed 0 (as
   fast as the bots read); at each mark the symbol's replay is paused a little before it and
   stepped to exactly the mark, the bot is left to read everything, settle its orders and empty
   its DB writer, then RSS / USS / PSS are read with psutil by pid. The data is the bundled May
   2025 1m BTCUSDT file, played forward and time-reversed in turn as often as needed (the price
   path stays continuous and in range); ETHUSDT is derived from it (``derived_symbol``).
2. **Dashboard RSS.** The real dashboard on the two-bot run's data directory with 1, 2 and 4
   instance DBs beside each other (the 3rd and 4th: short paper bots on SOLUSDT and BNBUSDT, made
   the same way; their RSS is reported too); a fresh dashboard per count, polled by
   ``bench/dashboard_load.py`` (2 keep-alive clients, its own process) on ``/``, ``/api/status``,
   ``/api/candles`` (each ``?db=`` instance) and ``/api/instances``; RSS after start and after the
   requests.
3. **REST request weight per instance.** Two idle live bots, each on an exchange of its own,
   running beside the rest for ``--idle-s`` after their first ``--startup-s`` seconds: a *quiet*
   market (replayed at 1x on candles that never reach the bands) and a *silent* one (paused).
   Every REST request they made, from ``GET /_sim/requests``, is converted to Binance request
   weight by ``WEIGHTS`` below, and also weighed as the exchange itself counts its
   ``X-MBX-USED-WEIGHT-1M`` (checked against ``GET /_sim/weight``). While trading (the replays of
   1.): the exchange's request log, drained every second, per instance, and the orders per 10 s /
   minute (wall time at replay speed, and market time from each bot's transitions).
4. From 1.-3.: how many instances fit a 1 GB and a 2 GB server, and within the IP weight limit.

About 7 minutes on a 2-core machine with other work on it (``--ticks-one`` and ``--ticks-two`` set
most of it; the idle bots' window runs beside the replays).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import botbench as bb
import common
import psutil

sys.path.insert(0, bb.ROOT)

import userstream  # noqa: E402
from history import Candle, read_candles  # noqa: E402
from simexchange import SimExchangeThread, derived_symbol  # noqa: E402
from simexchange.public import klines_weight as sim_klines_weight  # noqa: E402
from state import POSITION, State  # noqa: E402

MB = 2 ** 20
TARGET_GROWTH_MB = 1.0        # bot RSS growth between the first and the last mark
WEIGHT_LIMIT = 2400           # Binance USDⓈ-M REQUEST_WEIGHT per minute per IP
ORDER_LIMIT_10S = 300         # ORDERS per 10 s per account
ORDER_LIMIT_1M = 1200         # ORDERS per minute per account
MARGIN = 0.10                 # "a wide margin": instances that use at most 10 % of a limit
OS_RESERVE_MB = 300           # left to the OS on a server
SERVERS_MB = (1024, 2048)     # 1 GB and 2 GB
SOURCE_MS = 60_000            # the data's candles: 1m, replayed as 4 ticks each
STEP_CHUNK = 1000             # ticks per /_sim/step (the queue of a stream client holds 10 000 messages)

# Binance USDⓈ-M request weight (IP limit: 2400 per minute), from its REST API documentation.
# POST /fapi/v1/order weighs 0 on the IP limit but counts 1 toward the account's order limits.
WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/fapi/v2/positionRisk"): 5,
    ("GET", "/fapi/v3/positionRisk"): 5,
    ("GET", "/fapi/v1/order"): 1,
    ("POST", "/fapi/v1/order"): 0,
    ("PUT", "/fapi/v1/listenKey"): 1,
    ("POST", "/fapi/v1/listenKey"): 1,
    ("GET", "/fapi/v1/time"): 1,
    ("GET", "/fapi/v1/exchangeInfo"): 1,
    ("GET", "/fapi/v2/account"): 5,
    ("GET", "/fapi/v1/positionSide/dual"): 30,
    ("POST", "/fapi/v1/leverage"): 1,
    ("GET", "/fapi/v1/commissionRate"): 20,
}
ORDER_PATH = ("POST", "/fapi/v1/order")


def klines_weight(limit: int) -> int:
    """``GET /fapi/v1/klines`` by ``limit`` (default 500): 1 below 100, 2 below 500, 5 up to 1000, else 10."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def weight_of(method: str, path: str, params: dict[str, str]) -> tuple[int, bool]:
    """(weight, known): the weight of one request; an unknown one counts 1."""
    if (method, path) == ("GET", "/fapi/v1/klines"):
        try:
            return klines_weight(int(params.get("limit") or 500)), True
        except ValueError:
            return 10, True
    if (method, path) in WEIGHTS:
        return WEIGHTS[(method, path)], True
    return 1, False


def sim_weight_of(path: str, params: dict[str, str]) -> int:
    """What the simulated exchange adds to its ``X-MBX-USED-WEIGHT-1M`` for one REST request: klines by
    ``limit`` (Binance's table), every other request 1 (Binance weighs some more, orders 0: ``WEIGHTS``)."""
    return sim_klines_weight(params) if path == "/fapi/v1/klines" else 1


def tally(requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Requests by "METHOD path": count, weight, known, non-2xx answers, weight as the simexchange counts it."""
    out: dict[str, dict[str, Any]] = {}
    for r in requests:
        w, known = weight_of(r["method"], r["path"], r.get("params") or {})
        row = out.setdefault(f"{r['method']} {r['path']}", {"count": 0, "weight": 0, "known": known, "errors": 0,
                                                                 "sim": 0})
        row["count"] += 1
        row["weight"] += w
        row["sim"] += sim_weight_of(r["path"], r.get("params") or {})
        row["errors"] += int(not (200 <= int(r.get("status") or 0) < 300))
    return out


def total_weight(t: dict[str, dict[str, Any]], key: str = "weight") -> int:
    return sum(r[key] for r in t.values())


# ---- the data ---------------------------------------------------------------------------------------

def long_candles(base: list[Candle], n: int) -> list[Candle]:
    """At least ``n`` 1m candles: ``base`` played forward, then time-reversed (open and close swapped),
    then forward again ... on consecutive time spans, so the price path is continuous and stays in range."""
    first, last = base[0].open_time_ms, base[-1].open_time_ms
    span = last - first + SOURCE_MS
    out = list(base)
    rep = 1
    while len(out) < n:
        off = first + rep * span
        if rep % 2:
            out += [Candle(off + last - c.open_time_ms, c.close, c.high, c.low, c.open, c.volume)
                    for c in reversed(base)]
        else:
            out += [Candle(off + c.open_time_ms - first, *c[1:]) for c in base]
        rep += 1
    return out


# ---- processes ------------------------------------------------------------------------------------

class Proc:
    """A child process for ``bb.LoadMeter`` (it subtracts the CPU of what we started)."""

    def __init__(self, pid: int) -> None:
        self.ps = psutil.Process(pid)

    def alive(self) -> bool:
        return self.ps.is_running() and self.ps.status() != psutil.STATUS_ZOMBIE

    def cpu(self) -> tuple[float, float]:
        try:
            t = self.ps.cpu_times()
            return t.user + t.system, 0.0
        except psutil.Error:
            return 0.0, 0.0


def memory(pid: int) -> dict[str, int]:
    """RSS, USS (pages only this process has) and PSS (shared pages split among their users)."""
    m = psutil.Process(pid).memory_full_info()
    return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", 0)}


def live_bot(workdir: str, db: str, sim: SimExchangeThread, symbol: str, paper: bool = False) -> bb.BotProcess:
    """A bot process (not started) trading ``symbol`` on ``sim`` with its DB at ``db``."""
    keys = {} if paper else bb.LIVE_KEYS
    bot = bb.BotProcess(workdir, SYMBOL=symbol, DB_PATH=db, REST_BASE_URL=sim.base_url, WS_BASE_URL=sim.ws_url,
                        PAPER_TRADING=paper, **keys)
    bot.db = db
    return bot


def wait_live(bot: bb.BotProcess, timeout: float = 60.0, user_stream: bool = True) -> None:
    """Until the bot's market stream (and user-data stream) are connected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not bot.alive():
            raise RuntimeError(f"the bot exited ({bot.proc.returncode}) while connecting:\n{bot.stderr_tail()}")
        st = bb.bot_status(bot.db)
        if st.get("connection") == "connected" and (not user_stream or st.get("user_stream") == "connected"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the bot did not connect within {timeout:.0f} s:\n{bot.stderr_tail()}")


def ctl(base_url: str, name: str, body: dict[str, Any] | None = None) -> Any:
    """The simulated exchange's control API (``/_sim/<name>``): GET for state and requests, else POST."""
    get = name in ("state", "requests", "orders", "weight")
    req = urllib.request.Request(f"{base_url}/_sim/{name}", data=None if get else json.dumps(body or {}).encode(),
                                 method="GET" if get else "POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def drain(sim: SimExchangeThread) -> list[dict[str, Any]]:
    """Take the exchange's request log and empty it, in one step on its event loop (none is lost or
    counted twice; ``GET /_sim/requests`` keeps only the last 10 000)."""
    def take() -> list[dict[str, Any]]:
        out = list(sim.sim.requests)
        sim.sim.requests.clear()
        return out
    return sim.call(take)


def state(sim: SimExchangeThread) -> dict[str, dict[str, Any]]:
    return ctl(sim.base_url, "state")["symbols"]


def open_orders(db: str) -> int:
    return bb.query(db, "SELECT count(*) AS n FROM orders WHERE status IN ('pending','sent','unknown')")[0]["n"]


def settle(sim: SimExchangeThread, bot: bb.BotProcess, symbol: str, timeout: float = 120.0) -> dict[str, str]:
    """Until the bot has read every tick sent (its price time is the replay's clock), its orders are
    settled, its DB writer and order queue are empty and its message count holds still."""
    deadline = time.monotonic() + timeout
    clock = state(sim)[symbol]["clock_ms"]
    last = None
    while time.monotonic() < deadline:
        if not bot.alive():
            raise RuntimeError(f"the {symbol} bot exited ({bot.proc.returncode}):\n{bot.stderr_tail()}")
        st = bb.bot_status(bot.db)
        ready = (int(st.get("price_time_ms") or 0) == clock and st.get("db_backlog") == "0"
                 and st.get("order_backlog") == "0" and open_orders(bot.db) == 0)
        if ready and last is not None and st.get("messages") == last:
            return st
        last = st.get("messages") if ready else None
        time.sleep(1.1)  # the heartbeat writes the status once a second
    raise RuntimeError(f"the {symbol} bot did not settle within {timeout:.0f} s:\n{bot.stderr_tail()}")


def advance(sim: SimExchangeThread, symbols: list[str], mark: int, log: Any,
            sink: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Replay each symbol at speed 0 up to exactly ``mark`` ticks: resumed until a little before the mark,
    then stepped. Returns the resumed stretch: its wall time and the ticks each symbol played in it.
    ``sink``: the exchange's request log is drained into it every second (its log keeps only 10 000)."""
    margin = max(mark // 50, 2000)
    st = state(sim)
    todo = [s for s in symbols if st[s]["ticks_emitted"] < mark - margin]
    before = {s: st[s]["ticks_emitted"] for s in symbols}
    t0, from_ms = time.monotonic(), int(time.time() * 1000)
    for s in todo:
        ctl(sim.base_url, "resume", {"symbol": s})
    drained = time.monotonic()
    while todo:
        time.sleep(0.05)
        if sink is not None and time.monotonic() - drained >= 1.0:
            sink += drain(sim)
            drained = time.monotonic()
        st = state(sim)
        for s in list(todo):
            if st[s]["ticks_emitted"] >= mark - margin or st[s]["finished"]:
                ctl(sim.base_url, "pause", {"symbol": s})
                todo.remove(s)
    ran, to_ms = time.monotonic() - t0, int(time.time() * 1000)
    st = state(sim)
    played = {s: st[s]["ticks_emitted"] - before[s] for s in symbols}
    for s in symbols:
        while True:
            left = mark - state(sim)[s]["ticks_emitted"]
            if left <= 0:
                break
            got = ctl(sim.base_url, "step", {"symbol": s, "ticks": min(left, STEP_CHUNK)})
            if sink is not None:
                sink += drain(sim)
            if not got["emitted"]:
                log(f"{s}: the data ran out before {mark:,} ticks")
                break
    return {"s": ran, "from_ms": from_ms, "to_ms": to_ms, "played": played}


def legs(from_state: str, to_state: str) -> int:
    """Orders a transition decides: none when the position stays, 2 for a reversal, else 1."""
    a, b = POSITION[State(from_state)], POSITION[State(to_state)]
    return 0 if a == b else (a != 0) + (b != 0)


def orders_stats(db: str) -> dict[str, Any]:
    """The bot's orders, and the orders its strategy decided (every transition's, sent or not) with their
    peaks in market time (``time_ms``: the exchange time of the deciding tick)."""
    decided: list[int] = []
    for r in bb.query(db, "SELECT time_ms, from_state, to_state FROM transitions WHERE cause = 'tick' "
                          "ORDER BY time_ms"):
        decided += [r["time_ms"]] * legs(r["from_state"], r["to_state"])
    rows = bb.query(db, "SELECT (SELECT count(*) FROM orders) AS orders, "
                        "(SELECT count(*) FROM orders WHERE status='filled') AS filled, "
                        "(SELECT count(*) FROM orders WHERE status='rejected') AS rejected, "
                        "(SELECT count(*) FROM events WHERE message LIKE '%transitions behind%') AS behind, "
                        "(SELECT count(*) FROM events WHERE level IN ('ERROR','CRITICAL')) AS errors")[0]
    return {"orders": rows["orders"], "filled": rows["filled"], "rejected": rows["rejected"],
            "behind": rows["behind"], "errors": rows["errors"], "decided": len(decided),
            "peak_10s": peak(decided, 10_000), "peak_60s": peak(decided, 60_000)}


def peak(times: list[int], window_ms: int) -> int:
    """The most events in any ``window_ms`` (sorted times)."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window_ms, i) - i)
    return best


# ---- 1. bot RSS and the trading requests --------------------------------------------------------

def trading_run(name: str, tmp: str, candles: list[Candle], symbols: list[str], marks: list[int],
                log: Any, idle: list[IdleBot]) -> dict[str, Any]:
    """Fresh exchange, one live bot per symbol in one data directory, replayed to each mark."""
    data = os.path.join(tmp, name, "data")
    os.makedirs(data)
    more = {s: derived_symbol(s, candles) for s in symbols[1:]}
    res: dict[str, Any] = {"name": name, "symbols": symbols, "data_dir": data, "readings": [], "requests": [],
                           "replay_s": 0.0, "bots": {}}
    bots: dict[str, bb.BotProcess] = {}
    with SimExchangeThread(candles, symbol=symbols[0], paused=True, history_candles=60, target_interval="1m",
                           speed=0, more_symbols=more) as sim:
        try:
            for i, s in enumerate(symbols):
                db = os.path.join(data, "bollmin.db" if i == 0 else f"{s}.db")
                bots[s] = live_bot(os.path.join(tmp, name, s.lower()), db, sim, s)
                bots[s].start()
            for s in symbols:
                wait_live(bots[s])
            time.sleep(2.0)
            res["startup_requests"] = drain(sim)
            res["connected"] = {s: memory(b.proc.pid) for s, b in bots.items()}
            log(f"{name}: {' + '.join(symbols)} connected; RSS " + ", ".join(
                f"{m['rss'] / MB:.1f} MB" for m in res["connected"].values()))
            meter = bb.LoadMeter()
            meter.start(*bots.values())
            cpu0 = {s: b.cpu()[0] for s, b in bots.items()}
            res["stretches"] = []
            for mark in marks:
                a0, c0 = time.monotonic(), {s: b.cpu()[0] for s, b in bots.items()}
                stretch = advance(sim, symbols, mark, log, res["requests"])
                res["advance_s"] = res.get("advance_s", 0.0) + time.monotonic() - a0
                res["advance_cpu_s"] = {s: res.get("advance_cpu_s", {}).get(s, 0.0) + b.cpu()[0] - c0[s]
                                        for s, b in bots.items()}
                res["stretches"].append(stretch)
                ran = stretch["s"]
                res["replay_s"] += ran
                reading: dict[str, Any] = {"ticks": mark, "replay_s": ran, "bots": {}}
                for s in symbols:
                    st = settle(sim, bots[s], s)
                    reading["bots"][s] = {"messages": int(st.get("messages") or 0),
                                          "dropped": int(st.get("dropped") or 0),
                                          "reconnects": int(st.get("reconnects") or 0),
                                          "ticks": state(sim)[s]["ticks_emitted"],
                                          "db_bytes": db_size(bots[s].db), **orders_stats(bots[s].db)}
                time.sleep(0.5)
                for s in symbols:
                    reading["bots"][s]["mem"] = memory(bots[s].proc.pid)
                res["requests"] += drain(sim)
                res["readings"].append(reading)
                log(f"{name}: {mark:,} ticks each (replay {ran:.0f} s); RSS " + ", ".join(
                    f"{s} {b['mem']['rss'] / MB:.1f} MB" for s, b in reading["bots"].items()))
                for x in idle:
                    x.poll(log)
            res["others_cpu"] = meter.stop()
            res["bot_cpu_s"] = {s: b.cpu()[0] - cpu0[s] for s, b in bots.items()}
            res["sim_state"] = {k: v for k, v in ctl(sim.base_url, "state").items() if k != "symbols"}
            res["requests"] += drain(sim)
            res["sim_weight"] = ctl(sim.base_url, "weight")["total"]  # its X-MBX-USED-WEIGHT-1M, summed
        finally:
            res["exit"] = {s: b.stop() for s, b in bots.items()}
    res["final"] = {s: orders_stats(b.db) for s, b in bots.items()}
    for r in res["requests"] + res["startup_requests"]:
        r.pop("api_key", None)
    return res


def db_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


# ---- 3. the idle bot ------------------------------------------------------------------------------

def quiet_candles(n: int, t0_ms: int = 1_748_736_000_000, mid: float = 95_000.0, amp: float = 50.0) -> list[Candle]:
    """``n`` 1m candles whose closes follow a sine of 20 candles (BOLL_PERIOD): every price stays within
    1.1 amplitudes of the window's mean and the bands are 1.4 amplitudes away, so the bot never trades."""
    closes = [round(mid + amp * math.sin(2 * math.pi * i / 20), 1) for i in range(n + 1)]
    return [Candle(t0_ms + i * SOURCE_MS, closes[i], max(closes[i], closes[i + 1]), min(closes[i], closes[i + 1]),
                   closes[i + 1], 10.0) for i in range(n)]


class IdleBot:
    """A live bot on an exchange of its own that places no order, from its start to ``startup_s + idle_s``.

    ``speed`` None: the market is paused (silent); else it is replayed at that speed."""

    def __init__(self, tmp: str, name: str, candles: list[Candle], speed: float | None, startup_s: float,
                 idle_s: float) -> None:
        self.name, self.startup_s, self.idle_s = name, startup_s, idle_s
        self.sim = SimExchangeThread(candles, paused=speed is None, speed=speed or 1.0, history_candles=60,
                                     target_interval="1m")
        self.workdir = os.path.join(tmp, f"idle-{name}")
        self.bot: bb.BotProcess | None = None
        self.t0_ms = 0
        self.result: dict[str, Any] | None = None
        self.closed = False

    def start(self, log: Any) -> None:
        self.sim.__enter__()
        self.bot = live_bot(self.workdir, os.path.join(self.workdir, "bollmin.db"), self.sim, "BTCUSDT")
        self.t0_ms = int(time.time() * 1000)
        self.bot.start()
        wait_live(self.bot)
        self.connected_s = time.time() - self.t0_ms / 1000
        log(f"idle bot ({self.name} market) connected after {self.connected_s:.1f} s; it runs "
            f"{self.startup_s + self.idle_s:.0f} s")

    def due(self) -> bool:
        return time.time() * 1000 >= self.t0_ms + (self.startup_s + self.idle_s) * 1000

    def poll(self, log: Any) -> None:
        """Harvest when its time is up (called between the other measurements)."""
        if self.result is None and self.bot is not None and self.due():
            self.finish(log)

    def finish(self, log: Any) -> None:
        while not self.due():
            time.sleep(0.5)
        assert self.bot is not None
        if not self.bot.alive():
            raise RuntimeError(f"the idle bot exited ({self.bot.proc.returncode}):\n{self.bot.stderr_tail()}")
        mem = memory(self.bot.proc.pid)
        reqs = ctl(self.sim.base_url, "requests")  # every REST request it made (there are few)
        sim_weight = ctl(self.sim.base_url, "weight")["total"]  # what its X-MBX-USED-WEIGHT-1M counted
        end_ms = self.t0_ms + (self.startup_s + self.idle_s) * 1000
        split = self.t0_ms + self.startup_s * 1000
        st = bb.bot_status(self.bot.db)
        sim = ctl(self.sim.base_url, "state")
        self.result = {
            "startup": [r for r in reqs if self.t0_ms <= r["time_ms"] < split],
            "idle": [r for r in reqs if split <= r["time_ms"] < end_ms],
            "startup_s": self.startup_s, "idle_s": self.idle_s, "connected_s": self.connected_s, "mem": mem,
            "paused": sim["paused"], "ticks": sim["ticks_emitted"], "orders": sim["orders"],
            "reconnects": int(st.get("reconnects") or 0), "messages": int(st.get("messages") or 0),
            "stalls": self.bot_log_count("treating the connection as dead"),
            "sim_weight": sim_weight, "sim_weight_of_log": sum(sim_weight_of(r["path"], r["params"]) for r in reqs),
        }
        for r in self.result["startup"] + self.result["idle"]:
            r.pop("api_key", None)
        log(f"idle bot ({self.name} market): {len(self.result['startup'])} requests in its first "
            f"{self.startup_s:.0f} s, {len(self.result['idle'])} in the next {self.idle_s:.0f} s; "
            f"RSS {mem['rss'] / MB:.1f} MB")
        self.close()

    def bot_log_count(self, needle: str) -> int:
        try:
            with open(os.path.join(self.workdir, "bot.log"), encoding="utf-8", errors="replace") as fh:
                return sum(needle in line for line in fh)
        except OSError:
            return 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bot is not None:
            self.bot.stop()
        self.sim.__exit__(None, None, None)


# ---- 2. the dashboard ------------------------------------------------------------------------------

def paper_db(tmp: str, candles: list[Candle], symbols: list[str], ticks: int,
             log: Any) -> tuple[list[str], dict[str, Any]]:
    """Short paper bots on ``symbols`` (BTCUSDT's data and rules under those names): their DBs, and each
    one's memory once connected and after ``ticks`` (a paper bot opens no user-data stream)."""
    more = {s: candles for s in symbols[1:]}
    dbs, bots, mem = [], {}, {}
    with SimExchangeThread(candles, symbol=symbols[0], paused=True, history_candles=60, target_interval="1m",
                           speed=0, more_symbols=more) as sim:
        try:
            for s in symbols:
                work = os.path.join(tmp, "paper", s.lower())
                bots[s] = live_bot(work, os.path.join(work, f"{s}.db"), sim, s, paper=True)
                bots[s].start()
            for s in symbols:
                wait_live(bots[s], user_stream=False)
            time.sleep(2.0)
            mem = {s: {"connected": memory(b.proc.pid)} for s, b in bots.items()}
            advance(sim, symbols, ticks, log)
            for s in symbols:
                settle(sim, bots[s], s)
            time.sleep(0.5)
            for s, b in bots.items():
                mem[s]["after"] = memory(b.proc.pid)
        finally:
            for b in bots.values():
                b.stop()
    for s, b in bots.items():
        dbs.append(b.db)
        mem[s]["orders"] = orders_stats(b.db)["orders"]
        log(f"paper {s}: {ticks:,} ticks, {mem[s]['orders']:,} orders; RSS {mem[s]['connected']['rss'] / MB:.1f} → "
            f"{mem[s]['after']['rss'] / MB:.1f} MB")
    return dbs, mem


def move_db(src: str, dst_dir: str) -> str:
    """Move a DB (and its -wal/-shm, if any) into ``dst_dir``; returns its new path."""
    dst = os.path.join(dst_dir, os.path.basename(src))
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(src + ext):
            shutil.move(src + ext, dst + ext)
    return dst


def dashboard_rss(data: str, workdir: str, n_requests: int, log: Any) -> dict[str, Any]:
    """A fresh ``python dashboard.py`` on ``data``/bollmin.db, polled ``n_requests`` times on every instance."""
    os.makedirs(workdir, exist_ok=True)
    names = sorted(f[:-3] for f in os.listdir(data) if f.endswith(".db"))
    names.sort(key=lambda n: n != "bollmin")
    port = bb.free_port()
    cfg = bb.write_config(os.path.join(workdir, "config.py"), DB_PATH=os.path.join(data, "bollmin.db"),
                          INTERVAL="1m", DASHBOARD_HOST="127.0.0.1", DASHBOARD_PORT=port, LOG_LEVEL="WARNING")
    paths = []
    for n in names:
        paths += [f"/?db={n}", f"/api/status?db={n}", "/api/instances", f"/api/candles?db={n}"]
    err_path = os.path.join(workdir, "stderr.txt")
    server = load = None
    try:
        with open(err_path, "ab") as err:
            server = subprocess.Popen([sys.executable, os.path.join(bb.ROOT, "dashboard.py"), "--config", cfg],
                                      cwd=workdir, env=bb.clean_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while not bb.http_ok(f"http://127.0.0.1:{port}/healthz"):
            if server.poll() is not None or time.monotonic() > deadline:
                with open(err_path, encoding="utf-8", errors="replace") as fh:
                    raise RuntimeError("the dashboard did not start:\n" + fh.read()[-1500:])
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/instances", timeout=10) as resp:
            found = [r.get("name") for r in json.loads(resp.read())["rows"]]
        started = memory(server.pid)
        dash = Proc(server.pid)
        cpu0 = dash.cpu()[0]
        meter = bb.LoadMeter()
        t0 = time.monotonic()
        load = subprocess.Popen([sys.executable, os.path.join(bb.BENCH, "dashboard_load.py"), str(port), "--threads",
                                 "2", "--paths", *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        meter.start(dash, Proc(load.pid))
        counts: dict[str, Any] = {"requests": 0}
        peak_rss = started["rss"]
        while counts["requests"] < n_requests:
            time.sleep(0.5)
            load.stdin.write("\n")
            load.stdin.flush()
            counts = json.loads(load.stdout.readline())
            if server.poll() is not None:
                raise RuntimeError("the dashboard exited while polled")
            peak_rss = max(peak_rss, psutil.Process(server.pid).memory_info().rss)
        load.stdin.close()
        counts = json.loads(load.stdout.readlines()[-1])
        load.wait(20)
        secs = time.monotonic() - t0
        others = meter.stop()
        time.sleep(0.5)
        after = memory(server.pid)
        cpu = dash.cpu()[0] - cpu0
    finally:
        for p in (load, server):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
    res = {"instances": len(names), "names": names, "found": found, "started": started, "after": after,
           "peak_rss": max(peak_rss, after["rss"]),
           "requests": counts["requests"], "errors": counts["errors"], "last_error": counts["last_error"],
           "seconds": secs, "cpu_s": cpu, "others_cpu": others, "paths_per_round": len(paths)}
    log(f"dashboard, {len(names)} instance(s): {counts['requests']:,} requests in {secs:.0f} s, {counts['errors']} "
        f"errors; RSS {started['rss'] / MB:.1f} → {after['rss'] / MB:.1f} MB")
    return res


def dashboard_phase(res: dict[str, Any], tmp: str, candles: list[Candle], args: argparse.Namespace,
                    log: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The two-bot run's data directory with 1, 2, then 4 instance DBs; also the paper bots' memory."""
    data = res["data_dir"]
    aside = os.path.join(tmp, "aside")
    os.makedirs(aside)
    extra, paper = paper_db(tmp, candles, ["SOLUSDT", "BNBUSDT"], args.paper_ticks, log)
    eth = move_db(os.path.join(data, "ETHUSDT.db"), aside)
    out = [dashboard_rss(data, os.path.join(tmp, "dash1"), args.dash_requests, log)]
    move_db(eth, data)
    out.append(dashboard_rss(data, os.path.join(tmp, "dash2"), args.dash_requests, log))
    for db in extra:
        move_db(db, data)
    out.append(dashboard_rss(data, os.path.join(tmp, "dash4"), args.dash_requests, log))
    return out, paper


# ---- the whole measurement ---------------------------------------------------------------------

def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    res: dict[str, Any] = {"machine": common.machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "loadavg": os.getloadavg(), "quick": args.quick, "interval": "1m",
                           "paper_ticks": args.paper_ticks,
                           "keepalive_s": userstream.KEEPALIVE_S}
    base = read_candles(bb.MARKET_1M)
    need = max(args.ticks_one, args.ticks_two) // 4 + 60 + 2 * 1440 + 10
    candles = long_candles(base, need)
    res["candles"] = len(candles)
    res["base_candles"] = len(base)
    log(f"{len(candles):,} 1m candles ({len(base):,} in the file, played forward and reversed in turn)")
    with tempfile.TemporaryDirectory(prefix="bollmin-bench-instances-") as tmp:
        if args.keep:  # every DB, log and config of the run, for a closer look
            tmp = args.keep
            os.makedirs(tmp)
        window = args.startup_s + args.idle_s
        idle = [IdleBot(tmp, "quiet", quiet_candles(60 + int(window // 60) + 10), 1.0, args.startup_s, args.idle_s),
                IdleBot(tmp, "silent", base, None, args.startup_s, args.idle_s)]
        try:
            for x in idle:
                x.start(log)
            res["one"] = trading_run("one", tmp, candles, ["BTCUSDT"], args.marks_one, log, idle)
            res["two"] = trading_run("two", tmp, candles, ["BTCUSDT", "ETHUSDT"], args.marks_two, log, idle)
            for x in idle:
                if x.result is None:
                    log(f"waiting for the idle bot ({x.name} market) to finish its window")
                    x.finish(log)
        finally:
            for x in idle:
                x.close()
        res["idle"], res["idle_silent"] = idle[0].result, idle[1].result
        res["dashboard"], res["paper"] = dashboard_phase(res["two"], tmp, base, args, log)
    res["total_s"] = time.monotonic() - started
    return res


# ---- the section ---------------------------------------------------------------------------------

def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def _mb(b: float) -> str:
    return f"{b / MB:.1f}"


def fits(per_instance: float, budget: float) -> str:
    return "any number" if per_instance <= 0 else f"{int(budget // per_instance):,}"


def trading_figures(run: dict[str, Any], idle_per_min: float) -> dict[str, Any]:
    """A replay's requests and orders per instance: per wall minute while the replay ran (resumed, at
    speed 0), and per minute of market time (what the same market at 1x would cost)."""
    syms = run["symbols"]
    n = len(syms)
    stretches = run["stretches"]
    wall_min = sum(x["s"] for x in stretches) / 60
    played_min = sum(sum(x["played"].values()) for x in stretches) / n / 4 * SOURCE_MS / 60_000
    ticks = run["readings"][-1]["bots"][syms[0]]["ticks"]
    market_min = ticks / 4 * SOURCE_MS / 60_000

    def running(r: dict[str, Any]) -> bool:
        return any(x["from_ms"] <= r["time_ms"] <= x["to_ms"] for x in stretches)

    by_sym: dict[str, list[dict[str, Any]]] = {s: [] for s in syms}
    shared: list[dict[str, Any]] = []
    for r in run["requests"]:
        by_sym.get((r.get("params") or {}).get("symbol"), shared).append(r)
    per = {}
    for s in syms:
        t = tally(by_sym[s])
        sent = sorted(r["time_ms"] for r in by_sym[s] if (r["method"], r["path"]) == ORDER_PATH and running(r))
        per[s] = {"tally": t, "weight": total_weight(t), "sent_running": len(sent),
                  "wall_peak_10s": peak(sent, 10_000), **run["final"][s]}
    shared_t = tally(shared)
    weight = sum(p["weight"] for p in per.values()) + total_weight(shared_t)
    running_weight = sum(weight_of(r["method"], r["path"], r.get("params") or {})[0]
                         for r in run["requests"] if running(r))
    return {
        "n": n, "wall_min": wall_min, "market_min": market_min, "speedup": played_min / wall_min,
        "per": per, "shared": shared_t, "weight": weight,
        "weight_per_wall_min": running_weight / n / wall_min,
        "sent_per_wall_min": sum(p["sent_running"] for p in per.values()) / n / wall_min,
        "wall_peak_10s": max(p["wall_peak_10s"] for p in per.values()),
        "weight_per_market_min": weight / n / market_min + idle_per_min,
        "decided_per_market_min": sum(p["decided"] for p in per.values()) / n / market_min,
        "peak_10s": max(p["peak_10s"] for p in per.values()), "peak_60s": max(p["peak_60s"] for p in per.values()),
        "behind": sum(p["behind"] for p in per.values()),
        "ticks_per_s": {s: sum(x["played"][s] for x in stretches) / (wall_min * 60) for s in syms},
        "cpu_pct": {s: run["advance_cpu_s"][s] / run["advance_s"] * 100 for s in syms},
        "errors": sum(r["errors"] for t in [shared_t, *(p["tally"] for p in per.values())] for r in t.values()),
    }


def growth_note(one: dict[str, Any], tr1: dict[str, Any]) -> str:
    """The single bot's RSS growth per order sent and per tick, and what it comes to in a month at 1x."""
    r = one["readings"]
    s = one["symbols"][0]
    a, b = r[0]["bots"][s], r[-1]["bots"][s]
    grew = (b["mem"]["rss"] - a["mem"]["rss"]) / MB
    orders, ticks = b["orders"] - a["orders"], b["ticks"] - a["ticks"]
    if orders <= 0 or ticks <= 0:
        return ""
    month = tr1["decided_per_market_min"] * 60 * 24 * 30
    steps = ", ".join(f"{(y['bots'][s]['mem']['rss'] - x['bots'][s]['mem']['rss']) / MB:+.2f} MB"
                      for x, y in zip(r, r[1:], strict=False))
    return (f"The single live bot's RSS grew {grew:+.2f} MB from {a['ticks']:,} to {b['ticks']:,} ticks (by stretch: "
            f"{steps}), while it sent {orders:,} orders and its DB grew from {_mb(a['db_bytes'])} to "
            f"{_mb(b['db_bytes'])} MB (SQLite's page cache is capped at 512 KiB). A paper bot reading ticks only "
            f"stays flat to 2,000,000 ticks (the firehose section); here it is "
            f"{grew * 1024 / (orders / 1000):.0f} kB per 1,000 orders. Without the heartbeat's heap trim "
            f"(`heartbeat.HeapTrim`) the same bot grew +1.34 MB and +2.64 MB in two runs of this script, and a "
            f"probe inside it (tracemalloc, objects counted by type, glibc's `mallinfo2`, `sqlite3_memory_used`; "
            f"not part of this script) found why: from 100,000 to 1,000,000 ticks over 25,200 orders, memory in "
            f"use by malloc +0.10 MB, SQLite flat at 0.69 MB, no Python structure growing, and the free memory "
            f"glibc keeps in its main heap +1.04 MB — fragments left by each REST call's short-lived allocations, "
            f"given back by `malloc_trim(0)`. The heartbeat now trims when that free memory has grown by 1 MiB, "
            f"while no order is in flight. At the {tr1['decided_per_market_min']:.2f} "
            f"orders per market minute this strategy makes on 1m candles ({month:,.0f} a month at 1× real time), "
            f"that would be about {grew / orders * month:.1f} MB a month if it went on linearly; the 15m default "
            f"trades less.")


def counter_check(res: dict[str, Any]) -> str:
    """Does the exchange's own weight counter (``GET /_sim/weight``: its X-MBX-USED-WEIGHT-1M summed since
    it started) agree with its request log weighed the same way?"""
    pairs = []
    for label, x in (("quiet", res["idle"]), ("silent", res["idle_silent"])):
        if "sim_weight" in x:
            pairs.append((label, x["sim_weight"], x["sim_weight_of_log"]))
    for label, run in (("one bot", res["one"]), ("two bots", res["two"])):
        if "sim_weight" in run:
            log_w = sum(sim_weight_of(r["path"], r.get("params") or {})
                        for r in run["startup_requests"] + run["requests"])
            pairs.append((label, run["sim_weight"], log_w))
    if not pairs:
        return ""
    same = all(a == b for _, a, b in pairs)
    return ("The exchange's own weight counter (`GET /_sim/weight`, the `X-MBX-USED-WEIGHT-1M` it sends, summed) "
            + ("agrees with its request log weighed the same way: " if same else "does NOT agree with its request "
               "log weighed the same way (counter / log): ")
            + ", ".join(f"{label} {a:,}" if same else f"{label} {a:,} / {b:,}" for label, a, b in pairs)
            + " (the requests after a window are in the counter too).")


def memory_rows(one: dict[str, Any], two: dict[str, Any], idle: dict[str, Any], paper: dict[str, Any],
                paper_ticks: int) -> list[str]:
    rows = ["| run | bot | ticks seen | RSS MB | USS MB | PSS MB | market messages | orders sent | DB MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run, label in ((one, "one alone"), (two, "two together")):
        for s in run["symbols"]:
            c = run["connected"][s]
            rows.append(f"| {label} | {s} | connected | {_mb(c['rss'])} | {_mb(c['uss'])} | {_mb(c['pss'])} | | | |")
            for x in run["readings"]:
                b = x["bots"][s]
                rows.append(f"| {label} | {s} | {b['ticks']:,} | {_mb(b['mem']['rss'])} | {_mb(b['mem']['uss'])} | "
                            f"{_mb(b['mem']['pss'])} | {b['messages']:,} | {b['orders']:,} | {_mb(b['db_bytes'])} |")
    m = idle["mem"]
    rows.append(f"| idle (quiet market, no order) | BTCUSDT | {idle['ticks']:,} (in "
                f"{(idle['startup_s'] + idle['idle_s']) / 60:.1f} min) | {_mb(m['rss'])} | {_mb(m['uss'])} | "
                f"{_mb(m['pss'])} | {idle['messages']:,} | 0 | |")
    for s, p in paper.items():
        for label, key in (("connected", "connected"), (f"{paper_ticks:,}", "after")):
            m = p[key]
            rows.append(f"| paper (no user-data stream), two together | {s} | {label} | {_mb(m['rss'])} | "
                        f"{_mb(m['uss'])} | {_mb(m['pss'])} | | {p['orders'] if key == 'after' else ''} | |")
    return rows


def request_rows(idle: dict[str, Any], silent: dict[str, Any], tr1: dict[str, Any], tr2: dict[str, Any],
                 sym1: str) -> list[str]:
    st_t, q_t, s_t = tally(idle["startup"]), tally(idle["idle"]), tally(silent["idle"])
    keys = set(st_t) | set(q_t) | set(s_t) | set(tr1["shared"]) | set(tr2["shared"])
    for tr in (tr1, tr2):
        for p in tr["per"].values():
            keys |= set(p["tally"])
    rows = [f"| request | weight each | startup (first {idle['startup_s']:.0f} s) | quiet market, "
            f"{idle['idle_s'] / 60:.0f} min | silent market, {silent['idle_s'] / 60:.0f} min | trading, one bot | "
            "trading, two bots: each |", "|---|---:|---:|---:|---:|---:|---:|"]

    def count(t: dict[str, dict[str, Any]], k: str) -> int:
        return t.get(k, {}).get("count", 0)

    for k in sorted(keys, key=lambda k: (k.split()[1], k.split()[0])):
        method, path = k.split(" ", 1)
        w, known = weight_of(method, path, {})
        wtxt = ("1–10 by limit" if path == "/fapi/v1/klines" else str(w)) if known else "unknown, counted 1"
        two = " / ".join(str(count(p["tally"], k)) for p in tr2["per"].values())
        two += f" (+{count(tr2['shared'], k)} for the account)" if k in tr2["shared"] else ""
        rows.append(f"| `{k}` | {wtxt} | {count(st_t, k)} | {count(q_t, k)} | {count(s_t, k)} | "
                    f"{count(tr1['per'][sym1]['tally'], k) + count(tr1['shared'], k)} | {two} |")
    two_w = " / ".join(str(p["weight"]) for p in tr2["per"].values())
    two_w += f" (+{total_weight(tr2['shared'])})" if tr2["shared"] else ""
    rows.append(f"| **weight** | | **{total_weight(st_t)}** | **{total_weight(q_t)}** | **{total_weight(s_t)}** | "
                f"**{tr1['weight']}** | **{two_w}** |")
    two_s = " / ".join(str(total_weight(p["tally"], "sim")) for p in tr2["per"].values())
    two_s += f" (+{total_weight(tr2['shared'], 'sim')})" if tr2["shared"] else ""
    rows.append(f"| weight as the simexchange counts it (`X-MBX-USED-WEIGHT-1M`: klines by limit, any other "
                f"request 1) | | {total_weight(st_t, 'sim')} | {total_weight(q_t, 'sim')} | {total_weight(s_t, 'sim')} "
                f"| {total_weight(tr1['per'][sym1]['tally'], 'sim') + total_weight(tr1['shared'], 'sim')} | {two_s} |")
    return rows


def render(res: dict[str, Any]) -> str:
    one, two, idle, silent, dash = res["one"], res["two"], res["idle"], res["idle_silent"], res["dashboard"]
    r1, r2 = one["readings"], two["readings"]
    sym1 = one["symbols"][0]
    g_one = (r1[-1]["bots"][sym1]["mem"]["rss"] - r1[0]["bots"][sym1]["mem"]["rss"]) / MB
    g_two = {s: (r2[-1]["bots"][s]["mem"]["rss"] - r2[0]["bots"][s]["mem"]["rss"]) / MB for s in two["symbols"]}
    # request weight
    startup_w = total_weight(tally(idle["startup"]))
    keep_w = 1 / (res["keepalive_s"] / 60)  # PUT listenKey every KEEPALIVE_S, weight 1
    idle_per_min = total_weight(tally(idle["idle"])) / (idle["idle_s"] / 60) + keep_w
    silent_per_min = total_weight(tally(silent["idle"])) / (silent["idle_s"] / 60) + keep_w
    tr1, tr2 = trading_figures(one, idle_per_min), trading_figures(two, idle_per_min)
    budget = WEIGHT_LIMIT * MARGIN
    reboot = startup_w + idle_per_min
    # memory
    d = {x["instances"]: x for x in dash}
    lo, hi = min(d), max(d)
    d_inc = (d[hi]["after"]["rss"] - d[lo]["after"]["rss"]) / (hi - lo) / MB
    d_per = max(d_inc, 0.0)
    dash_max = max(x["peak_rss"] for x in dash) / MB
    n_max = max(dash, key=lambda x: x["peak_rss"])["instances"]
    dash_base = dash_max - d_per * hi  # the dashboard before any instance (its largest reading, cautious)
    bot_rss = max(b["mem"]["rss"] for rd in (r1, r2) for x in rd for b in x["bots"].values()) / MB
    bot_pss = max(b["mem"]["pss"] for x in r2 for b in x["bots"].values()) / MB

    def capacity(ram: int, per_bot: float) -> int:
        return max(int((ram - OS_RESERVE_MB - dash_base) // (per_bot + d_per)), 0)

    peak10, peak60 = max(tr1["peak_10s"], tr2["peak_10s"]), max(tr1["peak_60s"], tr2["peak_60s"])
    out = ["## Several instances: memory and request weight per instance", "",
           f"Machine: {res['machine']}  ",
           f"Command: `{res.get('command', 'python bench/bench_instances.py')}` "
           f"({res['date']}; {res['total_s']:.0f} s)", ""]
    if res.get("quick"):
        out += ["**A `--quick` smoke run: short replays and windows; the figures mean little.**", ""]
    out += ["| measure | result | target | met |", "|---|---:|---:|:---:|",
            f"| one live bot alone: RSS once connected (market + user-data stream) | "
            f"{_mb(one['connected'][sym1]['rss'])} MB | — | |"]
    out += [f"| one live bot alone: RSS after {x['ticks']:,} ticks | {_mb(x['bots'][sym1]['mem']['rss'])} MB | — | |"
            for x in r1]
    out.append(f"| one live bot alone: RSS growth from {r1[0]['ticks']:,} to {r1[-1]['ticks']:,} ticks | "
               f"{g_one:+.2f} MB | < {TARGET_GROWTH_MB:g} MB | {_ok(g_one < TARGET_GROWTH_MB)} |")
    names2 = " / ".join(two["symbols"])
    out += [f"| two live bots ({names2}): RSS of each after {x['ticks']:,} ticks each | "
            + " / ".join(_mb(b["mem"]["rss"]) for b in x["bots"].values()) + " MB | — | |" for x in r2]
    out.append(f"| two live bots: RSS growth from {r2[0]['ticks']:,} to {r2[-1]['ticks']:,} ticks | "
               + " / ".join(f"{g:+.2f}" for g in g_two.values()) + f" MB | < {TARGET_GROWTH_MB:g} MB | "
               f"{_ok(all(g < TARGET_GROWTH_MB for g in g_two.values()))} |")
    for s, p in res.get("paper", {}).items():
        out.append(f"| a paper bot ({s}, beside another): RSS once connected / after {res['paper_ticks']:,} ticks | "
                   f"{_mb(p['connected']['rss'])} / {_mb(p['after']['rss'])} MB | — | |")
    out.append(f"| dashboard (one process) RSS after {min(x['requests'] for x in dash):,}+ requests with "
               + " / ".join(str(x["instances"]) for x in dash) + " instances | "
               + " / ".join(_mb(x["after"]["rss"]) for x in dash) + " MB | — | |")
    out.append(f"| dashboard RSS per additional instance (from {lo} to {hi} instances) | {d_inc:+.2f} MB | — | |")
    out.append(f"| REST weight of an instance in a quiet market (trades flowing, no order; {idle['idle_s'] / 60:.0f} "
               f"min after its first {idle['startup_s']:.0f} s, listenKey keep-alive included) | "
               f"{idle_per_min:.2f} / min | — | |")
    out.append(f"| the same in a silent market (replay paused: no market message at all) | {silent_per_min:.2f} / min "
               f"| — | |")
    out.append(f"| REST weight of an instance's startup (its first {idle['startup_s']:.0f} s) | {startup_w} | — | |")
    out.append(f"| instances in a quiet market within {MARGIN * 100:.0f} % of {WEIGHT_LIMIT:,} weight / min per IP | "
               f"{fits(idle_per_min, budget)} | — | |")
    out.append(f"| orders of one instance in any 10 s / any minute of market time, at most (account limits "
               f"{ORDER_LIMIT_10S} / {ORDER_LIMIT_1M:,}) | {peak10} / {peak60} | — | |")
    for ram in SERVERS_MB:
        out.append(f"| instances on a {ram // 1024} GB server ({OS_RESERVE_MB} MB for the OS, one dashboard, "
                   f"{bot_rss:.0f} MB RSS per bot) | {capacity(ram, bot_rss)} | — | |")

    # -- bot memory
    rate1 = tr1["ticks_per_s"][sym1]
    rate2 = min(tr2["ticks_per_s"].values())
    final = [b for run in (one, two) for b in run["readings"][-1]["bots"].values()]
    out += ["", "**Bot memory.** psutil by pid at each mark, once the bot has read every tick sent, its orders are "
                "settled and its DB writer is empty. USS: the pages only this process has; PSS: shared pages split "
                "among the processes sharing them (the bots share the interpreter and its libraries).", "",
            *memory_rows(one, two, idle, res.get("paper", {}), res.get("paper_ticks", 0)), "",
            growth_note(one, tr1), "",
            f"At speed 0 the replay goes as fast as the bots read: the single bot read {rate1:,.0f} ticks/s "
            f"(its process, threads included, used {tr1['cpu_pct'][sym1]:.0f} % of a core; the exchange, in this "
            f"process, most of another), the two bots " + " / ".join(f"{x:,.0f}" for x in tr2["ticks_per_s"].values())
            + " ticks/s (" + " / ".join(f"{x:.0f} %" for x in tr2["cpu_pct"].values()) + " of a core). "
            + (f"{r1[-1]['ticks']:,} ticks for two live bots at once would have taken about "
               f"{r1[-1]['ticks'] / rate2 / 60:.1f} minutes here, so the two-bot run stops at {r2[-1]['ticks']:,} "
               f"(the firehose section follows one paper bot to 2,000,000 ticks). "
               if r2[-1]["ticks"] < r1[-1]["ticks"] else "")
            + f"At that speed the market moves "
            f"{tr1['speedup']:,.0f}× faster than real and the order executor falls behind now and then: "
            f"{tr1['behind'] + tr2['behind']} times it dropped the transitions waiting for it and reconciled "
            f"(its overload guard), so the bots sent fewer orders than their strategy decided. Dropped messages "
            f"/ reconnects at the last mark: " + ", ".join(f"{b['dropped']} / {b['reconnects']}" for b in final)
            + "; bot exit codes: " + ", ".join(str(c) for run in (one, two) for c in run["exit"].values()) + "."]

    # -- dashboard
    out += ["", "**Dashboard memory.** `python dashboard.py` serves every instance from one process; a fresh one "
                "per count, polled by `bench/dashboard_load.py` (2 keep-alive clients, a process of its own) going "
                "round `/?db=N`, `/api/status?db=N`, `/api/instances`, `/api/candles?db=N` for every instance N. "
                "The DBs: the two-bot run's (`bollmin.db` = BTCUSDT, `ETHUSDT.db`), then two paper bots' "
                f"(`SOLUSDT.db`, `BNBUSDT.db`: BTCUSDT's data and rules under those names, "
                f"{res.get('paper_ticks', 0):,} ticks each).", "",
            "| instances | RSS after start MB | RSS after the requests MB | highest RSS while polled MB | USS MB "
            "| requests | errors | requests/s | CPU ms / request |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {x['instances']} ({', '.join(x['names'])}) | {_mb(x['started']['rss'])} | {_mb(x['after']['rss'])} | "
            f"{_mb(x['peak_rss'])} | {_mb(x['after']['uss'])} | {x['requests']:,} | {x['errors']} | "
            f"{x['requests'] / x['seconds']:.0f} | {x['cpu_s'] * 1000 / max(x['requests'], 1):.1f} |" for x in dash]

    # -- request weight
    klines = [r["params"].get("limit") for r in idle["startup"] if r["path"] == "/fapi/v1/klines"]
    every = [*idle["startup"], *idle["idle"], *silent["startup"], *silent["idle"]]
    for run in (one, two):
        every += run["startup_requests"] + run["requests"]
    bad = tally([r for r in every if not 200 <= int(r.get("status") or 0) < 300])
    errors = sum(r["count"] for r in bad.values())
    failed = ", ".join(f"`{k}` {r['count']}" for k, r in sorted(bad.items()))
    out += ["", "**REST requests and their weight per instance**, from the exchange's request log, weighed by the "
                "script's `WEIGHTS` (Binance USDⓈ-M; `POST /fapi/v1/order` weighs 0 on the IP limit and counts 1 "
                "on the account's order limits). Two idle bots ran on exchanges of their own while the replays "
                f"ran: a *quiet market* (the replay at 1× real time on candles that never reach the bands: trades "
                f"flow, the bot never orders; {idle['ticks']} ticks, {idle['orders']} orders) and a *silent market* "
                f"(the replay paused, as a paused exchange or a contract nobody trades: no market message at all). "
                f"Startup: the quiet one's first {idle['startup_s']:.0f} s (it was connected after "
                f"{idle['connected_s']:.1f} s); then {idle['idle_s']:.0f} s each with RECONCILE_INTERVAL_SECONDS = "
                f"60. Trading: the replays above (a request naming no symbol counts for the account).", "",
            *request_rows(idle, silent, tr1, tr2, sym1), "",
            f"In the silent market the stream is silent for WS_STALL_SECONDS (30 s): the bot treats it as dead "
            f"{silent['stalls']} times in {(silent['startup_s'] + silent['idle_s']) / 60:.1f} min and each reconnect "
            f"costs a backfill (`GET /fapi/v1/klines`) and a reconciliation (`positionRisk`); the quiet market "
            f"had {idle['stalls']}. Not in the windows but scheduled: `PUT /fapi/v1/listenKey` every "
            f"{res['keepalive_s'] / 60:.0f} min (weight 1, +{keep_w:.3f} / min, included in the figures) and a "
            f"market-stream reconnect at least every WS_MAX_AGE_HOURS = 23 h (a backfill and a reconciliation). "
            f"Startup's klines request asked for limit {', '.join(str(k) for k in klines)}. Answers other than "
            f"2xx: {errors}" + (f" ({failed})" if failed else "") + ". " + counter_check(res), "",
            f"| situation, per instance | weight / min | instances within {MARGIN * 100:.0f} % of {WEIGHT_LIMIT:,} "
            f"/ min ({budget:.0f}) | instances within the whole limit |", "|---|---:|---:|---:|",
            f"| quiet market, no order | {idle_per_min:.2f} | {fits(idle_per_min, budget)} | "
            f"{fits(idle_per_min, WEIGHT_LIMIT)} |",
            f"| silent market (reconnect every 30 s) | {silent_per_min:.2f} | {fits(silent_per_min, budget)} | "
            f"{fits(silent_per_min, WEIGHT_LIMIT)} |",
            f"| trading at real speed: the replay's requests spread over the {tr1['market_min']:,.0f} market minutes "
            f"they covered, plus the quiet market's | {tr1['weight_per_market_min']:.2f} | "
            f"{fits(tr1['weight_per_market_min'], budget)} | {fits(tr1['weight_per_market_min'], WEIGHT_LIMIT)} |",
            f"| trading at the replay's speed ({tr1['speedup']:,.0f}× real time, one bot; per wall minute) | "
            f"{tr1['weight_per_wall_min']:.1f} | {fits(tr1['weight_per_wall_min'], budget)} | "
            f"{fits(tr1['weight_per_wall_min'], WEIGHT_LIMIT)} |",
            f"| every instance starting in the same minute (a reboot): startup + a quiet minute | {reboot:.0f} | "
            f"{fits(reboot, budget)} | {fits(reboot, WEIGHT_LIMIT)} |"]

    # -- orders
    out += ["", f"**Orders.** The account's limits are shared by every instance on it: {ORDER_LIMIT_10S} per 10 s "
                f"and {ORDER_LIMIT_1M:,} per minute. In market time (each order the strategy decided, sent or "
                f"dropped by the overloaded executor, at the exchange time of its tick: what the same market at 1× "
                f"would send): one bot decided {tr1['decided_per_market_min']:.2f} orders per market minute on average "
                f"over {tr1['market_min']:,.0f} market minutes, the two bots {tr2['decided_per_market_min']:.2f} each "
                f"over {tr2['market_min']:,.0f}; one instance's most in any 10 s: {peak10} (a reversal is a close and "
                f"an open at one tick), in any minute: {peak60}. Even if every instance peaked at once, "
                f"{fits(peak10, ORDER_LIMIT_10S * MARGIN)} instances stay within {MARGIN * 100:.0f} % of the 10 s "
                f"limit and {fits(peak60, ORDER_LIMIT_1M * MARGIN)} within {MARGIN * 100:.0f} % of the minute "
                f"limit. INTERVAL is 1m here, the shortest and the most trading; the 15m default trades less often. "
                f"At the replay's speed one bot sent {tr1['sent_per_wall_min']:,.0f} orders per wall minute (most "
                f"in a wall 10 s: {tr1['wall_peak_10s']:,}) and the two bots {tr2['sent_per_wall_min']:,.0f} each "
                f"({tr2['wall_peak_10s']:,}): far past Binance's limits, as only a market running thousands of times "
                f"faster than real could make them; the simulated exchange does not enforce them. Orders filled / "
                f"rejected: " + ", ".join(f"{s} {p['filled']:,} / {p['rejected']}" for tr in (tr1, tr2)
                                          for s, p in tr["per"].items()) + "."]

    # -- servers
    out += ["", f"**Instances per server.** RAM − {OS_RESERVE_MB} MB for the OS − the dashboard (one process: its "
                f"highest reading, {dash_max:.1f} MB (with {n_max} instances), taken for {hi} instances, and "
                f"{d_per:.1f} MB per instance from 1 to {hi}: {dash_base:.0f} MB + {d_per:.1f} MB per instance) ÷ "
                f"a bot's memory. Per bot: its highest RSS "
                f"above ({bot_rss:.1f} MB), the cautious figure, since RSS counts the interpreter and libraries "
                f"shared with the other bots in every process; PSS splits those ({bot_pss:.1f} MB per bot with two "
                f"running, less with more).", "",
            "| server RAM | left after the OS | instances (RSS per bot) | instances (PSS per bot) | their REST weight, "
            "quiet market | all starting in one minute |", "|---|---:|---:|---:|---:|---:|"]
    for ram in SERVERS_MB:
        n_rss, n_pss = capacity(ram, bot_rss), capacity(ram, bot_pss)
        out.append(f"| {ram // 1024} GB ({ram:,} MB) | {ram - OS_RESERVE_MB:,} MB | {n_rss} | {n_pss} | "
                   f"{n_rss * idle_per_min:.0f} / min ({n_rss * idle_per_min / WEIGHT_LIMIT * 100:.1f} % of "
                   f"{WEIGHT_LIMIT:,}) | {n_rss * reboot:.0f} ({n_rss * reboot / WEIGHT_LIMIT * 100:.0f} %) |")

    # -- method and load
    loadavg = " / ".join(f"{x:.2f}" for x in res.get("loadavg", ()))
    others = [one["others_cpu"], two["others_cpu"], *(x["others_cpu"] for x in dash)]
    out += ["", f"Method: every bot is `python bollmin.py run` in live mode (INTERVAL 1m, the other settings at "
                f"their defaults) on the simulated exchange. The replays play {res['candles']:,} 1m candles, 4 ticks "
                f"each: the {res['base_candles']:,} of `marketdata/btcusdt_um_1m_2025-05.csv.gz` forward, then "
                f"time-reversed (open and close swapped), and so on, so the price path is continuous and stays in "
                f"range; ETHUSDT is derived from them (`derived_symbol`: prices ÷ 30, a day later). At each mark "
                f"the replay is paused a little before it and stepped to exactly the mark. Other processes used "
                + " / ".join(f"{x:.0f}" for x in others) + " % of a core during the one-bot run, the two-bot run and "
                f"the dashboard with 1 / 2 / 4 instances; load average when the bench started: {loadavg} (1 / 5 / "
                f"15 min)."]
    if max(others) > 25:
        out += ["", f"⚠ Other processes used up to {max(others):.0f} % of a core (the machine has {os.cpu_count()} "
                    f"cores): rates are pessimistic; memory, request counts and weights are not affected."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 1 minute)")
    parser.add_argument("--write", action="store_true", help="regenerate the instances section of BENCHMARKS.md")
    parser.add_argument("--ticks-one", type=int, default=1_000_000, help="last mark of the one-bot run")
    parser.add_argument("--ticks-two", type=int, default=200_000, help="last mark of the two-bot run")
    parser.add_argument("--first-mark", type=int, default=100_000, help="first mark of both runs")
    parser.add_argument("--idle-s", type=float, default=180.0, help="the idle window (after --startup-s)")
    parser.add_argument("--startup-s", type=float, default=10.0, help="requests in this first part are startup")
    parser.add_argument("--dash-requests", type=int, default=2000, help="dashboard requests per instance count")
    parser.add_argument("--paper-ticks", type=int, default=20_000, help="ticks of the paper bots (instances 3, 4)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (must not exist) and keep its files")
    parser.add_argument("--raw", metavar="PATH", help="also write every measured value as JSON to PATH")
    parser.add_argument("--from-raw", metavar="PATH", help="measure nothing: render the results saved by --raw")
    args = parser.parse_args()
    if args.quick:
        args.ticks_one, args.ticks_two, args.first_mark = 30_000, 20_000, 10_000
        args.idle_s, args.dash_requests, args.paper_ticks = 40.0, 300, 4000
    if not 0 < args.first_mark < min(args.ticks_one, args.ticks_two):
        parser.error("--first-mark must be below --ticks-one and --ticks-two")
    one = [args.first_mark, args.ticks_one]
    if args.ticks_one >= 10 * args.first_mark:  # in between: does it level off?
        one = sorted({args.first_mark, args.ticks_one // 4, args.ticks_one // 2, args.ticks_one})
    args.marks_one, args.marks_two = one, [args.first_mark, args.ticks_two]
    log = bb.stderr_log("bench_instances")
    argv = sys.argv[1:]
    if "--keep" in argv:  # it only keeps the files: not part of how the figures were made
        at = argv.index("--keep")
        argv = argv[:at] + argv[at + 2:]
    res = bb.measure_or_load(args, "bench_instances.py", measure, log, argv)
    if res is None:
        return 130
    bb.publish("instances", render(res), args, log)
    one_rd = res["one"]["readings"]
    grew = [(rd[-1]["bots"][s]["mem"]["rss"] - rd[0]["bots"][s]["mem"]["rss"]) / MB
            for rd in (one_rd, res["two"]["readings"]) for s in rd[0]["bots"]]
    return 0 if all(g < TARGET_GROWTH_MB for g in grew) else 1


if __name__ == "__main__":
    sys.exit(main())
