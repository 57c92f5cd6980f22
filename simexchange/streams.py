"""The market streams: one hub fans every symbol's kline and aggTrade messages out to the
WebSocket clients on Binance's routed paths.

``/market/ws/<stream>`` and ``/market/stream?streams=a/b`` carry our streams (a combined
connection may mix symbols: ``btcusdt@aggTrade/ethusdt@aggTrade``); ``/public`` connects but
carries none of them; the unrouted ``/ws…`` and ``/stream`` connect and stay silent, as on
Binance since 2026-04-23. SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS work on an open
connection. A stream of a symbol that is not listed stays silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .market import Market
from .wire import close_quietly, pump, websocket_or_400

log = logging.getLogger("simexchange.market")


@dataclass(eq=False)
class StreamClient:
    """One WebSocket connection. ``silent`` ones (unrouted paths) never get anything."""

    ws: Any
    streams: set[str]
    combined: bool
    silent: bool = False
    route: str = "market"   # "market", "public" or "private": only /market carries our streams
    transport: Any = None
    queue_size: int = 10_000
    opened: float = field(default_factory=time.monotonic)
    queue: asyncio.Queue = field(init=False)
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.queue_size)

    def abort(self) -> None:
        """Cut the TCP connection without a close frame, like a network failure."""
        if self.transport is not None:
            self.transport.abort()


def _stream_symbol(name: str) -> str:
    """``"btcusdt@kline_15m"`` -> ``"BTCUSDT"``."""
    return name.split("@", 1)[0].upper()


class StreamHub:
    """All WebSocket clients of every listed symbol's market. Slow clients are dropped, never
    waited for (except at speed 0, where ``wait_for_room`` gives them time: there is no real
    time to keep). A stalled symbol (``stalled_symbols``) keeps its connections open but sends
    nothing."""

    def __init__(self, markets: Market | Iterable[Market], queue_size: int = 10_000) -> None:
        listed = [markets] if isinstance(markets, Market) else list(markets)
        self.markets: dict[str, Market] = {m.symbol: m for m in listed}
        self.queue_size = queue_size
        self.clients: set[StreamClient] = set()
        self.stalled_symbols: set[str] = set()
        self.max_conn_age_s: float | None = None
        self.dropped_slow = 0
        self._closing: set[asyncio.Future] = set()  # close handshakes in flight (referenced so they finish)

    def all_stalled(self) -> bool:
        return self.stalled_symbols >= self.markets.keys()

    def wanted(self, symbol: str | None = None) -> frozenset[str]:
        """The streams some client wants; nothing for ``symbol`` while it is stalled."""
        if self.all_stalled() or symbol in self.stalled_symbols:
            return frozenset()
        return frozenset(s for c in self.clients if not c.silent for s in c.streams)

    def subscribe(self, client: StreamClient, streams: list[str]) -> None:
        if client.route != "market":
            return  # kline/aggTrade are /market streams; elsewhere Binance sends nothing for them
        for name in streams:
            client.streams.add(name)
            market = self.markets.get(_stream_symbol(name))
            length = None if market is None else market.stream_interval(name)
            if length is not None:
                market.track(length)
            elif market is None:
                log.warning("stream %r is not of a listed symbol (%s); it stays silent", name, ", ".join(self.markets))
            elif name != market.trade_stream:
                log.warning("stream %r cannot be served from this data (%d ms candles); it stays silent",
                            name, market.source_ms)

    def publish(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        if self.stalled_symbols:
            messages = [m for m in messages if _stream_symbol(m[0]) not in self.stalled_symbols]
        if not messages:
            return
        texts = [(name, json.dumps(payload, separators=(",", ":"))) for name, payload in messages]
        for client in list(self.clients):
            if client.silent:
                continue
            for name, raw in texts:
                if name not in client.streams:
                    continue
                text = f'{{"stream":"{name}","data":{raw}}}' if client.combined else raw
                try:
                    client.queue.put_nowait(text)
                except asyncio.QueueFull:
                    self.dropped_slow += 1
                    log.warning("dropping a slow WebSocket client: %d messages queued", client.queue.qsize())
                    self.clients.discard(client)
                    client.abort()
                    break

    async def wait_for_room(self, timeout_s: float = 10.0) -> None:
        """Speed 0 only: wait while a client's queue is over half full; drop it after ``timeout_s``."""
        for client in list(self.clients):
            if client.queue.qsize() <= self.queue_size // 2:
                continue
            client.drained.clear()
            try:
                await asyncio.wait_for(client.drained.wait(), timeout_s)
            except TimeoutError:
                log.warning("dropping a WebSocket client that stopped reading")
                self.clients.discard(client)
                client.abort()

    async def wait_sent(self, timeout_s: float = 5.0) -> None:
        """Wait until every client's queue is empty (messages handed to the socket)."""
        deadline = time.monotonic() + timeout_s
        while any(c.queue.qsize() for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def drop(self, symbol: str | None = None) -> int:
        """Cut connections abruptly (no close frame): every one, or those carrying a stream of
        ``symbol``. Returns how many."""
        prefix = None if symbol is None else symbol.lower() + "@"
        victims = [c for c in self.clients if prefix is None or any(s.startswith(prefix) for s in c.streams)]
        for client in victims:
            client.abort()
            self.clients.discard(client)
        return len(victims)

    def drop_all(self) -> int:
        return self.drop()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """WebSocket endpoint: routed ``/market|/public|/private`` + ``/ws/<streams>`` or
        ``/stream?streams=a/b``; the unrouted ``/ws...`` and ``/stream`` connect and stay silent."""
        parts = [p for p in request.path.split("/") if p]
        route = parts.pop(0) if parts and parts[0] in ("market", "public", "private") else ""
        combined = bool(parts) and parts[0] == "stream"
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            streams = parts[1:]
        ws = websocket_or_400(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        client = StreamClient(ws, set(), combined, silent=not route, route=route or "none",
                              transport=request.transport, queue_size=self.queue_size)
        self.subscribe(client, streams)
        self.clients.add(client)  # before the handshake completes, so no tick can slip past a new client
        sender = None
        try:
            await ws.prepare(request)
            sender = asyncio.ensure_future(self.sender(client))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    reply = self._on_client_message(client, msg.data)
                    if reply is not None and not client.silent and not self.all_stalled():
                        try:
                            client.queue.put_nowait(json.dumps(reply))
                        except asyncio.QueueFull:
                            pass
        finally:
            self.clients.discard(client)
            if sender is not None:
                sender.cancel()
        return ws

    def _on_client_message(self, client: StreamClient, text: str) -> dict[str, Any] | None:
        """Answer SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS; ignore anything else."""
        try:
            req = json.loads(text)
        except ValueError:
            return None
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return None
        method, params, req_id = req["method"].upper(), req.get("params") or [], req.get("id")
        names = [p for p in params if isinstance(p, str)] if isinstance(params, list) else []
        if method == "SUBSCRIBE":
            self.subscribe(client, names)
        elif method == "UNSUBSCRIBE":
            client.streams.difference_update(names)
        elif method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(client.streams), "id": req_id}
        elif method not in ("SET_PROPERTY", "GET_PROPERTY"):
            return None
        return {"result": None, "id": req_id}

    async def sender(self, client: StreamClient) -> None:
        """Move the client's queued messages to its socket (one task per client)."""
        await pump(client.ws, client.queue, client.drained, self.queue_size // 4)

    async def expire_old(self) -> None:
        """Close connections older than ``max_conn_age_s`` with 1001, like Binance's 24 h cut."""
        while True:
            await asyncio.sleep(0.05)
            age = self.max_conn_age_s
            if age is None:
                continue
            now = time.monotonic()
            for client in [c for c in self.clients if now - c.opened >= age]:
                self.clients.discard(client)
                task = asyncio.ensure_future(close_quietly(client.ws, 1001, b"connection lifetime exceeded"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
