"""Dashboard DBs for tests: a bot's DB built from real candles, and stored strategy-lab sweeps."""

from __future__ import annotations

import os

from support.cli import run_bollmin
from support.paths import MARKET_15M

XSS_EVENT = "<script>alert(1)</script> bad tick from exchange"


def build_dashboard_db(path: str, *, n_candles: int = 300, role: str = "bot", heartbeat_ms: int | None = None,
                       live_orders: int = 3, status: dict | None = None) -> dict:
    """A bollmin DB with real 15m BTCUSDT candles and the paper trades the strategy makes on them.

    The trades come from a small replay through the real ``indicators.LiveBoll`` and
    ``state.step`` (4 ticks per candle, as the backtest plays them); fills are at the tick
    price with the paper fee. ``role="backtest"`` writes the status a ``backtest --db`` run
    leaves (no heartbeat); ``role="bot"`` a running bot's (heartbeat ``heartbeat_ms`` or now).
    Adds ``live_orders`` live orders (the last one rejected), events (one with ``<script>``)
    and returns a summary: counts of paper/live orders and the last state.
    """
    import history
    import store
    from indicators import LiveBoll
    from state import Action, State, step

    candles = history.read_candles(MARKET_15M)[:n_candles]
    step_ms = 900_000
    db = store.Store(path)
    summary = {"paper": 0, "live": 0, "candles": len(candles)}
    boll = LiveBoll(20, 2.0, 0)
    state, qty, entry, realized, fees, seq = State.FLAT, 0.0, 0.0, 0.0, 0.0, 0
    bands = None
    price = candles[0].close
    with db.transaction():
        db.add_candles("BTCUSDT", "15m", step_ms, candles)
        db.add_event("INFO", "bot started (paper trading, BTCUSDT 15m)", candles[0].open_time_ms)
        for candle in candles:
            if boll.ready:
                for t, p in history.path_ticks(candle, step_ms):
                    bands = boll.bands(p)
                    price = p
                    new, orders = step(state, p, bands.up, bands.dn)
                    if new == state:
                        continue
                    tid = db.add_transition(t, state, new, p, bands)
                    for order in orders:
                        seq += 1
                        size = qty if order.action.closes else round(200.0 / p, 3)
                        fee = p * abs(size) * 0.0005
                        pnl = None
                        if order.action.closes:
                            pnl = (p - entry) * qty
                            realized += pnl
                            qty = 0.0
                        else:
                            qty, entry = (size if order.action is Action.OPEN_LONG else -size), p
                        fees += fee
                        cid = f"bm-test-{seq}"
                        oid = db.add_order(client_order_id=cid, transition_id=tid, time_ms=t, symbol="BTCUSDT",
                                           action=str(order.action), reason=str(order.reason),
                                           side=order.action.side, qty=abs(size), reduce_only=order.action.closes,
                                           paper=True, tick_price=p)
                        db.update_order(cid, status="filled", fill_price=p, filled_qty=abs(size), fee_usdt=fee,
                                        realized_pnl_usdt=pnl)
                        db.add_fill(oid, t, p, abs(size), fee, pnl or 0.0, True)
                        summary["paper"] += 1
                    state = new
            boll.push_closed(candle.close)
        last_t = candles[-1].open_time_ms + step_ms - 1
        for i in range(live_orders):
            cid = f"bm-live-{i}"
            db.add_order(client_order_id=cid, transition_id=None, time_ms=last_t - 1000 * (live_orders - i),
                         symbol="BTCUSDT", action="open_long", reason="entry", side="BUY", qty=0.003,
                         reduce_only=False, paper=False, tick_price=price)
            if i == live_orders - 1:
                db.update_order(cid, status="rejected", error_code=-2019, error_message="Margin is insufficient.")
            else:
                db.update_order(cid, status="filled", fill_price=price, filled_qty=0.003, fee_usdt=0.05,
                                exchange_order_id=1000 + i)
            summary["live"] += 1
        db.add_event("WARNING", "market stream silent for 30 s; reconnecting", last_t - 60_000)
        db.add_event("ERROR", XSS_EVENT, last_t - 30_000)
        db.add_event("INFO", "candle closed & bands updated", last_t)
        now = store.now_ms()
        values = {
            "mode": "BACKTEST" if role == "backtest" else "PAPER", "symbol": "BTCUSDT", "interval": "15m",
            "state": str(state), "price": price, "price_time_ms": last_t,
            "band_up": bands.up if bands else None, "band_mid": bands.mid if bands else None,
            "band_dn": bands.dn if bands else None, "position_qty": qty, "entry_price": entry if qty else None,
            "unrealized_pnl_usdt": (price - entry) * qty if qty else 0.0, "realized_pnl_usdt": realized - fees,
            "fees_usdt": fees, "equity_usdt": 10000.0 + realized - fees, "db_role": role,
            "connection": "finished" if role == "backtest" else "connected", "entries_paused": "0",
        }
        if role != "backtest":
            values.update(heartbeat_ms=heartbeat_ms if heartbeat_ms is not None else now, started_ms=now - 3_600_000,
                          pid=os.getpid(), last_message_ms=now - 500, cpu_pct=1.5, rss_bytes=52_000_000)
        values.update(status or {})
        db.set_status(values)
    db.close()
    summary["state"] = str(state)
    return summary


def lab_db_path(dashboard_db: str) -> str:
    """Where the fixtures store sweeps: ``lab.db`` beside the dashboard's DB (the dashboard finds it there)."""
    return os.path.join(os.path.dirname(os.path.abspath(dashboard_db)), "lab.db")


def add_sweep(path: str, *, n_candles: int = 600, periods=(10, 20, 30), ks=(1.5, 2.0, 2.5, 3.0),
              interval: str = "15m", train_fraction: float | None = 0.7, equity: bool = True) -> dict:
    """Run the real ``bollmin.py sweep --db`` over every (period, k) on ``n_candles`` real 15m candles,
    storing it in ``lab.db`` beside the dashboard DB ``path``.
    Returns {"run_id", "results": [(id, period, k, net)], "path": the lab DB}."""
    import csv
    import gzip
    import sqlite3
    import tempfile

    lab = lab_db_path(path)
    with tempfile.TemporaryDirectory() as tmp:
        slice_path = os.path.join(tmp, "k.csv")
        with gzip.open(MARKET_15M, "rt") as src, open(slice_path, "w", newline="") as dst:
            rows = csv.reader(src)
            out = csv.writer(dst)
            for i, row in enumerate(rows):
                if i > n_candles:
                    break
                out.writerow(row)
        args = ["sweep", "--klines", slice_path, "--interval", interval,
                "--period", ",".join(str(p) for p in periods), "--k", ",".join(f"{k:g}" for k in ks),
                "--jobs", "1", "--db", lab, "--top", str(len(periods) * len(ks) if equity else 1)]
        if train_fraction:
            args += ["--train-fraction", str(train_fraction)]
        done = run_bollmin(*args, timeout=300)
        assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(lab)
    run_id = conn.execute("SELECT max(id) FROM sweep_runs").fetchone()[0]
    results = [tuple(r) for r in conn.execute(
        "SELECT id, boll_period, boll_k, net_pnl_usdt FROM sweep_results WHERE run_id = ? ORDER BY id", (run_id,))]
    conn.close()
    return {"run_id": run_id, "results": results, "path": lab}
