"""The optional strategy variations: off by default, what each does, and the same in `run` as in `backtest`."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from support.bot import paper_run_and_backtest
from support.cli import run_bollmin
from support.lab import settings
from support.paths import MARKET_1M

from broker import DEFAULT_RULES, Ledger, OrderSizeError, PaperBroker, SymbolRules, order_qty, paper_broker_from_config
from engine import Engine, StrategyOptions, VariantEngine, engine_from_config
from state import Action, Order, Reason, State

M = 60_000
T0 = 1_700_000_040_000 // M * M  # a candle boundary


def engine_with(closes: list[float], **options) -> Engine:
    """Period 3, k 1 (a window of 2 closes + the price), the given closes already closed."""
    cfg = settings(BOLL_PERIOD=3, BOLL_K=1.0, INTERVAL="1m", **options)
    return engine_from_config(cfg, M, State.FLAT, closes, T0 - M)


def test_all_off_builds_the_plain_engine():
    cfg = settings()
    assert type(engine_from_config(cfg, M)) is Engine
    assert type(Engine.from_config(cfg, M)) is Engine
    assert StrategyOptions().off
    assert type(Engine.from_config(settings(STOP_COOLDOWN_CANDLES=1), M)) is VariantEngine
    broker = paper_broker_from_config(cfg)
    assert broker.slippage_pct == 0.0 and broker.fee_rate == 0.0005 and broker.amount_usdt == 200.0


def test_close_mode_decides_at_the_close_and_orders_at_the_next_trade():
    e = engine_with([100.0, 100.0], EVALUATE_ON="close")
    # A spike above UP and back during the candle: the every-tick strategy would short here.
    assert e.on_trade(T0, 100.0) is None
    assert e.on_trade(T0 + 10_000, 103.0) is None and e.on_trade(T0 + 20_000, 100.1) is None
    assert e.on_trade(T0 + 59_999, 104.0) is None   # closes above UP ...
    tr = e.on_trade(T0 + M, 103.5)                  # ... decided at the close, carried out now
    assert tr is not None and (tr.from_state, tr.to_state) == (State.FLAT, State.FLAT_ABOVE_UP)
    assert (tr.time_ms, tr.price) == (T0 + M, 103.5) and tr.orders == ()
    assert tr.bands.up < 104.0  # the closed window's bands: (100, 100, 104)
    assert e.on_trade(T0 + M + 1, 90.0) is None     # ticks are not evaluated
    e.on_candle_closed(T0 + M, 100.5)               # the exchange's close event comes first this time
    tr = e.on_trade(T0 + 2 * M + 5, 100.7)
    assert tr is not None and tr.to_state is State.SHORT and tr.orders == (Order(Action.OPEN_SHORT, Reason.ENTRY),)
    assert tr.price == 100.7


def test_breakout_buffer_needs_the_price_beyond_the_band_by_the_buffer():
    plain, buffered = engine_with([100.0, 102.0]), engine_with([100.0, 102.0], BREAKOUT_BUFFER_PCT=1.0)
    for e in (plain, buffered):
        e.on_trade(T0, 101.0)
    # Window (100, 102, 103): UP = 101.67 + 1.25 = 102.91; 103 is above UP but within 1 % of it.
    assert plain.on_trade(T0 + 1, 103.0).to_state is State.FLAT_ABOVE_UP
    assert buffered.on_trade(T0 + 1, 103.0) is None
    tr = buffered.on_trade(T0 + 2, 106.0)  # window (100, 102, 106): UP 105.16, UP + 1 % = 106.21: not yet
    assert tr is None
    tr = buffered.on_trade(T0 + 3, 120.0)
    assert tr is not None and tr.to_state is State.FLAT_ABOVE_UP
    # Back inside uses the plain band: the short opens as soon as p <= UP.
    tr = buffered.on_trade(T0 + 4, 102.0)  # window (100, 102, 102): UP 102.28
    assert tr.to_state is State.SHORT and tr.orders == (Order(Action.OPEN_SHORT, Reason.ENTRY),)


def test_cooldown_skips_entries_for_the_rest_of_the_stop_candle_and_the_next_n():
    e = engine_with([100.0, 100.0], STOP_COOLDOWN_CANDLES=1)
    e.state = State.SHORT
    tr = e.on_trade(T0 + 5, 106.0)  # above UP while short: stop-loss in candle T0
    assert tr.orders == (Order(Action.CLOSE_SHORT, Reason.STOP_LOSS),) and tr.to_state is State.FLAT_ABOVE_UP
    tr = e.on_trade(T0 + 10, 100.0)  # back inside in the same candle: the entry is skipped
    assert (tr.to_state, tr.orders) == (State.FLAT, ())
    e.on_trade(T0 + M + 1, 110.0)    # next candle (cooldown candle 1): a new breakout ...
    tr = e.on_trade(T0 + M + 2, 100.0)
    assert (tr.to_state, tr.orders) == (State.FLAT, ())  # ... and its entry skipped too
    e.on_trade(T0 + 2 * M + 1, 130.0)  # the candle after: entries are back
    tr = e.on_trade(T0 + 2 * M + 2, 100.0)
    assert tr.to_state is State.SHORT and tr.orders == (Order(Action.OPEN_SHORT, Reason.ENTRY),)


def test_paper_slippage_fills_worse_but_sizes_at_the_tick_price():
    broker = PaperBroker(200.0, 0.0005, DEFAULT_RULES, slippage_pct=0.1)
    buy = broker.fill(Order(Action.OPEN_LONG, Reason.ENTRY), 20_000.0)
    assert buy.qty == 0.01 and buy.price == pytest.approx(20_020.0)
    assert buy.fee_usdt == pytest.approx(0.01 * 20_020.0 * 0.0005)
    sell = broker.fill(Order(Action.CLOSE_LONG, Reason.TAKE_PROFIT), 21_000.0)
    assert sell.price == pytest.approx(20_979.0) and sell.realized_pnl_usdt == pytest.approx((20_979 - 20_020) * 0.01)


OTHER_RULES = SymbolRules(step=Decimal("0.1"), min_qty=Decimal("0.1"), min_notional=Decimal("5"))


@settings_(max_examples=300, deadline=None)
@given(st.floats(0.5, 200_000.0), st.sampled_from([200.0, 100.0, 100.05, 1234.5, 5.0]),
       st.sampled_from([DEFAULT_RULES, OTHER_RULES]))
def test_entry_qty_is_exactly_order_qty(price, amount, rules):
    broker = PaperBroker(amount, 0.0005, rules)
    try:
        want = float(order_qty(amount, price, rules))
    except OrderSizeError:
        with pytest.raises(OrderSizeError):
            broker.entry_qty(price)
        return
    assert broker.entry_qty(price) == want


@pytest.mark.parametrize("price", [20_000.0, 25_000.0, 40_000.0, 16_666.6, 0.2, 2.0])
def test_entry_qty_on_a_step_boundary_is_the_decimal_answer(price):
    """200 / 20,000 is exactly 10 steps; the float ratio may land a hair either side: order_qty decides."""
    try:
        want = float(order_qty(200.0, price, DEFAULT_RULES))
    except OrderSizeError:
        with pytest.raises(OrderSizeError):
            PaperBroker(200.0, 0.0005).entry_qty(price)
        return
    assert PaperBroker(200.0, 0.0005).entry_qty(price) == want


def test_funding_long_pays_a_positive_rate_and_it_counts_against_the_trade():
    ledger = Ledger()
    ledger.apply(Action.OPEN_LONG, 20_000.0, 0.01, 0.1)
    assert ledger.apply_funding(0.0001, 20_100.0) == pytest.approx(0.0201)
    ledger.apply(Action.CLOSE_LONG, 20_020.0, 0.01, 0.1)  # +0.2 gross, 0.2 fees, 0.0201 funding
    assert ledger.net_pnl_usdt == pytest.approx(0.2 - 0.2 - 0.0201)
    assert ledger.winning_trades == 0 and ledger.lost_usdt == pytest.approx(0.0201)
    short = Ledger()
    short.apply(Action.OPEN_SHORT, 20_000.0, 0.01, 0.0)
    assert short.apply_funding(0.0001, 20_000.0) == pytest.approx(-0.02)  # shorts receive a positive rate


@pytest.mark.parametrize("name,value,needle", [("EVALUATE_ON", "'bar'", "EVALUATE_ON"),
                                               ("BREAKOUT_BUFFER_PCT", "-1.0", "BREAKOUT_BUFFER_PCT"),
                                               ("STOP_COOLDOWN_CANDLES", "1.5", "STOP_COOLDOWN_CANDLES"),
                                               ("PAPER_SLIPPAGE_PCT", "'x'", "PAPER_SLIPPAGE_PCT")])
def test_bad_variation_settings_are_one_line_exit_2(tmp_path, name, value, needle):
    cfg = tmp_path / "c.py"
    cfg.write_text(f"{name} = {value}\n", encoding="utf-8")
    r = run_bollmin("check-config", "--config", str(cfg))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


def test_funding_file_problems_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "f.csv"
    bad.write_text("funding_time_ms,funding_rate\n1672531200000,abc\n", encoding="utf-8")
    for path, needle in ((str(tmp_path / "missing.csv"), "no such file"), (str(bad), "line 2")):
        r = run_bollmin("backtest", "--klines", MARKET_1M, "--funding", path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr


@pytest.mark.e2e
def test_run_and_backtest_make_the_same_transitions_with_variations(tmp_path):
    """Paper `run` and `backtest` with evaluate-on-close, a breakout buffer and a cooldown: same transitions."""
    variations = {"EVALUATE_ON": "close", "BREAKOUT_BUFFER_PCT": 0.01, "STOP_COOLDOWN_CANDLES": 2,
                  "BOLL_K": 1.5}
    run, backtest = paper_run_and_backtest(tmp_path, 1, **variations)
    live, back = run["transitions"], backtest["transitions"]
    assert len(back) > 20 and live == back
    assert any(r[1] in ("FLAT_ABOVE_UP", "FLAT_BELOW_DN") and r[2] == "FLAT" for r in back), "a skipped entry"
    assert run["orders"] == backtest["orders"]
