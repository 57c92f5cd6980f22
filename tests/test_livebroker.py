"""Exactly-once live orders: python-binance really talking HTTP to the simulated exchange."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest
from support.sim import API_KEY, API_SECRET, ctl, running_sim

import store as db
from broker import Ledger, OrderSizeError, order_qty, record_transition
from config import load_config
from engine import Transition
from exchange import AccountSetupError, Exchange
from indicators import Bands
from livebroker import OrderDriver, new_intent, write_intent
from state import Action, Order, Reason, State


@pytest.fixture
def sim():
    with running_sim(history_candles=100) as s:
        yield s


def _cfg(sim, tmp_path, **extra):
    return load_config(None, env={}).replace(
        PAPER_TRADING=False, API_KEY=API_KEY, API_SECRET=API_SECRET, REST_BASE_URL=sim.base_url,
        WS_BASE_URL=sim.ws_url, DB_PATH=str(tmp_path / "bot.db"), REST_TIMEOUT_SECONDS=1.0, **extra)


class Rig:
    """An Exchange + OrderDriver + DB writer inside one event loop."""

    def __init__(self, cfg, recv_window_ms: int = 1000) -> None:
        self.cfg = cfg
        self.writer = db.Writer(cfg.DB_PATH)
        self.ex = Exchange(cfg)
        self.ex.client.REQUEST_RECVWINDOW = recv_window_ms  # short, so "never executed" is proven quickly
        self.ledger = Ledger()
        self.events: list[tuple[str, str]] = []
        self.sleeps: list[float] = []
        db_id = self.writer.submit(lambda s: db.read_status(s.conn)["db_id"]).result()
        self.db_id = db_id
        self.tid = 0
        self.broker = OrderDriver(self.ex, self.submit, self.post, self.ledger, symbol=cfg.SYMBOL,
                                  on_event=lambda lvl, msg: self.events.append((lvl, msg)), sleep=self._sleep)

    async def _sleep(self, s: float) -> None:
        self.sleeps.append(s)
        await asyncio.sleep(s)

    async def submit(self, fn, *a, **k):
        return await asyncio.wrap_future(self.writer.submit(fn, *a, urgent=True, **k))

    def post(self, fn, *a, **k):
        self.writer.post(fn, *a, urgent=True, **k)

    async def setup(self):
        await self.ex.sync_time()
        await self.ex.load_rules()

    async def order(self, action: Action, reason: Reason = Reason.ENTRY, price: float = 95000.0):
        tr = Transition(1746376380000, State.FLAT_BELOW_DN, State.LONG, price, Bands(1, 1, 1),
                        (Order(action, reason),))
        if action.closes:  # closing: the held quantity, or a small reduce-only order when nothing is held
            qty = self.ex.rules.floor_qty(Decimal(repr(abs(self.ledger.qty)))) or Decimal("0.002")
        else:
            qty = order_qty(self.cfg.TRADE_AMOUNT_USDT, price, self.ex.rules)
        self.tid += 1
        intent = new_intent(self.db_id, self.tid, action, reason, qty, price, tr.time_ms)
        await self.submit(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=False,
                          ledger=None, transition_id=self.tid)
        await self.submit(write_intent, intent, symbol=self.cfg.SYMBOL)
        return await self.broker.complete(intent)

    async def close(self):
        await self.ex.close()
        self.writer.close()


def run(cfg, body, **kw):
    async def main():
        rig = Rig(cfg, **kw)
        try:
            await rig.setup()
            return await body(rig)
        finally:
            await rig.close()

    return asyncio.run(main())


def fills(cfg) -> dict[str, int]:
    conn = db.connect_readonly(cfg.DB_PATH)
    try:
        rows = conn.execute("SELECT o.client_order_id, o.status, count(f.id) FROM orders o "
                            "LEFT JOIN fills f ON f.order_id = o.id GROUP BY o.id").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        conn.close()


def exchange_orders(sim, cid: str) -> list[dict]:
    return [o for o in ctl(sim.base_url, "orders") if o["clientOrderId"] == cid]


def order_posts(sim) -> list[dict]:
    return [r for r in ctl(sim.base_url, "requests") if r["method"] == "POST" and r["path"] == "/fapi/v1/order"]


def test_signing_test_vector():
    from binance.async_client import AsyncClient

    async def sig():
        client = AsyncClient("k", "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9")
        try:
            return client._hmac_signature("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
                                          "&recvWindow=5000&timestamp=1591702613943")
        finally:
            await client.close_connection()

    assert asyncio.run(sig()) == "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


def test_market_order_fills_once_with_deterministic_client_id(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    res = run(cfg, lambda rig: rig.order(Action.OPEN_LONG))
    assert res.status == "filled"
    cid = res.intent.client_order_id
    assert cid.startswith("bm-") and len(cid) <= 36
    [o] = exchange_orders(sim, cid)
    assert o["side"] == "BUY" and o["type"] == "MARKET" and o["reduceOnly"] is False
    assert Decimal(o["origQty"]) == order_qty(cfg.TRADE_AMOUNT_USDT, float(ctl(sim.base_url, "state")["price"]),
                                              Exchange(cfg).rules)
    assert fills(cfg) == {cid: ("filled", 1)}
    assert ctl(sim.base_url, "state")["position"]["amt"] == o["executedQty"]


def test_503_after_execution_is_resolved_by_query_to_exactly_one_fill(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    ctl(sim.base_url, "fail_orders", {"count": 1, "mode": "after", "status": 503})
    res = run(cfg, lambda rig: rig.order(Action.OPEN_SHORT))
    assert res.status == "filled"
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1
    assert len(order_posts(sim)) == 1, "an unknown outcome must be queried, never resent blind"
    assert fills(cfg)[res.intent.client_order_id] == ("filled", 1)


def test_minus_1007_timeout_is_an_unknown_outcome(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    ctl(sim.base_url, "fail_orders", {"count": 1, "mode": "after", "status": 503, "code": -1007})
    res = run(cfg, lambda rig: rig.order(Action.OPEN_LONG))
    assert res.status == "filled" and len(order_posts(sim)) == 1
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1


def test_503_before_execution_is_sent_again_only_after_proof_it_never_executed(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    ctl(sim.base_url, "fail_orders", {"count": 1, "mode": "before", "status": 503})

    async def body(rig):
        res = await rig.order(Action.OPEN_LONG)
        return res, rig.ex.server_time_ms()

    res, _ = run(cfg, body)
    assert res.status == "filled"
    posts = order_posts(sim)
    assert len(posts) == 2  # the lost one, then one more once the exchange provably never ran it
    log = [(r["method"], r["path"]) for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order"]
    assert log[:2] == [("POST", "/fapi/v1/order"), ("GET", "/fapi/v1/order")], "look it up before resending"
    assert log[-1] == ("POST", "/fapi/v1/order")
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1
    assert fills(cfg)[res.intent.client_order_id] == ("filled", 1)


def test_client_timeout_with_late_execution_gives_one_fill(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)  # REST timeout 1 s; the exchange answers after 2.5 s but executes

    async def body(rig):
        ctl(sim.base_url, "delay", {"ms": 2500, "count": 1})  # armed after setup: it hits the order
        return await rig.order(Action.OPEN_LONG)

    res = run(cfg, body)
    assert res.status == "filled"
    assert len(order_posts(sim)) == 1
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1
    assert fills(cfg)[res.intent.client_order_id] == ("filled", 1)


def test_definite_rejection_is_recorded_and_not_retried(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    ctl(sim.base_url, "reject_orders", {"count": 1, "code": -2019, "msg": "Margin is insufficient."})
    rig_events = []

    async def body(rig):
        res = await rig.order(Action.OPEN_LONG)
        rig_events.extend(rig.events)
        return res

    res = run(cfg, body)
    assert res.status == "rejected" and res.error.code == -2019
    assert len(order_posts(sim)) == 1
    assert fills(cfg)[res.intent.client_order_id] == ("rejected", 0)
    assert any(level == "ERROR" and "-2019" in msg for level, msg in rig_events)


@pytest.mark.parametrize("status,retry_after,action", [(429, 2, Action.OPEN_LONG), (418, 1, Action.OPEN_SHORT)],
                         ids=["429", "418-ban"])
def test_rate_limit_waits_retry_after_then_resolves_without_duplicate(sim, tmp_path, status, retry_after, action):
    cfg = _cfg(sim, tmp_path)
    ctl(sim.base_url, "rate_limit", {"count": 1, "status": status, "retry_after": retry_after})
    slept = []

    async def body(rig):
        res = await rig.order(action)
        slept.extend(rig.sleeps)
        return res

    res = run(cfg, body)
    assert res.status == "filled"
    assert slept and slept[0] >= retry_after, "Retry-After must be honoured"
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1


def test_minus_1021_resyncs_the_clock_and_sends_again(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    events = []

    async def body(rig):
        ctl(sim.base_url, "time_skew", {"ms": 30000})  # our offset is now 30 s stale
        res = await rig.order(Action.OPEN_LONG)
        events.extend(rig.events)
        return res, rig.ex.offset_ms

    res, offset = run(cfg, body)
    assert res.status == "filled"
    assert offset > 25000
    assert any("-1021" in msg for _, msg in events)
    assert len(exchange_orders(sim, res.intent.client_order_id)) == 1


def test_reduce_only_close_without_position_is_rejected_minus_2022(sim, tmp_path):
    cfg = _cfg(sim, tmp_path)
    res = run(cfg, lambda rig: rig.order(Action.CLOSE_LONG, Reason.STOP_LOSS))
    assert res.status == "rejected" and res.error.code == -2022
    [post] = order_posts(sim)
    assert post["params"]["reduceOnly"] == "true"


def test_hedge_mode_account_gets_a_clear_refusal(sim, tmp_path):
    ctl(sim.base_url, "hedge_mode", {"on": True})

    async def body(rig):
        with pytest.raises(AccountSetupError, match="hedge mode"):
            await rig.ex.check_account()

    run(_cfg(sim, tmp_path), body)


def test_bad_api_key_gets_a_clear_refusal(sim, tmp_path):
    cfg = _cfg(sim, tmp_path).replace(API_KEY="wrong-key")

    async def body(rig):
        with pytest.raises(AccountSetupError, match="refused the API key"):
            await rig.ex.check_account()

    run(cfg, body)


def test_leverage_is_set_at_start(sim, tmp_path):
    cfg = _cfg(sim, tmp_path, LEVERAGE=7)
    run(cfg, lambda rig: rig.ex.check_account())
    assert ctl(sim.base_url, "state")["leverage"] == 7


def test_position_read_back_and_filters(sim, tmp_path):
    ctl(sim.base_url, "set_position", {"amt": "-0.004", "entry_price": "95100.0"})

    async def body(rig):
        return await rig.ex.position(), rig.ex.rules

    (amt, entry), rules = run(_cfg(sim, tmp_path), body)
    assert amt == Decimal("-0.004") and entry == 95100.0
    assert rules.step == Decimal("0.001") and rules.min_notional == Decimal("100")


def test_entry_below_min_notional_is_refused_before_sending(sim, tmp_path):
    cfg = _cfg(sim, tmp_path, TRADE_AMOUNT_USDT=50.0)

    async def body(rig):
        with pytest.raises(OrderSizeError, match="minimum"):
            await rig.order(Action.OPEN_LONG)

    run(cfg, body)
    assert order_posts(sim) == []


def test_secret_never_reaches_the_exchange_log(sim, tmp_path):
    run(_cfg(sim, tmp_path), lambda rig: rig.order(Action.OPEN_LONG))
    assert API_SECRET not in str(ctl(sim.base_url, "requests"))
    assert not os.path.exists(str(tmp_path / "logs"))
