"""The strategy table (docs/strategy.md): every row, the rule order, and that nothing else moves the state."""

from __future__ import annotations

import pytest

import state
from state import LABEL_ZH, TABLE, Action, Reason, State, parse_state, step

UP, DN = 110.0, 90.0  # live bands of the tick (MID 100)

OPEN_LONG = ("open_long", "entry")
OPEN_SHORT = ("open_short", "entry")

# docs/strategy.md's table, written out independently of state.py: (from, condition, orders, to), in its order.
SPEC_ROWS: list[tuple[str, str, tuple[tuple[str, str], ...], str]] = [
    ("FLAT", "p > UP", (), "FLAT_ABOVE_UP"),
    ("FLAT", "p < DN", (), "FLAT_BELOW_DN"),
    ("FLAT_ABOVE_UP", "p <= UP", (OPEN_SHORT,), "SHORT"),
    ("FLAT_BELOW_DN", "p >= DN", (OPEN_LONG,), "LONG"),
    ("SHORT", "p > UP", (("close_short", "stop_loss"),), "FLAT_ABOVE_UP"),
    ("SHORT", "p < DN", (), "SHORT_BELOW_DN"),
    ("SHORT_BELOW_DN", "p >= DN", (("close_short", "take_profit"), OPEN_LONG), "LONG"),
    ("LONG", "p < DN", (("close_long", "stop_loss"),), "FLAT_BELOW_DN"),
    ("LONG", "p > UP", (), "LONG_ABOVE_UP"),
    ("LONG_ABOVE_UP", "p <= UP", (("close_long", "take_profit"), OPEN_SHORT), "SHORT"),
]


def holds(cond: str, p: float, up: float, dn: float) -> bool:
    return {"p > UP": p > up, "p < DN": p < dn, "p <= UP": p <= up, "p >= DN": p >= dn}[cond]


def spec_step(frm: str, p: float, up: float, dn: float) -> tuple[str, tuple[tuple[str, str], ...]]:
    for row_from, cond, orders, to in SPEC_ROWS:
        if row_from == frm and holds(cond, p, up, dn):
            return to, orders
    return frm, ()


def run(frm: str, p: float, up: float = UP, dn: float = DN) -> tuple[str, tuple[tuple[str, str], ...]]:
    to, orders = step(State(frm), p, up, dn)
    assert isinstance(to, State)
    return to.value, tuple((o.action.value, o.reason.value) for o in orders)


# ---- one test per row, concrete prices ----------------------------------------------------------

@pytest.mark.parametrize(
    ("frm", "price", "to", "orders"),
    [
        ("FLAT", 111.0, "FLAT_ABOVE_UP", ()),
        ("FLAT", 89.0, "FLAT_BELOW_DN", ()),
        ("FLAT_ABOVE_UP", 105.0, "SHORT", (("open_short", "entry"),)),
        ("FLAT_BELOW_DN", 95.0, "LONG", (("open_long", "entry"),)),
        ("SHORT", 111.0, "FLAT_ABOVE_UP", (("close_short", "stop_loss"),)),
        ("SHORT", 89.0, "SHORT_BELOW_DN", ()),
        ("SHORT_BELOW_DN", 95.0, "LONG", (("close_short", "take_profit"), ("open_long", "entry"))),
        ("LONG", 89.0, "FLAT_BELOW_DN", (("close_long", "stop_loss"),)),
        ("LONG", 111.0, "LONG_ABOVE_UP", ()),
        ("LONG_ABOVE_UP", 105.0, "SHORT", (("close_long", "take_profit"), ("open_short", "entry"))),
    ],
    ids=[f"row{i + 1}-{r[0]}-{r[1]}" for i, r in enumerate(SPEC_ROWS)],
)
def test_spec_row(frm, price, to, orders):
    assert run(frm, price) == (to, orders)


def test_reversals_close_before_they_open():
    for frm in ("SHORT_BELOW_DN", "LONG_ABOVE_UP"):
        _to, orders = step(State(frm), 100.0, UP, DN)
        assert len(orders) == 2
        assert orders[0].action.closes and not orders[1].action.closes
        assert orders[0].reason is Reason.TAKE_PROFIT and orders[1].reason is Reason.ENTRY
        # the open goes the other way from the close: short -> long, long -> short
        assert {orders[0].action, orders[1].action} in (
            {Action.CLOSE_SHORT, Action.OPEN_LONG}, {Action.CLOSE_LONG, Action.OPEN_SHORT})


# ---- equality edges --------------------------------------------------------------------------------

def test_price_equal_to_up_after_breaking_above_opens_short():
    assert run("FLAT_ABOVE_UP", UP) == ("SHORT", (OPEN_SHORT,))


def test_price_equal_to_dn_after_breaking_below_opens_long():
    assert run("FLAT_BELOW_DN", DN) == ("LONG", (OPEN_LONG,))


def test_price_equal_to_a_band_from_flat_does_nothing():
    assert run("FLAT", UP) == ("FLAT", ())
    assert run("FLAT", DN) == ("FLAT", ())


def test_price_equal_to_a_band_while_holding_keeps_the_position():
    assert run("LONG", DN) == ("LONG", ())  # stop only strictly below DN
    assert run("LONG", UP) == ("LONG", ())
    assert run("SHORT", UP) == ("SHORT", ())  # stop only strictly above UP
    assert run("SHORT", DN) == ("SHORT", ())
    assert run("LONG_ABOVE_UP", UP) == ("SHORT", (("close_long", "take_profit"), OPEN_SHORT))
    assert run("SHORT_BELOW_DN", DN) == ("LONG", (("close_short", "take_profit"), OPEN_LONG))


def test_zero_width_bands():
    """sigma = 0 (a flat window): UP = DN = price, nothing triggers from FLAT; pending entries fill."""
    assert run("FLAT", 100.0, 100.0, 100.0) == ("FLAT", ())
    assert run("FLAT_ABOVE_UP", 100.0, 100.0, 100.0) == ("SHORT", (OPEN_SHORT,))
    assert run("FLAT_BELOW_DN", 100.0, 100.0, 100.0) == ("LONG", (OPEN_LONG,))


# ---- rule order within a state ---------------------------------------------------------------------

def test_rule_order_within_a_state():
    """With UP < DN (impossible from real bands, but it shows which row is checked first) a price
    between them satisfies both rows of FLAT, SHORT and LONG: the first row in the documented order wins."""
    up, dn, p = 90.0, 110.0, 100.0  # p > UP and p < DN both hold
    assert run("FLAT", p, up, dn) == ("FLAT_ABOVE_UP", ())
    assert run("SHORT", p, up, dn) == ("FLAT_ABOVE_UP", (("close_short", "stop_loss"),))
    assert run("LONG", p, up, dn) == ("FLAT_BELOW_DN", (("close_long", "stop_loss"),))


def test_one_transition_per_step():
    """A price that would satisfy the next state's rules as well moves only one row."""
    # SHORT_BELOW_DN -> LONG; from LONG, p > UP would go on to LONG_ABOVE_UP: it must not.
    assert run("SHORT_BELOW_DN", 120.0) == ("LONG", (("close_short", "take_profit"), OPEN_LONG))
    # LONG_ABOVE_UP -> SHORT; from SHORT, p < DN would go on to SHORT_BELOW_DN: it must not.
    assert run("LONG_ABOVE_UP", 80.0) == ("SHORT", (("close_long", "take_profit"), OPEN_SHORT))
    # FLAT_BELOW_DN -> LONG, not further to LONG_ABOVE_UP; FLAT_ABOVE_UP -> SHORT, not SHORT_BELOW_DN.
    assert run("FLAT_BELOW_DN", 120.0) == ("LONG", (OPEN_LONG,))
    assert run("FLAT_ABOVE_UP", 80.0) == ("SHORT", (OPEN_SHORT,))


# ---- nothing else moves the state -----------------------------------------------------------------

GRID = {"p<DN": 80.0, "p=DN": DN, "DN<p<UP": 100.0, "p=UP": UP, "p>UP": 120.0}


@pytest.mark.parametrize("frm", [s.value for s in State])
@pytest.mark.parametrize("where", list(GRID))
def test_every_state_and_price_is_a_table_row_or_nothing(frm, where):
    p = GRID[where]
    got = run(frm, p)
    assert got == spec_step(frm, p, UP, DN)
    to, orders = got
    if to == frm:
        assert orders == ()  # an unchanged state never places orders
    else:
        assert (frm, to, orders) in {(r[0], r[3], r[2]) for r in SPEC_ROWS}


def test_the_grid_reaches_every_row():
    """The grid above exercises all ten rows (so it can tell a missing row)."""
    used = set()
    for frm in State:
        for p in GRID.values():
            for i, (row_from, cond, _orders, _to) in enumerate(SPEC_ROWS):
                if row_from == frm.value and holds(cond, p, UP, DN):
                    used.add(i)
                    break
    assert used == set(range(len(SPEC_ROWS)))


# ---- names, labels, the table as data -------------------------------------------------------------

def test_state_names_are_exact():
    assert [s.value for s in State] == ["FLAT", "FLAT_ABOVE_UP", "FLAT_BELOW_DN", "LONG", "LONG_ABOVE_UP",
                                        "SHORT", "SHORT_BELOW_DN"]
    assert str(State.LONG_ABOVE_UP) == "LONG_ABOVE_UP"


def test_chinese_labels_are_exactly_the_specs():
    assert {s.value: label for s, label in LABEL_ZH.items()} == {
        "FLAT": "空仓等待",
        "FLAT_ABOVE_UP": "突破 UP",
        "FLAT_BELOW_DN": "跌破 DN",
        "LONG": "持有多仓",
        "LONG_ABOVE_UP": "持多·突破 UP",
        "SHORT": "持有空仓",
        "SHORT_BELOW_DN": "持空·跌破 DN",
    }


def test_positions_follow_the_spec():
    assert {s.value: state.POSITION[s] for s in State} == {
        "FLAT": 0, "FLAT_ABOVE_UP": 0, "FLAT_BELOW_DN": 0, "LONG": 1, "LONG_ABOVE_UP": 1, "SHORT": -1,
        "SHORT_BELOW_DN": -1,
    }


def test_table_is_a_dict_keyed_by_state_with_the_ten_rows():
    assert isinstance(TABLE, dict)
    assert set(TABLE) == set(State) and all(isinstance(k, State) for k in TABLE)
    rows = [(frm.value, rule.when, tuple((o.action.value, o.reason.value) for o in rule.orders), rule.to.value)
            for frm, rules in TABLE.items() for rule in rules]
    assert sorted(rows) == sorted(SPEC_ROWS)
    for frm in State:  # order within each state as documented
        assert [r[1] for r in rows if r[0] == frm.value] == [r[1] for r in SPEC_ROWS if r[0] == frm.value]


def test_action_and_reason_names_and_sides():
    assert [a.value for a in Action] == ["open_long", "open_short", "close_long", "close_short"]
    assert {"entry", "take_profit", "stop_loss"} <= {r.value for r in Reason}
    table_reasons = {o.reason.value for rules in TABLE.values() for rule in rules for o in rule.orders}
    assert table_reasons == {"entry", "take_profit", "stop_loss"}  # the table uses exactly the documented ones
    assert {a.value: a.side for a in Action} == {"open_long": "BUY", "open_short": "SELL",
                                                 "close_long": "SELL", "close_short": "BUY"}


def test_parse_state():
    assert parse_state("SHORT_BELOW_DN") is State.SHORT_BELOW_DN
    with pytest.raises(ValueError, match="expected one of FLAT"):
        parse_state("flat")
