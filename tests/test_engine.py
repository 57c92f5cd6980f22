"""The engine (docs/strategy.md): the candle clock from exchange timestamps, one table step per tick."""

from __future__ import annotations

import math

import pytest

from engine import Engine
from indicators import LiveBoll
from state import Action, Reason, State, step

I_MS = 900_000  # 15m
LAST = 1_900_000 * I_MS  # open time of the last closed candle
F = LAST + I_MS  # open time of the forming candle
CLOSES = [100.0, 101.0] * 9 + [100.0]  # 19 closed candles: mean ~100.47, sigma ~0.5
HIGH, INSIDE, LOW = 105.0, 100.5, 95.0  # above UP, inside the bands, below DN for that window
BREAK = 101.8  # just above UP; once a candle has closed at BREAK, BREAK is inside UP


def bands_of(closed: list[float], price: float) -> tuple[float, float, float]:
    """(up, mid, dn) of closed[-19:] + price, computed directly."""
    w = closed[-19:] + [price]
    mid = math.fsum(w) / 20
    sd = math.sqrt(math.fsum((x - mid) ** 2 for x in w) / 20)
    return mid + 2 * sd, mid, mid - 2 * sd


def engine(state: State = State.FLAT, closes: list[float] = CLOSES) -> Engine:
    return Engine(20, 2.0, 0, I_MS, state=state, closes=closes, last_closed_open_ms=LAST)


def test_fixture_prices_are_where_the_tests_need_them():
    up, _mid, dn = bands_of(CLOSES, HIGH)
    assert up < HIGH
    up, _mid, dn = bands_of(CLOSES, LOW)
    assert dn > LOW
    up, _mid, dn = bands_of(CLOSES, INSIDE)
    assert dn < INSIDE < up
    assert bands_of(CLOSES, BREAK)[0] < BREAK <= bands_of(CLOSES + [BREAK], BREAK)[0]


def test_tick_steps_the_table_with_the_live_bands():
    e = engine()
    tr = e.on_trade(F + 1_000, HIGH)
    assert tr is not None
    assert (tr.time_ms, tr.from_state, tr.to_state, tr.price, tr.orders) == (
        F + 1_000, State.FLAT, State.FLAT_ABOVE_UP, HIGH, ())
    assert tr.bands == pytest.approx(bands_of(CLOSES, HIGH), rel=1e-12)
    assert e.state is State.FLAT_ABOVE_UP
    tr = e.on_trade(F + 2_000, INSIDE)
    assert tr is not None and tr.to_state is State.SHORT
    assert [(o.action, o.reason) for o in tr.orders] == [(Action.OPEN_SHORT, Reason.ENTRY)]
    assert e.on_trade(F + 3_000, INSIDE) is None  # no row matches: nothing happens
    assert (e.last_price, e.last_time_ms) == (INSIDE, F + 3_000)
    assert e.last_bands == pytest.approx(bands_of(CLOSES, INSIDE), rel=1e-12)


# ---- the candle clock --------------------------------------------------------------------------

def test_a_trade_at_the_close_time_rolls_the_window_with_the_last_price_before_it():
    e = engine()
    e.on_trade(F + 10, 100.2)
    e.on_trade(F + I_MS - 1, 100.4)  # last millisecond of the forming candle: still the same candle
    assert e.boll.closed == tuple(CLOSES)
    assert e.forming_open_ms == F
    e.on_trade(F + I_MS, 100.3)  # first millisecond of the next candle
    assert e.boll.closed == tuple(CLOSES[1:] + [100.4])
    assert (e.last_closed_open_ms, e.forming_open_ms) == (F, F + I_MS)
    assert e.last_bands == pytest.approx(bands_of(CLOSES + [100.4], 100.3), rel=1e-12)


def test_a_trade_after_several_candles_rolls_once_with_the_last_price():
    e = engine()
    e.on_trade(F + 10, 100.6)
    e.on_trade(F + 3 * I_MS + 5, 100.1)  # candles F+I and F+2I had no trades
    assert e.boll.closed == tuple(CLOSES[1:] + [100.6])
    assert e.forming_open_ms == F + 3 * I_MS
    assert e.on_candle_closed(F + I_MS, 100.7) == "closed"  # the exchange fills in the quiet candle
    assert e.boll.closed[-1] == 100.7


def test_kline_close_confirms_the_close_we_rolled_with():
    e = engine()
    e.on_trade(F + 10, 100.4)
    e.on_trade(F + I_MS + 10, 100.3)
    before = e.boll.closed
    assert e.on_candle_closed(F, 100.4) == "confirmed"
    assert e.boll.closed == before


def test_kline_close_corrects_the_close_we_rolled_with():
    e = engine()
    e.on_trade(F + 10, 100.4)
    e.on_trade(F + I_MS + 10, 100.3)
    assert e.on_candle_closed(F, 100.9) == "corrected"
    assert e.boll.closed == tuple(CLOSES[1:] + [100.9])
    e.on_trade(F + I_MS + 20, 100.3)
    assert e.last_bands == pytest.approx(bands_of(CLOSES + [100.9], 100.3), rel=1e-12)
    assert e.last_closed_open_ms == F


def test_kline_close_before_any_trade_of_the_next_candle_closes_it_once():
    e = engine()
    e.on_trade(F + 10, 100.4)
    assert e.on_candle_closed(F, 100.8) == "closed"
    assert e.boll.closed == tuple(CLOSES[1:] + [100.8])
    assert (e.last_closed_open_ms, e.forming_open_ms) == (F, F + I_MS)
    e.on_trade(F + I_MS + 10, 100.3)  # the next candle's first trade must not roll again
    assert e.boll.closed == tuple(CLOSES[1:] + [100.8])
    assert e.on_candle_closed(F, 100.8) == "confirmed"


def test_old_kline_close_is_stale_and_ignored():
    e = engine()
    e.on_trade(F + I_MS + 10, 100.3)  # no trades in F: nothing to roll with
    before = e.boll.closed
    assert e.on_candle_closed(LAST - I_MS, 99.0) == "stale"
    assert e.boll.closed == before and e.last_closed_open_ms == LAST


def test_kline_close_after_missing_candles_reports_a_gap_and_changes_nothing():
    e = engine()
    before = e.boll.closed
    assert e.on_candle_closed(F + I_MS, 101.0) == "gap"  # F itself never closed
    assert e.boll.closed == before and e.last_closed_open_ms == LAST


def test_late_trade_of_a_closed_candle_is_ignored():
    e = engine(State.FLAT_ABOVE_UP)
    e.on_trade(F + 10, 100.4)
    e.on_trade(F + I_MS + 10, HIGH + 1)  # FLAT_ABOVE_UP stays above UP
    assert e.state is State.FLAT_ABOVE_UP
    closed = e.boll.closed
    assert e.on_trade(F + 500, INSIDE) is None  # belongs to F, already closed; would open a short
    assert e.state is State.FLAT_ABOVE_UP
    assert e.boll.closed == closed
    assert (e.last_price, e.last_time_ms) == (HIGH + 1, F + I_MS + 10)


def test_closing_a_candle_is_not_an_extra_evaluation():
    e = engine()
    tr = e.on_trade(F + 10, BREAK)
    assert tr is not None and e.state is State.FLAT_ABOVE_UP
    # Closing at BREAK widens the bands so that the same price is now inside UP, which from
    # FLAT_ABOVE_UP opens a short. Only a tick may do that, not the close itself.
    up, _mid, dn = bands_of(CLOSES + [BREAK], BREAK)
    assert step(State.FLAT_ABOVE_UP, BREAK, up, dn)[0] is State.SHORT
    assert e.on_candle_closed(F, BREAK) == "closed"
    assert e.state is State.FLAT_ABOVE_UP
    tr = e.on_trade(F + I_MS + 10, BREAK)  # the next tick evaluates, once
    assert tr is not None and tr.to_state is State.SHORT
    assert tr.bands == pytest.approx((up, _mid, dn), rel=1e-12)


def test_rolling_by_trade_and_evaluating_happen_on_the_same_tick_once():
    e = engine()
    e.on_trade(F + 10, BREAK)
    assert e.state is State.FLAT_ABOVE_UP
    tr = e.on_trade(F + I_MS + 10, BREAK)  # rolls (F closes at BREAK), then one evaluation on the new bands
    assert e.boll.closed[-1] == BREAK
    assert tr is not None and (tr.from_state, tr.to_state) == (State.FLAT_ABOVE_UP, State.SHORT)
    assert tr.bands == pytest.approx(bands_of(CLOSES + [BREAK], BREAK), rel=1e-12)


@pytest.mark.parametrize(
    ("start", "price", "to", "orders"),
    [
        (State.SHORT_BELOW_DN, HIGH, State.LONG, [Action.CLOSE_SHORT, Action.OPEN_LONG]),
        (State.LONG_ABOVE_UP, LOW, State.SHORT, [Action.CLOSE_LONG, Action.OPEN_SHORT]),
        (State.FLAT_BELOW_DN, HIGH, State.LONG, [Action.OPEN_LONG]),
        (State.FLAT_ABOVE_UP, LOW, State.SHORT, [Action.OPEN_SHORT]),
    ],
)
def test_at_most_one_transition_per_tick(start, price, to, orders):
    e = engine(start)
    tr = e.on_trade(F + 10, price)
    assert tr is not None and tr.from_state is start and tr.to_state is to
    assert [o.action for o in tr.orders] == orders
    assert e.state is to
    nxt = e.on_trade(F + 20, price)  # the further move happens on the next tick
    assert nxt is not None and nxt.from_state is to and nxt.orders == ()


def test_every_tick_is_evaluated_with_no_pause_between_transitions():
    """The table never waits for orders: back-to-back ticks give back-to-back transitions."""
    e = engine()
    seen = [e.on_trade(F + 10 + i, p) for i, p in enumerate((HIGH, INSIDE, HIGH, INSIDE))]
    assert [(t.from_state, t.to_state) for t in seen] == [
        (State.FLAT, State.FLAT_ABOVE_UP), (State.FLAT_ABOVE_UP, State.SHORT),
        (State.SHORT, State.FLAT_ABOVE_UP), (State.FLAT_ABOVE_UP, State.SHORT)]
    assert not hasattr(e, "hold")


def test_no_trading_until_period_minus_one_closed_candles():
    e = Engine(20, 2.0, 0, I_MS, closes=CLOSES[:18], last_closed_open_ms=LAST)
    assert not e.ready
    assert e.on_trade(F + 10, 1_000.0) is None and e.on_trade(F + 20, 1.0) is None
    assert e.state is State.FLAT and e.last_bands is None
    assert e.on_candle_closed(F, 100.0) == "closed"
    assert e.ready
    tr = e.on_trade(F + I_MS + 10, 1_000.0)
    assert tr is not None and tr.to_state is State.FLAT_ABOVE_UP


def test_first_trade_without_history_starts_the_clock():
    e = Engine(3, 1.0, 0, I_MS)
    assert e.forming_open_ms is None
    e.on_trade(F + 123, 10.0)
    assert e.forming_open_ms == F
    e.on_trade(F + I_MS, 11.0)
    e.on_trade(F + 2 * I_MS, 12.0)
    assert e.boll.closed == (10.0, 11.0) and e.ready
    assert e.candle_of(F + 2 * I_MS + I_MS - 1) == F + 2 * I_MS


def test_resync_replaces_the_window_after_a_backfill():
    e = engine(State.LONG)
    e.on_trade(F + 10, 100.4)
    backfilled = [200.0 + i for i in range(30)]
    new_last = F + 5 * I_MS
    e.resync(backfilled, new_last)
    assert e.boll.closed == tuple(backfilled[-19:])
    assert (e.last_closed_open_ms, e.forming_open_ms) == (new_last, new_last + I_MS)
    assert e.state is State.LONG  # the strategy state survives a resync
    e.on_trade(new_last + I_MS + 10, 229.0)
    want = LiveBoll(20, 2.0, 0, backfilled[-19:]).bands(229.0)
    assert e.last_bands == pytest.approx(want, rel=1e-12)
    assert e.on_trade(new_last - 10, 1.0) is None and e.state is State.LONG  # older than the resync: late
    assert e.on_candle_closed(new_last + I_MS, 229.5) == "closed"  # the clock carries on from there
