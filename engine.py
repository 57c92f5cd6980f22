"""The engine: live BOLL + the strategy table + the candle clock. Pure logic, no I/O.

Backtest, paper and live trading feed the same ``Engine``; they differ only in where
ticks come from and which broker fills the orders.

Candle boundaries come from exchange timestamps only (docs/strategy.md): a trade whose time is at
or after the forming candle's close time belongs to the next candle, and the forming
candle closes at the last price before it. A kline "closed" event confirms that close or
corrects it. Closing a candle only rolls the window; it is not an extra evaluation of the
table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from indicators import Bands, LiveBoll
from state import Order, State, buffer_bands, has_stop_loss, is_fresh_entry, step, step_buffered


class Transition(NamedTuple):
    """One state change: caused by a tick (the table), or an override with its ``cause``."""

    time_ms: int
    from_state: State
    to_state: State
    price: float
    bands: Bands | None          # None for an override before the bands exist
    orders: tuple[Order, ...]
    cause: str = "tick"          # tick | reconcile | refused | rejected | paused | stale | stopping | command


class Engine:
    """Indicator, table and candle clock for one symbol and interval.

    ``on_trade`` is the per-tick entry point (O(1)). Every tick is evaluated, also while live
    orders are in flight: the strategy never waits for the exchange.
    """

    __slots__ = ("boll", "interval_ms", "state", "forming_open_ms", "last_price", "last_time_ms",
                 "_last_values", "last_closed_open_ms", "_forming_has_ticks", "_forming_end_ms")

    def __init__(self, period: int, k: float, ddof: int, interval_ms: int, state: State = State.FLAT,
                 closes: Sequence[float] = (), last_closed_open_ms: int | None = None) -> None:
        self.boll = LiveBoll(period, k, ddof, closes)
        self.interval_ms = interval_ms
        self.state = state
        self.last_closed_open_ms = last_closed_open_ms
        self.forming_open_ms: int | None = (
            None if last_closed_open_ms is None else last_closed_open_ms + interval_ms
        )
        self.last_price: float | None = None
        self.last_time_ms: int | None = None
        self._last_values: tuple[float, float, float] | None = None
        self._forming_has_ticks = False
        self._forming_end_ms = -1  # forming_open_ms + interval_ms once a trade opened it (fast path)

    @property
    def ready(self) -> bool:
        return self.boll.ready

    def candle_of(self, time_ms: int) -> int:
        """Open time of the candle a trade at ``time_ms`` belongs to."""
        return time_ms - time_ms % self.interval_ms

    def on_trade(self, time_ms: int, price: float) -> Transition | None:
        """A tick: roll the candle if the trade belongs to a later one, then step the table."""
        in_forming = self._forming_has_ticks and self.forming_open_ms <= time_ms < self._forming_end_ms
        if not in_forming and not self._enter_candle(time_ms):
            return None  # a late trade of a candle already closed: ignore it
        self.last_price = price
        self.last_time_ms = time_ms
        values = self.boll.values(price)
        self._last_values = values
        if values is None:
            return None
        before = self.state
        after, orders = step(before, price, values[0], values[2])
        if after is before:
            return None
        self.state = after
        return Transition(time_ms, before, after, price, Bands._make(values), orders)

    def override(self, to: State, cause: str, time_ms: int, orders: tuple[Order, ...] = ()) -> Transition | None:
        """Move the state outside the table, on record: the one way anything but a tick changes it.

        Causes: ``reconcile`` (the exchange's position), ``refused``/``rejected``/``paused``/
        ``stale`` (an entry that was not made), ``stopping``, ``command`` (a close from the
        dashboard, with its ``orders``), ``restart``. Returns the transition to record, or None
        when nothing changes. ``time_ms`` is used only before the first tick.
        """
        before = self.state
        if before is to and not orders:
            return None
        self.state = to
        values = self._last_values
        return Transition(self.last_time_ms or time_ms, before, to, self.last_price or 0.0,
                          None if values is None else Bands._make(values), orders, cause)

    @property
    def last_bands(self) -> Bands | None:
        """UP/MID/DN at the last tick (None before the window is ready)."""
        values = self._last_values
        return None if values is None else Bands._make(values)

    def _enter_candle(self, time_ms: int) -> bool:
        """Slow path of the candle clock; False for a trade of a candle already closed."""
        open_ms = time_ms - time_ms % self.interval_ms
        forming = self.forming_open_ms
        if forming is not None and open_ms != forming:
            if open_ms < forming:
                return False
            if self._forming_has_ticks and self.last_price is not None:
                self._close(forming, self.last_price)
        self.forming_open_ms = open_ms
        self._forming_end_ms = open_ms + self.interval_ms
        self._forming_has_ticks = True
        return True

    def on_candle_closed(self, open_ms: int, close: float) -> str:
        """The exchange says the candle opening at ``open_ms`` closed at ``close``.

        Returns what happened: ``"closed"`` (rolled the window now), ``"confirmed"``,
        ``"corrected"`` (the close we rolled with was replaced), ``"stale"`` (older than the
        last closed candle: ignored) or ``"gap"`` (candles are missing: the caller must
        backfill and ``resync``).
        """
        last = self.last_closed_open_ms
        if last is not None and open_ms == last:
            if self.boll.closed and self.boll.closed[-1] != close:
                self.boll.replace_last_closed(close)
                return "corrected"
            return "confirmed"
        if last is not None and open_ms < last:
            return "stale"
        if last is not None and open_ms > last + self.interval_ms:
            return "gap"
        if self.forming_open_ms is not None and open_ms < self.forming_open_ms and last is None:
            return "stale"
        self._close(open_ms, close)
        if self.forming_open_ms is None or self.forming_open_ms <= open_ms:
            self.forming_open_ms = open_ms + self.interval_ms
            self._forming_has_ticks = False
        return "closed"

    def _close(self, open_ms: int, close: float) -> None:
        self.boll.push_closed(close)
        self.last_closed_open_ms = open_ms

    def resync(self, closes: Sequence[float], last_closed_open_ms: int) -> None:
        """Replace the window with ``closes`` (oldest first) after a backfill."""
        boll = self.boll
        self.boll = LiveBoll(boll.period, boll.k, boll.ddof, closes[-(boll.period - 1):])
        self.last_closed_open_ms = last_closed_open_ms
        if self.forming_open_ms is None or self.forming_open_ms <= last_closed_open_ms:
            self.forming_open_ms = last_closed_open_ms + self.interval_ms
            self._forming_has_ticks = False

    # ---- construction from the settings ------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, interval_ms: int, state: State = State.FLAT, closes: Sequence[float] = (),
                    last_closed_open_ms: int | None = None) -> Engine:
        """The engine the settings ask for: this plain one, or a ``VariantEngine`` when a variation is on."""
        return engine_from_config(cfg, interval_ms, state, closes, last_closed_open_ms)


# ---- optional strategy variations (all off by default) ------------------------------------------------
#
# Each is a setting (config.py, "strategy variations"); with all of them off ``engine_from_config``
# returns the plain ``Engine`` above, so the defaults are the strategy table exactly, on the same
# code path. The variations live here, in the engine, so `run` (paper and live), `backtest` and
# the sweep's evaluator (evaluator.py, proven equal action by action) all behave the same.


class StrategyOptions(NamedTuple):
    """The strategy variations. See README "策略实验室 / strategy lab" for what each means to a trader."""

    evaluate_on_close: bool = False   # EVALUATE_ON = "close"
    breakout_buffer_pct: float = 0.0  # BREAKOUT_BUFFER_PCT
    stop_cooldown_candles: int = 0    # STOP_COOLDOWN_CANDLES

    @property
    def off(self) -> bool:
        """True when every variation is off (the strategy table exactly)."""
        return not (self.evaluate_on_close or self.breakout_buffer_pct or self.stop_cooldown_candles)


def options_from_config(cfg) -> StrategyOptions:
    """The variation settings of a ``config.Config`` (missing ones count as off)."""
    return StrategyOptions(getattr(cfg, "EVALUATE_ON", "tick") == "close",
                           float(getattr(cfg, "BREAKOUT_BUFFER_PCT", 0.0)),
                           int(getattr(cfg, "STOP_COOLDOWN_CANDLES", 0)))


def engine_from_config(cfg, interval_ms: int, state: State = State.FLAT, closes: Sequence[float] = (),
                       last_closed_open_ms: int | None = None) -> Engine:
    """An engine for the settings ``cfg``: BOLL_PERIOD/BOLL_K/BOLL_DDOF and the strategy variations."""
    options = options_from_config(cfg)
    if options.off:
        return Engine(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, interval_ms, state, closes, last_closed_open_ms)
    return VariantEngine(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, interval_ms, state, closes,
                         last_closed_open_ms, options=options)


class VariantEngine(Engine):
    """``Engine`` with the optional variations; same candle clock, same bands, same table.

    * Evaluate on close: the table is stepped once per candle, when it closes, with the close
      price and the bands of that closed window (the classic bar-close Bollinger rule). The
      orders are carried out at the first trade after the close (its time and price: the first
      moment a real order could go out); the transition records the decision's bands. A decision
      made at the close of the last candle of a backtest has no later trade and is not executed;
      live, a candle without a single trade lets the next close's decision replace the pending one.
    * Breakout buffer: see ``state.step_buffered``.
    * Stop-loss cooldown: after a stop-loss decided in candle S, a fresh entry decided in a candle
      opening at or before S + N candles is skipped (``state.is_fresh_entry``): the state goes to
      FLAT without an order. The cooldown lives in memory; a restart forgets it.
    """

    __slots__ = ("options", "_buffer_pct", "_cooldown_ms", "_pending", "stop_candle_ms")

    def __init__(self, period: int, k: float, ddof: int, interval_ms: int, state: State = State.FLAT,
                 closes: Sequence[float] = (), last_closed_open_ms: int | None = None, *,
                 options: StrategyOptions = StrategyOptions()) -> None:
        self.options = options
        self._buffer_pct = options.breakout_buffer_pct
        self._cooldown_ms = options.stop_cooldown_candles * interval_ms
        self._pending: tuple[float, tuple[float, float, float], int] | None = None
        self.stop_candle_ms: int | None = None  # open time of the candle of the last stop-loss
        super().__init__(period, k, ddof, interval_ms, state, closes, last_closed_open_ms)

    def on_trade(self, time_ms: int, price: float) -> Transition | None:
        """A tick: the candle clock as in ``Engine``; the table per the variations."""
        in_forming = self._forming_has_ticks and self.forming_open_ms <= time_ms < self._forming_end_ms
        if not in_forming and not self._enter_candle(time_ms):
            return None
        self.last_price = price
        self.last_time_ms = time_ms
        values = self.boll.values(price)
        self._last_values = values
        if values is None:
            return None
        if not self.options.evaluate_on_close:
            return self._decide(time_ms, price, price, values, self.forming_open_ms)
        pending = self._pending
        if pending is None:
            return None
        self._pending = None
        close, decided, candle_ms = pending
        return self._decide(time_ms, price, close, decided, candle_ms)

    def _decide(self, time_ms: int, price: float, p: float, values: tuple[float, float, float],
                candle_ms: int) -> Transition | None:
        """Step the table with price ``p`` and ``values``; the orders go out at ``price``."""
        up, _mid, dn = values
        up_break, dn_break = buffer_bands(up, dn, self._buffer_pct)
        before = self.state
        after, orders = step_buffered(before, p, up, dn, up_break, dn_break)
        if after is before:
            return None
        if self._cooldown_ms:
            stopped = self.stop_candle_ms
            if stopped is not None and candle_ms <= stopped + self._cooldown_ms and is_fresh_entry(before, orders):
                after, orders = State.FLAT, ()
                if after is before:
                    return None
            if has_stop_loss(orders):
                self.stop_candle_ms = candle_ms
        self.state = after
        return Transition(time_ms, before, after, price, Bands._make(values), orders)

    def _close(self, open_ms: int, close: float) -> None:
        if self.options.evaluate_on_close:
            values = self.boll.values(close)  # the closed window: the last period-1 closes and this close
            self._pending = None if values is None else (close, values, open_ms)
        super()._close(open_ms, close)

    def resync(self, closes: Sequence[float], last_closed_open_ms: int) -> None:
        self._pending = None
        super().resync(closes, last_closed_open_ms)
