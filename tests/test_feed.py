"""The market feed's parsing and filtering (feed.Feed.handle), with real captured messages."""

from __future__ import annotations

import json
import logging
import os

import pytest
from support.paths import PAYLOADS

from feed import Feed, KlineClose, RateLimitedLog, Trade, backoff_delay, stream_url


class Sink:
    def __init__(self) -> None:
        self.trades: list[tuple[int, float]] = []
        self.closes: list[KlineClose] = []

    def feed(self, **kw) -> Feed:
        return Feed("ws://127.0.0.1:1/market/stream", "BTCUSDT", "15m", on_event=self.on_event, **kw)

    def on_event(self, event) -> None:
        if isinstance(event, Trade):
            self.trades.append((event.time_ms, event.price))
        elif isinstance(event, KlineClose):
            self.closes.append(event)


def agg(a: int, t: int, p: str, symbol: str = "BTCUSDT", combined: bool = True) -> str:
    data = {"e": "aggTrade", "E": t + 3, "s": symbol, "a": a, "p": p, "q": "0.010", "nq": "0.010", "f": a * 10,
            "l": a * 10 + 2, "T": t, "m": False, "st": 1, "newKey": "ignored"}
    return json.dumps({"stream": "btcusdt@aggTrade", "data": data} if combined else data)


def kline(t: int, closed: bool, c: str = "27000.10", interval: str = "15m") -> str:
    k = {"t": t, "T": t + 899_999, "s": "BTCUSDT", "i": interval, "f": 1, "L": 2, "o": "26990.00", "c": c,
         "h": "27010.00", "l": "26980.00", "v": "12.5", "n": 10, "x": closed, "q": "1", "V": "1", "Q": "1", "B": "0"}
    return json.dumps({"stream": f"btcusdt@kline_{interval}", "data": {"e": "kline", "E": t + 900_000, "s": "BTCUSDT",
                                                                      "k": k}})


def test_stream_url_uses_the_routed_market_path():
    assert stream_url("wss://fstream.binance.com", "BTCUSDT", "15m") == (
        "wss://fstream.binance.com/market/stream?streams=btcusdt@kline_15m/btcusdt@aggTrade")


def test_aggtrade_ticks_pass_with_exchange_time_and_float_price():
    sink = Sink()
    f = sink.feed()
    f.handle(agg(1, 1_000, "27000.10"))
    f.handle(agg(2, 1_000, "27000.20", combined=False))  # raw (non-combined) payloads too
    assert sink.trades == [(1_000, 27000.1), (1_000, 27000.2)]
    assert f.dropped == 0


@pytest.mark.parametrize("raw", [
    "not json",
    "[1, 2, 3]",
    json.dumps({"stream": "x", "data": "text"}),
    json.dumps({"data": {"e": "aggTrade", "s": "BTCUSDT", "a": 5, "T": 1}}),        # no price
    json.dumps({"data": {"e": "aggTrade", "s": "BTCUSDT", "a": "x", "T": 1, "p": "1"}}),  # bad id
    json.dumps({"data": {"e": "kline", "s": "BTCUSDT"}}),                           # no k
])
def test_malformed_messages_are_dropped_not_raised(raw):
    sink = Sink()
    f = sink.feed()
    f.handle(raw)
    assert sink.trades == [] and sink.closes == [] and f.dropped == 1


def test_real_captured_messages_of_other_streams_are_unknown_and_dropped():
    sink = Sink()
    f = sink.feed()
    names = ("usdm_20230404_bookTicker_first25.json", "usdm_20230404_markPrice_1s_first25.json",
             "usdm_20230404_depth_0ms_first25.json", "usdm_20230404_trade_first25.json")
    total = 0
    for name in names:
        with open(os.path.join(PAYLOADS, name)) as fh:
            for item in json.load(fh):
                f.handle(json.dumps(item["msg"]))
                total += 1
    assert sink.trades == [] and f.dropped == total


@pytest.mark.parametrize("price", ["NaN", "nan", "inf", "-1", "0", "0.0"])
def test_absurd_prices_are_dropped(price):
    sink = Sink()
    f = sink.feed()
    f.handle(agg(1, 1_000, price))
    assert sink.trades == [] and f.dropped == 1


def test_duplicate_and_out_of_order_trades_are_dropped():
    sink = Sink()
    f = sink.feed()
    f.handle(agg(10, 2_000, "27000.00"))
    f.handle(agg(10, 2_000, "27000.00"))  # duplicate id
    f.handle(agg(9, 1_999, "27000.00"))   # older id
    f.handle(agg(11, 1_500, "27000.00"))  # newer id but older time
    f.handle(agg(12, 2_001, "27001.00"))
    assert sink.trades == [(2_000, 27000.0), (2_001, 27001.0)]
    assert f.dropped == 3


def test_trades_of_another_symbol_are_dropped():
    sink = Sink()
    f = sink.feed()
    f.handle(agg(1, 1_000, "1800.00", symbol="ETHUSDT"))
    assert sink.trades == [] and f.dropped == 1


def test_a_wild_print_is_dropped_but_a_real_move_is_accepted():
    sink = Sink()
    f = sink.feed(max_jump_pct=10.0, reference_price=27000.0)
    f.handle(agg(1, 1_000, "40000.00"))  # one absurd print: dropped
    f.handle(agg(2, 1_001, "27010.00"))
    assert sink.trades == [(1_001, 27010.0)]
    for i in range(3, 8):  # the market really moved: five prints in a row there
        f.handle(agg(i, 1_000 + i, "32000.00"))
    assert sink.trades[-1] == (1_007, 32000.0)


def test_only_closed_klines_of_our_interval_are_passed_on():
    sink = Sink()
    f = sink.feed()
    f.handle(kline(0, closed=False))
    f.handle(kline(0, closed=True, interval="1m"))
    f.handle(kline(0, closed=True, c="27005.50"))
    f.handle(kline(0, closed=True))  # the same close again: duplicate
    assert [(k.open_time_ms, k.close) for k in sink.closes] == [(0, 27005.5)]
    assert f.dropped == 2


def test_rate_limited_log_suppresses_repeats_and_counts_them(caplog):
    log = logging.getLogger("test.ratelimit")
    r = RateLimitedLog(log, every_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for _ in range(100):
            r.warning("bad", "bad message")
        r.warning("other", "another kind")
    assert [rec.getMessage() for rec in caplog.records] == ["bad message", "another kind"]
    r._last["bad"] = -1e12  # an hour later
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        r.warning("bad", "bad message")
    assert caplog.records[-1].getMessage() == "bad message (99 more like it suppressed)"


def test_backoff_is_capped_and_jittered():
    delays = [backoff_delay(attempt) for attempt in range(40) for _ in range(5)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jitter: not a fixed schedule
    assert max(backoff_delay(0) for _ in range(200)) <= 0.5


class BufferedSocket:
    """A connection whose messages are all buffered: ``recv()`` returns without ever suspending
    (as websockets does in a burst), then the connection closes."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)

    async def recv(self) -> str:
        if not self.messages:
            import websockets

            raise websockets.ConnectionClosed(None, None)
        return self.messages.pop(0)

    async def close(self) -> None:
        pass


def test_an_event_that_queued_an_order_lets_the_executor_run_before_the_next_message():
    """on_event returning True (live orders queued) makes the feed yield once, so a task woken
    by that event runs before the next buffered message is handled; otherwise it would wait
    behind the whole burst."""
    import asyncio

    handled: list[int] = []
    ran_after: list[int] = []

    async def scenario() -> None:
        wake = asyncio.Event()

        async def executor() -> None:
            await wake.wait()
            ran_after.append(len(handled))

        task = asyncio.create_task(executor())
        await asyncio.sleep(0)  # the executor waits on its event, like Executor.run

        def on_event(event) -> bool:
            if isinstance(event, Trade):
                handled.append(event.time_ms)
                if len(handled) == 3:
                    wake.set()
                    return True
            return False

        f = Feed("ws://127.0.0.1:1/market/stream", "BTCUSDT", "15m", on_event=on_event)
        await f._read(BufferedSocket([agg(i, 1_000 + i, "27000.10") for i in range(1, 51)]))
        await task

    asyncio.run(scenario())
    assert len(handled) == 50
    assert ran_after == [3], "the executor must run right after the message that queued its job"


# ---- one garbled message must not become the mark every real one is measured against -------------------

DAY = 86_400_000


@pytest.mark.parametrize("bogus", ["future-time", "huge-id"])
def test_a_trade_far_ahead_of_the_stream_is_dropped_when_the_stream_goes_on_from_before_it(bogus):
    sink = Sink()
    f = sink.feed()
    t0 = 1_700_000_000_000
    f.handle(agg(100, t0, "27000.10"))
    if bogus == "future-time":
        f.handle(agg(101, t0 + 7 * DAY, "27000.20"))
    else:
        f.handle(agg(2 ** 62, t0 + 10, "27000.20"))
    for i in range(2, 50):
        f.handle(agg(100 + i, t0 + i * 100, "27000.30"))
    assert sink.trades[0] == (t0, 27000.1) and len(sink.trades) == 49, "every real trade passes"
    assert all(t < t0 + DAY for t, _p in sink.trades) and f.dropped == 1


def test_a_real_jump_in_time_passes_once_the_next_trade_follows_it():
    """After an exchange outage (or a long disconnect) trades resume far later: held for one trade only."""
    sink = Sink()
    f = sink.feed()
    t0 = 1_700_000_000_000
    f.handle(agg(100, t0, "27000.10"))
    f.handle(agg(50_000_100, t0 + 3 * 3_600_000, "27100.00"))  # ids and time both far on
    assert sink.trades == [(t0, 27000.1)]
    f.handle(agg(50_000_101, t0 + 3 * 3_600_000 + 5, "27100.50"))
    assert sink.trades == [(t0, 27000.1), (t0 + 3 * 3_600_000, 27100.0), (t0 + 3 * 3_600_000 + 5, 27100.5)]
    assert f.dropped == 0


def test_a_closed_kline_with_an_absurd_close_or_from_the_future_is_dropped():
    sink = Sink()
    f = sink.feed()
    t0 = 1_699_999_200_000  # a 15m boundary
    f.handle(agg(1, t0 + 1_000, "27000.00"))
    f.handle(kline(t0, True, c="270000.00"))  # 10x the price
    f.handle(kline(t0 + 7 * DAY, True))  # a week ahead of the trades: held until the next trade
    assert sink.closes == [] and f.dropped == 1
    f.handle(agg(2, t0 + 2_000, "27000.10"))  # the trades go on from before it
    assert sink.closes == [] and f.dropped == 2
    f.handle(kline(t0, True, c="27000.10"))  # the real close still counts (not "a duplicate")
    assert [c.open_time_ms for c in sink.closes] == [t0]


def test_a_closed_kline_far_after_the_last_trade_passes_when_the_trades_follow_it():
    """After a long disconnect the first message may be a closed kline hours after the last trade seen."""
    sink = Sink()
    f = sink.feed()
    t0 = 1_699_999_200_000
    f.handle(agg(1, t0 + 1_000, "27000.00"))
    later = t0 + 8 * 900_000
    f.handle(kline(later, True, c="27010.00"))
    assert sink.closes == []
    f.handle(agg(9_000, later + 900_000 + 10, "27011.00"))
    assert [c.open_time_ms for c in sink.closes] == [later] and f.dropped == 0
