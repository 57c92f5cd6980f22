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
        return "BUY" if self in (Action.OPEN_LONG, Action.CLOSE_SHORT) else "SELL"

    @property
    def closes(self) -> bool:
        return self in (Action.CLOSE_LONG, Action.CLOSE_SHORT)


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


def step(state: State, price: float, up: float, dn: float) -> tuple[State, tuple[Order, ...]]:
    """One tick of the strategy: (next state, orders). Unchanged state means no orders."""
    for use_up, compare, to, orders in _COMPILED[state]:
        if compare(price, up if use_up else dn):
            return to, orders
    return state, ()


def parse_state(name: str) -> State:
    """The State named ``name``; ValueError with the valid names otherwise."""
    try:
        return State(name)
    except ValueError:
        raise ValueError(f"unknown state {name!r}; expected one of {', '.join(s.value for s in State)}") from None
