"""The firehose of ``bench_firehose.py``: synthetic market data, the server that pushes it as fast
as the bot reads, and sampling of the bot's counters while it does."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import websockets
from botbench import BotProcess, bot_status, own_cpu_s, query, wait_until

from history import Candle

SYMBOL = "BTCUSDT"
STREAMS_PATH = "/market/stream"
STREAMS_QUERY = "streams=btcusdt@kline_1m/btcusdt@aggTrade"
MINUTE_MS = 60_000
STEP_MS = 60                   # exchange time between two trades
BASE_TENTHS = 950_000          # 95 000.0 USDT
T0_MS = 1_748_736_000_000      # 2025-06-01 00:00 UTC: the forming candle the firehose starts in
HISTORY_CANDLES = 60


def fmt_price(tenths: int) -> str:
    return f"{tenths // 10}.{tenths % 10}0"


def synthetic_history(rng: random.Random) -> list[Candle]:
    """HISTORY_CANDLES closed 1m candles ending at 95 000 and the (empty) forming candle at T0."""
    closes, p = [], BASE_TENTHS
    for _ in range(HISTORY_CANDLES):
        closes.append(p)
        p += round(rng.gauss(0, 250))
    closes.reverse()  # the walk runs backwards from 95 000, so the last close is 95 000
    candles, prev = [], closes[0] + round(rng.gauss(0, 250))
    for i, c in enumerate(closes):
        t = T0_MS - (HISTORY_CANDLES - i) * MINUTE_MS
        hi, lo = max(prev, c) + rng.randint(0, 150), min(prev, c) - rng.randint(0, 150)
        candles.append(Candle(t, prev / 10, hi / 10, lo / 10, c / 10, round(rng.uniform(50, 300), 3)))
        prev = c
    candles.append(Candle(T0_MS, prev / 10, prev / 10, prev / 10, prev / 10, 0.0))
    return candles


def firehose_messages(n_ticks: int, rng: random.Random) -> tuple[list[bytes], list[int]]:
    """Pre-serialized combined-stream messages and, for each tick count k, the message index after tick k.

    A closed-kline message goes out before the first trade of each new candle.
    """
    msgs: list[bytes] = []
    after_tick: list[int] = [0]
    p = BASE_TENTHS
    agg, trade_id = 3_000_000_000, 7_000_000_000
    bar_open, o = T0_MS, p
    h = lo = c = p
    v = n = 0
    first_id = trade_id
    gauss = rng.gauss
    for k in range(n_ticks):
        t = T0_MS + k * STEP_MS
        open_ms = t - t % MINUTE_MS
        if open_ms != bar_open and n:
            kline = (f'{{"stream":"btcusdt@kline_1m","data":{{"e":"kline","E":{bar_open + MINUTE_MS},'
                     f'"s":"{SYMBOL}","k":{{"t":{bar_open},"T":{bar_open + MINUTE_MS - 1},"s":"{SYMBOL}",'
                     f'"i":"1m","f":{first_id},"L":{trade_id - 1},"o":"{fmt_price(o)}","c":"{fmt_price(c)}",'
                     f'"h":"{fmt_price(h)}","l":"{fmt_price(lo)}","v":"{v // 1000}.{v % 1000:03d}","n":{n},'
                     f'"x":true,"q":"0","V":"0","Q":"0","B":"0"}}}}}}')
            msgs.append(kline.encode())
            bar_open, o, h, lo, v, n, first_id = open_ms, p, p, p, 0, 0, trade_id
        p += round(gauss(0, 8)) - (p - BASE_TENTHS) // 5000
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
    """A ``websockets.serve`` server sending ``msgs`` on the routed stream path as fast as they are read,
    up to the limit set by ``allow``."""

    def __init__(self, msgs: list[bytes]) -> None:
        self.msgs = msgs
        self.sent = 0
        self.limit = 0
        self.more = asyncio.Event()
        self.connections = 0
        self.closing = False
        self.server: Any = None

    async def start(self) -> int:
        self.server = await websockets.serve(self.handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                                             max_size=2 ** 20)
        return self.server.sockets[0].getsockname()[1]

    def allow(self, limit: int) -> None:
        self.limit = min(limit, len(self.msgs))
        self.more.set()

    async def handler(self, ws: Any) -> None:
        path, _, q = ws.request.path.partition("?")
        if path != STREAMS_PATH or q != STREAMS_QUERY:
            await ws.close(1008, "unknown stream path")
            return
        self.connections += 1
        msgs, send = self.msgs, ws.send
        try:
            while self.sent < len(msgs) and not self.closing:
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
        self.closing = True
        self.more.set()  # a handler waiting for more messages ends
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Sampler:
    """Samples the bot (status row, CPU, RSS) and this process (CPU) every ``every`` seconds."""

    def __init__(self, bot: BotProcess, every: float = 0.25) -> None:
        self.bot, self.every = bot, every
        self.rows: list[dict[str, float]] = []
        self._task: asyncio.Task | None = None

    def sample(self) -> None:
        st = bot_status(self.bot.db)
        cpu, main = self.bot.cpu()
        self.rows.append({"wall": time.monotonic(), "cpu": cpu, "main": main, "me": own_cpu_s(),
                          "messages": float(st.get("messages") or 0),
                          "heartbeat_ms": float(st.get("heartbeat_ms") or 0),
                          "backlog": float(st.get("db_backlog") or 0), "rss": float(self.bot.rss())})

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
    """Logical size of the bot's SQLite DB (pages)."""
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
