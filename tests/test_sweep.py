"""``python bollmin.py sweep``: every set's whole-file figures are backtest's; walk-forward, --db, --report."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sqlite3

import pytest
from support.cli import run_bollmin
from support.env import clean_env
from support.lab import settings, write_funding
from support.paths import MARKET_1M, MARKET_15M, ROOT

import store
from backtest import main_backtest
from sweep import parse_values
from tape import load_tape

GRID = ["--interval", "15m,1h", "--period", "10,20,35", "--k", "1.5,2.5", "--evaluate-on", "tick,close",
        "--buffer", "0,0.05"]


def backtest_summary(path: str, funding: str | None = None, **changes) -> dict:
    """What ``backtest --json`` prints as its summary (the CLI's own function, in this process)."""
    out = io.StringIO()
    assert main_backtest(settings(**changes), path, True, None, out=out, err=io.StringIO(), funding_path=funding) == 0
    return json.loads(out.getvalue().splitlines()[-1])["summary"]


def settings_of(line: dict) -> dict:
    return {"INTERVAL": line["interval"], "BOLL_PERIOD": line["boll_period"], "BOLL_K": line["boll_k"],
            "EVALUATE_ON": line["evaluate_on"], "BREAKOUT_BUFFER_PCT": line["breakout_buffer_pct"],
            "STOP_COOLDOWN_CANDLES": line["stop_cooldown_candles"], "PAPER_SLIPPAGE_PCT": line["slippage_pct"]}


@pytest.fixture(scope="module")
def grid_lines():
    r = run_bollmin("sweep", "--klines", MARKET_15M, *GRID, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_json_lines_are_one_set_each_best_first(grid_lines):
    assert len(grid_lines) == 2 * 3 * 2 * 2 * 2
    assert [line["rank"] for line in grid_lines] == list(range(1, len(grid_lines) + 1))
    nets = [line["net_pnl_usdt"] for line in grid_lines]
    assert nets == sorted(nets, reverse=True)
    keys = {"interval", "boll_period", "boll_k", "trades", "net_pnl_usdt", "fees_usdt", "win_rate", "max_drawdown_usdt"}
    assert all(keys <= set(line) for line in grid_lines)
    assert len({(ln["interval"], ln["boll_period"], ln["boll_k"], ln["evaluate_on"], ln["breakout_buffer_pct"])
                for ln in grid_lines}) == len(grid_lines)


def test_whole_file_figures_equal_backtest_json(grid_lines):
    """Every summary figure of a spread of sets (both intervals, tick/close, buffer on/off) equals backtest's."""
    picked = grid_lines[::3]
    assert {ln["interval"] for ln in picked} == {"15m", "1h"} and {ln["evaluate_on"] for ln in picked} == {"tick",
                                                                                                           "close"}
    for line in picked:
        summary = backtest_summary(MARKET_15M, **settings_of(line))
        assert {k: line[k] for k in summary} == summary, settings_of(line)


def test_the_cli_backtest_agrees_too(grid_lines, tmp_path):
    line = next(ln for ln in grid_lines if ln["evaluate_on"] == "close" and ln["breakout_buffer_pct"])
    cfg = tmp_path / "c.py"
    cfg.write_text("".join(f"{k} = {v!r}\n" for k, v in settings_of(line).items()), encoding="utf-8")
    r = run_bollmin("backtest", "--klines", MARKET_15M, "--json", "--config", str(cfg))
    summary = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert {k: line[k] for k in summary} == summary


def test_cooldown_slippage_and_funding_axes_on_the_1m_file(tmp_path):
    funding = write_funding(str(tmp_path / "f.csv"), load_tape(MARKET_1M).times)
    r = run_bollmin("sweep", "--klines", MARKET_1M, "--interval", "5m", "--period", "20", "--k", "2",
                    "--cooldown", "0,3", "--slippage", "0,0.02", "--funding", funding, "--json", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 4 and all(ln["funding_usdt"] != 0 for ln in lines)
    for line in lines:
        summary = backtest_summary(MARKET_1M, funding, **settings_of(line))
        assert {k: line[k] for k in summary} == summary


def test_walk_forward_parts_equal_backtest_on_each_part(tmp_path):
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20,30", "--k", "2", "--cooldown", "0,2",
                    "--train-fraction", "0.6", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    ins = [ln["in_sample"]["net_pnl_usdt"] for ln in lines]
    assert ins == sorted(ins, reverse=True)  # ranked on the in-sample part
    tape = load_tape(MARKET_15M)
    candles = tape.candles.to_list()
    first, end = candles[0].open_time_ms, candles[-1].open_time_ms + 900_000
    cut_ms = (first + int((end - first) * 0.6)) // 900_000 * 900_000  # 60 % of the span, on a candle boundary
    split = next(i for i, c in enumerate(candles) if c.open_time_ms == cut_ms)
    head = tmp_path / "head.csv"
    write_rows(head, candles[:split])
    for line in lines:
        period = line["boll_period"]
        tail = tmp_path / f"tail{period}.csv"
        write_rows(tail, candles[split - (period - 1):])
        assert line["in_sample"] == backtest_summary(str(head), **settings_of(line))
        oos = backtest_summary(str(tail), **settings_of(line))
        assert line["out_of_sample"] == oos and oos["first_open_time_ms"] == candles[split - (period - 1)].open_time_ms


def write_rows(path, candles) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("open_time_ms,open,high,low,close,volume\n")
        for c in candles:
            fh.write(f"{c.open_time_ms},{c.open!r},{c.high!r},{c.low!r},{c.close!r},{c.volume!r}\n")


def test_a_file_with_missing_candles_sweeps_like_backtest(tmp_path):
    """Gaps (an exchange outage) play the same in the lab as in backtest, fine file aggregated or not."""
    with gzip.open(MARKET_1M, "rt", encoding="utf-8") as fh:
        lines = fh.readlines()
    path = tmp_path / "gap.csv"
    path.write_text("".join(lines[:3_001] + lines[3_011:6_000] + lines[6_199:12_000]), encoding="utf-8")
    r = run_bollmin("sweep", "--klines", str(path), "--interval", "1m,15m", "--period", "20", "--k", "2",
                    "--evaluate-on", "tick,close", "--json")
    assert r.returncode == 0 and "2 gaps in the candles (209 missing" in r.stderr, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(got) == 4
    for line in got:
        want = backtest_summary(str(path), **settings_of(line))
        assert line["trades"] > 20
        for key in ("trades", "net_pnl_usdt", "fees_usdt", "win_rate", "max_drawdown_usdt", "final_state"):
            assert line[key] == want[key], (key, line)


def test_one_job_and_two_jobs_print_the_same():
    args = ["sweep", "--klines", MARKET_15M, "--interval", "1h", "--period", "10:30:10", "--k", "1.5:2.5:0.5",
            "--json"]
    one = run_bollmin(*args, "--jobs", "1")
    two = run_bollmin(*args, "--jobs", "2")
    assert one.returncode == two.returncode == 0 and one.stdout == two.stdout and len(one.stdout.splitlines()) == 9


def test_db_and_report(tmp_path):
    odd = tmp_path / "a<b>&'c.csv.gz"  # a name that must be escaped in HTML
    shutil.copy(MARKET_15M, odd)
    db, report = tmp_path / "lab.db", tmp_path / "report.html"
    r = run_bollmin("sweep", "--klines", str(odd), "--period", "15,20,25", "--k", "2,2.5", "--interval", "15m,1h",
                    "--train-fraction", "0.7", "--db", str(db), "--report", str(report), "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    conn = store.connect_readonly(str(db))
    try:
        [run] = store.read_sweep_runs(conn)
        assert run["sets"] == 12 and run["train_fraction"] == 0.7 and run["source_file"] == str(odd)
        assert "默认参数" in run["verdict"] and "out of sample" in run["verdict"]
        results = store.read_sweep_results(conn, run["id"])
        assert [row["rank"] for row in results] == list(range(1, 13))
        assert [(row["interval"], row["boll_period"], row["boll_k"], row["net_pnl_usdt"], row["oos_net_pnl_usdt"])
                for row in results] == [(ln["interval"], ln["boll_period"], ln["boll_k"], ln["net_pnl_usdt"],
                                         ln["out_of_sample"]["net_pnl_usdt"]) for ln in lines]
        assert store.read_sweep_record(conn, results[0]["id"]) == lines[0]
        curves = store.read_sweep_equity(conn, run["id"])
        assert list(curves) == [row["id"] for row in results[:3]]
        days = 365
        assert all(len(points) == days for points in curves.values())
        oos = store.read_sweep_equity(conn, run["id"], "oos")
        assert all(points[0][0] >= run["split_time_ms"] for points in oos.values())
        status = store.read_status(conn)
        assert status["db_role"] == "sweep"
    finally:
        conn.close()
    html = report.read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html  # offline, self-contained
    assert "a&lt;b&gt;&amp;&#x27;c.csv.gz" in html and "a<b>" not in html
    assert html.count("<svg") >= 2 + 2 * 2 + 1  # 2 equity charts, heat maps (whole + OOS) per interval, scatter
    assert "样本外" in html and "out-of-sample" in html
    # A backtest can go into the same file; the sweep stays.
    assert run_bollmin("backtest", "--klines", MARKET_15M, "--db", str(db), "--interval", "1h").returncode == 0
    conn = sqlite3.connect(str(db))
    assert conn.execute("SELECT count(*) FROM sweep_results").fetchone()[0] == 12
    conn.close()


def test_the_bots_db_is_refused(tmp_path):
    db = tmp_path / "bot.db"
    s = store.Store(str(db))
    s.set_status({"db_role": "bot"})
    s.close()
    before = db.read_bytes()
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20", "--db", str(db))
    assert r.returncode == 2 and "trading bot" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before


@pytest.mark.parametrize("kind", ["csv", "foreign", "directory"])
def test_a_db_that_is_not_bollmins_is_refused_before_the_sweep_runs(tmp_path, kind):
    db = tmp_path / "x.db"
    if kind == "csv":
        shutil.copy(MARKET_15M, db)  # a kline file given as --db by mistake
    elif kind == "foreign":
        conn = sqlite3.connect(str(db))
        conn.execute("CREATE TABLE notes(x)")
        conn.commit()
        conn.close()
    else:
        db.mkdir()
    before = db.read_bytes() if db.is_file() else None
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20", "--db", str(db))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "a bug" not in r.stderr and str(db) in r.stderr and r.stdout == ""
    assert before is None or db.read_bytes() == before


def test_the_report_never_overwrites_the_input_or_a_file_that_is_not_a_report(tmp_path):
    data = tmp_path / "k.csv"
    shutil.copy(MARKET_15M, data)
    before = data.read_bytes()
    r = run_bollmin("sweep", "--klines", str(data), "--period", "20", "--report", str(data))
    assert r.returncode == 2 and "this sweep's own files" in r.stderr and data.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    r = run_bollmin("sweep", "--klines", str(data), "--period", "20", "--report", str(notes))
    assert r.returncode == 2 and "not an HTML page" in r.stderr and notes.read_text() == "my notes\n"
    report = tmp_path / "r.html"
    for _ in range(2):  # an earlier report is replaced
        r = run_bollmin("sweep", "--klines", str(data), "--period", "20", "--report", str(report))
        assert r.returncode == 0, r.stderr
    assert report.read_text(encoding="utf-8").lower().startswith("<!doctype html")


@pytest.mark.parametrize("args,needle", [
    (["--period", "30:10:5"], "stop is below start"),
    (["--period", "10:30:0"], "step must be greater than 0"),
    (["--period", "10.5"], "whole number"),
    (["--k", "abc"], "not a number"),
    (["--k", "0"], "BOLL_K"),
    (["--interval", "7m"], "not an interval"),
    (["--interval", "15m:1h:1"], "comma-separated"),
    (["--interval", "5m"], "does not divide INTERVAL"),
    (["--evaluate-on", "bar"], "EVALUATE_ON"),
    (["--train-fraction", "1.5"], "between 0 and 1"),
    (["--train-fraction", "0.0005"], "candles to rank on"),
    (["--rank-by", "luck"], "--rank-by"),
    (["--jobs", "0"], "--jobs"),
    (["--period", "1:100000000:1"], "too many"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    report = tmp_path / "r.html"
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--report", str(report), *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not report.exists()


def test_missing_file_is_one_line(tmp_path):
    r = run_bollmin("sweep", "--klines", str(tmp_path / "nope.csv"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_list_syntax():
    assert parse_values("10:30:5", "int", "--period") == [10, 15, 20, 25, 30]
    assert parse_values("1.5:2.5:0.25", "float", "--k") == [1.5, 1.75, 2.0, 2.25, 2.5]
    assert parse_values("0.1:0.3:0.1", "float", "--buffer") == [0.1, 0.2, 0.3]  # no float drift: 0.3 stays 0.3
    assert parse_values("2, 1.5,2", "float", "--k") == [2.0, 1.5]
    assert parse_values("15m,1h", "interval", "--interval") == ["15m", "1h"]


def test_text_report_says_what_the_default_did():
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20", "--k", "2")
    assert r.returncode == 0, r.stderr
    assert "默认参数（15m period 20 k 2）：净盈亏 -4268.95 USDT，7144 笔交易" in r.stdout
    assert "without an out-of-sample test" in r.stdout.lower()


def test_no_progress_bar_or_stray_output_when_piped():
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20", "--k", "2", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert all(line.startswith("{") for line in r.stdout.splitlines())


def test_report_path_in_a_missing_folder_is_refused(tmp_path):
    r = run_bollmin("sweep", "--klines", MARKET_15M, "--period", "20", "--report", str(tmp_path / "no" / "r.html"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not os.path.exists(tmp_path / "no")


def test_ctrl_c_stops_the_workers_and_writes_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    db = tmp_path / "lab.db"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bollmin.py"), "sweep", "--klines", MARKET_15M,
                             "--period", "10:60:1", "--k", "1:3:0.1", "--jobs", "2", "--db", str(db)], cwd=ROOT,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            # as in a terminal: a test run started in the background (``&`` without job
                            # control) has SIGINT ignored, and Python then keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and time.monotonic() < deadline:  # the two workers are at work
        time.sleep(0.05)
    workers = parent.children()
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "bollmin: sweep interrupted; nothing was written"
    assert out == "" and not db.exists()
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
