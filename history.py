"""Candles: intervals, the 4-tick replay path, reading kline files, aggregation, validation.

Pure functions over plain values. The backtest, the simulated exchange and the live
startup all use this module, so a candle means the same thing everywhere.

A file of candles is either
  * a CSV whose header contains ``open_time_ms,open,high,low,close`` (other columns are
    ignored; ``volume`` is used when present), or
  * a raw Binance kline CSV: 12 columns, no header (``open_time, o, h, l, c, v, close_time, ...``),
    or with the header row ``open_time,open,high,low,close,volume,close_time,...,ignore`` that
    Binance's downloadable files carry today.
Either may be gzip-compressed (name ends in ``.gz``) or a Binance archive ``.zip`` holding one such CSV.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}


class HistoryError(ValueError):
    """Bad candle data. The message is one line, fit to show the user as is."""


class Candle(NamedTuple):
    """One candle. Times in epoch milliseconds (UTC), prices in quote currency (USDT)."""

    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


def interval_ms(name: str) -> int:
    """Milliseconds in a Binance interval name such as ``"15m"``."""
    try:
        return INTERVAL_MS[name]
    except KeyError:
        raise HistoryError(f"unknown interval {name!r}; use one of {', '.join(INTERVAL_MS)}") from None


def interval_name(ms: int) -> str | None:
    """The Binance name of an interval length in ms, or None."""
    for name, length in INTERVAL_MS.items():
        if length == ms:
            return name
    return None


def path_ticks(candle: Candle, duration_ms: int) -> tuple[tuple[int, float], ...]:
    """The 4 ticks (time_ms, price) a candle is replayed as (SPEC §7).

    close >= open: O, L, H, C; close < open: O, H, L, C; at t, t+d//3, t+2d//3, t+d-1.

    >>> path_ticks(Candle(0, 10.0, 12.0, 9.0, 11.0), 60_000)
    ((0, 10.0), (20000, 9.0), (40000, 12.0), (59999, 11.0))
    """
    t, d = candle.open_time_ms, duration_ms
    if candle.close >= candle.open:
        second, third = candle.low, candle.high
    else:
        second, third = candle.high, candle.low
    return ((t, candle.open), (t + d // 3, second), (t + 2 * d // 3, third), (t + d - 1, candle.close))


def _open_text(path: str) -> io.TextIOBase:
    if not os.path.exists(path):
        raise HistoryError(f"{path}: no such file")
    if os.path.isdir(path):
        raise HistoryError(f"{path}: is a directory, not a kline file")
    try:
        if path.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        if path.lower().endswith(".zip"):
            return _open_zip_member(path)
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise HistoryError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _open_zip_member(path: str) -> io.TextIOBase:
    """The one CSV inside a Binance archive ``.zip`` (data.binance.vision monthly/daily files)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise HistoryError(f"{path}: not a readable zip archive") from None
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) != 1:
        archive.close()
        raise HistoryError(f"{path}: a kline archive holds exactly one CSV file; this one holds {len(members)}")
    return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8", newline="")


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HistoryError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise HistoryError(f"{where}: {what} is {text!r}; prices must be finite numbers")
    return value


def _rows(path: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with _open_text(path) as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if row and any(cell.strip() for cell in row):
                    yield lineno, row
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error, zipfile.BadZipFile, zlib.error) as exc:
        raise HistoryError(f"{path}: not a readable CSV file ({type(exc).__name__})") from None


def read_candles(path: str) -> list[Candle]:
    """Read and check a kline file; candles sorted as in the file (which must be ascending).

    Raises HistoryError (one line, naming file and line) for: a missing or empty file, a header
    without rows, unknown columns, non-numeric/NaN/zero/negative prices, high < low or OHLC
    outside [low, high], and open times that are not strictly increasing.
    """
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise HistoryError(f"{path}: the file is empty")
    lineno, header = first
    names = [cell.strip().lower() for cell in header]
    if "open_time_ms" in names:
        missing = [c for c in ("open_time_ms", "open", "high", "low", "close") if c not in names]
        if missing:
            raise HistoryError(f"{path}: the header lacks column(s) {', '.join(missing)}")
        idx = [names.index(c) for c in ("open_time_ms", "open", "high", "low", "close")]
        vol = names.index("volume") if "volume" in names else None
        body: Iterable[tuple[int, list[str]]] = rows
    elif len(header) == 12 and names[0] == "open_time":
        # Binance's downloadable kline files (data.binance.vision) now start with this header row.
        idx, vol = [0, 1, 2, 3, 4], 5
        body = rows
    elif len(header) == 12:
        idx, vol = [0, 1, 2, 3, 4], 5
        body = _chain(first, rows)
    else:
        raise HistoryError(
            f"{path}: line {lineno}: expected a header with open_time_ms,open,high,low,close "
            f"or a 12-column Binance kline row, got {len(header)} column(s)"
        )
    width = max(idx + ([vol] if vol is not None else [])) + 1
    candles: list[Candle] = []
    previous = None
    for lineno, row in body:
        where = f"{path}: line {lineno}"
        if len(row) < width:
            raise HistoryError(f"{where}: expected at least {width} columns, got {len(row)}")
        try:
            t = int(row[idx[0]].strip())
        except ValueError:
            t_float = _number(row[idx[0]].strip(), "open time", where)
            if t_float != int(t_float):
                raise HistoryError(f"{where}: open time {row[idx[0]]!r} is not whole ms") from None
            t = int(t_float)
        fields = zip(idx[1:], ("open", "high", "low", "close"), strict=True)
        o, h, lo, c = (_number(row[i].strip(), n, where) for i, n in fields)
        v = _number(row[vol].strip(), "volume", where) if vol is not None and row[vol].strip() else 0.0
        if min(o, h, lo, c) <= 0:
            raise HistoryError(f"{where}: prices must be > 0 (open={o}, high={h}, low={lo}, close={c})")
        if h < lo:
            raise HistoryError(f"{where}: high {h} is below low {lo}")
        if not (lo <= o <= h and lo <= c <= h):
            raise HistoryError(f"{where}: open/close outside the high-low range")
        if previous is not None:
            if t == previous:
                raise HistoryError(f"{where}: duplicate open time {t}")
            if t < previous:
                raise HistoryError(f"{where}: open time {t} is before the previous row's {previous} (file not sorted)")
        previous = t
        candles.append(Candle(t, o, h, lo, c, v))
    if not candles:
        raise HistoryError(f"{path}: the file has a header but no candles")
    return candles


def _chain(first: tuple[int, list[str]], rest: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    yield first
    yield from rest


def infer_interval_ms(candles: list[Candle]) -> int:
    """The file's interval: the smallest gap between consecutive open times (SPEC §7)."""
    if len(candles) < 2:
        raise HistoryError("need at least 2 candles to tell the file's interval")
    return min(b.open_time_ms - a.open_time_ms for a, b in zip(candles, candles[1:], strict=False))


def check_contiguous(candles: list[Candle], step_ms: int, label: str = "data") -> None:
    """Raise HistoryError at the first gap or misaligned open time."""
    for a, b in zip(candles, candles[1:], strict=False):
        if b.open_time_ms - a.open_time_ms != step_ms:
            raise HistoryError(
                f"{label}: gap after open time {a.open_time_ms}: next candle opens at {b.open_time_ms}, "
                f"expected {a.open_time_ms + step_ms}"
            )


def aggregate(candles: list[Candle], target_ms: int) -> list[Candle]:
    """Aggregate fine candles into ``target_ms`` buckets (bucket = open_time // target_ms)."""
    out: list[Candle] = []
    bucket = None
    o = h = lo = c = v = 0.0
    for k in candles:
        b = k.open_time_ms // target_ms
        if b != bucket:
            if bucket is not None:
                out.append(Candle(bucket * target_ms, o, h, lo, c, v))
            bucket, o, h, lo, c, v = b, k.open, k.high, k.low, k.close, k.volume
        else:
            h, lo, c, v = max(h, k.high), min(lo, k.low), k.close, v + k.volume
    if bucket is not None:
        out.append(Candle(bucket * target_ms, o, h, lo, c, v))
    return out


def validate_frame(rows: list[Candle], step_ms: int) -> None:
    """Validate history loaded over REST or from the DB with pandas (SPEC §3).

    Checks: no duplicates, contiguous open times at ``step_ms``, finite positive prices,
    high >= max(open, close), low <= min(open, close). Raises HistoryError naming the first
    offending open time. Used once at startup; never on the hot path.
    """
    if not rows:
        return
    import pandas as pd  # deliberately lazy: only startup validation needs pandas

    df = pd.DataFrame(rows, columns=list(Candle._fields))
    dup = df["open_time_ms"].duplicated()
    if dup.any():
        raise HistoryError(f"history: duplicate candle at open time {int(df.loc[dup.idxmax(), 'open_time_ms'])}")
    steps = df["open_time_ms"].diff().dropna()
    bad = steps != step_ms
    if bad.any():
        pos = int(bad.idxmax())
        raise HistoryError(
            f"history: candles not contiguous at open time {int(df.loc[pos, 'open_time_ms'])} "
            f"(gap of {int(steps[pos])} ms, expected {step_ms})"
        )
    prices = df[["open", "high", "low", "close"]]
    broken = (
        prices.isna().any(axis=1)
        | (prices <= 0).any(axis=1)
        | (df["high"] < df[["open", "close"]].max(axis=1))
        | (df["low"] > df[["open", "close"]].min(axis=1))
    )
    if broken.any():
        pos = int(broken.idxmax())
        raise HistoryError(f"history: impossible prices in candle at open time {int(df.loc[pos, 'open_time_ms'])}")
