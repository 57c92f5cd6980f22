"""One symbol's market: its kline file replayed as Binance USDⓈ-M trades and klines
(``Market``), and the pacing of that replay (``Replay``). Each listed symbol has one of each;
``streams.StreamHub`` sends what they produce to the WebSocket clients.

Each source candle (interval d, inferred from the file) is played as the 4 ticks of
``history.path_ticks`` (docs/strategy.md). A tick is one ``aggTrade``; after it, every tracked kline
interval (a multiple of d, bucket = open_time // interval) gets an ``x:false`` update of its
forming candle, and a candle's ``x:true`` goes out just before the first tick of the next
bucket (and after the very last tick of the data). Every time in a message is data time.

Numbers are integers so everything adds up exactly: prices in units of the symbol's tick
decimals (tenths for BTCUSDT's 0.10 tick), quantities in units of its step (thousandths),
quote volumes in the product of both (1e-4 USDT for BTCUSDT). A candle's volume is split over
its 4 trades, so a kline's ``v`` is the sum of its trades' ``q``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from history import INTERVAL_MS, Candle, HistoryError, infer_interval_ms, interval_ms, interval_name, path_ticks

from .catalogue import SymbolSpec, spec_for

if TYPE_CHECKING:
    from .streams import StreamHub

log = logging.getLogger("simexchange.market")

AGG_ID_BASE = 2_000_000_000    # aggTrade ids: base + 4*candle index + tick index (stable across runs)
TRADE_ID_BASE = 5_000_000_000  # trade ids (aggTrade f/l, kline f/L), same scheme


class Tick(NamedTuple):
    """One replayed trade."""

    time_ms: int
    price: int      # price units (tenths of USDT for BTCUSDT)
    qty: int        # quantity units (thousandths of the base asset)
    agg_id: int
    trade_id: int
    maker: bool     # the buyer was the maker (a sell hit the bid): the price went down


@dataclass(slots=True)
class Bar:
    """A kline being built from ticks."""

    open_time: int
    o: int
    h: int
    low: int
    c: int
    v: int = 0
    quote: int = 0
    n: int = 0
    taker_v: int = 0
    taker_quote: int = 0
    first_id: int = -1
    last_id: int = -1

    @classmethod
    def empty(cls, open_time: int, price: int) -> Bar:
        """A bucket with no trade yet: o=h=l=c=the previous close, volume 0."""
        return cls(open_time, price, price, price, price)

    def add(self, tick: Tick) -> None:
        if self.n == 0:
            self.o = self.h = self.low = tick.price
            self.first_id = tick.trade_id
        self.h, self.low, self.c = max(self.h, tick.price), min(self.low, tick.price), tick.price
        q = tick.price * tick.qty
        self.v, self.quote, self.n, self.last_id = self.v + tick.qty, self.quote + q, self.n + 1, tick.trade_id
        if not tick.maker:  # the buyer took liquidity
            self.taker_v, self.taker_quote = self.taker_v + tick.qty, self.taker_quote + q

    def rest_row(self, length_ms: int, spec: SymbolSpec) -> list[Any]:
        """A ``GET /fapi/v1/klines`` row."""
        price = spec.price_text
        return [self.open_time, price(self.o), price(self.h), price(self.low), price(self.c),
                spec.qty_text(self.v), self.open_time + length_ms - 1, spec.quote_text(self.quote), self.n,
                spec.qty_text(self.taker_v), spec.quote_text(self.taker_quote), "0"]


class Market:
    """One symbol's replay state: which ticks have been emitted, and the messages the next one makes.

    Candles before ``start_index`` are history: they count as emitted but are never streamed.
    ``symbol``: a name (its rules from ``catalogue.spec_for``) or a ``SymbolSpec``.
    """

    def __init__(self, candles: list[Candle], symbol: str | SymbolSpec = "BTCUSDT",
                 history_candles: int | None = None, target_interval: str = "15m") -> None:
        if len(candles) < 2:
            raise HistoryError("the simulated exchange needs at least 2 candles")
        self.spec = symbol if isinstance(symbol, SymbolSpec) else spec_for(symbol)
        self.candles = candles
        self.symbol = self.spec.symbol
        self.trade_stream = f"{self.symbol.lower()}@aggTrade"
        self.source_ms = infer_interval_ms(candles)
        self.times = [c.open_time_ms for c in candles]
        if history_candles is None:
            history_candles = default_history_candles(candles, self.source_ms, target_interval)
        if not 0 <= history_candles <= len(candles):
            raise ValueError(f"history_candles must be between 0 and {len(candles)}, got {history_candles}")
        self.start_index = history_candles
        self.cursor = history_candles       # candle being played (or next to play)
        self.tick_in_candle = 0             # ticks of candles[cursor] already emitted
        self.ticks_emitted = 0
        self.finished = history_candles >= len(candles)
        if history_candles < len(candles):
            self.clock_ms = self.times[history_candles]   # the first streamed tick's time
        else:
            self.clock_ms = self.times[-1] + self.source_ms - 1
        first = candles[history_candles - 1].close if history_candles else candles[0].open
        self.last_price = self.spec.price_units(first)
        self._bars: dict[int, Bar | None] = {}  # tracked interval -> its forming bar (None: no tick yet)
        self._cache: dict[int, tuple[Tick, ...]] = {}

    # -- ticks -------------------------------------------------------------------------
    def candle_ticks(self, i: int) -> tuple[Tick, ...]:
        """The 4 trades candle ``i`` is replayed as."""
        ticks = self._cache.get(i)
        if ticks is None:
            c, units = self.candles[i], self.spec.price_units
            vol = max(self.spec.qty_units(c.volume), 0)
            prev = units(self.candles[i - 1].close) if i else units(c.open)
            out = []
            for j, (t, p) in enumerate(path_ticks(c, self.source_ms)):
                price = units(p)
                qty = vol - 3 * (vol // 4) if j == 3 else vol // 4
                n = 4 * i + j
                out.append(Tick(t, price, max(qty, 1), AGG_ID_BASE + n, TRADE_ID_BASE + n, price < prev))
                prev = price
            ticks = tuple(out)
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[i] = ticks
        return ticks

    def emitted_ticks(self, i: int) -> tuple[Tick, ...]:
        """The ticks of candle ``i`` that are already in the past."""
        if i < self.cursor:
            return self.candle_ticks(i)
        if i == self.cursor and i < len(self.candles):
            return self.candle_ticks(i)[: self.tick_in_candle]
        return ()

    def next_tick_time(self) -> int | None:
        return None if self.finished else self.candle_ticks(self.cursor)[self.tick_in_candle].time_ms

    # -- klines ------------------------------------------------------------------------
    def supports(self, length_ms: int) -> bool:
        return length_ms >= self.source_ms and length_ms % self.source_ms == 0

    def kline_stream(self, length_ms: int) -> str:
        return f"{self.symbol.lower()}@kline_{interval_name(length_ms)}"

    def stream_interval(self, stream: str) -> int | None:
        """The interval (ms) of one of our kline stream names, else None."""
        prefix = f"{self.symbol.lower()}@kline_"
        if not stream.startswith(prefix) or stream[len(prefix):] not in INTERVAL_MS:
            return None
        length = interval_ms(stream[len(prefix):])
        return length if self.supports(length) else None

    def _bars_between(self, length_ms: int, lo_ms: int, hi_ms: int, max_bars: int | None = None) -> list[Bar]:
        """Bars of emitted ticks for candles opening in [lo_ms, hi_ms) (the first ``max_bars`` of them)."""
        bars: list[Bar] = []
        i = bisect.bisect_left(self.times, lo_ms)
        end = min(bisect.bisect_left(self.times, hi_ms), self.cursor + 1, len(self.candles))
        for k in range(i, end):
            for tick in self.emitted_ticks(k):
                bucket = tick.time_ms - tick.time_ms % length_ms
                if not bars or bars[-1].open_time != bucket:
                    if max_bars is not None and len(bars) >= max_bars:
                        return bars
                    bars.append(Bar.empty(bucket, tick.price))
                bars[-1].add(tick)
        return bars

    def track(self, length_ms: int) -> None:
        """Keep a forming bar for this interval so its stream can be served from now on."""
        if length_ms in self._bars or not self.supports(length_ms):
            return
        bucket = self.clock_ms - self.clock_ms % length_ms
        bars = [b for b in self._bars_between(length_ms, bucket, bucket + length_ms) if b.open_time == bucket]
        self._bars[length_ms] = bars[0] if bars else None

    def kline_rows(self, length_ms: int, start_ms: int | None = None, end_ms: int | None = None,
                   limit: int = 500) -> list[list[Any]]:
        """``GET /fapi/v1/klines`` rows: candles opened at or before the replay clock, the last
        one forming (built from the ticks emitted so far, like the stream)."""
        # Like Binance: ``limit`` candles that exist (an outage leaves none), from the first one at
        # or after startTime, else the newest ones up to endTime / now.
        last = self.clock_ms - self.clock_ms % length_ms
        if end_ms is not None:
            last = min(last, end_ms - end_ms % length_ms)
        hi = last + length_ms
        if start_ms is not None:
            lo = -(-start_ms // length_ms) * length_ms
            if hi <= lo:
                return []
            bars = self._bars_between(length_ms, lo, hi, max_bars=limit + 1)
        else:
            lo = last - (limit - 1) * length_ms
            bars = self._bars_between(length_ms, lo, hi)
            first_ms = self.times[0] if self.times else lo
            while len(bars) < limit and lo > first_ms:  # holes in the data: reach further back
                lo -= (limit - len(bars)) * length_ms
                bars = self._bars_between(length_ms, lo, hi)
        forming = self.clock_ms - self.clock_ms % length_ms
        if lo <= forming < hi and (not bars or bars[-1].open_time < forming):
            bars.append(Bar.empty(forming, self.last_price))
        bars = bars[:limit] if start_ms is not None else bars[-limit:]
        return [b.rest_row(length_ms, self.spec) for b in bars]

    # -- messages ----------------------------------------------------------------------
    def _kline_msg(self, bar: Bar, length_ms: int, closed: bool, event_ms: int) -> dict[str, Any]:
        spec = self.spec
        price = spec.price_text
        return {"e": "kline", "E": event_ms, "s": self.symbol, "k": {
            "t": bar.open_time, "T": bar.open_time + length_ms - 1, "s": self.symbol,
            "i": interval_name(length_ms), "f": bar.first_id, "L": bar.last_id,
            "o": price(bar.o), "c": price(bar.c), "h": price(bar.h), "l": price(bar.low),
            "v": spec.qty_text(bar.v), "n": bar.n, "x": closed, "q": spec.quote_text(bar.quote),
            "V": spec.qty_text(bar.taker_v), "Q": spec.quote_text(bar.taker_quote), "B": "0"}}

    def _trade_msg(self, tick: Tick) -> dict[str, Any]:
        q = self.spec.qty_text(tick.qty)
        return {"e": "aggTrade", "E": tick.time_ms, "s": self.symbol, "a": tick.agg_id,
                "p": self.spec.price_text(tick.price), "q": q, "nq": q, "f": tick.trade_id, "l": tick.trade_id,
                "T": tick.time_ms, "m": tick.maker}

    def next_tick(self, wanted: set[str] | frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
        """Emit one tick; return its (stream name, payload) messages in send order.

        Payloads are built only for streams in ``wanted``; the state advances regardless.
        """
        if self.finished:
            return []
        tick = self.candle_ticks(self.cursor)[self.tick_in_candle]
        out: list[tuple[str, dict[str, Any]]] = []
        for length, bar in self._bars.items():
            if bar is not None and tick.time_ms - tick.time_ms % length != bar.open_time:
                self._close(length, bar, wanted, out)
                self._bars[length] = None
        if self.trade_stream in wanted:
            out.append((self.trade_stream, self._trade_msg(tick)))
        self.clock_ms, self.last_price = tick.time_ms, tick.price
        self.ticks_emitted += 1
        self.tick_in_candle += 1
        if self.tick_in_candle == 4:
            self.cursor, self.tick_in_candle = self.cursor + 1, 0
        for length, bar in self._bars.items():
            if bar is None:
                bar = self._bars[length] = Bar.empty(tick.time_ms - tick.time_ms % length, tick.price)
            bar.add(tick)
            name = self.kline_stream(length)
            if name in wanted:
                out.append((name, self._kline_msg(bar, length, False, tick.time_ms)))
        if self.cursor >= len(self.candles):
            self.finished = True
            for length, bar in self._bars.items():
                if bar is not None:
                    self._close(length, bar, wanted, out)
        return out

    def _close(self, length: int, bar: Bar, wanted: set[str] | frozenset[str], out: list) -> None:
        name = self.kline_stream(length)
        if name in wanted:
            out.append((name, self._kline_msg(bar, length, True, bar.open_time + length - 1)))


def default_history_candles(candles: list[Candle], source_ms: int, target_interval: str = "15m",
                            want: int = 60) -> int:
    """First candle index that opens a ``target_interval`` bucket with ``want`` buckets before it.

    Falls back to half the file when it is too short for that.
    """
    target = INTERVAL_MS.get(target_interval, source_ms)
    if target % source_ms:
        target = source_ms
    first_bucket = candles[0].open_time_ms // target
    for i, c in enumerate(candles):
        if c.open_time_ms % target == 0 and c.open_time_ms // target - first_bucket >= want:
            return i
    return len(candles) // 2


class Replay:
    """Paces one market's ticks: ``speed`` × real time by data timestamps; 0 = as fast as possible.

    Burst mode (``set_burst``) instead sends ``ticks`` back to back every ``every_ms`` of wall
    time — a market that prints hundreds of trades at once when price runs through a band.
    """

    def __init__(self, market: Market, hub: StreamHub, speed: float = 1.0, paused: bool = False) -> None:
        self.market, self.hub = market, hub
        self.speed = check_speed(speed)
        self.paused = paused
        self.burst: dict[str, int] | None = None
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._anchor = (0.0, 0)  # (loop time, data time) the pacing counts from

    def _reanchor(self) -> None:
        self._anchor = (asyncio.get_running_loop().time(), self.market.clock_ms)
        self._wake.set()

    def pause(self) -> None:
        self.paused = True
        self._wake.set()

    def resume(self) -> None:
        self.paused = False
        self._reanchor()

    def set_speed(self, speed: float) -> None:
        self.speed = check_speed(speed)
        self._reanchor()

    def set_burst(self, ticks: int, every_ms: int) -> None:
        self.burst = {"ticks": ticks, "every_ms": every_ms} if ticks > 0 else None
        self._reanchor()

    async def emit(self, n: int = 1) -> int:
        """Emit up to ``n`` ticks now; returns how many were emitted."""
        done = 0
        market = self.market
        async with self.lock:
            while done < n and not market.finished:
                self.hub.publish(market.next_tick(self.hub.wanted(market.symbol)))
                done += 1
                if market.finished:
                    log.info("%s: replay finished after %d ticks; the data ends at %d",
                             market.symbol, market.ticks_emitted, market.clock_ms)
        return done

    async def run(self) -> None:
        self._reanchor()
        loop = asyncio.get_running_loop()
        while not self.market.finished:
            self._wake.clear()
            if self.paused:
                await self._wake.wait()
                continue
            if self.burst is not None:
                await self.emit(self.burst["ticks"])
                try:
                    await asyncio.wait_for(self._wake.wait(), self.burst["every_ms"] / 1000)
                except TimeoutError:
                    pass
                continue
            if self.speed == 0:
                await self.hub.wait_for_room()
                await self.emit()
                await asyncio.sleep(0)
                continue
            wall0, data0 = self._anchor
            due = wall0 + (self.market.next_tick_time() - data0) / 1000 / self.speed
            delay = due - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    continue  # paused, resumed or re-paced: look again
                except TimeoutError:
                    pass
            if not self.paused:
                await self.emit()
                await asyncio.sleep(0)


def check_speed(speed: float) -> float:
    speed = float(speed)
    if not (speed >= 0 and speed != float("inf")):
        raise ValueError(f"speed must be a finite number >= 0, got {speed}")
    return speed
