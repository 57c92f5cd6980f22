"""``python -m simexchange --klines FILE [--also ETHUSDT | --also SYMBOL=FILE] ...``: the simulated
exchange as a process of its own (the demo, the deployment test). Bad arguments or data: one
line on stderr and exit 2; SIGTERM or SIGINT: a clean stop and exit 0.

Run it from the repository root, or with the root on ``PYTHONPATH``, so that the package and
``history.py`` are found.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import sys
from typing import Any

from history import INTERVAL_MS, HistoryError, read_candles

from .catalogue import DERIVATIONS, SymbolData, derived_symbol
from .server import SimExchange
from .wire import DEMO_API_KEY, DEMO_API_SECRET, log


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints the usage too)
        self.exit(2, f"simexchange: {message}\n")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _also(spec: str, base: list, parser: _Parser) -> tuple[str, SymbolData]:
    """``--also SYMBOL`` (derived from the --klines data) or ``--also SYMBOL=FILE``."""
    name, sep, path = spec.partition("=")
    name = name.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{2,32}", name):
        parser.error(f"--also {spec}: give SYMBOL or SYMBOL=FILE (e.g. --also ETHUSDT)")
    if sep:
        if not path:
            parser.error(f"--also {spec}: the file is missing after '='")
        return name, SymbolData(read_candles(path))
    if name not in DERIVATIONS:
        parser.error(f"--also {name}: no data can be derived for it (only for {', '.join(DERIVATIONS)}); "
                     f"give {name}=FILE")
    return name, derived_symbol(name, base)


async def _serve(sim: SimExchange, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # only requests the stop; the code below does it
    try:
        port = await sim.start(args.host, args.port)
    except OSError as exc:
        print(f"simexchange: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.port_file:  # written first: whoever sees the banner can read the file
        try:
            tmp = f"{args.port_file}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(f"{port}\n")
            os.replace(tmp, args.port_file)
        except OSError as exc:
            print(f"simexchange: cannot write --port-file {args.port_file}: {exc.strerror or exc}", file=sys.stderr)
            await sim.stop()
            return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"simexchange listening on http://{host}:{port}", flush=True)
    await stop.wait()
    log.info("stopping")
    try:
        await asyncio.wait_for(sim.stop(), 1.5)
    except TimeoutError:
        log.warning("stop took too long; exiting anyway")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m simexchange",
                     description="A simulated Binance USDⓈ-M futures exchange on 127.0.0.1, replaying kline files "
                     "as market streams (REST /fapi, WebSocket /market and /private, control /_sim).")
    parser.add_argument("--klines", required=True, metavar="FILE", help="kline CSV(.gz) to replay")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed, × real time; 0 = as fast as possible")
    parser.add_argument("--history", type=int, default=None, metavar="N",
                        help="candles already in the past at start, in each symbol's data "
                             "(default: 60 candles of --interval)")
    parser.add_argument("--interval", default="15m", help="the bot's interval, only for the default --history")
    parser.add_argument("--paused", action="store_true", help="start paused (POST /_sim/resume to go)")
    parser.add_argument("--symbol", default="BTCUSDT", help="the name of the --klines data (default BTCUSDT)")
    parser.add_argument("--also", action="append", default=[], metavar="SYMBOL[=FILE]",
                        help="list another symbol on the same account (repeatable): SYMBOL=FILE replays FILE; "
                             f"a bare {' or '.join(DERIVATIONS)} is derived from the --klines data "
                             "(prices ÷ 30 on a 0.01 tick, from one day in; see simexchange/catalogue.py)")
    parser.add_argument("--api-key", default=DEMO_API_KEY)
    parser.add_argument("--api-secret", default=DEMO_API_SECRET)
    parser.add_argument("--port-file", metavar="PATH", help="write the bound port to this file")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="stderr logging (info: start, every order, end of data)")
    args = parser.parse_args(argv)
    if not _is_loopback(args.host) and not args.allow_remote:
        parser.error(f"--host {args.host} is not a loopback address; add --allow-remote to really expose it")
    if args.interval not in INTERVAL_MS:
        parser.error(f"--interval {args.interval} is not one of {', '.join(INTERVAL_MS)}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        candles = read_candles(args.klines)
        more = dict(_also(spec, candles, parser) for spec in args.also)
        if len(more) < len(args.also):
            parser.error("--also: a symbol is given twice")
        sim = SimExchange(candles, symbol=args.symbol, api_key=args.api_key, api_secret=args.api_secret,
                          speed=args.speed, history_candles=args.history, paused=args.paused,
                          target_interval=args.interval, more_symbols=more)
    except (HistoryError, ValueError) as exc:
        print(f"simexchange: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(sim, args))


if __name__ == "__main__":
    sys.exit(main())
