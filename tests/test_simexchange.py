"""The simulated exchange against real clients: python-binance over REST, ``websockets`` on the
streams, and the captured Binance payloads for the shapes. Real sockets on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import websockets
from binance import AsyncClient
from support.paths import MARKET_1M, PAYLOADS, ROOT
from support.wire import KEY, SECRET, api_error, assert_silent, binance, recv

from history import Candle, path_ticks, read_candles
from simexchange import SimExchange, SimExchangeThread, exchange_info, sign, split_signature, verify_signature
from simexchange.market import Market
from simexchange.streams import StreamClient, StreamHub

MIN15 = 900_000
CANDLES = read_candles(MARKET_1M)[:3000]

# docs/exchange.md's documented stream samples (shapes only).
KLINE_SAMPLE = {"e": "kline", "E": 1638747660000, "s": "BTCUSDT", "k": {
    "t": 1638747660000, "T": 1638747719999, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200, "o": "0.0010",
    "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": False, "q": "1.0000", "V": "500",
    "Q": "0.500", "B": "123456"}}
AGG_TRADE_SAMPLE = {"e": "aggTrade", "E": 123456789, "s": "BTCUSDT", "a": 5933014, "p": "0.001", "q": "100",
                    "nq": "100", "f": 100, "l": 105, "T": 123456785, "m": True, "st": 1}


# -- helpers ---------------------------------------------------------------------------

def aggregate(candles: list[Candle], target_ms: int) -> list[Candle]:
    """The reference: fine candles aggregated into ``target_ms`` buckets (bucket = open_time // target_ms)."""
    out: list[Candle] = []
    bucket = None
    o = h = lo = c = v = 0.0
    for k in candles:
        b = k.open_time_ms // target_ms
        if b != bucket:
            if bucket is not None:
                out.append(Candle(bucket * target_ms, o, h, lo, c, v))
            bucket, o, h, lo, c, v = b, k.open, k.high, k.low, k.close, k.volume
        else:
            h, lo, c, v = max(h, k.high), min(lo, k.low), k.close, v + k.volume
    if bucket is not None:
        out.append(Candle(bucket * target_ms, o, h, lo, c, v))
    return out


@pytest.fixture
def sim():
    """A paused exchange, fresh for each test (orders and positions are state)."""
    with SimExchangeThread(CANDLES, api_key=KEY, api_secret=SECRET, paused=True) as running:
        yield running


def call(sim: SimExchangeThread, path: str, body: dict | None = None, method: str | None = None):
    """JSON to/from the exchange; returns (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sim.base_url + path, data=data, method=method or ("GET" if body is None else "POST"))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def control(sim: SimExchangeThread, path: str, body: dict | None = None):
    status, reply = call(sim, path, {} if body is None else body)
    assert status == 200, reply
    return reply


def state(sim: SimExchangeThread) -> dict:
    return call(sim, "/_sim/state")[1]


async def step(sim: SimExchangeThread, ticks: int) -> dict:
    return await asyncio.to_thread(control, sim, "/_sim/step", {"ticks": ticks})


async def signed_raw(sim: SimExchangeThread, method: str, path: str, params: list[tuple[str, str]],
                     timeout: float = 10.0) -> tuple[int, dict, dict]:
    """A request signed over exactly the bytes sent (what Binance verifies)."""
    body = urlencode(params + [("timestamp", str(int(time.time() * 1000)))])
    body += "&signature=" + sign(SECRET, body)
    headers = {"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        url = sim.base_url + path + ("" if method == "POST" else "?" + body)
        async with session.request(method, url, data=body if method == "POST" else None, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.json()


def market_buy(client: AsyncClient, qty: str, **extra):
    return client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=qty, **extra)


# -- signing ---------------------------------------------------------------------------

VECTOR_SECRET = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
VECTOR_PAYLOAD = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
                  "&recvWindow=5000&timestamp=1591702613943")
VECTOR_SIGNATURE = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_signing_test_vector_from_binance_docs():
    assert sign(VECTOR_SECRET, VECTOR_PAYLOAD) == VECTOR_SIGNATURE
    assert split_signature("", VECTOR_PAYLOAD + "&signature=" + VECTOR_SIGNATURE) == (VECTOR_PAYLOAD, VECTOR_SIGNATURE)
    assert verify_signature(VECTOR_SECRET, VECTOR_PAYLOAD, VECTOR_SIGNATURE)
    assert not verify_signature(VECTOR_SECRET, VECTOR_PAYLOAD.replace("9000", "9001"), VECTOR_SIGNATURE)


def test_server_accepts_the_vector_signature_then_checks_the_timestamp():
    with SimExchangeThread(CANDLES, api_key=KEY, api_secret=VECTOR_SECRET, paused=True) as ex:
        async def post(signature: str) -> dict:
            headers = {"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"}
            body = VECTOR_PAYLOAD + "&signature=" + signature
            async with aiohttp.ClientSession() as session, \
                    session.post(ex.base_url + "/fapi/v1/order", data=body, headers=headers) as resp:
                return {"status": resp.status, **await resp.json()}

        good = asyncio.run(post(VECTOR_SIGNATURE))
        bad = asyncio.run(post(VECTOR_SIGNATURE[:-1] + "0"))
    # The signature is right, so what fails is the 2020 timestamp.
    assert good == {"status": 400, "code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
    assert bad == {"status": 400, "code": -1022, "msg": "Signature for this request is not valid."}


# -- python-binance against the REST API -----------------------------------------------


def test_python_binance_trades_a_round_trip(sim):
    async def main():
        class LocalClient(AsyncClient):
            API_URL = sim.base_url + "/api"
            FUTURES_URL = sim.base_url + "/fapi"

        created = await LocalClient.create(KEY, SECRET)  # spot ping + time, as create() does
        assert abs(created.timestamp_offset) < 5000
        await created.close_connection()

        async with binance(sim) as client:
            price = Decimal(state(sim)["price"])
            opened = await market_buy(client, "0.010", newClientOrderId="bm-open-1", newOrderRespType="RESULT")
            assert opened["status"] == "FILLED" and opened["clientOrderId"] == "bm-open-1"
            assert Decimal(opened["avgPrice"]) == price and opened["executedQty"] == "0.010"
            [row] = await client.futures_position_information(symbol="BTCUSDT")
            assert (row["positionAmt"], Decimal(row["entryPrice"])) == ("0.010", price)
            fee_open = price * Decimal("0.010") * Decimal("0.0005")
            [usdt] = await client.futures_account_balance()
            assert Decimal(usdt["balance"]) == Decimal(10000) - fee_open
            again = await client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bm-open-1")
            assert (again["orderId"], again["status"]) == (opened["orderId"], "FILLED")

            await step(sim, 7)  # the price moves
            exit_price = Decimal(state(sim)["price"])
            closed = await client.futures_create_order(symbol="BTCUSDT", side="SELL", type="MARKET",
                                                       quantity="0.010", reduceOnly="true")
            assert (closed["status"], closed["executedQty"]) == ("NEW", "0")  # ACK is the default
            closed = await client.futures_get_order(symbol="BTCUSDT", orderId=closed["orderId"])
            assert closed["status"] == "FILLED" and Decimal(closed["avgPrice"]) == exit_price
            assert await client.futures_position_information(symbol="BTCUSDT") == []  # v3: flat = no row
            [v2] = await client.futures_position_information(symbol="BTCUSDT", version=2)
            assert (v2["positionAmt"], v2["leverage"]) == ("0.000", "20")

            trades = await client.futures_account_trades(symbol="BTCUSDT")
            pnl = (exit_price - price) * Decimal("0.010")
            assert [t["side"] for t in trades] == ["BUY", "SELL"]
            assert Decimal(trades[1]["realizedPnl"]) == pnl
            fee_close = exit_price * Decimal("0.010") * Decimal("0.0005")
            assert Decimal(trades[1]["commission"]) == fee_close.quantize(Decimal("1e-8"))
            [usdt] = await client.futures_account_balance()
            assert Decimal(usdt["balance"]) == (Decimal(10000) - fee_open - fee_close + pnl).quantize(Decimal("1e-8"))
            assert len(await client.futures_get_all_orders(symbol="BTCUSDT")) == 2
            assert await client.futures_get_open_orders(symbol="BTCUSDT") == []

            assert await client.futures_change_leverage(symbol="BTCUSDT", leverage=5) == {
                "leverage": 5, "maxNotionalValue": "200000000", "symbol": "BTCUSDT"}
            [config] = await client.futures_symbol_config(symbol="BTCUSDT")
            assert config["leverage"] == 5
            assert await client.futures_get_position_mode() == {"dualSidePosition": False}
            rate = await client.futures_commission_rate(symbol="BTCUSDT")
            assert rate["takerCommissionRate"] == "0.0005"
            account = await client.futures_account()
            assert account["totalWalletBalance"] == usdt["balance"]

    asyncio.run(main())


def test_authentication_errors(sim):
    async def main():
        async with binance(sim, secret="wrong-secret") as client:
            err = await api_error(client.futures_account_balance())
            assert (err.status_code, err.code) == (400, -1022)
        async with binance(sim, key="wrong-key") as client:
            err = await api_error(client.futures_account_balance())
            assert (err.status_code, err.code, err.message) == (
                401, -2015, "Invalid API-key, IP, or permissions for action.")
        async with binance(sim, key="") as client:
            err = await api_error(client.futures_account_balance())
            assert (err.status_code, err.code) == (401, -2014)
        async with binance(sim) as client:
            for skew_ms in (60_000, -5_000):  # server clock ahead (too old) / behind (from the future)
                await asyncio.to_thread(control, sim, "/_sim/time_skew", {"ms": skew_ms})
                err = await api_error(client.futures_account_balance())
                assert (err.status_code, err.code) == (400, -1021)
                server = (await client.futures_time())["serverTime"]
                client.timestamp_offset = server - int(time.time() * 1000)  # resync, as a bot must
                assert (await client.futures_account_balance())[0]["asset"] == "USDT"
                client.timestamp_offset = 0
            assert state(sim)["orders"] == 0

    asyncio.run(main())


def test_order_filters_and_reduce_only(sim):
    async def main():
        async with binance(sim) as client:
            err = await api_error(market_buy(client, "0.0105"))
            assert (err.code, err.message) == (-1111, "Precision is over the maximum defined for this asset.")
            err = await api_error(market_buy(client, "0.001"))  # ~95 USDT
            assert (err.code, err.message) == (
                -4164, "Order's notional must be no smaller than 100 (unless you choose reduce only).")
            assert (await api_error(market_buy(client, "121"))).code == -4005
            assert (await api_error(market_buy(client, "5"))).code == -2019  # 470k notional at 20x > 10k
            assert (await api_error(market_buy(client, "0.010", reduceOnly="true"))).code == -2022
            err = await api_error(client.futures_create_order(symbol="BTCUSDT", side="BUY", type="LIMIT",
                                                              quantity="0.010", price="90000", timeInForce="GTC"))
            assert err.code == -1116
            # python-binance signs raw values but URL-encodes the body: ':' breaks the signature.
            assert (await api_error(market_buy(client, "0.010", newClientOrderId="bm:1"))).code == -1022
            err = await api_error(client.futures_get_order(symbol="BTCUSDT", origClientOrderId="nope"))
            assert (err.status_code, err.code, err.message) == (400, -2013, "Order does not exist.")

            first = await market_buy(client, "0.005", newClientOrderId="bm-dup")
            second = await market_buy(client, "0.005", newClientOrderId="bm-dup")  # allowed once filled
            latest = await client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bm-dup")
            assert first["orderId"] < second["orderId"] == latest["orderId"]
            err = await api_error(client.futures_create_order(symbol="BTCUSDT", side="SELL", type="MARKET",
                                                              quantity="0.020", reduceOnly="true"))
            assert (err.code, err.message) == (-2022, "ReduceOnly Order is rejected.")  # would flip
            await client.futures_create_order(symbol="BTCUSDT", side="SELL", type="MARKET", quantity="0.001",
                                              reduceOnly="true")  # below min notional: fine when reduce-only
            [row] = await client.futures_position_information(symbol="BTCUSDT")
            assert row["positionAmt"] == "0.009"

        status, _, body = await signed_raw(sim, "POST", "/fapi/v1/order", [
            ("symbol", "BTCUSDT"), ("side", "BUY"), ("type", "MARKET"), ("quantity", "0.010"),
            ("newClientOrderId", "bad id!")])
        assert (status, body["code"]) == (400, -1100) and "newClientOrderId" in body["msg"]
        assert state(sim)["orders"] == 3

    asyncio.run(main())


def test_hedge_mode_rejects_one_way_orders(sim):
    control(sim, "/_sim/hedge_mode", {"on": True})

    async def main():
        async with binance(sim) as client:
            assert await client.futures_get_position_mode() == {"dualSidePosition": True}
            err = await api_error(market_buy(client, "0.010", reduceOnly="false"))
            assert (err.code, err.message) == (-1106, "Parameter 'reduceOnly' sent when not required.")
            err = await api_error(market_buy(client, "0.010"))
            assert (err.code, err.message) == (-4061, "Order's position side does not match user's setting.")
            await market_buy(client, "0.010", positionSide="LONG")
            rows = await client.futures_position_information(symbol="BTCUSDT")
            assert {r["positionSide"]: r["positionAmt"] for r in rows} == {"LONG": "0.010", "SHORT": "0.000"}

    asyncio.run(main())


def test_failure_after_execution_reports_503_but_the_order_exists(sim):
    control(sim, "/_sim/fail_orders", {"count": 1, "mode": "after", "status": 503, "code": None})

    async def main():
        async with binance(sim) as client:
            err = await api_error(market_buy(client, "0.010", newClientOrderId="bm-unknown-1"))
            assert err.status_code == 503
            order = await client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bm-unknown-1")
            assert (order["status"], order["executedQty"]) == ("FILLED", "0.010")
            assert len(await client.futures_account_trades(symbol="BTCUSDT")) == 1

            await asyncio.to_thread(control, sim, "/_sim/fail_orders", {"count": 1, "mode": "after", "code": -1007})
            err = await api_error(market_buy(client, "0.010", newClientOrderId="bm-unknown-2"))
            assert (err.status_code, err.code) == (503, -1007)

            await asyncio.to_thread(control, sim, "/_sim/fail_orders", {"count": 1, "mode": "before"})
            err = await api_error(market_buy(client, "0.010", newClientOrderId="bm-lost"))
            assert err.status_code == 503
            err = await api_error(client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bm-lost"))
            assert err.code == -2013

    asyncio.run(main())
    assert [o["clientOrderId"] for o in call(sim, "/_sim/orders")[1]] == ["bm-unknown-1", "bm-unknown-2"]


def test_rate_limits_and_rejections_are_not_executed(sim):
    async def main():
        async with binance(sim) as client:
            for status in (429, 418):
                await asyncio.to_thread(control, sim, "/_sim/rate_limit",
                                        {"count": 1, "status": status, "retry_after": 7})
                err = await api_error(market_buy(client, "0.010"))
                assert (err.status_code, err.code) == (status, -1003)
                assert err.response.headers["Retry-After"] == "7"
            await asyncio.to_thread(control, sim, "/_sim/reject_orders", {"count": 1, "code": -2019})
            err = await api_error(market_buy(client, "0.010"))
            assert (err.status_code, err.code, err.message) == (400, -2019, "Margin is insufficient.")
            assert state(sim)["orders"] == 0
            await market_buy(client, "0.010")  # back to normal
            assert state(sim)["orders"] == 1

    asyncio.run(main())


def test_a_delayed_order_times_out_on_the_client_but_executes(sim):
    control(sim, "/_sim/delay", {"ms": 2000, "count": 1})

    async def main():
        with pytest.raises(TimeoutError):
            await signed_raw(sim, "POST", "/fapi/v1/order", [
                ("symbol", "BTCUSDT"), ("side", "BUY"), ("type", "MARKET"), ("quantity", "0.010"),
                ("newClientOrderId", "bm-slow")], timeout=0.3)

    asyncio.run(main())
    assert [o["clientOrderId"] for o in call(sim, "/_sim/orders")[1]] == ["bm-slow"]


def test_request_log_never_shows_the_secret(sim):
    async def main():
        async with binance(sim) as client:
            await market_buy(client, "0.010")
            await client.futures_klines(symbol="BTCUSDT", interval="15m", limit=2)

    asyncio.run(main())
    status, log = call(sim, "/_sim/requests")
    text = json.dumps(log) + json.dumps(state(sim))
    assert SECRET not in text and "signature" not in text
    order, klines = log[-2], log[-1]
    assert (order["method"], order["path"], order["api_key"], order["status"]) == ("POST", "/fapi/v1/order", True, 200)
    assert order["params"]["quantity"] == "0.010"
    assert (klines["path"], klines["params"]["interval"]) == ("/fapi/v1/klines", "15m")
    control(sim, "/_sim/reset_log")
    assert call(sim, "/_sim/requests")[1] == []


def test_public_endpoints_and_errors(sim):
    assert call(sim, "/fapi/v1/ping") == (200, {})
    assert call(sim, "/api/v3/ping") == (200, {})
    status, now = call(sim, "/fapi/v1/time")
    assert status == 200 and abs(now["serverTime"] - time.time() * 1000) < 5000
    assert call(sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=15m") == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert call(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=7m")[1]["code"] == -1120
    assert call(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=15m&limit=1501")[1]["code"] == -1130
    status, body = call(sim, "/fapi/v1/nothing")
    assert (status, body["code"]) == (404, -5000)
    assert call(sim, "/_sim/step", {"ticks": "many"})[0] == 400


# -- the market streams ----------------------------------------------------------------


def test_raw_aggtrade_stream_replays_the_4_tick_path(sim):
    start = state(sim)["start_index"]
    candle = CANDLES[start]

    async def main():
        async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@aggTrade") as ws:
            await step(sim, 4)
            return [await recv(ws) for _ in range(4)]

    trades = asyncio.run(main())
    expected = path_ticks(candle, 60_000)
    assert [(t["T"], t["E"], float(t["p"])) for t in trades] == [(ms, ms, price) for ms, price in expected]
    assert all(re.fullmatch(r"\d+\.\d0", t["p"]) and re.fullmatch(r"\d+\.\d{3}", t["q"]) for t in trades)
    assert [t["a"] for t in trades] == list(range(trades[0]["a"], trades[0]["a"] + 4))
    assert sum(Decimal(t["q"]) for t in trades) == Decimal(str(candle.volume))
    assert {t["e"] for t in trades} == {"aggTrade"} and all(isinstance(t["m"], bool) for t in trades)


def test_combined_stream_closes_15m_candles_built_from_1m_data(sim):
    start = state(sim)["start_index"]
    t0 = CANDLES[start].open_time_ms
    assert t0 % MIN15 == 0  # the default start opens a 15m bucket
    streams = "btcusdt@aggTrade/btcusdt@kline_15m"

    async def main():
        async with websockets.connect(f"{sim.ws_url}/market/stream?streams={streams}") as ws:
            await step(sim, 15 * 4 + 1)
            return [await recv(ws) for _ in range(15 * 4 * 2 + 3)]

    messages = asyncio.run(main())
    assert all(set(m) == {"stream", "data"} for m in messages)
    data = [m["data"] for m in messages]
    trades = [d for d in data if d["e"] == "aggTrade"]
    live = [d["k"] for d in data if d["e"] == "kline" and not d["k"]["x"]]
    closed = [d for d in data if d["e"] == "kline" and d["k"]["x"]]
    assert (len(trades), len(live), len(closed)) == (61, 61, 1)
    for trade, kline in zip(data[0:120:2], data[1:120:2], strict=True):  # every trade is followed by its x:false kline
        assert trade["e"] == "aggTrade" and kline["k"]["c"] == trade["p"] and kline["E"] == trade["T"]
    final = closed[0]
    assert data.index(final) == 120 and data[121]["e"] == "aggTrade" and data[121]["T"] == t0 + MIN15
    want = aggregate(CANDLES[start:start + 15], MIN15)[0]
    k = final["k"]
    assert (k["t"], k["T"], final["E"], k["i"], k["n"]) == (t0, t0 + MIN15 - 1, t0 + MIN15 - 1, "15m", 60)
    assert [float(k[x]) for x in "ohlc"] == [want.open, want.high, want.low, want.close]
    assert Decimal(k["v"]) == sum(Decimal(t["q"]) for t in trades[:60])
    assert live[59] == {**k, "x": False}  # the last live update already showed the final values

    # REST agrees with what was streamed; the last row is the forming candle.
    rows = call(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=15m&limit=3")[1]
    assert [r[0] for r in rows] == [t0 - MIN15, t0, t0 + MIN15]
    assert rows[1] == [t0, k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"]
    forming = live[-1]
    assert rows[2][1:6] == [forming["o"], forming["h"], forming["l"], forming["c"], forming["v"]]


def test_klines_rest_before_streaming_ends_with_an_empty_forming_candle(sim):
    start = state(sim)["start_index"]
    history = aggregate(CANDLES[:start], MIN15)
    rows = call(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=15m&limit=5")[1]
    assert len(rows) == 5
    closed, forming = rows[:-1], rows[-1]
    assert [(r[0], float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in closed] == [
        (c.open_time_ms, c.open, c.high, c.low, c.close) for c in history[-4:]]
    prev_close = f"{history[-1].close:.2f}"
    assert forming[:6] == [CANDLES[start].open_time_ms] + [prev_close] * 4 + ["0.000"]
    assert [type(x) for x in forming] == [int, str, str, str, str, str, int, str, int, str, str, str]
    ranged = call(sim, f"/fapi/v1/klines?symbol=BTCUSDT&interval=1h&startTime={CANDLES[0].open_time_ms}&limit=2")[1]
    assert [r[0] for r in ranged] == [CANDLES[0].open_time_ms - CANDLES[0].open_time_ms % 3_600_000 + 3_600_000 * i
                                      for i in (1, 2)]


def test_unrouted_paths_connect_and_stay_silent(sim):
    async def main():
        async with websockets.connect(sim.ws_url + "/ws/btcusdt@aggTrade") as raw, \
                websockets.connect(sim.ws_url + "/stream?streams=btcusdt@aggTrade") as combined, \
                websockets.connect(sim.ws_url + "/market/ws") as routed:
            await routed.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 7}))
            assert await recv(routed) == {"result": None, "id": 7}
            await routed.send("this is not JSON")  # ignored, never fatal
            await routed.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
            assert await recv(routed) == {"result": ["btcusdt@aggTrade"], "id": 8}
            await raw.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}))
            await step(sim, 2)
            assert (await recv(routed))["e"] == "aggTrade"
            await assert_silent(raw)
            await assert_silent(combined, 0.1)

    asyncio.run(main())


def test_drop_cuts_every_connection_abruptly(sim):
    async def main():
        async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@aggTrade") as ws:
            assert (await asyncio.to_thread(control, sim, "/_sim/drop"))["dropped"] == 1
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is None  # no close frame: it looks like a network failure

    asyncio.run(main())
    assert state(sim)["ws_clients"] == 0


def test_stall_keeps_connections_open_but_silent(sim):
    async def main():
        async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@aggTrade") as before:
            await asyncio.to_thread(control, sim, "/_sim/stall", {"on": True})
            await step(sim, 4)
            async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@aggTrade") as during:
                await step(sim, 1)
                await assert_silent(before)
                await assert_silent(during, 0.1)
                await asyncio.to_thread(control, sim, "/_sim/stall", {"on": False})
                await step(sim, 1)
                first_after = [await recv(before), await recv(during)]
        return first_after

    a, b = asyncio.run(main())
    assert a == b and a["T"] == CANDLES[state(sim)["start_index"] + 1].open_time_ms + 20_000  # the 6th tick


def test_connections_are_cut_at_max_age_with_1001(sim):
    control(sim, "/_sim/max_conn_age", {"seconds": 0.3})

    async def main():
        async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@kline_15m") as ws:
            with pytest.raises(websockets.ConnectionClosedOK) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd.code == 1001

    asyncio.run(main())


def test_speed_paces_ticks_by_data_time():
    with SimExchangeThread(CANDLES, paused=True, speed=60) as ex:  # a 1m candle's 4 ticks span 1 s
        async def main():
            async with websockets.connect(ex.ws_url + "/market/ws/btcusdt@aggTrade") as ws:
                await asyncio.to_thread(control, ex, "/_sim/resume")
                first = await recv(ws)
                began = time.monotonic()
                rest = [await recv(ws) for _ in range(3)]
                return time.monotonic() - began, [first] + rest

        elapsed, trades = asyncio.run(main())
        paused = control(ex, "/_sim/pause")
        assert paused["paused"] and control(ex, "/_sim/speed", {"speed": 0})["speed"] == 0
        assert call(ex, "/_sim/speed", {"speed": -1})[0] == 400
    assert elapsed >= 0.9  # 59.999 s of data at 60x
    assert trades[-1]["T"] - trades[0]["T"] == 59_999


def test_fast_replay_runs_to_the_end_and_closes_the_last_candle():
    with SimExchangeThread(CANDLES[:40], history_candles=20, paused=True, speed=0) as ex:
        async def main():
            async with websockets.connect(ex.ws_url + "/market/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m") as ws:
                await asyncio.to_thread(control, ex, "/_sim/resume")
                return [(await recv(ws))["data"] for _ in range(20 * 4 * 2 + 20)]

        data = asyncio.run(main())
        deadline = time.monotonic() + 10
        while not state(ex)["finished"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state(ex)["finished"]
    last = CANDLES[39]
    assert sum(d["e"] == "aggTrade" for d in data) == 80
    final = data[-1]["k"]
    assert final["x"] and final["t"] == last.open_time_ms and float(final["c"]) == last.close


def test_a_client_that_cannot_keep_up_is_dropped_without_blocking_others():
    hub = StreamHub(Market(CANDLES[:10], history_candles=5), queue_size=2)

    class Transport:
        aborted = False

        def abort(self):
            self.aborted = True

    slow = StreamClient(None, {"btcusdt@aggTrade"}, combined=False, transport=Transport(), queue_size=2)
    fast = StreamClient(None, {"btcusdt@aggTrade"}, combined=True, transport=Transport(), queue_size=2)
    hub.clients |= {slow, fast}
    got = []
    for n in range(3):
        hub.publish([("btcusdt@aggTrade", {"n": n})])
        got.append(json.loads(fast.queue.get_nowait()))
    assert slow.transport.aborted and slow not in hub.clients and hub.dropped_slow == 1
    assert [g["data"]["n"] for g in got] == [0, 1, 2] and not fast.transport.aborted


# -- shapes against captured Binance payloads --------------------------------------------


def _types(d: dict) -> dict:
    return {k: type(v) for k, v in d.items()}


def test_exchange_info_matches_the_captured_shape():
    captured = json.loads(Path(PAYLOADS, "usdm_exchange_info_20220219.json").read_text())
    ours = exchange_info("BTCUSDT", 0)
    assert set(ours) == set(captured)
    real = next(s for s in captured["symbols"] if s["symbol"] == "BTCUSDT")
    mine = ours["symbols"][0]
    assert set(real) <= set(mine)
    assert {k: t for k, t in _types(mine).items() if k in real} == _types(real)
    real_filters = {f["filterType"]: f for f in real["filters"]}
    mine_filters = {f["filterType"]: f for f in mine["filters"]}
    assert set(mine_filters) == set(real_filters)
    for kind, real_filter in real_filters.items():
        assert _types(mine_filters[kind]) == _types(real_filter), kind
    assert mine_filters["PRICE_FILTER"]["tickSize"] == "0.10"
    assert (mine_filters["LOT_SIZE"]["stepSize"], mine_filters["LOT_SIZE"]["minQty"]) == ("0.001", "0.001")
    lot = mine_filters["MARKET_LOT_SIZE"]
    assert (lot["stepSize"], lot["minQty"], lot["maxQty"]) == ("0.001", "0.001", "120")
    assert mine_filters["MIN_NOTIONAL"]["notional"] == "100"


def test_stream_payloads_match_documented_and_captured_types(sim):
    async def main():
        async with websockets.connect(sim.ws_url + "/market/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m") as ws:
            await step(sim, 1)
            return (await recv(ws))["data"], (await recv(ws))["data"]

    trade, kline = asyncio.run(main())
    assert {k: t for k, t in _types(AGG_TRADE_SAMPLE).items() if k in trade} == _types(trade)
    assert set(AGG_TRADE_SAMPLE) - set(trade) == {"st"}
    assert _types(kline) == _types(KLINE_SAMPLE) and _types(kline["k"]) == _types(KLINE_SAMPLE["k"])
    captured = [m["msg"]["data"] for m in json.loads(Path(PAYLOADS, "usdm_20230404_trade_first25.json").read_text())]
    for real in captured:
        assert {k: type(real[k]) for k in ("e", "E", "T", "s", "p", "q", "m")} == \
               {k: type(trade[k]) for k in ("e", "E", "T", "s", "p", "q", "m")}
    assert all(len(r["p"].split(".")[1]) == len(trade["p"].split(".")[1]) == 2 for r in captured)


# -- command line ----------------------------------------------------------------------


def _run_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simexchange", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _readline(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from python -m simexchange"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_cleanly(tmp_path, sig):
    port_file = tmp_path / "port"
    with _run_cli("--klines", MARKET_1M, "--paused", "--port-file", str(port_file)) as proc:
        try:
            line = _readline(proc)
            match = re.fullmatch(r"simexchange listening on http://127\.0\.0\.1:(\d+)\n", line)
            assert match, line
            assert port_file.read_text().strip() == match.group(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/fapi/v1/ping", timeout=10) as resp:
                assert json.loads(resp.read()) == {}
            began = time.monotonic()
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - began < 5  # 2 s budget, with room for a loaded test machine
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("args, needle", [
    (["--klines", "/nonexistent/file.csv"], "no such file"),
    (["--klines", MARKET_1M, "--host", "192.0.2.1"], "--allow-remote"),
    (["--klines", MARKET_1M, "--speed", "-1"], "speed"),
    (["--speed", "1"], "--klines"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, needle):
    proc = _run_cli(*args)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_cli_rejects_a_file_with_bad_rows(tmp_path):
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("open_time_ms,open,high,low,close\n0,1,2,0.5,1\n60000,1,0.5,2,1\n")
    proc = _run_cli("--klines", str(bad))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "line 3" in err


def test_constructor_accepts_a_path_and_validates():
    ex = SimExchange(MARKET_1M, paused=True)
    assert len(ex.market.candles) > 30_000 and "secret" not in repr(ex)
    with pytest.raises(ValueError):
        SimExchange(CANDLES[:10], history_candles=11)
    with pytest.raises(ValueError):
        SimExchange(CANDLES[:10], speed=float("nan"))
    assert Market([Candle(0, 1, 1, 1, 1), Candle(60_000, 1, 1, 1, 1)]).start_index == 1
    assert os.path.exists(MARKET_1M)


def test_a_stream_joined_mid_candle_still_closes_with_the_true_ohlc(sim):
    start = state(sim)["start_index"]
    t0 = CANDLES[start].open_time_ms

    async def main():
        await step(sim, 22)  # 5.5 candles into the 15m bucket, before anyone listens
        async with websockets.connect(sim.ws_url + "/market/ws/btcusdt@kline_15m") as ws:
            await step(sim, 60 - 22 + 1)
            return [await recv(ws) for _ in range(60 - 22 + 2)]

    klines = asyncio.run(main())
    first, final = klines[0]["k"], klines[-2]["k"]
    assert (first["t"], first["n"], first["x"]) == (t0, 23, False)  # includes the ticks before the join
    want = aggregate(CANDLES[start:start + 15], MIN15)[0]
    assert final["x"] and [float(final[x]) for x in "ohlc"] == [want.open, want.high, want.low, want.close]
    assert klines[-1]["k"]["t"] == t0 + MIN15 and not klines[-1]["k"]["x"]

    end = t0 + MIN15 - 1  # endTime selects by open time; the forming candle is the last row
    rows = call(sim, f"/fapi/v1/klines?symbol=BTCUSDT&interval=15m&endTime={end}&limit=2")[1]
    assert [r[0] for r in rows] == [t0 - MIN15, t0] and rows[1][8] == 60
    assert call(sim, f"/fapi/v1/klines?symbol=BTCUSDT&interval=15m&startTime={t0 + 10 * MIN15}")[1] == []
    daily = call(sim, "/fapi/v1/klines?symbol=BTCUSDT&interval=1d&limit=1500")[1]
    assert daily[0][0] % 86_400_000 == 0 and daily[-1][0] <= t0 + MIN15 < daily[-1][6]


def test_set_position_is_what_the_account_endpoints_show(sim):
    price = Decimal(state(sim)["price"])
    control(sim, "/_sim/set_position", {"amt": "-0.020", "entry_price": "90000"})

    async def main():
        async with binance(sim) as client:
            [row] = await client.futures_position_information(symbol="BTCUSDT")
            assert (row["positionAmt"], row["entryPrice"]) == ("-0.020", "90000.0")
            assert Decimal(row["unRealizedProfit"]) == (price - 90000) * Decimal("-0.020")
            await market_buy(client, "0.020", reduceOnly="true")
            [trade] = await client.futures_account_trades(symbol="BTCUSDT")
            assert Decimal(trade["realizedPnl"]) == (price - 90000) * Decimal("-0.020")
            assert await client.futures_position_information(symbol="BTCUSDT") == []

    asyncio.run(main())
    assert state(sim)["position"] == {"amt": "0.000", "entry_price": "0.0"}


# -- user-data stream -----------------------------------------------------------------------

ORDER_UPDATE_KEYS = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L", "T", "t", "b", "a",
                     "m", "R", "wt", "ot", "ps", "cp", "rp", "pP", "si", "ss", "V", "pm", "gtd", "er"}
POSITION_KEYS = {"s", "pa", "ep", "bep", "cr", "up", "mt", "iw", "ps"}


def test_user_data_stream_pushes_orders_and_positions_in_binances_shapes(sim):
    async def main():
        async with binance(sim) as client:
            key = await client.futures_stream_get_listen_key()
            assert key == await client.futures_stream_get_listen_key(), "one active key per account"
            async with websockets.connect(f"{sim.ws_url}/private/ws?listenKey={key}") as ws:
                await market_buy(client, "0.003", newClientOrderId="bm-x-1-o", newOrderRespType="RESULT")
                new, trade, account = await recv(ws), await recv(ws), await recv(ws)
                assert (new["e"], new["o"]["x"], new["o"]["X"]) == ("ORDER_TRADE_UPDATE", "NEW", "NEW")
                assert (trade["o"]["x"], trade["o"]["X"], trade["o"]["c"]) == ("TRADE", "FILLED", "bm-x-1-o")
                assert set(trade["o"]) >= ORDER_UPDATE_KEYS and trade["o"]["N"] == "USDT"
                fee = Decimal(trade["o"]["ap"]) * Decimal("0.003") * Decimal("0.0005")
                assert Decimal(trade["o"]["n"]) == fee.quantize(Decimal("1e-8"))
                assert account["e"] == "ACCOUNT_UPDATE" and account["a"]["m"] == "ORDER"
                [pos] = account["a"]["P"]
                assert set(pos) == POSITION_KEYS and (pos["s"], pos["pa"], pos["ps"]) == ("BTCUSDT", "0.003", "BOTH")
                # An order from outside (the Binance app) closes it: the stream says so too.
                await asyncio.to_thread(control, sim, "/_sim/external_order", {})
                new, trade, account = await recv(ws), await recv(ws), await recv(ws)
                assert trade["o"]["c"].startswith("web_") and trade["o"]["S"] == "SELL" and trade["o"]["R"] is True
                assert account["a"]["P"][0]["pa"] == "0.000"
                await asyncio.to_thread(control, sim, "/_sim/set_position", {"amt": "-0.001", "reason": "ADL"})
                adl = await recv(ws)
                assert adl["a"]["m"] == "ADL" and adl["a"]["P"][0]["pa"] == "-0.001"
                await asyncio.to_thread(control, sim, "/_sim/expire_listen_key")
                expired = await recv(ws)
                assert expired["e"] == "listenKeyExpired"
                await assert_silent(ws)
            err = await api_error(client.futures_stream_keepalive(key))
            assert err.code == -1125

    asyncio.run(main())


def test_listen_key_needs_the_api_key_and_a_bad_key_cannot_connect(sim):
    async def main():
        async with binance(sim, key="wrong-key") as client:
            assert (await api_error(client.futures_stream_get_listen_key())).code == -2015
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{sim.ws_url}/private/ws?listenKey=nope"):
                pass

    asyncio.run(main())


def test_order_latency_answers_late_but_executes_at_once(sim):
    async def main():
        control(sim, "/_sim/order_latency", {"ms": 300})
        async with binance(sim) as client:
            started = time.monotonic()
            await market_buy(client, "0.002", newOrderRespType="RESULT")
            assert time.monotonic() - started >= 0.3

    asyncio.run(main())


def test_bursts_send_many_ticks_back_to_back(sim):
    async def main():
        async with websockets.connect(f"{sim.ws_url}/market/ws/btcusdt@aggTrade") as ws:
            await asyncio.to_thread(control, sim, "/_sim/burst", {"ticks": 50, "every_ms": 60_000})
            await asyncio.to_thread(control, sim, "/_sim/resume")
            got = [await recv(ws) for _ in range(50)]
            assert len({t["a"] for t in got}) == 50
            await assert_silent(ws, 0.5)  # the next burst is a minute away

    asyncio.run(main())
