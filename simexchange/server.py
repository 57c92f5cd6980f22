"""``SimExchange``: the simulated Binance USDⓈ-M futures exchange on one local port — REST
under ``/fapi``, market streams under ``/market``, the user-data stream under ``/private``,
the control API under ``/_sim`` — serving one account and one or more symbols.

The bot cannot tell it from Binance except by URL: same paths, signing, error JSON and
payload shapes (docs/exchange.md). Order and account times are the server's wall clock (plus a
controllable skew), as on Binance; market data carries data time, each symbol its own.

This module builds the pieces and the aiohttp app: the symbols (``Listing``: rules, replay,
order faults), the account, the stream hubs, and the request log. What each request does
lives in ``rest.py`` (REST), ``public.py`` (public history and its limits) and ``control.py``
(``/_sim``), mixed into ``SimExchange``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from history import Candle, read_candles

from .account import Account
from .catalogue import SymbolData, SymbolSpec, spec_for
from .control import ControlApi
from .faults import Faults, OrderFaults
from .market import Market, Replay
from .public import PublicHistory, PublicLimits
from .rest import RAW, RestApi
from .streams import StreamHub
from .user import UserHub
from .wire import DEMO_API_KEY, DEMO_API_SECRET, ApiError, log

CandleSource = str | os.PathLike[str] | Sequence[Candle]


@dataclass(eq=False)
class Listing:
    """One listed symbol: its rules, its replayed market and the pacing of it, its order faults."""

    spec: SymbolSpec
    market: Market
    replay: Replay
    faults: OrderFaults = field(default_factory=OrderFaults)

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    def price(self) -> Decimal:
        """The last replayed trade price: what a MARKET order fills at, and the mark price."""
        return self.spec.price_of(self.market.last_price)


def _candles(source: CandleSource) -> list[Candle]:
    """A kline file's candles, or a list of the candles given."""
    if isinstance(source, (str, os.PathLike)):
        return read_candles(os.fspath(source))
    return list(source)


class SimExchange(RestApi, ControlApi, PublicHistory):
    """The simulated exchange. ``port = await sim.start()`` binds it; ``await sim.stop()`` ends it.

    ``candles_or_path``: the first symbol's kline file (``history.read_candles``) or list of
    ``Candle``; ``symbol`` its name (its rules: ``catalogue.spec_for``). ``more_symbols``: the
    other symbols, ``{name: file | candles | catalogue.SymbolData}``, e.g.
    ``{"ETHUSDT": derived_symbol("ETHUSDT", candles)}``; every symbol has its own candles,
    rules, replay and streams, and they share the one account. ``history_candles``: candles
    already in the past (served by klines, never streamed), counted in each symbol's own data;
    default: enough for 60 ``target_interval`` candles. ``speed``: × real time; 0 = flat out.
    ``leverage`` is every symbol's at start.
    """

    def __init__(self, candles_or_path: CandleSource, *, symbol: str = "BTCUSDT",
                 api_key: str = DEMO_API_KEY, api_secret: str = DEMO_API_SECRET, speed: float = 1.0,
                 history_candles: int | None = None, paused: bool = False, target_interval: str = "15m",
                 balance_usdt: str = "10000", leverage: int = 20, hedge_mode: bool = False,
                 queue_size: int = 10_000, more_symbols: Mapping[str, CandleSource | SymbolData] | None = None) -> None:
        sources = {symbol.upper(): SymbolData(_candles(candles_or_path))}
        for name, source in (more_symbols or {}).items():
            if name.upper() in sources:
                raise ValueError(f"symbol {name.upper()} is listed twice")
            data = source if isinstance(source, SymbolData) else SymbolData(source)
            sources[name.upper()] = dataclasses.replace(data, candles=_candles(data.candles))
        if not 1 <= leverage <= 125:
            raise ValueError(f"leverage must be between 1 and 125, got {leverage}")
        try:
            balance = Decimal(str(balance_usdt))
        except InvalidOperation:
            raise ValueError(f"balance_usdt must be a number, got {balance_usdt!r}") from None
        markets = []
        for name, data in sources.items():
            spec = data.spec or spec_for(name)
            if spec.symbol != name:
                raise ValueError(f"the rules of {spec.symbol} were given for {name}")
            history = history_candles if data.history_candles is None else data.history_candles
            markets.append(Market(data.candles, spec, history, target_interval))
        self.symbol = markets[0].symbol  # the first symbol: the default of the control API
        self.api_key = api_key
        self._secret = api_secret  # never logged, never returned
        self.hub = StreamHub(markets, queue_size)
        self.listings: dict[str, Listing] = {m.symbol: Listing(m.spec, m, Replay(m, self.hub, speed, paused))
                                             for m in markets}
        self.account = Account(list(self.listings), balance, leverage, hedge_mode)
        self.users = UserHub(self.server_time_ms)
        self.faults = Faults()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Future] = []
        self.public_limits = PublicLimits()  # public market history: request weight and its faults
        self.app = self._make_app()

    def __repr__(self) -> str:
        return f"SimExchange(symbols={list(self.listings)!r}, port={self.port})"

    @property
    def market(self) -> Market:
        """The first symbol's market."""
        return self.listings[self.symbol].market

    @property
    def replay(self) -> Replay:
        """The first symbol's replay."""
        return self.listings[self.symbol].replay

    def server_time_ms(self) -> int:
        return int(time.time() * 1000) + self.faults.skew_ms

    def price(self, symbol: str | None = None) -> Decimal:
        """A symbol's last replayed trade price (default the first symbol's)."""
        return self.listings[symbol or self.symbol].price()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start replaying every symbol; returns the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        self._tasks = [asyncio.ensure_future(x.replay.run()) for x in self.listings.values()]
        self._tasks.append(asyncio.ensure_future(self.hub.expire_old()))
        for x in self.listings.values():
            m = x.market
            log.info("%s: %d candles, streaming from #%d (%d ms), speed %s%s", x.symbol, len(m.candles),
                     m.start_index, m.clock_ms, x.replay.speed, ", paused" if x.replay.paused else "")
        return self.port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.hub.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the app -------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.startswith("/_sim/") or request.headers.get("Upgrade", "").lower() == "websocket":
                return await handler(request)
            return await self._serve_rest(request, handler)

        app = web.Application(middlewares=[middleware])
        for method, path, fn, auth in self._rest_routes():
            app.router.add_route(method, path, self._rest_handler(fn, auth))
        for prefix in ("/market", "/public", ""):
            for tail in ("/ws", "/ws/{streams:.*}", "/stream"):
                app.router.add_get(prefix + tail, self.hub.handle)
        for path in ("/private/ws", "/private/ws/{key}", "/private/stream"):
            app.router.add_get(path, self.users.handle)
        app.router.add_route("*", "/_sim/{name}", self._control)
        app.on_response_prepare.append(self._weight_header)
        return app

    async def _serve_rest(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Log the request, turn every failure into Binance's error JSON, apply injected delays."""
        entry: dict[str, Any] = {"time_ms": int(time.time() * 1000), "method": request.method,
                                 "path": request.path, "params": {},
                                 "api_key": bool(request.headers.get("X-MBX-APIKEY")), "status": None}
        self.requests.append(entry)
        try:
            raw_query = request.rel_url.raw_query_string
            raw_body = (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
            params = dict(parse_qsl(raw_body, keep_blank_values=True)) if raw_body[:1] != "{" else {}
            params.update(parse_qsl(raw_query, keep_blank_values=True))  # Binance: the query string wins
            entry["params"] = {k: v for k, v in params.items() if k != "signature"}
            request[RAW] = (raw_query, raw_body, params)
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # no such route / method
            msg = f"Path {request.path}, Method {request.method} is invalid"
            response = ApiError(exc.status, -5000, msg).response()
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = ApiError(500, -1000, "An unknown error occured while processing the request.").response()
        entry["status"] = response.status
        if self.faults.delay_count > 0:
            self.faults.delay_count -= 1
            await asyncio.sleep(self.faults.delay_ms / 1000)
        return response
