"""Market data over WebSocket: connect, parse, filter, reconnect.

One combined connection on Binance's routed ``/market`` path carries the kline stream (candle
closes, ``k.x``) and aggTrade (ticks). Ticks come from aggTrade only — the kline's live close
is not a second source of ticks — so the live tick sequence is the exchange's trade tape,
the same sequence a replay feeds the backtest.

The data flows one way: the feed hands everything to one callback, ``on_event``, as
``Trade`` (a tick), ``KlineClose`` (a closed candle) or ``Connection`` (connecting,
connected, stalled, reconnecting …) and never calls back into the bot for anything else.
After ``Connection("connected")`` the bot backfills candles missed while down and holds the
market events that arrive meanwhile until it is done (runner.py).

Reconnects use capped exponential backoff with full jitter; the backoff resets after a
connection that delivered data. A connection silent for ``WS_STALL_SECONDS`` is dead; one
older than ``WS_MAX_AGE_HOURS`` is replaced before Binance's 24 h cut.

Malformed, unknown, duplicate, out-of-order and absurd messages are dropped with a
rate-limited log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import orjson
import websockets

from history import INTERVAL_MS

log = logging.getLogger("bollmin.feed")


class Trade(NamedTuple):
    """One tick: an aggTrade at exchange time ``time_ms``."""

    time_ms: int
    price: float


@dataclass(frozen=True)
class Connection:
    """The market connection changed: ``state`` is connecting, connected, stalled, reconnecting
    or disconnected; ``reconnects`` counts the connections lost so far."""

    state: str
    reconnects: int


@dataclass(frozen=True)
class KlineClose:
    open_time_ms: int
    close_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class RateLimitedLog:
    """Log a category at most once per ``every_s``, counting what was suppressed."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, category: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(category, -1e9) >= self.every_s:
            extra = self._suppressed.pop(category, 0)
            suffix = f" ({extra} more like it suppressed)" if extra else ""
            self.logger.warning("%s%s", message, suffix)
            self._last[category] = now
        else:
            self._suppressed[category] = self._suppressed.get(category, 0) + 1


def stream_url(base: str, symbol: str, interval: str) -> str:
    """The routed combined-stream URL (Binance requires ``/market`` since 2026-04-23)."""
    s = symbol.lower()
    return f"{base.rstrip('/')}/market/stream?streams={s}@kline_{interval}/{s}@aggTrade"


def backoff_delay(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)]."""
    return random.uniform(0, min(cap_s, base_s * (2 ** min(attempt, 16))))


Event = Trade | KlineClose | Connection


SUSPECT_TIME_JUMP_MS = 300_000  # at least: a trade more than this (or 2 candles) after the previous one is held
SUSPECT_ID_JUMP = 10_000_000    # aggTrade ids: more than days of BTCUSDT trades skipped at once


class Feed:
    """The market connection. ``run()`` until ``stop()``; ``on_event`` receives clean data only."""

    def __init__(self, url: str, symbol: str, interval: str, *, on_event: Callable[[Event], bool | None],
                 stall_s: float = 30.0, max_age_s: float = 23 * 3600.0, max_jump_pct: float = 20.0,
                 reference_price: float | None = None) -> None:
        self.url, self.symbol, self.interval = url, symbol.upper(), interval
        self.on_event = on_event
        self.stall_s, self.max_age_s = stall_s, max_age_s
        self.max_jump = max_jump_pct / 100.0
        # A trade this far past the previous one (exchange time, or aggTrade id) is held until the
        # next trade shows whether the stream goes on from it (docs/strategy.md, market data).
        self.suspect_after_ms = max(2 * INTERVAL_MS[interval], SUSPECT_TIME_JUMP_MS)
        self._suspect: tuple[int, int, float] | None = None
        self._suspect_kline: KlineClose | None = None
        self.last_price = reference_price
        self.last_trade_id = -1
        self.last_trade_ms = -1
        self.last_kline_close_ms = -1
        self.last_message_wall = 0.0       # time.time() of the last message (any stream)
        self.messages = 0
        self.dropped = 0
        self.reconnects = 0
        self._jumps = 0  # consecutive trades dropped as jumps
        self._last_mono = 0.0  # monotonic time of the last message on the current connection
        self._stopping = asyncio.Event()
        self._ws = None
        self._drops = RateLimitedLog(log)

    def stop(self) -> None:
        self._stopping.set()
        self.reconnect()

    def reconnect(self) -> None:
        """Drop the current connection (``run`` connects again with backoff unless stopping)."""
        ws = self._ws
        if ws is not None:
            asyncio.ensure_future(ws.close())

    def _state(self, state: str) -> None:
        self.on_event(Connection(state, self.reconnects))

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self._state("connecting" if self.reconnects == 0 else "reconnecting")
            delivered = False
            try:
                async with websockets.connect(self.url, open_timeout=10, close_timeout=2, ping_interval=20,
                                              ping_timeout=20, max_size=2 ** 20) as ws:
                    self._ws = ws
                    log.info("market stream connected: %s", self.url)
                    self._state("connected")
                    delivered = await self._read(ws)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one connection: log, back off, reconnect
                log.warning("market stream error: %s: %s", type(exc).__name__, exc)
            finally:
                self._ws = None
            if self._stopping.is_set():
                break
            self.reconnects += 1
            attempt = 0 if delivered else attempt + 1
            delay = backoff_delay(attempt)
            self._state("reconnecting")
            log.info("reconnecting to the market stream in %.1fs", delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass
        self._state("disconnected")

    async def _read(self, ws) -> bool:
        """Read until the connection dies, stalls or ages out; True if it delivered messages.

        A plain ``recv()`` loop: stalls and old age are caught by a watchdog task that closes
        the socket (an ``asyncio.wait_for`` around every message would cost more than the
        message's whole handling).
        """
        self._last_mono = time.monotonic()
        why: list[str] = []
        dog = asyncio.get_running_loop().create_task(self._watchdog(ws, why))
        delivered = False
        try:
            while not self._stopping.is_set():
                try:
                    raw = await ws.recv()
                except websockets.ConnectionClosed as exc:
                    if not why and not self._stopping.is_set():
                        rcvd = getattr(exc, "rcvd", None)
                        log.warning("market stream closed by the server (code %s %s)",
                                    getattr(rcvd, "code", "?"), getattr(rcvd, "reason", "") or "")
                    return delivered
                delivered = True
                self._last_mono = time.monotonic()
                self.last_message_wall = time.time()
                self.messages += 1
                if self.handle(raw):
                    await asyncio.sleep(0)  # let the order executor take its job before the next message
            return delivered
        finally:
            dog.cancel()

    async def _watchdog(self, ws, why: list[str]) -> None:
        """Close the connection when it goes silent or gets too old."""
        opened = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.stall_s / 4))
            now = time.monotonic()
            if now - opened >= self.max_age_s:
                why.append("age")
                log.info("market stream is %.1f h old: reconnecting before the exchange's 24 h cut",
                         self.max_age_s / 3600)
            elif now - self._last_mono >= self.stall_s:
                why.append("stall")
                log.warning("market stream silent for %.0fs: treating the connection as dead", self.stall_s)
                self._state("stalled")
            else:
                continue
            await ws.close()
            return

    # ---- parsing (synchronous, O(1) per message) ---------------------------------------------
    def handle(self, raw: str | bytes) -> bool | None:
        """Parse one message and pass clean data on; drop anything else with a log line. Returns
        what ``on_event`` returned (True: yield before the next message).

        orjson parses the stream (measured in BENCHMARKS.md: 20-35 % less CPU per message than
        ``json`` at saturation; at the latency bench's pace its gain is within the noise of a
        shared machine); it rejects what ``json`` would have let through only where the message
        was bad anyway (NaN literals, integers beyond 64 bits)."""
        try:
            msg = orjson.loads(raw)
            data = msg.get("data", msg) if isinstance(msg, dict) else None
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            event = data.get("e")
            if event == "aggTrade":
                return self._trade(data)
            if event == "kline":
                return self._kline(data)
            if "result" in data and "id" in data:
                return None  # a reply to a subscribe request
            self._drop("unknown", f"unknown market message type {str(event)[:40]!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self._drop("malformed", f"malformed market message dropped ({type(exc).__name__}: {str(exc)[:80]})")
        return None

    def _drop(self, category: str, message: str) -> None:
        self.dropped += 1
        self._drops.warning(category, message)

    def _trade(self, d: dict) -> bool | None:
        if d.get("s") != self.symbol:
            return self._drop("symbol", f"trade for another symbol {str(d.get('s'))[:20]!r} dropped")
        trade_id = int(d["a"])
        t = int(d["T"])
        price = float(d["p"])
        if not math.isfinite(price) or price <= 0:
            return self._drop("price", f"absurd trade price {d['p']!r} dropped")
        queued = None
        k = self._suspect_kline
        if k is not None:
            self._suspect_kline = None
            if t >= k.open_time_ms and k.open_time_ms > self.last_kline_close_ms:  # the market is there
                self.last_kline_close_ms = k.open_time_ms
                queued = self.on_event(k)
            else:
                self._drop("kline_future", f"closed kline {k.open_time_ms} dropped: it opens far after the "
                                           f"trades, which went on from before it")
        if self._suspect is not None:
            s_id, s_t, s_price = self._suspect
            self._suspect = None
            if trade_id > s_id and t >= s_t:  # the stream goes on from it: it was real
                queued = self._accept(s_id, s_t, s_price) or queued
            else:
                self._drop("suspect", f"trade {s_id} at {s_t} dropped: it jumped far ahead of the stream, "
                                      f"which went on from before it")
        if trade_id <= self.last_trade_id:
            return self._drop("dup", f"duplicate or out-of-order trade {trade_id} dropped") or queued
        if t < self.last_trade_ms:
            return self._drop("order", f"trade {trade_id} older than the previous one dropped") or queued
        if self.last_trade_ms >= 0 and (t - self.last_trade_ms > self.suspect_after_ms
                                        or trade_id - self.last_trade_id > SUSPECT_ID_JUMP):
            # A garbled time or id would otherwise become the mark every real trade is "older" than.
            self._suspect = (trade_id, t, price)
            return queued
        return self._accept(trade_id, t, price) or queued

    def _accept(self, trade_id: int, t: int, price: float) -> bool | None:
        last = self.last_price
        if last is not None and abs(price - last) > self.max_jump * last:
            # One wild print is dropped; a market that really moved keeps printing there.
            self._jumps += 1
            if self._jumps < 5:
                return self._drop("jump", f"trade price {price} jumps more than {self.max_jump:.0%} from {last}: "
                                          f"dropped")
            log.warning("5 trades in a row at %s, far from %s: accepting the new price level", price, last)
        self._jumps = 0
        self.last_trade_id, self.last_trade_ms, self.last_price = trade_id, t, price
        return self.on_event(Trade(t, price))

    def _kline(self, d: dict) -> bool | None:
        k = d["k"]
        if k.get("s", d.get("s")) != self.symbol or k.get("i") != self.interval:
            return self._drop("kline", "kline of another symbol or interval dropped")
        if not k.get("x"):
            return None  # live updates: ticks come from aggTrade
        c = KlineClose(int(k["t"]), int(k["T"]), float(k["o"]), float(k["h"]), float(k["l"]), float(k["c"]),
                       float(k.get("v", 0) or 0))
        prices = (c.open, c.high, c.low, c.close)
        if not all(math.isfinite(p) and p > 0 for p in prices) or c.high < c.low:
            return self._drop("kline_price", f"closed kline {c.open_time_ms} with impossible prices dropped")
        last = self.last_price
        if last is not None and abs(c.close - last) > self.max_jump * last:
            # its close would sit in the bands for BOLL_PERIOD candles; the next trade closes the candle
            return self._drop("kline_price", f"closed kline {c.open_time_ms} dropped: its close {c.close} is more "
                                             f"than {self.max_jump:.0%} from the last trade {last}")
        if self.last_trade_ms >= 0 and c.open_time_ms > self.last_trade_ms + self.suspect_after_ms:
            # Far after the last trade: after a long disconnect that is normal, from a garbled
            # message it would stop every later real close. The next trade tells which.
            if self._suspect_kline is not None:
                self._drop("kline_future", f"closed kline {self._suspect_kline.open_time_ms} dropped: no trade "
                                           f"followed it")
            self._suspect_kline = c
            return None
        if c.open_time_ms <= self.last_kline_close_ms:
            return self._drop("kline_dup", f"duplicate closed kline {c.open_time_ms} dropped")
        self.last_kline_close_ms = c.open_time_ms
        return self.on_event(c)
