"""Order sizing, position accounting, and the paper broker.

* ``SymbolRules`` — the exchange's quantity/price filters as ``Decimal``.
* ``order_qty`` — TRADE_AMOUNT_USDT / price rounded **down** to the step.
* ``Ledger`` — position, entry price, realised PnL and fees; used by paper and live alike.
* ``PaperBroker`` — fills every order at the tick price with ``PAPER_FEE_RATE``.

Pure: recording fills in SQLite is the caller's job (``record_transition``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from typing import NamedTuple

from engine import Transition
from state import Action, Order, Reason, State


class OrderSizeError(ValueError):
    """The order would be below the exchange's minimum quantity or notional."""


@dataclass(frozen=True)
class SymbolRules:
    """Quantity and price rules of one symbol (from exchangeInfo filters)."""

    step: Decimal = Decimal("0.001")       # MARKET_LOT_SIZE (or LOT_SIZE) stepSize
    min_qty: Decimal = Decimal("0.001")    # MARKET_LOT_SIZE (or LOT_SIZE) minQty
    max_qty: Decimal = Decimal("1000")
    min_notional: Decimal = Decimal("100")  # MIN_NOTIONAL notional, USDT
    tick: Decimal = Decimal("0.10")        # PRICE_FILTER tickSize

    def floor_qty(self, qty: Decimal) -> Decimal:
        return (qty / self.step).to_integral_value(rounding=ROUND_DOWN) * self.step

    def format_qty(self, qty: Decimal) -> str:
        """The quantity as Binance wants it: a plain decimal string on the step."""
        return format(qty.quantize(self.step.normalize()), "f")


DEFAULT_RULES = SymbolRules()


def order_qty(amount_usdt: float, price: float, rules: SymbolRules) -> Decimal:
    """Quantity to open: ``amount_usdt / price`` rounded down to the step; checks the minimums.

    >>> order_qty(200.0, 27000.0, DEFAULT_RULES)
    Decimal('0.007')
    """
    qty = rules.floor_qty(Decimal(repr(amount_usdt)) / Decimal(repr(price)))
    if qty > rules.max_qty:
        qty = rules.floor_qty(rules.max_qty)
    if qty < rules.min_qty:
        raise OrderSizeError(
            f"TRADE_AMOUNT_USDT {amount_usdt} buys {qty} at {price}, below the minimum quantity {rules.min_qty}"
        )
    if qty * Decimal(repr(price)) < rules.min_notional:
        raise OrderSizeError(
            f"order notional {qty * Decimal(repr(price)):.2f} USDT ({qty} at {price}) is below the exchange "
            f"minimum of {rules.min_notional} USDT: raise TRADE_AMOUNT_USDT"
        )
    return qty


def amount_warning(amount_usdt: float, rules: SymbolRules, where: str, price: float | None = None) -> str | None:
    """Why entries would be refused at this TRADE_AMOUNT_USDT, or None.

    Below the minimum notional every entry is refused; at ``price`` (the last known one) rounding
    the quantity down to the lot step may still leave less than the minimum.
    """
    if Decimal(repr(amount_usdt)) < rules.min_notional:
        return (f"TRADE_AMOUNT_USDT = {amount_usdt:g} is below the minimum order notional of {where} "
                f"({rules.min_notional} USDT): every entry will be refused; raise TRADE_AMOUNT_USDT")
    if price is not None and price > 0:
        try:
            order_qty(amount_usdt, price, rules)
        except OrderSizeError as exc:
            return f"at the last price {price:g} of {where} an entry would be refused: {exc}"
    return None


class Fill(NamedTuple):
    """An executed order (paper or live)."""

    action: Action
    reason: Reason
    price: float
    qty: float
    fee_usdt: float
    realized_pnl_usdt: float  # gross PnL of the closed quantity (closes only)


class Ledger:
    """Position and money of one symbol. ``qty`` is signed: > 0 long, < 0 short."""

    __slots__ = ("qty", "entry_price", "realized_usdt", "fees_usdt", "closed_trades", "winning_trades",
                 "_open_fee", "funding_usdt", "won_usdt", "lost_usdt")

    def __init__(self, qty: float = 0.0, entry_price: float = 0.0, realized_usdt: float = 0.0,
                 fees_usdt: float = 0.0, closed_trades: int = 0, winning_trades: int = 0) -> None:
        self.qty, self.entry_price = qty, entry_price
        self.realized_usdt, self.fees_usdt = realized_usdt, fees_usdt
        self.closed_trades, self.winning_trades = closed_trades, winning_trades
        self._open_fee = 0.0  # costs of the current position so far: its entry fee (+ funding paid)
        self.funding_usdt = 0.0  # funding paid (> 0) or received (< 0); backtest and sweep only
        self.won_usdt = 0.0      # sum of the net PnL of winning round trips (for the profit factor)
        self.lost_usdt = 0.0     # sum of the net losses of losing round trips, a positive number

    @property
    def net_pnl_usdt(self) -> float:
        """Realised PnL minus every fee paid (and the funding paid, when funding is charged)."""
        return self.realized_usdt - self.fees_usdt - self.funding_usdt

    def apply_funding(self, rate: float, mark_price: float) -> float:
        """Charge one funding payment on the open position; returns what it cost (< 0: received).

        Payment = position notional at the mark price × rate; a positive rate makes longs pay shorts.
        """
        cost = self.qty * mark_price * rate
        self.funding_usdt += cost
        self._open_fee += cost
        return cost

    def unrealized(self, price: float) -> float:
        return (price - self.entry_price) * self.qty if self.qty else 0.0

    def apply(self, action: Action, price: float, qty: float, fee_usdt: float) -> float:
        """Book an executed order; returns the gross realised PnL it produced."""
        self.fees_usdt += fee_usdt
        if action.closes:
            held = abs(self.qty)
            closed = min(qty, held)
            sign = 1.0 if self.qty > 0 else -1.0
            pnl = (price - self.entry_price) * closed * sign
            self.realized_usdt += pnl
            self.closed_trades += 1
            net = pnl - fee_usdt - self._open_fee
            if net > 0:
                self.winning_trades += 1
                self.won_usdt += net
            else:
                self.lost_usdt -= net
            remaining = held - closed
            self.qty = sign * remaining if remaining > 1e-12 else 0.0
            if not self.qty:
                self.entry_price = 0.0
                self._open_fee = 0.0
            return pnl
        sign = 1.0 if action is Action.OPEN_LONG else -1.0
        new_qty = abs(self.qty) + qty
        self.entry_price = (self.entry_price * abs(self.qty) + price * qty) / new_qty
        self.qty = sign * new_qty
        self._open_fee += fee_usdt
        return 0.0


class PaperBroker:
    """Fills every order at the tick price, charging ``fee_rate`` of the notional.

    ``slippage_pct`` (PAPER_SLIPPAGE_PCT, default 0): fills that much worse than the tick price,
    buys higher and sells lower; the quantity is still sized at the tick price, as a live order is.
    """

    def __init__(self, amount_usdt: float, fee_rate: float, rules: SymbolRules = DEFAULT_RULES,
                 ledger: Ledger | None = None, slippage_pct: float = 0.0) -> None:
        self.amount_usdt, self.fee_rate, self.rules = amount_usdt, fee_rate, rules
        self.ledger = ledger or Ledger()
        self.slippage_pct = slippage_pct
        self._buy_mult, self._sell_mult = 1.0 + slippage_pct / 100.0, 1.0 - slippage_pct / 100.0
        self._step = float(rules.step)
        self._min_steps = int((rules.min_qty / rules.step).to_integral_value(rounding=ROUND_CEILING))
        self._max_steps = int((rules.max_qty / rules.step).to_integral_value(rounding=ROUND_DOWN))
        self._min_notional = float(rules.min_notional)
        self._qty_of_steps: dict[int, float] = {}

    def entry_qty(self, price: float) -> float:
        """Quantity of an entry at ``price``: exactly ``float(order_qty(...))``, usually without Decimal.

        Raises OrderSizeError below the minimums. The float ratio ``amount / price / step`` is within
        a few 1e-16 of the exact one, so away from a whole number of steps its floor is the floor
        ``order_qty`` takes; near one (and near the minimum notional), ``order_qty`` decides.
        """
        steps = self.amount_usdt / price / self._step
        n = math.floor(steps)
        if 1e-9 < steps - n < 1 - 1e-9 and self._min_steps <= n <= self._max_steps \
                and n * self._step * price > self._min_notional * (1 + 1e-9):
            qty = self._qty_of_steps.get(n)
            if qty is None:
                qty = self._qty_of_steps[n] = float(n * self.rules.step)
            return qty
        return float(order_qty(self.amount_usdt, price, self.rules))

    def fill(self, order: Order, price: float) -> Fill:
        """Execute one order at ``price``. Raises OrderSizeError for an entry below the minimums."""
        if order.action.closes:
            qty = abs(self.ledger.qty)
        else:
            qty = self.entry_qty(price)
        if self.slippage_pct:
            price = price * (self._buy_mult if order.action.side == "BUY" else self._sell_mult)
        fee = qty * price * self.fee_rate
        pnl = self.ledger.apply(order.action, price, qty, fee)
        return Fill(order.action, order.reason, price, qty, fee, pnl)

    def fill_orders(self, orders: tuple[Order, ...], price: float) -> tuple[list[Fill], str | None]:
        """Fill orders in turn (close first); a close with nothing held is skipped.

        Returns the fills and, when an entry was below the exchange minimums, why it was refused
        (the caller then leaves the strategy FLAT, as a live rejection does).
        """
        fills, refused = [], None
        for order in orders:
            if order.action.closes and not self.ledger.qty:
                continue
            try:
                fills.append(self.fill(order, price))
            except OrderSizeError as exc:
                refused = str(exc)
        return fills, refused


def paper_broker_from_config(cfg, rules: SymbolRules = DEFAULT_RULES, ledger: Ledger | None = None) -> PaperBroker:
    """The paper broker the settings ask for: TRADE_AMOUNT_USDT, PAPER_FEE_RATE, PAPER_SLIPPAGE_PCT."""
    return PaperBroker(cfg.TRADE_AMOUNT_USDT, cfg.PAPER_FEE_RATE, rules, ledger,
                       float(getattr(cfg, "PAPER_SLIPPAGE_PCT", 0.0)))


def client_order_id(db_id: str, transition_id: int, leg: str) -> str:
    """Deterministic ``newClientOrderId``: ``bm-<db id>-<transition id>-<leg>`` (≤ 36 chars).

    Only ``A-Za-z0-9_-``: python-binance signs raw values but URL-encodes the body.
    """
    return f"bm-{db_id}-{transition_id}-{leg}"


def record_transition(store, transition: Transition, fills: list[Fill], *, db_id: str, symbol: str,
                      paper: bool, ledger: Ledger | None, cause: str | None = None,
                      transition_id: int | None = None) -> int:
    """Write a transition, its paper orders and fills, and the new state and position (one transaction).

    ``cause`` defaults to the transition's own; ``ledger`` None leaves the stored position alone
    (live: fills write it when they happen).
    """
    tid = store.add_transition(transition.time_ms, transition.from_state, transition.to_state,
                               transition.price, transition.bands, cause or transition.cause,
                               transition_id=transition_id)
    for fill in fills:
        leg = "c" if fill.action.closes else "o"
        cid = client_order_id(db_id, tid, leg)
        oid = store.add_order(client_order_id=cid, transition_id=tid, time_ms=transition.time_ms, symbol=symbol,
                              action=fill.action, reason=fill.reason, side=fill.action.side, qty=fill.qty,
                              reduce_only=fill.action.closes, paper=paper, tick_price=transition.price,
                              status="filled")
        store.update_order(cid, fill_price=fill.price, filled_qty=fill.qty, fee_usdt=fill.fee_usdt,
                           realized_pnl_usdt=fill.realized_pnl_usdt if fill.action.closes else None)
        store.add_fill(oid, transition.time_ms, fill.price, fill.qty, fill.fee_usdt, fill.realized_pnl_usdt, paper)
    values: dict[str, float | int | str] = {"state": transition.to_state.value}
    if ledger is not None:
        values |= ledger_status(ledger)
    store.set_status(values)
    return tid


def ledger_status(ledger: Ledger) -> dict[str, float | int]:
    """The ledger as status-table values (restored with ``ledger_from_status``)."""
    return {
        "position_qty": ledger.qty,
        "entry_price": ledger.entry_price,
        "realized_gross_usdt": ledger.realized_usdt,
        "fees_usdt": ledger.fees_usdt,
        "realized_pnl_usdt": ledger.net_pnl_usdt,
        "closed_trades": ledger.closed_trades,
        "winning_trades": ledger.winning_trades,
    }


def ledger_from_status(status: dict[str, str]) -> Ledger:
    def num(key: str) -> float:
        try:
            return float(status.get(key) or 0.0)
        except ValueError:
            return 0.0

    return Ledger(num("position_qty"), num("entry_price"), num("realized_gross_usdt"), num("fees_usdt"),
                  int(num("closed_trades")), int(num("winning_trades")))


def state_from_status(status: dict[str, str]) -> State:
    try:
        return State(status.get("state") or "FLAT")
    except ValueError:
        return State.FLAT
