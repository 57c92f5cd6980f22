"""The sweep's fast evaluator: the engine's exact actions over a whole tape, with numpy.

``backtest`` feeds every tick through ``Engine.on_trade`` (the live code path). A sweep runs the
same strategy for hundreds of parameter sets, so it takes a shortcut that gives the same actions,
tick for tick (tests/test_evaluator.py proves it on all bundled data, on generated price paths
with prices exactly on a band and flat windows, and for every variation):

1. **Bands for all ticks at once.** The engine's live BOLL (``indicators.LiveBoll``) keeps running
   sums of deviations from a reference price, re-anchored now and then. Its state before each
   candle depends only on the closes, so it is taken from a real ``LiveBoll`` pushed through the
   closes once per (interval, period); then UP/MID/DN of every tick follow from that state with
   the very same float operations as ``LiveBoll.values``, as numpy array expressions (IEEE
   operations rounded one by one, exactly as Python does them). One (interval, period) serves
   every k and every variation.
2. **Zones.** With the bands, each tick falls in one of five zones: below DN−buffer, between
   DN−buffer and DN, inside, between UP and UP+buffer, above UP+buffer (without a buffer only
   three occur). The table's conditions depend only on the zone, so ``ZONE_TABLE`` is the
   strategy table (``state.TABLE``) rewritten per zone.
3. **From crossing to crossing.** The state can only change where the zone changes (or on the
   ticks right after a transition inside one run of a zone: at most one transition per tick), so
   a Python loop walks the runs of equal zones, not the ticks. Orders go through the real paper
   broker and ledger (``broker.PaperBroker``), funding through ``Ledger.apply_funding``.
4. **Figures** come from ``metrics.summarize``, the function ``backtest`` uses.

Evaluate on close: the decisions are taken at each candle's last tick (its close, with the bands
of that tick, which are the closed window's) and executed at the next tick, as the engine does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from broker import Fill, OrderSizeError, paper_broker_from_config
from config import Config
from engine import options_from_config
from indicators import LiveBoll
from metrics import Checkpoint, Marks, equity_curve, settings_fields, summarize
from state import TABLE, Action, Order, State, buffer_multipliers, has_stop_loss, is_fresh_entry
from tape import NO_FUNDING, FundingEvents, Series

STATES: tuple[State, ...] = tuple(State)
_INDEX = {s: i for i, s in enumerate(STATES)}
FLAT = _INDEX[State.FLAT]

# Zones of a tick price p: 0: p < DN_b, 1: DN_b <= p < DN, 2: DN <= p <= UP, 3: UP < p <= UP_b, 4: p > UP_b,
# where DN_b <= DN <= UP <= UP_b are the bands moved out by the breakout buffer (equal without one).
_COND_ZONES: dict[str, frozenset[int]] = {
    "p > UP": frozenset({4}),          # a breakout row: beyond the buffered band
    "p < DN": frozenset({0}),
    "p <= UP": frozenset({0, 1, 2}),   # a back-inside row: the plain band
    "p >= DN": frozenset({2, 3, 4}),
}


class _Row(NamedTuple):
    to: int
    program: tuple[tuple[bool, bool, bool, Order], ...]  # per order: closes, buys, opens long, the order
    fresh_entry: bool
    stop_loss: bool


def _zone_table() -> list[list[_Row | None]]:
    table: list[list[_Row | None]] = []
    for state in STATES:
        per_zone: list[_Row | None] = []
        for zone in range(5):
            row = next((r for r in TABLE[state] if zone in _COND_ZONES[r.when]), None)
            if row is None:
                per_zone.append(None)
                continue
            program = tuple((o.action.closes, o.action.side == "BUY", o.action is Action.OPEN_LONG, o)
                            for o in row.orders)
            per_zone.append(_Row(_INDEX[row.to], program, is_fresh_entry(state, row.orders),
                                 has_stop_loss(row.orders)))
        table.append(per_zone)
    return table


#: ZONE_TABLE[state index][zone]: the table row the engine takes in that state for a price in that zone.
ZONE_TABLE = _zone_table()


class BandCache:
    """MID and σ of every tick (or every close) per (series, period, ddof); k does not enter them."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._data: dict[tuple[int, int, int, bool], tuple[Any, ...]] = {}
        self._windows: dict[tuple[int, int, int], tuple[Any, ...]] = {}

    def get(self, series: Series, period: int, ddof: int, on_close: bool) -> tuple[Any, ...]:
        key = (id(series), period, ddof, on_close)
        hit = self._data.get(key)
        if hit is None:
            wkey = key[:3]
            window = self._windows.get(wkey)
            if window is None:
                window = self._windows[wkey] = (window_state(series.close.tolist(), period, ddof), series)
                _trim(self._windows, self.max_entries)
            hit = self._data[key] = _mid_sd(series, period, ddof, on_close, window[0]) + (series,)  # keeps it alive
            _trim(self._data, self.max_entries)
        return hit[:-1]


def _trim(cache: dict, size: int) -> None:
    while len(cache) > size:
        cache.pop(next(iter(cache)))


def window_state(closes: Sequence[float], period: int, ddof: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ref, s1, s2) of ``LiveBoll`` before each candle's close is pushed: the state its ticks see."""
    boll = LiveBoll(period, 2.0, ddof)
    n = len(closes)
    ref, s1, s2 = [0.0] * n, [0.0] * n, [0.0] * n
    push = boll.push_closed
    for c, close in enumerate(closes):
        # LiveBoll's own running sums (private, read here on purpose: the bands must be bit-identical).
        ref[c], s1[c], s2[c] = boll._ref, boll._s1, boll._s2
        push(close)
    return np.array(ref), np.array(s1), np.array(s2)


def _mid_sd(series: Series, period: int, ddof: int, on_close: bool,
            window: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(first step, step ticks, MID, σ) for the ticks the table is stepped on.

    Tick mode: every tick from the first one with a full window. Close mode: the last tick of each
    candle with a full window.
    """
    m = len(series)
    first_candle = period - 1
    if m <= first_candle:
        empty = np.zeros(0)
        return 0, np.zeros(0, np.int64), empty, empty
    ref, s1_c, s2_c = window
    if on_close:
        ticks = series.tick_start[first_candle + 1:] - 1
        candle = np.arange(first_candle, m)
    else:
        ticks = np.arange(int(series.tick_start[first_candle]), series.ticks)
        candle = series.candle_of_tick[ticks[0]:]
    price = series.prices[ticks]
    # LiveBoll.values, operation for operation.
    r = ref[candle]
    d = price - r
    s1 = s1_c[candle] + d
    mean_d = s1 / float(period)
    var = (s2_c[candle] + d * d - s1 * mean_d) / float(period - ddof)
    sd = np.sqrt(np.where(var > 0.0, var, 0.0))
    mid = r + mean_d
    return first_candle, ticks, mid, sd


class Evaluation(NamedTuple):
    """What one parameter set did on a series."""

    summary: dict[str, Any]                   # the whole series: equal to ``backtest --json``'s summary
    in_sample: dict[str, Any] | None          # the ticks before ``split_tick`` (when given)
    marks: Marks
    actions: list[tuple[int, Fill, State]]    # only with ``record_actions``
    equity: np.ndarray                        # mark-to-market equity after each tick (USDT)


def evaluate(series: Series, cfg: Config, funding: FundingEvents = NO_FUNDING, *, split_tick: int | None = None,
             record_actions: bool = False, cache: BandCache | None = None) -> Evaluation:
    """Run the settings ``cfg`` over ``series`` the way ``backtest`` does, without stepping every tick.

    ``split_tick``: also summarise the ticks before it (walk-forward in-sample part).
    """
    options = options_from_config(cfg)
    on_close = options.evaluate_on_close
    cache = cache if cache is not None else BandCache(1)
    first_candle, step_ticks, mid, sd = cache.get(series, cfg.BOLL_PERIOD, cfg.BOLL_DDOF, on_close)
    prices = series.prices
    n_ticks = series.ticks
    broker = paper_broker_from_config(cfg)  # sizes entries (entry_qty) exactly as the paper broker does
    marks = Marks()
    actions: list[tuple[int, Fill, State]] = []
    times, price_list = series.tick_lists()

    # Zones of the steps (ticks, or closes).
    width = cfg.BOLL_K * sd
    up = mid + width
    dn = mid - width
    p = prices[step_ticks]
    inside_dn = (p >= dn).view(np.int8)
    above_up = (p > up).view(np.int8)
    if options.breakout_buffer_pct:
        up_mult, dn_mult = buffer_multipliers(options.breakout_buffer_pct)
        zone = inside_dn + above_up + (p >= dn * dn_mult).view(np.int8) + (p > up * up_mult).view(np.int8)
    else:
        zone = inside_dn + above_up
        zone += zone  # 0, 2 or 4: without a buffer the buffered bands are the bands
    n_steps = len(zone)
    if n_steps:
        change = np.flatnonzero(zone[1:] != zone[:-1]) + 1
        run_start = np.concatenate(([0], change)).tolist()
        run_zone = zone[np.asarray(run_start, np.int64)].tolist()
    else:
        run_start, run_zone = [], []
    run_end = run_start[1:] + [n_steps] if run_start else []

    base = int(step_ticks[0]) if n_steps else 0
    exec_tick = (step_ticks + 1).tolist() if on_close else None  # close mode: orders at the next tick
    cooldown = options.stop_cooldown_candles
    candle_of_tick = series.candle_of_tick if cooldown and not on_close else None
    stop_candle = -(10 ** 12)

    # The paper broker and the ledger (broker.py), inlined on local variables: the float operations
    # and their order are PaperBroker.fill_orders/fill and Ledger.apply/apply_funding's.
    entry_qty = broker.entry_qty
    fee_rate = broker.fee_rate
    slip = bool(broker.slippage_pct)
    buy_mult, sell_mult = broker._buy_mult, broker._sell_mult
    qty = entry = realized = fees = funded = open_fee = won = lost = 0.0
    closed_trades = wins = orders_done = 0
    m_tick, m_net, m_qty, m_entry = marks.tick, marks.net, marks.qty, marks.entry
    f_tick, f_rate, f_mark = funding.tick, funding.rate, funding.mark_price
    n_fund = len(f_tick)
    f_at = 0
    next_funding = f_tick[0] if n_fund else n_ticks

    cut = n_ticks if split_tick is None else split_tick
    cut_point: Checkpoint | None = None
    state = FLAT
    transitions = 0
    table = ZONE_TABLE
    fills: list[Fill] = []

    rows = table[state]  # the table's rows of the current state, by zone
    next_event = min(next_funding, cut)  # the next funding payment or the walk-forward cut
    for s, e, zz in zip(run_start, run_end, run_zone, strict=True):
        row = rows[zz]
        if row is None:
            continue
        j = s
        while True:
            x = j + base if exec_tick is None else exec_tick[j]  # the tick the transition happens at
            if x >= n_ticks:
                break  # a close decision at the very end: no trade after it to carry it out
            to, program, fresh_entry, stop_loss = row
            if cooldown:
                candle = j + first_candle if exec_tick is not None else int(candle_of_tick[x])
                if fresh_entry and candle <= stop_candle + cooldown:
                    to, program = FLAT, ()
                elif stop_loss:
                    stop_candle = candle
            if x >= next_event:
                # Funding due up to this tick (Ledger.apply_funding), and the walk-forward cut.
                while f_at < n_fund and f_tick[f_at] <= x:
                    if cut_point is None and f_tick[f_at] >= cut:
                        cut_point = Checkpoint(STATES[state], transitions, orders_done, realized, fees, funded,
                                               realized - fees - funded, qty, entry, closed_trades, wins, won, lost)
                    if qty:
                        cost = qty * f_mark[f_at] * f_rate[f_at]
                        funded += cost
                        open_fee += cost
                        m_tick.append(f_tick[f_at])
                        m_net.append(realized - fees - funded)
                        m_qty.append(qty)
                        m_entry.append(entry)
                    f_at += 1
                next_funding = f_tick[f_at] if f_at < n_fund else n_ticks
                if x >= cut and cut_point is None:
                    cut_point = Checkpoint(STATES[state], transitions, orders_done, realized, fees, funded,
                                           realized - fees - funded, qty, entry, closed_trades, wins, won, lost)
                next_event = next_funding if cut_point is not None else min(next_funding, cut)
            transitions += 1
            if program:
                price = price_list[x]
                filled = 0
                for closes, buy, is_long, order in program:
                    if closes:
                        if not qty:
                            continue  # a close with nothing held is skipped
                        size = abs(qty)
                    else:
                        try:
                            size = entry_qty(price)
                        except OrderSizeError:
                            to = FLAT  # an entry below the exchange minimums leaves the strategy FLAT
                            continue
                    fill_price = price
                    if slip:
                        fill_price = price * (buy_mult if buy else sell_mult)
                    fee = size * fill_price * fee_rate
                    fees += fee
                    if closes:
                        held = abs(qty)
                        closed = min(size, held)
                        sign = 1.0 if qty > 0 else -1.0
                        pnl = (fill_price - entry) * closed * sign
                        realized += pnl
                        closed_trades += 1
                        net = pnl - fee - open_fee
                        if net > 0:
                            wins += 1
                            won += net
                        else:
                            lost -= net
                        remaining = held - closed
                        qty = sign * remaining if remaining > 1e-12 else 0.0
                        if not qty:
                            entry = 0.0
                            open_fee = 0.0
                    else:
                        pnl = 0.0
                        held = abs(qty)
                        new_qty = held + size
                        entry = (entry * held + fill_price * size) / new_qty
                        qty = (1.0 if is_long else -1.0) * new_qty
                        open_fee += fee
                    filled += 1
                    if record_actions:
                        fills.append(Fill(order.action, order.reason, fill_price, size, fee, pnl))
                if filled:
                    orders_done += filled
                    m_tick.append(x)
                    m_net.append(realized - fees - funded)
                    m_qty.append(qty)
                    m_entry.append(entry)
                    if record_actions:
                        t = int(times[x])
                        actions.extend((t, f, STATES[to]) for f in fills)
                        fills.clear()
            if to != state:
                state = to
                rows = table[state]
            j += 1
            if j >= e:
                break
            row = rows[zz]
            if row is None:
                break
    # The payments after the last transition, and the cut when no transition came after it.
    while f_at < n_fund:
        if cut_point is None and f_tick[f_at] >= cut:
            cut_point = Checkpoint(STATES[state], transitions, orders_done, realized, fees, funded,
                                   realized - fees - funded, qty, entry, closed_trades, wins, won, lost)
        if qty:
            cost = qty * f_mark[f_at] * f_rate[f_at]
            funded += cost
            open_fee += cost
            m_tick.append(f_tick[f_at])
            m_net.append(realized - fees - funded)
            m_qty.append(qty)
            m_entry.append(entry)
        f_at += 1
    end = Checkpoint(STATES[state], transitions, orders_done, realized, fees, funded, realized - fees - funded,
                     qty, entry, closed_trades, wins, won, lost)
    if cut_point is None:
        cut_point = end
    equity = equity_curve(series, marks)
    summary = summarize(series, marks, end, equity=equity)
    summary.update(settings_fields(cfg))
    in_sample = None
    if split_tick is not None:
        in_sample = summarize(series, marks, cut_point, split_tick, equity=equity[:split_tick])
        in_sample.update(settings_fields(cfg))
    return Evaluation(summary, in_sample, marks, actions, equity)
