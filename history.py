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

import contextlib
import csv
import gzip
import io
import math
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

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
    """The 4 ticks (time_ms, price) a candle is replayed as (docs/strategy.md).

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


# Limits of a kline file. A Binance kline row is about 130 bytes and six years of 1m candles
# (all the history a USD-M contract has) about 3.2 million rows / 420 MB, so real files are far
# inside them; they exist so that a wrong or hostile file (a device, a single endless line, a
# gzip bomb) ends in one clear message instead of filling the memory. Documented in the README.
MAX_KLINE_BYTES = 2**30           # 1 GiB of CSV text (for .gz: after decompression)
MAX_LINE_CHARS = 65_536           # one line, without its line break
MAX_BLANK_ROWS = 10_000           # empty lines (or rows of empty cells) skipped in one file
MAX_OPEN_TIME_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999 UTC: later means not milliseconds

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open_binary(path: str) -> tuple[BinaryIO, BinaryIO]:
    """(file, stream): the opened regular file and its bytes, decompressed when it is gzip.

    Opened without blocking and checked with fstat before reading, so a FIFO or a device is
    refused at once instead of hanging or reading forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise HistoryError(f"{path}: is a directory, not a kline file")
        if not stat.S_ISREG(st.st_mode):
            raise HistoryError(f"{path}: is {_kind(st.st_mode)}, not a kline file: save the candles to a file first")
        if st.st_size > MAX_KLINE_BYTES:
            raise HistoryError(f"{path}: {st.st_size:,} bytes is more than the {MAX_KLINE_BYTES:,}-byte limit of a "
                               f"kline file: split it or compress it (.gz)")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        head = fh.peek(4)[:4]
        if head[:2] == _GZIP_MAGIC:  # by content, whatever the name says
            return fh, gzip.GzipFile(fileobj=fh, mode="rb")
        if head == _ZIP_MAGIC:  # one of Binance's archive .zip files
            return fh, _zip_member(fh, path)
    except OSError as exc:
        fh.close()
        raise HistoryError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except BaseException:
        fh.close()
        raise
    return fh, fh


def _zip_member(fh: BinaryIO, path: str) -> BinaryIO:
    """The one CSV inside a Binance archive ``.zip`` (data.binance.vision monthly/daily files),
    as a decompressing stream (its text is bounded like any file's by ``_text_lines``)."""
    try:
        archive = zipfile.ZipFile(fh)
    except zipfile.BadZipFile:
        raise HistoryError(f"{path}: not a readable zip archive") from None
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) != 1:
        raise HistoryError(f"{path}: a kline archive holds exactly one CSV file; this one holds {len(members)}")
    return archive.open(members[0])


def _text_lines(stream: BinaryIO, path: str) -> Iterator[str]:
    """The file's lines as text, line breaks kept (``\\n``, ``\\r\\n`` or ``\\r``), for ``csv``.

    One line is read at a time with a bounded ``readline``, so memory stays small whatever the
    file holds. Raises HistoryError naming the line for NUL bytes, text that is not UTF-8, a line
    longer than MAX_LINE_CHARS and more than MAX_KLINE_BYTES of text.
    A UTF-8 byte-order mark (as Excel writes) is skipped.
    """
    # surrogateescape never fails, so a bad byte is found on its exact line below.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    readline = text.readline
    total = lineno = 0
    while True:
        line = readline(MAX_LINE_CHARS + 2)  # the line, its \r\n, and so one char to tell it is too long
        if not line:
            return
        lineno += 1
        total += len(line)
        if total > MAX_KLINE_BYTES:
            raise HistoryError(f"{path}: more than {MAX_KLINE_BYTES:,} bytes of text (after decompression): "
                               f"split the file")
        if lineno == 1:
            if line.startswith("\ufeff"):
                line = line[1:]
            elif line.startswith(("\udcff\udcfe", "\udcfe\udcff")):
                raise HistoryError(f"{path}: is UTF-16 text: save it as UTF-8 (plain CSV)")
        where = f"{path}: line {lineno}"
        if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
            raise HistoryError(f"{where}: longer than {MAX_LINE_CHARS:,} characters: not a kline CSV file")
        if "\0" in line:
            raise HistoryError(f"{where}: not a readable CSV file: it holds NUL bytes (binary data)")
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                raise HistoryError(f"{where}: not a readable CSV file: the text is not UTF-8; "
                                   f"save it as UTF-8") from None
        yield line


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HistoryError(f"{where}: {what} {_cell(text)} is not a number") from None
    if not math.isfinite(value):
        raise HistoryError(f"{where}: {what} is {_cell(text)}; it must be a finite number")
    return value


def _cell(text: str) -> str:
    """A CSV cell for a message: quoted, and cut short when long."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def read_kline_bytes(path: str) -> bytes:
    """The whole text of a kline file as bytes (decompressed), within the same limits as
    ``read_candles``: a regular file, at most MAX_KLINE_BYTES of text. Raises HistoryError."""
    with _reading(path) as stream:
        data = stream.read(MAX_KLINE_BYTES + 1)
    if len(data) > MAX_KLINE_BYTES:
        raise HistoryError(f"{path}: more than {MAX_KLINE_BYTES:,} bytes of text (after decompression): split the file")
    return data


def _rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank row."""
    with _reading(path) as stream:
        reader = csv.reader(_text_lines(stream, path))
        blank = 0
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row
            else:
                blank += 1
                if blank > MAX_BLANK_ROWS:
                    raise HistoryError(f"{path}: more than {MAX_BLANK_ROWS:,} empty rows: not a kline CSV file")


@contextlib.contextmanager
def _reading(path: str) -> Iterator[BinaryIO]:
    """The decompressed bytes of a kline file; what goes wrong while reading them becomes one
    HistoryError line naming the file. Closes everything it opened."""
    fh, stream = _open_binary(path)
    try:
        yield stream
    except (gzip.BadGzipFile, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise HistoryError(f"{path}: not a readable gzip or zip file ({type(exc).__name__}: {exc})") from None
    except csv.Error as exc:
        raise HistoryError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise HistoryError(f"{path}: read error ({exc.strerror or exc})") from None
    finally:
        if stream is not fh:
            stream.close()
        fh.close()


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
                raise HistoryError(f"{where}: open time {_cell(row[idx[0]])} is not whole ms") from None
            t = int(t_float)
        if not 0 <= t <= MAX_OPEN_TIME_MS:
            raise HistoryError(f"{where}: open time {_cell(row[idx[0]].strip())} is not a time in epoch milliseconds "
                               f"from 0 to {MAX_OPEN_TIME_MS} (microseconds?)")
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
    """The file's interval: the smallest gap between consecutive open times (docs/strategy.md)."""
    if len(candles) < 2:
        raise HistoryError("need at least 2 candles to tell the file's interval")
    return min(b.open_time_ms - a.open_time_ms for a, b in zip(candles, candles[1:], strict=False))


def validate_frame(rows: list[Candle], step_ms: int) -> list[tuple[int, int]]:
    """Validate history loaded over REST or from the DB with pandas; returns its gaps.

    Checks: no duplicates, open times rising and aligned to ``step_ms``, finite positive prices,
    high >= max(open, close), low <= min(open, close). Raises HistoryError naming the first
    offending open time. Used at startup and after a reconnect; never on the hot path.

    Missing candles are not an error: the exchange has none for an outage or maintenance (no
    trades), so its history has the same holes a downloaded file has, and the window spans them
    as ``backtest`` does. Returns them as (open time before the gap, candles missing).
    """
    if not rows:
        return []
    import pandas as pd  # deliberately lazy: only startup validation needs pandas

    df = pd.DataFrame(rows, columns=list(Candle._fields))
    dup = df["open_time_ms"].duplicated()
    if dup.any():
        raise HistoryError(f"history: duplicate candle at open time {int(df.loc[dup.idxmax(), 'open_time_ms'])}")
    steps = df["open_time_ms"].diff().dropna()
    bad = (steps <= 0) | (steps % step_ms != 0)
    if bad.any():
        pos = int(bad.idxmax())
        raise HistoryError(
            f"history: candles out of order or off the {step_ms} ms grid at open time "
            f"{int(df.loc[pos, 'open_time_ms'])} (step of {int(steps[pos])} ms)"
        )
    from tape import find_gaps  # lazy: tape imports this module (and numpy)

    gaps = find_gaps(df["open_time_ms"].to_numpy(), step_ms)
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
    return gaps
