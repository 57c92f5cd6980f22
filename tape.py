"""The tick tape: a kline file as numpy arrays, the ticks it is replayed as, and funding history.

``backtest`` and ``sweep`` both start here, so they read a file the same way:

* ``read_candle_arrays(path)`` reads a kline file (the formats of ``history.read_candles``: our
  CSV, Binance's 12-column rows with or without their header, ``.gz``, Binance's ``.zip``
  archives) into columns with numpy's C parser, which converts numbers exactly as Python's
  ``float`` does. It accepts only what ``history.read_candles`` accepts, with the same values:
  anything it does not recognise at once (a quoted cell, a blank-looking row, a bad price...) is
  handed to ``history.read_candles``, which either reads it or raises the one-line error.
* ``Tape`` holds the ticks (``history.path_ticks``: 4 per candle of the file) as two arrays, and
  ``Tape.at(interval)`` the file's candles at INTERVAL (aggregated when the file is finer) with,
  for every tick, the INTERVAL candle it belongs to. Checks and messages are the backtest's.
* ``read_funding(path)`` reads a funding-rate history (``download --funding`` or Binance's
  ``fundingRate`` archive) and ``FundingEvents.on(tape)`` places each payment on the tape.

Pure functions over arrays, apart from reading the file.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from history import (
    MAX_BLANK_ROWS,
    MAX_LINE_CHARS,
    MAX_OPEN_TIME_MS,
    Candle,
    HistoryError,
    interval_ms,
    interval_name,
    read_candles,
    read_kline_bytes,
)

DAY_MS = 86_400_000


class Candles(NamedTuple):
    """Candles as columns: open times (int64, ms) and prices/volume (float64)."""

    open_time_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.open_time_ms.shape[0])

    def to_list(self) -> list[Candle]:
        """As ``history.Candle`` values (for the DB and the simulated exchange)."""
        cols = (self.open_time_ms.tolist(), self.open.tolist(), self.high.tolist(), self.low.tolist(),
                self.close.tolist(), self.volume.tolist())
        return [Candle(*row) for row in zip(*cols, strict=True)]

    def slice(self, lo: int, hi: int | None = None) -> Candles:
        return Candles(*(col[lo:hi] for col in self))


def candles_from_list(candles: list[Candle]) -> Candles:
    if not candles:
        empty = np.zeros(0)
        return Candles(np.zeros(0, np.int64), empty, empty, empty, empty, empty)
    cols = list(zip(*candles, strict=True))
    return Candles(np.array(cols[0], np.int64), *(np.array(c, np.float64) for c in cols[1:6]))


# ---- reading kline files ---------------------------------------------------------------------------

def _read_text(path: str) -> str | None:
    """The file's text, or None when anything is off (the slow reader then says what).

    Read within ``history``'s limits (a regular file, bounded text after decompression), and
    None for what its line-by-line checks would refuse: NUL bytes, a byte-order mark, a line
    over MAX_LINE_CHARS, more empty lines than MAX_BLANK_ROWS.
    """
    try:
        text = read_kline_bytes(path).decode("utf-8")
    except (HistoryError, UnicodeDecodeError):
        return None
    if "\0" in text or text.startswith("\ufeff") or "\r" in text and "\r\n" not in text:
        return None
    lines = text.split("\n")
    if lines.count("") + lines.count("\r") > MAX_BLANK_ROWS:
        return None
    if max(map(len, lines)) > MAX_LINE_CHARS and any(len(line.rstrip("\r")) > MAX_LINE_CHARS for line in lines):
        return None
    return text


def _fast_columns(text: str) -> Candles | None:
    """The candles of ``text`` if it is plainly well-formed; None to let ``read_candles`` decide."""
    start = 0
    while True:  # the first line with content is the header (or the first row)
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip(" \r\t"):
            break
        if end < 0:
            return None
        start = end + 1
    header = line.rstrip("\r")
    names = [cell.strip().lower() for cell in header.split(",")]
    if '"' in header:
        return None
    rest = text[end + 1:] if end >= 0 else ""
    if "open_time_ms" in names:
        wanted = ("open_time_ms", "open", "high", "low", "close")
        if any(n not in names for n in wanted):
            return None
        cols = [names.index(n) for n in wanted]
        vol = names.index("volume") if "volume" in names else None
        body = rest
    elif len(names) == 12:
        cols, vol = [0, 1, 2, 3, 4], 5
        body = rest if names[0] == "open_time" else text[start:]
    else:
        return None
    if not body.strip():
        return None
    usecols = cols + ([vol] if vol is not None else [])
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", usecols=usecols, dtype=np.float64, comments=None,
                           ndmin=2, quotechar=None)
    except (ValueError, IndexError):
        return None
    if table.shape[0] == 0 or not np.isfinite(table).all():
        return None
    t_float = table[:, 0]
    if (t_float != np.floor(t_float)).any() or (t_float < 0).any() or (t_float > MAX_OPEN_TIME_MS).any():
        return None
    t = t_float.astype(np.int64)
    o, h, lo, c = (np.ascontiguousarray(table[:, i]) for i in range(1, 5))
    v = np.ascontiguousarray(table[:, 5]) if vol is not None else np.zeros(len(t))
    if (np.minimum(np.minimum(o, h), np.minimum(lo, c)) <= 0).any() or (h < lo).any():
        return None
    if ((o < lo) | (o > h) | (c < lo) | (c > h)).any():
        return None
    if len(t) > 1 and (np.diff(t) <= 0).any():
        return None
    return Candles(t, o, h, lo, c, v)


def read_candle_arrays(path: str) -> Candles:
    """Read a kline file as columns; raises HistoryError (one line) exactly as ``read_candles`` does."""
    text = _read_text(path) if os.path.isfile(path) else None
    fast = _fast_columns(text) if text is not None else None
    if fast is not None:
        return fast
    return candles_from_list(read_candles(path))


# ---- the tape and its candles at an interval ------------------------------------------------------

@dataclass
class Series:
    """The tape at one INTERVAL: its candles and, per tick, which of them it belongs to.

    Tick ``i`` belongs to INTERVAL candle ``candle_of_tick[i]``; candle ``c`` owns the ticks
    ``tick_start[c]`` to ``tick_start[c + 1] - 1``.
    """

    tape: Tape
    interval_ms: int
    open_ms: np.ndarray       # (M,) int64
    close: np.ndarray         # (M,) float64: the close of each INTERVAL candle
    tick_start: np.ndarray    # (M + 1,) int64
    candle_of_tick: np.ndarray  # (N,) int64
    fine_start: np.ndarray    # (M + 1,) int64: first fine candle of each INTERVAL candle
    _lists: tuple[list[int], list[float]] | None = field(default=None, repr=False)
    _day_ends: np.ndarray | None = field(default=None, repr=False)

    @property
    def times(self) -> np.ndarray:
        return self.tape.times

    @property
    def prices(self) -> np.ndarray:
        return self.tape.prices

    @property
    def ticks(self) -> int:
        return int(self.tape.times.shape[0])

    def __len__(self) -> int:
        return int(self.open_ms.shape[0])

    def day_ends(self) -> np.ndarray:
        """Index of the last tick of each UTC day (cached)."""
        if self._day_ends is None:
            day = self.tape.times // DAY_MS
            self._day_ends = np.append(np.flatnonzero(day[1:] != day[:-1]), len(day) - 1)
        return self._day_ends

    def tick_lists(self) -> tuple[list[int], list[float]]:
        """Tick times and prices as Python lists (the engine's per-tick loop reads these)."""
        if self._lists is None:
            self._lists = (self.tape.times.tolist(), self.tape.prices.tolist())
        return self._lists

    def candles(self) -> list[Candle]:
        """The INTERVAL candles (aggregated: open of the first, max high, min low, close of the last)."""
        fine = self.tape.candles
        starts = self.fine_start[:-1]
        high = np.maximum.reduceat(fine.high, starts)
        low = np.minimum.reduceat(fine.low, starts)
        vol = np.add.reduceat(fine.volume, starts)
        agg = Candles(self.open_ms, fine.open[starts], high, low, self.close, vol)
        return agg.to_list()

    def tail(self, first_candle: int) -> Series:
        """The series from INTERVAL candle ``first_candle`` on, as if the file started there."""
        tape = self.tape.slice(int(self.fine_start[first_candle]))
        return tape.at_ms(self.interval_ms)

    def head(self, end_candle: int) -> Series:
        """The series up to (not including) INTERVAL candle ``end_candle``, as if the file ended there."""
        tape = self.tape.slice(0, int(self.fine_start[end_candle]))
        return tape.at_ms(self.interval_ms)


@dataclass
class Tape:
    """The ticks of a kline file: 4 per candle (``history.path_ticks``), as numpy arrays."""

    candles: Candles
    file_interval_ms: int
    label: str = "klines"
    times: np.ndarray = field(init=False)   # (N,) int64, exchange time of each tick
    prices: np.ndarray = field(init=False)  # (N,) float64
    _series: dict[int, Series] = field(default_factory=dict, init=False, repr=False)
    _checked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._checked = False
        c = self.candles
        d = self.file_interval_ms
        rising = c.close >= c.open
        self.prices = np.column_stack([c.open, np.where(rising, c.low, c.high), np.where(rising, c.high, c.low),
                                       c.close]).ravel()
        t = c.open_time_ms
        self.times = np.column_stack([t, t + d // 3, t + 2 * d // 3, t + d - 1]).ravel()

    def gap_warning(self) -> str | None:
        """One line about missing candles in the file, or None (``gap_warning``)."""
        return gap_warning(self.label, find_gaps(self.candles.open_time_ms, self.file_interval_ms),
                           self.file_interval_ms)

    def slice(self, lo: int, hi: int | None = None) -> Tape:
        return Tape(self.candles.slice(lo, hi), self.file_interval_ms, self.label)

    def at(self, interval: str) -> Series:
        """The tape at INTERVAL ``interval``; HistoryError when the file's interval does not divide it."""
        return self.at_ms(interval_ms(interval), interval)

    def at_ms(self, target: int, interval: str | None = None) -> Series:
        cached = self._series.get(target)
        if cached is not None:
            return cached
        step = self.file_interval_ms
        name = interval_name(step) or f"{step} ms"
        if step > target or target % step:
            wanted = interval or interval_name(target) or f"{target} ms"
            raise HistoryError(
                f"{self.label}: the file's interval ({name}) does not divide INTERVAL ({wanted}); "
                f"use a file of {wanted} or a finer interval that divides it"
            )
        if not self._checked:
            _check_aligned(self.candles.open_time_ms, step, self.label)
            self._checked = True
        bucket = self.candles.open_time_ms // target
        new = np.empty(len(bucket), bool)
        new[:1] = True
        new[1:] = bucket[1:] != bucket[:-1]
        fine_start = np.append(np.flatnonzero(new), len(bucket)).astype(np.int64)
        last = fine_start[1:] - 1
        n_candles = len(fine_start) - 1
        series = Series(
            tape=self, interval_ms=target, open_ms=bucket[new] * target, close=self.candles.close[last],
            tick_start=fine_start * 4, candle_of_tick=np.repeat(np.cumsum(new) - 1, 4),
            fine_start=fine_start,
        )
        assert len(series.open_ms) == n_candles
        self._series[target] = series
        return series


def load_tape(path: str, label: str | None = None) -> Tape:
    """Read and check a kline file (HistoryError, one line, for anything wrong)."""
    label = path if label is None else label
    return tape_from_candles(read_candle_arrays(path), label)


def tape_from_candles(candles: Candles, label: str = "klines") -> Tape:
    """A tape of ``candles``: at least 2 (alignment to their interval is checked by ``Tape.at``)."""
    t = candles.open_time_ms
    if len(t) < 2:
        raise HistoryError(f"{label}: need at least 2 candles to tell the file's interval")
    step = int(np.diff(t).min())  # the file's interval: the smallest gap between consecutive open times
    return Tape(candles, step, label)


def _check_aligned(t: np.ndarray, step: int, label: str) -> None:
    name = interval_name(step) or f"{step} ms"
    misaligned = np.flatnonzero(t % step)
    if len(misaligned):
        raise HistoryError(f"{label}: open time {int(t[misaligned[0]])} is not aligned to the {name} interval")


def find_gaps(t: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Missing candles in open times ``t`` (aligned to ``step``): (open time before the gap, candles missing)."""
    holes = np.flatnonzero(np.diff(t) != step)
    return [(int(t[i]), int((t[i + 1] - t[i]) // step) - 1) for i in holes]


def gap_warning(label: str, gaps: list[tuple[int, int]], step: int) -> str | None:
    """One line about missing candles in a kline file (None when there are none).

    Binance's own history has such holes (an exchange outage or maintenance: no trades, no
    candle), and ``download`` writes what the exchange has. They are played as they are: the
    candle after a gap follows the one before it, as the live bot's window does after the same
    outage (REST returns the same candles), so the bands span the gap.
    """
    if not gaps:
        return None
    first, missing = gaps[0]
    when = dt.datetime.fromtimestamp((first + step) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
    total = sum(m for _a, m in gaps)
    return (f"{label}: {len(gaps)} gap{'s' if len(gaps) > 1 else ''} in the candles ({total} missing; the first: "
            f"{missing} from {when} UTC); played as they are, the bands spanning each gap")


# ---- funding --------------------------------------------------------------------------------------

class FundingRates(NamedTuple):
    """Funding payments: time (ms), rate, and the mark price when the file has it (NaN otherwise)."""

    time_ms: np.ndarray
    rate: np.ndarray
    mark_price: np.ndarray

    def on(self, tape: Tape) -> FundingEvents:
        """Place each payment on ``tape``: it is charged just before the first tick at or after its time.

        Payments at or before the first tick (nothing is held yet) or after the last are dropped.
        The mark price is the file's, else the last tick price before the payment.
        """
        idx = np.searchsorted(tape.times, self.time_ms, side="left")
        keep = (idx > 0) & (idx < len(tape.times))
        idx = idx[keep]
        mark = self.mark_price[keep]
        last_price = tape.prices[np.maximum(idx - 1, 0)]
        mark = np.where(np.isfinite(mark) & (mark > 0), mark, last_price)
        return FundingEvents(idx.tolist(), self.rate[keep].tolist(), mark.tolist())


class FundingEvents(NamedTuple):
    """Funding payments on a tape: before tick ``tick[i]``, charge ``rate[i]`` at ``mark_price[i]``."""

    tick: list[int]
    rate: list[float]
    mark_price: list[float]


NO_FUNDING = FundingEvents([], [], [])


def read_funding(path: str) -> FundingRates:
    """Read a funding-rate file; HistoryError (one line) when it cannot be used.

    Formats: ours (``funding_time_ms,funding_rate,mark_price``; written by ``download --funding``)
    and Binance's archive (``calc_time,funding_interval_hours,last_funding_rate``, ``.zip`` or CSV,
    with or without that header). ``.gz`` works for both.
    """
    if not os.path.isfile(path):
        raise HistoryError(f"funding file {path}: no such file")
    text = _read_text(path)
    if text is None:
        raise HistoryError(f"funding file {path}: not a readable CSV (or single-CSV .zip) file")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise HistoryError(f"funding file {path}: the file is empty")
    names = [c.strip().lower() for c in lines[0].split(",")]
    if "funding_time_ms" in names and "funding_rate" in names:
        ti, ri, mi = names.index("funding_time_ms"), names.index("funding_rate"), (
            names.index("mark_price") if "mark_price" in names else None)
        body, first = lines[1:], 2
    elif "calc_time" in names and "last_funding_rate" in names:
        ti, ri, mi = names.index("calc_time"), names.index("last_funding_rate"), None
        body, first = lines[1:], 2
    elif len(names) == 3:
        ti, ri, mi = 0, 2, None  # Binance's archive without its header row
        body, first = lines, 1
    else:
        raise HistoryError(f"funding file {path}: expected a header with funding_time_ms,funding_rate[,mark_price] "
                           f"or Binance's calc_time,funding_interval_hours,last_funding_rate")
    times: list[int] = []
    rates: list[float] = []
    marks: list[float] = []
    for n, line in enumerate(body, start=first):
        cells = [c.strip() for c in line.split(",")]
        where = f"funding file {path}: line {n}"
        try:
            t = int(float(cells[ti]))
            rate = float(cells[ri])
            mark = float(cells[mi]) if mi is not None and mi < len(cells) and cells[mi] else math.nan
        except (ValueError, IndexError):
            raise HistoryError(f"{where}: expected numbers, got {line[:80]!r}") from None
        if not math.isfinite(rate) or abs(rate) >= 1:
            raise HistoryError(f"{where}: funding rate {cells[ri]!r} is not a plausible rate")
        if times and t <= times[-1]:
            raise HistoryError(f"{where}: funding time {t} is not after the previous one ({times[-1]})")
        times.append(t)
        rates.append(rate)
        marks.append(mark)
    if not times:
        raise HistoryError(f"funding file {path}: the file has a header but no rates")
    return FundingRates(np.array(times, np.int64), np.array(rates), np.array(marks))
