"""The one simulated account (USDT margined): wallet, positions per symbol, orders, fills and
margin, and how a MARKET order is checked and filled.

Binance's rules, simplified: only MARKET orders exist; they fill in full at once at the
symbol's last replayed trade price with a 0.05 % taker fee; the mark price is that last trade
price; cross margin; no liquidation or funding. Position mode (one-way or hedge) is
account-wide, leverage is per symbol. Margin (and so -2019) counts every symbol's position.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .catalogue import SymbolSpec
from .wire import ApiError, missing, plain

ZERO = Decimal(0)
TAKER_RATE, MAKER_RATE = Decimal("0.0005"), Decimal("0.0002")
CLIENT_ID_RE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
CONDITIONAL_TYPES = {"STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"}
POSITION_SIDES = ("BOTH", "LONG", "SHORT")


@dataclass
class Position:
    amt: Decimal = ZERO      # signed; negative = short
    entry: Decimal = ZERO
    update_ms: int = 0


class Account:
    """Wallet, positions, orders and fills of the one simulated account (USDT)."""

    def __init__(self, symbols: list[str], wallet: Decimal = Decimal("10000"), leverage: int = 20,
                 hedge_mode: bool = False) -> None:
        self.wallet = wallet
        self.hedge_mode = hedge_mode
        self.leverage: dict[str, int] = {s: leverage for s in symbols}
        self.positions: dict[str, dict[str, Position]] = {s: {side: Position() for side in POSITION_SIDES}
                                                          for s in symbols}
        self.orders: list[dict[str, Any]] = []
        self.trades: list[dict[str, Any]] = []
        self.next_order_id = 4_000_000_001
        self.next_trade_id = 600_000_001
        self.charged_rate = TAKER_RATE  # what fills really cost (a fee discount makes it differ from the rate)

    def sides(self) -> list[str]:
        return ["LONG", "SHORT"] if self.hedge_mode else ["BOTH"]

    def has_position(self) -> bool:
        return any(p.amt for book in self.positions.values() for p in book.values())

    # -- margin over every symbol; ``marks`` = symbol -> mark price -----------------------------
    def upnl(self, marks: Mapping[str, Decimal]) -> Decimal:
        return sum(((marks[s] - p.entry) * p.amt for s, book in self.positions.items() for p in book.values()), ZERO)

    def _notional(self, symbol: str, mark: Decimal) -> Decimal:
        return sum((abs(p.amt) * mark for p in self.positions[symbol].values()), ZERO)

    def initial_margin(self, marks: Mapping[str, Decimal]) -> Decimal:
        return sum((self._notional(s, marks[s]) / self.leverage[s] for s in self.positions), ZERO)

    def maint_margin(self, marks: Mapping[str, Decimal]) -> Decimal:
        return sum((self._notional(s, marks[s]) for s in self.positions), ZERO) * 4 / 1000

    def available(self, marks: Mapping[str, Decimal]) -> Decimal:
        return self.wallet + self.upnl(marks) - self.initial_margin(marks)

    # -- orders -----------------------------------------------------------------------------
    def place(self, spec: SymbolSpec, params: dict[str, str], marks: Mapping[str, Decimal],
              now_ms: int) -> tuple[dict[str, Any], str]:
        """Check a ``POST /fapi/v1/order`` like Binance (in roughly its order), then fill the MARKET
        order in full at ``marks[spec.symbol]``. Returns (the order, the asked newOrderRespType);
        raises ``ApiError`` on a rejection."""
        side = params.get("side") or ""
        if not side:
            raise missing("side")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        order_type = params.get("type") or ""
        if not order_type:
            raise missing("type")
        if order_type in CONDITIONAL_TYPES:
            raise ApiError(400, -4120, "Order type not supported for this endpoint. "
                                       "Please use the Algo Order API endpoints instead.")
        if order_type != "MARKET":  # LIMIT is real on Binance but not simulated here
            raise ApiError(400, -1116, "Invalid orderType.")
        named_id = params.get("newClientOrderId")
        if named_id is not None and not re.fullmatch(CLIENT_ID_RE, named_id):
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
        if position_side not in POSITION_SIDES:
            raise ApiError(400, -4060, "Invalid position side.")
        if self.hedge_mode and reduce_raw is not None:
            raise ApiError(400, -1106, "Parameter 'reduceOnly' sent when not required.")
        if self.hedge_mode == (position_side == "BOTH"):
            raise ApiError(400, -4061, "Order's position side does not match user's setting.")
        qty = quantity(spec, params)
        price = marks[spec.symbol]
        pos = self.positions[spec.symbol][position_side]
        if self.hedge_mode:
            closing = (position_side == "LONG") == (side == "SELL")
        else:
            closing = pos.amt != 0 and (pos.amt > 0) == (side == "SELL")
        if reduce_only or (self.hedge_mode and closing):
            if not closing or qty > abs(pos.amt):  # would open, grow or flip the position
                raise ApiError(400, -2022, "ReduceOnly Order is rejected.")
        else:
            if qty * price < Decimal(spec.min_notional):
                raise ApiError(400, -4164, f"Order's notional must be no smaller than {spec.min_notional} "
                                           f"(unless you choose reduce only).")
            opening = max(qty - abs(pos.amt), ZERO) if closing else qty
            if opening * price / self.leverage[spec.symbol] > self.available(marks):
                raise ApiError(400, -2019, "Margin is insufficient.")
        client_id = named_id or secrets.token_urlsafe(16)[:22]
        order = self.fill(spec, side, qty, price, position_side, reduce_only, client_id, now_ms)
        return order, resp_type

    def fill(self, spec: SymbolSpec, side: str, qty: Decimal, price: Decimal, position_side: str,
             reduce_only: bool, client_id: str, now_ms: int) -> dict[str, Any]:
        """Execute a MARKET order in full; returns the order as ``GET /fapi/v1/order`` shows it."""
        pos = self.positions[spec.symbol][position_side]
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
        price_text, qty_text = plain(price, spec.price_precision), plain(qty, spec.quantity_precision)
        quote_text = plain(quote, spec.quote_places)
        order = {
            "orderId": order_id, "symbol": spec.symbol, "status": "FILLED", "clientOrderId": client_id,
            "price": plain(ZERO, spec.price_precision), "avgPrice": price_text, "origQty": qty_text,
            "executedQty": qty_text, "cumQuote": quote_text, "timeInForce": "GTC", "type": "MARKET",
            "reduceOnly": reduce_only, "closePosition": False, "side": side, "positionSide": position_side,
            "stopPrice": plain(ZERO, spec.price_precision), "workingType": "CONTRACT_PRICE", "priceProtect": False,
            "origType": "MARKET", "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER", "goodTillDate": 0,
            "time": now_ms, "updateTime": now_ms,
        }
        self.orders.append(order)
        self.trades.append({
            "buyer": side == "BUY", "commission": plain(fee, 8), "commissionAsset": "USDT",
            "id": self.next_trade_id, "maker": False, "orderId": order_id, "price": price_text,
            "qty": qty_text, "quoteQty": quote_text, "realizedPnl": plain(realized, 8),
            "side": side, "positionSide": position_side, "symbol": spec.symbol, "time": now_ms,
        })
        self.next_trade_id += 1
        return order


def quantity(spec: SymbolSpec, params: dict[str, str]) -> Decimal:
    """The order's ``quantity``, checked against the symbol's MARKET_LOT_SIZE."""
    raw = params.get("quantity") or ""
    if not raw:
        raise missing("quantity")
    if not re.fullmatch(r"-?[0-9]{1,20}(\.[0-9]{1,20})?", raw):
        raise ApiError(400, -1100, "Illegal characters found in parameter 'quantity'; "
                                   "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
    try:
        qty = Decimal(raw)
    except InvalidOperation:
        raise missing("quantity") from None
    if qty <= 0:
        raise ApiError(400, -4003, "Quantity less than or equal to zero.")
    if qty % spec.step:
        raise ApiError(400, -1111, "Precision is over the maximum defined for this asset.")
    if qty < Decimal(spec.min_qty):
        raise ApiError(400, -4004, "Quantity less than min quantity.")
    if qty > Decimal(spec.max_market_qty):
        raise ApiError(400, -4005, "Quantity greater than max quantity.")
    return qty


def new_order_reply(order: dict[str, Any], resp_type: str) -> dict[str, Any]:
    """The ``POST /fapi/v1/order`` body: RESULT shows the fill; ACK (the default) shows NEW."""
    reply = {k: v for k, v in order.items() if k != "time"}
    reply["cumQty"] = order["executedQty"]
    if resp_type == "ACK":
        reply.update(status="NEW", executedQty="0", cumQty="0", cumQuote="0.00000", avgPrice="0.00")
    return reply
