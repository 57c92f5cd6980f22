"""Two live bots on one simulated account (BTCUSDT and ETHUSDT, the way ``auto_deploy.sh add
ETHUSDT`` runs them): the real ``python bollmin.py run`` twice against one simulated exchange.

The traps of one account shared by several bots: Binance hands every instance the same listenKey
(so none may delete it), the user-data stream carries every symbol's fills (another bot's fill is
not "a fill this bot did not cause"), and client order ids must never collide.
"""

from __future__ import annotations

import os
import time

import pytest
from support.bot import Bot, query, wait_for
from support.paths import MARKET_1M
from support.sim import API_KEY, API_SECRET, ctl

from history import read_candles
from simexchange import SimExchangeThread, derived_symbol

pytestmark = pytest.mark.e2e

HISTORY = 19
CANDLES = read_candles(MARKET_1M)[:3000]


def _settled(bot: Bot) -> bool:
    return not query(bot.db, "SELECT id FROM orders WHERE status IN ('pending','sent','unknown')")


def _critical(bot: Bot) -> list[str]:
    return [r["message"] for r in query(bot.db, "SELECT message FROM events WHERE level = 'CRITICAL'")]


def test_two_bots_on_one_account_each_trade_their_symbol_and_share_the_listen_key(tmp_path):
    with SimExchangeThread(CANDLES, paused=True, history_candles=60, target_interval="1m", speed=600,
                           api_key=API_KEY, api_secret=API_SECRET,
                           more_symbols={"ETHUSDT": derived_symbol("ETHUSDT", CANDLES)}) as sim:
        os.makedirs(tmp_path / "btc")
        os.makedirs(tmp_path / "eth")
        btc = Bot(str(tmp_path / "btc"), sim.base_url, sim.ws_url, paper=False).start()
        eth = Bot(str(tmp_path / "eth"), sim.base_url, sim.ws_url, paper=False, SYMBOL="ETHUSDT").start()
        try:
            for bot in (btc, eth):
                bot.wait_connected()
                bot.wait_status(lambda s: s.get("user_stream") == "connected", 30, "the user-data stream")
            state = ctl(sim.base_url, "state")
            assert state["listen_keys_created"] == 1, "one account, one listenKey, handed to both"
            assert state["user_clients"] == 2

            # Trade until both hold a position, then a quiet market with every order settled.
            ctl(sim.base_url, "resume")
            for bot in (btc, eth):
                bot.wait_status(lambda s: abs(float(s.get("position_qty") or 0)) > 0, 120, "an open position")
            ctl(sim.base_url, "pause")
            wait_for(lambda: _settled(btc) and _settled(eth), 30, "orders to settle")
            time.sleep(1.0)
            assert not _critical(btc) and not _critical(eth), "the other bot's fills are not outside fills"

            # Each bot's orders are its symbol's, and their client ids never meet.
            orders = ctl(sim.base_url, "orders")
            mine = {bot: {r["client_order_id"] for r in bot.orders()} for bot in (btc, eth)}
            by_symbol = {s: {o["clientOrderId"] for o in orders if o["symbol"] == s} for s in ("BTCUSDT", "ETHUSDT")}
            assert mine[btc] and mine[eth] and not mine[btc] & mine[eth]
            assert by_symbol == {"BTCUSDT": mine[btc], "ETHUSDT": mine[eth]}
            assert {r["symbol"] for r in btc.orders()} == {"BTCUSDT"}
            assert {r["symbol"] for r in eth.orders()} == {"ETHUSDT"}
            btc_qty = float(btc.status()["position_qty"])
            assert btc_qty == pytest.approx(float(ctl(sim.base_url, "state", None)["symbols"]["BTCUSDT"]
                                                  ["position"]["amt"]))

            # ETHUSDT closed in the Binance app: only the ETHUSDT bot reconciles.
            ctl(sim.base_url, "external_order", {"symbol": "ETHUSDT"})
            eth.wait_status(lambda s: float(s.get("position_qty") or 0) == 0, 5, "the ETH bot to see the outside close")
            time.sleep(2.0)  # time for a wrong reaction of the BTC bot
            assert any(m.startswith("RECONCILE") for m in _critical(eth))
            assert not _critical(btc)
            assert float(btc.status()["position_qty"]) == pytest.approx(btc_qty)
            assert not query(btc.db, "SELECT * FROM reconciliations")

            # The BTC bot stops; the ETH bot keeps the shared key and its stream.
            assert btc.stop() == 0
            time.sleep(1.0)
            state = ctl(sim.base_url, "state")
            assert state["listen_keys_deleted"] == 0 and state["listen_key_valid"] is True
            assert state["user_clients"] == 1 and eth.status().get("user_stream") == "connected"
            before = len(eth.orders())
            ctl(sim.base_url, "resume", {"symbol": "ETHUSDT"})
            wait_for(lambda: len(eth.orders()) >= before + 2 and _settled(eth), 120, "the ETH bot to trade on")
            ctl(sim.base_url, "pause")
            wait_for(lambda: _settled(eth), 30, "orders to settle")
            fills = eth.fills_per_order()
            assert len(fills) >= before + 2 and all(n >= 1 for n in fills.values()), \
                "the fills still arrive on the shared stream"
        finally:
            for bot in (btc, eth):
                if bot.proc is not None and bot.proc.poll() is None:
                    assert bot.stop() == 0
        assert ctl(sim.base_url, "state")["listen_keys_deleted"] == 0
        requests = ctl(sim.base_url, "requests")
        assert not [r for r in requests if r["method"] == "DELETE" and "listenKey" in r["path"]]
        assert "did not cause" not in btc.log_text() and "ETHUSDT" not in btc.log_text()
        assert eth.log_text().count("did not cause: ") == 1  # the outside close, nothing of BTCUSDT
