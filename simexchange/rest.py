"""The REST API under ``/fapi`` (and the two spot paths python-binance pings): the route table,
authentication, and every endpoint's answer, in Binance's shapes (docs/exchange.md).

Per symbol: klines, ticker, orders, trades, commission rate, leverage, positionRisk (without
``symbol``: every listed symbol; v3 lists only symbols with a position). For the account:
balance and account (margin over every symbol), position mode, the listenKey.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from history import INTERVAL_MS

from .account import MAKER_RATE, TAKER_RATE, Account, new_order_reply
from .catalogue import exchange_info, max_notional
from .faults import Faults, OrderFaults
from .public import klines_weight
from .user import UserHub
from .wire import (
    TIMEOUT_1007,
    UNKNOWN_503,
    ApiError,
    RateLimited,
    int_param,
    missing,
    plain,
    short,
    split_signature,
    verify_signature,
)

if TYPE_CHECKING:
    from .server import Listing

log = logging.getLogger("simexchange")
RAW = web.RequestKey("simexchange_raw", tuple)  # (raw query, raw body, params) of a REST request


class RestApi:
    """SimExchange's REST endpoints (a mixin). ``fn(params) -> JSON`` behind ``_rest_handler``."""

    listings: dict[str, Listing]
    account: Account
    users: UserHub
    faults: Faults
    api_key: str
    _secret: str
    if TYPE_CHECKING:  # from server.SimExchange and public.PublicHistory
        def server_time_ms(self) -> int: ...
        def _public(self, fn: Any, weight_of: Any) -> Any: ...
        def _funding_rate(self, params: dict[str, str]) -> list[dict[str, Any]]: ...

    def _rest_routes(self) -> list[tuple[str, str, Any, str]]:
        """(method, path, handler, auth): auth "none", "signed" or "key" (API key, no signature)."""
        public = {
            ("GET", "/fapi/v1/ping"): lambda p: {}, ("GET", "/api/v3/ping"): lambda p: {},
            ("GET", "/fapi/v1/time"): self._time, ("GET", "/api/v3/time"): self._time,
            ("GET", "/fapi/v1/exchangeInfo"): lambda p: exchange_info([x.spec for x in self.listings.values()],
                                                                      self.server_time_ms()),
            ("GET", "/fapi/v1/klines"): self._public(self._klines, klines_weight),
            ("GET", "/fapi/v1/ticker/price"): self._ticker_price, ("GET", "/fapi/v2/ticker/price"): self._ticker_price,
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
            ("PUT", "/fapi/v1/listenKey"): lambda p: _listen_key_answer(self.users.keepalive(p.get("listenKey"))),
            ("DELETE", "/fapi/v1/listenKey"): lambda p: _listen_key_answer(self.users.delete(p.get("listenKey"))),
        }
        return [(method, path, fn, auth) for table, auth in ((public, "none"), (signed, "signed"), (keyed, "key"))
                for (method, path), fn in table.items()]

    def _rest_handler(self, fn: Any, auth: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw_query, raw_body, params = request[RAW]
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

    # -- authentication ------------------------------------------------------------------
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
        raise RateLimited(f.rate_status, msg, f.retry_after_s)

    def _check_api_key(self, key: str | None) -> None:
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")

    def _authenticate(self, key: str | None, raw_query: str, raw_body: str, params: dict[str, str]) -> None:
        """API key, then signature, then the recvWindow rule (Binance's signed-endpoint rules)."""
        self._check_api_key(key)
        payload, signature = split_signature(raw_query, raw_body)
        if not signature:
            raise missing("signature")
        if not verify_signature(self._secret, payload, signature):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        timestamp = int_param(params, "timestamp")
        if timestamp is None:
            raise missing("timestamp")
        recv_window = int_param(params, "recvWindow", 5000)
        now = self.server_time_ms()
        if timestamp >= now + 1000:
            raise ApiError(400, -1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    # -- the symbol of a request ---------------------------------------------------------
    def _listing(self, params: dict[str, str]) -> Listing:
        """The listed symbol ``symbol`` names: -1102 when absent, -1121 when not listed."""
        symbol = params.get("symbol")
        if not symbol:
            raise missing("symbol")
        listing = self.listings.get(symbol)
        if listing is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return listing

    def _listings(self, params: dict[str, str]) -> list[Listing]:
        """The one ``symbol`` names, or every listed symbol when it is absent."""
        return [self._listing(params)] if params.get("symbol") else list(self.listings.values())

    def _marks(self) -> dict[str, Decimal]:
        return {symbol: listing.price() for symbol, listing in self.listings.items()}

    # -- public market data --------------------------------------------------------------
    def _time(self, params: dict[str, str]) -> dict[str, Any]:
        return {"serverTime": self.server_time_ms()}

    def _ticker_price(self, params: dict[str, str]) -> Any:
        rows = [{"symbol": x.symbol, "price": x.spec.price_text(x.market.last_price), "time": self.server_time_ms()}
                for x in self._listings(params)]
        return rows[0] if params.get("symbol") else rows

    def _klines(self, params: dict[str, str]) -> list[list[Any]]:
        market = self._listing(params).market
        name = params.get("interval")
        if not name:
            raise missing("interval")
        length = INTERVAL_MS.get(name)
        if length is None or not market.supports(length):  # finer than the data: cannot be served
            raise ApiError(400, -1120, "Invalid interval.")
        limit = int_param(params, "limit", 500)
        if not 1 <= limit <= 1500:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise ApiError(400, -1023, "Start time is greater than end time.")
        return market.kline_rows(length, start, end, limit)

    # -- orders --------------------------------------------------------------------------
    def _order_faults(self, params: dict[str, str]) -> OrderFaults:
        """The faults of the order's symbol; of the first symbol when it names none that is listed."""
        listing = self.listings.get(params.get("symbol") or "") or next(iter(self.listings.values()))
        return listing.faults

    async def _new_order(self, params: dict[str, str]) -> dict[str, Any]:
        f = self._order_faults(params)
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
        """Check and fill a MARKET order (``Account.place``); the user-data stream reports it."""
        listing = self._listing(params)
        order, resp_type = self.account.place(listing.spec, params, self._marks(), self.server_time_ms())
        self._user_events(listing, order, order["positionSide"])
        log.info("order %d: %s %s %s at %s (%s)", order["orderId"], order["side"], order["origQty"], listing.symbol,
                 order["avgPrice"], order["clientOrderId"])
        return new_order_reply(order, resp_type)

    def _find_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        symbol = self._listing(params).symbol
        order_id, client_id = int_param(params, "orderId"), params.get("origClientOrderId")
        if order_id is None and not client_id:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return [o for o in self.account.orders if o["symbol"] == symbol
                and (order_id is None or o["orderId"] == order_id)
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
        self._listings(params)  # checks a symbol that is given
        return []

    def _window(self, rows: list[dict[str, Any]], params: dict[str, str], id_key: str, from_key: str,
                time_key: str) -> list[dict[str, Any]]:
        """The symbol's rows, filtered by id / startTime / endTime, ``limit`` (default 500, max 1000)."""
        symbol = self._listing(params).symbol
        limit = min(max(int_param(params, "limit", 500), 1), 1000)
        first_id = int_param(params, from_key)
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        rows = [r for r in rows if r["symbol"] == symbol and (first_id is None or r[id_key] >= first_id)
                and (start is None or r[time_key] >= start) and (end is None or r[time_key] <= end)]
        return rows[:limit] if first_id is not None or start is not None else rows[-limit:]

    def _all_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return self._window(self.account.orders, params, "orderId", "orderId", "time")

    def _user_trades(self, params: dict[str, str]) -> list[dict[str, Any]]:
        order_id = int_param(params, "orderId")
        trades = [t for t in self.account.trades if order_id is None or t["orderId"] == order_id]
        return self._window(trades, params, "id", "fromId", "time")

    def _commission_rate(self, params: dict[str, str]) -> dict[str, Any]:
        return {"symbol": self._listing(params).symbol, "makerCommissionRate": str(MAKER_RATE),
                "takerCommissionRate": str(TAKER_RATE), "rpiCommissionRate": "0"}

    # -- account -------------------------------------------------------------------------
    def _position_rows(self, listing: Listing, version: int) -> list[dict[str, Any]]:
        acct, spec, mark = self.account, listing.spec, listing.price()
        leverage = acct.leverage[listing.symbol]
        rows = []
        for side in acct.sides():
            p = acct.positions[listing.symbol][side]
            notional = p.amt * mark
            fee_factor = 1 + TAKER_RATE if p.amt > 0 else 1 - TAKER_RATE
            row: dict[str, Any] = {
                "symbol": listing.symbol, "positionSide": side, "positionAmt": plain(p.amt, spec.quantity_precision),
                "entryPrice": short(p.entry), "breakEvenPrice": short(p.entry * fee_factor),
                "markPrice": plain(mark, 8), "unRealizedProfit": plain((mark - p.entry) * p.amt, 8),
                "liquidationPrice": "0", "isolatedMargin": "0.00000000", "notional": plain(notional, 8),
                "isolatedWallet": "0", "updateTime": p.update_ms}
            if version == 3:
                margin = plain(abs(notional) / leverage, 8)
                row.update(marginAsset="USDT", initialMargin=margin, maintMargin=plain(abs(notional) * 4 / 1000, 8),
                           positionInitialMargin=margin, openOrderInitialMargin="0", adl=0, bidNotional="0",
                           askNotional="0")
            else:
                row.update(leverage=str(leverage), maxNotionalValue=max_notional(leverage),
                           marginType="cross", isAutoAddMargin="false")
            rows.append(row)
        return rows

    def _position_risk(self, params: dict[str, str], version: int) -> list[dict[str, Any]]:
        acct, rows = self.account, []
        for listing in self._listings(params):
            book = acct.positions[listing.symbol]
            if version == 3 and all(book[s].amt == 0 for s in acct.sides()):
                continue  # v3 lists only symbols with a position (or open orders)
            rows += self._position_rows(listing, version)
        return rows

    def _usdt_asset(self) -> dict[str, Any]:
        acct, marks = self.account, self._marks()
        available = acct.available(marks)
        return {"accountAlias": "SgsRmYFzTiAu", "asset": "USDT", "balance": plain(acct.wallet, 8),
                "crossWalletBalance": plain(acct.wallet, 8), "crossUnPnl": plain(acct.upnl(marks), 8),
                "availableBalance": plain(available, 8), "maxWithdrawAmount": plain(min(available, acct.wallet), 8),
                "marginAvailable": True, "updateTime": self.server_time_ms()}

    def _balance(self, params: dict[str, str]) -> list[dict[str, Any]]:
        return [self._usdt_asset()]

    def _account_info(self, params: dict[str, str]) -> dict[str, Any]:
        acct, marks, asset = self.account, self._marks(), self._usdt_asset()
        margin = plain(acct.initial_margin(marks), 8)
        return {
            "feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True, "updateTime": 0,
            "multiAssetsMargin": False, "tradeGroupId": -1, "totalInitialMargin": margin,
            "totalMaintMargin": plain(acct.maint_margin(marks), 8),
            "totalWalletBalance": asset["balance"], "totalUnrealizedProfit": asset["crossUnPnl"],
            "totalMarginBalance": plain(acct.wallet + acct.upnl(marks), 8), "totalPositionInitialMargin": margin,
            "totalOpenOrderInitialMargin": "0.00000000", "totalCrossWalletBalance": asset["balance"],
            "totalCrossUnPnl": asset["crossUnPnl"], "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"], "assets": [asset],
            "positions": [{"symbol": r["symbol"], "positionSide": r["positionSide"], "positionAmt": r["positionAmt"],
                           "unrealizedProfit": r["unRealizedProfit"], "entryPrice": r["entryPrice"],
                           "leverage": r["leverage"], "isolated": False, "updateTime": r["updateTime"]}
                          for r in self._position_risk({}, 2)],
        }

    def _set_leverage(self, params: dict[str, str]) -> dict[str, Any]:
        symbol = self._listing(params).symbol
        leverage = int_param(params, "leverage")
        if leverage is None:
            raise missing("leverage")
        if not 1 <= leverage <= 125:
            raise ApiError(400, -4028, f"Leverage {leverage} is not valid")
        self.account.leverage[symbol] = leverage
        return {"leverage": leverage, "maxNotionalValue": max_notional(leverage), "symbol": symbol}

    def _symbol_config(self, params: dict[str, str]) -> list[dict[str, Any]]:
        rows = []
        for listing in self._listings(params):
            lev = self.account.leverage[listing.symbol]
            rows.append({"symbol": listing.symbol, "marginType": "CROSSED", "isAutoAddMargin": "false",
                         "leverage": lev, "maxNotionalValue": max_notional(lev)})
        return rows

    def _set_dual_side(self, params: dict[str, str]) -> dict[str, Any]:
        raw = (params.get("dualSidePosition") or "").lower()
        if raw not in ("true", "false"):
            raise missing("dualSidePosition")
        if (raw == "true") == self.account.hedge_mode:
            raise ApiError(400, -4059, "No need to change position side.")
        if self.account.has_position():  # position mode is the account's: any symbol's position blocks it
            raise ApiError(400, -4068, "Position side cannot be changed if there exists position.")
        self.account.hedge_mode = raw == "true"
        return {"code": 200, "msg": "success"}

    # -- user-data events ----------------------------------------------------------------
    def _position_payload(self, listing: Listing, side: str) -> dict[str, Any]:
        p, mark = self.account.positions[listing.symbol][side], listing.price()
        return {"s": listing.symbol, "pa": plain(p.amt, listing.spec.quantity_precision), "ep": short(p.entry),
                "bep": short(p.entry), "cr": "0", "up": plain((mark - p.entry) * p.amt, 8), "mt": "cross",
                "iw": "0", "ps": side}

    def _user_events(self, listing: Listing, order: dict[str, Any], side: str, order_type: str = "MARKET") -> None:
        trade = self.account.trades[-1]
        self.users.order_events(order, trade, self._position_payload(listing, side), plain(self.account.wallet, 8),
                                order_type=order_type)


def _listen_key_answer(answer: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    status, body = answer
    if status != 200:
        raise ApiError(status, body["code"], body["msg"])
    return body
