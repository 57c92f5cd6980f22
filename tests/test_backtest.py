"""``python bollmin.py backtest`` (README) as a user runs it, checked against an independent replay."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import sqlite3
import subprocess
import sys
from decimal import ROUND_DOWN, Decimal

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from support.cli import run_bollmin
from support.env import clean_env
from support.paths import MARKET_1M, MARKET_15M, ROOT

M1, M3, M15, H1 = 60_000, 180_000, 900_000, 3_600_000
HEADER = "open_time_ms,open,high,low,close,volume,close_time_ms"
ACTION_KEYS = {"time_ms", "action", "price", "reason", "state"}
SUMMARY_KEYS = {"trades", "net_pnl_usdt", "fees_usdt", "win_rate", "max_drawdown_usdt"}
STATES = {"FLAT", "FLAT_ABOVE_UP", "FLAT_BELOW_DN", "LONG", "LONG_ABOVE_UP", "SHORT", "SHORT_BELOW_DN"}

# ---- an independent replay: the table, the 4-tick path and pandas bands, written from docs/strategy.md -----

SPEC_TABLE: dict[str, list[tuple[str, tuple[tuple[str, str], ...], str]]] = {
    "FLAT": [(">UP", (), "FLAT_ABOVE_UP"), ("<DN", (), "FLAT_BELOW_DN")],
    "FLAT_ABOVE_UP": [("<=UP", (("open_short", "entry"),), "SHORT")],
    "FLAT_BELOW_DN": [(">=DN", (("open_long", "entry"),), "LONG")],
    "SHORT": [(">UP", (("close_short", "stop_loss"),), "FLAT_ABOVE_UP"), ("<DN", (), "SHORT_BELOW_DN")],
    "SHORT_BELOW_DN": [(">=DN", (("close_short", "take_profit"), ("open_long", "entry")), "LONG")],
    "LONG": [("<DN", (("close_long", "stop_loss"),), "FLAT_BELOW_DN"), (">UP", (), "LONG_ABOVE_UP")],
    "LONG_ABOVE_UP": [("<=UP", (("close_long", "take_profit"), ("open_short", "entry")), "SHORT")],
}


def _holds(cond: str, p: float, up: float, dn: float) -> bool:
    return {">UP": p > up, "<DN": p < dn, "<=UP": p <= up, ">=DN": p >= dn}[cond]


def _qty(amount: float, price: float) -> float:
    q = (Decimal(repr(amount)) / Decimal(repr(price))).quantize(Decimal("0.001"), rounding=ROUND_DOWN)
    assert q * Decimal(repr(price)) >= 100  # BTC in 2023/2025: 200 USDT is always above the minimums
    return float(q)


def reference(frame: pd.DataFrame, fine_ms: int, target_ms: int, period: int = 20, k: float = 2.0,
              amount: float = 200.0, fee_rate: float = 0.0005) -> tuple[list[dict], dict]:
    """Action lines and summary figures of a backtest, from the documented rules alone.

    ``frame``: the file's candles (columns open_time_ms, open, high, low, close), ``fine_ms`` apart.
    """
    t = frame["open_time_ms"].to_numpy(np.int64)
    o, h, lo, c = (frame[col].to_numpy(float) for col in ("open", "high", "low", "close"))
    bucket = t // target_ms
    last_of_bucket = np.r_[bucket[1:] != bucket[:-1], True]
    agg_close = c[last_of_bucket]  # the INTERVAL candle closes at its last fine candle's close
    j = np.cumsum(np.r_[True, bucket[1:] != bucket[:-1]]) - 1  # INTERVAL candle index of each fine candle
    rising = c >= o
    tick_p = np.column_stack([o, np.where(rising, lo, h), np.where(rising, h, lo), c]).ravel()
    tick_t = np.column_stack([t, t + fine_ms // 3, t + 2 * fine_ms // 3, t + fine_ms - 1]).ravel()
    tick_j = np.repeat(j, 4)
    live = tick_j >= period - 1
    closed = sliding_window_view(agg_close[:-1], period - 1)[tick_j[live] - (period - 1)]
    windows = pd.DataFrame(np.hstack([closed, tick_p[live][:, None]]))
    mid = windows.mean(axis=1).to_numpy()
    sd = windows.std(axis=1, ddof=0).to_numpy()
    up, dn = mid + k * sd, mid - k * sd
    prices = tick_p[live]
    # No tick may sit on a band within rounding (or the comparison would test floating-point luck),
    # except where sigma is exactly 0 (a flat window): then UP = DN = MID exactly on both sides.
    gap = np.minimum(np.abs(prices - up), np.abs(prices - dn)) / prices
    assert not ((gap <= 1e-11) & (sd > 0)).any()

    lines: list[dict] = []
    state, qty, entry, open_fee = "FLAT", 0.0, 0.0, 0.0
    realized = fees = peak = max_dd = 0.0
    trades = wins = 0
    first_live = int(np.argmax(live))
    for i, (tm, p) in enumerate(zip(tick_t.tolist(), tick_p.tolist(), strict=True)):
        if i >= first_live:
            u, d = up[i - first_live], dn[i - first_live]
            for cond, orders, to in SPEC_TABLE[state]:
                if _holds(cond, p, u, d):
                    for action, reason in orders:
                        if action.startswith("close"):
                            fee = abs(qty) * p * fee_rate
                            pnl = (p - entry) * qty
                            realized += pnl
                            trades += 1
                            wins += pnl - fee - open_fee > 0
                            qty = 0.0
                        else:
                            size = _qty(amount, p)
                            fee = size * p * fee_rate
                            qty, entry, open_fee = (size if action == "open_long" else -size), p, fee
                        fees += fee
                        lines.append({"time_ms": tm, "action": action, "price": p, "reason": reason, "state": to})
                    state = to
                    break
        equity = realized - fees + ((p - entry) * qty if qty else 0.0)
        peak = max(peak, equity)
        max_dd = max(max_dd, peak - equity)
    summary = {"trades": trades, "fees_usdt": fees, "net_pnl_usdt": realized - fees, "max_drawdown_usdt": max_dd,
               "win_rate": wins / trades if trades else 0.0, "final_state": state, "orders": len(lines)}
    return lines, summary


# ---- helpers -------------------------------------------------------------------------------------

def load_frame(path: str) -> pd.DataFrame:
    return pd.read_csv(path)


def raw_rows(path: str) -> list[list[str]]:
    """The file's rows as text (header dropped), exactly as written."""
    with gzip.open(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER.split(",")
    return rows[1:]


def write_csv(path, rows: list[list[str]], header: str | None = HEADER, gz: bool = False) -> str:
    buf = io.StringIO()
    if header is not None:
        buf.write(header + "\n")
    for r in rows:
        buf.write(",".join(r) + "\n")
    data = buf.getvalue().encode()
    path = str(path)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    return path


def binance_raw(rows: list[list[str]]) -> list[list[str]]:
    """The same candles as Binance's own 12-column kline CSV (no header)."""
    out = []
    for t, o, h, lo, c, v, ct in rows:
        out.append([t, o, h, lo, c, v, ct, f"{float(v) * float(c):.4f}", "1234", f"{float(v) / 2:.3f}",
                    f"{float(v) * float(c) / 2:.4f}", "0"])
    return out


def backtest(config: str, klines: str, *extra: str):
    return run_bollmin("backtest", "--config", config, "--klines", klines, *extra)


def parse_json_output(stdout: str) -> tuple[list[dict], dict]:
    lines = stdout.splitlines()
    assert lines, "no output"
    objs = [json.loads(line) for line in lines]  # every line is JSON, nothing else on stdout
    assert set(objs[-1]) == {"summary"}
    return objs[:-1], objs[-1]["summary"]


def assert_matches_reference(stdout: str, ref_lines: list[dict], ref: dict) -> dict:
    actions, summary = parse_json_output(stdout)
    assert len(ref_lines) > 100
    assert actions == ref_lines
    assert summary["trades"] == ref["trades"] and summary["orders"] == ref["orders"]
    assert summary["final_state"] == ref["final_state"]
    for key in ("fees_usdt", "net_pnl_usdt", "max_drawdown_usdt"):
        assert summary[key] == pytest.approx(ref[key], abs=1e-6), key
    assert summary["win_rate"] == pytest.approx(ref["win_rate"], abs=1e-6)
    return summary


def bad_one_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bollmin: ")
    assert r.stdout == ""
    return lines[0]


def dump(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [line for line in conn.iterdump() if "updated_ms" not in line or "INSERT" in line]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def rows_15m():
    return raw_rows(MARKET_15M)


@pytest.fixture(scope="module")
def rows_1m():
    return raw_rows(MARKET_1M)


@pytest.fixture
def cfg(core_config):
    return core_config()


# ---- the strategy over real data, against the independent replay -------------------------------------

def test_full_year_15m_matches_the_independent_replay(cfg, tmp_path):
    frame = load_frame(MARKET_15M)
    ref_lines, ref = reference(frame, M15, M15)
    r = backtest(cfg, MARKET_15M, "--json")
    assert r.returncode == 0, r.stderr
    summary = assert_matches_reference(r.stdout, ref_lines, ref)
    assert (summary["candles"], summary["ticks"]) == (35_040, 4 * 35_040)
    assert (summary["interval"], summary["file_interval"]) == ("15m", "15m")
    assert not (tmp_path / "bot").exists()  # no --db: DB_PATH is never created


def test_1m_file_with_interval_15m_aggregates_and_plays_every_1m_candle(cfg, tmp_path):
    frame = load_frame(MARKET_1M)
    ref_lines, ref = reference(frame, M1, M15)
    db = tmp_path / "agg.db"
    r = backtest(cfg, MARKET_1M, "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    summary = assert_matches_reference(r.stdout, ref_lines, ref)
    assert (summary["interval"], summary["file_interval"], summary["ticks"]) == ("15m", "1m", 4 * len(frame))
    # the 15m candles it built equal pandas' aggregation of the 1m file (bucket = open_time // 15m)
    agg = frame.groupby(frame["open_time_ms"] // M15 * M15).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
        volume=("volume", "sum"))
    conn = sqlite3.connect(db)
    stored = pd.read_sql_query("SELECT open_time_ms, open, high, low, close, volume, close_time_ms, interval "
                               "FROM candles ORDER BY open_time_ms", conn)
    conn.close()
    assert summary["candles"] == len(agg) == len(stored)
    assert (stored["open_time_ms"].to_numpy() == agg.index.to_numpy()).all()
    for col in ("open", "high", "low", "close"):
        assert (stored[col].to_numpy() == agg[col].to_numpy()).all(), col
    assert np.allclose(stored["volume"], agg["volume"], rtol=1e-12)
    assert (stored["close_time_ms"] == stored["open_time_ms"] + M15 - 1).all()
    assert set(stored["interval"]) == {"15m"}


def _to_3m(frame: pd.DataFrame) -> pd.DataFrame:
    g = frame.groupby(frame["open_time_ms"] // M3 * M3)
    out = g.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                volume=("volume", "sum"))
    return out.reset_index()


def test_3m_file_with_interval_15m(cfg, tmp_path):
    frame = _to_3m(load_frame(MARKET_1M).iloc[27:27 + 3 * 4000])  # from 16:00, an hour on the 3m grid
    path = tmp_path / "btc_3m.csv"
    frame.to_csv(path, index=False, float_format="%.10g")
    frame = load_frame(str(path))
    ref_lines, ref = reference(frame, M3, M15)
    r = backtest(cfg, str(path), "--json")
    assert r.returncode == 0, r.stderr
    summary = assert_matches_reference(r.stdout, ref_lines, ref)
    assert (summary["interval"], summary["file_interval"], summary["candles"]) == ("15m", "3m", 800)


def test_1m_file_with_interval_3m(cfg):
    frame = load_frame(MARKET_1M).iloc[:12_000]
    path = os.path.join(os.path.dirname(cfg), "btc_1m.csv")
    frame.to_csv(path, index=False, float_format="%.10g")
    frame = load_frame(path)
    ref_lines, ref = reference(frame, M1, M3)
    r = backtest(cfg, path, "--json", "--interval", "3m")
    assert r.returncode == 0, r.stderr
    summary = assert_matches_reference(r.stdout, ref_lines, ref)
    assert (summary["interval"], summary["file_interval"]) == ("3m", "1m")


def test_15m_file_with_interval_1h_from_the_config(core_config):
    frame = load_frame(MARKET_15M).iloc[:8_000]
    config = core_config('INTERVAL = "1h"\n')
    path = os.path.join(os.path.dirname(config), "btc_15m.csv")
    frame.to_csv(path, index=False, float_format="%.10g")
    ref_lines, ref = reference(load_frame(path), M15, H1)
    r = backtest(config, path, "--json")
    assert r.returncode == 0, r.stderr
    assert assert_matches_reference(r.stdout, ref_lines, ref)["candles"] == 2_000


# ---- input formats ------------------------------------------------------------------------------

def test_header_csv_raw_binance_csv_and_gzip_give_identical_json(cfg, tmp_path, rows_15m):
    rows = rows_15m[5_000:9_000]
    header_csv = write_csv(tmp_path / "a.csv", rows)
    raw_csv = write_csv(tmp_path / "binance.csv", binance_raw(rows), header=None)
    gz = write_csv(tmp_path / "a.csv.gz", rows, gz=True)
    # columns in another order, with extra ones: found by name
    order = [4, 0, 3, 2, 1, 5, 6]
    shuffled = write_csv(tmp_path / "shuffled.csv", [[r[i] for i in order] + ["x"] for r in rows],
                         header="close,open_time_ms,low,high,open,volume,close_time_ms,note")
    outputs = []
    for path in (header_csv, raw_csv, gz, shuffled):
        r = backtest(cfg, path, "--json")
        assert r.returncode == 0, (path, r.stderr)
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    actions, summary = parse_json_output(outputs[0])
    assert summary["candles"] == 4_000 and len(actions) > 50
    ref_lines, _ref = reference(load_frame(header_csv), M15, M15)
    assert actions == ref_lines


def test_json_output_shape(cfg, tmp_path, rows_15m):
    path = write_csv(tmp_path / "k.csv", rows_15m[:6_000])
    r = backtest(cfg, path, "--json")
    assert r.returncode == 0 and r.stderr == ""
    actions, summary = parse_json_output(r.stdout)
    assert set(summary) >= SUMMARY_KEYS
    for a in actions:
        assert set(a) == ACTION_KEYS
        assert type(a["time_ms"]) is int and type(a["price"]) is float
        assert a["action"] in {"open_long", "open_short", "close_long", "close_short"}
        assert a["reason"] in {"entry", "take_profit", "stop_loss"} and a["state"] in STATES
    # reversals: two lines with one time, close first and then open, both showing the state after
    reversals = [(a, b) for a, b in zip(actions, actions[1:], strict=False) if a["time_ms"] == b["time_ms"]]
    assert reversals
    for a, b in reversals:
        assert a["action"].startswith("close") and a["reason"] == "take_profit"
        assert b["action"].startswith("open") and b["reason"] == "entry"
        assert a["price"] == b["price"] and a["state"] == b["state"] == ("LONG" if b["action"] == "open_long"
                                                                          else "SHORT")
    # positions alternate open/close and the states follow the table
    held = None
    for a in actions:
        if a["action"].startswith("open"):
            assert held is None
            held = a["action"][5:]
        else:
            assert held == a["action"][6:]
            held = None
        if a["reason"] == "stop_loss":
            assert a["state"] == {"close_long": "FLAT_BELOW_DN", "close_short": "FLAT_ABOVE_UP"}[a["action"]]
    assert summary["trades"] == sum(a["action"].startswith("close") for a in actions)
    assert summary["orders"] == len(actions)
    assert 0.0 <= summary["win_rate"] <= 1.0 and summary["max_drawdown_usdt"] >= 0.0
    assert summary["fees_usdt"] > 0 and summary["net_pnl_usdt"] < summary["gross_pnl_usdt"]
    # nothing trades before 19 closed candles: the first action is in the 20th candle or later
    assert actions[0]["time_ms"] >= int(rows_15m[19][0])


def test_ticks_are_played_at_the_spec_times(cfg, tmp_path):
    """A hand-made file: 19 flat candles, then one that spikes; the orders land at t, t+d//3, ..."""
    t0, d = 1_700_000_100_000 // M15 * M15, M15
    rows = [[str(t0 + i * d), "100", "100.5", "99.5", "100", "1", str(t0 + (i + 1) * d - 1)] for i in range(19)]
    t = t0 + 19 * d
    rows.append([str(t), "100", "130", "90", "95", "1", str(t + d - 1)])  # falling: O, H, L, C
    rows.append([str(t + d), "95", "96", "94", "95.5", "1", str(t + 2 * d - 1)])
    path = write_csv(tmp_path / "spike.csv", rows)
    r = backtest(cfg, path, "--json")
    assert r.returncode == 0, r.stderr
    actions, summary = parse_json_output(r.stdout)
    # O=100: sigma 0, nothing; H=130 at t+d//3 breaks above UP (FLAT_ABOVE_UP); L=90 at t+2d//3 is back
    # inside UP: open short at 90. C=95 at t+d-1 is below DN: SHORT_BELOW_DN, no order; the next candle
    # stays below DN.
    assert actions[0] == {"time_ms": t + 2 * d // 3, "action": "open_short", "price": 90.0, "reason": "entry",
                          "state": "SHORT"}
    ref_lines, _ = reference(load_frame(path), M15, M15)
    assert actions == ref_lines
    assert summary["ticks"] == 4 * 21


def test_readable_report_without_json(cfg, tmp_path, rows_15m):
    path = write_csv(tmp_path / "k.csv", rows_15m[:3_000])
    summary = parse_json_output(backtest(cfg, path, "--json").stdout)[1]
    r = backtest(cfg, path)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert not text.lstrip().startswith("{")
    assert "trades" in text and "net PnL" in text and "max drawdown" in text
    assert str(summary["trades"]) in text
    assert f"{summary['net_pnl_usdt']:+.2f} USDT" in text
    assert f"{summary['fees_usdt']:.2f} USDT" in text
    assert not (tmp_path / "bot").exists()


# ---- --db and trades ------------------------------------------------------------------------------

def test_db_records_the_run_and_trades_shows_it(cfg, tmp_path, rows_15m):
    path = write_csv(tmp_path / "k.csv", rows_15m[:4_000])
    db = tmp_path / "runs" / "bt.db"
    r = backtest(cfg, path, "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    actions, summary = parse_json_output(r.stdout)
    conn = sqlite3.connect(db)
    q = conn.execute
    assert q("SELECT count(*), min(open_time_ms), max(open_time_ms) FROM candles").fetchone() == (
        4_000, int(rows_15m[0][0]), int(rows_15m[3_999][0]))
    assert q("SELECT count(*) FROM orders").fetchone()[0] == len(actions)
    assert q("SELECT count(*) FROM orders WHERE paper = 1 AND status = 'filled'").fetchone()[0] == len(actions)
    assert q("SELECT count(*) FROM fills WHERE paper = 1").fetchone()[0] == len(actions)
    assert q("SELECT count(*) FROM transitions").fetchone()[0] == summary["transitions"]
    assert q("SELECT count(*) FROM transitions WHERE band_up IS NULL OR band_dn >= band_up").fetchone()[0] == 0
    messages = [m for (m,) in q("SELECT message FROM events ORDER BY id")]
    assert any("backtest finished" in m for m in messages)
    status = dict(q("SELECT key, value FROM status").fetchall())
    assert status["db_role"] == "backtest" and status["state"] == summary["final_state"]
    orders = q("SELECT time_ms, action, reason, fill_price FROM orders ORDER BY id").fetchall()
    assert orders == [(a["time_ms"], a["action"], a["reason"], a["price"]) for a in actions]
    conn.close()

    t = run_bollmin("trades", "--config", cfg, "--json", "--db", str(db))
    assert t.returncode == 0, t.stderr
    trades = [json.loads(line) for line in t.stdout.splitlines()]
    assert len(trades) == len(actions)
    for tr in trades:
        assert {"time_ms", "action", "price", "qty", "fee_usdt", "paper", "client_order_id"} <= set(tr)
        assert tr["paper"] is True and tr["qty"] > 0 and tr["fee_usdt"] > 0
        assert tr["fee_usdt"] == pytest.approx(tr["qty"] * tr["price"] * 0.0005)
    assert [(tr["time_ms"], tr["action"], tr["price"]) for tr in trades] == [
        (a["time_ms"], a["action"], a["price"]) for a in actions]  # newest last
    assert len({tr["client_order_id"] for tr in trades}) == len(trades)
    t3 = run_bollmin("trades", "--config", cfg, "--json", "--db", str(db), "--limit", "3")
    assert [json.loads(line) for line in t3.stdout.splitlines()] == trades[-3:]
    text = run_bollmin("trades", "--config", cfg, "--db", str(db), "--limit", "5")
    assert text.returncode == 0 and text.stdout.count("paper") == 5 and trades[-1]["client_order_id"] in text.stdout
    assert not (tmp_path / "bot").exists()  # --db never touches DB_PATH


def test_a_second_db_run_replaces_the_first(cfg, tmp_path, rows_15m):
    first = write_csv(tmp_path / "first.csv", rows_15m[:3_000])
    second = write_csv(tmp_path / "second.csv", rows_15m[20_000:22_000])
    db = tmp_path / "bt.db"
    assert backtest(cfg, first, "--db", str(db)).returncode == 0
    conn = sqlite3.connect(db)
    db_id = conn.execute("SELECT value FROM status WHERE key = 'db_id'").fetchone()[0]
    conn.close()
    r = backtest(cfg, second, "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    actions, _summary = parse_json_output(r.stdout)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*), min(open_time_ms) FROM candles").fetchone() == (
        2_000, int(rows_15m[20_000][0]))
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == len(actions)
    assert conn.execute("SELECT min(time_ms) FROM orders").fetchone()[0] >= int(rows_15m[20_000][0])
    assert conn.execute("SELECT count(*) FROM events WHERE message LIKE '%first.csv%'").fetchone()[0] == 0
    assert conn.execute("SELECT value FROM status WHERE key = 'db_id'").fetchone()[0] == db_id
    conn.close()


def test_db_of_the_bot_is_refused_and_left_alone(cfg, tmp_path, rows_15m):
    import store

    db = tmp_path / "bollmin.db"
    s = store.Store(str(db))
    s.set_status({"db_role": "bot", "state": "LONG"})
    s.add_event("INFO", "bot started", 1)
    s.close()
    before = dump(db)
    path = write_csv(tmp_path / "k.csv", rows_15m[:500])
    line = bad_one_line(backtest(cfg, path, "--json", "--db", str(db)))
    assert str(db) in line
    assert dump(db) == before


# ---- bad input ------------------------------------------------------------------------------------

def _rows(rows_15m, n=40):
    return [list(r) for r in rows_15m[:n]]


def _mutate(rows, i, col, value):
    rows[i][col] = value
    return rows


def _bad_inputs(rows_15m):
    r = _rows(rows_15m)
    swapped = _rows(rows_15m)
    swapped[10], swapped[11] = swapped[11], swapped[10]
    t0 = int(r[0][0]) // M15 * M15
    # the same prices re-timed 2 minutes apart: a "2m" file, and 2m does not divide 15m
    two_min = [[str(t0 + i * 120_000)] + x[1:6] + [str(t0 + (i + 1) * 120_000 - 1)] for i, x in enumerate(r)]
    return {
        "empty": b"",
        "header-only": (HEADER + "\n").encode(),
        "unsorted": _csv(swapped),
        "duplicate": _csv(r[:20] + [r[19]] + r[20:]),
        "nan": _csv(_mutate(_rows(rows_15m), 12, 4, "nan")),
        "inf": _csv(_mutate(_rows(rows_15m), 12, 2, "inf")),
        "zero-price": _csv(_mutate(_rows(rows_15m), 12, 3, "0")),
        "negative-price": _csv(_mutate(_rows(rows_15m), 12, 1, "-16500.0")),
        "high-below-low": _csv(_mutate(_mutate(_rows(rows_15m), 12, 2, "1.0"), 12, 3, "2.0")),
        "not-a-number": _csv(_mutate(_rows(rows_15m), 12, 4, "16525.O")),
        "short-row": _csv(r[:12] + [r[12][:3]] + r[13:]),
        "one-candle": _csv(r[:1]),
        "non-dividing-interval": _csv(two_min),
        "garbage-text": b"hello world\nthis is not a kline file\n",
        "binary-garbage": bytes(range(256)) * 8,
    }


def _csv(rows) -> bytes:
    return (HEADER + "\n" + "".join(",".join(x) + "\n" for x in rows)).encode()


# each bad input and a word its message must contain
BAD = {"empty": "empty", "header-only": "no candles", "unsorted": "not sorted", "duplicate": "duplicate",
       "nan": "finite", "inf": "finite", "zero-price": "> 0", "negative-price": "> 0",
       "high-below-low": "below low", "not-a-number": "close '16525.O' is not a number", "short-row": "columns",
       "one-candle": "2 candles", "non-dividing-interval": "does not divide", "garbage-text": "header",
       "binary-garbage": "not a readable"}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_stops_with_one_line_and_writes_nothing(cfg, tmp_path, rows_15m, name):
    data = _bad_inputs(rows_15m)[name]
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    db = tmp_path / "out" / "bt.db"
    line = bad_one_line(backtest(cfg, str(path), "--json", "--db", str(db)))
    assert "bad.csv" in line and BAD[name] in line  # names the file and the problem
    assert not db.exists() and not db.parent.exists()
    assert not (tmp_path / "bot").exists()


def test_missing_candles_are_played_as_they_are_with_a_warning(cfg, tmp_path, rows_15m):
    """Binance's history has holes (outages, maintenance) and ``download`` writes what the exchange has:
    such a file plays, with one warning line on stderr. The candle after a gap follows the one before
    it in the bands, so the actions are those of the same file closed up (later candles re-timed
    back by the gap), at the real times."""
    rows = rows_15m[:3_000]
    holes = [(700, 704), (1_900, 1_901)]  # 4 candles and 1 candle missing
    gapped = [r for i, r in enumerate(rows) if not any(a <= i < b for a, b in holes)]
    shifts = []  # (first open time after a gap, ms to take off from there on)
    shift = 0
    for a, b in holes:
        shift += (b - a) * M15
        shifts.append((int(rows[b][0]), shift))

    def back(t: int) -> int:
        return t - max((s for start, s in shifts if t >= start), default=0)

    closed = [[str(back(int(r[0])))] + r[1:6] + [str(back(int(r[6])))] for r in gapped]
    r_gap = backtest(cfg, write_csv(tmp_path / "gap.csv", gapped), "--json")
    r_closed = backtest(cfg, write_csv(tmp_path / "closed.csv", closed), "--json")
    assert r_gap.returncode == r_closed.returncode == 0, r_gap.stderr
    assert r_gap.stderr.strip().splitlines() == [
        f"bollmin: warning: {tmp_path / 'gap.csv'}: 2 gaps in the candles (5 missing; the first: 4 from "
        f"{dt.datetime.fromtimestamp(int(rows[700][0]) / 1000, dt.UTC):%Y-%m-%d %H:%M} UTC); "
        f"played as they are, the bands spanning each gap"]
    assert r_closed.stderr == ""
    got, got_sum = parse_json_output(r_gap.stdout)
    want, want_sum = parse_json_output(r_closed.stdout)
    assert len(got) > 50 and len(got) == len(want)
    assert [dict(g, time_ms=back(g["time_ms"])) for g in got] == want
    assert any(g["time_ms"] >= shifts[0][0] for g in got)  # actions after the gaps are compared too
    for key in ("trades", "net_pnl_usdt", "fees_usdt", "win_rate", "max_drawdown_usdt", "final_state"):
        assert got_sum[key] == want_sum[key], key


@pytest.mark.parametrize("case", ["missing", "directory", "fake-gzip"])
def test_unreadable_input_stops_with_one_line(cfg, tmp_path, case):
    if case == "missing":
        path = tmp_path / "nope.csv"
    elif case == "directory":
        path = tmp_path / "adir"
        path.mkdir()
    else:
        path = tmp_path / "klines.csv.gz"
        path.write_text(HEADER + "\n1,2,3,1,2,0,5\n")
    db = tmp_path / "bt.db"
    line = bad_one_line(backtest(cfg, str(path), "--db", str(db)))
    assert path.name in line
    assert not db.exists()


def test_file_coarser_than_interval_is_refused(core_config, tmp_path, rows_15m):
    config = core_config('INTERVAL = "5m"\n')
    path = write_csv(tmp_path / "k.csv", rows_15m[:100])
    line = bad_one_line(backtest(config, path, "--json"))
    assert "does not divide" in line and "5m" in line and "15m" in line


def test_unknown_interval_option_is_refused(cfg, tmp_path, rows_15m):
    path = write_csv(tmp_path / "k.csv", rows_15m[:100])
    line = bad_one_line(backtest(cfg, path, "--interval", "7m"))
    assert "INTERVAL" in line


def test_bad_input_leaves_an_earlier_backtest_db_unchanged(cfg, tmp_path, rows_15m):
    db = tmp_path / "bt.db"
    good = write_csv(tmp_path / "good.csv", rows_15m[:1_000])
    assert backtest(cfg, good, "--db", str(db)).returncode == 0
    before = dump(db)
    for name in ("unsorted", "nan", "non-dividing-interval"):
        bad = tmp_path / f"{name}.csv"
        bad.write_bytes(_bad_inputs(rows_15m)[name])
        bad_one_line(backtest(cfg, str(bad), "--json", "--db", str(db)))
        assert dump(db) == before


def test_no_db_and_no_log_without_db_option(core_config, tmp_path, rows_15m):
    """The bot's DB_PATH and LOG_FILE are not created by a backtest: with a config naming them, and with
    the defaults (data/bollmin.db, logs/bollmin.log relative to the working directory)."""
    config = core_config()
    path = write_csv(tmp_path / "k.csv", rows_15m[:2_000])
    before = sorted(p.name for p in tmp_path.iterdir())
    assert backtest(config, path, "--json").returncode == 0
    assert backtest(config, path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), "backtest", "--klines", "k.csv"],
                       cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no data/ or logs/ appeared


def test_reference_itself_is_sane():
    """The replay above is the oracle: check it on a case worked out by hand."""
    t0 = 0
    closes = [100.0] * 19
    rows = [{"open_time_ms": t0 + i * M1, "open": c, "high": c, "low": c, "close": c} for i, c in enumerate(closes)]
    rows.append({"open_time_ms": 19 * M1, "open": 100.0, "high": 110.0, "low": 99.0, "close": 101.0})
    lines, summary = reference(pd.DataFrame(rows), M1, M1)
    # rising candle: O=100 (sigma 0: nothing), L=99 < DN = 99.95 - 2*0.218 -> FLAT_BELOW_DN,
    # H=110 >= DN -> open long, C=101 > UP = 100.05 + 2*0.218 -> LONG_ABOVE_UP (no order).
    assert lines == [{"time_ms": 19 * M1 + 2 * M1 // 3, "action": "open_long", "price": 110.0, "reason": "entry",
                      "state": "LONG"}]
    assert summary["trades"] == 0 and summary["orders"] == 1 and summary["final_state"] == "LONG_ABOVE_UP"
    assert summary["fees_usdt"] == pytest.approx(1.818 * 110.0 * 0.0005)


def test_trades_on_a_missing_db_is_one_line(cfg, tmp_path):
    r = run_bollmin("trades", "--config", cfg, "--db", str(tmp_path / "none.db"))
    assert "none.db" in bad_one_line(r)
    assert not (tmp_path / "none.db").exists()


def test_binance_download_with_its_header_row_equals_the_headerless_file(tmp_path):
    """data.binance.vision kline files now start with a 12-name header row: same candles."""
    import gzip as _gzip

    from history import read_candles

    with _gzip.open(MARKET_15M, "rt") as fh:
        lines = fh.read().splitlines()[1:301]
    raw = []
    for line in lines:
        t, o, h, lo, c, v, ct = line.split(",")
        raw.append(",".join([t, o, h, lo, c, v, ct, "0", "1", "0", "0", "0"]))
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(raw) + "\n")
    headed = tmp_path / "headed.csv"
    headed.write_text("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                      "taker_buy_quote_volume,ignore\n" + "\n".join(raw) + "\n")
    assert read_candles(str(headed)) == read_candles(str(plain))
    assert len(read_candles(str(headed))) == 300
