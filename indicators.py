"""Live Bollinger bands, O(1) per tick (docs/strategy.md).

The window is the closes of the last ``period - 1`` closed candles plus the current price
(the forming candle's live close) — what Binance's own chart shows for the forming candle.

Numerics: the closed part of the window is kept as running sums of deviations from a
reference price ``ref`` (sum and sum of squares of ``x - ref``). ``ref`` is re-anchored to
the window mean, and both sums recomputed exactly, every ``period`` pushes (and sooner when
the mean has drifted far from ``ref`` next to the spread), so rounding error cannot
accumulate however long the bot runs (amortised O(1)), and the sums never square raw BTC
prices (no catastrophic cancellation of Σx² − n·mean²).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple


class Bands(NamedTuple):
    """UP/MID/DN of the live window, in price units."""

    up: float
    mid: float
    dn: float


class LiveBoll:
    """Rolling BOLL over closed candles plus the live price.

    >>> b = LiveBoll(period=3, k=2.0)
    >>> b.push_closed(1.0); b.push_closed(2.0)
    >>> b.bands(3.0).mid
    2.0
    """

    __slots__ = ("period", "k", "ddof", "_closed", "_need", "_ref", "_s1", "_s2", "_pushes", "_n", "_denom")

    def __init__(self, period: int = 20, k: float = 2.0, ddof: int = 0, closes: Iterable[float] = ()) -> None:
        if period < 2:
            raise ValueError("period must be at least 2")
        if not 0 <= ddof < period:
            raise ValueError("ddof must be 0 <= ddof < period")
        self.period, self.k, self.ddof = period, float(k), ddof
        self._need = period - 1
        self._closed: deque[float] = deque(maxlen=self._need)
        self._ref = 0.0
        self._s1 = 0.0
        self._s2 = 0.0
        self._pushes = 0
        self._n = float(period)
        self._denom = float(period - ddof)
        for close in closes:
            self.push_closed(close)

    @property
    def ready(self) -> bool:
        """True once ``period - 1`` closed candles are known (trading may start)."""
        return len(self._closed) == self._need

    @property
    def closed(self) -> tuple[float, ...]:
        """The closed closes in the window, oldest first."""
        return tuple(self._closed)

    def push_closed(self, close: float) -> None:
        """A candle closed at ``close``: roll the window."""
        closed = self._closed
        ref = self._ref
        if len(closed) == self._need:
            old = closed[0] - ref
            self._s1 -= old
            self._s2 -= old * old
        closed.append(close)
        d = close - ref
        self._s1 += d
        self._s2 += d * d
        self._pushes += 1
        n = len(closed)
        # Re-anchor every ``period`` pushes, and at once when the window's mean has drifted so far
        # from ``ref`` compared to its spread that s2 - s1²/n would cancel (a flat window after a
        # move: sigma must come out 0, not sqrt(eps)·move).
        if self._pushes >= self.period or n == 1 or self._s1 * self._s1 > 0.9 * n * self._s2:
            self._reanchor()

    def replace_last_closed(self, close: float) -> None:
        """The exchange corrected the close of the most recently closed candle."""
        if not self._closed:
            raise ValueError("no closed candle to correct")
        self._closed[-1] = close
        self._reanchor()

    def _reanchor(self) -> None:
        closed = self._closed
        self._ref = ref = math.fsum(closed) / len(closed)
        self._s1 = math.fsum(x - ref for x in closed)
        self._s2 = math.fsum((x - ref) * (x - ref) for x in closed)
        self._pushes = 0

    def bands(self, price: float) -> Bands | None:
        """Bands of the window with ``price`` as the forming candle's close; None until ready."""
        values = self.values(price)
        return None if values is None else Bands._make(values)

    def values(self, price: float) -> tuple[float, float, float] | None:
        """``bands`` as a plain (up, mid, dn) tuple: the per-tick path, without building a Bands."""
        if len(self._closed) != self._need:
            return None
        d = price - self._ref
        s1 = self._s1 + d
        mean_d = s1 / self._n
        var = (self._s2 + d * d - s1 * mean_d) / self._denom
        sd = math.sqrt(var) if var > 0.0 else 0.0
        mid = self._ref + mean_d
        width = self.k * sd
        return (mid + width, mid, mid - width)


def closing_bands(closes: Iterable[float], period: int = 20, k: float = 2.0, ddof: int = 0) -> list[Bands | None]:
    """The bands as they stood at each close (for drawing UP/MID/DN under past candles).

    The window of close ``i`` is the ``period - 1`` closes before it plus close ``i`` itself:
    ``LiveBoll`` with that close as the forming candle's last price, so the chart shows what the
    bot computed at each candle's last tick. None until ``period - 1`` earlier closes exist.

    >>> [b.mid if b else None for b in closing_bands([1.0, 2.0, 3.0, 4.0], period=3)]
    [None, None, 2.0, 3.0]
    """
    boll = LiveBoll(period, k, ddof)
    out: list[Bands | None] = []
    for close in closes:
        out.append(boll.bands(close))
        boll.push_closed(close)
    return out
