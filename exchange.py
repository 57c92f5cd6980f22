"""The exchange client: python-binance's AsyncClient pointed at ``REST_BASE_URL``.

Owns: server-time offset, symbol filters as ``Decimal`` rules, the account checks at start
(one-way position mode, leverage), position read-back, and the classification of errors
into what the caller must do (``Outcome``). Holds no strategy state.

Every REST call goes to ``REST_BASE_URL`` (TESTNET only changes that URL's default in
config.py), never to Binance's hard-coded hosts: we set ``FUTURES_URL`` on a plain
``AsyncClient`` (``create()`` would ping spot ``api.binance.com``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import aiohttp

from broker import SymbolRules
from config import Config
from history import Candle

log = logging.getLogger("bollmin.exchange")

RECV_WINDOW_MS = 5000


class AccountSetupError(RuntimeError):
    """The account cannot be traded as configured (bad key, hedge mode...). Needs a person."""


class Outcome(StrEnum):
    """What an error means for an order (or any request)."""

    REJECTED = "rejected"          # definite: the exchange refused; nothing executed
    UNKNOWN = "unknown"            # may or may not have executed: query before anything else
    RATE_LIMITED = "rate_limited"  # 429/418: wait Retry-After; not executed
    CLOCK = "clock"                # -1021: resync the server-time offset; not executed
    AUTH = "auth"                  # -2015/-1022: key, IP or permission problem; not executed


@dataclass(frozen=True)
class ApiError(Exception):
    """A classified exchange error. ``retry_after_s`` for RATE_LIMITED."""

    outcome: Outcome
    code: int | None
    message: str
    status: int | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        code = "" if self.code is None else f" {self.code}"
        http = "" if self.status is None else f" (HTTP {self.status})"
        return f"{self.outcome.value}{code}{http}: {self.message}"


# Codes that mean "the request did not execute": the exchange looked at it and said no.
_UNKNOWN_CODES = {-1007, -1006}  # timeout waiting for the backend / unexpected response


_RATE_CODES = {-1003, -1015}  # too many requests / too many new orders
_BAN_UNTIL = re.compile(r"banned until (\d{12,14})")


def classify(exc: BaseException, now_ms: int | None = None) -> ApiError:
    """Turn any exception from a REST call into an ApiError with its Outcome.

    A rate limit carries how long to wait: the ``Retry-After`` header, else (418) the time in
    "IP banned until <ms>", else one second (two minutes for a 418).
    """
    from binance.exceptions import BinanceAPIException, BinanceRequestException

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BinanceAPIException):
        status, code = exc.status_code, exc.code
        msg = exc.message if isinstance(exc.message, str) else "no message"
        if status in (429, 418) or code in _RATE_CODES:
            return ApiError(Outcome.RATE_LIMITED, code, msg, status, _retry_after(exc, status, msg, now_ms))
        if code == -1021:
            return ApiError(Outcome.CLOCK, code, msg, status)
        if code in (-2015, -1022, -2014, -1002):
            return ApiError(Outcome.AUTH, code, msg, status)
        if (status is not None and status >= 500) or code in _UNKNOWN_CODES:
            return ApiError(Outcome.UNKNOWN, code, msg, status)
        return ApiError(Outcome.REJECTED, code, msg, status)
    if isinstance(exc, BinanceRequestException):  # 2xx with a body that is not JSON
        return ApiError(Outcome.UNKNOWN, None, str(exc))
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientError, OSError)):
        return ApiError(Outcome.UNKNOWN, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
    return ApiError(Outcome.UNKNOWN, None, f"{type(exc).__name__}: {exc}")


def _retry_after(exc: Any, status: int | None, msg: str, now_ms: int | None) -> float:
    try:
        value = float(exc.response.headers.get("Retry-After"))
        if value >= 0:
            return value
    except (TypeError, ValueError, AttributeError):
        pass
    if status == 418:
        until = _BAN_UNTIL.search(msg)
        if until is not None:
            now = now_ms if now_ms is not None else int(time.time() * 1000)
            return max((int(until.group(1)) - now) / 1000.0, 1.0)
        return 120.0
    return 1.0


def rules_from_exchange_info(info: dict[str, Any], symbol: str) -> SymbolRules:
    """SymbolRules from an exchangeInfo response (MARKET_LOT_SIZE governs MARKET orders)."""
    for entry in info.get("symbols", []):
        if entry.get("symbol") != symbol:
            continue
        filters = {f.get("filterType"): f for f in entry.get("filters", [])}
        lot = filters.get("MARKET_LOT_SIZE") or filters.get("LOT_SIZE") or {}
        if Decimal(str(lot.get("stepSize", "0"))) == 0:
            lot = filters.get("LOT_SIZE") or {}
        price = filters.get("PRICE_FILTER") or {}
        notional = filters.get("MIN_NOTIONAL") or {}
        return SymbolRules(
            step=Decimal(str(lot.get("stepSize", "0.001"))).normalize(),
            min_qty=Decimal(str(lot.get("minQty", "0.001"))),
            max_qty=Decimal(str(lot.get("maxQty", "1000"))),
            min_notional=Decimal(str(notional.get("notional", notional.get("minNotional", "5")))),
            tick=Decimal(str(price.get("tickSize", "0.01"))),
        )
    raise AccountSetupError(f"symbol {symbol} is not listed by the exchange (exchangeInfo)")


def parse_kline_rows(rows: list[list[Any]]) -> list[tuple[Candle, int]]:
    """REST kline rows as (Candle, close_time_ms)."""
    return [(Candle(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5])), int(r[6]))
            for r in rows]


class Exchange:
    """A connected REST client. Build it inside the running event loop with ``open``."""

    def __init__(self, cfg: Config) -> None:
        from binance import AsyncClient  # imported here: paper mode and the CLI don't need it

        self.cfg = cfg
        self.client = AsyncClient(
            cfg.API_KEY or None, cfg.API_SECRET or None,
            requests_params={"timeout": aiohttp.ClientTimeout(total=cfg.REST_TIMEOUT_SECONDS)},
        )
        self.client.FUTURES_URL = cfg.REST_BASE_URL.rstrip("/") + "/fapi"
        self.client.API_URL = cfg.REST_BASE_URL.rstrip("/") + "/api"
        self.client.REQUEST_RECVWINDOW = RECV_WINDOW_MS
        self.rules = SymbolRules()
        self.symbol = cfg.SYMBOL
        self.taker_rate = 0.0005  # the account's taker commission rate, read at start

    async def load_commission_rate(self) -> float:
        """The account's taker rate (``/fapi/v1/commissionRate``); keeps the default on failure."""
        try:
            res = await self.client.futures_commission_rate(symbol=self.symbol)
            self.taker_rate = float(res["takerCommissionRate"])
        except Exception as exc:
            log.warning("commission rate unavailable (%s): estimating fees at %s", classify(exc), self.taker_rate)
        return self.taker_rate

    async def close(self) -> None:
        try:
            await self.client.close_connection()
        except Exception as exc:  # closing must never raise during shutdown
            log.debug("closing the REST session: %s", exc)

    @property
    def offset_ms(self) -> int:
        return int(self.client.timestamp_offset)

    def server_time_ms(self) -> int:
        """Our best estimate of the exchange clock."""
        return int(time.time() * 1000) + self.offset_ms

    async def sync_time(self) -> int:
        """Measure the server-time offset (mid-point of the round trip); returns it in ms."""
        sent = time.time() * 1000
        res = await self.client.futures_time()
        got = time.time() * 1000
        self.client.timestamp_offset = int(res["serverTime"] - (sent + got) / 2)
        return self.offset_ms

    async def load_rules(self) -> SymbolRules:
        self.rules = rules_from_exchange_info(await self.client.futures_exchange_info(), self.symbol)
        return self.rules

    async def klines(self, interval: str, limit: int, start_ms: int | None = None,
                     end_ms: int | None = None) -> list[tuple[Candle, int]]:
        """Public klines (the last row may be the forming candle)."""
        params: dict[str, Any] = {"symbol": self.symbol, "interval": interval, "limit": min(limit, 1500)}
        if start_ms is not None:
            params["startTime"] = start_ms
        if end_ms is not None:
            params["endTime"] = end_ms
        return parse_kline_rows(await self.client.futures_klines(**params))

    async def check_account(self) -> None:
        """One-way position mode and LEVERAGE; AccountSetupError when a person must act."""
        try:
            mode = await self.client.futures_get_position_mode()
        except Exception as exc:
            err = classify(exc)
            if err.outcome is Outcome.AUTH:
                raise AccountSetupError(
                    f"the exchange refused the API key ({err}); check the key, its futures permission "
                    f"and its IP whitelist") from None
            raise
        if mode.get("dualSidePosition"):
            raise AccountSetupError(
                "the account is in hedge mode (dual-side positions); bollmin needs one-way mode: "
                "switch it in Binance Futures > Preferences > Position Mode, then restart")
        res = await self.client.futures_change_leverage(symbol=self.symbol, leverage=self.cfg.LEVERAGE)
        if int(res.get("leverage", self.cfg.LEVERAGE)) != self.cfg.LEVERAGE:
            log.warning("leverage is %s, not the configured %s", res.get("leverage"), self.cfg.LEVERAGE)

    async def position(self) -> tuple[Decimal, float]:
        """The exchange's one-way position for SYMBOL: (signed quantity, entry price)."""
        rows = await self.client.futures_position_information(symbol=self.symbol)
        amt, entry = Decimal("0"), 0.0
        for row in rows:
            if row.get("symbol") == self.symbol and row.get("positionSide", "BOTH") in ("BOTH", None):
                amt = Decimal(str(row.get("positionAmt", "0")))
                entry = float(row.get("entryPrice", 0) or 0)
        return amt, entry

    async def place_market(self, side: str, qty: str, reduce_only: bool, client_order_id: str) -> dict[str, Any]:
        params: dict[str, Any] = {
            "symbol": self.symbol, "side": side, "type": "MARKET", "quantity": qty,
            "newClientOrderId": client_order_id, "newOrderRespType": "RESULT",
        }
        if reduce_only:
            params["reduceOnly"] = "true"
        return await self.client.futures_create_order(**params)

    async def query_order(self, client_order_id: str) -> dict[str, Any] | None:
        """The order with this client id, or None when the exchange has no such order (-2013)."""
        from binance.exceptions import BinanceAPIException

        try:
            return await self.client.futures_get_order(symbol=self.symbol, origClientOrderId=client_order_id)
        except BinanceAPIException as exc:
            if exc.code == -2013:
                return None
            raise

    # ---- user-data stream (listenKey: API key header, no signature) ------------------------
    async def create_listen_key(self) -> str:
        """A listenKey for the account's user-data stream (the account's active one if it has one)."""
        return str(await self.client.futures_stream_get_listen_key())

    async def keepalive_listen_key(self, key: str) -> None:
        """Extend the listenKey's validity by 60 minutes (-1125 when it no longer exists)."""
        await self.client.futures_stream_keepalive(key)
