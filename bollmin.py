#!/usr/bin/env python3
"""bollmin — Bollinger-band breakout/revert bot for Binance USDⓈ-M perpetual futures.

    python bollmin.py [run]                      trade (paper by default)
    python bollmin.py backtest --klines FILE     replay history through the same engine
    python bollmin.py sweep --klines FILE ...    the strategy lab: many parameter sets, walk-forward
    python bollmin.py download --interval I ...  fetch closed candles (and funding) from the exchange
    python bollmin.py trades [--json]            orders and fills recorded in the DB
    python bollmin.py dashboard                  the web page
    python bollmin.py demo                       the whole system offline
    python bollmin.py check-config               the effective settings, secrets masked

Exit codes (for systemd and scripts): 0 done / clean stop, 1 crash (restartable),
2 bad configuration, input or data file — including a damaged or foreign database, a full
disk or read-only storage (never retried: it needs a person), 3 the exchange refused the
account setup (bad key or permissions, hedge-mode account) — needs a person, never retried,
130 a batch command (backtest, sweep, download, trades, check-config) interrupted by Ctrl-C
(``run``, ``dashboard`` and ``demo`` stop cleanly on Ctrl-C: 0).

Every error is one line on stderr, ``bollmin: <what> — <what to do>``, never a traceback
(set ``BOLLMIN_DEBUG=1`` to see the traceback of an unexpected error), and never shows a secret.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from collections.abc import Sequence

import store
from config import ENV_SECRETS, SETTINGS, ConfigError, env, load_config, mask_secrets, masked, secret_texts
from history import HistoryError
from store import StoreError
from supervisor import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

# Each command imports its own module when it runs (backtest, sweep, download, runner, dashboard,
# demo, exchange): `trades` and `check-config` start without numpy, python-binance or Flask.

MAX_LIMIT = 10**9  # trades --limit
MAX_SPEED = 100_000.0  # demo --speed


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"bollmin: {message} (see: python bollmin.py {self.prog.split()[-1]} --help)\n")


_SECRETS: list[str] = []  # secrets of the loaded config, masked in every error line


def one_line(message: str) -> str:
    """``message`` as one printable line: line breaks and control characters escaped, secrets masked."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return mask_secrets(text, _SECRETS + [env(v) for v in ENV_SECRETS.values()])


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    sys.stderr.write(f"bollmin: {one_line(message)}\n")
    sys.stderr.flush()
    return code


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit {text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"--limit must be between 1 and {MAX_LIMIT:,}")
    return value


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--speed {text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SPEED):
        raise argparse.ArgumentTypeError(f"--speed must be greater than 0 and at most {MAX_SPEED:g} (times real time)")
    return value


def build_parser() -> argparse.ArgumentParser:
    config_help = "settings file (default: $BOLLMIN_CONFIG or built-in defaults)"
    p = _Parser(prog="bollmin", description="Bollinger-band bot for Binance USD-M futures.")
    p.add_argument("--config", metavar="PATH", help=config_help)
    # Given after the subcommand it wins; not given there, it leaves the one before the subcommand
    # alone (``bollmin.py --config F run`` and ``bollmin.py run --config F`` are the same).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("run", parents=[common], help="trade (paper unless PAPER_TRADING = False)",
                   description="Run the trading bot until SIGTERM/SIGINT.")
    b = sub.add_parser("backtest", parents=[common], help="replay a kline file through the strategy",
                       description="Feed a kline CSV through the same indicator, state machine and paper broker.")
    b.add_argument("--klines", metavar="FILE", required=True,
                   help="CSV with header open_time_ms,open,high,low,close or a raw 12-column "
                        "Binance kline CSV (.gz ok)")
    b.add_argument("--json", action="store_true", help="one JSON object per order action, then a summary line")
    b.add_argument("--db", metavar="PATH",
                   help="also record the run in this SQLite file (replacing an earlier backtest)")
    b.add_argument("--interval", metavar="I", help="override INTERVAL for this run (e.g. 15m)")
    b.add_argument("--funding", metavar="FILE",
                   help="charge the funding rates of FILE (download --funding, or Binance's archive); "
                        "overrides FUNDING_FILE")
    dl = sub.add_parser(
        "download", parents=[common], help="fetch closed candles (and funding rates) into a backtest file",
        description="Fetch closed candles from REST_BASE_URL into FILE (.csv or .csv.gz) in the backtest format. "
                    "Running it again appends only what is missing.")
    dl.add_argument("--symbol", metavar="S", default=None, help="contract (default: SYMBOL)")
    dl.add_argument("--interval", metavar="I", default=None, help="candle interval (default: INTERVAL)")
    dl.add_argument("--start", metavar="YYYY-MM-DD", required=True, help="first day (UTC)")
    dl.add_argument("--end", metavar="YYYY-MM-DD", help="last day, inclusive (default: up to the last closed candle)")
    dl.add_argument("--out", metavar="FILE", required=True, help="output file, .csv or .csv.gz")
    dl.add_argument("--funding", action="store_true",
                    help="also fetch the funding-rate history into FILE with .funding before .csv")
    sw = sub.add_parser(
        "sweep", parents=[common], help="the strategy lab: many parameter sets over a kline file",
        description="Run every combination of the given values through an evaluator proven to give exactly "
                    "backtest's actions, in parallel. LIST: comma-separated values or start:stop:step (inclusive); "
                    "an axis not given keeps the settings' value.")
    sw.add_argument("--klines", metavar="FILE", required=True, help="kline file, as for backtest (.csv, .gz, .zip)")
    sw.add_argument("--interval", metavar="LIST", help="intervals, e.g. 15m,1h,4h")
    sw.add_argument("--period", metavar="LIST", help="BOLL_PERIOD values, e.g. 10:60:5")
    sw.add_argument("--k", metavar="LIST", help="BOLL_K values, e.g. 1.5:3:0.25")
    sw.add_argument("--evaluate-on", metavar="LIST", dest="evaluate_on", help="EVALUATE_ON values: tick,close")
    sw.add_argument("--buffer", metavar="LIST", help="BREAKOUT_BUFFER_PCT values, e.g. 0,0.05,0.1")
    sw.add_argument("--cooldown", metavar="LIST", help="STOP_COOLDOWN_CANDLES values, e.g. 0,2,4")
    sw.add_argument("--slippage", metavar="LIST", help="PAPER_SLIPPAGE_PCT values, e.g. 0,0.02")
    sw.add_argument("--funding", metavar="FILE", help="charge these funding rates (overrides FUNDING_FILE)")
    sw.add_argument("--train-fraction", metavar="F", type=float, dest="train_fraction",
                    help="walk-forward: rank on the first F of the file, report the untouched rest (e.g. 0.7)")
    sw.add_argument("--rank-by", metavar="FIELD", dest="rank_by", default="net_pnl_usdt",
                    help="net_pnl_usdt (default), sharpe_daily, profit_factor, win_rate or max_drawdown_usdt")
    sw.add_argument("--jobs", metavar="N", type=int, help="worker processes (default: all cores)")
    sw.add_argument("--json", action="store_true", help="one JSON object per parameter set on stdout, best first")
    sw.add_argument("--db", metavar="PATH", help="store the results in this SQLite file (for the dashboard)")
    sw.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
    sw.add_argument("--top", metavar="N", type=int, default=10, help="sets with equity curves (default 10)")
    t = sub.add_parser("trades", parents=[common], help="orders and fills recorded in the DB (newest last)",
                       description="Show the recorded orders and fills, newest last.")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.add_argument("--limit", type=_limit, metavar="N", help="only the newest N")
    t.add_argument("--db", metavar="PATH", help="read this SQLite file instead of DB_PATH")
    t.add_argument("--all", action="store_true", help="include orders that did not fill (rejected, unknown, ...)")
    sub.add_parser("dashboard", parents=[common], help="serve the web dashboard",
                   description="Serve the dashboard on DASHBOARD_HOST:DASHBOARD_PORT.")
    d = sub.add_parser("demo", parents=[common], help="run everything offline against the simulated exchange",
                       description="Simulated exchange + bot + dashboard on bundled real BTCUSDT data.")
    d.add_argument("--speed", type=_speed, default=None, metavar="N",
                   help=f"replay at N x real time (0 < N <= {MAX_SPEED:g})")
    c = sub.add_parser("check-config", parents=[common], help="validate and print the effective settings",
                       description="Validate the settings and print them with secrets masked.")
    c.add_argument("--json", action="store_true", help="as one JSON object")
    c.add_argument("--exchange", action="store_true",
                   help="also ask the exchange (REST_BASE_URL) whether SYMBOL is listed: exit 2 when it is not, "
                        "a warning when the exchange cannot be reached")
    return p


def _load(path: str | None):
    cfg = load_config(path)
    _SECRETS[:] = secret_texts(cfg)
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    values = masked(cfg)
    if args.exchange:
        warning = _check_symbol_listed(cfg)
        if warning:
            sys.stderr.write(f"bollmin: warning: {one_line(warning)}\n")
    if args.json:
        print(json.dumps(values | {"mode": cfg.mode, "source": cfg.source}))
        return EXIT_OK
    print(f"# bollmin settings from {cfg.source} — mode {cfg.mode} — OK")
    for s in SETTINGS:
        mark = "" if values[s.name] == s.default else "   # changed"
        print(f"{s.name} = {values[s.name]!r}{mark}")
    return EXIT_OK


def _check_symbol_listed(cfg) -> str | None:
    """None when the exchange lists SYMBOL; a warning when it cannot be asked; StoreError-like
    one-line failure (ConfigError) when it does not list it."""
    import asyncio

    from exchange import AccountSetupError, Exchange, classify

    async def ask() -> str | None:
        ex = Exchange(cfg)
        try:
            await ex.load_rules()
            return None
        except AccountSetupError:
            raise ConfigError(f"SYMBOL = {cfg.SYMBOL!r}: the exchange at {cfg.REST_BASE_URL} does not list it; "
                              f"check the contract name (e.g. 'ETHUSDT')") from None
        except Exception as exc:
            return f"could not reach the exchange at {cfg.REST_BASE_URL} ({classify(exc)}): SYMBOL {cfg.SYMBOL} " \
                   f"not confirmed"
        finally:
            await ex.close()

    return asyncio.run(ask())


def cmd_backtest(args: argparse.Namespace) -> int:
    from backtest import main_backtest

    cfg = _load(args.config)
    if args.interval:
        cfg = cfg.replace(INTERVAL=args.interval)
    return main_backtest(cfg, args.klines, args.json, args.db, funding_path=args.funding)


def cmd_download(args: argparse.Namespace) -> int:
    from download import main_download

    cfg = _load(args.config)
    return main_download(cfg, args.symbol or cfg.SYMBOL, args.interval or cfg.INTERVAL, args.start, args.end,
                         args.out, args.funding)


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweep import AXES, main_sweep

    cfg = _load(args.config)
    given = {name: getattr(args, name) for name in AXES}
    return main_sweep(cfg, args.klines, given, jobs=args.jobs, as_json=args.json, db_path=args.db,
                      report_path=args.report, train_fraction=args.train_fraction, rank_by=args.rank_by,
                      funding_path=args.funding, top=args.top)


def cmd_trades(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    path = args.db or cfg.DB_PATH
    rows = store.read_trades_file(path, limit=args.limit, include_unfilled=args.all)
    out = sys.stdout
    if args.json:
        for r in rows:
            out.write(json.dumps(store.trade_json(r)) + "\n")
        return EXIT_OK
    if not rows:
        out.write(f"没有成交记录 (no trades) in {path}\n")
        return EXIT_OK
    out.write(f"{'time (UTC)':<20} {'action':<11} {'reason':<11} {'price':>12} {'qty':>9} {'fee':>8} "
              f"{'pnl':>9} {'mode':<5} {'status':<8} client_order_id\n")
    def num(value, fmt: str) -> str:  # a row edited by hand may hold anything: show it, never crash
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            return str(value)

    def when(time_ms) -> str:
        try:
            return dt.datetime.fromtimestamp(time_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        except (TypeError, ValueError, OverflowError, OSError):
            return str(time_ms)

    for r in rows:
        j = store.trade_json(r)
        pnl = "" if j["realized_pnl_usdt"] is None else num(j["realized_pnl_usdt"], "+.2f")
        out.write(one_line(
            f"{when(j['time_ms']):<20} {j['action']!s:<11} {j['reason']!s:<11} {num(j['price'], '.2f'):>12} "
            f"{j['qty']!s:>9} {num(j['fee_usdt'], '.4f'):>8} {pnl:>9} {'paper' if j['paper'] else 'live':<5} "
            f"{j['status']!s:<8} {j['client_order_id']}") + "\n")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    import dashboard

    return dashboard.serve(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    import runner

    cfg = _load(args.config)
    return runner.main(cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    import demo

    return demo.main(args.config, args.speed)


COMMANDS = {
    "run": cmd_run,
    "backtest": cmd_backtest,
    "sweep": cmd_sweep,
    "download": cmd_download,
    "trades": cmd_trades,
    "dashboard": cmd_dashboard,
    "demo": cmd_demo,
    "check-config": cmd_check_config,
}


# Ctrl-C is how these stop when run by hand: a clean stop, exit 0. Any other command cut short
# exits 130, so that a script (``download && backtest``) can tell it did not finish.
STOPPED_BY_CTRL_C = ("run", "dashboard", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    if args.command is None:
        args = build_parser().parse_args(["run", *(argv if argv is not None else sys.argv[1:])])
    try:
        try:
            return COMMANDS[command](args)
        except (ConfigError, HistoryError, StoreError) as err:
            return _fail(str(err))
    except KeyboardInterrupt:
        if command in STOPPED_BY_CTRL_C:
            return EXIT_OK
        return _fail(f"{command} interrupted; its output is incomplete", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (e.g. "| head"): stop quietly, and keep Python's final flush quiet too.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except MemoryError:
        return _fail(f"{command}: out of memory; the input is too large for this machine")
    except OSError as exc:
        # The system refused something (a port in use, a missing permission): a person must act.
        what = f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")
        return _fail(f"{command}: {what}")
    except Exception as exc:
        # Last resort: a bug. One line (the traceback only on request), exit 1.
        if env("BOLLMIN_DEBUG"):
            raise
        text = _text(exc)
        return _fail(f"{command}: unexpected {type(exc).__name__}{': ' + text if text else ''} "
                     f"(a bug: please report it; BOLLMIN_DEBUG=1 shows the details)", EXIT_CRASH)


def _text(exc: BaseException) -> str:
    try:
        return " ".join(str(exc).split())[:300]
    except Exception:  # an exception whose __str__ fails
        return ""


if __name__ == "__main__":
    sys.exit(main())
