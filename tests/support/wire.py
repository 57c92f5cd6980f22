"""Talking to the simulated exchange as a client does: python-binance for REST, raw WebSocket reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from binance import AsyncClient
from binance.exceptions import BinanceAPIException

from simexchange import SimExchangeThread

KEY, SECRET = "test-key", "test-secret"  # the account of the simexchange tests (api_key=KEY, api_secret=SECRET)


@contextlib.asynccontextmanager
async def binance(sim: SimExchangeThread, key: str = KEY, secret: str = SECRET) -> AsyncIterator[AsyncClient]:
    """python-binance's AsyncClient pointed at ``sim``; must be entered inside the event loop."""
    client = AsyncClient(key, secret)  # plain constructor: no I/O
    client.FUTURES_URL = sim.base_url + "/fapi"
    client.API_URL = sim.base_url + "/api"
    try:
        yield client
    finally:
        await client.close_connection()


async def api_error(coro: Awaitable[Any]) -> BinanceAPIException:
    """The BinanceAPIException ``coro`` raises (fails the test when it raises nothing)."""
    with pytest.raises(BinanceAPIException) as info:
        await coro
    return info.value


async def recv(ws: Any, timeout: float = 10.0) -> dict:
    """The next WebSocket message, parsed."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_silent(ws: Any, seconds: float = 0.5) -> None:
    """Nothing arrives on ``ws`` for ``seconds``."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)
