"""``SimExchangeThread``: a ``SimExchange`` on its own event loop in a background thread, for
synchronous tests and scripts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .server import SimExchange


class SimExchangeThread:
    """Runs a ``SimExchange`` on its own event loop in a background thread (for synchronous tests).
    Takes ``SimExchange``'s arguments.

    >>> with SimExchangeThread("marketdata/btcusdt_um_1m_2025-05.csv.gz", paused=True) as sim:
    ...     print(sim.base_url)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._args, self._kwargs, self._host, self._port = args, kwargs, host, port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self.sim: SimExchange | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.port}"

    def __enter__(self) -> SimExchangeThread:
        ready, errors = threading.Event(), []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self.sim = SimExchange(*self._args, **self._kwargs)
                self.port = self._loop.run_until_complete(self.sim.start(self._host, self._port))
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.sim.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="simexchange", daemon=True)
        self._thread.start()
        ready.wait(60)
        if errors:
            raise errors[0]
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` (a function or coroutine function) on the exchange's loop; return its result."""
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
