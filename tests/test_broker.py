"""Order sizing, the ledger and the paper broker (docs/orders.md)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker import DEFAULT_RULES, Ledger, OrderSizeError, PaperBroker, SymbolRules, client_order_id, order_qty
from engine import Transition
from indicators import Bands
from state import Action, Order, Reason, State

NO_MIN = SymbolRules(min_notional=Decimal("0"))


# ---- sizing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("amount", "price", "rules", "want"),
    [
        (200.0, 27000.0, DEFAULT_RULES, "0.007"),  # 0.0074074… floors, never rounds up
        (200.0, 16517.4, DEFAULT_RULES, "0.012"),  # 0.01210…
        (300.0, 10000.0, DEFAULT_RULES, "0.03"),  # 0.03 exactly: float 0.03/0.001 = 29.999… would give 0.029
        (690.0, 23000.0, DEFAULT_RULES, "0.03"),
        (2.9, 100.0, NO_MIN, "0.029"),  # float 2.9/100 = 0.028999… still 0.029 on the step
        (200.0, 95505.4, DEFAULT_RULES, "0.002"),
        (1_000_000.0, 100.0, DEFAULT_RULES, "1000"),  # capped at max_qty
    ],
)
def test_order_qty_floors_to_the_step_with_decimal(amount, price, rules, want):
    qty = order_qty(amount, price, rules)
    assert isinstance(qty, Decimal)
    assert qty == Decimal(want)
    assert qty % rules.step == 0
    assert qty * Decimal(repr(price)) <= Decimal(repr(amount))  # never more notional than asked


def test_order_qty_floors_on_coarser_steps():
    rules = SymbolRules(step=Decimal("1"), min_qty=Decimal("1"), min_notional=Decimal("5"))
    assert order_qty(99.0, 10.0, rules) == Decimal("9")
    assert rules.format_qty(order_qty(99.0, 10.0, rules)) == "9"


def test_below_min_qty_is_refused_clearly():
    with pytest.raises(OrderSizeError) as err:
        order_qty(20.0, 27000.0, DEFAULT_RULES)  # 0.00074 -> 0.000
    msg = str(err.value)
    assert "minimum quantity 0.001" in msg and "TRADE_AMOUNT_USDT" in msg and "\n" not in msg


def test_below_min_notional_is_refused_clearly():
    with pytest.raises(OrderSizeError) as err:
        order_qty(100.0, 27000.0, DEFAULT_RULES)  # 0.003 BTC = 81 USDT < 100
    msg = str(err.value)
    assert "81.00 USDT" in msg and "100" in msg and "raise TRADE_AMOUNT_USDT" in msg
    assert order_qty(110.0, 27000.0, DEFAULT_RULES) == Decimal("0.004")  # 108 USDT is enough


@pytest.mark.parametrize(
    ("step", "qty", "text"),
    [
        ("0.001", "0.007", "0.007"),
        ("0.001", "0.0070", "0.007"),
        ("0.001", "7E-3", "0.007"),
        ("0.001", "12", "12.000"),
        ("0.001", "1E+1", "10.000"),
        ("0.01", "0.5", "0.50"),
        ("1", "3", "3"),
        ("0.00100000", "0.123", "0.123"),  # exchangeInfo writes steps with trailing zeros
    ],
)
def test_format_qty_is_a_plain_string_on_the_step(step, qty, text):
    rules = SymbolRules(step=Decimal(step))
    assert rules.format_qty(Decimal(qty)) == text


# ---- the ledger ------------------------------------------------------------------------------------

def test_long_round_trip_pnl_and_fees():
    ledger = Ledger()
    assert ledger.apply(Action.OPEN_LONG, 100.0, 2.0, 0.1) == 0.0
    assert (ledger.qty, ledger.entry_price) == (2.0, 100.0)
    assert ledger.unrealized(105.0) == pytest.approx(10.0)
    pnl = ledger.apply(Action.CLOSE_LONG, 110.0, 2.0, 0.11)
    assert pnl == pytest.approx(20.0)
    assert ledger.qty == 0.0 and ledger.entry_price == 0.0
    assert ledger.realized_usdt == pytest.approx(20.0)
    assert ledger.fees_usdt == pytest.approx(0.21)
    assert ledger.net_pnl_usdt == pytest.approx(19.79)
    assert (ledger.closed_trades, ledger.winning_trades) == (1, 1)


def test_short_round_trip_pnl_and_fees():
    ledger = Ledger()
    ledger.apply(Action.OPEN_SHORT, 100.0, 2.0, 0.1)
    assert ledger.qty == -2.0
    assert ledger.unrealized(90.0) == pytest.approx(20.0)
    assert ledger.unrealized(110.0) == pytest.approx(-20.0)
    pnl = ledger.apply(Action.CLOSE_SHORT, 95.0, 2.0, 0.095)
    assert pnl == pytest.approx(10.0)
    assert ledger.net_pnl_usdt == pytest.approx(10.0 - 0.195)
    assert (ledger.closed_trades, ledger.winning_trades) == (1, 1)


def test_a_trade_that_gains_less_than_its_fees_is_a_loss():
    ledger = Ledger()
    ledger.apply(Action.OPEN_LONG, 100.0, 1.0, 0.05)
    pnl = ledger.apply(Action.CLOSE_LONG, 100.08, 1.0, 0.05)
    assert pnl == pytest.approx(0.08)
    assert (ledger.closed_trades, ledger.winning_trades) == (1, 0)  # 0.08 - 0.10 fees < 0
    assert ledger.net_pnl_usdt == pytest.approx(-0.02)


def test_losing_short():
    ledger = Ledger()
    ledger.apply(Action.OPEN_SHORT, 100.0, 1.0, 0.0)
    assert ledger.apply(Action.CLOSE_SHORT, 103.0, 1.0, 0.0) == pytest.approx(-3.0)
    assert (ledger.closed_trades, ledger.winning_trades) == (1, 0)


# ---- the paper broker -----------------------------------------------------------------------------

def _tr(frm: State, to: State, price: float, *orders: Order) -> Transition:
    return Transition(1_700_000_000_000, frm, to, price, Bands(price + 10, price, price - 10), tuple(orders))


def _fill(broker: PaperBroker, tr: Transition):
    """All orders of a transition, as run and backtest fill them (no entry refused here)."""
    fills, refused = broker.fill_orders(tr.orders, tr.price)
    assert refused is None
    return fills


def test_paper_fill_is_at_the_tick_price_with_the_paper_fee():
    broker = PaperBroker(200.0, 0.0005)
    fills = _fill(broker, _tr(State.FLAT_BELOW_DN, State.LONG, 27000.0, Order(Action.OPEN_LONG, Reason.ENTRY)))
    assert len(fills) == 1
    f = fills[0]
    assert (f.action, f.reason, f.price, f.qty) == (Action.OPEN_LONG, Reason.ENTRY, 27000.0, 0.007)
    assert f.fee_usdt == pytest.approx(0.007 * 27000.0 * 0.0005)
    assert f.realized_pnl_usdt == 0.0
    assert broker.ledger.qty == 0.007 and broker.ledger.entry_price == 27000.0


def test_reversal_closes_then_opens_at_the_same_price():
    broker = PaperBroker(200.0, 0.0005)
    _fill(broker, _tr(State.FLAT_ABOVE_UP, State.SHORT, 30000.0, Order(Action.OPEN_SHORT, Reason.ENTRY)))
    assert broker.ledger.qty == pytest.approx(-0.006)
    fills = _fill(broker, _tr(State.SHORT_BELOW_DN, State.LONG, 27000.0,
                               Order(Action.CLOSE_SHORT, Reason.TAKE_PROFIT), Order(Action.OPEN_LONG, Reason.ENTRY)))
    assert [(f.action, f.reason) for f in fills] == [(Action.CLOSE_SHORT, Reason.TAKE_PROFIT),
                                                     (Action.OPEN_LONG, Reason.ENTRY)]
    close, open_ = fills
    assert close.price == open_.price == 27000.0
    assert close.qty == pytest.approx(0.006)  # closes exactly what was held
    assert close.realized_pnl_usdt == pytest.approx((30000.0 - 27000.0) * 0.006)
    assert open_.qty == 0.007  # then opens a fresh position sized at the new price
    assert broker.ledger.qty == pytest.approx(0.007) and broker.ledger.entry_price == 27000.0
    fee_total = 0.006 * 30000.0 * 0.0005 + 0.006 * 27000.0 * 0.0005 + 0.007 * 27000.0 * 0.0005
    assert broker.ledger.fees_usdt == pytest.approx(fee_total)
    assert broker.ledger.net_pnl_usdt == pytest.approx(18.0 - fee_total)


def test_close_with_nothing_held_is_skipped():
    broker = PaperBroker(200.0, 0.0005)
    fills = _fill(broker, _tr(State.LONG_ABOVE_UP, State.SHORT, 27000.0,
                               Order(Action.CLOSE_LONG, Reason.TAKE_PROFIT), Order(Action.OPEN_SHORT, Reason.ENTRY)))
    assert [f.action for f in fills] == [Action.OPEN_SHORT]


def test_paper_entry_below_the_minimum_is_refused():
    broker = PaperBroker(50.0, 0.0005)
    with pytest.raises(OrderSizeError):
        broker.fill(Order(Action.OPEN_LONG, Reason.ENTRY), 27000.0)
    assert broker.ledger.qty == 0.0 and broker.ledger.fees_usdt == 0.0


def test_client_order_id_is_deterministic_and_binance_safe():
    cid = client_order_id("a1b2c3", 12345, "o")
    assert cid == "bm-a1b2c3-12345-o" == client_order_id("a1b2c3", 12345, "o")
    assert len(client_order_id("ffffff", 10**12, "c")) <= 36
    assert set(cid) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
