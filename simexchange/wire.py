"""The wire format every part of the simulated exchange shares: Binance's error replies,
HMAC signing, parameter parsing, number formatting, and the loop that writes a WebSocket
client's queued messages to its socket.

Nothing here knows about symbols, accounts or the replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from decimal import Decimal
from typing import Any

from aiohttp import web

log = logging.getLogger("simexchange")

DEMO_API_KEY = "demo-key"
DEMO_API_SECRET = "demo-secret"  # noqa: S105 - the local simulator's well-known demo credential

UNKNOWN_503 = "Unknown error, please check your request or try again later."
TIMEOUT_1007 = "Timeout waiting for response from backend server. Send status unknown; execution status unknown."


# -- error replies ------------------------------------------------------------------------

class ApiError(Exception):
    """A Binance error reply: HTTP status + ``{"code": ..., "msg": ...}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg}, status=self.status)


class RateLimited(ApiError):
    """429 / 418 with a ``Retry-After`` header (seconds)."""

    def __init__(self, status: int, msg: str, retry_after_s: int) -> None:
        super().__init__(status, -1003, msg)
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        response = super().response()
        response.headers["Retry-After"] = str(self.retry_after_s)
        return response


def missing(name: str) -> ApiError:
    """-1102: a mandatory parameter is absent."""
    return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


# -- signing ------------------------------------------------------------------------------

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


# -- parameters and numbers ---------------------------------------------------------------

def int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    """An integer parameter (absent or empty: ``default``); -1100 when it is not digits."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,20}", raw):
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


def plain(x: Decimal, places: int) -> str:
    """Fixed-point text with ``places`` decimals (never "-0.000")."""
    return f"{x.quantize(Decimal(1).scaleb(-places)) + 0:f}"


def short(x: Decimal) -> str:
    """Shortest plain text with at most 8 and at least one decimal ("95000.1", "0.0")."""
    text = f"{x.quantize(Decimal('1e-8')).normalize() + 0:f}"
    return text if "." in text else text + ".0"


# -- WebSocket plumbing shared by the market streams and the user-data stream ---------------

def websocket_or_400(request: web.Request) -> web.WebSocketResponse | web.Response:
    """A WebSocket response for ``request`` (3-minute pings, like Binance), or the JSON 400
    Binance answers a plain HTTP request on a stream path with."""
    ws = web.WebSocketResponse(heartbeat=180)
    if not ws.can_prepare(request).ok:
        return web.json_response({"code": -1000, "msg": "This path needs a WebSocket upgrade."}, status=400)
    return ws


async def pump(ws: Any, queue: asyncio.Queue, drained: asyncio.Event | None = None, low_water: int = 0) -> None:
    """Move queued texts to the socket, one task per client, until the socket fails or the task
    is cancelled. ``drained`` (if given) is set whenever at most ``low_water`` texts are left
    queued, so a producer waiting for room can go on."""
    try:
        while True:
            text = await queue.get()
            if drained is not None and queue.qsize() <= low_water:
                drained.set()
            await ws.send_str(text)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a dying socket may raise anything; the client is gone either way
        log.debug("WebSocket sender stopped: %r", exc)


async def close_quietly(ws: Any, code: int, message: bytes) -> None:
    """Close with a close frame; a socket that is already gone is not an error."""
    try:
        await ws.close(code=code, message=message)
    except Exception as exc:  # already gone
        log.debug("closing a WebSocket: %r", exc)
