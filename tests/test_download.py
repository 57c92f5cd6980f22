"""``python bollmin.py download`` against the simulated exchange serving a year of real 15m candles."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import urllib.request

import pytest
from support.cli import run_bollmin
from support.paths import MARKET_15M

import download
from history import read_candles
from simexchange import SimExchangeThread

STEP = 900_000
CANDLES = read_candles(MARKET_15M)


def control(sim: SimExchangeThread, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sim.base_url + path, data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def sim():
    """All of 2023 but the last candle is history; the last one is forming (2 of its 4 trades done)."""
    with SimExchangeThread(MARKET_15M, history_candles=len(CANDLES) - 1, paused=True) as s:
        control(s, "/_sim/step", {"ticks": 2})
        yield s


@pytest.fixture
def cfg_file(sim, tmp_path):
    control(sim, "/_sim/reset_log", {})
    control(sim, "/_sim/public_rate_limit", {"count": 0})
    control(sim, "/_sim/corrupt_klines", {"count": 0})
    path = tmp_path / "config.py"
    path.write_text(f"REST_BASE_URL = {sim.base_url!r}\nDB_PATH = {str(tmp_path / 'bot.db')!r}\n", encoding="utf-8")
    return str(path)


def klines_requests(sim) -> list[dict]:
    return [r for r in control(sim, "/_sim/requests") if r["path"] == "/fapi/v1/klines"]


def rows(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def test_a_year_in_pages_closed_candles_only(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv.gz")
    r = run_bollmin("download", "--config", cfg_file, "--symbol", "BTCUSDT", "--interval", "15m",
                    "--start", "2023-01-01", "--out", out)
    assert r.returncode == 0, r.stderr
    got = read_candles(out)
    # Every closed candle, exactly as in the source; the forming one (already traded) is not there.
    assert got == CANDLES[:-1]
    pages = [q for q in klines_requests(sim) if q["params"].get("limit") == "1500"]
    assert len(pages) == -(-(len(CANDLES) - 1) // 1500)
    starts = [int(q["params"]["startTime"]) for q in pages]
    assert starts == [CANDLES[0].open_time_ms + i * 1500 * STEP for i in range(len(pages))]
    assert "35039" in r.stdout and f"{10 * len(pages) + 1}" in r.stdout  # candles and request weight
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_backtest_of_the_download_equals_the_source(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv")
    assert run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-06-01",
                       "--end", "2023-06-30", "--out", out).returncode == 0
    source = tmp_path / "source.csv"
    source.write_text("open_time_ms,open,high,low,close,volume\n" + "".join(
        f"{c.open_time_ms},{c.open},{c.high},{c.low},{c.close},{c.volume}\n" for c in CANDLES
        if 1685577600000 <= c.open_time_ms < 1688169600000), encoding="utf-8")
    a = run_bollmin("backtest", "--klines", out, "--json")
    b = run_bollmin("backtest", "--klines", str(source), "--json")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and len(a.stdout.splitlines()) > 50


def test_resume_appends_only_what_is_missing(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv")
    first = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                        "--end", "2023-03-31", "--out", out)
    assert first.returncode == 0
    assert read_candles(out)[-1].open_time_ms == 1680306300000  # 2023-03-31 23:45 UTC
    control(sim, "/_sim/reset_log", {})
    second = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                         "--out", out)
    assert second.returncode == 0 and "8640" in second.stdout
    assert read_candles(out) == CANDLES[:-1]  # nothing twice, nothing missing
    pages = [q for q in klines_requests(sim) if q["params"].get("limit") == "1500"]
    assert int(pages[0]["params"]["startTime"]) == 1680306300000 + STEP
    third = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                        "--out", out)
    assert third.returncode == 0 and "nothing new" in third.stdout and read_candles(out) == CANDLES[:-1]


def test_a_429_in_the_middle_waits_retry_after_and_asks_again(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv.gz")
    control(sim, "/_sim/public_rate_limit", {"count": 1, "after": 6, "status": 429, "retry_after": 1})
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "rate limited (HTTP 429): waiting 1 s" in r.stderr
    assert read_candles(out) == CANDLES[:-1]
    log = klines_requests(sim)
    refused = [i for i, q in enumerate(log) if q["status"] == 429]
    assert len(refused) == 1
    assert log[refused[0] + 1]["params"] == log[refused[0]]["params"] and log[refused[0] + 1]["status"] == 200
    assert log[refused[0] + 1]["time_ms"] - log[refused[0]]["time_ms"] >= 1000  # it did wait Retry-After


def test_a_long_418_ban_stops_and_the_next_run_finishes(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv.gz")
    control(sim, "/_sim/public_rate_limit", {"count": 1, "after": 4, "status": 418, "retry_after": 7200})
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01", "--out", out)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "IP banned (HTTP 418)" in r.stderr and "resumes" in r.stderr
    kept = read_candles(out)
    assert kept == CANDLES[:len(kept)] and len(kept) == 3 * 1500  # the pages before the ban, intact
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01", "--out", out)
    assert r.returncode == 0 and read_candles(out) == CANDLES[:-1]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_an_interrupted_write_is_cut_off_and_resumed(sim, cfg_file, tmp_path, suffix):
    out = str(tmp_path / f"btc{suffix}")
    assert run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                       "--end", "2023-02-15", "--out", out).returncode == 0
    half = b"1676505600000,24300.1,24" if suffix == ".csv" else gzip.compress(b"1676505600000,1,2,3\n")[:15]
    with open(out, "ab") as fh:  # what a crash in the middle of an append leaves
        fh.write(half)
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01", "--out", out)
    assert r.returncode == 0 and "incomplete tail" in r.stderr
    assert read_candles(out) == CANDLES[:-1]


def test_bad_rows_are_reported_and_never_written(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv")
    control(sim, "/_sim/corrupt_klines", {"count": 1})
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                    "--end", "2023-01-31", "--out", out)
    assert r.returncode == 0
    bad = CANDLES[1]  # the second row of the first page was spoilt (a high of -1)
    assert "bad row from the exchange at 2023-01-01 00:15" in r.stderr and "gap:" in r.stderr
    assert "bad rows" in r.stdout and "gaps" in r.stdout
    got = read_candles(out)
    assert bad not in got and [c for c in CANDLES[:len(got) + 1] if c != bad] == got


def test_gaps_in_the_exchange_history_are_reported(tmp_path):
    candles = [c for i, c in enumerate(CANDLES[:3000]) if not 1000 <= i < 1003]
    with SimExchangeThread(candles, history_candles=len(candles) - 1, paused=True) as s:
        cfg = tmp_path / "c.py"
        cfg.write_text(f"REST_BASE_URL = {s.base_url!r}\n", encoding="utf-8")
        out = str(tmp_path / "gap.csv")
        r = run_bollmin("download", "--config", str(cfg), "--interval", "15m", "--start", "2023-01-01", "--out", out)
    assert r.returncode == 0
    assert "gap: the exchange has no 15m candles from 2023-01-11 10:00 to 2023-01-11 10:30 (3 missing)" in r.stderr
    assert read_candles(out) == candles[:-1]
    b = run_bollmin("backtest", "--klines", out, "--json")  # the file plays as the exchange has it, with a warning
    assert b.returncode == 0 and "1 gap in the candles (3 missing" in b.stderr, b.stderr


def test_funding_history_is_downloaded_and_charged_by_backtest(sim, cfg_file, tmp_path):
    out = str(tmp_path / "btc.csv.gz")
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                    "--end", "2023-04-30", "--out", out, "--funding")
    assert r.returncode == 0, r.stderr
    funding = str(tmp_path / "btc.funding.csv.gz")
    lines = rows(funding)
    assert lines[0] == "funding_time_ms,funding_rate,mark_price"
    times = [int(ln.split(",")[0]) for ln in lines[1:]]
    assert times == list(range(1672531200000, 1682899200000, 8 * 3_600_000))  # every 8 h, Jan–Apr
    asked = [q for q in control(sim, "/_sim/requests") if q["path"] == "/fapi/v1/fundingRate"]
    assert [q["params"]["limit"] for q in asked] == ["1000"] * len(asked) and len(asked) == 1
    plain = json.loads(run_bollmin("backtest", "--klines", out, "--json").stdout.splitlines()[-1])["summary"]
    charged = json.loads(run_bollmin("backtest", "--klines", out, "--json", "--funding", funding)
                         .stdout.splitlines()[-1])["summary"]
    assert plain["funding_usdt"] == 0.0 and charged["funding_usdt"] != 0.0
    assert charged["trades"] == plain["trades"] and charged["fees_usdt"] == plain["fees_usdt"]
    assert charged["net_pnl_usdt"] == pytest.approx(plain["net_pnl_usdt"] - charged["funding_usdt"], abs=1e-6)
    again = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01",
                        "--end", "2023-04-30", "--out", out, "--funding")
    assert again.returncode == 0 and rows(funding) == lines  # resumed: nothing twice


def test_request_weights_follow_the_exchange_header(sim, tmp_path):
    """The used weight comes from each answer's X-MBX-USED-WEIGHT-1M; near the budget it waits for the next minute."""
    from binance import AsyncClient

    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run():
        client = AsyncClient()
        client.FUTURES_URL = sim.base_url + "/fapi"
        try:
            fetch = download.Fetcher(client, lambda m: None, fake_sleep)
            fetch.weight_limit = 40  # a small budget: 80 % of it is 32
            seen = []
            for _ in range(4):
                await fetch.call("futures_klines", 10, symbol="BTCUSDT", interval="15m", limit=1500,
                                 startTime=CANDLES[0].open_time_ms)
                seen.append(int(client.response.headers["X-MBX-USED-WEIGHT-1M"]))
            return fetch, seen
        finally:
            await client.close_connection()

    fetch, seen = asyncio.run(run())
    assert fetch.stats.last_used_weight == seen[-1] and all(w >= 10 for w in seen)
    assert fetch.stats.requests == 4 and fetch.stats.weight == 40
    # Each answer said at least 10 used; the next 10 would pass 32 once 23 are used: it waited before those.
    assert len(waits) == sum(1 for w in seen[:-1] if w + 10 > 32) and all(0 < w <= 60.5 for w in waits)


def test_weight_table_and_row_checks():
    assert [download.klines_weight(n) for n in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]
    good = [1672531200000, "1", "2", "0.5", "1.5", "10", 1672532099999, "0", 1, "0", "0", "0"]
    assert download.check_kline_row(good, STEP) is None
    assert download.check_kline_row([*good[:2], "0.9", *good[3:]], STEP) == "open/close outside the high-low range"
    assert download.check_kline_row([*good[:1], "x", *good[2:]], STEP) == "a field is not a number"
    assert download.check_kline_row([1672531200001, *good[1:]], STEP) == "open/close time not on the interval"
    assert download.check_kline_row([*good[:1], "nan", *good[2:]], STEP) == "a price is not finite"
    assert download.funding_path_for("a/b.csv.gz") == "a/b.funding.csv.gz"
    assert download.funding_path_for("b.csv") == "b.funding.csv"


@pytest.mark.parametrize("args,needle", [
    (["--start", "2023-02-30"], "--start '2023-02-30'"),
    (["--start", "2023-03-01", "--end", "2023-02-01"], "before --start"),
    (["--start", "2023-01-01", "--out-ext", "x.txt"], ".csv or .csv.gz"),
    (["--start", "2023-01-01", "--interval", "7m"], "--interval '7m'"),
    (["--start", "2023-01-01", "--symbol", "btc-usdt"], "SYMBOL"),
    (["--start", "2999-01-01"], "in the future"),
])
def test_bad_input_is_one_line_and_exit_2(cfg_file, tmp_path, args, needle):
    out = str(tmp_path / ("x.txt" if "--out-ext" in args else "x.csv"))
    args = [a for a in args if a not in ("--out-ext", "x.txt")]
    if "--interval" not in args:
        args += ["--interval", "15m"]
    r = run_bollmin("download", "--config", cfg_file, "--out", out, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not os.path.exists(out)


def test_a_file_that_is_not_ours_is_left_alone(cfg_file, tmp_path):
    out = tmp_path / "notes.csv"
    out.write_text("my,own\nnotes,here", encoding="utf-8")
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2023-01-01", "--out", str(out))
    assert r.returncode == 2 and "not a file written by download" in r.stderr
    assert out.read_text(encoding="utf-8") == "my,own\nnotes,here"


def test_a_symbol_the_exchange_does_not_know_is_bad_input(cfg_file, tmp_path):
    out = tmp_path / "eth.csv"
    r = run_bollmin("download", "--config", cfg_file, "--symbol", "ETHUSDT", "--interval", "15m",
                    "--start", "2023-01-01", "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Invalid symbol" in r.stderr
    assert not out.exists()


def test_a_start_before_the_first_candle_downloads_from_the_first_one(sim, cfg_file, tmp_path):
    """Like Binance, the exchange answers a startTime before its first candle with the first candles it
    has; a range with none at all says so (not "up to date")."""
    out = str(tmp_path / "early.csv")
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2022-10-01",
                    "--end", "2023-01-31", "--out", out)
    assert r.returncode == 0, r.stderr
    got = read_candles(out)
    assert got[0] == CANDLES[0] and got == CANDLES[:len(got)] and len(got) == 31 * 96
    empty = str(tmp_path / "empty.csv")
    r = run_bollmin("download", "--config", cfg_file, "--interval", "15m", "--start", "2022-10-01",
                    "--end", "2022-10-31", "--out", empty)
    assert r.returncode == 0 and "the exchange has no 15m candles for BTCUSDT in this range" in r.stdout, r.stdout
    assert "up to date" not in r.stdout
