"""The user-data stream: the account's orders, fills and position, pushed by the exchange.

Live trading only (paper mode opens none). ``POST /fapi/v1/listenKey`` gives a key valid 60
minutes; a ``PUT`` every ``keepalive_s`` (default 30 minutes) keeps it alive; an answer
-1125 ("This listenKey does not exist") or a ``listenKeyExpired`` event means the key is
gone: a new one is created and the stream reconnected. The connection is a plain
``websockets`` connection on the routed ``/private`` path, reconnected with capped backoff
and jitter like the market feed, and replaced before the exchange's 24 h cut.

A quiet account legitimately sends nothing for hours, so silence is not a stall here: a dead
connection is found by WebSocket ping/pong (no pong within 20 s closes it), and the bot's
periodic reconciliation covers a stream that stays connected but stops delivering.

The listenKey is per account: several bots on one account get the same key. A bot never
deletes it (another may be using it); an unused key simply expires after 60 minutes.
Events of other symbols are ignored here. The key is a credential for reading the
account's activity, so it never appears in a log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
import websockets

from exchange import Exchange, classify
from feed import backoff_delay

log = logging.getLogger("bollmin.userstream")

KEEPALIVE_S = 30 * 60.0


def private_url(ws_base: str, listen_key: str) -> str:
    """The routed user-data stream URL (Binance requires ``/private`` since 2026-04-23)."""
    return f"{ws_base.rstrip('/')}/private/ws?listenKey={listen_key}"


class UserStream:
    """``run()`` until ``stop()``; callbacks get the events of our symbol only."""

    def __init__(self, exchange: Exchange, ws_base: str, symbol: str, *,
                 on_order: Callable[[dict[str, Any]], None],
                 on_position: Callable[[float, int], None],
                 on_reconnected: Callable[[], None],
                 keepalive_s: float = KEEPALIVE_S, max_age_s: float = 23 * 3600.0) -> None:
        self.exchange, self.ws_base, self.symbol = exchange, ws_base, symbol.upper()
        self.on_order, self.on_position, self.on_reconnected = on_order, on_position, on_reconnected
        self.keepalive_s, self.max_age_s = keepalive_s, max_age_s
        self.connection = "starting"
        self.connects = 0
        self.events = 0
        self.last_event_wall = 0.0
        self._stopping = asyncio.Event()
        self._ws: Any = None

    def stop(self) -> None:
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            asyncio.ensure_future(ws.close())

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self.connection = "connecting" if self.connects == 0 else "reconnecting"
            delivered = False
            try:
                key = await self.exchange.create_listen_key()
                async with websockets.connect(private_url(self.ws_base, key), open_timeout=10, close_timeout=2,
                                              ping_interval=20, ping_timeout=20, max_size=2 ** 20) as ws:
                    self._ws = ws
                    self.connects += 1
                    self.connection = "connected"
                    log.info("user-data stream connected")
                    if self.connects > 1:
                        self.on_reconnected()  # events may have been missed while it was down
                    delivered = await self._read(ws, key)
            except asyncio.CancelledError:
                raise
            except websockets.InvalidStatus as exc:
                log.warning("user-data stream refused (HTTP %s)", exc.response.status_code)
            except Exception as exc:  # any failure of one connection: log, back off, reconnect
                log.warning("user-data stream error: %s", classify(exc) if _is_rest(exc) else type(exc).__name__)
            finally:
                self._ws = None
            if self._stopping.is_set():
                break
            attempt = 0 if delivered else attempt + 1
            self.connection = "reconnecting"
            delay = backoff_delay(attempt)
            log.info("reconnecting the user-data stream in %.1fs", delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                pass
        self.connection = "disconnected"

    async def _read(self, ws: Any, key: str) -> bool:
        """Read until the connection dies, ages out or the key expires; True if anything arrived."""
        why: list[str] = []
        helper = asyncio.get_running_loop().create_task(self._keepalive(ws, key, why))
        delivered = False
        try:
            while not self._stopping.is_set():
                try:
                    raw = await ws.recv()
                except websockets.ConnectionClosed:
                    if not why and not self._stopping.is_set():
                        log.warning("user-data stream closed by the server")
                    return delivered
                delivered = True
                self.events += 1
                self.last_event_wall = time.time()
                if self.handle(raw) == "expired":
                    log.warning("the user-data stream's listenKey expired: creating a new one")
                    await ws.close()
                    return delivered
            return delivered
        finally:
            helper.cancel()

    async def _keepalive(self, ws: Any, key: str, why: list[str]) -> None:
        """Keep the listenKey alive; close the connection when the key is gone or too old."""
        opened = time.monotonic()
        next_put = opened + self.keepalive_s
        while True:
            await asyncio.sleep(min(5.0, self.keepalive_s))
            now = time.monotonic()
            if now - opened >= self.max_age_s:
                why.append("age")
                log.info("user-data stream is %.1f h old: reconnecting before the exchange's 24 h cut",
                         self.max_age_s / 3600)
                await ws.close()
                return
            if now < next_put:
                continue
            try:
                await self.exchange.keepalive_listen_key(key)
                next_put = now + self.keepalive_s
            except Exception as exc:
                err = classify(exc)
                if err.code == -1125:
                    why.append("expired")
                    log.warning("the user-data stream's listenKey no longer exists: creating a new one")
                    await ws.close()
                    return
                log.warning("keeping the listenKey alive failed (%s); trying again in 60 s", err)
                next_put = now + 60.0

    def handle(self, raw: str | bytes) -> str | None:
        """Parse one message and pass our symbol's events on; "expired" for listenKeyExpired."""
        try:
            msg = orjson.loads(raw)
            data = msg.get("data", msg) if isinstance(msg, dict) and "stream" in msg else msg
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            event = data.get("e")
            if event == "ORDER_TRADE_UPDATE":
                o = data["o"]
                if o.get("s") == self.symbol:
                    self.on_order(o)
            elif event == "ACCOUNT_UPDATE":
                when = int(data.get("T") or data.get("E") or 0)
                for p in data.get("a", {}).get("P", []):
                    if p.get("s") == self.symbol and p.get("ps", "BOTH") == "BOTH":
                        qty = float(p["pa"])
                        if not math.isfinite(qty):
                            raise ValueError(f"position amount {str(p['pa'])[:20]!r}")
                        self.on_position(qty, when)
            elif event == "listenKeyExpired":
                return "expired"
            elif event == "MARGIN_CALL":
                log.warning("MARGIN CALL from the exchange: the account is close to liquidation")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("malformed user-data message dropped (%s: %s)", type(exc).__name__, str(exc)[:80])
        except Exception:  # a handler bug must not kill the stream
            log.exception("error handling a user-data event")
        return None


def _is_rest(exc: BaseException) -> bool:
    from binance.exceptions import BinanceAPIException

    return isinstance(exc, BinanceAPIException)


__all__ = ["UserStream", "private_url", "KEEPALIVE_S"]
