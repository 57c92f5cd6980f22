"""The user-data stream (userstream.py): parsing Binance's event shapes, and keeping the
listenKey and the connection alive against the simulated exchange."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from support.sim import API_KEY, API_SECRET, ctl, running_sim

from config import load_config
from exchange import Exchange
from userstream import UserStream, private_url

ORDER = {"e": "ORDER_TRADE_UPDATE", "E": 1568879465651, "T": 1568879465650, "o": {
    "s": "BTCUSDT", "c": "web_abc", "S": "SELL", "o": "MARKET", "f": "GTC", "q": "0.002", "p": "0", "ap": "95000.1",
    "sp": "0", "x": "TRADE", "X": "FILLED", "i": 8886774, "l": "0.002", "z": "0.002", "L": "95000.1", "N": "USDT",
    "n": "0.095", "T": 1568879465650, "t": 12, "b": "0", "a": "0", "m": False, "R": False, "wt": "CONTRACT_PRICE",
    "ot": "MARKET", "ps": "BOTH", "cp": False, "rp": "1.2", "pP": False, "si": 0, "ss": 0, "V": "EXPIRE_TAKER",
    "pm": "NONE", "gtd": 0, "new_unknown_key": 1}}
ACCOUNT = {"e": "ACCOUNT_UPDATE", "E": 1564745798939, "T": 1564745798938, "a": {"m": "ORDER", "B": [
    {"a": "USDT", "wb": "122624.12345678", "cw": "100.12345678", "bc": "50.12345678"}], "P": [
    {"s": "ETHUSDT", "pa": "5", "ep": "2000", "bep": "0", "cr": "0", "up": "0", "mt": "cross", "iw": "0", "ps": "BOTH"},
    {"s": "BTCUSDT", "pa": "-0.002", "ep": "95000.0", "bep": "0", "cr": "0", "up": "0", "mt": "cross", "iw": "0",
     "ps": "BOTH"}]}}


class Sink:
    def __init__(self) -> None:
        self.orders: list[dict] = []
        self.positions: list[tuple[float, int]] = []
        self.reconnects = 0

    def stream(self, exchange=None, ws="ws://127.0.0.1:1", **kw) -> UserStream:
        return UserStream(exchange, ws, "BTCUSDT", on_order=self.orders.append,
                          on_position=lambda q, t: self.positions.append((q, t)),
                          on_reconnected=self._reconnected, **kw)

    def _reconnected(self) -> None:
        self.reconnects += 1


def test_events_of_our_symbol_reach_the_bot_others_are_ignored():
    sink = Sink()
    us = sink.stream()
    assert us.handle(json.dumps(ORDER)) is None
    other = json.loads(json.dumps(ORDER))
    other["o"]["s"] = "ETHUSDT"
    us.handle(json.dumps(other))
    us.handle(json.dumps(ACCOUNT))
    assert [o["c"] for o in sink.orders] == ["web_abc"]
    assert sink.positions == [(-0.002, 1564745798938)]
    assert us.handle(json.dumps({"e": "listenKeyExpired", "E": "1736996475556", "listenKey": "k"})) == "expired"
    # A combined-stream envelope is unwrapped too.
    us.handle(json.dumps({"stream": "k", "data": ACCOUNT}))
    assert len(sink.positions) == 2


@pytest.mark.parametrize("raw", ["", "[]", "{", '{"e": "ORDER_TRADE_UPDATE"}', '{"e":"ACCOUNT_UPDATE","a":{"P":[{}]}}',
                                 b"\xff\xfe", '{"e": "TRADE_LITE"}'])
def test_malformed_or_unknown_messages_are_dropped_without_raising(raw):
    sink = Sink()
    assert sink.stream().handle(raw) is None
    assert sink.orders == [] and sink.positions == []


@pytest.mark.parametrize("amount", ["NaN", "inf", "-Infinity", "abc"])
def test_a_position_amount_that_is_not_a_number_is_dropped(amount, caplog):
    sink = Sink()
    bad = json.loads(json.dumps(ACCOUNT))
    for p in bad["a"]["P"]:
        if p["s"] == "BTCUSDT":
            p["pa"] = amount
    with caplog.at_level(logging.WARNING):
        assert sink.stream().handle(json.dumps(bad)) is None
    assert sink.positions == []
    assert any("malformed user-data message dropped" in m for m in caplog.messages)


def test_the_stream_is_on_the_routed_private_path():
    assert private_url("wss://fstream.binance.com/", "KEY123") == "wss://fstream.binance.com/private/ws?listenKey=KEY123"


@pytest.fixture
def sim():
    with running_sim() as s:
        yield s


def test_a_lapsed_key_is_replaced_by_the_keepalive_and_the_stream_carries_on(sim, tmp_path, caplog):
    cfg = load_config(None, env={}).replace(PAPER_TRADING=False, API_KEY=API_KEY, API_SECRET=API_SECRET,
                                            REST_BASE_URL=sim.base_url, WS_BASE_URL=sim.ws_url,
                                            DB_PATH=str(tmp_path / "x.db"))
    sink = Sink()

    async def body():
        ex = Exchange(cfg)
        await ex.sync_time()
        us = sink.stream(ex, sim.ws_url, keepalive_s=0.3)
        task = asyncio.ensure_future(us.run())
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if us.connection == "connected":
                    break
            await asyncio.sleep(0.5)  # a few keep-alives succeed
            assert ctl(sim.base_url, "state")["listen_key_keepalives"] >= 1
            ctl(sim.base_url, "expire_listen_key", {"notify": False})  # lapses silently
            for _ in range(200):
                await asyncio.sleep(0.05)
                if ctl(sim.base_url, "state")["listen_keys_created"] == 2 and us.connection == "connected":
                    break
            ctl(sim.base_url, "set_position", {"amt": "0.003", "entry_price": "95000"})
            for _ in range(100):
                await asyncio.sleep(0.05)
                if sink.positions:
                    break
        finally:
            us.stop()
            await asyncio.wait_for(task, 5)
            await ex.close()

    asyncio.run(body())
    assert ctl(sim.base_url, "state")["listen_keys_created"] == 2
    assert sink.positions and sink.positions[-1][0] == 0.003
    assert sink.reconnects == 1
    key_requests = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/listenKey"]
    assert {r["method"] for r in key_requests} == {"POST", "PUT"}
    assert all(r["api_key"] for r in key_requests)
    text = "\n".join(caplog.messages)
    assert "no longer exists" in text
    for r in key_requests:
        for value in r["params"].values():
            assert value not in text, "the listenKey is never logged"
