"""The sweep's evaluator gives exactly the engine's actions and figures, action by action.

The reference is ``backtest.run``: every tick through ``Engine.on_trade`` (the live code path) and
the paper broker. Equality is exact (every JSON action line, every summary figure), on all the
bundled real data, on generated price paths (prices exactly on a band, flat windows, refused
entries), for every variation and with funding.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.lab import VARIATIONS, assert_same, candles_from_closes, funding_on, series_of, write_funding
from support.lab import settings as make_settings
from support.paths import MARKET_1M, MARKET_15M

import evaluator
from indicators import LiveBoll
from state import TABLE, State, step_buffered
from tape import load_tape


@pytest.fixture(scope="module")
def tape_15m():
    return load_tape(MARKET_15M)


@pytest.fixture(scope="module")
def tape_1m():
    return load_tape(MARKET_1M)


# ---- all bundled data ----------------------------------------------------------------------------

@pytest.mark.parametrize("changes", VARIATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_15m_2023_at_15m_every_variation(tape_15m, changes):
    summary = assert_same(tape_15m.at("15m"), make_settings(**changes))
    assert summary["trades"] > 100  # a real year of trading, not an empty comparison


@pytest.mark.parametrize("changes", VARIATIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_1m_2025_at_1m_every_variation(tape_1m, changes):
    summary = assert_same(tape_1m.at("1m"), make_settings(INTERVAL="1m", **changes))
    assert summary["trades"] > 100


@pytest.mark.parametrize("file,interval", [("15m", "1h"), ("15m", "4h"), ("1m", "5m"), ("1m", "15m")])
@pytest.mark.parametrize("changes", [{}, VARIATIONS[5]], ids=["defaults", "all-variations"])
def test_aggregated_intervals(tape_15m, tape_1m, file, interval, changes):
    tape = tape_15m if file == "15m" else tape_1m
    summary = assert_same(tape.at(interval), make_settings(INTERVAL=interval, **changes))
    assert summary["file_interval"] == file and summary["interval"] == interval


@pytest.mark.parametrize("period,k,ddof", [(5, 1.0, 0), (50, 3.0, 0), (20, 2.0, 1), (2, 0.5, 0)])
def test_other_windows(tape_15m, period, k, ddof):
    assert_same(tape_15m.at("15m"), make_settings(BOLL_PERIOD=period, BOLL_K=k, BOLL_DDOF=ddof))


@pytest.mark.parametrize("changes", [{}, {"EVALUATE_ON": "close", "STOP_COOLDOWN_CANDLES": 2}])
def test_funding_from_a_file(tape_15m, tmp_path, changes):
    series = tape_15m.at("15m")
    funding = funding_on(write_funding(str(tmp_path / "f.csv"), series.times), series)
    summary = assert_same(series, make_settings(**changes), funding)
    assert summary["funding_usdt"] != 0.0


def test_in_sample_cut_equals_the_engine_on_the_first_part(tape_15m, tmp_path):
    """The walk-forward in-sample figures are the engine's on a file that ends at the cut."""
    series = tape_15m.at("15m")
    cut = 24_000
    funding_path = write_funding(str(tmp_path / "f.csv"), series.times)
    cfg = make_settings(STOP_COOLDOWN_CANDLES=1)
    whole = evaluator.evaluate(series, cfg, funding_on(funding_path, series), split_tick=int(series.tick_start[cut]))
    head = series.head(cut)
    assert whole.in_sample == assert_same(head, cfg, funding_on(funding_path, head))


# ---- generated paths -----------------------------------------------------------------------------

def test_prices_exactly_on_a_band():
    """period 2, k 1: UP and DN are the two prices of the window, so every tick sits exactly on a band."""
    closes = [100.0, 102.0, 101.0, 104.0, 104.0, 100.0, 103.0, 99.0, 99.0, 102.0] * 20
    series = series_of(candles_from_closes(closes, wiggle=[(1.0, 2.0)] * len(closes)))
    boll = LiveBoll(2, 1.0)
    on_band = 0
    for c in range(1, len(closes)):
        boll.push_closed(series.close[c - 1])
        for p in series.prices[series.tick_start[c]:series.tick_start[c + 1]].tolist():
            b = boll.bands(p)
            on_band += p in (b.up, b.dn)
    assert on_band > 500
    for changes in VARIATIONS:
        assert_same(series, make_settings(BOLL_PERIOD=2, BOLL_K=1.0, **changes))


def test_flat_windows_have_zero_width_bands():
    """A flat window: UP = MID = DN = the price, exactly; a move out of it breaks out at once."""
    closes = [100.0] * 30 + [100.5, 99.5] + [100.0] * 30 + [101.0] * 25 + [99.0] * 25
    series = series_of(candles_from_closes(closes))
    for changes in VARIATIONS:
        summary = assert_same(series, make_settings(BOLL_PERIOD=10, BOLL_K=2.0, **changes))
        assert summary["transitions"] > 0


@pytest.mark.parametrize("changes", [{}, {"EVALUATE_ON": "close"}])
def test_a_file_shorter_than_the_window_never_trades(changes):
    series = series_of(candles_from_closes([100.0 + 3 * (i % 2) for i in range(12)]))
    summary = assert_same(series, make_settings(BOLL_PERIOD=13, **changes))
    assert summary["transitions"] == 0 and summary["ticks"] == 48


@st.composite
def price_paths(draw):
    """Candles in 0.1 steps with flat stretches (o=h=l=c, identical closes) and sharp moves."""
    n = draw(st.integers(30, 260))
    level = draw(st.integers(5_000, 400_000))  # tenths: 500.0 to 40,000.0
    closes, wiggle = [], []
    i = 0
    while i < n:
        if draw(st.integers(0, 9)) == 0:  # a flat stretch
            run = draw(st.integers(3, 30))
            closes += [level / 10] * run
            wiggle += [(0.0, 0.0)] * run
            i += run
            continue
        level = max(100, level + draw(st.integers(-40, 40)) * draw(st.sampled_from([1, 1, 1, 5, 25])))
        closes.append(level / 10)
        wiggle.append((draw(st.integers(0, 30)) / 10, draw(st.integers(0, 30)) / 10))
        i += 1
    return closes[:n], wiggle[:n]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    path=price_paths(),
    period=st.integers(2, 25),
    k=st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 1.2345]),
    ddof=st.sampled_from([0, 0, 1]),
    evaluate_on=st.sampled_from(["tick", "close"]),
    buffer=st.sampled_from([0.0, 0.0, 0.01, 0.2]),
    cooldown=st.sampled_from([0, 0, 1, 3]),
    slippage=st.sampled_from([0.0, 0.05]),
    amount=st.sampled_from([200.0, 100.05]),  # 100.05 USDT: some entries fall below the 100 USDT minimum
    interval_mult=st.sampled_from([1, 1, 3, 5]),
    funded=st.booleans(),
)
def test_generated_paths(tmp_path_factory, path, period, k, ddof, evaluate_on, buffer, cooldown, slippage, amount,
                         interval_mult, funded):
    closes, wiggle = path
    series = series_of(candles_from_closes(closes, wiggle=wiggle), 60_000 * interval_mult)
    interval = {1: "1m", 3: "3m", 5: "5m"}[interval_mult]
    cfg = make_settings(INTERVAL=interval, BOLL_PERIOD=period, BOLL_K=k, BOLL_DDOF=min(ddof, period - 1),
                        EVALUATE_ON=evaluate_on, BREAKOUT_BUFFER_PCT=buffer, STOP_COOLDOWN_CANDLES=cooldown,
                        PAPER_SLIPPAGE_PCT=slippage, TRADE_AMOUNT_USDT=amount)
    funding = None
    if funded:
        path_ = write_funding(str(tmp_path_factory.mktemp("f") / "f.csv"), series.times, every_ms=3_600_000)
        funding = funding_on(path_, series)
    if funding is None:
        assert_same(series, cfg)
    else:
        assert_same(series, cfg, funding)


# ---- the zone table is the strategy table ---------------------------------------------------------

@pytest.mark.parametrize("state", list(State))
def test_zone_table_is_the_state_table(state):
    """For a price in each zone, the zone table's row is what ``state.step_buffered`` does."""
    up, dn, up_b, dn_b = 110.0, 90.0, 111.0, 89.0
    for zone, price in enumerate((88.0, 89.5, 100.0, 110.5, 112.0)):
        to, orders = step_buffered(state, price, up, dn, up_b, dn_b)
        row = evaluator.ZONE_TABLE[evaluator._INDEX[state]][zone]
        if to is state:
            assert row is None
        else:
            assert evaluator.STATES[row.to] is to and tuple(p[3] for p in row.program) == orders
    assert set(TABLE) == set(State)
