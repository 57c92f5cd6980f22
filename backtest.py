"""``bollmin.py backtest``: history through the same engine and paper broker as the live bot.

The file is read by ``tape.py`` (every candle of the file played as its 4 ticks, aggregated to
INTERVAL when the file is finer), each tick goes through ``Engine.on_trade`` (the engine the
settings ask for: ``engine_from_config``) and every transition's orders through the paper broker
(``paper_broker_from_config``), exactly as in ``run``. Funding payments from FUNDING_FILE (or
``--funding``) are charged on the open position before the first tick at or after their time.
The figures are computed by ``metrics.py`` (its docstring defines each), the same code the
sweep uses.

Decisions about the summary's figures (also in the README):
* ``trades`` counts closed positions (round trips); ``orders`` counts order actions.
* ``net_pnl_usdt`` = realised PnL of closed positions − every fee paid (including the entry
  fee of a position still open at the end) − funding paid; that open position's
  mark-to-market is reported separately as ``unrealized_pnl_usdt``.
* An entry below the exchange minimums is refused (no order line), leaving the bot FLAT.
"""

from __future__ import annotations

import gc
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

import progress as progress_mod
import store as store_mod
from broker import Fill, Ledger, PaperBroker, paper_broker_from_config, record_transition
from config import Config
from engine import Engine, Transition, engine_from_config
from history import HistoryError
from indicators import LiveBoll
from metrics import Marks, checkpoint, settings_fields, summarize
from state import Action, Reason, State
from tape import NO_FUNDING, FundingEvents, Series, load_tape, read_funding


@dataclass
class Result:
    summary: dict[str, Any]
    transitions: list[tuple[Transition, list[Fill]]]
    ledger: Ledger
    final_state: State
    events: list[tuple[int, str, str]]
    marks: Marks
    actions: list[tuple[int, Fill, State]]  # (time_ms, fill, state after), in order
    # Changes of the state outside the table, after the transition at that index of
    # ``transitions`` (an entry refused for the exchange minimums: FLAT), recorded like run does.
    overrides: dict[int, Transition] = field(default_factory=dict)


def run(series: Series, cfg: Config, funding: FundingEvents = NO_FUNDING, progress: Any = None) -> Result:
    """Play every tick of ``series`` through the engine and the paper broker; returns what happened.

    ``progress``: an object with ``update(n)`` (a ``progress.bar``), told about ticks done.
    """
    engine = engine_from_config(cfg, series.interval_ms)
    broker = paper_broker_from_config(cfg)
    ledger = broker.ledger
    happened: list[tuple[Transition, list[Fill]]] = []
    overrides: dict[int, Transition] = {}
    actions: list[tuple[int, Fill, State]] = []
    events: list[tuple[int, str, str]] = []
    marks = Marks()
    times, prices = series.times, series.prices  # numpy; turned into Python numbers a stretch at a time
    n_ticks = len(times)
    # The ticks in stretches that end where a funding payment is due (and every ~1 % for the
    # progress bar). Candles roll when the first trade of the next one arrives, as in `run`; the
    # exchange's kline close would only confirm the same close here (the file's close is its
    # last tick), so it is not replayed.
    chunk = max(n_ticks // 100, 1)
    bounds = sorted(set(range(0, n_ticks, chunk)).union(funding.tick))
    bounds.append(n_ticks)
    on_trade = engine.on_trade
    # The loop makes many short-lived tuples and no reference cycles: the cyclic GC would only rescan
    # the growing lists of actions again and again (about a tenth of the loop's time).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        _play(bounds, times, prices, funding, ledger, marks, on_trade, engine, broker, happened, actions, events,
              overrides, progress)
    finally:
        if gc_was_on:
            gc.enable()
    orders = sum(len(fills) for _tr, fills in happened)
    summary = summarize(series, marks, checkpoint(ledger, engine.state, len(happened), orders))
    summary.update(settings_fields(cfg))
    return Result(summary, happened, ledger, engine.state, events, marks, actions, overrides)


def _play(bounds: list[int], times: np.ndarray, prices: np.ndarray, funding: FundingEvents, ledger: Ledger,
          marks: Marks, on_trade: Any, engine: Engine, broker: PaperBroker, happened: list, actions: list,
          events: list, overrides: dict, progress: Any) -> None:
    """The tick loop of ``run``."""
    fund_ticks, fund_at = funding.tick, 0
    m_tick, m_net, m_qty, m_entry = marks.tick, marks.net, marks.qty, marks.entry  # Marks.add, inlined
    for a, b in zip(bounds, bounds[1:], strict=False):
        while fund_at < len(fund_ticks) and fund_ticks[fund_at] == a:  # before the first tick at/after its time
            if ledger.qty:
                ledger.apply_funding(funding.rate[fund_at], funding.mark_price[fund_at])
                marks.add(a, ledger)
            fund_at += 1
        stretch_times = times[a:b].tolist()
        for i, tr in enumerate(map(on_trade, stretch_times, prices[a:b].tolist()), a):  # Engine.on_trade(t, p)
            if tr is not None:
                t = stretch_times[i - a]
                fills, override = _execute(engine, broker, tr, events)
                happened.append((tr, fills))
                if override is not None:
                    overrides[len(happened) - 1] = override
                if fills:
                    m_tick.append(i)
                    m_net.append(ledger.net_pnl_usdt)
                    m_qty.append(ledger.qty)
                    m_entry.append(ledger.entry_price)
                    state = engine.state
                    for f in fills:
                        actions.append((t, f, state))
        if progress is not None:
            progress.update(b - a)


def _execute(engine: Engine, broker: PaperBroker, tr: Transition,
             events: list[tuple[int, str, str]]) -> tuple[list[Fill], Transition | None]:
    """Paper-fill a transition's orders; a refused entry leaves the engine FLAT (as run does),
    through ``Engine.override``: returns the fills and that override, if any."""
    fills, refused = broker.fill_orders(tr.orders, tr.price)
    override = None
    if refused:
        override = engine.override(State.FLAT, "refused", tr.time_ms)
        events.append((tr.time_ms, "ERROR", f"entry refused: {refused}"))
    return fills, override


def write_db(store, result: Result, series: Series, cfg: Config, source: str) -> None:
    """Replace any earlier backtest in ``store`` with this one, in one transaction (sweep results stay)."""
    db_id = store.conn.execute("SELECT value FROM status WHERE key = 'db_id'").fetchone()[0]
    candles = series.candles()
    with store.transaction():
        store.clear_trading_data()
        store.add_candles(cfg.SYMBOL, cfg.INTERVAL, series.interval_ms, candles)
        replay = Ledger()
        for i, (tr, fills) in enumerate(result.transitions):
            for f in fills:
                replay.apply(f.action, f.price, f.qty, f.fee_usdt)
            record_transition(store, tr, fills, db_id=db_id, symbol=cfg.SYMBOL, paper=True, ledger=replay,
                              cause="backtest")
            override = result.overrides.get(i)
            if override is not None:
                record_transition(store, override, [], db_id=db_id, symbol=cfg.SYMBOL, paper=True, ledger=replay)
        first, last = candles[0].open_time_ms, candles[-1].open_time_ms
        store.add_event("INFO", f"backtest of {source}: {len(candles)} {cfg.INTERVAL} candles", first)
        for t, level, message in result.events:
            store.add_event(level, message, t)
        s = result.summary
        store.add_event("INFO", f"backtest finished: {s['trades']} trades, net {s['net_pnl_usdt']:.2f} USDT", last)
        bands = None
        last_tr = result.transitions[-1][0] if result.transitions else None
        last_c = candles[-1]
        store.set_status({
            "db_role": "backtest", "mode": "BACKTEST", "symbol": cfg.SYMBOL, "interval": cfg.INTERVAL,
            "state": result.final_state.value, "price": last_c.close,
            "price_time_ms": last_c.open_time_ms + series.interval_ms - 1, "connection": "finished",
            "unrealized_pnl_usdt": s["unrealized_pnl_usdt"], "backtest_file": source,
            "summary_json": json.dumps(s),
            "last_transition_id": "" if last_tr is None else len(result.transitions),
        })
        closes = [c.close for c in candles[-cfg.BOLL_PERIOD:]]
        if len(closes) == cfg.BOLL_PERIOD:
            bands = LiveBoll(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, closes[:-1]).bands(closes[-1])
        if bands is not None:
            store.set_status({"band_up": bands.up, "band_mid": bands.mid, "band_dn": bands.dn})


_TEXT = {member: member.value for enum in (Action, Reason, State) for member in enum}


def json_line(time_ms: int, fill: Fill, state: State) -> str:
    """One ``--json`` order line; the same text ``json.dumps`` makes of that dict, built faster."""
    text = _TEXT
    return (f'{{"time_ms": {time_ms}, "action": "{text[fill.action]}", "price": {float(fill.price)!r}, '
            f'"reason": "{text[fill.reason]}", "state": "{text[state]}"}}')


def report(result: Result, source: str, out: TextIO) -> None:
    """A readable report (Chinese first, English in brackets)."""
    s = result.summary
    w = out.write
    w(f"回测结果 (backtest) — {source}\n")
    w(f"  K线 (candles)            {s['candles']} × {s['interval']}  (文件周期 file interval {s['file_interval']})\n")
    w(f"  交易次数 (trades)        {s['trades']}   订单 (orders) {s['orders']}\n")
    w(f"  胜率 (win rate)          {s['win_rate'] * 100:.1f}%  ({s['wins']} 盈 / {s['losses']} 亏)\n")
    w(f"  净盈亏 (net PnL)         {s['net_pnl_usdt']:+.2f} USDT\n")
    w(f"  毛盈亏 (gross PnL)       {s['gross_pnl_usdt']:+.2f} USDT\n")
    w(f"  手续费 (fees)            {s['fees_usdt']:.2f} USDT\n")
    if s["funding_usdt"]:
        w(f"  资金费 (funding paid)    {s['funding_usdt']:+.2f} USDT\n")
    w(f"  最大回撤 (max drawdown)  {s['max_drawdown_usdt']:.2f} USDT\n")
    pf = "—" if s["profit_factor"] is None else f"{s['profit_factor']:.2f}"
    sharpe = "—" if s["sharpe_daily"] is None else f"{s['sharpe_daily']:.2f}"
    w(f"  盈亏比 (profit factor)   {pf}   夏普 (Sharpe, daily) {sharpe}   持仓时间 (exposure) "
      f"{s['exposure'] * 100:.1f}%\n")
    w(f"  最终状态 (final state)   {s['final_state']}  持仓 (position) {s['open_position_qty']}  "
      f"浮动盈亏 (unrealised) {s['unrealized_pnl_usdt']:+.2f} USDT\n")
    if result.transitions:
        w("  最近的订单 (last orders):\n")
        shown = [(tr, f) for tr, fills in result.transitions for f in fills][-10:]
        for tr, f in shown:
            w(f"    {tr.time_ms}  {f.action.value:<11} {f.reason.value:<11} {f.price:>12.2f}  qty {f.qty}\n")


def main_backtest(cfg: Config, path: str, as_json: bool, db_path: str | None, out: TextIO = sys.stdout,
                  err: TextIO = sys.stderr, funding_path: str | None = None) -> int:
    """The backtest subcommand. Raises HistoryError for bad input (before anything is written).

    ``funding_path`` (``--funding``) overrides FUNDING_FILE.
    """
    tape = load_tape(path)
    series = tape.at(cfg.INTERVAL)
    gaps = tape.gap_warning()
    if gaps:
        err.write(f"bollmin: warning: {gaps}\n")
    funding_path = cfg.FUNDING_FILE if funding_path is None else funding_path
    if funding_path:
        cfg = cfg.replace(FUNDING_FILE=funding_path)
    funding = read_funding(funding_path).on(series.tape) if funding_path else NO_FUNDING
    store = None
    if db_path is not None:
        store = store_mod.Store(db_path)
        role = store.conn.execute("SELECT value FROM status WHERE key = 'db_role'").fetchone()
        if role is not None and role[0] not in ("backtest", "sweep"):
            store.close()
            raise HistoryError(f"{db_path} holds the trading bot's data; give --db a separate file for backtests")
    bar = None
    if len(series) > 2000:
        bar = progress_mod.bar(series.ticks, "backtest", "tick", stream=err, unit_scale=True)
    try:
        result = run(series, cfg, funding, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if store is not None:
        try:
            write_db(store, result, series, cfg, path)
        finally:
            store.close()
    refused = [message for _t, _level, message in result.events if message.startswith("entry refused: ")]
    if refused:  # an amount too small for the exchange minimums must not pass as "no signals"
        err.write(f"bollmin: warning: {len(refused)} of the strategy's entries were refused by the exchange "
                  f"minimums (first: {refused[0][len('entry refused: '):]})\n")
    if as_json:
        lines = [json_line(t, f, state) for t, f, state in result.actions]
        lines.append(json.dumps({"summary": result.summary}))
        out.write("\n".join(lines) + "\n")
    else:
        report(result, path, out)
        if db_path:
            out.write(f"  已写入 (recorded in) {db_path}\n")
    out.flush()
    return 0
