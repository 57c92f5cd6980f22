"""The strategy: seven states and their transition table, as data (docs/strategy.md).

Every transition the strategy can make lives in ``TABLE`` in this file. ``step`` looks up the
rows of the current state, takes the first whose condition holds for the tick, and returns
the next state with the orders to place. At most one transition per tick; a tick that
matches no row leaves the state unchanged. Nothing else moves the state except the
documented overrides in the bot (reconciliation with the exchange, a rejected entry).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple


class State(StrEnum):
    FLAT = "FLAT"
    FLAT_ABOVE_UP = "FLAT_ABOVE_UP"
    FLAT_BELOW_DN = "FLAT_BELOW_DN"
    LONG = "LONG"
    LONG_ABOVE_UP = "LONG_ABOVE_UP"
    SHORT = "SHORT"
    SHORT_BELOW_DN = "SHORT_BELOW_DN"


LABEL_ZH: dict[State, str] = {
    State.FLAT: "空仓等待",
    State.FLAT_ABOVE_UP: "突破 UP",
    State.FLAT_BELOW_DN: "跌破 DN",
    State.LONG: "持有多仓",
    State.LONG_ABOVE_UP: "持多·突破 UP",
    State.SHORT: "持有空仓",
    State.SHORT_BELOW_DN: "持空·跌破 DN",
}

LABEL_EN: dict[State, str] = {
    State.FLAT: "Flat, waiting",
    State.FLAT_ABOVE_UP: "Broke above UP",
    State.FLAT_BELOW_DN: "Broke below DN",
    State.LONG: "Holding long",
    State.LONG_ABOVE_UP: "Long, above UP",
    State.SHORT: "Holding short",
    State.SHORT_BELOW_DN: "Short, below DN",
}

#: Sign of the position each state holds: +1 long, -1 short, 0 none.
POSITION: dict[State, int] = {
    State.FLAT: 0,
    State.FLAT_ABOVE_UP: 0,
    State.FLAT_BELOW_DN: 0,
    State.LONG: 1,
    State.LONG_ABOVE_UP: 1,
    State.SHORT: -1,
    State.SHORT_BELOW_DN: -1,
}


class Action(StrEnum):
    OPEN_LONG = "open_long"
    OPEN_SHORT = "open_short"
    CLOSE_LONG = "close_long"
    CLOSE_SHORT = "close_short"

    @property
    def side(self) -> str:
        """Binance order side."""
        return _SIDE[self]

    @property
    def closes(self) -> bool:
        return _CLOSES[self]


# Looked up per order (a dict lookup is several times faster than comparing enum members).
_SIDE = {a: "BUY" if a in (Action.OPEN_LONG, Action.CLOSE_SHORT) else "SELL" for a in Action}
_CLOSES = {a: a in (Action.CLOSE_LONG, Action.CLOSE_SHORT) for a in Action}


class Reason(StrEnum):
    ENTRY = "entry"
    TAKE_PROFIT = "take_profit"
    STOP_LOSS = "stop_loss"
    MANUAL = "manual"  # not in the table: a person closed the position from the dashboard


class Order(NamedTuple):
    """An order the strategy asks for (what and why); sizing is the broker's business."""

    action: Action
    reason: Reason


class Rule(NamedTuple):
    when: str  # the condition on the tick price p and the live bands including that tick: a key of _BAND_OP
    orders: tuple[Order, ...]
    to: State


_OPEN_LONG = Order(Action.OPEN_LONG, Reason.ENTRY)
_OPEN_SHORT = Order(Action.OPEN_SHORT, Reason.ENTRY)

# The strategy, row for row. Within a state the rules are checked in order; the first match wins.
TABLE: dict[State, tuple[Rule, ...]] = {
    State.FLAT: (
        Rule("p > UP", (), State.FLAT_ABOVE_UP),
        Rule("p < DN", (), State.FLAT_BELOW_DN),
    ),
    State.FLAT_ABOVE_UP: (
        # Broke out above UP and fell back inside: fade the breakout.
        Rule("p <= UP", (_OPEN_SHORT,), State.SHORT),
    ),
    State.FLAT_BELOW_DN: (
        Rule("p >= DN", (_OPEN_LONG,), State.LONG),
    ),
    State.SHORT: (
        # A new breakout above UP while short stops the short out; we then wait for the
        # fall back inside UP to short again (FLAT_ABOVE_UP).
        Rule("p > UP", (Order(Action.CLOSE_SHORT, Reason.STOP_LOSS),), State.FLAT_ABOVE_UP),
        Rule("p < DN", (), State.SHORT_BELOW_DN),
    ),
    State.SHORT_BELOW_DN: (
        # Reversal: take the short's profit and go long, close first, then open.
        Rule("p >= DN", (Order(Action.CLOSE_SHORT, Reason.TAKE_PROFIT), _OPEN_LONG), State.LONG),
    ),
    State.LONG: (
        Rule("p < DN", (Order(Action.CLOSE_LONG, Reason.STOP_LOSS),), State.FLAT_BELOW_DN),
        Rule("p > UP", (), State.LONG_ABOVE_UP),
    ),
    State.LONG_ABOVE_UP: (
        Rule("p <= UP", (Order(Action.CLOSE_LONG, Reason.TAKE_PROFIT), _OPEN_SHORT), State.SHORT),
    ),
}


# The same table with each condition as a C-level comparison of (price, band): ``step`` runs
# on every tick, and a lambda call costs several times an ``operator`` call.
_BAND_OP: dict[str, tuple[bool, Callable[[float, float], bool]]] = {
    "p > UP": (True, operator.gt),
    "p < DN": (False, operator.lt),
    "p <= UP": (True, operator.le),
    "p >= DN": (False, operator.ge),
}
_COMPILED: dict[State, tuple[tuple[bool, Callable[[float, float], bool], State, tuple[Order, ...]], ...]] = {
    state: tuple((*_BAND_OP[rule.when], rule.to, rule.orders) for rule in rules) for state, rules in TABLE.items()
}


def _rules_function(state: State) -> Callable[[float, float, float], tuple[State, tuple[Order, ...]]]:
    """The rows of ``state`` (``_COMPILED``, so ``TABLE``) as one function of (price, UP, DN).

    It returns the first row that holds, else the state unchanged without orders. Every state has
    one or two rows; a function per state saves the loop on every tick (a quarter of ``step``'s time).
    """
    rules = _COMPILED[state]
    unchanged: tuple[State, tuple[Order, ...]] = (state, ())
    if len(rules) == 1:
        ((use_up, compare, to, orders),) = rules
        result = (to, orders)
        if use_up:
            return lambda p, up, dn: result if compare(p, up) else unchanged
        return lambda p, up, dn: result if compare(p, dn) else unchanged
    if len(rules) == 2:
        (up_1, compare_1, to_1, orders_1), (up_2, compare_2, to_2, orders_2) = rules
        first, second = (to_1, orders_1), (to_2, orders_2)

        def two(p: float, up: float, dn: float) -> tuple[State, tuple[Order, ...]]:
            if compare_1(p, up if up_1 else dn):
                return first
            if compare_2(p, up if up_2 else dn):
                return second
            return unchanged

        return two

    def any_number(p: float, up: float, dn: float) -> tuple[State, tuple[Order, ...]]:
        for use_up, compare, to, orders in rules:
            if compare(p, up if use_up else dn):
                return to, orders
        return unchanged

    return any_number


_STEP = {state: _rules_function(state) for state in TABLE}


def step(state: State, price: float, up: float, dn: float) -> tuple[State, tuple[Order, ...]]:
    """One tick of the strategy: (next state, orders). Unchanged state means no orders."""
    return _STEP[state](price, up, dn)


def parse_state(name: str) -> State:
    """The State named ``name``; ValueError with the valid names otherwise."""
    try:
        return State(name)
    except ValueError:
        raise ValueError(f"unknown state {name!r}; expected one of {', '.join(s.value for s in State)}") from None


# ---- optional variations (off by default; the table above is the strategy as specified) --------
#
# Breakout buffer: the rows whose condition is a breakout beyond a band ("p > UP", "p < DN": a
# breakout, and in SHORT/LONG also the stop-loss) compare the price with the band moved outward
# by a buffer (``up_break`` >= UP, ``dn_break`` <= DN); the rows that wait for the price to come
# back inside ("p <= UP", "p >= DN") keep the plain band. A price hovering on a band then no
# longer flips between breakout and re-entry on consecutive ticks.
BREAKOUT_CONDITIONS = frozenset({"p > UP", "p < DN"})

# Which band each condition reads in ``step_buffered``: an index into (up_break, dn_break, up, dn).
_BUFFERED_OP: dict[str, tuple[int, Callable[[float, float], bool]]] = {
    "p > UP": (0, operator.gt),
    "p < DN": (1, operator.lt),
    "p <= UP": (2, operator.le),
    "p >= DN": (3, operator.ge),
}
_COMPILED_BUFFERED: dict[State, tuple[tuple[int, Callable[[float, float], bool], State, tuple[Order, ...]], ...]] = {
    state: tuple((*_BUFFERED_OP[rule.when], rule.to, rule.orders) for rule in rules) for state, rules in TABLE.items()
}


def buffer_bands(up: float, dn: float, buffer_pct: float) -> tuple[float, float]:
    """(up_break, dn_break): UP raised and DN lowered by ``buffer_pct`` % of themselves.

    >>> buffer_bands(100.0, 50.0, 1.0)
    (101.0, 49.5)
    """
    if not buffer_pct:
        return up, dn
    up_mult, dn_mult = buffer_multipliers(buffer_pct)
    return up * up_mult, dn * dn_mult


def buffer_multipliers(buffer_pct: float) -> tuple[float, float]:
    """The factors UP and DN are multiplied by for a breakout buffer of ``buffer_pct`` %."""
    return 1.0 + buffer_pct / 100.0, 1.0 - buffer_pct / 100.0


def step_buffered(state: State, price: float, up: float, dn: float, up_break: float,
                  dn_break: float) -> tuple[State, tuple[Order, ...]]:
    """``step`` with the breakout rows reading ``up_break``/``dn_break`` (see BREAKOUT_CONDITIONS).

    With ``up_break == up`` and ``dn_break == dn`` it is exactly ``step``.
    """
    bands = (up_break, dn_break, up, dn)
    for which, compare, to, orders in _COMPILED_BUFFERED[state]:
        if compare(price, bands[which]):
            return to, orders
    return state, ()


def is_fresh_entry(from_state: State, orders: tuple[Order, ...]) -> bool:
    """True when a transition opens a position from no position (not the open leg of a reversal).

    A stop-loss cooldown skips exactly these: the table's move is made without the entry, to
    ``FLAT`` (the same state a refused or paused entry leaves), so a new breakout is needed.
    """
    return POSITION[from_state] == 0 and any(not o.action.closes for o in orders)


def has_stop_loss(orders: tuple[Order, ...]) -> bool:
    return any(o.reason is Reason.STOP_LOSS for o in orders)
