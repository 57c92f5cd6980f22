"""The simulated exchange (``simexchange``) for tests: in a thread, with a test account, and its
control API."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

from simexchange import SimExchangeThread
from support.paths import MARKET_1M

API_KEY, API_SECRET = "test-api-key-7f3a", "test-api-secret-9c1e55"  # the test account's keys
DEFAULTS: dict[str, Any] = {"paused": True, "history_candles": 60, "target_interval": "1m", "api_key": API_KEY,
                            "api_secret": API_SECRET}


@contextlib.contextmanager
def running_sim(data: Any = MARKET_1M, **overrides: Any) -> Iterator[SimExchangeThread]:
    """``SimExchangeThread(data, **DEFAULTS | overrides)``, started and stopped around the block.

    The defaults are what the bot tests use: the bundled 1m data, paused, 60 candles of history,
    1m candles on the streams, the test account's keys. ``overrides`` are ``SimExchange``'s
    arguments (``speed``, ``more_symbols`` …); pass its own default to undo one of these.
    """
    with SimExchangeThread(data, **{**DEFAULTS, **overrides}) as sim:
        yield sim


def ctl(base_url: str, name: str, body: dict | None = None, method: str | None = None) -> Any:
    """Call the simulated exchange's control API (``/_sim/<name>``)."""
    method = method or ("GET" if name in ("state", "requests", "orders") else "POST")
    data = None if method == "GET" else json.dumps(body or {}).encode()
    req = urllib.request.Request(f"{base_url}/_sim/{name}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())
