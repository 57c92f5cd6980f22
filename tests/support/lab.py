"""Helpers shared by the strategy lab's tests (test_evaluator, test_sweep, test_variations, test_tape)."""

from __future__ import annotations

import numpy as np

import backtest
import config
import evaluator
from tape import NO_FUNDING, Candles, FundingEvents, Series, read_funding, tape_from_candles

#: Every variation on its own and some together (the defaults are {}).
VARIATIONS: tuple[dict, ...] = (
    {},
    {"EVALUATE_ON": "close"},
    {"BREAKOUT_BUFFER_PCT": 0.05},
    {"STOP_COOLDOWN_CANDLES": 2},
    {"PAPER_SLIPPAGE_PCT": 0.02},
    {"EVALUATE_ON": "close", "BREAKOUT_BUFFER_PCT": 0.1, "STOP_COOLDOWN_CANDLES": 1, "PAPER_SLIPPAGE_PCT": 0.01},
    {"BREAKOUT_BUFFER_PCT": 0.02, "STOP_COOLDOWN_CANDLES": 4},
)


def settings(**changes) -> config.Config:
    """The defaults with ``changes`` (HISTORY_KLINES raised for long windows, as the sweep does)."""
    base = config.load_config(None, env={})
    if "BOLL_PERIOD" in changes:
        changes.setdefault("HISTORY_KLINES", max(base.HISTORY_KLINES, changes["BOLL_PERIOD"] - 1))
    return base.replace(**changes)


def action_lines(actions) -> list[str]:
    return [backtest.json_line(t, f, s) for t, f, s in actions]


def engine_and_evaluator(series: Series, cfg: config.Config, funding: FundingEvents = NO_FUNDING):
    """(engine's actions, engine's summary, evaluator's actions, evaluator's summary) for one set."""
    by_engine = backtest.run(series, cfg, funding)
    by_eval = evaluator.evaluate(series, cfg, funding, record_actions=True)
    return action_lines(by_engine.actions), by_engine.summary, action_lines(by_eval.actions), by_eval.summary


def assert_same(series: Series, cfg: config.Config, funding: FundingEvents = NO_FUNDING) -> dict:
    """The evaluator gives the engine's actions (every line) and summary (every figure); returns the summary."""
    e_lines, e_summary, v_lines, v_summary = engine_and_evaluator(series, cfg, funding)
    if e_lines != v_lines:
        first = next((i for i, (a, b) in enumerate(zip(e_lines, v_lines, strict=False)) if a != b),
                     min(len(e_lines), len(v_lines)))
        raise AssertionError(f"action {first} differs ({len(e_lines)} engine vs {len(v_lines)} evaluator):\n"
                             f"engine    {e_lines[first] if first < len(e_lines) else '-'}\n"
                             f"evaluator {v_lines[first] if first < len(v_lines) else '-'}")
    assert e_summary == v_summary, {k: (e_summary[k], v_summary.get(k)) for k in e_summary
                                    if e_summary[k] != v_summary.get(k)}
    return e_summary


def write_funding(path: str, series_times: np.ndarray, every_ms: int = 8 * 3_600_000, seed: int = 7,
                  with_mark: bool = True) -> str:
    """A funding file in ``download --funding``'s format covering the ticks, with varied rates of both signs."""
    rng = np.random.default_rng(seed)
    first = int(series_times[0]) // every_ms * every_ms
    times = np.arange(first, int(series_times[-1]) + every_ms, every_ms)
    rates = np.round(rng.normal(0.0001, 0.0003, len(times)), 8)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("funding_time_ms,funding_rate,mark_price\n")
        for t, r in zip(times.tolist(), rates.tolist(), strict=True):
            mark = f"{20000 + (t // every_ms) % 997 * 10:.8f}" if with_mark and (t // every_ms) % 3 else ""
            fh.write(f"{t},{r:.8f},{mark}\n")
    return path


def funding_on(path: str, series: Series) -> FundingEvents:
    return read_funding(path).on(series.tape)


def candles_from_closes(closes: list[float], step_ms: int = 60_000, t0: int = 1_700_000_000_000 // 60_000 * 60_000,
                        wiggle: list[tuple[float, float]] | None = None) -> Candles:
    """Candles opening at each previous close and closing at ``closes[i]``; ``wiggle`` adds (above, below)."""
    n = len(closes)
    opens = [closes[0]] + closes[:-1]
    highs, lows = [], []
    for i in range(n):
        up, down = wiggle[i] if wiggle else (0.0, 0.0)
        highs.append(max(opens[i], closes[i]) + up)
        lows.append(min(opens[i], closes[i]) - down)
    t = np.arange(n, dtype=np.int64) * step_ms + t0
    return Candles(t, np.array(opens), np.array(highs), np.array(lows), np.array(closes), np.ones(n))


def series_of(candles: Candles, interval_ms: int | None = None) -> Series:
    tape = tape_from_candles(candles, "generated")
    return tape.at_ms(interval_ms or tape.file_interval_ms)
