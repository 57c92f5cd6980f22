"""tape.py reads exactly what history.read_candles reads (values and errors), Binance's .zip archives too."""

from __future__ import annotations

import gzip
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import run_bollmin
from support.paths import MARKET_1M, MARKET_15M

from history import HistoryError, path_ticks, read_candles
from tape import load_tape, read_candle_arrays, read_funding

ARCHIVE_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
                  "taker_buy_quote_volume,ignore")


@pytest.mark.parametrize("path", [MARKET_15M, MARKET_1M])
def test_bundled_files_read_the_same(path):
    assert read_candle_arrays(path).to_list() == read_candles(path)


def test_ticks_are_the_spec_path():
    tape = load_tape(MARKET_15M)
    candles = read_candles(MARKET_15M)[:500]
    want = [tick for c in candles for tick in path_ticks(c, 900_000)]
    got = list(zip(tape.times[:2000].tolist(), tape.prices[:2000].tolist(), strict=True))
    assert got == want


def archive_rows(candles, step=900_000) -> str:
    return "".join(f"{c.open_time_ms},{c.open},{c.high},{c.low},{c.close},{c.volume},{c.open_time_ms + step - 1},"
                   f"0,1,0,0,0\n" for c in candles)


@pytest.mark.parametrize("with_header", [True, False])
def test_binance_monthly_archive_zip(tmp_path, with_header):
    candles = read_candles(MARKET_15M)[:2976]  # January 2023
    body = (ARCHIVE_HEADER + "\n" if with_header else "") + archive_rows(candles)
    path = tmp_path / "BTCUSDT-15m-2023-01.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTCUSDT-15m-2023-01.csv", body)
    assert read_candle_arrays(str(path)).to_list() == read_candles(str(path)) == candles
    plain = tmp_path / "jan.csv"
    plain.write_text(body, encoding="utf-8")
    a = run_bollmin("backtest", "--klines", str(path), "--json")
    b = run_bollmin("backtest", "--klines", str(plain), "--json")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_bad_zip_archives_are_one_line(tmp_path):
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", "x")
        zf.writestr("b.csv", "y")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really")
    for path, needle in ((two, "holds exactly one CSV"), (junk, "not a readable zip")):
        with pytest.raises(HistoryError, match=needle):
            read_candle_arrays(str(path))
        r = run_bollmin("backtest", "--klines", str(path))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


number = st.builds(lambda tenths, style: {0: f"{tenths / 10}", 1: f"{tenths / 10:.2f}", 2: f"{tenths / 10:e}",
                                          3: f" {tenths / 10} ", 4: f"{tenths // 10}"}[style],
                   st.integers(1, 10_000_000), st.integers(0, 4))


@st.composite
def kline_texts(draw):
    """CSV texts in the three formats, mostly valid, sometimes with one broken row."""
    n = draw(st.integers(1, 30))
    fmt = draw(st.sampled_from(["ours", "archive", "raw"]))
    t0 = draw(st.integers(0, 10_000)) * 60_000
    lines = []
    for i in range(n):
        o, c = draw(number), draw(number)
        lo = min(float(o), float(c)) - draw(st.integers(0, 50)) / 10
        hi = max(float(o), float(c)) + draw(st.integers(0, 50)) / 10
        cells = [str(t0 + i * 60_000), o, repr(hi), repr(max(lo, 0.1)), c, draw(number)]
        if fmt == "ours":
            lines.append(",".join(cells))
        else:
            lines.append(",".join(cells + [str(t0 + i * 60_000 + 59_999), "0", "1", "0", "0", "0"]))
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, n - 1))
        cells = lines[at].split(",")
        cells[draw(st.integers(0, 4))] = draw(st.sampled_from(["abc", "nan", "-1", "", "inf", "1e400", '"5"']))
        lines[at] = ",".join(cells)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "")
    header = {"ours": "open_time_ms,open,high,low,close,volume", "archive": ARCHIVE_HEADER, "raw": None}[fmt]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(([header] if header else []) + lines) + draw(st.sampled_from(["", eol]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=kline_texts(), gz=st.booleans())
def test_fast_reader_accepts_and_refuses_exactly_like_read_candles(tmp_path, text, gz):
    path = tmp_path / ("k.csv.gz" if gz else "k.csv")
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        want = read_candles(str(path))
    except HistoryError as exc:
        with pytest.raises(HistoryError) as got:
            read_candle_arrays(str(path))
        assert str(got.value) == str(exc)
        return
    assert read_candle_arrays(str(path)).to_list() == want


def test_funding_formats(tmp_path):
    ours = tmp_path / "f.csv"
    ours.write_text("funding_time_ms,funding_rate,mark_price\n1,0.0001,20000.5\n2,-0.0002,\n", encoding="utf-8")
    f = read_funding(str(ours))
    assert f.time_ms.tolist() == [1, 2] and f.rate.tolist() == [0.0001, -0.0002]
    assert f.mark_price[0] == 20000.5 and f.mark_price[1] != f.mark_price[1]  # NaN: use the last price
    archive = tmp_path / "BTCUSDT-fundingRate-2023-01.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("BTCUSDT-fundingRate-2023-01.csv",
                    "calc_time,funding_interval_hours,last_funding_rate\n1672531200000,8,0.00010000\n"
                    "1672560000000,8,0.00005000\n")
    g = read_funding(str(archive))
    assert g.time_ms.tolist() == [1672531200000, 1672560000000] and g.rate.tolist() == [0.0001, 0.00005]
    bad = tmp_path / "bad.csv"
    bad.write_text("funding_time_ms,funding_rate\n5,0.1\n4,0.1\n", encoding="utf-8")
    with pytest.raises(HistoryError, match="line 3: funding time 4 is not after"):
        read_funding(str(bad))
    wild = tmp_path / "wild.csv"
    wild.write_text("funding_time_ms,funding_rate\n5,3\n", encoding="utf-8")
    with pytest.raises(HistoryError, match="not a plausible rate"):
        read_funding(str(wild))


def test_funding_is_placed_before_the_first_tick_at_or_after_its_time():
    tape = load_tape(MARKET_15M)
    import numpy as np

    from tape import FundingRates

    t = tape.times
    rates = FundingRates(np.array([t[0], t[5], t[5] + 1, t[-1] + 1]), np.array([0.1, 0.2, 0.3, 0.4]),
                         np.array([np.nan, 123.0, np.nan, np.nan]))
    events = rates.on(tape)
    assert events.tick == [5, 6] and events.rate == [0.2, 0.3]  # at/before the first tick and after the last: dropped
    assert events.mark_price == [123.0, float(tape.prices[5])]


# ---- history from the exchange: holes are the exchange's own, not an error ---------------------------

def _candle(t: int, price: float = 100.0):
    from history import Candle
    return Candle(t, price, price + 1, price - 1, price, 1.0)


def test_validate_frame_returns_the_exchanges_gaps_and_refuses_disorder():
    from history import validate_frame
    step = 60_000
    times = [0, 1, 2, 5, 6, 8]  # 2 missing after 2, 1 missing after 6
    assert validate_frame([_candle(i * step) for i in times], step) == [(2 * step, 2), (6 * step, 1)]
    assert validate_frame([_candle(i * step) for i in range(5)], step) == []
    for bad, word in (([0, 1, 1, 2], "duplicate"), ([0, 2, 1], "out of order"), ([0, 1], "grid")):
        rows = [_candle(i * step) for i in bad]
        if word == "grid":
            rows[1] = _candle(step + 1_000)
        with pytest.raises(HistoryError, match=word):
            validate_frame(rows, step)


def test_backfill_window_spans_gaps_and_stops_where_held_events_take_over(tmp_path):
    """The window after a backfill holds the newest BOLL_PERIOD - 1 closed candles, across the
    exchange's holes, but none newer than ``newest`` (the runner replays those from held events)."""
    import asyncio

    import startup
    import store as db
    from config import load_config

    step = 60_000
    cfg = load_config(None, env={}).replace(INTERVAL="1m", BOLL_PERIOD=5, DB_PATH=str(tmp_path / "b.db"))
    s = db.Store(cfg.DB_PATH)
    s.add_candles(cfg.SYMBOL, cfg.INTERVAL, step, [_candle(i * step, 100 + i) for i in range(10)])
    exchange_has = [i for i in range(10, 30) if i not in (12, 13, 14)]  # an outage after candle 11
    # (each call below stores what it fetched: the later calls find the DB's newest candles past
    # their limit and read the ones before it)

    class Exchange:
        async def klines(self, interval, limit, start_ms=None, end_ms=None):
            return [(_candle(i * step, 100 + i), 0) for i in exchange_has if i * step >= start_ms][:limit]

    async def commit(fn, *args):
        return fn(s, *args)

    async def window(newest):
        return [c.open_time_ms // step for c in await startup.backfill(Exchange(), commit, cfg, step, newest)]

    try:
        assert asyncio.run(window(lambda: 16 * step)) == [10, 11, 15, 16]  # spans 12-14, stops at 16
        assert asyncio.run(window(None)) == [25, 26, 27, 28]  # 29 is the forming candle
        assert asyncio.run(window(lambda: 17 * step)) == [11, 15, 16, 17]  # the DB's newest are past 17
        assert asyncio.run(window(lambda: None)) == [25, 26, 27, 28]
    finally:
        s.close()
