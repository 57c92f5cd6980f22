"""A simulated Binance USDⓈ-M futures exchange on one local port: REST under ``/fapi`` and
market streams under ``/market``, replaying a kline file (see ``simmarket``).

The bot cannot tell it from Binance except by URL: same paths, signing, error JSON and
payload shapes (docs/exchange.md). Only MARKET orders exist; they fill at once at the last
replayed trade price with a 0.05 % taker fee. Order and account times are the server's wall
clock (plus a controllable skew), as on Binance; market data carries data time.

Deliberate simplifications: one symbol; one-way mode by default (hedge mode exists so a bot
can be tested against it); no liquidation or funding; the mark price is the last trade.
``GET /fapi/v3/positionRisk`` lists only non-zero positions, as Binance documents (v2 always
lists the symbol).

Tests and demos steer it through ``/_sim/...`` (JSON, no auth): pause/step the replay, cut or
stall the streams, inject failures, read the request log. Run it in-process (``SimExchange``,
``SimExchangeThread``) or as ``python simexchange.py --klines FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from history import INTERVAL_MS, Candle, HistoryError, read_candles
from simmarket import Market, Replay, StreamHub, fmt_price
from simuser import UserHub

log = logging.getLogger("simexchange")
_RAW = web.RequestKey("simexchange_raw", tuple)  # (raw query, raw body, params) of a REST request

DEMO_API_KEY = "demo-key"
DEMO_API_SECRET = "demo-secret"  # noqa: S105 - the local simulator's well-known demo credential

ZERO = Decimal(0)
STEP = Decimal("0.001")
MIN_QTY, MAX_MARKET_QTY = Decimal("0.001"), Decimal("120")
MIN_NOTIONAL = Decimal("100")
TAKER_RATE, MAKER_RATE = Decimal("0.0005"), Decimal("0.0002")
CLIENT_ID_RE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
CONDITIONAL_TYPES = {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
UNKNOWN_503 = "Unknown error, please check your request or try again later."
TIMEOUT_1007 = "Timeout waiting for response from backend server. Send status unknown; execution status unknown."


class ApiError(Exception):
    """A Binance error reply: HTTP status + ``{"code": ..., "msg": ...}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg}, status=self.status)


class _RateLimited(ApiError):
    """429 / 418 with a ``Retry-After`` header (seconds)."""

    def __init__(self, status: int, msg: str, retry_after_s: int) -> None:
        super().__init__(status, -1003, msg)
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        response = super().response()
        response.headers["Retry-After"] = str(self.retry_after_s)
        return response


def sign(secret: str, payload: str) -> str:
    """Binance's HMAC-SHA256 signature (hex) of a query string / form body."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def verify_signature(secret: str, payload: str, signature: str) -> bool:
    """Whether ``signature`` (hex, any case) signs ``payload``; constant-time."""
    return hmac.compare_digest(sign(secret, payload).encode(), signature.lower().encode(errors="replace"))


def split_signature(raw_query: str, raw_body: str) -> tuple[str, str | None]:
    """(signed payload, signature): Binance signs query string + body exactly as sent,
    without the ``signature`` parameter."""
    payload, sig = "", None
    for raw in (raw_query, raw_body):
        kept = []
        for item in raw.split("&") if raw else []:
            if item.startswith("signature="):
                sig = item[len("signature="):]
            else:
                kept.append(item)
        payload += "&".join(kept)
    return payload, sig


def _missing(name: str) -> ApiError:
    return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,20}", raw):
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


def _plain(x: Decimal, places: int) -> str:
    """Fixed-point text with ``places`` decimals (never "-0.000")."""
    return f"{x.quantize(Decimal(1).scaleb(-places)) + 0:f}"


def _short(x: Decimal) -> str:
    """Shortest plain text with at most 8 and at least one decimal ("95000.1", "0.0")."""
    text = f"{x.quantize(Decimal('1e-8')).normalize() + 0:f}"
    return text if "." in text else text + ".0"


def _max_notional(leverage: int) -> str:
    """Roughly BTCUSDT's leverage brackets: the largest position notional allowed at a leverage."""
    for bracket_leverage, cap in ((1, 800_000_000), (2, 500_000_000), (5, 200_000_000), (10, 100_000_000),
                                  (20, 25_000_000), (50, 5_000_000), (100, 800_000)):
        if leverage <= bracket_leverage:
            return str(cap)
    return "300000"


@dataclass
class Position:
    amt: Decimal = ZERO      # signed; negative = short
    entry: Decimal = ZERO
    update_ms: int = 0


@dataclass
class Faults:
    """Injected failures, each for the next ``count`` requests of its kind (see /_sim/...)."""

    fail_orders: int = 0
    fail_mode: str = "after"
    fail_status: int = 503
    fail_code: int | None = None
    reject_orders: int = 0
    reject: tuple[int, int, str] = (400, -2019, "Margin is insufficient.")
    delay_count: int = 0
    delay_ms: int = 0
    rate_count: int = 0
    rate_status: int = 429
    retry_after_s: int = 1
    rate_path: str | None = None   # only requests to this path are limited (None: every signed request)
    skew_ms: int = 0
    order_latency_ms: int = 0      # every order is answered this long after it executes


@dataclass
class Account:
    """Wallet, positions, orders and fills of the one simulated account (USDT)."""

    symbol: str
    wallet: Decimal = Decimal("10000")
    leverage: int = 20
    hedge_mode: bool = False
    positions: dict[str, Position] = field(default_factory=lambda: {s: Position() for s in ("BOTH", "LONG", "SHORT")})
    orders: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    next_order_id: int = 4_000_000_001
    next_trade_id: int = 600_000_001
    charged_rate: Decimal = TAKER_RATE  # what fills really cost (a fee discount makes it differ from the rate)

    def sides(self) -> list[str]:
        return ["LONG", "SHORT"] if self.hedge_mode else ["BOTH"]

    def upnl(self, mark: Decimal) -> Decimal:
        return sum(((mark - p.entry) * p.amt for p in self.positions.values()), ZERO)

    def initial_margin(self, mark: Decimal) -> Decimal:
        return sum((abs(p.amt) * mark for p in self.positions.values()), ZERO) / self.leverage

    def available(self, mark: Decimal) -> Decimal:
        return self.wallet + self.upnl(mark) - self.initial_margin(mark)

    def fill(self, side: str, qty: Decimal, price: Decimal, position_side: str, reduce_only: bool,
             client_id: str, now_ms: int) -> dict[str, Any]:
        """Execute a MARKET order in full; returns the order as ``GET /fapi/v1/order`` shows it."""
        pos = self.positions[position_side]
        signed = qty if side == "BUY" else -qty
        realized = ZERO
        if pos.amt == 0 or (pos.amt > 0) == (signed > 0):
            pos.entry = (abs(pos.amt) * pos.entry + qty * price) / abs(pos.amt + signed)
        else:
            realized = min(qty, abs(pos.amt)) * (price - pos.entry) * (1 if pos.amt > 0 else -1)
            if abs(signed) > abs(pos.amt):
                pos.entry = price  # flipped: the rest opens at this price
            elif abs(signed) == abs(pos.amt):
                pos.entry = ZERO
        pos.amt += signed
        pos.update_ms = now_ms
        quote = qty * price
        fee = (quote * self.charged_rate).quantize(Decimal("1e-8"))
        self.wallet += realized - fee
        order_id, self.next_order_id = self.next_order_id, self.next_order_id + 1
        order = {
            "orderId": order_id, "symbol": self.symbol, "status": "FILLED", "clientOrderId": client_id,
            "price": "0.00", "avgPrice": _plain(price, 2), "origQty": _plain(qty, 3), "executedQty": _plain(qty, 3),
            "cumQuote": _plain(quote, 5), "timeInForce": "GTC", "type": "MARKET", "reduceOnly": reduce_only,
            "closePosition": False, "side": side, "positionSide": position_side, "stopPrice": "0.00",
            "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": "MARKET", "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0, "time": now_ms, "updateTime": now_ms,
        }
        self.orders.append(order)
        self.trades.append({
            "buyer": side == "BUY", "commission": _plain(fee, 8), "commissionAsset": "USDT",
            "id": self.next_trade_id, "maker": False, "orderId": order_id, "price": _plain(price, 2),
            "qty": _plain(qty, 3), "quoteQty": _plain(quote, 5), "realizedPnl": _plain(realized, 8),
            "side": side, "positionSide": position_side, "symbol": self.symbol, "time": now_ms,
        })
        self.next_trade_id += 1
        return order


def new_order_reply(order: dict[str, Any], resp_type: str) -> dict[str, Any]:
    """The ``POST /fapi/v1/order`` body: RESULT shows the fill; ACK (the default) shows NEW."""
    reply = {k: v for k, v in order.items() if k != "time"}
    reply["cumQty"] = order["executedQty"]
    if resp_type == "ACK":
        reply.update(status="NEW", executedQty="0", cumQty="0", cumQuote="0.00000", avgPrice="0.00")
    return reply


def exchange_info(symbol: str, server_ms: int) -> dict[str, Any]:
    """``GET /fapi/v1/exchangeInfo`` in the shape Binance returns, BTCUSDT's filters of today."""
    base = symbol[:-4] if symbol.endswith("USDT") else symbol
    entry = {
        "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
        "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
        "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
        "underlyingType": "COIN", "underlyingSubType": ["PoW"], "settlePlan": 0, "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"minPrice": "556.80", "maxPrice": "4529764", "filterType": "PRICE_FILTER", "tickSize": "0.10"},
            {"stepSize": "0.001", "filterType": "LOT_SIZE", "maxQty": "1000", "minQty": "0.001"},
            {"stepSize": "0.001", "filterType": "MARKET_LOT_SIZE", "maxQty": "120", "minQty": "0.001"},
            {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
            {"limit": 10, "filterType": "MAX_NUM_ALGO_ORDERS"},
            {"notional": "100", "filterType": "MIN_NOTIONAL"},
            {"multiplierDown": "0.9500", "multiplierUp": "1.0500", "multiplierDecimal": "4",
             "filterType": "PERCENT_PRICE"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }
    return {
        "timezone": "UTC", "serverTime": server_ms, "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [entry],
    }


# -- public market history: request weight, injected faults, funding-rate history ----------------
#
# Used by ``bollmin.py download`` (and its tests): every REST answer carries Binance's
# ``X-MBX-USED-WEIGHT-1M`` (the weight this minute); klines and fundingRate past the per-minute
# limit get 429 with ``Retry-After`` (to the next minute), as Binance does; ``/_sim/public_rate_limit``
# makes public requests fail with 429/418 after a number of good ones; ``/_sim/corrupt_klines``
# spoils one row of the next klines answers. Funding rates are generated from the candles: every
# 8 h, 0.01 % plus 1 % of the price change over the 8 h before, within ±0.75 %, at the last close.

FUNDING_EVERY_MS = 8 * 3_600_000


@dataclass
class PublicLimits:
    weight_limit: int = 2400
    minute: int = -1           # wall-clock minute the count below belongs to
    used: int = 0              # weight used this minute
    total: int = 0             # weight used since start (for benchmarks)
    fail_after: int = 0        # public requests that still succeed before the injected failures
    fail_count: int = 0
    fail_status: int = 429
    retry_after_s: int = 1
    corrupt_count: int = 0


def _klines_weight(params: dict[str, str]) -> int:
    """Binance's klines weight by ``limit``: [1,100) 1, [100,500) 2, [500,1000] 5, > 1000 10."""
    try:
        limit = int(params.get("limit", 500))
    except ValueError:
        return 1
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class PublicHistory:
    """SimExchange's public market history: weights, faults and funding rates (see above)."""

    public_limits: PublicLimits

    def _public(self, fn: Any, weight_of: Any) -> Any:
        def handler(params: dict[str, str]) -> Any:
            lim = self.public_limits
            self._count_weight(weight_of(params))
            if lim.fail_count > 0:
                if lim.fail_after > 0:
                    lim.fail_after -= 1
                else:
                    lim.fail_count -= 1
                    raise _RateLimited(lim.fail_status, "Too many requests; current limit is 2400 requests per "
                                       "minute." if lim.fail_status == 429 else "Way too many requests; IP banned.",
                                       lim.retry_after_s)
            if lim.used > lim.weight_limit:
                raise _RateLimited(429, "Too many requests; current limit of IP is 2400 requests per minute.",
                                   max(1, 60 - int(time.time()) % 60))
            result = fn(params)
            if lim.corrupt_count > 0 and fn == self._klines and len(result) > 1:
                lim.corrupt_count -= 1
                result[1] = [*result[1][:2], "-1", *result[1][3:]]  # a high that cannot be
            return result

        return handler

    def _count_weight(self, weight: int) -> None:
        lim = self.public_limits
        minute = int(time.time()) // 60
        if minute != lim.minute:
            lim.minute, lim.used = minute, 0
        lim.used += weight
        lim.total += weight

    async def _weight_header(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(("/fapi/", "/api/")):
            if request.path not in ("/fapi/v1/klines", "/fapi/v1/fundingRate"):
                self._count_weight(1)
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.public_limits.used)

    def _funding_rate(self, params: dict[str, str]) -> list[dict[str, Any]]:
        self._check_symbol(params)
        limit = _int_param(params, "limit", 100)
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        m = self.market
        first = -(-m.times[0] // FUNDING_EVERY_MS) * FUNDING_EVERY_MS
        last = min(m.clock_ms, end if end is not None else m.clock_ms) // FUNDING_EVERY_MS * FUNDING_EVERY_MS
        lo = first if start is None else max(first, -(-start // FUNDING_EVERY_MS) * FUNDING_EVERY_MS)
        times = list(range(lo, last + 1, FUNDING_EVERY_MS))
        times = times[:limit] if start is not None else times[-limit:]
        return [self._funding_record(t) for t in times]

    def _funding_record(self, t: int) -> dict[str, Any]:
        m = self.market
        now = m.candles[max(bisect.bisect_right(m.times, t - 1) - 1, 0)].close
        before = m.candles[max(bisect.bisect_right(m.times, t - FUNDING_EVERY_MS - 1) - 1, 0)].close
        rate = max(-0.0075, min(0.0075, 0.0001 + 0.01 * (now - before) / before))
        return {"symbol": self.symbol, "fundingTime": t, "fundingRate": f"{rate:.8f}", "markPrice": f"{now:.8f}"}

    def _sim_post_public_rate_limit(self, body: dict) -> dict:
        status = int(body.get("status", 429))
        if status not in (429, 418):
            raise ValueError("status must be 429 or 418")
        lim = self.public_limits
        lim.fail_count, lim.fail_status = _count(body), status
        lim.retry_after_s, lim.fail_after = int(body.get("retry_after", 1)), int(body.get("after", 0))
        return {"count": lim.fail_count, "after": lim.fail_after, "status": status, "retry_after": lim.retry_after_s}

    def _sim_post_weight_limit(self, body: dict) -> dict:
        self.public_limits.weight_limit = int(body["limit"])
        return {"limit": self.public_limits.weight_limit}

    def _sim_post_corrupt_klines(self, body: dict) -> dict:
        self.public_limits.corrupt_count = _count(body)
        return {"count": self.public_limits.corrupt_count}

    def _sim_get_weight(self, body: dict) -> dict:
        lim = self.public_limits
        return {"used_this_minute": lim.used, "total": lim.total, "limit": lim.weight_limit}


class SimExchange(PublicHistory):
    """The simulated exchange. ``port = await sim.start()`` binds it; ``await sim.stop()`` ends it.

    ``candles_or_path``: a kline file (``history.read_candles``) or a list of ``Candle``.
    ``history_candles``: candles already in the past (served by klines, never streamed);
    default: enough for 60 ``target_interval`` candles. ``speed``: × real time; 0 = flat out.
    """

    def __init__(self, candles_or_path: str | os.PathLike[str] | list[Candle], *, symbol: str = "BTCUSDT",
                 api_key: str = DEMO_API_KEY, api_secret: str = DEMO_API_SECRET, speed: float = 1.0,
                 history_candles: int | None = None, paused: bool = False, target_interval: str = "15m",
                 balance_usdt: str = "10000", leverage: int = 20, hedge_mode: bool = False,
                 queue_size: int = 10_000) -> None:
        if isinstance(candles_or_path, (str, os.PathLike)):
            candles = read_candles(os.fspath(candles_or_path))
        else:
            candles = list(candles_or_path)
        if not 1 <= leverage <= 125:
            raise ValueError(f"leverage must be between 1 and 125, got {leverage}")
        try:
            balance = Decimal(str(balance_usdt))
        except InvalidOperation:
            raise ValueError(f"balance_usdt must be a number, got {balance_usdt!r}") from None
        self.symbol = symbol.upper()
        self.api_key = api_key
        self._secret = api_secret  # never logged, never returned
        self.market = Market(candles, self.symbol, history_candles, target_interval)
        self.hub = StreamHub(self.market, queue_size)
        self.replay = Replay(self.market, self.hub, speed, paused)
        self.account = Account(self.symbol, balance, leverage, hedge_mode)
        self.users = UserHub(self.server_time_ms)
        self.faults = Faults()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Future] = []
        self.public_limits = PublicLimits()  # public market history: request weight and its faults
        self.app = self._make_app()

    def __repr__(self) -> str:
        return f"SimExchange(symbol={self.symbol!r}, port={self.port})"

    def server_time_ms(self) -> int:
        return int(time.time() * 1000) + self.faults.skew_ms

    def price(self) -> Decimal:
        """The last replayed trade price: what a MARKET order fills at."""
        return Decimal(self.market.last_price) / 10

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start replaying; returns the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        self._tasks = [asyncio.ensure_future(self.replay.run()), asyncio.ensure_future(self.hub.expire_old())]
        log.info("%s: %d candles, streaming from #%d (%d ms), speed %s%s", self.symbol, len(self.market.candles),
                 self.market.start_index, self.market.clock_ms, self.replay.speed,
                 ", paused" if self.replay.paused else "")
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

    # -- plumbing ----------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.startswith("/_sim/") or request.headers.get("Upgrade", "").lower() == "websocket":
                return await handler(request)
            return await self._serve_rest(request, handler)

        app = web.Application(middlewares=[middleware])
        public = {
            ("GET", "/fapi/v1/ping"): lambda p: {}, ("GET", "/api/v3/ping"): lambda p: {},
            ("GET", "/fapi/v1/time"): self._time, ("GET", "/api/v3/time"): self._time,
            ("GET", "/fapi/v1/exchangeInfo"): lambda p: exchange_info(self.symbol, self.server_time_ms()),
            ("GET", "/fapi/v1/klines"): self._public(self._klines, _klines_weight),
            ("GET", "/fapi/v1/ticker/price"): self._ticker_price,
            ("GET", "/fapi/v1/fundingRate"): self._public(self._funding_rate, lambda p: 1),
        }
        signed = {
            ("POST", "/fapi/v1/order"): self._new_order, ("GET", "/fapi/v1/order"): self._get_order,
            ("DELETE", "/fapi/v1/order"): self._cancel_order, ("GET", "/fapi/v1/openOrders"): self._open_orders,
            ("GET", "/fapi/v1/allOrders"): self._all_orders, ("GET", "/fapi/v1/userTrades"): self._user_trades,
            ("GET", "/fapi/v1/commissionRate"): self._commission_rate,
            ("GET", "/fapi/v2/positionRisk"): lambda p: self._position_risk(p, 2),
            ("GET", "/fapi/v3/positionRisk"): lambda p: self._position_risk(p, 3),
            ("GET", "/fapi/v2/balance"): self._balance, ("GET", "/fapi/v3/balance"): self._balance,
            ("GET", "/fapi/v2/account"): self._account_info, ("GET", "/fapi/v3/account"): self._account_info,
            ("POST", "/fapi/v1/leverage"): self._set_leverage, ("GET", "/fapi/v1/symbolConfig"): self._symbol_config,
            ("GET", "/fapi/v1/positionSide/dual"): lambda p: {"dualSidePosition": self.account.hedge_mode},
            ("POST", "/fapi/v1/positionSide/dual"): self._set_dual_side,
        }
        keyed = {  # API key, no signature: the user-data stream's listenKey
            ("POST", "/fapi/v1/listenKey"): lambda p: self.users.create(),
            ("PUT", "/fapi/v1/listenKey"): lambda p: self._listen_key_answer(self.users.keepalive(p.get("listenKey"))),
            ("DELETE", "/fapi/v1/listenKey"): lambda p: self._listen_key_answer(self.users.delete(p.get("listenKey"))),
        }
        for table, auth in ((public, "none"), (signed, "signed"), (keyed, "key")):
            for (method, path), fn in table.items():
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
            request[_RAW] = (raw_query, raw_body, params)
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

    def _rest_handler(self, fn: Any, auth: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw_query, raw_body, params = request[_RAW]
            if auth == "signed":
                self._check_rate_limit(request.path)
                self._authenticate(request.headers.get("X-MBX-APIKEY"), raw_query, raw_body, params)
            elif auth == "key":
                self._check_api_key(request.headers.get("X-MBX-APIKEY"))
            result = fn(params)
            if asyncio.iscoroutine(result):
                result = await result
            return web.json_response(result)

        return handler

    def _check_rate_limit(self, path: str) -> None:
        f = self.faults
        if f.rate_count <= 0 or (f.rate_path is not None and path != f.rate_path):
            return
        f.rate_count -= 1
        if f.rate_status == 418:
            until = self.server_time_ms() + f.retry_after_s * 1000
            msg = (f"Way too many requests; IP banned until {until}. "
                   "Please use the websocket for live updates to avoid bans.")
        else:
            msg = ("Too many requests; current limit is 2400 requests per minute. "
                   "Please use the websocket for live updates to avoid polling the API.")
        raise _RateLimited(f.rate_status, msg, f.retry_after_s)

    def _check_api_key(self, key: str | None) -> None:
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")

    @staticmethod
    def _listen_key_answer(answer: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        status, body = answer
        if status != 200:
            raise ApiError(status, body["code"], body["msg"])
        return body

    def _authenticate(self, key: str | None, raw_query: str, raw_body: str, params: dict[str, str]) -> None:
        """API key, then signature, then the recvWindow rule (Binance's signed-endpoint rules)."""
        self._check_api_key(key)
        payload, signature = split_signature(raw_query, raw_body)
        if not signature:
            raise _missing("signature")
        if not verify_signature(self._secret, payload, signature):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        timestamp = _int_param(params, "timestamp")
        if timestamp is None:
            raise _missing("timestamp")
        recv_window = _int_param(params, "recvWindow", 5000)
        now = self.server_time_ms()
        if timestamp >= now + 1000:
            raise ApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def _check_symbol(self, params: dict[str, str], required: bool = True) -> None:
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise _missing("symbol")
            return
        if symbol != self.symbol:
            raise ApiError(400, -1121, "Invalid symbol.")

    # -- public market data ------------------------------------------------------------
    def _time(self, params: dict[str, str]) -> dict[str, Any]:
        return {"serverTime": self.server_time_ms()}

    def _ticker_price(self, params: dict[str, str]) -> Any:
        self._check_symbol(params, required=False)
        row = {"symbol": self.symbol, "price": fmt_price(self.market.last_price), "time": self.server_time_ms()}
        return row if params.get("symbol") else [row]

    def _klines(self, params: dict[str, str]) -> list[list[Any]]:
        self._check_symbol(params)
        name = params.get("interval")
        if not name:
            raise _missing("interval")
        length = INTERVAL_MS.get(name)
        if length is None or not self.market.supports(length):  # finer than the data: cannot be served
            raise ApiError(400, -1120, "Invalid interval.")
        limit = _int_param(params, "limit", 500)
        if not 1 <= limit <= 1500:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise ApiError(400, -1023, "Start time is greater than end time.")
        return self.market.kline_rows(length, start, end, limit)

    # -- orders ------------------------------------------------------------------------
    async def _new_order(self, params: dict[str, str]) -> dict[str, Any]:
        f = self.faults
        if f.reject_orders > 0:
            f.reject_orders -= 1
            raise ApiError(*f.reject)
        if f.fail_orders > 0:
            f.fail_orders -= 1
            if f.fail_mode == "after":  # executed, but the reply is lost
                try:
                    self._place(params)
                except ApiError:
                    pass
            code = -1000 if f.fail_code is None else f.fail_code
            raise ApiError(f.fail_status, code, TIMEOUT_1007 if code == -1007 else UNKNOWN_503)
        reply = self._place(params)
        if f.order_latency_ms > 0:  # executed now, answered later (a distant client's round trip)
            await asyncio.sleep(f.order_latency_ms / 1000)
        return reply

    def _place(self, params: dict[str, str]) -> dict[str, Any]:
        """Validate like Binance (in roughly its order), then fill the MARKET order in full."""
        self._check_symbol(params)
        side = params.get("side") or ""
        if not side:
            raise _missing("side")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        order_type = params.get("type") or ""
        if not order_type:
            raise _missing("type")
        if order_type in CONDITIONAL_TYPES:
            raise ApiError(400, -4120, "Order type not supported for this endpoint. "
                                       "Please use the Algo Order API endpoints instead.")
        if order_type != "MARKET":  # LIMIT is real on Binance but not simulated here
            raise ApiError(400, -1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId")
        if client_id is not None and not re.fullmatch(CLIENT_ID_RE, client_id):
            raise ApiError(400, -1100, f"Illegal characters found in parameter 'newClientOrderId'; "
                                       f"legal range is '{CLIENT_ID_RE}'.")
        resp_type = params.get("newOrderRespType", "ACK")
        if resp_type not in ("ACK", "RESULT"):
            raise ApiError(400, -1136, "Invalid newOrderRespType.")
        reduce_raw = params.get("reduceOnly")
        if reduce_raw is not None and reduce_raw.lower() not in ("true", "false"):
            raise ApiError(400, -1130, "Data sent for parameter 'reduceOnly' is not valid.")
        reduce_only = (reduce_raw or "").lower() == "true"
        position_side = params.get("positionSide", "BOTH")
        if position_side not in ("BOTH", "LONG", "SHORT"):
            raise ApiError(400, -4060, "Invalid position side.")
        acct = self.account
        if acct.hedge_mode and reduce_raw is not None:
            raise ApiError(400, -1106, "Parameter 'reduceOnly' sent when not required.")
        if acct.hedge_mode == (position_side == "BOTH"):
            raise ApiError(400, -4061, "Order's position side does not match user's setting.")
        qty = self._quantity(params)
        price = self.price()
        pos = acct.positions[position_side]
        if acct.hedge_mode:
            closing = (position_side == "LONG") == (side == "SELL")
        else:
            closing = pos.amt != 0 and (pos.amt > 0) == (side == "SELL")
        if reduce_only or (acct.hedge_mode and closing):
            if not closing or qty > abs(pos.amt):  # would open, grow or flip the position
                raise ApiError(400, -2022, "ReduceOnly Order is rejected.")
        else:
            if qty * price < MIN_NOTIONAL:
                raise ApiError(400, -4164, f"Order's notional must be no smaller than {MIN_NOTIONAL} "
                                           f"(unless you choose reduce only).")
            opening = max(qty - abs(pos.amt), ZERO) if closing else qty
            if opening * price / acct.leverage > acct.available(price):
                raise ApiError(400, -2019, "Margin is insufficient.")
        order = acct.fill(side, qty, price, position_side, reduce_only,
                          client_id or secrets.token_urlsafe(16)[:22], self.server_time_ms())
        self._user_events(order, position_side)
        log.info("order %d: %s %s %s at %s (%s)", order["orderId"], side, qty, self.symbol, price,
                 order["clientOrderId"])
        return new_order_reply(order, resp_type)

    def _quantity(self, params: dict[str, str]) -> Decimal:
        raw = params.get("quantity") or ""
        if not raw:
            raise _missing("quantity")
        if not re.fullmatch(r"-?[0-9]{1,20}(\.[0-9]{1,20})?", raw):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'quantity'; "
                                       "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
        try:
            qty = Decimal(raw)
        except InvalidOperation:
            raise _missing("quantity") from None
        if qty <= 0:
            raise ApiError(400, -4003, "Quantity less than or equal to zero.")
        if qty % STEP:
            raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
        if qty < MIN_QTY:
            raise ApiError(400, -4004, "Quantity less than min quantity.")
        if qty > MAX_MARKET_QTY:
            raise ApiError(400, -4005, "Quantity greater than max quantity.")
        return qty

    def _find_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        self._check_symbol(params)
        order_id, client_id = _int_param(params, "orderId"), params.get("origClientOrderId")
        if order_id is None and not client_id:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return [o for o in self.account.orders if (order_id is None or o["orderId"] == order_id)
                and (not client_id or o["clientOrderId"] == client_id)]

    def _get_order(self, params: dict[str, str]) -> dict[str, Any]:
        found = self._find_orders(params)
        if not found:
            raise ApiError(400, -2013, "Order does not exist.")
        return found[-1]  # a client id may be reused once its MARKET order has filled: the latest wins

    def _cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        self._find_orders(params)
        raise ApiError(400, -2011, "Unknown order sent.")  # MARKET orders are filled: nothing to cancel

    def _open_orders(self, params: dict[str, str]) -> list[Any]:
        self._check_symbol(params, required=False)
        return []

    def _window(self, rows: list[dict[str, Any]], params: dict[str, str], id_key: str, from_key: str,
                time_key: str) -> list[dict[str, Any]]:
        """Filter by id / startTime / endTime and apply ``limit`` (default 500, max 1000)."""
        self._check_symbol(params)
        limit = min(max(_int_param(params, "limit", 500), 1), 1000)
        first_id = _int_param(params, from_key)
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        rows = [r for r in rows if (first_id is None or r[id_key] >= first_id)
                and (start is None or r[time_key] >= start) and (end is None or r[time_key] <= end)]
        return rows[:limit] if first_id is not None or start is not None else rows[-limit:]

    def _all_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self._window(self.account.orders, params, "orderId", "orderId", "time")

    def _user_trades(self, params: dict[str, str]) -> list[dict[str, Any]]:
        order_id = _int_param(params, "orderId")
        trades = [t for t in self.account.trades if order_id is None or t["orderId"] == order_id]
        return self._window(trades, params, "id", "fromId", "time")

    def _commission_rate(self, params: dict[str, str]) -> dict[str, Any]:
        self._check_symbol(params)
        return {"symbol": self.symbol, "makerCommissionRate": str(MAKER_RATE), "takerCommissionRate": str(TAKER_RATE),
                "rpiCommissionRate": "0"}

    # -- account -----------------------------------------------------------------------
    def _position_risk(self, params: dict[str, str], version: int) -> list[dict[str, Any]]:
        self._check_symbol(params, required=False)
        acct, mark = self.account, self.price()
        if version == 3 and all(acct.positions[s].amt == 0 for s in acct.sides()):
            return []  # v3 lists only symbols with a position (or open orders)
        rows = []
        for side in acct.sides():
            p = acct.positions[side]
            notional = p.amt * mark
            fee_factor = 1 + TAKER_RATE if p.amt > 0 else 1 - TAKER_RATE
            row: dict[str, Any] = {
                "symbol": self.symbol, "positionSide": side, "positionAmt": _plain(p.amt, 3),
                "entryPrice": _short(p.entry), "breakEvenPrice": _short(p.entry * fee_factor),
                "markPrice": _plain(mark, 8), "unRealizedProfit": _plain((mark - p.entry) * p.amt, 8),
                "liquidationPrice": "0", "isolatedMargin": "0.00000000", "notional": _plain(notional, 8),
                "isolatedWallet": "0", "updateTime": p.update_ms}
            if version == 3:
                margin = _plain(abs(notional) / acct.leverage, 8)
                row.update(marginAsset="USDT", initialMargin=margin, maintMargin=_plain(abs(notional) * 4 / 1000, 8),
                           positionInitialMargin=margin, openOrderInitialMargin="0", adl=0, bidNotional="0",
                           askNotional="0")
            else:
                row.update(leverage=str(acct.leverage), maxNotionalValue=_max_notional(acct.leverage),
                           marginType="cross", isAutoAddMargin="false")
            rows.append(row)
        return rows

    def _usdt_asset(self) -> dict[str, Any]:
        acct, mark = self.account, self.price()
        available = acct.available(mark)
        return {"accountAlias": "SgsRmYFzTiAu", "asset": "USDT", "balance": _plain(acct.wallet, 8),
                "crossWalletBalance": _plain(acct.wallet, 8), "crossUnPnl": _plain(acct.upnl(mark), 8),
                "availableBalance": _plain(available, 8), "maxWithdrawAmount": _plain(min(available, acct.wallet), 8),
                "marginAvailable": True, "updateTime": self.server_time_ms()}

    def _balance(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return [self._usdt_asset()]

    def _account_info(self, params: dict[str, str]) -> dict[str, Any]:
        acct, mark, asset = self.account, self.price(), self._usdt_asset()
        margin = _plain(acct.initial_margin(mark), 8)
        return {
            "feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True, "updateTime": 0,
            "multiAssetsMargin": False, "tradeGroupId": -1, "totalInitialMargin": margin,
            "totalMaintMargin": _plain(acct.initial_margin(mark) * acct.leverage * 4 / 1000, 8),
            "totalWalletBalance": asset["balance"], "totalUnrealizedProfit": asset["crossUnPnl"],
            "totalMarginBalance": _plain(acct.wallet + acct.upnl(mark), 8), "totalPositionInitialMargin": margin,
            "totalOpenOrderInitialMargin": "0.00000000", "totalCrossWalletBalance": asset["balance"],
            "totalCrossUnPnl": asset["crossUnPnl"], "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"], "assets": [asset],
            "positions": [{"symbol": r["symbol"], "positionSide": r["positionSide"], "positionAmt": r["positionAmt"],
                           "unrealizedProfit": r["unRealizedProfit"], "entryPrice": r["entryPrice"],
                           "leverage": r["leverage"], "isolated": False, "updateTime": r["updateTime"]}
                          for r in self._position_risk({}, 2)],
        }

    def _set_leverage(self, params: dict[str, str]) -> dict[str, Any]:
        self._check_symbol(params)
        leverage = _int_param(params, "leverage")
        if leverage is None:
            raise _missing("leverage")
        if not 1 <= leverage <= 125:
            raise ApiError(400, -4028, f"Leverage {leverage} is not valid")
        self.account.leverage = leverage
        return {"leverage": leverage, "maxNotionalValue": _max_notional(leverage), "symbol": self.symbol}

    def _symbol_config(self, params: dict[str, str]) -> list[dict[str, Any]]:
        self._check_symbol(params, required=False)
        lev = self.account.leverage
        return [{"symbol": self.symbol, "marginType": "CROSSED", "isAutoAddMargin": "false", "leverage": lev,
                 "maxNotionalValue": _max_notional(lev)}]

    def _set_dual_side(self, params: dict[str, str]) -> dict[str, Any]:
        raw = (params.get("dualSidePosition") or "").lower()
        if raw not in ("true", "false"):
            raise _missing("dualSidePosition")
        if (raw == "true") == self.account.hedge_mode:
            raise ApiError(400, -4059, "No need to change position side.")
        if any(p.amt for p in self.account.positions.values()):
            raise ApiError(400, -4068, "Position side cannot be changed if there exists position.")
        self.account.hedge_mode = raw == "true"
        return {"code": 200, "msg": "success"}

    # -- control API for tests and demos (/_sim/...) -----------------------------------
    def state(self) -> dict[str, Any]:
        """The replay and account at a glance (``GET /_sim/state``)."""
        m, acct = self.market, self.account
        positions = {s: {"amt": _plain(p.amt, 3), "entry_price": _short(p.entry)} for s, p in acct.positions.items()}
        return {
            "symbol": self.symbol, "clock_ms": m.clock_ms, "price": fmt_price(m.last_price), "cursor": m.cursor,
            "tick_in_candle": m.tick_in_candle, "start_index": m.start_index, "candles": len(m.candles),
            "source_interval_ms": m.source_ms, "ticks_emitted": m.ticks_emitted, "finished": m.finished,
            "paused": self.replay.paused, "speed": self.replay.speed, "stalled": self.hub.stalled,
            "ws_clients": len(self.hub.clients), "dropped_slow_clients": self.hub.dropped_slow,
            "max_conn_age_s": self.hub.max_conn_age_s, "time_skew_ms": self.faults.skew_ms,
            "hedge_mode": acct.hedge_mode, "leverage": acct.leverage,
            "position": positions["BOTH"], "positions": positions,
            "balance": _plain(acct.wallet, 8), "orders": len(acct.orders), "trades": len(acct.trades),
            "requests": len(self.requests), "order_latency_ms": self.faults.order_latency_ms,
            "burst": self.replay.burst,
        } | self.users.state()

    async def _control(self, request: web.Request) -> web.Response:
        body: Any = {}
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "the body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        name = request.match_info["name"]
        action = getattr(self, f"_sim_{request.method.lower()}_{name}", None)
        if action is None:
            return web.json_response({"error": f"no control {request.method} /_sim/{name}"}, status=404)
        try:
            result = action(body)
            if asyncio.iscoroutine(result):
                result = await result
        except _ControlError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            return web.json_response({"error": f"bad request: {type(exc).__name__}: {exc}"}, status=400)
        return web.json_response(result)

    def _sim_get_state(self, body: dict) -> dict:
        return self.state()

    def _sim_get_requests(self, body: dict) -> list:
        return list(self.requests)

    def _sim_get_orders(self, body: dict) -> list:
        return self.account.orders

    def _sim_post_reset_log(self, body: dict) -> dict:
        self.requests.clear()
        return {"ok": True}

    def _sim_post_pause(self, body: dict) -> dict:
        self.replay.pause()
        return self.state()

    def _sim_post_resume(self, body: dict) -> dict:
        self.replay.resume()
        return self.state()

    def _sim_post_speed(self, body: dict) -> dict:
        self.replay.set_speed(float(body["speed"]))
        return self.state()

    async def _sim_post_step(self, body: dict) -> dict:
        if not self.replay.paused:
            raise _ControlError("pause the replay first (POST /_sim/pause)", 409)
        emitted = await self.replay.emit(_count(body, "ticks"))
        await self.hub.wait_sent()
        return {"emitted": emitted, **self.state()}

    def _sim_post_drop(self, body: dict) -> dict:
        """Cut connections like a network failure: ``route`` market (default), private or all."""
        route = body.get("route", "market")
        if route not in ("market", "private", "all"):
            raise ValueError("route must be 'market', 'private' or 'all'")
        dropped = self.hub.drop_all() if route in ("market", "all") else 0
        if route in ("private", "all"):
            dropped += self.users.drop_all()
        return {"dropped": dropped}

    def _sim_post_stall(self, body: dict) -> dict:
        self.hub.stalled = _flag(body, "on")
        return self.state()

    def _sim_post_max_conn_age(self, body: dict) -> dict:
        seconds = body.get("seconds")
        if seconds is not None and not float(seconds) > 0:
            raise ValueError("seconds must be > 0 (or null to switch it off)")
        self.hub.max_conn_age_s = None if seconds is None else float(seconds)
        return self.state()

    def _sim_post_fail_orders(self, body: dict) -> dict:
        mode = body.get("mode", "after")
        if mode not in ("after", "before"):
            raise ValueError("mode must be 'after' (executed, reply lost) or 'before' (not executed)")
        code = body.get("code")
        f = self.faults
        f.fail_orders, f.fail_mode = _count(body), mode
        f.fail_status, f.fail_code = int(body.get("status", 503)), None if code is None else int(code)
        return {"fail_orders": f.fail_orders, "mode": mode, "status": f.fail_status, "code": f.fail_code}

    def _sim_post_reject_orders(self, body: dict) -> dict:
        f = self.faults
        f.reject_orders = _count(body)
        msg = str(body.get("msg", "Margin is insufficient."))
        f.reject = (int(body.get("status", 400)), int(body.get("code", -2019)), msg)
        return {"reject_orders": f.reject_orders, "status": f.reject[0], "code": f.reject[1], "msg": f.reject[2]}

    def _sim_post_delay(self, body: dict) -> dict:
        ms = int(body["ms"])
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self.faults.delay_ms, self.faults.delay_count = ms, _count(body)
        return {"delay_ms": ms, "count": self.faults.delay_count}

    def _sim_post_rate_limit(self, body: dict) -> dict:
        status = int(body.get("status", 429))
        if status not in (429, 418):
            raise ValueError("status must be 429 or 418")
        f = self.faults
        f.rate_count, f.rate_status, f.retry_after_s = _count(body), status, int(body.get("retry_after", 1))
        path = body.get("path")
        if path is not None and not (isinstance(path, str) and path.startswith("/fapi/")):
            raise ValueError("path must be a REST path such as '/fapi/v1/order'")
        f.rate_path = path
        return {"count": f.rate_count, "status": status, "retry_after": f.retry_after_s, "path": path}

    def _sim_post_time_skew(self, body: dict) -> dict:
        self.faults.skew_ms = int(body["ms"])
        return self.state()

    def _sim_post_hedge_mode(self, body: dict) -> dict:
        self.account.hedge_mode = _flag(body, "on")
        return self.state()

    def _sim_post_set_position(self, body: dict) -> dict:
        side = body.get("position_side", "BOTH")
        if side not in self.account.positions:
            raise ValueError("position_side must be BOTH, LONG or SHORT")
        pos = self.account.positions[side]
        pos.amt = Decimal(str(body["amt"]))
        entry = body.get("entry_price")
        pos.entry = ZERO if pos.amt == 0 else (self.price() if entry is None else Decimal(str(entry)))
        pos.update_ms = self.server_time_ms()
        reason = str(body.get("reason", "ADJUSTMENT"))
        self.users.position_event(self._position_payload(side), _plain(self.account.wallet, 8), reason)
        return self.state()

    def _sim_post_external_order(self, body: dict) -> dict:
        """A MARKET order placed outside the bot (the Binance app, a liquidation with client id
        ``autoclose-…``, ADL ``adl_autoclose``): it fills at the last price and the user-data
        stream reports it. Body: ``side`` BUY|SELL, ``qty`` (default: the whole position, closing it),
        optional ``client_id``, ``reduce_only``."""
        acct = self.account
        pos = acct.positions["BOTH"]
        side = body.get("side") or ("SELL" if pos.amt > 0 else "BUY")
        if side not in ("BUY", "SELL"):
            raise ValueError("side must be BUY or SELL")
        qty = Decimal(str(body["qty"])) if body.get("qty") is not None else abs(pos.amt)
        if qty <= 0:
            raise _ControlError("nothing to do: no position and no qty", 409)
        client_id = str(body.get("client_id") or f"web_{secrets.token_hex(8)}")
        reduce_only = bool(body.get("reduce_only", body.get("qty") is None))
        order = acct.fill(side, qty, self.price(), "BOTH", reduce_only, client_id, self.server_time_ms())
        self._user_events(order, "BOTH", "LIQUIDATION" if client_id.startswith("autoclose-") else "MARKET")
        log.info("external order %d: %s %s %s (%s)", order["orderId"], side, qty, self.symbol, client_id)
        return {"order": order, **self.state()}

    def _sim_post_charged_fee_rate(self, body: dict) -> dict:
        """Fills cost ``rate`` from now on, while /fapi/v1/commissionRate still says 0.0005 (a fee
        discount, a VIP tier): only the fill's own commission tells what was charged."""
        rate = Decimal(str(body["rate"]))
        if not ZERO <= rate < Decimal("0.01"):
            raise ValueError("rate must be between 0 and 0.01")
        self.account.charged_rate = rate
        return {"charged_rate": str(rate)}

    def _sim_post_expire_listen_key(self, body: dict) -> dict:
        """The listenKey expires: ``{"notify": false}`` skips the listenKeyExpired event (a key
        that silently lapsed; the next keep-alive gets -1125)."""
        return {"silenced": self.users.expire(bool(body.get("notify", True))), **self.state()}

    def _sim_post_order_latency(self, body: dict) -> dict:
        ms = int(body["ms"])
        if not 0 <= ms <= 60_000:
            raise ValueError("ms must be between 0 and 60000")
        self.faults.order_latency_ms = ms
        return self.state()

    def _sim_post_burst(self, body: dict) -> dict:
        """Replay in bursts: ``ticks`` back to back every ``every_ms`` (0 ticks: back to --speed pacing)."""
        ticks, every = int(body.get("ticks", 0)), int(body.get("every_ms", 1000))
        if not 0 <= ticks <= 100_000 or not 1 <= every <= 60_000:
            raise ValueError("ticks must be 0..100000 and every_ms 1..60000")
        self.replay.set_burst(ticks, every)
        return self.state()

    # -- user-data events -----------------------------------------------------------------
    def _position_payload(self, side: str) -> dict[str, Any]:
        p, mark = self.account.positions[side], self.price()
        return {"s": self.symbol, "pa": _plain(p.amt, 3), "ep": _short(p.entry), "bep": _short(p.entry),
                "cr": "0", "up": _plain((mark - p.entry) * p.amt, 8), "mt": "cross", "iw": "0", "ps": side}

    def _user_events(self, order: dict[str, Any], side: str, order_type: str = "MARKET") -> None:
        trade = self.account.trades[-1]
        self.users.order_events(order, trade, self._position_payload(side), _plain(self.account.wallet, 8),
                                order_type=order_type)


class _ControlError(Exception):
    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


def _count(body: dict, key: str = "count") -> int:
    n = int(body.get(key, 1))
    if not 0 <= n <= 1_000_000:
        raise ValueError(f"{key} must be between 0 and 1000000")
    return n


def _flag(body: dict, key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


class SimExchangeThread:
    """Runs a ``SimExchange`` on its own event loop in a background thread (for synchronous tests).

    >>> with SimExchangeThread("marketdata/btcusdt_um_1m_2025-05.csv.gz", paused=True) as sim:
    ...     print(sim.base_url)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._args, self._kwargs, self._host, self._port = args, kwargs, host, port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.sim: SimExchange | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.port}"

    def __enter__(self) -> SimExchangeThread:
        ready, errors = threading.Event(), []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self.sim = SimExchange(*self._args, **self._kwargs)
                self.port = self._loop.run_until_complete(self.sim.start(self._host, self._port))
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.sim.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="simexchange", daemon=True)
        self._thread.start()
        ready.wait(60)
        if errors:
            raise errors[0]
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` (a function or coroutine function) on the exchange's loop; return its result."""
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# -- command line ----------------------------------------------------------------------


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
    parser = _Parser(prog="simexchange.py", description="A simulated Binance USDⓈ-M futures exchange on 127.0.0.1, "
                     "replaying a kline file as market streams (REST /fapi, WebSocket /market).")
    parser.add_argument("--klines", required=True, metavar="FILE", help="kline CSV(.gz) to replay")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed, × real time; 0 = as fast as possible")
    parser.add_argument("--history", type=int, default=None, metavar="N",
                        help="candles already in the past at start (default: 60 candles of --interval)")
    parser.add_argument("--interval", default="15m", help="the bot's interval, only for the default --history")
    parser.add_argument("--paused", action="store_true", help="start paused (POST /_sim/resume to go)")
    parser.add_argument("--symbol", default="BTCUSDT")
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
        sim = SimExchange(args.klines, symbol=args.symbol, api_key=args.api_key, api_secret=args.api_secret,
                          speed=args.speed, history_candles=args.history, paused=args.paused,
                          target_interval=args.interval)
    except (HistoryError, ValueError) as exc:
        print(f"simexchange: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(sim, args))


if __name__ == "__main__":
    sys.exit(main())
