"""``bollmin.py backtest``: history through the same engine and paper broker as the live bot.

Decisions about the summary's figures (also in the README):
* ``trades`` counts closed positions (round trips); ``orders`` counts order actions.
* ``net_pnl_usdt`` = realised PnL of closed positions − every fee paid (including the entry
  fee of a position still open at the end); that open position's mark-to-market is reported
  separately as ``unrealized_pnl_usdt``.
* ``win_rate`` = closed positions whose PnL after both fees is > 0, divided by ``trades``.
* ``max_drawdown_usdt`` = the largest fall of mark-to-market equity (net PnL + unrealised)
  from its running peak, evaluated at every tick; a positive number.
* An entry below the exchange minimums is refused (no order line), leaving the bot FLAT.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from broker import DEFAULT_RULES, Fill, Ledger, PaperBroker, record_transition
from config import Config
from engine import Engine, Transition
from history import Candle, HistoryError, check_contiguous, infer_interval_ms, interval_ms, interval_name, path_ticks
from state import State


@dataclass
class Plan:
    """A validated backtest input: the candles at INTERVAL and, per candle, the candles to play."""

    file_interval_ms: int
    interval_ms: int
    candles: list[Candle]                       # at INTERVAL (aggregated when the file is finer)
    groups: list[list[Candle]] = field(default_factory=list)  # the file's candles of each one


def plan(candles: list[Candle], interval: str, label: str = "klines") -> Plan:
    """Check the file's interval against INTERVAL and group fine candles into buckets."""
    target = interval_ms(interval)
    if len(candles) < 2:
        raise HistoryError(f"{label}: need at least 2 candles to tell the file's interval")
    step = infer_interval_ms(candles)
    name = interval_name(step) or f"{step} ms"
    if step > target or target % step:
        raise HistoryError(
            f"{label}: the file's interval ({name}) does not divide INTERVAL ({interval}); "
            f"use a file of {interval} or a finer interval that divides it"
        )
    for c in candles:
        if c.open_time_ms % step:
            raise HistoryError(f"{label}: open time {c.open_time_ms} is not aligned to the {name} interval")
    check_contiguous(candles, step, label)
    if step == target:
        return Plan(step, target, candles, [[c] for c in candles])
    groups: list[list[Candle]] = []
    bucket = None
    for c in candles:
        b = c.open_time_ms // target
        if b != bucket:
            groups.append([])
            bucket = b
        groups[-1].append(c)
    agg = []
    for g in groups:
        agg.append(Candle(g[0].open_time_ms // target * target, g[0].open, max(c.high for c in g),
                          min(c.low for c in g), g[-1].close, sum(c.volume for c in g)))
    return Plan(step, target, agg, groups)


@dataclass
class Result:
    summary: dict[str, Any]
    transitions: list[tuple[Transition, list[Fill]]]
    ledger: Ledger
    final_state: State
    events: list[tuple[int, str, str]]


def run(p: Plan, cfg: Config, on_fill: Callable[[int, Fill, State], None] | None = None,
        progress: Callable[[int, int], None] | None = None) -> Result:
    """Play every candle of the plan as ticks; returns the summary and what happened."""
    engine = Engine(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, p.interval_ms)
    broker = PaperBroker(cfg.TRADE_AMOUNT_USDT, cfg.PAPER_FEE_RATE, DEFAULT_RULES)
    ledger = broker.ledger
    happened: list[tuple[Transition, list[Fill]]] = []
    events: list[tuple[int, str, str]] = []
    peak = 0.0
    max_dd = 0.0
    orders = 0
    ticks = 0
    total = len(p.groups)
    every = max(total // 100, 1)
    fine_ms = p.file_interval_ms
    on_trade = engine.on_trade
    for i, (candle, group) in enumerate(zip(p.candles, p.groups, strict=False)):
        for fine in group:
            for t, price in path_ticks(fine, fine_ms):
                ticks += 1
                tr = on_trade(t, price)
                if tr is not None:
                    fills = _execute(engine, broker, tr, events)
                    orders += len(fills)
                    happened.append((tr, fills))
                    if on_fill is not None:
                        for f in fills:
                            on_fill(t, f, engine.state)
                if ledger.qty:
                    equity = ledger.realized_usdt - ledger.fees_usdt + (price - ledger.entry_price) * ledger.qty
                else:
                    equity = ledger.realized_usdt - ledger.fees_usdt
                if equity > peak:
                    peak = equity
                elif peak - equity > max_dd:
                    max_dd = peak - equity
        engine.on_candle_closed(candle.open_time_ms, candle.close)
        if progress is not None and (i % every == 0 or i == total - 1):
            progress(i + 1, total)
    last_price = p.candles[-1].close
    trades = ledger.closed_trades
    summary = {
        "trades": trades,
        "orders": orders,
        "net_pnl_usdt": round(ledger.net_pnl_usdt, 8),
        "gross_pnl_usdt": round(ledger.realized_usdt, 8),
        "fees_usdt": round(ledger.fees_usdt, 8),
        "win_rate": round(ledger.winning_trades / trades, 6) if trades else 0.0,
        "wins": ledger.winning_trades,
        "losses": trades - ledger.winning_trades,
        "max_drawdown_usdt": round(max_dd, 8),
        "open_position_qty": round(ledger.qty, 8),
        "unrealized_pnl_usdt": round(ledger.unrealized(last_price), 8),
        "final_state": engine.state.value,
        "transitions": len(happened),
        "candles": len(p.candles),
        "ticks": ticks,
        "interval": interval_name(p.interval_ms),
        "file_interval": interval_name(p.file_interval_ms),
        "first_open_time_ms": p.candles[0].open_time_ms,
        "last_open_time_ms": p.candles[-1].open_time_ms,
        "trade_amount_usdt": cfg.TRADE_AMOUNT_USDT,
        "fee_rate": cfg.PAPER_FEE_RATE,
    }
    return Result(summary, happened, ledger, engine.state, events)


def _execute(engine: Engine, broker: PaperBroker, tr: Transition, events: list[tuple[int, str, str]]) -> list[Fill]:
    """Paper-fill a transition's orders; a refused entry leaves the engine FLAT (as live does)."""
    fills, refused = broker.fill_orders(tr.orders, tr.price)
    if refused:
        engine.state = State.FLAT
        events.append((tr.time_ms, "ERROR", f"entry refused: {refused}"))
    return fills


def write_db(store, result: Result, p: Plan, cfg: Config, source: str) -> None:
    """Replace any earlier backtest in ``store`` with this one, in one transaction."""
    db_id = store.conn.execute("SELECT value FROM status WHERE key = 'db_id'").fetchone()[0]
    with store.transaction():
        store.clear_trading_data()
        store.add_candles(cfg.SYMBOL, cfg.INTERVAL, p.interval_ms, p.candles)
        replay = Ledger()
        for tr, fills in result.transitions:
            for f in fills:
                replay.apply(f.action, f.price, f.qty, f.fee_usdt)
            record_transition(store, tr, fills, db_id=db_id, symbol=cfg.SYMBOL, paper=True, ledger=replay,
                              cause="backtest")
        first, last = p.candles[0].open_time_ms, p.candles[-1].open_time_ms
        store.add_event("INFO", f"backtest of {source}: {len(p.candles)} {cfg.INTERVAL} candles", first)
        for t, level, message in result.events:
            store.add_event(level, message, t)
        s = result.summary
        store.add_event("INFO", f"backtest finished: {s['trades']} trades, net {s['net_pnl_usdt']:.2f} USDT", last)
        bands = None
        last_tr = result.transitions[-1][0] if result.transitions else None
        last_c = p.candles[-1]
        store.set_status({
            "db_role": "backtest", "mode": "BACKTEST", "symbol": cfg.SYMBOL, "interval": cfg.INTERVAL,
            "state": result.final_state.value, "price": last_c.close,
            "price_time_ms": last_c.open_time_ms + p.interval_ms - 1, "connection": "finished",
            "unrealized_pnl_usdt": s["unrealized_pnl_usdt"], "backtest_file": source,
            "summary_json": json.dumps(s),
            "last_transition_id": "" if last_tr is None else len(result.transitions),
        })
        closes = [c.close for c in p.candles[-cfg.BOLL_PERIOD:]]
        if len(closes) == cfg.BOLL_PERIOD:
            from indicators import LiveBoll

            bands = LiveBoll(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, closes[:-1]).bands(closes[-1])
        if bands is not None:
            store.set_status({"band_up": bands.up, "band_mid": bands.mid, "band_dn": bands.dn})


def json_line(time_ms: int, fill: Fill, state: State) -> str:
    return json.dumps({"time_ms": time_ms, "action": fill.action.value, "price": fill.price,
                       "reason": fill.reason.value, "state": state.value})


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
    w(f"  最大回撤 (max drawdown)  {s['max_drawdown_usdt']:.2f} USDT\n")
    w(f"  最终状态 (final state)   {s['final_state']}  持仓 (position) {s['open_position_qty']}  "
      f"浮动盈亏 (unrealised) {s['unrealized_pnl_usdt']:+.2f} USDT\n")
    if result.transitions:
        w("  最近的订单 (last orders):\n")
        shown = [(tr, f) for tr, fills in result.transitions for f in fills][-10:]
        for tr, f in shown:
            w(f"    {tr.time_ms}  {f.action.value:<11} {f.reason.value:<11} {f.price:>12.2f}  qty {f.qty}\n")


def progress_bar(stream: TextIO) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done * 100 // total:3d}%")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def main_backtest(cfg: Config, path: str, as_json: bool, db_path: str | None, out: TextIO = sys.stdout,
                  err: TextIO = sys.stderr) -> int:
    """The backtest subcommand. Raises HistoryError for bad input (before anything is written)."""
    from history import read_candles

    candles = read_candles(path)
    p = plan(candles, cfg.INTERVAL, label=path)
    store = None
    if db_path is not None:
        import store as store_mod

        store = store_mod.Store(db_path)
        role = store.conn.execute("SELECT value FROM status WHERE key = 'db_role'").fetchone()
        if role is not None and role[0] != "backtest":
            store.close()
            raise HistoryError(f"{db_path} holds the trading bot's data; give --db a separate file for backtests")
    show = progress_bar(err) if (not as_json and err.isatty() and len(p.groups) > 2000) else None
    lines: list[str] = []
    on_fill = (lambda t, f, s: lines.append(json_line(t, f, s))) if as_json else None
    result = run(p, cfg, on_fill=on_fill, progress=show)
    if store is not None:
        try:
            write_db(store, result, p, cfg, path)
        finally:
            store.close()
    refused = [message for _t, _level, message in result.events if message.startswith("entry refused: ")]
    if refused:  # an amount too small for the exchange minimums must not pass as "no signals"
        err.write(f"bollmin: warning: {len(refused)} of the strategy's entries were refused by the exchange "
                  f"minimums (first: {refused[0][len('entry refused: '):]})\n")
    if as_json:
        lines.append(json.dumps({"summary": result.summary}))
        out.write("\n".join(lines) + "\n")
    else:
        report(result, path, out)
        if db_path:
            out.write(f"  已写入 (recorded in) {db_path}\n")
    out.flush()
    return 0
