"""LiveBoll (docs/strategy.md): the live window, its agreement with pandas on real data, its numerics."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from history import path_ticks
from indicators import Bands, LiveBoll

PERIOD, K = 20, 2.0
TOL = 1e-9


def exact(window: list[float], k: float = K, ddof: int = 0) -> tuple[float, float, float, float]:
    """(up, mid, dn, sd) of a window, two-pass with exactly rounded sums: the reference."""
    n = len(window)
    mid = math.fsum(window) / n
    sd = math.sqrt(math.fsum((x - mid) ** 2 for x in window) / (n - ddof))
    return mid + k * sd, mid, mid - k * sd, sd


def assert_close_to_exact(b: Bands, window: list[float], price: float, k: float = K, ddof: int = 0,
                          tol: float = TOL) -> None:
    up, mid, dn, sd = exact(window, k, ddof)
    scale = abs(price)
    assert abs(b.mid - mid) <= tol * scale, (b, mid)
    assert abs(b.up - up) <= tol * scale, (b, up)
    assert abs(b.dn - dn) <= tol * scale, (b, dn)
    if sd > 1e-6 * scale:  # sd relative, where it is not tiny next to the price
        ours = (b.up - b.dn) / (2 * k)
        assert abs(ours - sd) <= tol * sd + 4e-16 * scale / k, (ours, sd)


# ---- every tick of a backtest over the real 2023 data, against pandas --------------------------

def test_every_tick_of_2023_agrees_with_pandas(candles_15m_2023):
    candles = candles_15m_2023
    closes = np.array([c.close for c in candles])
    boll = LiveBoll(PERIOD, K, 0)
    ours, prices, owner = [], [], []
    for j, candle in enumerate(candles):
        for _t, price in path_ticks(candle, 900_000):
            bands = boll.bands(price)
            if j < PERIOD - 1:
                assert bands is None  # docs/strategy.md: no bands (no trading) before 19 closed candles
                continue
            ours.append(bands)
            prices.append(price)
            owner.append(j)
        boll.push_closed(candle.close)
    ours_a = np.array(ours)
    prices_a = np.array(prices)
    owner_a = np.array(owner)
    assert len(ours_a) == 4 * (len(candles) - (PERIOD - 1))  # every tick of every tradable candle

    # window of a tick in candle j = closes[j-19 .. j-1] + the tick price
    previous = sliding_window_view(closes[:-1], PERIOD - 1)[owner_a - (PERIOD - 1)]
    windows = np.hstack([previous, prices_a[:, None]])
    frame = pd.DataFrame(windows)
    mid = frame.mean(axis=1).to_numpy()
    sd = frame.std(axis=1, ddof=0).to_numpy()
    for got, want in ((ours_a[:, 0], mid + K * sd), (ours_a[:, 1], mid), (ours_a[:, 2], mid - K * sd)):
        assert np.max(np.abs(got - want) / prices_a) <= TOL
    our_sd = (ours_a[:, 0] - ours_a[:, 2]) / (2 * K)
    assert sd.min() > 1e-5 * prices_a.max()  # real BTC windows: sigma is never tiny here
    assert np.max(np.abs(our_sd - sd) / sd) <= TOL

    # at the close ticks the window is exactly pandas' rolling window ending at that candle
    close_rows = np.arange(3, len(ours_a), 4)
    assert np.array_equal(prices_a[close_rows], closes[owner_a[close_rows]])
    roll_mid = pd.Series(closes).rolling(PERIOD).mean().to_numpy()[owner_a[close_rows]]
    roll_sd = pd.Series(closes).rolling(PERIOD).std(ddof=0).to_numpy()[owner_a[close_rows]]
    at_close = ours_a[close_rows]
    price_c = prices_a[close_rows]
    assert np.max(np.abs(at_close[:, 1] - roll_mid) / price_c) <= TOL
    assert np.max(np.abs(at_close[:, 0] - (roll_mid + K * roll_sd)) / price_c) <= TOL
    assert np.max(np.abs(at_close[:, 2] - (roll_mid - K * roll_sd)) / price_c) <= TOL
    # pandas' rolling std is an online add/remove algorithm and itself drifts ~1e-8 (relative) from the
    # exact two-pass value in quiet windows (sigma ~ 1e-4 of the price); sigma is compared relative only
    # where it is not tiny next to the price (>= 0.2 %), which is most of the year.
    wide = roll_sd >= 2e-3 * price_c
    assert wide.sum() > len(wide) // 3
    sd_c = our_sd[close_rows]
    assert np.max(np.abs(sd_c[wide] - roll_sd[wide]) / roll_sd[wide]) <= TOL


def test_ddof1_agrees_with_pandas(candles_15m_2023):
    closes = [c.close for c in candles_15m_2023[:3000]]
    boll = LiveBoll(PERIOD, K, ddof=1, closes=closes[: PERIOD - 1])
    rows, prices = [], []
    for i in range(PERIOD - 1, len(closes)):
        for price in (closes[i] * 0.997, closes[i], closes[i] * 1.004):
            rows.append(closes[i - PERIOD + 1:i] + [price])
            prices.append(price)
            b = boll.bands(price)
            frame_row = pd.Series(rows[-1])
            mid, sd = frame_row.mean(), frame_row.std(ddof=1)
            assert abs(b.mid - mid) <= TOL * price
            assert abs(b.up - (mid + K * sd)) <= TOL * price
            assert abs(b.dn - (mid - K * sd)) <= TOL * price
        boll.push_closed(closes[i])
    frame = pd.DataFrame(rows)
    assert not np.allclose(frame.std(axis=1, ddof=1), frame.std(axis=1, ddof=0), rtol=1e-3)  # ddof matters


# ---- the live window ---------------------------------------------------------------------------

def test_window_is_closed_closes_plus_live_price():
    boll = LiveBoll(period=3, k=2.0)
    boll.push_closed(1.0)
    boll.push_closed(2.0)
    b = boll.bands(6.0)  # window [1, 2, 6]: mean 3, population sd sqrt(14/3)
    sd = math.sqrt(14 / 3)
    assert b.mid == pytest.approx(3.0, abs=1e-15)
    assert b.up == pytest.approx(3.0 + 2 * sd, rel=1e-15)
    assert b.dn == pytest.approx(3.0 - 2 * sd, rel=1e-15)
    boll.push_closed(6.0)  # window rolls: [2, 6] + live
    assert boll.closed == (2.0, 6.0)
    assert boll.bands(4.0).mid == pytest.approx(4.0, abs=1e-15)


def test_not_ready_until_period_minus_one_closed_candles():
    boll = LiveBoll(PERIOD, K)
    for i in range(PERIOD - 2):
        assert not boll.ready
        assert boll.bands(100.0 + i) is None
        boll.push_closed(100.0 + i)
    assert not boll.ready and boll.bands(150.0) is None  # 18 closed candles: still nothing to trade on
    boll.push_closed(118.0)
    assert boll.ready
    assert boll.bands(150.0) is not None
    for _ in range(50):  # stays ready as the window rolls
        boll.push_closed(120.0)
        assert boll.ready and len(boll.closed) == PERIOD - 1


def test_replace_last_closed_matches_a_fresh_window():
    closes = [27000.0 + 13.7 * ((i * 7) % 11) for i in range(40)]
    boll = LiveBoll(PERIOD, K, 0, closes)
    boll.replace_last_closed(26123.4)
    corrected = closes[-(PERIOD - 1):-1] + [26123.4]
    assert boll.closed == tuple(corrected)
    fresh = LiveBoll(PERIOD, K, 0, corrected)
    for price in (25000.0, 26123.4, 27050.0):
        got, want = boll.bands(price), fresh.bands(price)
        assert got == pytest.approx(want, rel=1e-14)
        assert_close_to_exact(got, corrected + [price], price)
    boll.push_closed(27111.0)  # keeps rolling normally after a correction
    assert boll.closed == tuple(corrected[1:] + [27111.0])


def test_replace_last_closed_without_a_closed_candle_refuses():
    with pytest.raises(ValueError, match="no closed candle"):
        LiveBoll(PERIOD, K).replace_last_closed(1.0)


@pytest.mark.parametrize("kwargs", [{"period": 1}, {"period": 20, "ddof": 20}, {"period": 20, "ddof": -1}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        LiveBoll(**kwargs)


# ---- properties -------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(price=st.floats(1e-4, 1e7), period=st.integers(2, 60), extra=st.integers(0, 130),
       ddof=st.sampled_from([0, 1]), k=st.sampled_from([1.0, 2.0, 2.5]))
def test_constant_prices_have_zero_sigma_exactly(price, period, extra, ddof, k):
    boll = LiveBoll(period, k, ddof)
    for _ in range(period - 1 + extra):
        boll.push_closed(price)
    assert boll.bands(price) == Bands(price, price, price)


@settings(max_examples=200, deadline=None)
@given(history=st.lists(st.floats(0.5, 2.0), min_size=0, max_size=60), level=st.floats(0.5, 2.0),
       scale=st.sampled_from([1e-4, 1.0, 3e4, 1e6]), flat=st.integers(0, 25))
def test_a_flat_window_after_a_move_has_zero_sigma(history, level, scale, flat):
    """However the price moved before, a window of equal prices has sigma 0 and bands on the price."""
    boll = LiveBoll(PERIOD, K, 0)
    for x in history:
        boll.push_closed(x * scale)
    price = level * scale
    for _ in range(PERIOD - 1 + flat):
        boll.push_closed(price)
    assert boll.bands(price) == Bands(price, price, price)


def _walk(start: float, steps: list[float]) -> list[float]:
    out, x = [], start
    for s in steps:
        x *= 1.0 + s
        out.append(x)
    return out


@settings(max_examples=200, deadline=None)
@given(start=st.one_of(st.floats(5e-5, 2e-4), st.floats(5e5, 2e6), st.floats(1e4, 1e5)),
       steps=st.lists(st.floats(-0.05, 0.05), min_size=PERIOD, max_size=120),
       live=st.lists(st.floats(-0.1, 0.1), min_size=1, max_size=5),
       ddof=st.sampled_from([0, 1]))
def test_random_walks_match_the_exact_bands(start, steps, live, ddof):
    """Prices near 1e-4, near 1e6 and at BTC levels; every step, every live price, to 1e-9."""
    closes = _walk(start, steps)
    boll = LiveBoll(PERIOD, K, ddof)
    for i, close in enumerate(closes):
        if i >= PERIOD - 1:
            window = closes[i - PERIOD + 1:i]
            for s in live:
                price = closes[i - 1] * (1.0 + s)
                assert_close_to_exact(boll.bands(price), window + [price], price, ddof=ddof)
        boll.push_closed(close)


@settings(max_examples=100, deadline=None)
@given(closes=st.lists(st.floats(1e-4, 1e6), min_size=PERIOD - 1, max_size=80), price=st.floats(1e-4, 1e6))
def test_arbitrary_prices_keep_bands_ordered_around_the_mean(closes, price):
    """Even wild windows (1e-4 next to 1e6): DN <= MID <= UP and MID is the window mean."""
    boll = LiveBoll(PERIOD, K, 0, closes)
    b = boll.bands(price)
    window = closes[-(PERIOD - 1):] + [price]
    up, mid, dn, _sd = exact(window)
    assert b.dn <= b.mid <= b.up
    scale = max(abs(x) for x in window)
    assert abs(b.mid - mid) <= 1e-12 * scale
    assert abs(b.up - up) <= 1e-9 * scale and abs(b.dn - dn) <= 1e-9 * scale


def test_a_million_closes_do_not_accumulate_drift():
    """10^6 push_closed on a BTC-like random walk; the final bands equal a fresh exact computation."""
    rng = np.random.default_rng(20230101)
    closes = (30_000.0 + np.cumsum(rng.normal(0.0, 25.0, 1_000_000))).round(1)
    closes = np.abs(closes) + 1_000.0
    boll = LiveBoll(PERIOD, K, 0)
    push = boll.push_closed
    for x in closes.tolist():
        push(x)
    window = closes[-(PERIOD - 1):].tolist()
    assert boll.closed == tuple(window)
    for price in (window[-1], window[-1] + 40.0, window[-1] - 300.0):
        b = boll.bands(price)
        up, mid, dn, sd = exact(window + [price])
        assert abs(b.mid - mid) <= 1e-13 * price
        assert abs(b.up - up) <= 1e-12 * price and abs(b.dn - dn) <= 1e-12 * price
        assert abs((b.up - b.dn) / (2 * K) - sd) <= 1e-10 * sd
        assert b == pytest.approx(LiveBoll(PERIOD, K, 0, window).bands(price), rel=1e-13)


def test_bands_are_those_of_a_fresh_window_at_any_point_of_a_long_run():
    """Spot checks along 200k closes with jumps and flat stretches (what a feed glitch looks like)."""
    rnd = random.Random(7)
    boll = LiveBoll(PERIOD, K, 0)
    closes: list[float] = []
    x = 27_000.0
    for i in range(200_000):
        r = rnd.random()
        if r < 0.001:
            x *= rnd.choice([0.5, 0.8, 1.25, 2.0])  # a jump
        elif r < 0.3:
            pass  # unchanged close (flat stretch)
        else:
            x = round(x + rnd.gauss(0.0, 20.0), 1)
        x = max(x, 100.0)
        boll.push_closed(x)
        closes.append(x)
        if i % 997 == 0 and i >= PERIOD:
            window = closes[-(PERIOD - 1):]
            for price in (x, x * 1.001):
                assert_close_to_exact(boll.bands(price), window + [price], price)


@settings(max_examples=50, deadline=None)
@given(closes=st.lists(st.floats(100.0, 200.0), min_size=PERIOD - 1, max_size=40), price=st.floats(100.0, 200.0))
def test_closes_given_to_the_constructor_equal_pushing_them(closes, price):
    pushed = LiveBoll(PERIOD, K, 0)
    for c in closes:
        pushed.push_closed(c)
    built = LiveBoll(PERIOD, K, 0, closes)
    assume(built.ready)
    assert built.closed == pushed.closed
    assert built.bands(price) == pytest.approx(pushed.bands(price), rel=1e-12, abs=1e-12)
