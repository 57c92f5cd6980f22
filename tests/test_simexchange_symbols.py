"""Several symbols on one simulated account, against real clients: python-binance over REST,
``websockets`` on the market and user-data streams, ``python -m simexchange --also`` as a
process. BTCUSDT is the bundled data; ETHUSDT is derived from it (catalogue.derived_symbol:
prices ÷ 30 on a 0.01 tick, one day later in the data, ETH-like filters)."""

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
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
import websockets
from binance import AsyncClient
from support.paths import MARKET_1M, ROOT
from support.wire import KEY, SECRET, api_error, assert_silent, binance, recv

from exchange import rules_from_exchange_info
from history import read_candles
from simexchange import SimExchangeThread, derived_symbol

CANDLES = read_candles(MARKET_1M)[:3000]
DAY_MS = 86_400_000


@pytest.fixture
def sim():
    """A paused exchange listing BTCUSDT and the derived ETHUSDT, fresh for each test."""
    with SimExchangeThread(CANDLES, api_key=KEY, api_secret=SECRET, paused=True,
                           more_symbols={"ETHUSDT": derived_symbol("ETHUSDT", CANDLES)}) as running:
        yield running


def call(sim: SimExchangeThread, path: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sim.base_url + path, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def control(sim: SimExchangeThread, name: str, body: dict | None = None) -> dict:
    status, reply = call(sim, f"/_sim/{name}", {} if body is None else body)
    assert status == 200, reply
    return reply


async def acontrol(sim: SimExchangeThread, name: str, body: dict | None = None) -> dict:
    return await asyncio.to_thread(control, sim, name, body)


def state(sim: SimExchangeThread, symbol: str | None = None) -> dict:
    status, reply = call(sim, "/_sim/state" + (f"?symbol={symbol}" if symbol else ""))
    assert status == 200, reply
    return reply


def market(client: AsyncClient, symbol: str, side: str, qty: str, **extra):
    return client.futures_create_order(symbol=symbol, side=side, type="MARKET", quantity=qty,
                                       newOrderRespType="RESULT", **extra)


def eth_start_price(sim: SimExchangeThread) -> Decimal:
    """ETHUSDT's price before its first streamed tick, by the derivation rule: BTCUSDT's close a
    day later in the data, ÷ 30, on the 0.01 tick."""
    first = next(i for i, c in enumerate(CANDLES) if c.open_time_ms >= CANDLES[0].open_time_ms + DAY_MS)
    start = state(sim, "ETHUSDT")["start_index"]
    return round(Decimal(str(CANDLES[first + start - 1].close)) / 30, 2)


# -- the catalogue ------------------------------------------------------------------------------


def test_exchange_info_lists_every_symbol_with_its_own_filters(sim):
    async def main():
        async with binance(sim) as client:
            return await client.futures_exchange_info()

    info = asyncio.run(main())
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    filters = {s["symbol"]: {f["filterType"]: f for f in s["filters"]} for s in info["symbols"]}
    assert filters["BTCUSDT"]["PRICE_FILTER"]["tickSize"] == "0.10"
    assert filters["ETHUSDT"]["PRICE_FILTER"]["tickSize"] == "0.01"
    assert filters["ETHUSDT"]["MIN_NOTIONAL"]["notional"] == "20"
    assert filters["BTCUSDT"]["MIN_NOTIONAL"]["notional"] == "100"
    assert (filters["ETHUSDT"]["MARKET_LOT_SIZE"]["stepSize"], filters["ETHUSDT"]["MARKET_LOT_SIZE"]["minQty"]) == (
        "0.001", "0.001")
    assert {s["symbol"]: s["baseAsset"] for s in info["symbols"]} == {"BTCUSDT": "BTC", "ETHUSDT": "ETH"}
    # What the bot reads from it, symbol by symbol.
    eth, btc = rules_from_exchange_info(info, "ETHUSDT"), rules_from_exchange_info(info, "BTCUSDT")
    assert (eth.tick, eth.step, eth.min_notional) == (Decimal("0.01"), Decimal("0.001"), Decimal(20))
    assert (btc.tick, btc.step, btc.min_notional) == (Decimal("0.10"), Decimal("0.001"), Decimal(100))


def test_the_derived_symbol_is_btcusdt_a_day_later_divided_by_30(sim):
    btc, eth = state(sim), state(sim, "ETHUSDT")
    assert (btc["symbol"], eth["symbol"]) == ("BTCUSDT", "ETHUSDT")
    assert Decimal(eth["price"]) == eth_start_price(sim)
    assert re.fullmatch(r"\d+\.\d\d", eth["price"]) and btc["price"].endswith("0")  # ETH's 0.01 tick, BTC's 0.10
    assert eth["clock_ms"] - btc["clock_ms"] == DAY_MS  # both start 60 15m candles into their own data
    assert sorted(btc["symbols"]) == ["BTCUSDT", "ETHUSDT"] and btc["symbols"]["ETHUSDT"]["price"] == eth["price"]
    rows = call(sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=15m&limit=3")[1]
    closed, forming = rows[-2], rows[-1]
    assert (closed[0] + 900_000, Decimal(closed[4])) == (eth["clock_ms"], eth_start_price(sim))
    assert forming[0] == eth["clock_ms"] and forming[1:5] == [eth["price"]] * 4  # no ETHUSDT trade yet
    assert all(re.fullmatch(r"\d+\.\d\d", price) for row in rows for price in row[1:5])


# -- orders and positions ------------------------------------------------------------------------


def test_orders_fill_at_each_symbols_price_with_its_filters_and_positions_stay_apart(sim):
    async def main():
        async with binance(sim) as client:
            btc_price, eth_price = Decimal(state(sim)["price"]), Decimal(state(sim, "ETHUSDT")["price"])
            # Each symbol's own filters: BTCUSDT needs 100 USDT, ETHUSDT 20 USDT.
            err = await api_error(market(client, "BTCUSDT", "BUY", "0.001"))
            assert (err.code, err.message) == (
                -4164, "Order's notional must be no smaller than 100 (unless you choose reduce only).")
            err = await api_error(market(client, "ETHUSDT", "BUY", "0.005"))  # ~16 USDT
            assert (err.code, err.message) == (
                -4164, "Order's notional must be no smaller than 20 (unless you choose reduce only).")
            assert (await api_error(market(client, "ETHUSDT", "BUY", "0.0105"))).code == -1111
            assert (await api_error(market(client, "SOLUSDT", "BUY", "1"))).code == -1121

            btc = await market(client, "BTCUSDT", "BUY", "0.002", newClientOrderId="bm-btc-1")
            eth = await market(client, "ETHUSDT", "SELL", "0.010", newClientOrderId="bm-eth-1")
            assert (btc["symbol"], Decimal(btc["avgPrice"]), btc["executedQty"]) == ("BTCUSDT", btc_price, "0.002")
            assert (eth["symbol"], Decimal(eth["avgPrice"]), eth["executedQty"]) == ("ETHUSDT", eth_price, "0.010")

            [btc_row] = await client.futures_position_information(symbol="BTCUSDT")
            [eth_row] = await client.futures_position_information(symbol="ETHUSDT")
            assert (btc_row["positionAmt"], Decimal(btc_row["entryPrice"])) == ("0.002", btc_price)
            assert (eth_row["positionAmt"], Decimal(eth_row["entryPrice"])) == ("-0.010", eth_price)
            assert await client.futures_position_information() == [btc_row, eth_row]  # no symbol: every one

            # Orders and trades are per symbol; the balance pays both fees.
            assert [o["clientOrderId"] for o in await client.futures_get_all_orders(symbol="ETHUSDT")] == ["bm-eth-1"]
            err = await api_error(client.futures_get_order(symbol="BTCUSDT", origClientOrderId="bm-eth-1"))
            assert err.code == -2013
            [trade] = await client.futures_account_trades(symbol="ETHUSDT")
            btc_fee, eth_fee = ((price * qty * Decimal("0.0005")).quantize(Decimal("1e-8"))
                                for price, qty in ((btc_price, Decimal("0.002")), (eth_price, Decimal("0.010"))))
            assert Decimal(trade["commission"]) == eth_fee
            [usdt] = await client.futures_account_balance()
            assert Decimal(usdt["balance"]) == Decimal(10000) - btc_fee - eth_fee
            account = await client.futures_account()
            assert {p["symbol"]: p["positionAmt"] for p in account["positions"]} == {
                "BTCUSDT": "0.002", "ETHUSDT": "-0.010"}
            margin = (btc_price * Decimal("0.002") + eth_price * Decimal("0.010")) / 20
            assert Decimal(account["totalInitialMargin"]) == margin.quantize(Decimal("1e-8"))

            # The prices move apart; each position is marked at its own symbol's price.
            await asyncio.to_thread(control, sim, "step", {"ticks": 8})
            eth_now = Decimal(state(sim, "ETHUSDT")["price"])
            [eth_row] = await client.futures_position_information(symbol="ETHUSDT")
            assert Decimal(eth_row["markPrice"]) == eth_now
            assert Decimal(eth_row["unRealizedProfit"]) == (eth_now - eth_price) * Decimal("-0.010")
            tickers = {t["symbol"]: t["price"] for t in await client.futures_symbol_ticker()}
            assert tickers == {"BTCUSDT": state(sim)["price"], "ETHUSDT": state(sim, "ETHUSDT")["price"]}

            # Leverage is per symbol; position mode is the account's.
            await client.futures_change_leverage(symbol="ETHUSDT", leverage=5)
            configs = {c["symbol"]: c["leverage"] for c in await client.futures_symbol_config()}
            assert configs == {"BTCUSDT": 20, "ETHUSDT": 5}
            [v2] = await client.futures_position_information(symbol="ETHUSDT", version=2)
            assert v2["leverage"] == "5"
            await market(client, "BTCUSDT", "SELL", "0.002", reduceOnly="true")
            err = await api_error(client.futures_change_position_mode(dualSidePosition="true"))
            assert err.code == -4068  # ETHUSDT's position still blocks it
            await market(client, "ETHUSDT", "BUY", "0.010", reduceOnly="true")
            assert await client.futures_position_information() == []
            assert await client.futures_change_position_mode(dualSidePosition="true") == {"code": 200, "msg": "success"}
            err = await api_error(market(client, "ETHUSDT", "BUY", "0.010"))
            assert err.code == -4061  # hedge mode now holds for every symbol

    asyncio.run(main())
    assert [o["symbol"] for o in call(sim, "/_sim/orders?symbol=ETHUSDT")[1]] == ["ETHUSDT", "ETHUSDT"]


def test_position_and_order_faults_name_a_symbol_or_mean_the_first(sim):
    control(sim, "set_position", {"symbol": "ETHUSDT", "amt": "0.500", "entry_price": "3000"})
    assert state(sim, "ETHUSDT")["position"] == {"amt": "0.500", "entry_price": "3000.0"}
    assert state(sim)["position"] == {"amt": "0.000", "entry_price": "0.0"}
    assert control(sim, "reject_orders", {"count": 1, "symbol": "ETHUSDT"})["symbol"] == "ETHUSDT"
    assert control(sim, "fail_orders", {"count": 1, "mode": "before"})["symbol"] == "BTCUSDT"  # the default

    async def main():
        async with binance(sim) as client:
            err = await api_error(market(client, "ETHUSDT", "SELL", "0.500", reduceOnly="true"))
            assert (err.code, err.message) == (-2019, "Margin is insufficient.")  # ETHUSDT's injected rejection
            err = await api_error(market(client, "BTCUSDT", "BUY", "0.002"))
            assert err.status_code == 503  # BTCUSDT's injected failure
            await market(client, "ETHUSDT", "SELL", "0.500", reduceOnly="true")  # each fault was used once
            await market(client, "BTCUSDT", "BUY", "0.002")

    asyncio.run(main())
    closed = control(sim, "external_order", {"symbol": "BTCUSDT"})
    assert (closed["order"]["symbol"], closed["order"]["side"], closed["position"]["amt"]) == ("BTCUSDT", "SELL",
                                                                                             "0.000")
    assert call(sim, "/_sim/set_position", {"symbol": "DOGEUSDT", "amt": "1"})[0] == 400


# -- the streams -----------------------------------------------------------------------------------


def test_one_user_data_stream_carries_every_symbols_events_to_every_connection(sim):
    async def main():
        async with binance(sim) as client:
            key = await client.futures_stream_get_listen_key()
            url = f"{sim.ws_url}/private/ws?listenKey={key}"
            async with websockets.connect(url) as first, websockets.connect(url) as second:
                await market(client, "BTCUSDT", "BUY", "0.002", newClientOrderId="bm-btc-1")
                await market(client, "ETHUSDT", "BUY", "0.010", newClientOrderId="bm-eth-1")
                await acontrol(sim, "external_order", {"symbol": "ETHUSDT", "client_id": "autoclose-eth"})
                await acontrol(sim, "set_position", {"symbol": "ETHUSDT", "amt": "-0.004", "reason": "ADL"})
                streams = [[await recv(ws) for _ in range(10)] for ws in (first, second)]
                await assert_silent(first, 0.3)
        return streams

    first, second = asyncio.run(main())
    assert first == second  # every /private connection of the account gets everything
    orders = [(e["o"]["s"], e["o"]["c"], e["o"]["X"]) for e in first if e["e"] == "ORDER_TRADE_UPDATE"]
    assert orders == [("BTCUSDT", "bm-btc-1", "NEW"), ("BTCUSDT", "bm-btc-1", "FILLED"),
                      ("ETHUSDT", "bm-eth-1", "NEW"), ("ETHUSDT", "bm-eth-1", "FILLED"),
                      ("ETHUSDT", "autoclose-eth", "NEW"), ("ETHUSDT", "autoclose-eth", "FILLED")]
    updates = [(e["a"]["m"], e["a"]["P"][0]["s"], e["a"]["P"][0]["pa"]) for e in first if e["e"] == "ACCOUNT_UPDATE"]
    assert updates == [("ORDER", "BTCUSDT", "0.002"), ("ORDER", "ETHUSDT", "0.010"), ("ORDER", "ETHUSDT", "0.000"),
                       ("ADL", "ETHUSDT", "-0.004")]
    eth_fill = next(e["o"] for e in first if e["e"] == "ORDER_TRADE_UPDATE" and e["o"]["c"] == "bm-eth-1"
                    and e["o"]["X"] == "FILLED")
    assert re.fullmatch(r"\d+\.\d\d", eth_fill["ap"]) and Decimal(eth_fill["ap"]) == eth_start_price(sim)


def test_market_streams_serve_each_symbols_trades_and_klines(sim):
    streams = "btcusdt@aggTrade/ethusdt@aggTrade/ethusdt@kline_1m"

    async def main():
        async with websockets.connect(f"{sim.ws_url}/market/stream?streams={streams}") as both, \
                websockets.connect(f"{sim.ws_url}/market/ws/ethusdt@aggTrade") as eth_only:
            await acontrol(sim, "step", {"ticks": 2})  # every symbol, taking turns
            mixed = [await recv(both) for _ in range(6)]
            eth_trades = [await recv(eth_only) for _ in range(2)]
            assert (await acontrol(sim, "step", {"ticks": 3, "symbol": "ETHUSDT"}))["emitted_by_symbol"] == {
                "ETHUSDT": 3}
            only_eth = [await recv(both) for _ in range(7)]  # 3 trades and klines, and the close of a 1m kline
            await assert_silent(both, 0.3)
            return mixed, eth_trades, only_eth

    mixed, eth_trades, only_eth = asyncio.run(main())
    assert [(m["stream"], m["data"]["s"]) for m in mixed] == [
        ("btcusdt@aggTrade", "BTCUSDT"), ("ethusdt@aggTrade", "ETHUSDT"), ("ethusdt@kline_1m", "ETHUSDT")] * 2
    assert [m["data"] for m in mixed if m["stream"] == "ethusdt@aggTrade"] == eth_trades
    btc, eth = state(sim), state(sim, "ETHUSDT")
    assert (btc["ticks_emitted"], eth["ticks_emitted"]) == (2, 5)
    assert {m["data"]["s"] for m in only_eth} == {"ETHUSDT"}
    assert [m["data"]["k"]["x"] for m in only_eth if m["stream"] == "ethusdt@kline_1m"] == [False, False, True, False]
    last_trade = [m["data"] for m in only_eth if m["stream"] == "ethusdt@aggTrade"][-1]
    assert (last_trade["p"], last_trade["T"]) == (eth["price"], eth["clock_ms"])
    assert (mixed[3]["data"]["p"], mixed[3]["data"]["T"]) == (btc["price"], btc["clock_ms"])
    assert btc["clock_ms"] + DAY_MS < eth["clock_ms"]  # each symbol on its own data clock
    # REST klines agree with the ETHUSDT kline stream, on its 0.01 tick.
    kline = [m["data"]["k"] for m in only_eth if m["stream"] == "ethusdt@kline_1m"][-1]
    [row] = call(sim, "/fapi/v1/klines?symbol=ETHUSDT&interval=1m&limit=1")[1]
    assert row[:6] == [kline["t"], kline["o"], kline["h"], kline["l"], kline["c"], kline["v"]]


def test_replay_controls_act_on_every_symbol_or_the_one_named(sim):
    async def main():
        both_url = f"{sim.ws_url}/market/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade"
        async with websockets.connect(both_url) as both, \
                websockets.connect(f"{sim.ws_url}/market/ws/ethusdt@aggTrade") as eth_only:
            await acontrol(sim, "stall", {"on": True, "symbol": "ETHUSDT"})
            await acontrol(sim, "step", {"ticks": 2})
            assert [(await recv(both))["stream"] for _ in range(2)] == ["btcusdt@aggTrade"] * 2
            await assert_silent(eth_only, 0.3)
            await acontrol(sim, "stall", {"on": False})
            # Bursts and resume for every symbol: both replays run.
            await acontrol(sim, "burst", {"ticks": 3, "every_ms": 60_000})
            resumed = await acontrol(sim, "resume")
            assert resumed["symbols"]["BTCUSDT"]["paused"] is False and resumed["symbols"]["ETHUSDT"]["paused"] is False
            burst = sorted([(await recv(both))["stream"] for _ in range(6)])
            assert burst == ["btcusdt@aggTrade"] * 3 + ["ethusdt@aggTrade"] * 3
            await acontrol(sim, "pause")
            # Dropping one symbol's connections leaves the others up.
            assert (await acontrol(sim, "drop", {"symbol": "BTCUSDT"}))["dropped"] == 1
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(both.recv(), 10)
            await acontrol(sim, "step", {"ticks": 1, "symbol": "ETHUSDT"})
            return [await recv(eth_only) for _ in range(4)]

    eth = asyncio.run(main())
    assert [t["s"] for t in eth] == ["ETHUSDT"] * 4  # 3 from the burst, then the step; none while stalled
    resumed = control(sim, "resume", {"symbol": "ETHUSDT"})
    assert (resumed["symbol"], resumed["paused"], resumed["symbols"]["BTCUSDT"]["paused"]) == ("ETHUSDT", False, True)
    speeds = control(sim, "speed", {"speed": 0, "symbol": "BTCUSDT"})["symbols"]
    assert (speeds["BTCUSDT"]["speed"], speeds["ETHUSDT"]["speed"]) == (0, 1)
    assert call(sim, "/_sim/drop", {"route": "private", "symbol": "BTCUSDT"})[0] == 400  # the stream is the account's
    assert call(sim, "/_sim/pause", {"symbol": "SOLUSDT"})[0] == 400


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def klines(tmp_path_factory) -> Path:
    """BTCUSDT's first 1,600 minutes (over a day, enough to derive ETHUSDT): quick to load."""
    path = tmp_path_factory.mktemp("klines") / "btcusdt_1m.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("open_time_ms,open,high,low,close,volume\n")
        fh.writelines(f"{c.open_time_ms},{c.open},{c.high},{c.low},{c.close},{c.volume}\n" for c in CANDLES[:1600])
    return path


def _run_cli(cwd: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # from another directory: the package is found on the path
    return subprocess.Popen([sys.executable, "-m", "simexchange", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _serving_port(proc: subprocess.Popen) -> int:
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "no output from python -m simexchange"
    line = proc.stdout.readline()
    match = re.fullmatch(r"simexchange listening on http://127\.0\.0\.1:(\d+)\n", line)
    assert match, line
    return int(match.group(1))


def _get(port: int, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def test_cli_also_lists_a_derived_symbol_or_one_from_a_file(tmp_path, klines):
    sol = tmp_path / "sol.csv.gz"
    with gzip.open(sol, "wt") as fh:
        fh.write("open_time_ms,open,high,low,close,volume\n")
        fh.writelines(f"{c.open_time_ms},{c.open / 600:.3f},{c.high / 600:.3f},{c.low / 600:.3f},"
                      f"{c.close / 600:.3f},{c.volume}\n" for c in CANDLES[:200])
    with _run_cli(tmp_path, "--klines", str(klines), "--paused", "--also", "ETHUSDT", "--also",
                  f"SOLUSDT={sol}") as proc:
        try:
            port = _serving_port(proc)
            info = _get(port, "/fapi/v1/exchangeInfo")
            assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
            ticks = {s["symbol"]: s["filters"][0]["tickSize"] for s in info["symbols"]}
            assert ticks == {"BTCUSDT": "0.10", "ETHUSDT": "0.01", "SOLUSDT": "0.10"}  # unknown: BTCUSDT's rules
            sol_state = _get(port, "/_sim/state?symbol=SOLUSDT")
            assert (sol_state["candles"], sol_state["paused"]) == (200, True)
            eth_state = _get(port, "/_sim/state?symbol=ETHUSDT")
            assert 2_000 < Decimal(eth_state["price"]) < 4_000  # BTCUSDT's May 2025 prices ÷ 30
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("args, needle", [
    (["--also", "SOLUSDT"], "SOLUSDT=FILE"),
    (["--also", "BTCUSDT=KLINES"], "BTCUSDT is listed twice"),
    (["--also", "ETHUSDT", "--also", "ethusdt"], "given twice"),
    (["--also", "ETHUSDT=/nonexistent/eth.csv"], "/nonexistent/eth.csv"),
    (["--also", "ETH-USDT"], "SYMBOL=FILE"),
])
def test_cli_bad_also_exits_2_with_one_line(tmp_path, klines, args, needle):
    args = [a.replace("KLINES", str(klines)) for a in args]
    proc = _run_cli(tmp_path, "--klines", str(klines), *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
