"""End to end: the real ``python bollmin.py run`` process against the simulated exchange."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from support.bot import Bot, paper_run_and_backtest, query, wait_for
from support.paths import ROOT
from support.sim import API_KEY, API_SECRET, ctl, running_sim

from state import POSITION, Action, State

pytestmark = pytest.mark.e2e


@pytest.fixture
def sim():
    with running_sim(speed=600) as s:
        yield s


def bot_for(sim, tmp_path, **kw) -> Bot:
    return Bot(str(tmp_path), sim.base_url, sim.ws_url, **kw)


def filled_orders(bot: Bot) -> int:
    return len(query(bot.db, "SELECT id FROM orders WHERE status = 'filled'"))


def settled(bot: Bot) -> bool:
    """No order intent is waiting for an outcome."""
    return not query(bot.db, "SELECT id FROM orders WHERE status IN ('pending','sent','unknown')")


def quiesce(sim, bot: Bot) -> None:
    ctl(sim.base_url, "pause")
    time.sleep(0.5)
    wait_for(lambda: settled(bot), 30, "open intents to settle")


def trade_until(sim, bot: Bot, fills: int, what: str) -> None:
    """Once connected, let the market run until ``fills`` orders filled, then quiesce."""
    bot.wait_connected()
    ctl(sim.base_url, "resume")
    wait_for(lambda: filled_orders(bot) >= fills, 90, what)
    quiesce(sim, bot)


def candle_gaps(bot: Bot) -> list[int]:
    times = [r[0] for r in query(bot.db, "SELECT open_time_ms FROM candles ORDER BY open_time_ms")]
    return [b for a, b in zip(times, times[1:], strict=False) if b - a != 60_000]


def test_paper_mode_records_paper_fills_and_sends_no_order(sim, tmp_path):
    bot = bot_for(sim, tmp_path).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        wait_for(lambda: filled_orders(bot) >= 4, 90, "4 paper fills")
        ctl(sim.base_url, "pause")
    finally:
        assert bot.stop() == 0
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "trades", "--json", "--config",
                          bot.config], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) >= 4
    for r in rows:
        assert r["paper"] is True
        assert {"time_ms", "action", "price", "qty", "fee_usdt", "paper", "client_order_id"} <= set(r)
        assert r["fee_usdt"] == pytest.approx(r["price"] * r["qty"] * 0.0005)
    assert [r["time_ms"] for r in rows] == sorted(r["time_ms"] for r in rows)
    posts = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order"]
    assert posts == [], "paper trading must never send an order"
    assert ctl(sim.base_url, "state")["position"]["amt"] in ("0", "0.000")


def test_live_mode_orders_arrive_with_side_reduce_only_and_quantity(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False).start()
    try:
        trade_until(sim, bot, 6, "6 live fills")
    finally:
        assert bot.stop() == 0
    exchange = {}
    for o in ctl(sim.base_url, "orders"):
        exchange.setdefault(o["clientOrderId"], []).append(o)
    rows = bot.orders()
    assert rows and all(r["paper"] == 0 for r in rows)
    for r in rows:
        [o] = exchange[r["client_order_id"]]  # exactly one order per intent
        action = Action(r["action"])
        assert o["side"] == action.side
        assert o["reduceOnly"] is action.closes
        assert float(o["origQty"]) == pytest.approx(r["qty"])
        assert r["status"] == "filled" and float(o["executedQty"]) == pytest.approx(r["filled_qty"])
    assert set(exchange) == {r["client_order_id"] for r in rows}, "every exchange order is one the bot recorded"
    assert all(n == 1 for n in bot.fills_per_order().values())
    st = bot.status()
    amt = float(ctl(sim.base_url, "state")["position"]["amt"])
    assert float(st["position_qty"]) == pytest.approx(amt)
    assert POSITION[State(st["state"])] == (0 if amt == 0 else (1 if amt > 0 else -1))


def test_parity_run_and_backtest_make_the_same_transitions_on_two_days_of_1m(tmp_path):
    """The same real ticks through `run` (paper) and `backtest`: same transitions at the same ticks."""
    run, backtest = paper_run_and_backtest(tmp_path, 2)
    live, back = run["transitions"], backtest["transitions"]
    assert len(back) > 100
    assert live == back
    live_orders, back_orders = run["orders"], backtest["orders"]
    assert live_orders == back_orders


def test_parity_run_and_backtest_across_candles_the_exchange_does_not_have(tmp_path):
    """An exchange outage leaves holes in its history (no trades, no candle): one in the history the bot
    loads at startup, others during the run. The bot starts, its window spans each hole as backtest's
    does on the same file, and both make the same transitions at the same ticks."""
    drop = {7, 8, 300, 301, 302, 1100}
    run, backtest = paper_run_and_backtest(tmp_path, 1, drop=drop)
    live, back = run["transitions"], backtest["transitions"]
    assert len(back) > 50
    assert live == back
    assert run["orders"] == backtest["orders"]


def test_ws_drop_stall_and_server_cut_reconnect_and_backfill(sim, tmp_path):
    bot = bot_for(sim, tmp_path, WS_STALL_SECONDS=3.0).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        ctl(sim.base_url, "speed", {"speed": 120})
        bot.wait_status(lambda s: int(s.get("messages") or 0) > 20, 30, "messages")
        ctl(sim.base_url, "drop")
        bot.wait_status(lambda s: int(s.get("reconnects") or 0) >= 1 and s.get("connection") == "connected", 60,
                        "a reconnect after the drop")
        ctl(sim.base_url, "stall", {"on": True})
        bot.wait_status(lambda s: int(s.get("reconnects") or 0) >= 2, 60, "the stall to be detected")
        time.sleep(2)  # candles pass while the stream is silent
        ctl(sim.base_url, "stall", {"on": False})
        bot.wait_status(lambda s: s.get("connection") == "connected", 60, "a reconnect after the stall")
        before = int(bot.status()["reconnects"])
        ctl(sim.base_url, "max_conn_age", {"seconds": 2})
        bot.wait_status(lambda s: int(s.get("reconnects") or 0) > before, 60, "a reconnect after the server cut")
        ctl(sim.base_url, "max_conn_age", {"seconds": None})
        bot.wait_status(lambda s: s.get("connection") == "connected", 60, "connected again")
        time.sleep(1)
        ctl(sim.base_url, "pause")
    finally:
        assert bot.stop() == 0
    assert candle_gaps(bot) == [], "candles missed while disconnected must be backfilled"
    log = bot.log_text()
    assert "silent for 3s" in log
    assert "closed by the server" in log


def test_proactive_reconnect_before_the_24h_cut(sim, tmp_path):
    bot = bot_for(sim, tmp_path, WS_MAX_AGE_HOURS=0.001).start()  # 3.6 s stands in for 23 h
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        bot.wait_status(lambda s: int(s.get("reconnects") or 0) >= 1, 60, "a proactive reconnect")
    finally:
        assert bot.stop() == 0
    assert "before the exchange's 24 h cut" in bot.log_text()


def test_rest_faults_during_orders_never_duplicate(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "fail_orders", {"count": 2, "mode": "after", "status": 503})
        ctl(sim.base_url, "resume")
        wait_for(lambda: filled_orders(bot) >= 4, 90, "4 live fills")
        quiesce(sim, bot)
    finally:
        assert bot.stop() == 0
    ids = [o["clientOrderId"] for o in ctl(sim.base_url, "orders")]
    assert len(ids) == len(set(ids)), "no client order id may execute twice"
    assert all(n == 1 for n in bot.fills_per_order().values())
    assert "outcome unknown" in bot.log_text()


def test_restart_in_the_middle_of_a_candle_resumes_state_and_backfills(sim, tmp_path):
    bot = bot_for(sim, tmp_path).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        bot.wait_status(lambda s: s.get("state") not in (None, "FLAT") and float(s.get("position_qty") or 0) != 0,
                        90, "an open position")
        ctl(sim.base_url, "pause")
        sim_state = ctl(sim.base_url, "state")
        if sim_state["tick_in_candle"] in (0, 3):
            ctl(sim.base_url, "step", {"ticks": 2})
        time.sleep(1.5)
    finally:
        assert bot.stop() == 0
    before = bot.status()
    ctl(sim.base_url, "step", {"ticks": 4 * 5})  # five candles pass while the bot is down
    bot.start()
    try:
        bot.wait_connected()
        after = bot.status()
        assert after["state"] == before["state"]
        assert float(after["position_qty"]) == pytest.approx(float(before["position_qty"]))
        ctl(sim.base_url, "resume")
        time.sleep(2)
        ctl(sim.base_url, "pause")
    finally:
        assert bot.stop() == 0
    assert candle_gaps(bot) == []
    assert "loaded" in bot.log_text()


def test_sigterm_exits_zero_within_ten_seconds(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False).start()
    bot.wait_connected()
    ctl(sim.base_url, "resume")
    time.sleep(1)
    started = time.monotonic()
    assert bot.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert bot.status()["connection"] == "stopped"


def test_startup_reconciles_with_the_exchange_position(sim, tmp_path):
    ctl(sim.base_url, "set_position", {"amt": "0.005", "entry_price": "95000.0"})
    bot = bot_for(sim, tmp_path, paper=False).start()
    try:
        st = bot.wait_status(lambda s: s.get("state") == "LONG", 60, "the exchange's long to be adopted")
        assert float(st["position_qty"]) == pytest.approx(0.005)
        assert float(st["entry_price"]) == pytest.approx(95000.0)
    finally:
        assert bot.stop() == 0
    events = [r["message"] for r in query(bot.db, "SELECT message FROM events")]
    assert any("RECONCILE" in m and "adopting LONG" in m for m in events)
    [tr] = query(bot.db, "SELECT * FROM transitions WHERE cause = 'reconcile'")
    assert (tr["from_state"], tr["to_state"]) == ("FLAT", "LONG")


def test_exchange_flat_means_flat_here(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        bot.wait_status(lambda s: float(s.get("position_qty") or 0) != 0, 90, "a position")
        quiesce(sim, bot)
    finally:
        assert bot.stop() == 0
    ctl(sim.base_url, "set_position", {"amt": "0"})  # someone closed it by hand on the exchange
    bot.start()
    try:
        st = bot.wait_status(lambda s: s.get("state") == "FLAT" and float(s.get("position_qty") or 0) == 0, 60,
                             "FLAT after the exchange went flat")
        assert st["state"] == "FLAT"
    finally:
        assert bot.stop() == 0


def test_hedge_mode_account_exits_3_with_a_clear_message(sim, tmp_path):
    ctl(sim.base_url, "hedge_mode", {"on": True})
    bot = bot_for(sim, tmp_path, paper=False).start()
    assert bot.wait(60) == 3
    assert "hedge mode" in bot.stderr_tail()
    assert "Traceback" not in bot.stderr_tail()
    assert "Unclosed" not in bot.stderr_tail(), "the REST session is closed on the way out"


def test_a_refused_api_key_exits_3_with_one_clear_line(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False, API_SECRET="not-the-secret-of-this-key").start()
    assert bot.wait(60) == 3
    tail = bot.stderr_tail()
    assert "refused the API key" in tail and "Traceback" not in tail and "Unclosed" not in tail, tail
    assert "not-the-secret-of-this-key" not in tail + bot.log_text()


def test_config_error_exits_2_and_is_never_restarted(tmp_path):
    cfg = tmp_path / "bad.py"
    cfg.write_text("AUTO_RESTART = True\nBOLL_PERIOD = 'twenty'\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "BOLL_PERIOD" in out.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("point", ["after_intent", "after_send", "after_reply"])
def test_kill_9_at_any_point_of_an_order_gives_exactly_one_fill(sim, tmp_path, point):
    bot = bot_for(sim, tmp_path, paper=False)
    bot.start(extra_env={"BOLLMIN_FAULT": point})
    bot.wait_connected()
    ctl(sim.base_url, "resume")
    assert bot.wait(90) == -9, "the fault point must have killed the bot"
    ctl(sim.base_url, "pause")
    [pending] = query(bot.db, "SELECT * FROM orders WHERE status IN ('pending','unknown')")
    on_exchange = [o for o in ctl(sim.base_url, "orders") if o["clientOrderId"] == pending["client_order_id"]]
    assert len(on_exchange) == (0 if point == "after_intent" else 1)
    bot.start()
    try:
        wait_for(lambda: settled(bot), 60, "the unfinished intent to be resolved")
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        wait_for(lambda: filled_orders(bot) >= 3, 90, "trading to go on")
        quiesce(sim, bot)
    finally:
        assert bot.stop() == 0
    ids = [o["clientOrderId"] for o in ctl(sim.base_url, "orders")]
    assert len(ids) == len(set(ids))
    assert ids.count(pending["client_order_id"]) == 1
    assert bot.fills_per_order() and all(n == 1 for n in bot.fills_per_order().values())
    st = bot.status()
    amt = float(ctl(sim.base_url, "state")["position"]["amt"])
    assert float(st["position_qty"]) == pytest.approx(amt)
    assert POSITION[State(st["state"])] == (0 if amt == 0 else (1 if amt > 0 else -1))


def test_auto_restart_supervisor_restarts_after_a_crash(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False, AUTO_RESTART=True)
    bot.start(extra_env={"BOLLMIN_FAULT": "after_send"})
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        # The child kills itself at the first order; the supervisor restarts it (with the same
        # environment, so it dies again at its next order) — at least two children must have run.
        wait_for(lambda: bot.log_text().count("AUTO_RESTART: restarting") >= 1, 60,
                 "the supervisor to restart the bot")
        ctl(sim.base_url, "pause")
    finally:
        assert bot.stop() == 0
    ids = [o["clientOrderId"] for o in ctl(sim.base_url, "orders")]
    assert len(ids) == len(set(ids))


def test_secrets_never_in_logs_db_or_output(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False, LOG_LEVEL="DEBUG").start()
    try:
        trade_until(sim, bot, 2, "2 live fills")
    finally:
        assert bot.stop() == 0
    blobs = [bot.log_text(), bot.stderr_tail(10_000)]
    blobs += [json.dumps([tuple(r) for r in query(bot.db, f"SELECT * FROM {t}")])
              for t in ("orders", "events", "status", "transitions", "fills")]
    for blob in blobs:
        assert API_SECRET not in blob
        assert API_KEY not in blob


def test_repeated_rejected_entries_pause_new_entries_with_a_reason(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False, MAX_ORDER_REJECTS=2)
    bot.start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "reject_orders", {"count": 1000, "code": -2019, "msg": "Margin is insufficient."})
        ctl(sim.base_url, "resume")
        st = bot.wait_status(lambda s: s.get("entries_paused") == "1", 90, "entries to be paused")
        assert "rejected" in st["pause_reason"] and "-2019" in st["pause_reason"]
        posts_at_pause = len([r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order"])
        time.sleep(3)  # the market goes on crossing the bands
        ctl(sim.base_url, "pause")
        posts_later = len([r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order"])
        assert posts_later == posts_at_pause, "no new entry may be sent while entries are paused"
        assert bot.status()["state"] == "FLAT" or float(bot.status()["position_qty"]) == 0
    finally:
        assert bot.stop() == 0
    rows = bot.orders()
    assert [r["status"] for r in rows] == ["rejected", "rejected"]
    assert any(r["cause"] == "paused" for r in query(bot.db, "SELECT cause FROM transitions"))
    # The flag survives a restart.
    bot.start()
    try:
        st = bot.wait_connected()
        assert st["entries_paused"] == "1"
    finally:
        assert bot.stop() == 0


def test_a_failed_close_never_sends_the_open_of_a_reversal(sim, tmp_path):
    bot = bot_for(sim, tmp_path, paper=False)
    bot.start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        bot.wait_status(lambda s: float(s.get("position_qty") or 0) != 0, 90, "a position")
        ctl(sim.base_url, "reject_orders", {"count": 1000, "code": -2019, "msg": "Margin is insufficient."})
        wait_for(lambda: query(bot.db, "SELECT id FROM orders WHERE status = 'rejected' AND reduce_only = 1"), 90,
                 "a rejected close")
        quiesce(sim, bot)
    finally:
        assert bot.stop() == 0
    rows = bot.orders()
    failed_closes = {r["transition_id"] for r in rows if r["reduce_only"] and r["status"] == "rejected"}
    opens_after = [r for r in rows if not r["reduce_only"] and r["transition_id"] in failed_closes]
    assert failed_closes and opens_after == []
    posts = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order" and r["method"] == "POST"]
    assert len(posts) == len(rows), "every order sent is an intent recorded first, and each is sent once"
    st = bot.status()
    amt = float(ctl(sim.base_url, "state")["position"]["amt"])
    assert POSITION[State(st["state"])] == (0 if amt == 0 else (1 if amt > 0 else -1))
    assert float(st["position_qty"]) == pytest.approx(amt)
