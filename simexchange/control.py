"""The control API tests and demos steer the exchange with: ``/_sim/<name>``, JSON in and out,
no authentication (the exchange listens on loopback only).

Which symbol a control acts on:

- replay controls (``pause``, ``resume``, ``speed``, ``step``, ``burst``, ``stall``, and ``drop``
  of market connections) act on every symbol, or only on ``"symbol"`` when the body names one;
- ``set_position``, ``external_order`` and the order faults (``fail_orders``, ``reject_orders``,
  ``order_latency``) act on ``"symbol"``, default the first listed symbol;
- the rest belongs to the account or the whole exchange (``hedge_mode``, ``time_skew``,
  ``delay``, ``rate_limit``, ``charged_fee_rate``, ``expire_listen_key``, ``max_conn_age``, the
  request log, the public-history faults of ``public.py``).

``GET /_sim/state`` (``?symbol=S``) shows one symbol's replay and position (default the first)
beside the account's wallet and counters, and every symbol's under ``"symbols"``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .account import ZERO, Account
from .faults import Faults
from .wire import plain, short

if TYPE_CHECKING:
    from .server import Listing
    from .streams import StreamHub
    from .user import UserHub

log = logging.getLogger("simexchange")


class ControlError(Exception):
    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


def count(body: dict, key: str = "count") -> int:
    """A count in a control body (default 1), 0 … 1,000,000."""
    n = int(body.get(key, 1))
    if not 0 <= n <= 1_000_000:
        raise ValueError(f"{key} must be between 0 and 1000000")
    return n


def flag(body: dict, key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


class ControlApi:
    """SimExchange's ``/_sim/...`` actions (a mixin): ``_sim_<method>_<name>(body)``."""

    listings: dict[str, Listing]
    account: Account
    hub: StreamHub
    users: UserHub
    faults: Faults
    requests: deque[dict[str, Any]]
    if TYPE_CHECKING:  # from server.SimExchange and rest.RestApi
        def server_time_ms(self) -> int: ...
        def _position_payload(self, listing: Listing, side: str) -> dict[str, Any]: ...
        def _user_events(self, listing: Listing, order: dict[str, Any], side: str,
                         order_type: str = "MARKET") -> None: ...

    # -- which symbols ---------------------------------------------------------------------
    def _control_listing(self, symbol: Any) -> Listing:
        """The listing a control names (``None``: the first listed)."""
        if symbol is None:
            return next(iter(self.listings.values()))
        listing = self.listings.get(str(symbol).upper())
        if listing is None:
            raise ControlError(f"unknown symbol {symbol!r}; listed: {', '.join(self.listings)}")
        return listing

    def _control_targets(self, body: dict) -> list[Listing]:
        """Every listing, or the one ``body["symbol"]`` names."""
        if body.get("symbol") is None:
            return list(self.listings.values())
        return [self._control_listing(body["symbol"])]

    # -- state -----------------------------------------------------------------------------
    def _symbol_state(self, listing: Listing) -> dict[str, Any]:
        m, replay, spec = listing.market, listing.replay, listing.spec
        positions = {side: {"amt": plain(p.amt, spec.quantity_precision), "entry_price": short(p.entry)}
                     for side, p in self.account.positions[listing.symbol].items()}
        return {
            "symbol": listing.symbol, "clock_ms": m.clock_ms, "price": spec.price_text(m.last_price),
            "cursor": m.cursor, "tick_in_candle": m.tick_in_candle, "start_index": m.start_index,
            "candles": len(m.candles), "source_interval_ms": m.source_ms, "ticks_emitted": m.ticks_emitted,
            "finished": m.finished, "paused": replay.paused, "speed": replay.speed,
            "stalled": listing.symbol in self.hub.stalled_symbols, "burst": replay.burst,
            "leverage": self.account.leverage[listing.symbol], "position": positions["BOTH"], "positions": positions,
            "order_latency_ms": listing.faults.order_latency_ms,
        }

    def state(self, symbol: str | None = None) -> dict[str, Any]:
        """The replay and account at a glance (``GET /_sim/state``): ``symbol``'s replay and
        position (default the first symbol's), the account, every symbol under ``"symbols"``."""
        acct = self.account
        return {
            **self._symbol_state(self._control_listing(symbol)),
            "ws_clients": len(self.hub.clients), "dropped_slow_clients": self.hub.dropped_slow,
            "max_conn_age_s": self.hub.max_conn_age_s, "time_skew_ms": self.faults.skew_ms,
            "hedge_mode": acct.hedge_mode, "balance": plain(acct.wallet, 8), "orders": len(acct.orders),
            "trades": len(acct.trades), "requests": len(self.requests),
            "symbols": {s: self._symbol_state(listing) for s, listing in self.listings.items()},
        } | self.users.state()

    # -- dispatch --------------------------------------------------------------------------
    async def _control(self, request: web.Request) -> web.Response:
        body: Any = dict(request.query) if request.method == "GET" else {}
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
        except ControlError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            return web.json_response({"error": f"bad request: {type(exc).__name__}: {exc}"}, status=400)
        return web.json_response(result)

    # -- reading -----------------------------------------------------------------------------
    def _sim_get_state(self, body: dict) -> dict:
        return self.state(body.get("symbol"))

    def _sim_get_requests(self, body: dict) -> list:
        return list(self.requests)

    def _sim_get_orders(self, body: dict) -> list:
        """Every order of the account, or of ``?symbol=S``."""
        if body.get("symbol") is None:
            return self.account.orders
        symbol = self._control_listing(body["symbol"]).symbol
        return [o for o in self.account.orders if o["symbol"] == symbol]

    def _sim_post_reset_log(self, body: dict) -> dict:
        self.requests.clear()
        return {"ok": True}

    # -- the replay: every symbol, or body["symbol"] -----------------------------------------
    def _sim_post_pause(self, body: dict) -> dict:
        for listing in self._control_targets(body):
            listing.replay.pause()
        return self.state(body.get("symbol"))

    def _sim_post_resume(self, body: dict) -> dict:
        for listing in self._control_targets(body):
            listing.replay.resume()
        return self.state(body.get("symbol"))

    def _sim_post_speed(self, body: dict) -> dict:
        speed = float(body["speed"])
        for listing in self._control_targets(body):
            listing.replay.set_speed(speed)
        return self.state(body.get("symbol"))

    async def _sim_post_step(self, body: dict) -> dict:
        """``ticks`` ticks of each symbol (or of ``symbol``), taking turns one tick at a time."""
        targets = self._control_targets(body)
        if not all(listing.replay.paused for listing in targets):
            raise ControlError("pause the replay first (POST /_sim/pause)", 409)
        ticks = count(body, "ticks")
        emitted = {listing.symbol: 0 for listing in targets}
        playing = targets
        for _ in range(ticks):
            playing = [listing for listing in playing if await listing.replay.emit(1)]
            if not playing:
                break
            for listing in playing:
                emitted[listing.symbol] += 1
        await self.hub.wait_sent()
        return {"emitted": sum(emitted.values()), "emitted_by_symbol": emitted, **self.state(body.get("symbol"))}

    def _sim_post_burst(self, body: dict) -> dict:
        """Replay in bursts: ``ticks`` back to back every ``every_ms`` (0 ticks: back to --speed pacing)."""
        ticks, every = int(body.get("ticks", 0)), int(body.get("every_ms", 1000))
        if not 0 <= ticks <= 100_000 or not 1 <= every <= 60_000:
            raise ValueError("ticks must be 0..100000 and every_ms 1..60000")
        for listing in self._control_targets(body):
            listing.replay.set_burst(ticks, every)
        return self.state(body.get("symbol"))

    def _sim_post_stall(self, body: dict) -> dict:
        """Market connections stay open but the symbols' streams send nothing (``on``: true/false)."""
        on = flag(body, "on")
        for listing in self._control_targets(body):
            if on:
                self.hub.stalled_symbols.add(listing.symbol)
            else:
                self.hub.stalled_symbols.discard(listing.symbol)
        return self.state(body.get("symbol"))

    def _sim_post_drop(self, body: dict) -> dict:
        """Cut connections like a network failure: ``route`` market (default), private or all;
        ``symbol``: only the market connections carrying one of its streams."""
        route = body.get("route", "market")
        if route not in ("market", "private", "all"):
            raise ValueError("route must be 'market', 'private' or 'all'")
        symbol = None
        if body.get("symbol") is not None:
            if route != "market":
                raise ValueError("'symbol' selects market connections only: the user-data stream is the account's")
            symbol = self._control_listing(body["symbol"]).symbol
        dropped = self.hub.drop(symbol) if route in ("market", "all") else 0
        if route in ("private", "all"):
            dropped += self.users.drop_all()
        return {"dropped": dropped}

    def _sim_post_max_conn_age(self, body: dict) -> dict:
        seconds = body.get("seconds")
        if seconds is not None and not float(seconds) > 0:
            raise ValueError("seconds must be > 0 (or null to switch it off)")
        self.hub.max_conn_age_s = None if seconds is None else float(seconds)
        return self.state()

    # -- order faults: body["symbol"], default the first -------------------------------------
    def _sim_post_fail_orders(self, body: dict) -> dict:
        mode = body.get("mode", "after")
        if mode not in ("after", "before"):
            raise ValueError("mode must be 'after' (executed, reply lost) or 'before' (not executed)")
        code = body.get("code")
        listing = self._control_listing(body.get("symbol"))
        f = listing.faults
        f.fail_orders, f.fail_mode = count(body), mode
        f.fail_status, f.fail_code = int(body.get("status", 503)), None if code is None else int(code)
        return {"fail_orders": f.fail_orders, "mode": mode, "status": f.fail_status, "code": f.fail_code,
                "symbol": listing.symbol}

    def _sim_post_reject_orders(self, body: dict) -> dict:
        listing = self._control_listing(body.get("symbol"))
        f = listing.faults
        f.reject_orders = count(body)
        msg = str(body.get("msg", "Margin is insufficient."))
        f.reject = (int(body.get("status", 400)), int(body.get("code", -2019)), msg)
        return {"reject_orders": f.reject_orders, "status": f.reject[0], "code": f.reject[1], "msg": f.reject[2],
                "symbol": listing.symbol}

    def _sim_post_order_latency(self, body: dict) -> dict:
        ms = int(body["ms"])
        if not 0 <= ms <= 60_000:
            raise ValueError("ms must be between 0 and 60000")
        listing = self._control_listing(body.get("symbol"))
        listing.faults.order_latency_ms = ms
        return self.state(listing.symbol)

    # -- request faults of the whole exchange ------------------------------------------------
    def _sim_post_delay(self, body: dict) -> dict:
        ms = int(body["ms"])
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self.faults.delay_ms, self.faults.delay_count = ms, count(body)
        return {"delay_ms": ms, "count": self.faults.delay_count}

    def _sim_post_rate_limit(self, body: dict) -> dict:
        status = int(body.get("status", 429))
        if status not in (429, 418):
            raise ValueError("status must be 429 or 418")
        f = self.faults
        f.rate_count, f.rate_status, f.retry_after_s = count(body), status, int(body.get("retry_after", 1))
        path = body.get("path")
        if path is not None and not (isinstance(path, str) and path.startswith("/fapi/")):
            raise ValueError("path must be a REST path such as '/fapi/v1/order'")
        f.rate_path = path
        return {"count": f.rate_count, "status": status, "retry_after": f.retry_after_s, "path": path}

    def _sim_post_time_skew(self, body: dict) -> dict:
        self.faults.skew_ms = int(body["ms"])
        return self.state()

    # -- the account -------------------------------------------------------------------------
    def _sim_post_hedge_mode(self, body: dict) -> dict:
        self.account.hedge_mode = flag(body, "on")
        return self.state()

    def _sim_post_set_position(self, body: dict) -> dict:
        """Set a position by other means than an order (``reason``: ADJUSTMENT, ADL …): ``amt``
        signed, optional ``entry_price`` (default the last price), ``position_side``, ``symbol``."""
        listing = self._control_listing(body.get("symbol"))
        side = body.get("position_side", "BOTH")
        book = self.account.positions[listing.symbol]
        if side not in book:
            raise ValueError("position_side must be BOTH, LONG or SHORT")
        pos = book[side]
        pos.amt = Decimal(str(body["amt"]))
        entry = body.get("entry_price")
        pos.entry = ZERO if pos.amt == 0 else (listing.price() if entry is None else Decimal(str(entry)))
        pos.update_ms = self.server_time_ms()
        reason = str(body.get("reason", "ADJUSTMENT"))
        self.users.position_event(self._position_payload(listing, side), plain(self.account.wallet, 8), reason)
        return self.state(listing.symbol)

    def _sim_post_external_order(self, body: dict) -> dict:
        """A MARKET order placed outside the bot (the Binance app, a liquidation with client id
        ``autoclose-…``, ADL ``adl_autoclose``): it fills at the symbol's last price and the
        user-data stream reports it. Body: ``side`` BUY|SELL, ``qty`` (default: the whole
        position, closing it), optional ``client_id``, ``reduce_only``, ``symbol``."""
        listing = self._control_listing(body.get("symbol"))
        acct = self.account
        pos = acct.positions[listing.symbol]["BOTH"]
        side = body.get("side") or ("SELL" if pos.amt > 0 else "BUY")
        if side not in ("BUY", "SELL"):
            raise ValueError("side must be BUY or SELL")
        qty = Decimal(str(body["qty"])) if body.get("qty") is not None else abs(pos.amt)
        if qty <= 0:
            raise ControlError("nothing to do: no position and no qty", 409)
        client_id = str(body.get("client_id") or f"web_{secrets.token_hex(8)}")
        reduce_only = bool(body.get("reduce_only", body.get("qty") is None))
        order = acct.fill(listing.spec, side, qty, listing.price(), "BOTH", reduce_only, client_id,
                          self.server_time_ms())
        self._user_events(listing, order, "BOTH", "LIQUIDATION" if client_id.startswith("autoclose-") else "MARKET")
        log.info("external order %d: %s %s %s (%s)", order["orderId"], side, qty, listing.symbol, client_id)
        return {"order": order, **self.state(listing.symbol)}

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
