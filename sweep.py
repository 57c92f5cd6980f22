"""``bollmin.py sweep``: the strategy lab. Many parameter sets over one kline file, honestly reported.

Every combination of the given values (interval × period × k × the optional variations) runs
through ``evaluator.evaluate``, which gives exactly the actions ``backtest`` (the engine) gives,
in ``--jobs`` processes. For each set the whole-file figures are those ``backtest --json`` prints
for the same settings (same function, ``metrics.summarize``).

Walk-forward (``--train-fraction F``): the file is cut at the first candle boundary (common to all
swept intervals) at or before F of its time span. The sets are ranked on the part before the cut
(in-sample: exactly what ``backtest`` prints for a file that ends at the cut) and reported on the
untouched rest (out-of-sample: a fresh start, FLAT, with the bands warmed up on the last
``period - 1`` candles before the cut: exactly what ``backtest`` prints for a file starting
``period - 1`` candles before the cut). A trader's question is whether the best in-sample set
still makes money out of sample; the report says so in plain words.

Why this size: one command with four parts, in this order — the grid of parameter sets,
running them on every core, ranking with the walk-forward verdicts, the text report. The
per-set evaluation is ``evaluator.py``; the HTML report ``lab_report.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

import numpy as np

import progress as progress_mod
from config import Config, ConfigError
from evaluator import BandCache, evaluate
from history import INTERVAL_MS, HistoryError, interval_ms
from metrics import day_ends
from store import check_sweep_db, write_sweep
from supervisor import EXIT_INTERRUPTED
from tape import NO_FUNDING, FundingEvents, FundingRates, Series, Tape, load_tape, read_funding

MAX_SETS = 100_000

#: What ``--rank-by`` may name: summary fields where more is better (drawdown: less is better).
RANK_FIELDS = ("net_pnl_usdt", "sharpe_daily", "profit_factor", "win_rate", "max_drawdown_usdt")

#: The swept settings: CLI option -> (setting, kind, JSON field).
AXES: dict[str, tuple[str, str, str]] = {
    "interval": ("INTERVAL", "interval", "interval"),
    "period": ("BOLL_PERIOD", "int", "boll_period"),
    "k": ("BOLL_K", "float", "boll_k"),
    "evaluate_on": ("EVALUATE_ON", "choice", "evaluate_on"),
    "buffer": ("BREAKOUT_BUFFER_PCT", "float", "breakout_buffer_pct"),
    "cooldown": ("STOP_COOLDOWN_CANDLES", "int", "stop_cooldown_candles"),
    "slippage": ("PAPER_SLIPPAGE_PCT", "float", "slippage_pct"),
}


# ---- the grid -----------------------------------------------------------------------------------

def parse_values(text: str, kind: str, option: str) -> list[Any]:
    """A LIST of the command line: ``a,b,c`` or ``start:stop:step`` (inclusive). ConfigError when bad.

    >>> parse_values("1.5:2.5:0.5", "float", "--k")
    [1.5, 2.0, 2.5]
    """
    text = text.strip()
    if not text:
        raise ConfigError(f"{option}: give values, e.g. {option} 10,20,30 or {option} 10:30:5")
    if ":" in text:
        if kind in ("interval", "choice"):
            raise ConfigError(f"{option} {text}: give a comma-separated list (a range makes no sense here)")
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{option} {text}: a range is start:stop:step, e.g. 10:30:5")
        try:
            start, stop, step = (Decimal(p.strip()) for p in parts)
        except InvalidOperation:
            raise ConfigError(f"{option} {text}: start, stop and step must be numbers") from None
        if not step > 0:
            raise ConfigError(f"{option} {text}: the step must be greater than 0")
        if stop < start:
            raise ConfigError(f"{option} {text}: stop is below start")
        count = int((stop - start) / step) + 1
        if count > MAX_SETS:
            raise ConfigError(f"{option} {text}: {count} values is too many")
        values: list[Any] = [start + i * step for i in range(count)]
        if kind == "int":
            if any(v != v.to_integral_value() for v in values):
                raise ConfigError(f"{option} {text}: must give whole numbers")
            return [int(v) for v in values]
        return [float(v) for v in values]
    out: list[Any] = []
    for item in (p.strip() for p in text.split(",")):
        if kind == "interval":
            if item not in INTERVAL_MS:
                raise ConfigError(f"{option} {item!r}: not an interval; use {', '.join(INTERVAL_MS)}")
            out.append(item)
        elif kind == "choice":
            out.append(item)
        else:
            try:
                number = Decimal(item)
            except InvalidOperation:
                raise ConfigError(f"{option} {item!r}: not a number") from None
            if kind == "int":
                if number != number.to_integral_value():
                    raise ConfigError(f"{option} {item!r}: must be a whole number")
                out.append(int(number))
            else:
                out.append(float(number))
    return list(dict.fromkeys(out))  # each value once, in the order given


@dataclass
class Grid:
    """The parameter sets: one dict of setting overrides per set, and the validated configs."""

    axes: dict[str, list[Any]]
    overrides: list[dict[str, Any]] = field(default_factory=list)
    configs: list[Config] = field(default_factory=list)


def build_grid(cfg: Config, given: dict[str, str | None]) -> Grid:
    """Every combination of the given LISTs (the setting's own value for an axis not given)."""
    axes: dict[str, list[Any]] = {}
    for name, (setting, kind, _field) in AXES.items():
        text = given.get(name)
        axes[name] = parse_values(text, kind, f"--{name.replace('_', '-')}") if text else [getattr(cfg, setting)]
    total = math.prod(len(v) for v in axes.values())
    if total > MAX_SETS:
        raise ConfigError(f"the grid has {total:,} parameter sets; at most {MAX_SETS:,} per sweep")
    grid = Grid(axes)
    names = list(axes)
    for combo in _product([axes[n] for n in names]):
        over = {AXES[n][0]: v for n, v in zip(names, combo, strict=True)}
        # A long window needs as much history at start; only the live bot uses HISTORY_KLINES.
        over["HISTORY_KLINES"] = max(cfg.HISTORY_KLINES, over["BOLL_PERIOD"] - 1)
        grid.overrides.append(over)
        grid.configs.append(cfg.replace(**over))  # ConfigError names the setting and the bad value
    return grid


def _product(lists: Sequence[list[Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [()]
    for values in lists:
        out = [prefix + (v,) for prefix in out for v in values]
    return out


# ---- walk-forward cut ---------------------------------------------------------------------------

def split_time_ms(tape: Tape, fraction: float, intervals: Sequence[str]) -> int:
    """Open time of the first test candle: F of the file's span, down to a boundary of every interval."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--train-fraction {fraction}: must be between 0 and 1 (e.g. 0.7)")
    first = int(tape.candles.open_time_ms[0])
    end = int(tape.candles.open_time_ms[-1]) + tape.file_interval_ms
    boundary = math.lcm(*(interval_ms(i) for i in intervals))
    return (first + int((end - first) * fraction)) // boundary * boundary


def split_candle(series: Series, split_ms: int, period: int, label: str) -> int:
    """Index of the first test candle of ``series``; ConfigError when either part is too short."""
    c = int(np.searchsorted(series.open_ms, split_ms))
    if c < period or len(series) - c < 2:
        raise ConfigError(
            f"--train-fraction leaves {c} {label} candles to rank on and {len(series) - c} to test; "
            f"need at least BOLL_PERIOD ({period}) before the cut and 2 after it: use a longer file "
            f"or another fraction"
        )
    return c


# ---- running the sets (also in worker processes) -----------------------------------------------

@dataclass
class Job:
    """Everything a worker needs; built before the worker processes fork, so they share it."""

    tape: Tape
    grid: Grid
    funding: FundingRates | None
    split_ms: int | None
    series: dict[str, Series] = field(default_factory=dict)
    funding_events: FundingEvents | None = None

    def __post_init__(self) -> None:
        if self.funding is not None:
            self.funding_events = self.funding.on(self.tape)


_JOB: Job | None = None
_CACHE = BandCache(max_entries=6)
_TAILS: dict[tuple[str, int], Series] = {}


def _series(job: Job, interval: str) -> Series:
    s = job.series.get(interval)
    if s is None:
        s = job.series[interval] = job.tape.at(interval)
    return s


def run_set(job: Job, index: int) -> dict[str, Any]:
    """One parameter set: whole file, and with a cut, in-sample and out-of-sample figures."""
    cfg = job.grid.configs[index]
    series = _series(job, cfg.INTERVAL)
    funding = job.funding_events if job.funding_events is not None else NO_FUNDING
    split_tick = None
    if job.split_ms is not None:
        cut = split_candle(series, job.split_ms, cfg.BOLL_PERIOD, cfg.INTERVAL)
        split_tick = int(series.tick_start[cut])
    ev = evaluate(series, cfg, funding, split_tick=split_tick, cache=_CACHE)
    result: dict[str, Any] = {"index": index, "summary": ev.summary,
                              "daily_equity": ev.equity[series.day_ends()].astype(np.float32)}
    if split_tick is not None:
        result["in_sample"] = ev.in_sample
        key = (cfg.INTERVAL, cfg.BOLL_PERIOD)
        tail = _TAILS.get(key)
        if tail is None:
            if len(_TAILS) >= 6:
                _TAILS.pop(next(iter(_TAILS)))
            tail = _TAILS[key] = series.tail(cut - (cfg.BOLL_PERIOD - 1))
        tail_funding = job.funding.on(tail.tape) if job.funding is not None else NO_FUNDING
        oos = evaluate(tail, cfg, tail_funding, cache=_CACHE)
        result["out_of_sample"] = oos.summary
        # From the cut on (the warm-up candles before it never trade): the same days for every set.
        ends = tail.day_ends()
        ends = ends[tail.times[ends] >= job.split_ms]
        result["oos_daily_equity"] = oos.equity[ends].astype(np.float32)
    return result


def _run_chunk(indices: list[int]) -> list[dict[str, Any]]:
    assert _JOB is not None
    return [run_set(_JOB, i) for i in indices]


def _chunks(job: Job, jobs: int) -> list[list[int]]:
    """Sets grouped by (interval, period, ddof) — they share the bands — split into chunks."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, cfg in enumerate(job.grid.configs):
        groups.setdefault((cfg.INTERVAL, cfg.BOLL_PERIOD, cfg.BOLL_DDOF, cfg.EVALUATE_ON), []).append(i)
    total = len(job.grid.configs)
    size = max(4, math.ceil(total / max(jobs * 6, 1)))
    chunks: list[list[int]] = []
    for members in groups.values():
        for at in range(0, len(members), size):
            chunks.append(members[at:at + size])
    chunks.sort(key=len, reverse=True)  # big ones first: the pool ends evenly
    return chunks


def run_all(job: Job, jobs: int, progress: Any = None, keep_curves: tuple[str, bool, int] | None = None
            ) -> list[dict[str, Any]]:
    """Every set, in grid order. ``jobs`` > 1 forks that many worker processes.

    ``keep_curves`` (rank_by, walk_forward, top): keep the daily equity curves of the sets that can
    still be among the ``top`` best and drop the others' as results arrive (a big grid's curves
    would not fit in memory).
    """
    global _JOB
    _JOB = job
    chunks = _chunks(job, jobs)
    results: list[dict[str, Any] | None] = [None] * len(job.grid.configs)
    curved: list[dict[str, Any]] = []

    def collect(batch: list[dict[str, Any]]) -> None:
        for r in batch:
            results[r["index"]] = r
        if keep_curves is None:
            return
        by, walk_forward, top = keep_curves
        curved.extend(batch)
        if len(curved) > max(4 * top, 200):
            part = "in_sample" if walk_forward else "summary"
            curved.sort(key=lambda r: (rank_key(r[part], by), -r["index"]), reverse=True)
            for r in curved[top:]:
                r.pop("daily_equity", None)
                r.pop("oos_daily_equity", None)
            del curved[top:]

    if jobs <= 1 or len(chunks) == 1:
        for chunk in chunks:
            collect(_run_chunk(chunk))
            if progress is not None:
                progress.update(len(chunk))
    else:
        _run_in_workers(chunks, min(jobs, len(chunks)), collect, progress)
    return [r for r in results if r is not None]


def _run_in_workers(chunks: list[list[int]], n: int, collect: Any, progress: Any) -> None:
    """Run the chunks in ``n`` forked worker processes, handing each a chunk when it is free.

    The workers are forked first, before this process has any thread (a fork while another thread
    holds a lock can leave the child stuck forever), and talk through plain pipes (``SimpleQueue``:
    no feeder threads). They ignore Ctrl-C; the parent gets it, stops them and re-raises.
    """
    context = multiprocessing.get_context("fork")  # the workers inherit the tape: nothing to pickle
    tasks, results = context.SimpleQueue(), context.SimpleQueue()
    workers = [context.Process(target=_worker, args=(tasks, results), daemon=True) for _ in range(n)]
    for w in workers:
        w.start()
    try:
        for chunk in chunks:
            tasks.put(chunk)
        for _ in workers:
            tasks.put(None)
        for _ in chunks:
            kind, payload = results.get()
            if kind == "error":
                raise RuntimeError(f"a sweep worker failed: {payload}")
            collect(payload)
            if progress is not None:
                progress.update(len(payload))
        for w in workers:
            w.join()
    except BaseException:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join(5)
        raise


def _worker(tasks: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (chunk := tasks.get()) is not None:
        try:
            results.put(("ok", _run_chunk(chunk)))
        except Exception as exc:  # reported by the parent; a bug, not bad input
            results.put(("error", f"{type(exc).__name__}: {exc}"))
            return


# ---- ranking and output -------------------------------------------------------------------------

def rank_key(figures: dict[str, Any], by: str) -> float:
    value = figures.get(by)
    if value is None:
        return -math.inf
    return -float(value) if by == "max_drawdown_usdt" else float(value)


def rank(results: list[dict[str, Any]], by: str, walk_forward: bool) -> list[dict[str, Any]]:
    """Best first, on the in-sample figures with walk-forward, else on the whole file; ties keep grid order."""
    part = "in_sample" if walk_forward else "summary"
    ordered = sorted(results, key=lambda r: (rank_key(r[part], by), -r["index"]), reverse=True)
    for n, r in enumerate(ordered, start=1):
        r["rank"] = n
    return ordered


def set_label(summary: dict[str, Any]) -> str:
    """A parameter set in one short line, variations only when on."""
    text = f"{summary['interval']} period {summary['boll_period']} k {summary['boll_k']:g}"
    if summary["evaluate_on"] != "tick":
        text += " close"
    if summary["breakout_buffer_pct"]:
        text += f" buffer {summary['breakout_buffer_pct']:g}%"
    if summary["stop_cooldown_candles"]:
        text += f" cooldown {summary['stop_cooldown_candles']}"
    if summary["slippage_pct"]:
        text += f" slip {summary['slippage_pct']:g}%"
    return text


def json_record(r: dict[str, Any]) -> dict[str, Any]:
    """One ``--json`` line: the set, its whole-file figures (``backtest --json``'s summary) and rank."""
    record = {"interval": r["summary"]["interval"], "boll_period": r["summary"]["boll_period"],
              "boll_k": r["summary"]["boll_k"]}
    record.update(r["summary"])
    record["rank"] = r["rank"]
    if "in_sample" in r:
        record["in_sample"] = r["in_sample"]
        record["out_of_sample"] = r["out_of_sample"]
    return record


def verdicts(ordered: list[dict[str, Any]], walk_forward: bool, default: dict[str, Any] | None) -> list[str]:
    """Plain sentences (Chinese, then English) on what the sweep found."""
    lines: list[str] = []
    n = len(ordered)
    winners = sum(1 for r in ordered if r["summary"]["net_pnl_usdt"] > 0)
    funded = _funded(ordered)
    lines.append(f"{n} 组参数中 {winners} 组在整个文件上盈利（扣除手续费{'和资金费' if funded else ''}）。"
                 f" / {winners} of {n} parameter sets made money over the whole file after fees"
                 f"{' and funding' if funded else ''}.")
    if default is not None:
        s = default["summary"]
        lines.append(f"默认参数（{set_label(s)}）：净盈亏 {s['net_pnl_usdt']:+.2f} USDT，"
                     f"{s['trades']} 笔交易，胜率 {s['win_rate'] * 100:.1f}%。 / The default settings "
                     f"({set_label(s)}): net {s['net_pnl_usdt']:+.2f} USDT over {s['trades']} round trips, "
                     f"win rate {s['win_rate'] * 100:.1f}%.")
    if not ordered:
        return lines
    silent = [r for r in ordered if r["summary"]["trades"] == 0]
    if silent:
        lines.append(f"{len(silent)} 组参数一笔交易都没有（价格包含在自己的窗口里时，最多偏离均值 "
                     f"√(period−1) 个 σ，k 不小于这个值的带永远碰不到）。 / {len(silent)} set(s) never traded "
                     f"(a price that is part of its own window is at most √(period−1) σ from the mean: "
                     f"bands at k ≥ that are never crossed).")
    best = ordered[0]
    if best["in_sample" if walk_forward else "summary"]["trades"] == 0:
        lines.append("⚠ 排名第一的参数组一笔交易都没有：在这段数据上，不交易比所有交易的参数组都好。"
                     " / The top-ranked set never traded: on this data, not trading beat every set that did.")
        traders = [r for r in ordered if r["summary"]["trades"] > 0]
        if not traders:
            return lines
        best = traders[0]
    label = set_label(best["summary"])
    if not walk_forward:
        net = best["summary"]["net_pnl_usdt"]
        lines.append(f"最佳（有交易的）：{label}，净盈亏 {net:+.2f} USDT。没有样本外检验（--train-fraction），"
                     f"这个最佳值是在同一段数据上挑出来的，会高估未来表现。 / Best (of the sets that trade): "
                     f"{label}, {net:+.2f} USDT. Without an out-of-sample test (--train-fraction) it was picked "
                     f"on the very data it is scored on, which flatters the future.")
        return lines
    ins, oos = best["in_sample"], best["out_of_sample"]
    lines.append(f"样本内最佳（有交易的）：{label}，样本内净盈亏 {ins['net_pnl_usdt']:+.2f} USDT，"
                 f"样本外 {oos['net_pnl_usdt']:+.2f} USDT（{oos['trades']} 笔）。 / Best in-sample (of the "
                 f"sets that trade): {label}: {ins['net_pnl_usdt']:+.2f} USDT in-sample, "
                 f"{oos['net_pnl_usdt']:+.2f} USDT out of sample ({oos['trades']} round trips).")
    if ins["net_pnl_usdt"] <= 0:
        lines.append("⚠ 连样本内最好的一组也亏钱：这组参数里没有任何一组显示出优势。"
                     " / Even the best in-sample set lost money in-sample: no set in this grid shows an edge.")
    elif oos["trades"] == 0:
        lines.append("它在样本外没有交易，无法检验。 / It did not trade out of sample: untested.")
    elif oos["net_pnl_usdt"] <= 0:
        lines.append(f"⚠ 它在样本外亏损 {oos['net_pnl_usdt']:+.2f} USDT：样本内的盈利很可能是过度拟合。"
                     f" / It LOST {oos['net_pnl_usdt']:+.2f} USDT out of sample: its in-sample profit is most "
                     f"likely overfitting.")
    else:
        lines.append(f"它在样本外也盈利（{oos['net_pnl_usdt']:+.2f} USDT）。一次检验不是证明：换一个切分点再试。"
                     f" / It also made money out of sample ({oos['net_pnl_usdt']:+.2f} USDT). One test is not "
                     f"proof: try another cut.")
    oos_winners = sum(1 for r in ordered if r["out_of_sample"]["net_pnl_usdt"] > 0)
    lines.append(f"样本外盈利的参数组：{oos_winners} / {n}。 / Sets profitable out of sample: {oos_winners} of {n}.")
    return lines


def _funded(results: list[dict[str, Any]]) -> bool:
    return bool(results) and bool(results[0]["summary"].get("funding"))


def find_default(results: list[dict[str, Any]], cfg: Config) -> dict[str, Any] | None:
    """The result of the settings file's own parameters, when they are in the grid."""
    for r in results:
        s = r["summary"]
        if (s["interval"], s["boll_period"], s["boll_k"], s["evaluate_on"], s["breakout_buffer_pct"],
                s["stop_cooldown_candles"], s["slippage_pct"]) == (
                cfg.INTERVAL, cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.EVALUATE_ON, cfg.BREAKOUT_BUFFER_PCT,
                cfg.STOP_COOLDOWN_CANDLES, cfg.PAPER_SLIPPAGE_PCT):
            return r
    return None


def text_report(ordered: list[dict[str, Any]], lines: list[str], walk_forward: bool, out: TextIO,
                top: int = 20) -> None:
    w = out.write
    w(f"参数扫描 (sweep) — 前 {min(top, len(ordered))} 名 / top {min(top, len(ordered))}"
      f"{'（按样本内排名 / ranked in-sample）' if walk_forward else ''}\n")
    head = (f"{'#':>4}  {'parameters':<48} {'net USDT':>10} {'trades':>7} {'win%':>6} {'maxDD':>9} {'PF':>6} "
            f"{'Sharpe':>7}")
    if walk_forward:
        head += f" {'IS net':>10} {'OOS net':>10}"
    w(head + "\n")
    for r in ordered[:top]:
        s = r["summary"]
        pf = "—" if s["profit_factor"] is None else f"{s['profit_factor']:.2f}"
        sh = "—" if s["sharpe_daily"] is None else f"{s['sharpe_daily']:.2f}"
        row = (f"{r['rank']:>4}  {set_label(s):<48} {s['net_pnl_usdt']:>+10.2f} {s['trades']:>7} "
               f"{s['win_rate'] * 100:>5.1f}% {s['max_drawdown_usdt']:>9.2f} {pf:>6} {sh:>7}")
        if walk_forward:
            row += f" {r['in_sample']['net_pnl_usdt']:>+10.2f} {r['out_of_sample']['net_pnl_usdt']:>+10.2f}"
        w(row + "\n")
    w("\n")
    for line in lines:
        w(f"  {line}\n")


def main_sweep(cfg: Config, path: str, given: dict[str, str | None], *, jobs: int | None, as_json: bool,
               db_path: str | None, report_path: str | None, train_fraction: float | None, rank_by: str,
               funding_path: str | None, top: int, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The sweep subcommand. Bad input raises ConfigError/HistoryError before any work or output."""
    started = time.monotonic()
    if rank_by not in RANK_FIELDS:
        raise ConfigError(f"--rank-by {rank_by}: use one of {', '.join(RANK_FIELDS)}")
    if jobs is not None and jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if top < 1:
        raise ConfigError("--top must be at least 1")
    funding_path = cfg.FUNDING_FILE if funding_path is None else funding_path
    if funding_path:
        cfg = cfg.replace(FUNDING_FILE=funding_path)
    grid = build_grid(cfg, given)
    tape = load_tape(path)
    for interval in grid.axes["interval"]:
        tape.at(interval)  # the file's interval must divide each swept interval
    funding = read_funding(funding_path) if funding_path else None
    split_ms = None
    if train_fraction is not None:
        split_ms = split_time_ms(tape, train_fraction, grid.axes["interval"])
        for interval in grid.axes["interval"]:
            split_candle(tape.at(interval), split_ms, max(grid.axes["period"]), interval)
    if db_path is not None:
        check_sweep_db(db_path)
    if report_path is not None:
        _check_writable(report_path, [p for p in (path, funding_path, db_path) if p])
    gaps = tape.gap_warning()
    if gaps:
        err.write(f"bollmin: warning: {gaps}\n")
    jobs = jobs or len(os.sched_getaffinity(0)) or 1
    job = Job(tape, grid, funding, split_ms)
    n_sets = len(grid.configs)
    bar = progress_mod.bar(n_sets, "sweep", "set", stream=err)
    try:
        results = run_all(job, jobs, bar, keep_curves=(rank_by, train_fraction is not None, top))
    except KeyboardInterrupt:
        err.write("bollmin: sweep interrupted; nothing was written\n")
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    walk_forward = split_ms is not None
    ordered = rank(results, rank_by, walk_forward)
    elapsed = time.monotonic() - started
    default = find_default(results, cfg)
    lines = verdicts(ordered, walk_forward, default)
    meta = {
        "source_file": path, "symbol": cfg.SYMBOL, "sets": n_sets, "jobs": jobs, "elapsed_s": round(elapsed, 3),
        "train_fraction": train_fraction, "split_time_ms": split_ms, "rank_by": rank_by,
        "first_open_time_ms": int(tape.candles.open_time_ms[0]),
        "last_open_time_ms": int(tape.candles.open_time_ms[-1]), "file_interval_ms": tape.file_interval_ms,
        "trade_amount_usdt": cfg.TRADE_AMOUNT_USDT, "fee_rate": cfg.PAPER_FEE_RATE,
        "funding_file": funding_path or "", "axes": grid.axes, "verdicts": lines,
        "day_end_ms": tape.times[day_ends(tape.times)].tolist(),
    }
    if walk_forward:
        meta["oos_day_end_ms"] = [t for t in meta["day_end_ms"] if t >= split_ms]
    for r in ordered:
        r["record"] = json_record(r)
    if db_path is not None:
        run_id = write_sweep(db_path, meta, ordered, top)
        err.write(f"已写入 (recorded in) {db_path}, sweep run {run_id}\n")
    if report_path is not None:
        from lab_report import write_report  # lab_report imports this module

        write_report(report_path, meta, ordered, top)
        err.write(f"报告 (report): {report_path}\n")
    if as_json:
        out.write("".join(json.dumps(r["record"]) + "\n" for r in ordered))
    else:
        text_report(ordered, lines, walk_forward, out, top=min(top * 2, 50))
        out.write(f"\n  {n_sets} 组参数，{elapsed:.1f} 秒，{jobs} 个进程 / {n_sets} sets in {elapsed:.1f} s "
                  f"on {jobs} process(es)\n")
    out.flush()
    return 0


def _check_writable(path: str, inputs: Sequence[str]) -> None:
    """Refuse a report path that would destroy something: a folder, one of the sweep's own files, or
    an existing file that is not an HTML page (a data file given by mistake). An older report is replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise HistoryError(f"--report {path}: the folder {parent} does not exist")
    if os.path.isdir(path):
        raise HistoryError(f"--report {path}: is a directory")
    if not os.path.exists(path):
        return
    for other in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(path, other):
                raise HistoryError(f"--report {path}: is one of this sweep's own files; choose another name")
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    except OSError as exc:
        raise HistoryError(f"--report {path}: {exc.strerror or type(exc).__name__}") from None
    if head and not head.startswith((b"<!doctype html", b"<html")):
        raise HistoryError(f"--report {path}: the file exists and is not an HTML page; it is never overwritten: "
                           f"choose another name")
