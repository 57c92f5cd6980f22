"""The symbols the simulated exchange lists: each one's trading rules (``SymbolSpec``), where its
candles come from (``SymbolData``), and ``GET /fapi/v1/exchangeInfo``.

A symbol's rules decide how its prices and quantities are printed and which orders pass
(tick, step, min/max quantity, min notional). Known names get their own rules (``KNOWN``);
any other name gets BTCUSDT's, as the single-symbol exchange always did.

The bundled data is BTCUSDT only, so a second symbol can be *derived* from it
(``derived_symbol``): ETHUSDT is BTCUSDT's 1m candles from one day into the file on, with
every price divided by 30 and rounded to ETHUSDT's 0.01 tick and every volume multiplied by
30 (the quote volume stays BTCUSDT's). Its replay therefore starts a day later in the data
than BTCUSDT's and its bands cross at other moments: two bots on the two symbols make
different decisions. It is BTCUSDT's market under another name, not ETH's history.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from history import Candle, HistoryError

SYMBOL_RE = r"[A-Z0-9]{2,32}"


def _places(step: Decimal) -> int:
    """Decimals needed to write multiples of ``step`` exactly (0.10 -> 1, 0.001 -> 3, 5 -> 0)."""
    return max(0, -int(step.normalize().as_tuple().exponent))


def _fixed(units: int, places: int, shown: int) -> str:
    """``units`` × 10^-places (units >= 0) written with ``shown`` >= ``places`` decimals."""
    if places == 0:
        return f"{units}.{'0' * shown}" if shown else str(units)
    scale = 10 ** places
    return f"{units // scale}.{units % scale:0{places}d}{'0' * (shown - places)}"


@dataclass(frozen=True)
class SymbolSpec:
    """One symbol's trading rules, numbers written as Binance prints them in exchangeInfo.

    The defaults are BTCUSDT's of today: tick 0.10, step 0.001, MARKET orders 0.001 … 120,
    min notional 100 USDT. Ticks and steps must be powers of ten.
    """

    symbol: str
    tick_size: str = "0.10"
    min_price: str = "556.80"
    max_price: str = "4529764"
    step_size: str = "0.001"
    min_qty: str = "0.001"
    max_qty: str = "1000"          # LOT_SIZE (limit orders)
    max_market_qty: str = "120"    # MARKET_LOT_SIZE: what governs MARKET orders
    min_notional: str = "100"      # USDT
    price_precision: int = 2       # decimals of prices in answers ("95000.10")
    quantity_precision: int = 3
    underlying_sub_type: tuple[str, ...] = ("PoW",)

    def __post_init__(self) -> None:
        if not re.fullmatch(SYMBOL_RE, self.symbol):
            raise ValueError(f"symbol {self.symbol!r} is not a symbol name (capital letters and digits)")
        for name in ("tick_size", "step_size"):
            value = Decimal(getattr(self, name))
            if value <= 0 or value != Decimal(1).scaleb(value.normalize().as_tuple().exponent):
                raise ValueError(f"{self.symbol}: {name} must be a power of ten, got {getattr(self, name)}")
        if self.price_precision < self.price_places or self.quantity_precision < self.qty_places:
            raise ValueError(f"{self.symbol}: the precisions must show a whole tick and step")

    # -- the numbers as Decimals ----------------------------------------------------------
    @property
    def base_asset(self) -> str:
        return self.symbol[:-4] if self.symbol.endswith("USDT") else self.symbol

    @functools.cached_property
    def step(self) -> Decimal:
        return Decimal(self.step_size)

    @functools.cached_property
    def price_places(self) -> int:
        """Decimals of the tick: prices are kept as integers of 10^-price_places."""
        return _places(Decimal(self.tick_size))

    @functools.cached_property
    def qty_places(self) -> int:
        """Decimals of the step: quantities are kept as integers of 10^-qty_places."""
        return _places(self.step)

    @functools.cached_property
    def quote_places(self) -> int:
        """Decimals of a quote amount (price × quantity) in answers: at least Binance's 5."""
        return max(5, self.price_places + self.qty_places)

    # -- integer units (the replay's exact arithmetic) and their text ---------------------
    def price_units(self, price: float) -> int:
        """A price as an integer number of 10^-price_places, on the tick."""
        return round(price * 10 ** self.price_places)

    def qty_units(self, qty: float) -> int:
        return round(qty * 10 ** self.qty_places)

    def price_of(self, units: int) -> Decimal:
        return Decimal(units).scaleb(-self.price_places)

    def price_text(self, units: int) -> str:
        """``950001`` -> ``"95000.10"`` for BTCUSDT (prices are printed with 2 decimals)."""
        return _fixed(units, self.price_places, self.price_precision)

    def qty_text(self, units: int) -> str:
        return _fixed(units, self.qty_places, self.quantity_precision)

    def quote_text(self, units: int) -> str:
        """A quote amount in 10^-(price_places + qty_places) USDT (price units × quantity units)."""
        places = self.price_places + self.qty_places
        return _fixed(units, places, max(5, places))

    # -- exchangeInfo ---------------------------------------------------------------------
    def info_entry(self) -> dict[str, Any]:
        """This symbol's entry in ``exchangeInfo["symbols"]``."""
        return {
            "symbol": self.symbol, "pair": self.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000", "baseAsset": self.base_asset, "quoteAsset": "USDT",
            "marginAsset": "USDT", "pricePrecision": self.price_precision,
            "quantityPrecision": self.quantity_precision, "baseAssetPrecision": 8, "quotePrecision": 8,
            "underlyingType": "COIN", "underlyingSubType": list(self.underlying_sub_type), "settlePlan": 0,
            "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            "maxMoveOrderLimit": 10000,
            "filters": [
                {"minPrice": self.min_price, "maxPrice": self.max_price, "filterType": "PRICE_FILTER",
                 "tickSize": self.tick_size},
                {"stepSize": self.step_size, "filterType": "LOT_SIZE", "maxQty": self.max_qty, "minQty": self.min_qty},
                {"stepSize": self.step_size, "filterType": "MARKET_LOT_SIZE", "maxQty": self.max_market_qty,
                 "minQty": self.min_qty},
                {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
                {"limit": 10, "filterType": "MAX_NUM_ALGO_ORDERS"},
                {"notional": self.min_notional, "filterType": "MIN_NOTIONAL"},
                {"multiplierDown": "0.9500", "multiplierUp": "1.0500", "multiplierDecimal": "4",
                 "filterType": "PERCENT_PRICE"},
            ],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                           "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        }


BTCUSDT = SymbolSpec("BTCUSDT")
# ETH-like rules: tick 0.01, step 0.001, min notional 20 USDT as ETHUSDT's; the price range is
# BTCUSDT's divided by 30 (like the derived prices) and the quantity limits are those of the
# 2022 capture in marketdata/payloads/. Illustrative, not a copy of today's ETHUSDT.
ETHUSDT = SymbolSpec("ETHUSDT", tick_size="0.01", min_price="18.56", max_price="150992.13", max_qty="10000",
                     max_market_qty="10000", min_notional="20", underlying_sub_type=())
KNOWN: dict[str, SymbolSpec] = {s.symbol: s for s in (BTCUSDT, ETHUSDT)}


def spec_for(symbol: str) -> SymbolSpec:
    """The rules of a known symbol, else BTCUSDT's under that name."""
    symbol = symbol.upper()
    return KNOWN.get(symbol) or dataclasses.replace(BTCUSDT, symbol=symbol)


def max_notional(leverage: int) -> str:
    """Roughly BTCUSDT's leverage brackets (used for every symbol): the largest position
    notional allowed at a leverage."""
    for bracket_leverage, cap in ((1, 800_000_000), (2, 500_000_000), (5, 200_000_000), (10, 100_000_000),
                                  (20, 25_000_000), (50, 5_000_000), (100, 800_000)):
        if leverage <= bracket_leverage:
            return str(cap)
    return "300000"


def exchange_info(symbols: str | SymbolSpec | Iterable[SymbolSpec], server_ms: int) -> dict[str, Any]:
    """``GET /fapi/v1/exchangeInfo`` in the shape Binance returns: every listed symbol with its
    own filters. A bare name stands for ``spec_for(name)``."""
    if isinstance(symbols, str):
        specs = [spec_for(symbols)]
    elif isinstance(symbols, SymbolSpec):
        specs = [symbols]
    else:
        specs = list(symbols)
    return {
        "timezone": "UTC", "serverTime": server_ms, "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [s.info_entry() for s in specs],
    }


# -- where a symbol's candles come from ---------------------------------------------------------

@dataclass(frozen=True)
class SymbolData:
    """A symbol to list beside the first one (``SimExchange(..., more_symbols={name: SymbolData(...)})``).

    ``candles``: a kline file or a list of ``Candle``. ``spec``: its rules (default
    ``spec_for(name)``). ``history_candles``: candles already in the past at start (default:
    what the exchange's ``history_candles`` says, counted in this symbol's own data).
    """

    candles: str | os.PathLike[str] | Sequence[Candle]
    spec: SymbolSpec | None = None
    history_candles: int | None = None


@dataclass(frozen=True)
class Derivation:
    """How a second symbol is made from BTCUSDT's candles (see the module docstring)."""

    spec: SymbolSpec
    price_divisor: int   # prices ÷ this (rounded to the spec's tick), volumes × this
    skip_ms: int         # the derived data starts this far into the base data


DERIVATIONS: dict[str, Derivation] = {"ETHUSDT": Derivation(ETHUSDT, price_divisor=30, skip_ms=86_400_000)}


def derived_candles(candles: Sequence[Candle], how: Derivation) -> list[Candle]:
    """The base candles from ``how.skip_ms`` on, prices ÷ divisor on the tick, volumes × divisor."""
    if not candles:
        raise HistoryError("no candles to derive a symbol from")
    start = candles[0].open_time_ms + how.skip_ms
    spec, k = how.spec, how.price_divisor
    p, q = spec.price_places, spec.qty_places
    out = [Candle(c.open_time_ms, round(c.open / k, p), round(c.high / k, p), round(c.low / k, p),
                  round(c.close / k, p), round(c.volume * k, q))
           for c in candles if c.open_time_ms >= start]
    if len(out) < 2:
        raise HistoryError(f"the data is too short to derive {spec.symbol}: it starts {how.skip_ms // 3_600_000} h "
                           f"into the base data, which has {len(candles)} candles")
    return out


def derived_symbol(symbol: str, base: Sequence[Candle], history_candles: int | None = None) -> SymbolData:
    """A second symbol made from ``base`` (BTCUSDT-like candles) by ``DERIVATIONS[symbol]``."""
    how = DERIVATIONS.get(symbol.upper())
    if how is None:
        raise ValueError(f"no derived data for {symbol}; derivable: {', '.join(DERIVATIONS)}")
    return SymbolData(derived_candles(base, how), how.spec, history_candles)
