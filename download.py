"""``bollmin.py download``: closed candles (and funding rates) from the exchange into a backtest file.

    python bollmin.py download --symbol BTCUSDT --interval 15m --start 2024-01-01 --end 2024-12-31 \\
        --out data/btcusdt_15m_2024.csv.gz --funding

* python-binance's ``AsyncClient`` (public endpoints, no API key is ever sent) pointed at
  ``REST_BASE_URL``, so tests and the demo talk to the simulated exchange.
* ``GET /fapi/v1/klines`` in pages of 1500 (``--funding``: ``GET /fapi/v1/fundingRate`` in pages
  of 1000). Only **closed** candles: the exchange's newest candle is still forming, so the
  download first asks which candle that is and stops before it.
* Request weights: every answer's ``X-MBX-USED-WEIGHT-1M`` is read; before the used weight would
  pass 80 % of the limit (2400 per minute), it waits for the next minute. An HTTP 429 or 418
  waits ``Retry-After`` and asks again (a ban longer than ``MAX_BAN_WAIT_S`` stops the download:
  run it again later, it resumes). Network errors and 5xx answers are retried with backoff.
* Resumable: a second run reads FILE and asks only for the candles after its last one (the file's
  interval must match). Each page is appended as soon as it is checked (``.csv``: lines;
  ``.csv.gz``: one gzip member per page), so an interruption loses at most one page, and a
  half-written tail left by a crash is cut off and reported at the next run.
* Gaps (candles the exchange does not have: an outage or maintenance) and bad rows (not
  numbers, impossible prices, wrong times) are reported on stderr; bad rows are never written.
  ``backtest`` and ``sweep`` play a file with gaps as it is, with a warning (docs/strategy.md).
* ``--end`` is inclusive: the whole last day (UTC). Without it: up to the last closed candle.

The file is in the backtest format: ``open_time_ms,open,high,low,close,volume,close_time_ms``
with the exchange's own number strings. Funding goes to FILE with ``.funding`` before ``.csv``:
``funding_time_ms,funding_rate,mark_price``.

Why this size: one command — paging klines and funding rates under the request-weight
limit, resuming an interrupted download, checking every page, writing the files atomically.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import progress as progress_mod
from config import Config, ConfigError
from history import INTERVAL_MS, HistoryError
from supervisor import EXIT_INTERRUPTED

KLINES_PAGE = 1500
FUNDING_PAGE = 1000
WEIGHT_LIMIT_1M = 2400       # Binance's REQUEST_WEIGHT per minute (exchangeInfo rateLimits)
WEIGHT_SAFETY = 0.8          # wait for the next minute before passing this share of it
FUNDING_LIMIT_5M = 500       # fundingRate shares 500 requests / 5 min / IP with fundingInfo
MAX_BAN_WAIT_S = 300.0       # a longer 418 ban stops the download (it resumes when run again)
RETRIES = 6                  # network errors / 5xx in a row before giving up
HEADER = "open_time_ms,open,high,low,close,volume,close_time_ms\n"
FUNDING_HEADER = "funding_time_ms,funding_rate,mark_price\n"
DAY_MS = 86_400_000


class DownloadError(RuntimeError):
    """The download cannot go on (exchange refused, network down, banned). What was fetched is kept.

    ``bad_input``: the exchange said the request itself is wrong (unknown symbol...): exit code 2.
    """

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


def klines_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v1/klines`` by ``limit`` (Binance's table)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def weight_wait_s(used: int, next_weight: int, limit: int, now_s: float) -> float:
    """Seconds to wait before a request of ``next_weight`` when ``used`` of ``limit`` is spent this minute.

    >>> weight_wait_s(100, 10, 2400, 1_000_000.0)
    0.0
    >>> weight_wait_s(1915, 10, 2400, 1_000_020.0)  # 1925 > 80 % of 2400: to the next minute, +0.5 s
    40.5
    """
    if used + next_weight <= limit * WEIGHT_SAFETY:
        return 0.0
    return 60.0 - (now_s % 60.0) + 0.5


def parse_day(text: str, option: str) -> int:
    """``YYYY-MM-DD`` as epoch ms at 00:00 UTC; ConfigError otherwise."""
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected a date as YYYY-MM-DD, e.g. 2024-01-31") from None
    return int(day.timestamp() * 1000)


def funding_path_for(out: str) -> str:
    """``x.csv.gz`` -> ``x.funding.csv.gz``; ``x.csv`` -> ``x.funding.csv``."""
    if out.endswith(".csv.gz"):
        return out[:-7] + ".funding.csv.gz"
    return out[:-4] + ".funding.csv"


def check_kline_row(row: Any, interval_ms: int) -> str | None:
    """What is wrong with one REST kline row, or None. Checked before anything is written."""
    if not isinstance(row, list) or len(row) < 7:
        return "not a 12-field kline row"
    try:
        open_ms, close_ms = int(row[0]), int(row[6])
        o, h, lo, c, v = (float(x) for x in row[1:6])
    except (TypeError, ValueError):
        return "a field is not a number"
    if not all(math.isfinite(x) for x in (o, h, lo, c, v)):
        return "a price is not finite"
    if min(o, h, lo, c) <= 0 or v < 0:
        return "a price is zero or negative"
    if not (lo <= min(o, c) and h >= max(o, c)):
        return "open/close outside the high-low range"
    if open_ms % interval_ms or close_ms != open_ms + interval_ms - 1:
        return "open/close time not on the interval"
    return None


def check_funding_row(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a funding record"
    try:
        int(row["fundingTime"])
        rate = float(row["fundingRate"])
        mark = row.get("markPrice")
        if mark not in (None, ""):
            float(mark)
    except (KeyError, TypeError, ValueError):
        return "a field is missing or not a number"
    if not math.isfinite(rate) or abs(rate) >= 1:
        return "implausible funding rate"
    return None


# ---- the file we append to ----------------------------------------------------------------------

@dataclass
class Target:
    """An output file: what it holds already, and appending to it page by page."""

    path: str
    header: str
    gz: bool = field(init=False)
    last_ms: int | None = None      # newest time already in the file
    rows: int = 0
    repaired: str = ""

    def __post_init__(self) -> None:
        self.gz = self.path.endswith(".gz")

    def load(self, time_of: Callable[[str], int]) -> list[int]:
        """Read what is there (cutting off a half-written tail); returns the times of its rows.

        A tail is only cut from a file that starts with our header: anything else is refused untouched.
        """
        if not os.path.exists(self.path):
            return []
        if os.path.isdir(self.path):
            raise HistoryError(f"--out {self.path}: is a directory")
        with open(self.path, "rb") as fh:
            data = fh.read()
        if not data:
            return []
        text, keep = _complete_part(data, self.gz)
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines or lines[0].strip() != self.header.strip():
            raise HistoryError(f"--out {self.path}: exists but is not a file written by download "
                               f"({'unreadable' if not lines else 'its first line is ' + repr(lines[0][:60])}); "
                               f"choose another file")
        if keep < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
            self.repaired = f"cut off {len(data) - keep} bytes of an incomplete tail (an earlier run was interrupted)"
        times: list[int] = []
        for n, line in enumerate(lines[1:], start=2):
            try:
                times.append(time_of(line))
            except (ValueError, IndexError):
                raise HistoryError(f"--out {self.path}: line {n} is not a row of this format; cannot resume") from None
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise HistoryError(f"--out {self.path}: times are not increasing; cannot resume")
        self.rows = len(times)
        self.last_ms = times[-1] if times else None
        return times

    def append(self, lines: list[str]) -> None:
        """Append whole lines (and the header for a new file) and flush them to disk."""
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        text = (self.header if new else "") + "".join(lines)
        if not text:
            return
        data = text.encode("utf-8")
        if self.gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows += len(lines)


def _complete_part(data: bytes, gz: bool) -> tuple[str, int]:
    """(text of the complete part, its length in bytes): whole gzip members, then whole lines."""
    if gz:
        text_parts: list[bytes] = []
        pos = 0
        while pos < len(data):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                chunk = d.decompress(data[pos:])
            except zlib.error:
                break
            if not d.eof:
                break  # a member cut short
            text_parts.append(chunk)
            pos = len(data) - len(d.unused_data)
        raw = b"".join(text_parts)
        if not raw.endswith(b"\n") and raw:
            raw = raw[: raw.rfind(b"\n") + 1]  # never happens with our whole-line members
        return raw.decode("utf-8", "replace"), pos
    keep = data.rfind(b"\n") + 1 if not data.endswith(b"\n") else len(data)
    return data[:keep].decode("utf-8", "replace"), keep


# ---- talking to the exchange --------------------------------------------------------------------

@dataclass
class Stats:
    requests: int = 0
    weight: int = 0                 # request weight this download used (sum of each request's weight)
    rate_limited: int = 0
    retries: int = 0
    last_used_weight: int = 0       # the exchange's X-MBX-USED-WEIGHT-1M on the last answer


class Fetcher:
    """One request at a time, honouring weights, 429/418 Retry-After and transient errors."""

    def __init__(self, client: Any, say: Callable[[str], None],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.say, self.sleep, self.clock = client, say, sleep, clock
        self.stats = Stats()
        self.weight_limit = WEIGHT_LIMIT_1M
        self._funding_times: list[float] = []

    async def call(self, method: str, weight: int, **params: Any) -> Any:
        import aiohttp
        from binance.exceptions import BinanceAPIException, BinanceRequestException

        failures = 0
        while True:
            wait = weight_wait_s(self.stats.last_used_weight, weight, self.weight_limit, self.clock())
            if wait:
                self.say(f"request weight {self.stats.last_used_weight}/{self.weight_limit} this minute: "
                         f"waiting {wait:.0f} s for the next minute")
                await self.sleep(wait)
                self.stats.last_used_weight = 0
            if method == "futures_funding_rate":
                await self._pace_funding()
            try:
                self.stats.requests += 1
                result = await getattr(self.client, method)(**params)
            except BinanceAPIException as exc:
                status = exc.status_code
                if status in (429, 418) or exc.code in (-1003,):
                    self.stats.rate_limited += 1
                    retry = _retry_after(exc)
                    what = "IP banned (HTTP 418)" if status == 418 else f"rate limited (HTTP {status})"
                    if retry > MAX_BAN_WAIT_S:
                        until = dt.datetime.fromtimestamp(self.clock() + retry, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
                        raise DownloadError(f"{what} until {until}; run the same command again then: it resumes "
                                            f"where it stopped") from None
                    self.say(f"{what}: waiting {retry:.0f} s (Retry-After), then asking again")
                    await self.sleep(retry)
                    self.stats.last_used_weight = 0
                    continue
                if status is not None and status >= 500 and failures < RETRIES:
                    failures += 1
                    await self._backoff(failures, f"HTTP {status}")
                    continue
                raise DownloadError(f"the exchange refused {method.replace('futures_', '')}: "
                                    f"{exc.code} {exc.message} (HTTP {status})",
                                    bad_input=status == 400) from None
            except (TimeoutError, BinanceRequestException, OSError, aiohttp.ClientError) as exc:
                if failures < RETRIES:
                    failures += 1
                    await self._backoff(failures, f"{type(exc).__name__}")
                    continue
                raise DownloadError(f"cannot reach the exchange at {getattr(self.client, 'FUTURES_URL', '?')}: "
                                    f"{type(exc).__name__}: {exc}") from None
            self.stats.weight += weight
            self._note_weight()
            return result

    def _note_weight(self) -> None:
        response = getattr(self.client, "response", None)
        headers = getattr(response, "headers", None) or {}
        used = headers.get("X-MBX-USED-WEIGHT-1M") or headers.get("x-mbx-used-weight-1m")
        try:
            self.stats.last_used_weight = int(used) if used is not None else self.stats.last_used_weight
        except ValueError:
            pass

    async def _backoff(self, failures: int, why: str) -> None:
        self.stats.retries += 1
        delay = min(30.0, 0.5 * 2 ** (failures - 1)) * (0.8 + 0.4 * random.random())
        self.say(f"{why}: trying again in {delay:.1f} s ({failures}/{RETRIES})")
        await self.sleep(delay)

    async def _pace_funding(self) -> None:
        now = self.clock()
        self._funding_times = [t for t in self._funding_times if now - t < 300.0]
        if len(self._funding_times) >= FUNDING_LIMIT_5M * WEIGHT_SAFETY:
            wait = 300.0 - (now - self._funding_times[0]) + 0.5
            self.say(f"fundingRate: {len(self._funding_times)} requests in 5 minutes; waiting {wait:.0f} s")
            await self.sleep(wait)
        self._funding_times.append(self.clock())


def _retry_after(exc: Any) -> float:
    try:
        return max(float(exc.response.headers.get("Retry-After")), 0.0)
    except (TypeError, ValueError, AttributeError):
        return 60.0


# ---- the download ----------------------------------------------------------------------------------

@dataclass
class Report:
    written: int = 0
    had: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)   # (first missing open, last missing open)
    bad: list[tuple[int | None, str]] = field(default_factory=list)
    funding_written: int = 0
    funding_had: int = 0


async def download(client: Any, symbol: str, interval: str, start_ms: int, end_ms: int | None, out: str,
                   with_funding: bool, say: Callable[[str], None], progress: Any = None,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> tuple[Report, Stats]:
    """Fetch and append; see the module docstring. Raises DownloadError/HistoryError."""
    step = INTERVAL_MS[interval]
    fetch = Fetcher(client, say, sleep)
    report = Report()
    target = Target(out, HEADER)
    have = target.load(lambda line: int(line.split(",", 1)[0]))
    if target.repaired:
        say(f"{out}: {target.repaired}")
    if len(have) >= 2:
        file_step = min(b - a for a, b in zip(have, have[1:], strict=False))
        if file_step != step:
            raise HistoryError(f"--out {out} holds candles {file_step // 60_000} min apart, not {interval}: "
                               f"choose another file")
    if have and have[-1] % step:
        raise HistoryError(f"--out {out}: its candles are not on the {interval} grid; choose another file")
    report.had = len(have)
    if have and have[0] > start_ms:
        raise HistoryError(f"--out {out} starts at {_day(have[0])}, after --start {_day(start_ms)}: a download only "
                           f"adds candles at the end; use a new file (or --start {_day(have[0])[:10]})")
    # The newest candle the exchange has is the one still forming: stop before it.
    probe = await fetch.call("futures_klines", klines_weight(1), symbol=symbol, interval=interval, limit=1)
    if not probe or not isinstance(probe[-1], list):
        raise DownloadError(f"the exchange has no {interval} candles for {symbol}")
    forming_ms = int(probe[-1][0])
    last_wanted = forming_ms - step if end_ms is None else min(end_ms // step * step, forming_ms - step)
    begin = -(-start_ms // step) * step
    if have:
        begin = max(begin, have[-1] + step)
    expected = have[-1] + step if have else None
    if progress is not None:
        progress.reset(total=max((last_wanted - begin) // step + 1, 0))
    cursor = begin
    while cursor <= last_wanted:
        rows = await fetch.call("futures_klines", klines_weight(KLINES_PAGE), symbol=symbol, interval=interval,
                                startTime=cursor, endTime=last_wanted + step - 1, limit=KLINES_PAGE)
        if not isinstance(rows, list):
            raise DownloadError(f"unexpected klines answer: {str(rows)[:100]}")
        lines: list[str] = []
        newest = None
        for row in rows:
            problem = check_kline_row(row, step)
            open_ms = _int_or_none(row[0] if isinstance(row, list) and row else None)
            if problem is None and (open_ms < cursor or (newest is not None and open_ms <= newest)):
                problem = "out of order or repeated"
            if problem is None and open_ms > last_wanted:
                continue  # beyond what was asked (never the forming candle: last_wanted is before it)
            if problem is not None:
                report.bad.append((open_ms, problem))
                say(f"bad row from the exchange at {_day(open_ms) if open_ms is not None else '?'}: {problem}; "
                    f"not written")
                continue
            if expected is not None and open_ms > expected:
                report.gaps.append((expected, open_ms - step))
                n = (open_ms - expected) // step
                say(f"gap: the exchange has no {interval} candles from {_day(expected)} to {_day(open_ms - step)} "
                    f"({n} missing)")
            lines.append(f"{open_ms},{row[1]},{row[2]},{row[3]},{row[4]},{row[5]},{int(row[6])}\n")
            expected = open_ms + step
            newest = open_ms
            if report.first_ms is None:
                report.first_ms = open_ms
            report.last_ms = open_ms
        target.append(lines)
        report.written += len(lines)
        if progress is not None:
            progress.update(len(lines))
        if newest is None:
            break  # nothing more in the range: the exchange has no later candles
        cursor = newest + step
    if with_funding:
        await _download_funding(fetch, symbol, start_ms, min(last_wanted + step - 1, forming_ms - 1), out, report, say)
    return report, fetch.stats


async def _download_funding(fetch: Fetcher, symbol: str, start_ms: int, end_ms: int, out: str, report: Report,
                            say: Callable[[str], None]) -> None:
    path = funding_path_for(out)
    target = Target(path, FUNDING_HEADER)
    have = target.load(lambda line: int(line.split(",", 1)[0]))
    if target.repaired:
        say(f"{path}: {target.repaired}")
    report.funding_had = len(have)
    cursor = max(start_ms, have[-1] + 1) if have else start_ms
    newest = have[-1] if have else None
    while cursor <= end_ms:
        rows = await fetch.call("futures_funding_rate", 1, symbol=symbol, startTime=cursor, endTime=end_ms,
                                limit=FUNDING_PAGE)
        if not isinstance(rows, list):
            raise DownloadError(f"unexpected fundingRate answer: {str(rows)[:100]}")
        lines = []
        for row in rows:
            problem = check_funding_row(row)
            t = _int_or_none(row.get("fundingTime")) if isinstance(row, dict) else None
            if problem is None and newest is not None and t <= newest:
                problem = "out of order or repeated"
            if problem is not None:
                report.bad.append((t, f"funding: {problem}"))
                say(f"bad funding record at {_day(t) if t is not None else '?'}: {problem}; not written")
                continue
            mark = row.get("markPrice") or ""
            lines.append(f"{t},{row['fundingRate']},{mark}\n")
            newest = t
        target.append(lines)
        report.funding_written += len(lines)
        if len(rows) < FUNDING_PAGE or newest is None:
            break
        cursor = newest + 1


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _day(ms: int | None) -> str:
    if ms is None:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def main_download(cfg: Config, symbol: str, interval: str, start: str, end: str | None, out: str, funding: bool,
                  stdout: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The download subcommand: ConfigError/HistoryError for bad input (exit 2), 1 when the exchange fails."""
    cfg.replace(SYMBOL=symbol)  # the same check as the setting (upper-case contract name)
    if interval not in INTERVAL_MS:
        raise ConfigError(f"--interval {interval!r}: use one of {', '.join(INTERVAL_MS)}")
    start_ms = parse_day(start, "--start")
    end_ms = parse_day(end, "--end") + DAY_MS - 1 if end else None
    if end_ms is not None and end_ms < start_ms:
        raise ConfigError(f"--end {end} is before --start {start}")
    if not (out.endswith(".csv") or out.endswith(".csv.gz")):
        raise ConfigError(f"--out {out}: the file name must end in .csv or .csv.gz")
    if start_ms > time.time() * 1000:
        raise ConfigError(f"--start {start} is in the future")

    def say(message: str) -> None:
        err.write(f"download: {message}\n")
        err.flush()

    async def run() -> tuple[Report, Stats]:
        import aiohttp
        from binance import AsyncClient  # constructed inside the running loop (it opens an aiohttp session)

        client = AsyncClient(requests_params={"timeout": aiohttp.ClientTimeout(total=cfg.REST_TIMEOUT_SECONDS)})
        client.FUTURES_URL = cfg.REST_BASE_URL.rstrip("/") + "/fapi"
        client.API_URL = cfg.REST_BASE_URL.rstrip("/") + "/api"
        bar = progress_mod.bar(None, f"{symbol} {interval}", "candle", stream=err)
        try:
            return await download(client, symbol, interval, start_ms, end_ms, out, funding, say, bar)
        finally:
            bar.close()
            await client.close_connection()

    began = time.monotonic()
    try:
        report, stats = asyncio.run(run())
    except DownloadError as exc:
        err.write(f"bollmin: download stopped: {exc}\n")
        return 2 if exc.bad_input else 1
    except KeyboardInterrupt:
        err.write("bollmin: download interrupted; what was fetched is kept: run the same command to resume\n")
        return EXIT_INTERRUPTED
    took = time.monotonic() - began
    w = stdout.write
    if report.written:
        w(f"已下载 (downloaded) {report.written} 根 {interval} K线 {symbol} "
          f"{_day(report.first_ms)} → {_day(report.last_ms)} UTC 到 (into) {out}"
          f"{f'（文件原有 already had {report.had}）' if report.had else ''}\n")
    elif not report.had:
        w(f"交易所在这段时间没有 {interval} K线 (the exchange has no {interval} candles for {symbol} in this range; "
          f"is --start before the contract was listed, or in the future?): {out} 没有K线 (holds no candles)\n")
    else:
        w(f"没有新的已收盘K线 (nothing new): {out} 已是最新 (is up to date; {report.had} candles)\n")
    if funding:
        w(f"资金费率 (funding rates): {report.funding_written} 条新记录 (new) → {funding_path_for(out)}"
          f"{f'（原有 had {report.funding_had}）' if report.funding_had else ''}\n")
    w(f"请求 (requests) {stats.requests}，权重 (request weight) {stats.weight}，"
      f"限流 (rate limited) {stats.rate_limited} 次，{took:.1f} s\n")
    if report.gaps:
        missing = sum((b - a) // INTERVAL_MS[interval] + 1 for a, b in report.gaps)
        w(f"⚠ 缺口 (gaps): {len(report.gaps)}，共缺 {missing} 根 (candles missing)：交易所没有这些 K 线；"
          f"回测照原样回放并给出警告 / the exchange has no candles there; backtest plays the file as it is, "
          f"with a warning\n")
    if report.bad:
        w(f"⚠ 坏数据 (bad rows): {len(report.bad)} 行未写入 (not written)\n")
    return 0
