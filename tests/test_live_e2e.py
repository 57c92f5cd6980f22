"""End to end, live mode, fast markets: the real ``python bollmin.py run`` against the simulated
exchange with order latency, bursts, rate limits, the user-data stream and outside changes.

The central promise: on the same ticks, the orders that reach the exchange are exactly the
orders ``backtest`` decides — side, reduceOnly, quantity and order — however fast the ticks come.
"""

from __future__ import annotations

import csv
import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from support.bot import Bot, query, wait_for
from support.catcher import TOKEN, Catcher
from support.paths import MARKET_1M, ROOT
from support.sim import API_KEY, API_SECRET, ctl, running_sim

from simexchange import SimExchangeThread
from state import POSITION, State

pytestmark = pytest.mark.e2e

HISTORY = 19  # closed candles before the first streamed one: the window is ready at the first tick


def _slice(tmp_path, candles: int, skip: int = 0) -> str:
    """The first ``HISTORY + candles`` rows of the bundled 1m data (after ``skip`` rows) as a CSV."""
    rows = []
    with gzip.open(MARKET_1M, "rt") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for i, row in enumerate(reader):
            if i < skip:
                continue
            if len(rows) >= HISTORY + candles:
                break
            rows.append(row)
    path = tmp_path / f"slice_{skip}_{candles}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _backtest_orders(slice_path: str, config: str, tmp_path) -> list[tuple[str, bool, float]]:
    """(side, reduceOnly, quantity) of every order ``backtest`` decides on the file, in order."""
    bt_db = tmp_path / "backtest.db"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "backtest", "--klines", slice_path,
                          "--db", str(bt_db), "--config", config], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [(r["side"], bool(r["reduce_only"]), round(r["qty"], 3))
            for r in query(str(bt_db), "SELECT side, reduce_only, qty FROM orders ORDER BY id")]


def _exchange_orders(sim) -> list[tuple[str, bool, float]]:
    return [(o["side"], o["reduceOnly"], round(float(o["origQty"]), 3)) for o in ctl(sim.base_url, "orders")]


def _settled(bot: Bot) -> bool:
    return not query(bot.db, "SELECT id FROM orders WHERE status IN ('pending','sent','unknown')")


def _run_to_the_end(sim, bot: Bot, last_tick_ms: int, timeout: float = 240) -> None:
    wait_for(lambda: ctl(sim.base_url, "state")["finished"], timeout, "the replay to finish")
    bot.wait_status(lambda s: s.get("price_time_ms") == str(last_tick_ms), 120, "the bot to see the last tick")
    bot.wait_status(lambda s: s.get("order_backlog") == "0", 120, "the executor to catch up")
    wait_for(lambda: _settled(bot), 60, "every order to settle")


@pytest.fixture
def sim():
    """A paused exchange replaying the bundled 1m data, 60 candles of history."""
    with running_sim(speed=600) as s:
        yield s


def _live_bot(sim, tmp_path, **settings) -> Bot:
    """A live bot, connected to both streams."""
    bot = Bot(str(tmp_path), sim.base_url, sim.ws_url, paper=False, **settings).start()
    bot.wait_connected()
    bot.wait_status(lambda s: s.get("user_stream") == "connected", 30, "the user-data stream")
    return bot


def _quiet_with_a_position(sim, bot: Bot) -> None:
    """Trade until a position is open, then stop the market with every order settled."""
    ctl(sim.base_url, "resume")
    bot.wait_status(lambda s: abs(float(s.get("position_qty") or 0)) > 0, 90, "an open position")
    ctl(sim.base_url, "pause")
    wait_for(lambda: _settled(bot), 30, "orders to settle")
    time.sleep(0.5)


@pytest.mark.parametrize("pacing", [
    pytest.param({"speed": 4500}, id="300-ticks-per-s"),
    pytest.param({"burst": {"ticks": 150, "every_ms": 500}}, id="bursts-of-150"),
])
def test_fast_market_live_orders_equal_the_backtest_one_by_one(tmp_path, pacing):
    """≥ 300 ticks/s (1m candles at 4500× real time: 4 ticks per 60 s of data) with every order
    answered 20 ms after it executes; and the same ticks in bursts of 150 back to back."""
    candles = 1200
    path = _slice(tmp_path, candles)
    with SimExchangeThread(path, paused=True, history_candles=HISTORY, target_interval="1m", speed=1,
                           api_key=API_KEY, api_secret=API_SECRET) as sim:
        ctl(sim.base_url, "order_latency", {"ms": 20})
        bot = Bot(str(tmp_path), sim.base_url, sim.ws_url, paper=False, HISTORY_KLINES=HISTORY,
                  RECONCILE_INTERVAL_SECONDS=5.0).start()
        try:
            bot.wait_connected()
            bot.wait_status(lambda s: s.get("user_stream") == "connected", 30, "the user-data stream")
            if "burst" in pacing:
                ctl(sim.base_url, "burst", pacing["burst"])
            else:
                ctl(sim.base_url, "speed", {"speed": pacing["speed"]})
            started = time.monotonic()
            ctl(sim.base_url, "resume")
            with open(path) as fh:
                last_tick = int(fh.read().splitlines()[-1].split(",")[0]) + 59_999
            _run_to_the_end(sim, bot, last_tick)
            elapsed = time.monotonic() - started
            live = _exchange_orders(sim)
            st = bot.status()
            amt = float(ctl(sim.base_url, "state")["position"]["amt"])
        finally:
            assert bot.stop() == 0
    back = _backtest_orders(path, bot.config, tmp_path)
    assert len(back) > 60, "the slice must make the strategy trade a lot"
    assert live == back, "live orders must equal the backtest's decisions one by one"
    assert candles * 4 / elapsed >= 200, f"the replay must be fast ({candles * 4 / elapsed:.0f} ticks/s)"
    rows = query(bot.db, "SELECT status FROM orders")
    assert [r["status"] for r in rows] == ["filled"] * len(back)
    assert float(st["position_qty"]) == pytest.approx(amt)
    log = bot.log_text()
    assert "RECONCILE" not in log and "not sent" not in log


def test_fees_are_the_commission_the_exchange_charged(sim, tmp_path):
    """The account's rate says 0.05 %, the fills really cost 0.04 % (a discount): the user-data
    stream's commission is what the bot records, for every fill and in its running total."""
    ctl(sim.base_url, "charged_fee_rate", {"rate": "0.0004"})
    bot = _live_bot(sim, tmp_path)
    try:
        ctl(sim.base_url, "resume")
        wait_for(lambda: len(ctl(sim.base_url, "orders")) >= 4, 90, "4 live fills")
        ctl(sim.base_url, "pause")
        wait_for(lambda: _settled(bot), 30, "orders to settle")
        time.sleep(0.5)
        rows = query(bot.db, "SELECT fill_price, filled_qty, fee_usdt FROM orders WHERE status = 'filled'")
        st = bot.status()
    finally:
        assert bot.stop() == 0
    assert len(rows) >= 4
    for r in rows:
        assert r["fee_usdt"] == pytest.approx(round(r["fill_price"] * r["filled_qty"] * 0.0004, 8), abs=1e-8)
    assert float(st["fees_usdt"]) == pytest.approx(sum(r["fee_usdt"] for r in rows), abs=1e-6)


def test_a_429_on_an_order_is_resent_within_retry_after_plus_a_second_and_never_twice(sim, tmp_path):
    bot = _live_bot(sim, tmp_path)
    try:
        ctl(sim.base_url, "rate_limit", {"count": 1, "status": 429, "retry_after": 1, "path": "/fapi/v1/order"})
        ctl(sim.base_url, "resume")
        wait_for(lambda: len(ctl(sim.base_url, "orders")) >= 3, 90, "orders after the 429")
        ctl(sim.base_url, "pause")
        wait_for(lambda: _settled(bot), 30, "orders to settle")
    finally:
        assert bot.stop() == 0
    posts = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order" and r["method"] == "POST"]
    ids = [o["clientOrderId"] for o in ctl(sim.base_url, "orders")]
    limited = [r for r in posts if r["status"] == 429]
    assert len(limited) == 1
    cid = limited[0]["params"]["newClientOrderId"]
    again = [r for r in posts if r["params"]["newClientOrderId"] == cid and r["status"] == 200]
    assert len(again) == 1, "the same intent is sent again once"
    delay_ms = again[0]["time_ms"] - limited[0]["time_ms"]
    assert 1000 <= delay_ms <= 2000, f"resent {delay_ms} ms after the 429 (Retry-After 1 s)"
    assert len(ids) == len(set(ids)), "no client order id executed twice"
    [row] = query(bot.db, "SELECT status FROM orders WHERE client_order_id = ?", (cid,))
    assert row["status"] == "filled"


def test_an_outside_close_in_a_quiet_market_is_seen_within_5_s_and_trading_goes_on(sim, tmp_path):
    bot = _live_bot(sim, tmp_path)
    try:
        _quiet_with_a_position(sim, bot)
        before = len(ctl(sim.base_url, "orders"))
        closed_at = time.monotonic()
        ctl(sim.base_url, "external_order", {})  # the whole position, closed in the Binance app
        st = bot.wait_status(lambda s: float(s.get("position_qty") or 0) == 0 and s.get("state") in (
            "FLAT", "FLAT_ABOVE_UP", "FLAT_BELOW_DN"), 5, "the bot to see the outside close")
        noticed = time.monotonic() - closed_at
        assert POSITION[State(st["state"])] == 0
        ctl(sim.base_url, "resume")
        wait_for(lambda: len(ctl(sim.base_url, "orders")) >= before + 3, 90, "trading to go on")
        ctl(sim.base_url, "pause")
        wait_for(lambda: _settled(bot), 30, "orders to settle")
    finally:
        assert bot.stop() == 0
    rejected = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/order" and r["status"] != 200]
    assert rejected == [], "no order for a position that no longer exists"
    assert noticed < 5
    events = [r["message"] for r in query(bot.db, "SELECT message FROM events WHERE level = 'CRITICAL'")]
    assert any("did not cause" in m for m in events)
    assert any(m.startswith("RECONCILE") for m in events)
    [rec] = query(bot.db, "SELECT * FROM reconciliations")
    assert rec["exchange_qty"] == 0 and rec["stored_qty"] != 0


def test_an_adl_seen_only_as_a_position_update_is_reconciled(sim, tmp_path):
    bot = _live_bot(sim, tmp_path)
    try:
        _quiet_with_a_position(sim, bot)
        ctl(sim.base_url, "set_position", {"amt": "0", "reason": "ADL"})
        bot.wait_status(lambda s: float(s.get("position_qty") or 0) == 0, 5, "the ADL to be adopted")
    finally:
        assert bot.stop() == 0
    assert "user-data stream" in bot.log_text()


def test_listen_key_expiry_and_a_dropped_user_stream_recover_without_a_restart(sim, tmp_path):
    bot = _live_bot(sim, tmp_path)
    try:
        assert ctl(sim.base_url, "state")["listen_keys_created"] == 1
        ctl(sim.base_url, "expire_listen_key")
        wait_for(lambda: ctl(sim.base_url, "state")["listen_keys_created"] == 2
                 and ctl(sim.base_url, "state")["user_clients"] == 1, 30, "a new listenKey and connection")
        ctl(sim.base_url, "drop", {"route": "private"})
        wait_for(lambda: ctl(sim.base_url, "state")["user_clients"] == 1, 30, "the user stream to reconnect")
        # The stream really works again: an outside fill is seen.
        _quiet_with_a_position(sim, bot)
        ctl(sim.base_url, "external_order", {})
        bot.wait_status(lambda s: float(s.get("position_qty") or 0) == 0, 5, "the outside close")
        assert bot.proc.poll() is None, "no restart"
    finally:
        assert bot.stop() == 0
    deletes = [r for r in ctl(sim.base_url, "requests") if r["path"] == "/fapi/v1/listenKey"
               and r["method"] == "DELETE"]
    assert deletes == [], "a bot never deletes the account's listenKey (others may share it)"
    log = bot.log_text()
    assert "listenKey expired" in log
    assert "did not cause" in log


def test_paper_mode_opens_no_user_data_stream(sim, tmp_path):
    bot = Bot(str(tmp_path), sim.base_url, sim.ws_url).start()
    try:
        bot.wait_connected()
        ctl(sim.base_url, "resume")
        time.sleep(2)
        ctl(sim.base_url, "pause")
    finally:
        assert bot.stop() == 0
    paths = {r["path"] for r in ctl(sim.base_url, "requests")}
    assert "/fapi/v1/listenKey" not in paths
    assert ctl(sim.base_url, "state")["user_clients"] == 0


def _empty_wal_and_fill(bot: Bot, filler) -> None:
    """Empty the bot's WAL (a TRUNCATE checkpoint) and fill the disk while the bot is stopped
    (SIGSTOP), so that nothing it writes in between finds room again."""
    pid = bot.proc.pid
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        try:
            conn = sqlite3.connect(bot.db, timeout=0.2)
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError:  # stopped inside a write: let it finish
                busy = 1
            finally:
                conn.close()
            if not busy and os.path.getsize(bot.db + "-wal") == 0:
                subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
                return
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("could not empty the bot's WAL")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root; CI runs as root)")
def test_a_full_disk_while_trading_sends_late_closes_but_no_stale_entry(sim, tmp_path):
    """Orders are recorded before they are sent, so a full disk stops them; when space returns,
    a close decided meanwhile still goes out (late, loudly), an entry that went stale does not.

    SQLite reuses the WAL's space once a checkpoint has copied it into the file, so the disk is
    filled with the WAL emptied first (``_empty_wal_and_fill``): the bot's next write needs
    space it cannot get."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    bot = Bot(str(tmp_path), sim.base_url, sim.ws_url, paper=False, DB_PATH=str(disk / "bot.db"),
              MAX_ENTRY_DELAY_SECONDS=2.0)
    bot.db = str(disk / "bot.db")
    try:
        bot.start()
        try:
            bot.wait_connected()
            _quiet_with_a_position(sim, bot)
            posts_before = len(ctl(sim.base_url, "orders"))
            filler = disk / "filler"
            _empty_wal_and_fill(bot, filler)
            ctl(sim.base_url, "step", {"ticks": 400})  # the market moves on: decisions pile up
            time.sleep(4)  # longer than MAX_ENTRY_DELAY_SECONDS
            assert len(ctl(sim.base_url, "orders")) == posts_before, "nothing goes out unrecorded"
            assert "database busy or full" in bot.log_text()
            filler.unlink()
            wait_for(lambda: "not sent" in bot.log_text(), 30, "the stale entry to be dropped")
            amt = float(ctl(sim.base_url, "state")["position"]["amt"])
            sign = 0 if amt == 0 else (1 if amt > 0 else -1)
            st = bot.wait_status(lambda s: float(s["position_qty"]) == amt and s["order_backlog"] == "0"
                                 and POSITION[State(s["state"])] == sign and _settled(bot), 30,
                                 "the bot to catch up with the exchange")
            late = ctl(sim.base_url, "orders")[posts_before:]
        finally:
            assert bot.stop() == 0
        recorded = {r["client_order_id"] for r in bot.orders()}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert late and all(o["reduceOnly"] for o in late), "after the outage only closes went out"
    assert {o["clientOrderId"] for o in ctl(sim.base_url, "orders")} <= recorded, "nothing went out unrecorded"
    assert float(st["position_qty"]) == pytest.approx(amt)
    log = bot.log_text()
    assert "closes always go out" in log
    assert "MAX_ENTRY_DELAY_SECONDS" in log


def test_notifications_reach_a_webhook_that_fails_at_first_and_never_slow_trading(sim, tmp_path):
    """Start, fills, an outside close (reconciliation), paused entries, lost market data and the stop
    reach a JSON webhook that fails its first two requests; secrets and the URL's token stay out of
    the logs."""
    catcher = Catcher(fail=2)
    try:
        bot = _live_bot(sim, tmp_path, NOTIFY_URLS=(catcher.url,), WS_STALL_SECONDS=3.0, MAX_ORDER_REJECTS=1)
        try:
            started = catcher.wait(1, timeout=20)
            assert "已启动" in started[0]["title"] and "started" in started[0]["title"]
            _quiet_with_a_position(sim, bot)
            ctl(sim.base_url, "external_order", {})
            ctl(sim.base_url, "reject_orders", {"count": 1000, "code": -2019, "msg": "Margin is insufficient."})
            ctl(sim.base_url, "resume")
            bot.wait_status(lambda s: s.get("entries_paused") == "1", 90, "entries to be paused")
            ctl(sim.base_url, "stall", {"on": True})
            wait_for(lambda: any("行情中断" in b["title"] for b in catcher.delivered), 30, "the data-lost message")
            ctl(sim.base_url, "stall", {"on": False})
            ctl(sim.base_url, "pause")
        finally:
            assert bot.stop() == 0
        wait_for(lambda: any("已停止" in b["title"] for b in catcher.delivered), 15, "the stop message")
        titles = " | ".join(b["title"] for b in catcher.delivered)
        bodies = " | ".join(b["message"] for b in catcher.delivered)
    finally:
        catcher.close()
    for words in ("实盘成交", "对账不一致", "订单被拒", "暂停开仓", "行情中断", "已停止"):
        assert words in titles + bodies, f"no '{words}' message: {titles}"
    assert len(catcher.requests) >= len(catcher.delivered) + 2, "the first two attempts failed and were retried"
    log = bot.log_text()
    assert TOKEN not in log and catcher.url not in log and API_SECRET not in bodies


def test_a_hanging_webhook_never_delays_orders(sim, tmp_path):
    catcher = Catcher(hang=True)
    try:
        bot = _live_bot(sim, tmp_path, NOTIFY_URLS=(catcher.url,))
        try:
            ctl(sim.base_url, "resume")
            wait_for(lambda: len(ctl(sim.base_url, "orders")) >= 4, 90, "4 live fills while the webhook hangs")
            ctl(sim.base_url, "pause")
            wait_for(lambda: _settled(bot), 30, "orders to settle")
            stopping = time.monotonic()
        finally:
            assert bot.stop() == 0
        assert time.monotonic() - stopping < 10, "a hanging webhook must not hold up the stop"
    finally:
        catcher.close()
