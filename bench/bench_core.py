#!/usr/bin/env python3
"""Benchmark of the core engine: the per-tick cost of ``Engine.on_trade`` and a whole backtest.

    python bench/bench_core.py            print a markdown table
    python bench/bench_core.py --write    also regenerate the core section of BENCHMARKS.md

What is measured (on the bundled real BTCUSDT data):

* ``Engine.on_trade`` per tick — live BOLL + one step of the strategy table + the candle clock,
  over every tick of the 2023 15m backtest path (4 ticks per candle); total time of the loop
  divided by the ticks (loop and call overhead included), best of several runs (timeit style).
* The same tick the way a pandas-based bot handles it: append the price to a Series of the last
  closes (50 values in all), then ``rolling(20).mean()`` and ``rolling(20).std(ddof=0)`` on it
  and the same table step; on a sample of 2000 ticks.
* ``json.loads`` of one real trade-stream message (what every tick costs before it reaches the
  engine): the floor to compare with.
* Wall time of ``python bollmin.py backtest --klines marketdata/btcusdt_um_15m_2023.csv.gz --json``
  with stdout to /dev/null — the whole process, interpreter start included; median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit

import common  # bench/common.py: machine line and BENCHMARKS.md sections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tests' support package

from support.env import clean_env  # noqa: E402
from support.paths import PAYLOADS  # noqa: E402

from engine import Engine  # noqa: E402
from history import path_ticks, read_candles  # noqa: E402
from state import State, step  # noqa: E402

KLINES = os.path.join("marketdata", "btcusdt_um_15m_2023.csv.gz")
PAYLOAD = os.path.join(PAYLOADS, "usdm_20230404_trade_first25.json")
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")
BEGIN, END = "<!-- core:begin -->", "<!-- core:end -->"
INTERVAL_MS = 900_000
PERIOD, K = 20, 2.0
PANDAS_TICKS = 2000
BACKTEST_CMD = ["bollmin.py", "backtest", "--klines", KLINES, "--json"]

TARGET_TICK_US = 2.0
TARGET_SPEEDUP = 200.0
TARGET_BACKTEST_S = 1.0


def _ticks(candles) -> list[tuple[int, float]]:
    return [tick for c in candles for tick in path_ticks(c, INTERVAL_MS)]


def bench_engine(ticks: list[tuple[int, float]], repeat: int) -> float:
    """Best µs per tick of ``Engine.on_trade`` over ``ticks``."""

    def run() -> None:
        on_trade = Engine(PERIOD, K, 0, INTERVAL_MS).on_trade
        for t, p in ticks:
            on_trade(t, p)

    best = min(timeit.repeat(run, number=1, repeat=repeat))
    return best / len(ticks) * 1e6


def bench_pandas(candles, first: int, repeat: int, frame: bool = False) -> tuple[float, list[tuple[float, float]]]:
    """Best µs per tick of the pandas way, on PANDAS_TICKS ticks from candle ``first`` on.

    ``frame=False``: a Series of closes; ``frame=True``: a DataFrame with a ``close`` column.
    Returns the cost and the (UP, DN) of every tick (to check them against the engine's).
    """
    import pandas as pd

    n_candles = PANDAS_TICKS // 4
    # The last 49 closes each candle's ticks see (kept up to date once per candle by such a bot; built
    # here beforehand since that is not per-tick work).
    if frame:
        history = [pd.DataFrame({"close": [c.close for c in candles[j - 49:j]]})
                   for j in range(first, first + n_candles)]
    else:
        history = [pd.Series([c.close for c in candles[j - 49:j]]) for j in range(first, first + n_candles)]
    work = [(history[i], p) for i, c in enumerate(candles[first:first + n_candles])
            for _t, p in path_ticks(c, INTERVAL_MS)]
    bands: list[tuple[float, float]] = []

    def run() -> None:
        state = State.FLAT
        bands.clear()
        for closes, price in work:
            if frame:
                s = pd.concat([closes, pd.DataFrame({"close": [price]})], ignore_index=True)["close"]
            else:
                s = pd.concat([closes, pd.Series([price])], ignore_index=True)
            mid = s.rolling(PERIOD).mean().iloc[-1]
            sd = s.rolling(PERIOD).std(ddof=0).iloc[-1]
            up, dn = mid + K * sd, mid - K * sd
            state, _orders = step(state, price, up, dn)
            bands.append((up, dn))

    best = min(timeit.repeat(run, number=1, repeat=repeat))
    return best / len(work) * 1e6, list(bands)


def check_same_bands(candles, first: int, pandas_bands: list[tuple[float, float]]) -> None:
    """The pandas way and the engine compute the same bands (else the comparison is meaningless)."""
    e = Engine(PERIOD, K, 0, INTERVAL_MS, closes=[c.close for c in candles[first - 19:first]],
               last_closed_open_ms=candles[first - 1].open_time_ms)
    ticks = _ticks(candles[first:first + PANDAS_TICKS // 4])
    for (t, p), (up, dn) in zip(ticks, pandas_bands, strict=True):
        e.on_trade(t, p)
        if abs(e.last_bands.up - up) > 1e-6 * p or abs(e.last_bands.dn - dn) > 1e-6 * p:
            raise SystemExit(f"bands differ at tick {t}: engine {e.last_bands}, pandas {up} / {dn}")


def bench_json_loads() -> tuple[float, str]:
    with open(PAYLOAD, encoding="utf-8") as fh:
        message = json.dumps(json.load(fh)[0]["msg"])
    number = 200_000
    best = min(timeit.repeat(lambda: json.loads(message), number=number, repeat=5))
    return best / number * 1e6, message


def bench_backtest(runs: int) -> list[float]:
    env = clean_env()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *BACKTEST_CMD], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def machine() -> str:
    return common.machine(with_load=True)


def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def render(results: dict) -> str:
    r = results
    speedup = r["pandas_us"] / r["engine_us"]
    lines = [
        "## Core engine",
        "",
        f"Machine: {r['machine']}  ",
        f"Command: `{r['command']}` ({r['date']})",
        "",
        "| measure | result | target | met |",
        "|---|---:|---:|:---:|",
        f"| `Engine.on_trade` per tick (live BOLL + table step + candle clock; {r['ticks']:,} real ticks, "
        f"best of {r['repeat']}) | {r['engine_us']:.2f} µs | ≤ {TARGET_TICK_US:g} µs | "
        f"{_ok(r['engine_us'] <= TARGET_TICK_US)} |",
        f"| pandas per tick: append the price to a Series of the last closes (50 values), "
        f"`rolling(20).mean()` + `.std(ddof=0)`, same table step; {PANDAS_TICKS:,} real ticks | "
        f"{r['pandas_us']:,.0f} µs | — | |",
        f"| the same with a DataFrame (`close` column) instead of a Series | {r['frame_us']:,.0f} µs | — | |",
        f"| speed-up, pandas (Series, the faster of the two) / ours | {speedup:,.0f}× | ≥ {TARGET_SPEEDUP:g}× | "
        f"{_ok(speedup >= TARGET_SPEEDUP)} |",
        f"| `json.loads` of one real trade-stream message ({r['msg_bytes']} bytes), the floor | "
        f"{r['json_us']:.2f} µs | — | |",
        f"| full-year backtest, whole process (`python {' '.join(BACKTEST_CMD)} > /dev/null`; 35,040 candles, "
        f"140,160 ticks), median of {len(r['backtest_s'])} | {r['backtest_median_s']:.2f} s | "
        f"< {TARGET_BACKTEST_S:g} s | {_ok(r['backtest_median_s'] < TARGET_BACKTEST_S)} |",
        "",
        f"Per tick, the engine costs {r['engine_us'] / r['json_us']:.1f}× the `json.loads` of the message that "
        f"carries the tick. Backtest runs: {', '.join(f'{t:.2f}' for t in r['backtest_s'])} s.",
    ]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    common.replace_section("core", section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate the core section of BENCHMARKS.md")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each timing (best is kept)")
    args = parser.parse_args()

    candles = read_candles(os.path.join(ROOT, KLINES))
    ticks = _ticks(candles)
    engine_us = bench_engine(ticks, args.repeat)
    pandas_us, pandas_bands = bench_pandas(candles, 10_000, max(args.repeat // 2, 2))
    check_same_bands(candles, 10_000, pandas_bands)
    frame_us, _ = bench_pandas(candles, 10_000, max(args.repeat // 2, 2), frame=True)
    json_us, message = bench_json_loads()
    backtest_s = bench_backtest(5)
    results = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "ticks": len(ticks),
        "repeat": args.repeat, "engine_us": engine_us, "pandas_us": pandas_us, "frame_us": frame_us, "json_us": json_us,
        "msg_bytes": len(message.encode()), "backtest_s": backtest_s,
        "command": " ".join(["python bench/bench_core.py", *sys.argv[1:]]),
        "backtest_median_s": statistics.median(backtest_s),
    }
    section = render(results)
    sys.stdout.write(section)
    if args.write:
        write_section(section)
        sys.stdout.write(f"\nwritten to {BENCH_MD}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
