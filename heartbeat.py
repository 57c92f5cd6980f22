"""The bot's heartbeat: its live figures in the ``status`` table about once a second,
systemd's watchdog while market data is fresh, and the C heap's free pages given back.

The dashboard, ``auto_deploy.sh status`` and the health check read these keys. The strategy
state and the position are not among them: the transitions and fills that change them write
them, so a heartbeat delayed in the DB writer can never undo a newer value.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

import sdnotify
import store as db

log = logging.getLogger("bollmin")


def status_values(bot: Any) -> dict[str, Any]:
    """The heartbeat's status keys for ``bot`` (a runner.Bot)."""
    e, led, feed = bot.engine, bot.ledger, bot.feed
    b = e.last_bands
    ex, us = bot.executor, bot.user_stream
    unrealized = led.unrealized(e.last_price) if e.last_price else 0.0
    return {
        "heartbeat_ms": db.now_ms(), "price": e.last_price,
        "price_time_ms": e.last_time_ms, "band_up": b.up if b else None, "band_mid": b.mid if b else None,
        "band_dn": b.dn if b else None, "connection": bot.connection,
        "last_message_ms": int(feed.last_message_wall * 1000) or None,
        "unrealized_pnl_usdt": unrealized,
        "equity_usdt": (bot.cfg.PAPER_START_BALANCE_USDT if bot.paper else 0.0) + led.net_pnl_usdt + unrealized,
        "cpu_pct": bot.proc.cpu_percent(None), "rss_bytes": bot.proc.memory_info().rss,
        "entries_paused": int(bot.paused), "pause_reason": bot.pause_reason,
        "messages": feed.messages, "dropped": feed.dropped, "reconnects": feed.reconnects,
        "db_backlog": bot.writer.backlog,
        "order_backlog": ex.backlog if ex is not None else 0,
        "order_backlog_age_s": round(ex.backlog_age_s(), 3) if ex is not None else 0.0,
        "user_stream": us.connection if us is not None else "off",
        "entries_blocked": bot.entries_blocked() or "",
    }


class DataWatch:
    """Market data lost for longer than ``limit_s`` (once per outage), and its return. Pure: fed
    the wall time of the last market message (0 before the first) and the time now."""

    def __init__(self, limit_s: float, started_wall: float) -> None:
        self.limit_s, self.started_wall = limit_s, started_wall
        self.down_since: float | None = None

    def check(self, last_message_wall: float, now: float) -> tuple[str, float] | None:
        """("lost", seconds silent) when an outage begins, ("restored", seconds down) when it ends."""
        silent = now - (last_message_wall or self.started_wall)
        if self.down_since is None and silent > self.limit_s:
            self.down_since = now - silent
            return "lost", silent
        if self.down_since is not None and silent < self.limit_s:
            down, self.down_since = now - self.down_since - silent, None
            return "restored", down
        return None


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33+)."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


class HeapTrim:
    """Give the C heap's free pages back to the system once enough has piled up.

    glibc keeps what C code frees (here mostly the short-lived buffers of every REST call) for
    reuse, and the pieces left between live blocks are not reused well: a live bot's RSS crept up
    by about 40 to 100 bytes per order that way, with no Python object growing (measured in
    BENCHMARKS.md, "Several instances"). When the heap's free bytes (``mallinfo2().fordblks``)
    have grown by more than ``slack`` since the last trim, ``malloc_trim(0)`` returns every free
    page; the heartbeat asks only while no order is in flight. A trim takes well under a
    millisecond. Not glibc (no ``mallinfo2``): it does nothing.
    """

    def __init__(self, slack: int = 1 << 20, mallinfo: Callable[[], Any] | None = None,
                 trim: Callable[[int], int] | None = None) -> None:
        self.slack = slack
        self.trims = 0
        if mallinfo is None or trim is None:
            try:
                libc = ctypes.CDLL(None)
                mallinfo, trim = libc.mallinfo2, libc.malloc_trim
            except (OSError, AttributeError):
                mallinfo = trim = None
            else:
                mallinfo.restype, mallinfo.argtypes = _MallInfo2, []
                trim.restype, trim.argtypes = ctypes.c_int, [ctypes.c_size_t]
        self._mallinfo, self._trim = mallinfo, trim
        self.base = mallinfo().fordblks if mallinfo is not None else 0

    @property
    def available(self) -> bool:
        return self._mallinfo is not None

    def maybe(self) -> bool:
        """Trim when the heap's free bytes grew by more than ``slack``; True when it did."""
        if self._mallinfo is None:
            return False
        free = self._mallinfo().fordblks
        if free - self.base <= self.slack:
            self.base = min(self.base, free)
            return False
        self._trim(0)
        self.base = self._mallinfo().fordblks
        self.trims += 1
        return True


async def heartbeat(bot: Any, period_s: float = 1.0) -> None:
    """Write the status row every ``period_s``, pet systemd's watchdog while data is fresh, and
    say (notifications) when market data has been lost for longer than WS_STALL_SECONDS."""
    dog_every = sdnotify.watchdog_period()
    last_dog = 0.0
    watch = DataWatch(bot.cfg.WS_STALL_SECONDS, time.time())
    heap = HeapTrim()
    while not bot.stopping.is_set():
        try:
            if bot.executor is None or bot.executor.idle:
                heap.maybe()
            bot.writer.post(db.Store.set_status, status_values(bot))
            now = time.time()
            fresh = now - bot.feed.last_message_wall < bot.cfg.WS_STALL_SECONDS
            if dog_every and fresh and time.monotonic() - last_dog >= dog_every:
                sdnotify.notify("WATCHDOG=1")
                last_dog = time.monotonic()
            change = watch.check(bot.feed.last_message_wall, now)
            if change is not None:
                kind, seconds = change
                if kind == "lost":
                    log.error("no market data for %.0f s (connection: %s)", seconds, bot.connection)
                    bot.notifier.data_lost(silent_s=seconds, connection=bot.connection)
                else:
                    log.info("market data is back after %.0f s", seconds)
                    bot.notifier.data_restored(down_s=seconds)
        except Exception:
            log.exception("heartbeat failed")
        await bot.pause_unless_stopping(period_s)
