"""The user-data stream of the one simulated account: the listenKey and ``/private``.

Binance's rules (USDⓈ-M user data streams): ``POST /fapi/v1/listenKey`` (API key, no
signature) returns the account's active key — the same one for every caller while it is
valid — and extends it 60 minutes; ``PUT`` extends it, or answers -1125 when it does not
exist; ``DELETE`` closes it. The stream lives at ``/private/ws?listenKey=<key>`` (also
``/private/ws/<key>``) and pushes ``ORDER_TRADE_UPDATE`` and ``ACCOUNT_UPDATE`` in Binance's
exact shapes; when the key expires it sends ``listenKeyExpired`` and nothing more.

The key and the stream belong to the account, not to a symbol: every connection gets the
events of every symbol (``o.s`` / ``a.P[].s`` say which), so a bot trading one symbol must
filter them.

``UserHub`` is plain bookkeeping plus the WebSocket fan-out; the exchange calls
``order_events`` after every fill (the bot's orders and "outside" ones alike) and
``position_event`` when a position changes by other means (ADL, an admin adjustment).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .wire import pump, websocket_or_400

log = logging.getLogger("simexchange.user")

KEY_TTL_S = 3600.0


@dataclass(eq=False)
class UserClient:
    ws: web.WebSocketResponse
    key: str
    transport: Any = None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(10_000))
    silenced: bool = False  # after listenKeyExpired: connected, but nothing more arrives

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class UserHub:
    """The account's listenKey and the clients of its user-data stream."""

    def __init__(self, clock_ms: Any) -> None:
        self.clock_ms = clock_ms           # the exchange's clock (server time, ms)
        self.key: str | None = None
        self.expires_mono = 0.0
        self.clients: set[UserClient] = set()
        self.created = 0                   # keys created (POST returning a new key)
        self.keepalives = 0
        self.deleted = 0
        self.sent = 0

    # -- REST ---------------------------------------------------------------------------
    def valid(self, key: str | None) -> bool:
        return key is not None and key == self.key and time.monotonic() < self.expires_mono

    def create(self) -> dict[str, str]:
        if not self.valid(self.key):
            self.key = secrets.token_urlsafe(48)[:64]
            self.created += 1
        self.expires_mono = time.monotonic() + KEY_TTL_S
        return {"listenKey": self.key}

    def keepalive(self, key: str | None) -> tuple[int, dict[str, Any]]:
        current = key or self.key  # Binance ignores the parameter: the account has one key
        if not self.valid(current):
            return 400, {"code": -1125, "msg": "This listenKey does not exist."}
        self.expires_mono = time.monotonic() + KEY_TTL_S
        self.keepalives += 1
        return 200, {}

    def delete(self, key: str | None) -> tuple[int, dict[str, Any]]:
        if not self.valid(key or self.key):
            return 400, {"code": -1125, "msg": "This listenKey does not exist."}
        self.deleted += 1
        self.key = None
        for client in list(self.clients):
            self.clients.discard(client)
            asyncio.ensure_future(client.ws.close(code=1000, message=b"listenKey closed"))
        return 200, {}

    def expire(self, notify: bool = True) -> int:
        """The key expires now: every client gets ``listenKeyExpired`` (unless not ``notify``)
        and then nothing more; a keep-alive gets -1125."""
        key, self.key = self.key, None
        n = 0
        for client in self.clients:
            if not client.silenced:
                if notify:
                    self._queue(client, {"e": "listenKeyExpired", "E": str(self.clock_ms()), "listenKey": key})
                client.silenced = True
                n += 1
        return n

    # -- events -------------------------------------------------------------------------
    def publish(self, event: dict[str, Any]) -> None:
        for client in list(self.clients):
            if not client.silenced:
                self._queue(client, event)

    def _queue(self, client: UserClient, event: dict[str, Any]) -> None:
        try:
            client.queue.put_nowait(json.dumps(event, separators=(",", ":")))
            self.sent += 1
        except asyncio.QueueFull:
            self.clients.discard(client)
            client.abort()

    def order_events(self, order: dict[str, Any], trade: dict[str, Any], position: dict[str, Any],
                     wallet: str, reason: str = "ORDER", order_type: str = "MARKET") -> None:
        """NEW, then TRADE (FILLED), then ACCOUNT_UPDATE — for one MARKET order filled in full."""
        t = int(order["updateTime"])
        base = {
            "s": order["symbol"], "c": order["clientOrderId"], "S": order["side"], "o": order_type, "f": "GTC",
            "q": order["origQty"], "p": "0", "ap": "0", "sp": "0", "x": "NEW", "X": "NEW", "i": order["orderId"],
            "l": "0", "z": "0", "L": "0", "T": t, "t": 0, "b": "0", "a": "0", "m": False,
            "R": bool(order["reduceOnly"]), "wt": "CONTRACT_PRICE", "ot": order_type, "ps": order["positionSide"],
            "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0, "V": "EXPIRE_TAKER", "pm": "NONE", "gtd": 0,
            "er": "0",
        }
        self.publish({"e": "ORDER_TRADE_UPDATE", "E": t, "T": t, "o": base})
        filled = dict(base, x="TRADE", X="FILLED", ap=order["avgPrice"], l=order["executedQty"],
                      z=order["executedQty"], L=trade["price"], N="USDT", n=trade["commission"], t=trade["id"],
                      rp=trade["realizedPnl"])
        self.publish({"e": "ORDER_TRADE_UPDATE", "E": t + 1, "T": t, "o": filled})
        self.position_event(position, wallet, reason, t)

    def position_event(self, position: dict[str, Any], wallet: str, reason: str, t: int | None = None) -> None:
        """``ACCOUNT_UPDATE`` with the USDT balance and one position (``a.m`` = ``reason``)."""
        t = self.clock_ms() if t is None else t
        self.publish({"e": "ACCOUNT_UPDATE", "E": t + 1, "T": t, "a": {
            "m": reason, "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": "0"}], "P": [position]}})

    # -- WebSocket ----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``/private/ws?listenKey=K`` or ``/private/ws/K``."""
        key = request.query.get("listenKey") or request.match_info.get("key")
        ws = websocket_or_400(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        if not self.valid(key):
            return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
        client = UserClient(ws, key or "", request.transport)
        self.clients.add(client)
        sender = None
        try:
            await ws.prepare(request)
            sender = asyncio.ensure_future(pump(client.ws, client.queue))
            async for _msg in ws:
                pass  # the user-data stream takes no requests
        finally:
            self.clients.discard(client)
            if sender is not None:
                sender.cancel()
        return ws

    def drop_all(self) -> int:
        n = len(self.clients)
        for client in list(self.clients):
            client.abort()
        self.clients.clear()
        return n

    def state(self) -> dict[str, Any]:
        return {"listen_key_valid": self.valid(self.key), "user_clients": len(self.clients),
                "listen_keys_created": self.created, "listen_key_keepalives": self.keepalives,
                "listen_keys_deleted": self.deleted, "user_events_sent": self.sent}
