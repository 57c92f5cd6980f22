"""What the dashboard shows, from real SQLite files: the read helpers in store.py, the alert
banners, the equity curve and PnL per day, the strategy lab (with and without sweep tables), the
texts, and the status cache."""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest
from support.dbs import add_sweep
from support.paths import ROOT

import config
import dashboard
import dashboard_data as dd
import store

DAY = 86_400_000


def cfg(**changes) -> config.Config:
    return config.load_config(env={}).replace(**changes)


def client(path: str, **changes):
    return dashboard.create_app(cfg(**changes), db_path=path, testing=True).test_client()


def status_of(path: str, lang: str = "zh") -> dict:
    c = client(path)
    c.set_cookie("lang", lang)
    return c.get("/api/status").get_json()


def kinds(status: dict) -> list[str]:
    return [a["kind"] for a in status["alerts"]]


# ---- one list of commands ------------------------------------------------------------------------------

def test_the_command_type_is_the_schemas_list(tmp_path):
    path = str(tmp_path / "c.db")
    store.Store(path).close()
    sql = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name = 'commands'").fetchone()[0]
    allowed = re.search(r"command IN \(([^)]*)\)", sql).group(1)
    assert [x.strip(" '") for x in allowed.split(",")] == [str(c) for c in store.Command]
    assert store.add_command(path, store.Command.PAUSE) == 1 and store.add_command(path, "resume") == 2
    with pytest.raises(ValueError, match="unknown command"):
        store.add_command(path, "explode")


# ---- alerts -------------------------------------------------------------------------------------------------

def test_no_alert_for_a_healthy_running_bot(dashboard_db):
    s = status_of(dashboard_db[0])
    assert s["bot"] == "running" and s["alerts"] == []


def test_reconciliation_mismatch_from_the_events_with_the_tables_detail(dashboard_db):
    path, _ = dashboard_db
    now = store.now_ms()
    db = store.Store(path)
    db.add_event("CRITICAL", "RECONCILE (reconnect): stored state SHORT (position -0.012) but the exchange holds "
                 "nothing", now - 3_600_000)
    db.add_event("CRITICAL", "RECONCILE (startup): an old one", now - 2 * DAY)  # older than a day: not shown
    db.add_event("CRITICAL", "bot crashed: not a reconciliation", now - 1000)
    db.add_event("WARNING", "RECONCILE (startup): position size differs", now - 1000)  # not a mismatch of state
    db.close()
    s = status_of(path)
    rec = [a for a in s["alerts"] if a["kind"] == "reconcile"]
    assert len(rec) == 1 and rec[0]["level"] == "bad" and rec[0]["id"].startswith("reconcile-")
    assert "对账发现持仓不一致" in rec[0]["text"] and "RECONCILE (reconnect)" in rec[0]["text"]
    assert "本地" not in rec[0]["text"]  # no reconciliations table: the event text alone
    # With the structured row the bot also writes (reconciliations), the detail is attached.
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO reconciliations(time_ms, why, stored_qty, exchange_qty, exchange_entry_price,"
                 " stored_state, adopted_state, rule) VALUES (?,?,?,?,?,?,?,?)",
                 (now - 3_600_000 + 40, "reconnect", -0.012, 0.0, None, "SHORT", "FLAT", "exchange"))
    conn.commit()
    conn.close()
    rec = [a for a in status_of(path, "en")["alerts"] if a["kind"] == "reconcile"]
    assert "stored -0.012 · exchange 0 · adopted FLAT (rule exchange)" in rec[0]["text"]


def test_paused_entries_offer_resume(dashboard_db_factory):
    path, _ = dashboard_db_factory("p.db", status={"entries_paused": "1", "pause_reason": "3 rejected orders"})
    s = status_of(path)
    paused = [a for a in s["alerts"] if a["kind"] == "paused"]
    assert paused == [{"kind": "paused", "level": "warn", "action": "resume",
                       "text": "已暂停开仓：3 rejected orders。已有持仓不受影响，平仓照常。"}]
    assert s["offered"] == {"pause": False, "resume": True, "close_position": True}
    html = client(path).get("/").get_data(as_text=True)
    assert 'data-kind="paused"' in html and 'action="/control/resume"' in html


def test_stale_market_data_while_the_bot_runs(dashboard_db_factory):
    now = store.now_ms()
    path, _ = dashboard_db_factory("s.db", status={"last_message_ms": now - 45_000, "connection": "reconnecting"})
    s = status_of(path)
    assert kinds(s) == ["stale"] and s["alerts"][0]["level"] == "bad"
    assert re.search(r"已 4\ds 未更新", s["alerts"][0]["text"]) and "重连中" in s["alerts"][0]["text"]
    # Within the stall limit (WS_STALL_SECONDS) there is nothing to say.
    path, _ = dashboard_db_factory("f.db", status={"last_message_ms": now - 20_000})
    assert kinds(status_of(path)) == []


def test_a_bot_that_stopped_writing_its_heartbeat(dashboard_db_factory):
    path, _ = dashboard_db_factory("d.db", heartbeat_ms=store.now_ms() - 125_000,
                                   status={"last_message_ms": store.now_ms() - 400_000})
    s = status_of(path, "en")
    assert kinds(s) == ["dead"]  # not also "stale": the bot is not running at all
    assert re.match(r"The bot's heartbeat stopped 2m \d+s ago", s["alerts"][0]["text"]), s["alerts"]


def test_a_losing_backtest_says_so(dashboard_db_factory):
    lost = {"trades": 40, "win_rate": 0.25, "net_pnl_usdt": -31.5, "max_drawdown_usdt": 44.0}
    path, _ = dashboard_db_factory("bt.db", role="backtest", status={"summary_json": json.dumps(lost)})
    s = status_of(path)
    assert kinds(s) == ["backtest_loss", "backtest"]
    assert "-31.50 USDT" in s["alerts"][0]["text"] and "胜率 25.0%" in s["alerts"][0]["text"]
    won = dict(lost, net_pnl_usdt=12.0)
    path, _ = dashboard_db_factory("bt2.db", role="backtest", status={"summary_json": json.dumps(won)})
    assert kinds(status_of(path)) == ["backtest"]


def test_running_parameters_that_lost_in_the_lab(dashboard_db):
    path, _ = dashboard_db
    sweep = add_sweep(path, periods=(20,), ks=(2.0,), train_fraction=None, equity=False)
    (rid, _, _, net), = sweep["results"]
    s = status_of(path)
    assert s["lab"] is True
    if net < 0:
        assert kinds(s) == ["params_loss"] and s["alerts"][0]["id"] == f"lab-{sweep['run_id']}-{rid}"
        assert f"{net:+,.2f} USDT" in s["alerts"][0]["text"]
    # Other parameters than the running ones: no alert about them on the overview.
    assert kinds(status_of(path)) == (["params_loss"] if net < 0 else [])
    assert "params_loss" not in kinds(client(path, BOLL_PERIOD=21).get("/api/status").get_json())


def test_alert_order_is_worst_first():
    snap = {"db": "ok", "status": {"heartbeat_ms": "1", "entries_paused": "1", "mode": "BACKTEST",
                                   "summary_json": json.dumps({"net_pnl_usdt": -1})},
            "reconciliations": [{"id": 1, "time_ms": 0, "message": "RECONCILE x"}]}
    s = dd.derive_status(snap, cfg(), 10_000)
    levels = [a["level"] for a in dd.page_alerts(s, snap, cfg(), "en", "x.db")]
    assert levels == sorted(levels, key=["bad", "warn", "info"].index) and levels[0] == "bad"


# ---- equity curve and PnL per day ----------------------------------------------------------------------------

def _order(db, cid, t, action, paper, price, pnl=None, fee=0.1, status="filled"):
    db.add_order(client_order_id=cid, transition_id=None, time_ms=t, symbol="BTCUSDT", action=action,
                 reason="entry" if action.startswith("open") else "take_profit",
                 side="BUY" if action in ("open_long", "close_short") else "SELL", qty=0.01,
                 reduce_only=action.startswith("close"), paper=paper, tick_price=price)
    db.update_order(cid, status=status, fill_price=price if status == "filled" else None,
                    filled_qty=0.01 if status == "filled" else None, fee_usdt=fee if status == "filled" else None,
                    realized_pnl_usdt=pnl)


def test_equity_and_daily_pnl_paper_and_live_apart(tmp_path):
    path = str(tmp_path / "pnl.db")
    day = 1_700_006_400_000 // DAY * DAY  # 00:00 UTC
    db = store.Store(path)
    with db.transaction():
        _order(db, "p1", day + 1000, "open_long", True, 100.0)
        _order(db, "p2", day + 5000, "close_long", True, 110.0, pnl=0.1)
        _order(db, "p3", day + 5000, "open_short", True, 110.0)  # same second as p2: one point
        _order(db, "p4", day + DAY - 1, "close_short", True, 100.0, pnl=0.1)  # the last ms of the day
        _order(db, "p5", day + DAY, "open_long", True, 100.0)  # the first ms of the next day
        _order(db, "l1", day + 2000, "open_long", False, 100.0, fee=0.05)
        _order(db, "l2", day + 3000, "close_long", False, 90.0, pnl=-0.1, fee=0.05)
        _order(db, "l3", day + 4000, "open_long", False, 90.0, status="rejected")  # not a fill
    db.close()
    pnl = client(path).get("/api/pnl").get_json()
    # Each fill adds its realised PnL minus its fee: -0.1, 0.0 (+0.1 - 0.1), -0.1, 0.0, -0.1.
    assert pnl["equity"]["paper"] == [[day, 0.0], [day + 1000, -0.1], [day + 5000, -0.2], [day + DAY - 1000, -0.2],
                                      [day + DAY, -0.3]]
    assert pnl["equity"]["live"] == [[day + 1000, 0.0], [day + 2000, -0.05], [day + 3000, -0.2]]
    paper_days = [(d["day_ms"], round(d["net_pnl_usdt"], 8), d["orders"], d["closes"]) for d in pnl["daily"]["paper"]]
    assert paper_days == [(day, -0.2, 4, 2), (day + DAY, -0.1, 1, 0)]
    assert pnl["totals"]["paper"] == {"net_pnl_usdt": -0.3, "fees_usdt": 0.5, "days": 2, "days_won": 0, "orders": 5}
    assert pnl["totals"]["live"]["net_pnl_usdt"] == -0.2 and pnl["totals"]["live"]["orders"] == 2


def test_equity_ends_at_the_ledger_of_the_fixture(dashboard_db):
    """The curve's last point is realised PnL minus fees, exactly what the bot recorded."""
    path, _ = dashboard_db
    st = store.read_status(store.connect_readonly(path))
    pnl = client(path).get("/api/pnl").get_json()
    assert pnl["equity"]["paper"][-1][1] == pytest.approx(float(st["realized_pnl_usdt"]), abs=1e-6)
    times = [p[0] for p in pnl["equity"]["paper"]]
    assert times == sorted(set(times))  # strictly increasing: what the chart library needs


def test_pnl_without_a_db_and_without_fills(tmp_path):
    assert client(str(tmp_path / "none.db")).get("/api/pnl").get_json()["equity"] == {"paper": [], "live": []}
    path = str(tmp_path / "empty.db")
    store.Store(path).close()
    pnl = client(path).get("/api/pnl").get_json()
    assert pnl["daily"] == {"paper": [], "live": []} and pnl["totals"]["live"]["net_pnl_usdt"] == 0.0


# ---- strategy lab ---------------------------------------------------------------------------------------------

def test_lab_without_sweep_tables_is_an_invitation(dashboard_db):
    path, _ = dashboard_db
    c = client(path)
    html = c.get("/lab").get_data(as_text=True)
    assert "尚未保存参数扫描结果" in html and "sweep --klines" in html
    assert c.get("/api/lab").get_json()["runs"] == []
    assert c.get("/api/lab/equity?ids=1,2").get_json() == {"curves": {}}
    assert store.read_sweep_results(store.connect_readonly(path), 1) == []


def test_lab_ranking_heat_map_and_curves(dashboard_db):
    path, _ = dashboard_db
    first = add_sweep(path, periods=(10, 20), ks=(2.0,), train_fraction=None)
    sweep = add_sweep(path, periods=(10, 20, 30), ks=(1.5, 2.0, 2.5))
    c = client(path)
    lab = c.get("/api/lab").get_json()
    assert [r["id"] for r in lab["runs"]] == [sweep["run_id"], first["run_id"]]  # newest first
    assert lab["run"]["id"] == sweep["run_id"] and len(lab["results"]) == 9
    # The sweep's own ranking: on the in-sample part with walk-forward (never on the untouched rest).
    ranked_on = [r["is_" + lab["run"]["rank_by"]] for r in lab["results"]]
    assert ranked_on == sorted(ranked_on, reverse=True) and [r["rank"] for r in lab["results"]] == list(range(1, 10))
    assert [r for r in lab["results"] if r["current"]] == [r for r in lab["results"]
                                                         if (r["boll_period"], r["boll_k"]) == (20, 2.0)]
    assert lab["has_oos"] is True and lab["periods"] == [10, 20, 30] and lab["ks"] == [1.5, 2.0, 2.5]
    best = [r["id"] for r in lab["results"][:5]]
    current = next(r["id"] for r in lab["results"] if r["current"])
    assert lab["curves"] == best + ([current] if current not in best else [])
    # The curves are the stored equity, oldest first.
    ids = ",".join(map(str, lab["curves"]))
    curves = c.get(f"/api/lab/equity?run={sweep['run_id']}&ids={ids}").get_json()["curves"]
    for rid in lab["curves"]:
        points = curves[str(rid)]
        assert [t for t, _ in points] == sorted(t for t, _ in points)
    # Another run and another set can be picked.
    html = c.get(f"/lab?run={first['run_id']}&set={first['results'][0][0]}").get_data(as_text=True)
    assert f"#{first['run_id']}" in html and 'class="heat"' in html
    assert c.get("/lab?run=999&interval=1h&set=abc").status_code == 200  # unknown choices fall back


def test_heat_map_colours_scale_with_the_best_and_worst():
    rows = [{"net_pnl_usdt": v} for v in (100.0, 50.0, 1.0, 0.0, -25.0, -100.0)]
    assert [dd._heat_class(r, 100.0) for r in rows] == ["h-p4", "h-p2", "h-p1", "h-0", "h-n1", "h-n4"]
    assert dd._heat_class(None, 100.0) == "h-none" and dd._heat_class({"net_pnl_usdt": 5}, 0.0) == "h-0"


def test_a_sweep_without_walk_forward_shows_no_out_of_sample_figures(dashboard_db):
    path, _ = dashboard_db
    sweep = add_sweep(path, periods=(20, 30), ks=(2.0,), train_fraction=None, equity=False)
    c = client(path)
    lab = c.get("/api/lab").get_json()
    assert lab["has_oos"] is False and [r["breakout_buffer_pct"] for r in lab["results"]] == [0.0, 0.0]
    html = c.get("/lab").get_data(as_text=True)
    assert "h-" in html and "样本外" not in html
    unstored = max(rid for rid, *_ in sweep["results"])  # --top 1: only the best set has a curve
    assert c.get(f"/api/lab/equity?ids={unstored}").get_json() == {"curves": {str(unstored): []}}


# ---- texts, caching ---------------------------------------------------------------------------------------------

def test_every_text_the_templates_and_scripts_use_exists_in_both_languages():
    with open(os.path.join(ROOT, "templates", "i18n.json"), encoding="utf-8") as fh:
        table = json.load(fh)
    assert all(set(v) == {"zh", "en"} and v["zh"] and v["en"] for v in table.values())
    used = set()
    for folder, pattern in (("templates", r"\bt\.([a-z_]+)|\bt\['([a-z_]+)'\]"),
                            ("static", r"\bT\.([a-z_]+)|\bT\['([a-z_]+)'\]")):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith((".html", ".js")):
                with open(os.path.join(ROOT, folder, name), encoding="utf-8") as fh:
                    text = fh.read()
                used |= {a or b for a, b in re.findall(pattern, text)}
    used -= {"get"}  # t.get(key, default) looks keys up with a fallback
    assert used and not used - set(table), sorted(used - set(table))
    for key in ("alert_paused", "alert_stale", "alert_dead", "alert_reconcile"):  # built in dashboard_data.py
        assert key in table


def test_status_is_read_from_the_db_at_most_once_a_second(dashboard_db):
    path, _ = dashboard_db
    app = dashboard.create_app(cfg(), db_path=path, testing=True)
    now = [1000.0]
    app.extensions["bollmin"].cache.clock = lambda: now[0]
    c = app.test_client()
    assert c.get("/api/status").get_json()["price"] != 123.0
    db = store.Store(path)
    db.set_status({"price": 123.0})
    db.close()
    assert c.get("/api/status").get_json()["price"] != 123.0  # within the second: the cached read
    now[0] += dashboard.STATUS_CACHE_S
    assert c.get("/api/status").get_json()["price"] == 123.0


def test_ttl_cache_computes_once_per_key_and_ttl():
    now = [0.0]
    cache = dashboard.TtlCache(clock=lambda: now[0], keys=2)
    calls = []

    def compute(v):
        calls.append(v)
        return v

    assert cache.get("a", 1.0, lambda: compute(1)) == 1 and cache.get("a", 1.0, lambda: compute(2)) == 1
    now[0] = 1.0
    assert cache.get("a", 1.0, lambda: compute(3)) == 3
    cache.get("b", 1.0, lambda: compute(4))
    cache.get("c", 1.0, lambda: compute(5))  # at most 2 keys: "a" goes
    assert cache.get("a", 1.0, lambda: compute(6)) == 6 and calls == [1, 3, 4, 5, 6]
