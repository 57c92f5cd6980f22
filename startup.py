"""Starting (and restarting) the bot: the exchange client and account checks, the order intents
a previous run left without an outcome, and the candles the DB lacks.

Order of a live start (runner.py): connect the exchange (clock offset, filters, one-way
position mode, leverage, commission rate) → resolve unfinished intents → reconcile → market
stream; after every (re)connect: backfill, then reconcile, before market events are used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import store as db
from broker import amount_warning
from config import Config
from exchange import AccountSetupError, Exchange, classify
from history import Candle, HistoryError, validate_frame
from livebroker import OrderDriver, intent_from_row, wall_age_s

log = logging.getLogger("bollmin")

INTENT_TTL_S = 60.0  # after a restart, a committed, provably unsent intent older than this is not sent
MAX_BACKFILL_PAGES = 20  # of 1500 candles


async def connect_exchange(cfg: Config, stopping: asyncio.Event, pause: Callable[[float], Awaitable[None]],
                           price: float | None = None) -> Exchange:
    """The REST client with its checks done, retrying with backoff until ``stopping``.

    Paper: only the symbol's filters (best effort: defaults when the exchange cannot be
    reached). Live: server-time offset, filters, one-way mode and LEVERAGE, commission rate.
    Says so when TRADE_AMOUNT_USDT is too small for entries at ``price`` (the last known).
    Raises AccountSetupError when a person must act (bad key, hedge mode, unknown symbol).
    """
    exchange = Exchange(cfg)
    delay = 1.0
    while not stopping.is_set():
        try:
            if cfg.PAPER_TRADING:
                try:
                    _warn_amount(cfg, await exchange.load_rules(), price)
                except AccountSetupError:
                    raise
                except Exception as exc:
                    log.warning("exchange filters unavailable (%s): paper orders use step %s", classify(exc),
                                exchange.rules.step)
                return exchange
            await exchange.sync_time()
            _warn_amount(cfg, await exchange.load_rules(), price)
            await exchange.check_account()
            await exchange.load_commission_rate()
            return exchange
        except AccountSetupError:
            await exchange.close()  # the bot stops here: no unclosed HTTP session left behind
            raise
        except Exception as exc:
            log.warning("exchange setup failed (%s); retrying in %.0fs", classify(exc), delay)
            await pause(delay)
            delay = min(delay * 2, 60.0)
    return exchange


def _warn_amount(cfg: Config, rules: Any, price: float | None) -> None:
    """Say at startup when TRADE_AMOUNT_USDT is too small for (some) entries on this contract."""
    warning = amount_warning(cfg.TRADE_AMOUNT_USDT, rules, cfg.SYMBOL, price)
    if warning:
        log.warning("%s", warning)


async def resolve_intents(commit: Callable[..., Awaitable[Any]], driver: OrderDriver) -> None:
    """Settle every order whose outcome was not recorded before the last stop."""
    rows = await commit(lambda s: db.read_open_intents(s.conn))
    if not rows:
        return
    log.warning("%d order intent(s) without a known outcome: resolving them before trading", len(rows))
    for row in rows:
        intent = intent_from_row(row)
        # The previous process is gone: anything it sent carries a timestamp before now, so once
        # recvWindow has passed on the server an order the exchange does not know never executed.
        # Such an intent is still carried out if it is younger than INTENT_TTL_S.
        res = await driver.complete(intent, look_up_first=True,
                                    resend_ok=lambda it=intent: wall_age_s(it) < INTENT_TTL_S)
        log.warning("intent %s resolved: %s", row["client_order_id"], res.status)


async def backfill(exchange: Exchange, commit: Callable[..., Awaitable[Any]], cfg: Config,
                   step_ms: int, newest: Callable[[], int | None] | None = None) -> list[Candle]:
    """Fetch the closed candles the DB lacks (HISTORY_KLINES when it has none) and store them;
    returns the newest ``BOLL_PERIOD - 1`` closed candles (pandas validates what was fetched).

    ``newest``, asked once the candles are in: the open time of the newest candle the window may
    end with (None: no limit). The runner holds the market events that arrived meanwhile and plays
    them next; candles those events will close themselves stay out of the window, or their ticks
    would be judged against bands that already hold their own close."""
    stored = await commit(lambda s: db.read_candles(s.conn, cfg.SYMBOL, cfg.INTERVAL, cfg.BOLL_PERIOD - 1))
    fetched: list[Candle] = []
    if not stored:
        rows = await exchange.klines(cfg.INTERVAL, cfg.HISTORY_KLINES + 1)
        fetched = [c for c, _ in rows[:-1]]  # the last row is the forming candle
    else:
        start = stored[-1].open_time_ms + step_ms
        for _ in range(MAX_BACKFILL_PAGES):
            rows = await exchange.klines(cfg.INTERVAL, 1500, start_ms=start)
            page = [c for c, _ in rows]
            if len(rows) < 1500:
                page = page[:-1]  # the last row of the last page is the forming candle
            fetched += page
            if len(rows) < 1500:
                break
            start = rows[-1][0].open_time_ms + step_ms
    if fetched:
        try:
            gaps = validate_frame(stored + fetched if stored else fetched, step_ms)
        except HistoryError as exc:
            # The stored tail and the exchange do not join up (they overlap or disagree):
            # trust the exchange's own run.
            log.warning("%s; using the exchange's candles only", exc)
            gaps = validate_frame(fetched, step_ms)
            stored = []
        for before, missing in gaps[-3:]:
            # The exchange has no candles there (an outage or maintenance): the window spans the
            # gap, as backtest does on the same history.
            log.warning("the exchange has no %s candles for %d interval(s) after the candle opened at %s "
                        "(an exchange outage): the bands span the gap", cfg.INTERVAL, missing, before)
        await commit(db.Store.add_candles, cfg.SYMBOL, cfg.INTERVAL, step_ms, fetched)
        log.info("loaded %d closed %s candles from the exchange (last opened %s)", len(fetched), cfg.INTERVAL,
                 fetched[-1].open_time_ms)
    known = stored + fetched
    limit = newest() if newest is not None else None
    if limit is not None:
        known = [c for c in known if c.open_time_ms <= limit]
        if stored and len(known) < cfg.BOLL_PERIOD - 1:  # the stored tail was past the limit too
            known = await commit(lambda s: db.read_candles(s.conn, cfg.SYMBOL, cfg.INTERVAL, cfg.BOLL_PERIOD - 1,
                                                           upto_open_ms=limit))
    window = known[-(cfg.BOLL_PERIOD - 1):]
    if len(window) < cfg.BOLL_PERIOD - 1:
        log.warning("only %d closed candles known: no trading until %d exist", len(window), cfg.BOLL_PERIOD - 1)
    return window
