"""The figures of a backtest, computed the same way for ``backtest`` (the engine) and ``sweep`` (the evaluator).

A pass over a tape (``tape.Series``) records ``Marks``: the ledger after every change (a fill or
a funding payment) at the tick where it happened, and ends with a ``Checkpoint`` of the ledger and
the strategy. Everything a trader reads is derived from those two and the tick prices, here, in
one place, so both paths report the same numbers from the same actions:

* ``trades``: closed positions (round trips); ``orders``: order actions.
* ``net_pnl_usdt`` = realised PnL − fees − funding paid (the open position's entry fee included);
  its mark-to-market is ``unrealized_pnl_usdt``.
* ``win_rate``: round trips whose PnL after both fees (and the funding paid while open) is > 0.
* ``max_drawdown_usdt``: the largest fall of mark-to-market equity (net PnL + unrealised) from its
  running peak (which starts at 0), at every tick; a positive number.
* ``profit_factor``: sum of the winning round trips' net PnL / sum of the losing ones' losses
  (null when nothing was lost).
* ``sharpe_daily``: mean / standard deviation (n − 1) of the daily PnL (UTC days, equity at each
  day's last tick, every day counted) × √365; scale-free, no risk-free rate; null for fewer than
  2 days or no variation.
* ``exposure``: the share of the time (first to last tick) a position was open.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from broker import Ledger
from history import interval_name
from state import State
from tape import DAY_MS, Series


class Checkpoint(NamedTuple):
    """The ledger and the strategy at one moment."""

    state: State
    transitions: int
    orders: int
    realized_usdt: float
    fees_usdt: float
    funding_usdt: float
    net_pnl_usdt: float
    qty: float
    entry_price: float
    closed_trades: int
    winning_trades: int
    won_usdt: float
    lost_usdt: float


def checkpoint(ledger: Ledger, state: State, transitions: int, orders: int) -> Checkpoint:
    return Checkpoint(state, transitions, orders, ledger.realized_usdt, ledger.fees_usdt, ledger.funding_usdt,
                      ledger.net_pnl_usdt, ledger.qty, ledger.entry_price, ledger.closed_trades,
                      ledger.winning_trades, ledger.won_usdt, ledger.lost_usdt)


class Marks:
    """The ledger after each change: from tick ``tick[j]`` on, net PnL ``net[j]``, position ``qty[j]``
    at ``entry[j]``."""

    __slots__ = ("tick", "net", "qty", "entry", "_segments")

    def __init__(self) -> None:
        self.tick: list[int] = []
        self.net: list[float] = []
        self.qty: list[float] = []
        self.entry: list[float] = []
        self._segments: tuple[int, int, tuple[np.ndarray, ...]] | None = None  # (len(tick), hi, result)

    def add(self, tick: int, ledger: Ledger) -> None:
        self.tick.append(tick)
        self.net.append(ledger.net_pnl_usdt)
        self.qty.append(ledger.qty)
        self.entry.append(ledger.entry_price)

    def segments(self, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(start tick, net, qty, entry) of each stretch of ticks below ``hi`` with one ledger state.

        The first stretch starts at tick 0 with the empty ledger; a tick with several changes
        keeps the last. The last answer is remembered (summaries ask several times).
        """
        memo = self._segments
        if memo is not None and memo[0] == len(self.tick) and memo[1] == hi:
            return memo[2]  # type: ignore[return-value]
        result = self._segments_below(hi)
        self._segments = (len(self.tick), hi, result)
        return result

    def _segments_below(self, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ticks = np.array(self.tick, np.int64)
        n = int(np.searchsorted(ticks, hi, side="left"))
        ticks = ticks[:n]
        net = np.array(self.net[:n])
        qty = np.array(self.qty[:n])
        entry = np.array(self.entry[:n])
        keep = np.ones(n, bool)
        if n > 1:
            keep[:-1] = ticks[1:] != ticks[:-1]
        start = np.concatenate(([0], ticks[keep]))
        return (start, np.concatenate(([0.0], net[keep])), np.concatenate(([0.0], qty[keep])),
                np.concatenate(([0.0], entry[keep])))


def equity_curve(series: Series, marks: Marks, hi: int | None = None,
                 segments: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Mark-to-market equity (USDT) after each tick below ``hi``."""
    hi = series.ticks if hi is None else hi
    start, net, qty, entry = marks.segments(hi) if segments is None else segments
    counts = np.diff(np.append(start, hi))
    net_t = np.repeat(net, counts)
    qty_t = np.repeat(qty, counts)
    entry_t = np.repeat(entry, counts)
    # The same float operations as "net + (price - entry) * qty" per tick (exactly 0 when flat).
    return net_t + (series.prices[:hi] - entry_t) * qty_t


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from the running peak (which starts at 0), a positive number."""
    if not len(equity):
        return 0.0
    peak = np.maximum(np.maximum.accumulate(equity), 0.0)
    return float(max((peak - equity).max(), 0.0))


def day_ends(times: np.ndarray) -> np.ndarray:
    """Index of the last tick of each UTC day among ``times``."""
    if not len(times):
        return np.zeros(0, np.int64)
    day = times // DAY_MS
    return np.append(np.flatnonzero(day[1:] != day[:-1]), len(times) - 1)


def daily_equity(series: Series, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time of each UTC day's last tick, equity then) over the ticks of ``equity``."""
    hi = len(equity)
    last = series.day_ends() if hi == series.ticks else day_ends(series.times[:hi])
    return series.times[last], equity[last]


def sharpe_daily(day_equity: np.ndarray) -> float | None:
    pnl = np.diff(np.concatenate(([0.0], day_equity)))
    if len(pnl) < 2:
        return None
    sd = float(pnl.std(ddof=1))
    if not sd > 0:
        return None
    return round(float(pnl.mean()) / sd * math.sqrt(365.0), 6)


def exposure(series: Series, marks: Marks, hi: int, segments: tuple[np.ndarray, ...] | None = None) -> float:
    """Share of the time from the first tick to tick ``hi - 1`` with a position open."""
    times = series.times
    span = int(times[hi - 1] - times[0]) if hi > 0 else 0
    if span <= 0:
        return 0.0
    start, _net, qty, _entry = marks.segments(hi) if segments is None else segments
    begin = times[start]
    end = np.append(begin[1:], times[hi - 1])
    held = float(((end - begin) * (qty != 0)).sum())
    return round(held / span, 6)


def summarize(series: Series, marks: Marks, end: Checkpoint, hi: int | None = None,
              equity: np.ndarray | None = None) -> dict[str, Any]:
    """The summary figures of a pass over the first ``hi`` ticks of ``series`` (default: all).

    ``equity``: ``equity_curve(series, marks, hi)`` when the caller has it already.
    """
    hi = series.ticks if hi is None else hi
    segments = marks.segments(hi)
    if equity is None:
        equity = equity_curve(series, marks, hi, segments)
    _days, day_eq = daily_equity(series, equity)
    trades = end.closed_trades
    last_price = float(series.prices[hi - 1]) if hi else 0.0
    unrealized = (last_price - end.entry_price) * end.qty if end.qty else 0.0
    candles = int(series.candle_of_tick[hi - 1]) + 1 if hi else 0
    return {
        "trades": trades,
        "orders": end.orders,
        "net_pnl_usdt": round(end.net_pnl_usdt, 8),
        "gross_pnl_usdt": round(end.realized_usdt, 8),
        "fees_usdt": round(end.fees_usdt, 8),
        "funding_usdt": round(end.funding_usdt, 8),
        "win_rate": round(end.winning_trades / trades, 6) if trades else 0.0,
        "wins": end.winning_trades,
        "losses": trades - end.winning_trades,
        "profit_factor": round(end.won_usdt / end.lost_usdt, 6) if end.lost_usdt > 0 else None,
        "max_drawdown_usdt": round(max_drawdown(equity), 8),
        "sharpe_daily": sharpe_daily(day_eq),
        "exposure": exposure(series, marks, hi, segments),
        "open_position_qty": round(end.qty, 8),
        "unrealized_pnl_usdt": round(unrealized, 8),
        "final_state": end.state.value,
        "transitions": end.transitions,
        "candles": candles,
        "ticks": hi,
        "interval": interval_name(series.interval_ms),
        "file_interval": interval_name(series.tape.file_interval_ms),
        "first_open_time_ms": int(series.open_ms[0]),
        "last_open_time_ms": int(series.open_ms[candles - 1]) if candles else int(series.open_ms[0]),
    }


def settings_fields(cfg) -> dict[str, Any]:
    """The settings a summary was made with (the strategy's parameters and the paper fills)."""
    return {
        "boll_period": cfg.BOLL_PERIOD,
        "boll_k": cfg.BOLL_K,
        "evaluate_on": cfg.EVALUATE_ON,
        "breakout_buffer_pct": cfg.BREAKOUT_BUFFER_PCT,
        "stop_cooldown_candles": cfg.STOP_COOLDOWN_CANDLES,
        "slippage_pct": cfg.PAPER_SLIPPAGE_PCT,
        "trade_amount_usdt": cfg.TRADE_AMOUNT_USDT,
        "fee_rate": cfg.PAPER_FEE_RATE,
        "funding": bool(cfg.FUNDING_FILE),
    }
