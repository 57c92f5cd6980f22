"""``bollmin.py run``: the trading bot's wiring and lifecycle.

    feed (market WS) ──events──► Bot.dispatch ──tick──► Engine (bands + table) ──transition──►
        paper: PaperBroker fills at the tick price       live: Executor (FIFO) ──► exchange
    user-data stream (live) ──fills, position──► Executor        everything ──► DB writer thread

What lives where: the logging setup in logs.py, exit codes and the AUTO_RESTART supervisor in
supervisor.py, the exchange connection, unfinished intents and backfill in startup.py, the
status heartbeat in heartbeat.py, dashboard commands in commands.py, live orders in
executor.py / livebroker.py / orders.py. This module connects them and owns the lifecycle.

Startup: validate config → open DB (writer thread) → restore state and position → signal
READY → connect the exchange (live: account checks, unfinished intents) → market stream.
After every (re)connect the bot holds market events until it has backfilled missed candles
and (live) reconciled with the exchange, then plays them in order.

Per tick: O(1) work on the event loop (engine + table). A transition is written to the DB
writer (orders on its priority lane) and its orders are filled (paper) or queued to the
executor (live); the strategy never waits for the exchange.

SIGTERM/SIGINT: stop reading, finish the order in flight, flush, exit 0 within 10 s.

Why this size: ``Bot`` is the strategy's side of trading that the other modules call back
into (market events, transitions, commands, a close now, the catch-up after a connect); the
wiring around it is short. Logging, supervision, startup, heartbeat and commands live in their
own modules.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sqlite3
import sys
import time
from collections import deque
from typing import Any

import psutil

import notify
import sdnotify
import startup
import store as db
import timing
from broker import (
    Ledger,
    ledger_from_status,
    ledger_status,
    paper_broker_from_config,
    record_transition,
    state_from_status,
)
from commands import serve_commands
from config import Config, env
from engine import Engine, Transition
from exchange import AccountSetupError, ApiError
from executor import Executor, Job, Leg
from executor import Settings as ExecutorSettings
from feed import Connection, Feed, KlineClose, Trade, stream_url
from heartbeat import heartbeat, status_values
from history import Candle, interval_ms
from livebroker import OrderDriver
from logs import EventsHandler, add_log_handler, bind_event_loop, remove_log_handler, setup_logging, stop_logging
from state import Action, Order, Reason, State
from supervisor import EXIT_ACCOUNT, EXIT_CRASH, EXIT_OK, EXIT_USAGE, supervise, supervised_child
from userstream import UserStream

log = logging.getLogger("bollmin")

SHUTDOWN_BUDGET_S = 8.0
MAX_HELD_EVENTS = 200_000  # market events held while catching up after a connect


class Bot:
    """One symbol, one interval, one process."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.paper = cfg.PAPER_TRADING
        self.mode = env("BOLLMIN_MODE_LABEL") or cfg.mode
        self.step_ms = interval_ms(cfg.INTERVAL)
        self.writer = db.Writer(cfg.DB_PATH)
        self.exit_code = EXIT_OK
        self.stop_reason = ""
        self.events = EventsHandler(self.writer)
        add_log_handler(self.events)
        status = self._call_sync(lambda s: db.read_status(s.conn))
        if status.get("db_role") == "backtest":
            raise db.StoreError(f"{cfg.DB_PATH} holds a backtest run; point DB_PATH at the bot's own file")
        self.db_id = status["db_id"]
        self.ledger = ledger_from_status(status) if status.get("mode", self.mode) == self.mode else Ledger()
        restored = state_from_status(status)
        if status.get("mode") not in (None, self.mode):
            log.warning("the DB was last used in %s mode, now %s: starting FLAT", status.get("mode"), self.mode)
            restored = State.FLAT
        closes = self._call_sync(lambda s: db.read_candles(s.conn, cfg.SYMBOL, cfg.INTERVAL, cfg.BOLL_PERIOD - 1))
        self._next_tid = self._call_sync(lambda s: db.next_transition_id(s.conn))
        self._wake_pending = False  # a writer wake-up is scheduled on the event loop (post_urgent)
        self.engine = Engine.from_config(cfg, self.step_ms, restored,
                                         [c.close for c in closes], closes[-1].open_time_ms if closes else None)
        self.paused = status.get("entries_paused") == "1"
        self.pause_reason = status.get("pause_reason") or ""
        # The last run wrote "stopped" when it ended; anything else means it was killed or the machine died.
        self.previous_run_ended = status.get("connection") in (None, "stopped")
        self.summary_day_ms = int(status.get("daily_summary_day_ms") or notify.previous_utc_day(db.now_ms()))
        self.notifier = notify.Notifier(cfg, mode=env("BOLLMIN_MODE_LABEL") or None)
        self.banned_until = 0.0  # time.monotonic() until which a 418 IP ban blocks new entries
        self.connection = "starting"
        self.stopping = asyncio.Event()
        self.exchange: Any = None
        self.executor: Executor | None = None
        self.user_stream: UserStream | None = None
        self.paper_broker = paper_broker_from_config(cfg, ledger=self.ledger)
        self.feed = Feed(stream_url(cfg.WS_BASE_URL, cfg.SYMBOL, cfg.INTERVAL), cfg.SYMBOL, cfg.INTERVAL,
                         on_event=self.dispatch, stall_s=cfg.WS_STALL_SECONDS, max_age_s=cfg.WS_MAX_AGE_HOURS * 3600,
                         max_jump_pct=cfg.MAX_PRICE_JUMP_PCT, reference_price=closes[-1].close if closes else None)
        self._held: deque[Any] | None = None  # market events waiting for a catch-up after a connect
        self._gap_kline: int | None = None  # the closed kline that asked for the last gap backfill
        self._orders_queued = False  # dispatch() tells the feed when an event queued live orders
        self._catch_up_again = False
        self._background: set[asyncio.Task] = set()
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)
        self.writer.post(db.Store.set_status, {
            "db_role": "bot", "mode": self.mode, "symbol": cfg.SYMBOL, "interval": cfg.INTERVAL,
            "pid": os.getpid(), "started_ms": db.now_ms(), "state": self.engine.state.value,
            "entries_paused": int(self.paused), "pause_reason": self.pause_reason,
        } | ledger_status(self.ledger))

    # ---- helpers ---------------------------------------------------------------------------------
    def _db_damaged(self, message: str) -> None:
        """The DB broke while running (writer thread): stop with exit 2, never trade unrecorded."""
        log.critical("%s; stopping: nothing can be recorded any more", message)
        self.exit_code, self.stop_reason = EXIT_USAGE, message
        self._loop.call_soon_threadsafe(self.request_stop)

    def _call_sync(self, fn):
        return self.writer.submit(fn).result(timeout=60)

    async def commit(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(store, ...)`` on the writer's priority lane and wait until it is committed."""
        return await asyncio.wrap_future(self.writer.submit(fn, *args, urgent=True, **kwargs))

    def post_urgent(self, fn, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(store, ...)`` on the writer's priority lane without waiting.

        The writer is woken on the event loop's next turn, not now: an order's intent queued
        in between (the executor runs first when a transition queued a job; a reversal's open
        follows its close's fill in the same step) then shares one commit and one thread
        hand-off with this row instead of waiting behind its commit (BENCHMARKS.md)."""
        self.writer.post(fn, *args, urgent=True, wake=False, **kwargs)
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon(self._wake_writer)

    def _wake_writer(self) -> None:
        self._wake_pending = False
        self.writer.wake()

    def new_transition_id(self) -> int:
        tid = self._next_tid
        self._next_tid += 1
        return tid

    async def pause_unless_stopping(self, seconds: float) -> None:
        """Sleep ``seconds``, waking at once when a stop is requested."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- the strategy state and entries ----------------------------------------------------------
    @property
    def state(self) -> State:
        return self.engine.state

    def adopt_state(self, to: State, cause: str, why: str) -> None:
        """Move the state outside the table (refused entry, reconciliation …), on record."""
        tr = self.engine.override(to, cause, db.now_ms())
        if tr is None:
            return
        log.warning("state %s -> %s (%s): %s", tr.from_state, to, cause, why)
        self.writer.post(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=self.paper,
                         ledger=None, transition_id=self.new_transition_id(), urgent=not self.paper)

    def pause(self, reason: str) -> None:
        self.paused, self.pause_reason = True, reason
        log.error("new entries paused: %s", reason)
        self.writer.post(db.Store.set_status, {"entries_paused": 1, "pause_reason": reason})
        self.notifier.paused(reason)

    def resume(self) -> None:
        self.paused, self.pause_reason = False, ""
        if self.executor is not None:
            self.executor.rejects = 0
        log.info("new entries resumed")
        self.writer.post(db.Store.set_status, {"entries_paused": 0, "pause_reason": ""})

    def entries_blocked(self) -> str | None:
        """Why new entries may not go out now (paused, IP ban), or None."""
        if self.paused:
            return f"new entries are paused ({self.pause_reason})"
        if self.banned_until and time.monotonic() < self.banned_until:
            return f"the exchange banned this IP for another {math.ceil(self.banned_until - time.monotonic())} s"
        return None

    def on_rate_limit(self, err: ApiError) -> None:
        """Every rate-limit answer to an order; a 418 IP ban blocks new entries for its duration."""
        if err.status == 418:
            seconds = err.retry_after_s or 120.0
            self.banned_until = max(self.banned_until, time.monotonic() + seconds)
            log.critical("the exchange BANNED this IP for %.0f s (HTTP 418: too many requests): no new entries "
                         "until then; closes wait for the ban to end", seconds)
            self.notifier.paused(f"IP banned by the exchange for {seconds:.0f} s (HTTP 418)")

    # ---- market events ---------------------------------------------------------------------------
    def dispatch(self, event: Trade | KlineClose | Connection) -> bool:
        """The one way market data reaches the bot (from the feed). True when the event queued
        live orders: the feed yields to the event loop so the executor takes them at once."""
        if type(event) is Trade:
            if self._held is None:
                self._tick(event.time_ms, event.price)
            else:
                self._hold(event)
        elif type(event) is KlineClose:
            if self._held is None:
                self._candle_closed(event)
            else:
                self._hold(event)
        else:
            self._connection_changed(event)
        queued, self._orders_queued = self._orders_queued, False
        return queued

    def _tick(self, time_ms: int, price: float) -> None:
        if timing.ON:
            timing.mark("tick", time_ms)
        try:
            tr = self.engine.on_trade(time_ms, price)
            if tr is not None:
                self._on_transition(tr)
        except Exception:  # one bad tick must never stop the bot
            log.exception("error handling the tick %s @ %s", time_ms, price)

    def _candle_closed(self, k: KlineClose) -> None:
        try:
            outcome = self.engine.on_candle_closed(k.open_time_ms, k.close)
            if outcome == "gap":
                if k.open_time_ms == self._gap_kline:
                    # Backfilled once already and still ahead of the candles the exchange has: not
                    # asked again (a storm of klines requests); the next trade closes the candle.
                    log.warning("closed kline %s is still ahead of the exchange's own candles after a backfill: "
                                "dropped", k.open_time_ms)
                    return
                self._gap_kline = k.open_time_ms
                log.warning("candle %s closed but earlier candles are missing: backfilling", k.open_time_ms)
                self._start_catch_up()
                self._hold(k)  # played again once the gap is filled
                return
            if outcome in ("closed", "confirmed", "corrected"):
                if outcome == "corrected":
                    log.info("candle %s close corrected by the exchange to %s", k.open_time_ms, k.close)
                self.writer.post(db.Store.add_candles, self.cfg.SYMBOL, self.cfg.INTERVAL, self.step_ms,
                                 [Candle(k.open_time_ms, k.open, k.high, k.low, k.close, k.volume)])
        except Exception:
            log.exception("error handling the closed candle %s", k.open_time_ms)

    def _connection_changed(self, c: Connection) -> None:
        self.connection = c.state
        if c.state == "connected":
            self._start_catch_up(c.reconnects)

    def _hold(self, event: Any) -> None:
        held = self._held
        if held is None:
            return
        if len(held) >= MAX_HELD_EVENTS:
            log.error("%d market events arrived while catching up: dropping them and reconnecting", len(held))
            held.clear()
            self.feed.reconnect()
            return
        held.append(event)

    def _start_catch_up(self, reconnects: int | None = None) -> None:
        """Hold market events, backfill missed candles and (live) reconcile, then play them."""
        self._catch_up_again = True
        if self._held is None:
            self._held = deque()
            self._spawn(self._catch_up(reconnects))

    def _held_frontier(self) -> int | None:
        """The newest candle a catch-up's window may end with: the market events held for replay
        take over from there (a closed kline: that candle; a trade: the candle before its own).
        None when nothing is held: the exchange's answer is the newest state."""
        if not self._held:
            return None
        first = self._held[0]
        if type(first) is KlineClose:
            return first.open_time_ms
        return first.time_ms - first.time_ms % self.step_ms - self.step_ms

    async def _catch_up(self, reconnects: int | None) -> None:
        try:
            while self._catch_up_again:
                self._catch_up_again = False
                window = await startup.backfill(self.exchange, self.commit, self.cfg, self.step_ms,
                                                newest=self._held_frontier)
                if window:
                    self.engine.resync([c.close for c in window], window[-1].open_time_ms)
                if self.executor is not None and reconnects is not None:
                    await self.executor.reconcile_now("reconnect" if reconnects else "startup")
        except Exception as exc:
            log.error("catching up after connecting failed (%s): reconnecting", exc)
            if self._held is not None:
                self._held.clear()
            self.feed.reconnect()
        finally:
            held, self._held = self._held, None
            for event in held or ():
                self.dispatch(event)

    # ---- decisions -------------------------------------------------------------------------------
    def _on_transition(self, tr: Transition) -> None:
        """A transition of the table: record it and hand its orders on (paper: fill them now;
        live: queue them to the executor). Never waits."""
        orders = tr.orders
        skipped = self.entries_blocked() if any(not o.action.closes for o in orders) else None
        if skipped:
            orders = tuple(o for o in orders if o.action.closes)
        tid = self.new_transition_id()
        refused = None
        if not orders:
            # Live, every transition goes on the writer's priority lane like the ones with orders and the
            # overrides, so the stored state follows the decisions in order even when the DB was stuck.
            self.writer.post(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=self.paper,
                             ledger=None, transition_id=tid, urgent=not self.paper)
        elif self.paper:
            fills, refused = self.paper_broker.fill_orders(orders, tr.price)
            self.writer.post(record_transition, tr, fills, db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=True,
                             ledger=_snapshot(self.ledger), transition_id=tid)
            for f in fills:
                log.info("paper %s %s %s @ %s (%s), fee %.4f USDT", f.action, f.qty, self.cfg.SYMBOL, f.price,
                         f.reason, f.fee_usdt)
                self._notify_paper_fill(f)
        else:
            if timing.ON:
                timing.mark("decided", tr.time_ms)
            legs, refused = self.executor.plan(tr.price, orders)
            if legs:
                self.executor.submit(Job(tid, tr.time_ms, tr.price, legs, time.monotonic()))
                self._orders_queued = True
            # Queued after the job, so the writer's wake-up comes after the executor's turn: the row
            # then shares the intent's commit (the executor writes nothing before its turn).
            self.post_urgent(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=False,
                             ledger=None, transition_id=tid)
            if legs and timing.ON:
                timing.mark("queued", tid)
        b = tr.bands
        line = ("%s -> %s at %s (UP %.2f MID %.2f DN %.2f)", tr.from_state, tr.to_state, tr.price, b.up, b.mid, b.dn)
        if self._orders_queued and not refused and not skipped:
            # Logged on the event loop's next turn, after the executor has taken the job and its
            # intent is being committed: making the line costs ~0.1 ms, which the order must not
            # wait for (BENCHMARKS.md, "Where the time goes").
            self._loop.call_soon(log.info, *line)
        else:
            log.info(*line)
        # An entry left out leaves the strategy FLAT (a reversal's close still goes), as in the backtest.
        if refused:
            self.adopt_state(State.FLAT, "refused", f"entry refused: {refused}")
        if skipped:
            self.adopt_state(State.FLAT, "paused", f"entry skipped: {skipped}")

    async def close_now(self, why: str) -> str:
        """Close the whole position at market (dashboard command)."""
        if self.executor is not None and not self.executor.idle:
            await self._wait_idle(30.0)  # let the orders already decided settle first
        if not self.ledger.qty:
            return "no position to close"
        held = abs(self.ledger.qty)
        action = Action.CLOSE_LONG if self.ledger.qty > 0 else Action.CLOSE_SHORT
        tr = self.engine.override(State.FLAT, "command", db.now_ms(), orders=(Order(action, Reason.MANUAL),))
        tid = self.new_transition_id()
        log.warning("closing %s %s at market: %s", held, self.cfg.SYMBOL, why)
        if self.paper:
            fills, _ = self.paper_broker.fill_orders(tr.orders, self.engine.last_price or self.ledger.entry_price)
            self.writer.post(record_transition, tr, fills, db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=True,
                             ledger=_snapshot(self.ledger), transition_id=tid)
            for f in fills:
                self._notify_paper_fill(f)
        else:
            self.post_urgent(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=False,
                             ledger=None, transition_id=tid)
            done = asyncio.get_running_loop().create_future()
            self.executor.submit(Job(tid, tr.time_ms, tr.price, (Leg(action, Reason.MANUAL),), time.monotonic(),
                                     "command", done))
            await done
        if self.ledger.qty:
            return f"close of {held} {self.cfg.SYMBOL} failed; see the events"
        return f"closed {held} {self.cfg.SYMBOL} at market ({why})"

    def _notify_paper_fill(self, f: Any) -> None:
        self.notifier.fill(action=f.action.value, reason=f.reason.value, qty=f.qty, price=f.price, paper=True,
                           fee_usdt=f.fee_usdt, realized_pnl_usdt=f.realized_pnl_usdt if f.action.closes else None)

    async def daily_summaries(self) -> None:
        """After each UTC midnight, the previous day's figures to the notification targets."""
        while not self.stopping.is_set():
            await self.pause_unless_stopping(60.0)
            day = notify.previous_utc_day(db.now_ms())
            if self.stopping.is_set() or day <= self.summary_day_ms or not self.notifier.enabled:
                continue
            try:
                summary = await asyncio.to_thread(_read_daily_summary, self.cfg.DB_PATH, day, self.cfg.SYMBOL)
                self.notifier.daily_summary(summary)
                self.summary_day_ms = day
                self.writer.post(db.Store.set_status, {"daily_summary_day_ms": day})
            except Exception:
                log.exception("the daily summary failed")

    async def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.executor is not None and not self.executor.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def periodic_reconcile(self) -> None:
        """Compare the position with the exchange every RECONCILE_INTERVAL_SECONDS (live), in
        case the user-data stream missed something."""
        while not self.stopping.is_set():
            await self.pause_unless_stopping(self.cfg.RECONCILE_INTERVAL_SECONDS)
            if not self.stopping.is_set() and self.executor is not None and self.executor.idle:
                self.executor.request_reconcile("periodic")

    # ---- lifecycle -------------------------------------------------------------------------------
    async def _go_live(self) -> None:
        """The order executor and its driver; unfinished intents resolved before trading."""
        cfg = self.cfg
        driver = OrderDriver(self.exchange, self.commit, self.post_urgent, self.ledger, symbol=cfg.SYMBOL,
                             on_rate_limit=self.on_rate_limit, notifier=self.notifier)
        self.executor = Executor(
            self.exchange, driver, self.ledger, self,
            ExecutorSettings(self.db_id, cfg.SYMBOL, cfg.TRADE_AMOUNT_USDT, cfg.MAX_ENTRY_DELAY_SECONDS,
                             cfg.MAX_ORDER_REJECTS, cfg.RECONCILE_RULE),
            post_status=self.post_urgent, notifier=self.notifier)
        await startup.resolve_intents(self.commit, driver)
        log.info("live trading on %s: leverage %s, one-way mode, server time offset %d ms",
                 cfg.REST_BASE_URL, cfg.LEVERAGE, self.exchange.offset_ms)

    def _start_user_stream(self) -> asyncio.Task:
        ex = self.executor
        self.user_stream = UserStream(
            self.exchange, self.cfg.WS_BASE_URL, self.cfg.SYMBOL, on_order=ex.on_order_update,
            on_position=ex.on_position,
            on_reconnected=lambda: ex.request_reconcile("user-data stream reconnected", confirm=False),
            max_age_s=self.cfg.WS_MAX_AGE_HOURS * 3600)
        return asyncio.get_running_loop().create_task(self.user_stream.run())

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        bind_event_loop(loop)
        self.writer.on_damaged = self._db_damaged
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS={self.mode} {self.cfg.SYMBOL} {self.cfg.INTERVAL}: starting")
        log.info("bollmin %s mode, %s %s, DB %s, state %s, position %s", self.mode, self.cfg.SYMBOL,
                 self.cfg.INTERVAL, self.cfg.DB_PATH, self.engine.state, self.ledger.qty)
        self.notifier.start()
        detail = f"{self.cfg.SYMBOL} {self.cfg.INTERVAL} · {self.engine.state} · {self.ledger.qty:g}"
        if not self.previous_run_ended:
            log.warning("the previous run did not stop cleanly (killed, or the machine went down)")
            detail += " · 上次未正常退出 the previous run did not stop cleanly"
        self.notifier.lifecycle("start", detail=detail)
        tasks = [loop.create_task(heartbeat(self)), loop.create_task(serve_commands(self)),
                 loop.create_task(self.daily_summaries())]
        executor_task = None
        code = EXIT_OK
        try:
            self.exchange = await startup.connect_exchange(self.cfg, self.stopping, self.pause_unless_stopping,
                                                           self.feed.last_price)
            self.paper_broker.rules = self.exchange.rules
            if not self.paper and not self.stopping.is_set():
                await self._go_live()
            if not self.stopping.is_set():
                if self.executor is not None:
                    executor_task = loop.create_task(self.executor.run())
                    tasks += [self._start_user_stream(), loop.create_task(self.periodic_reconcile())]
                tasks.append(loop.create_task(self.feed.run()))
                await self.stopping.wait()
        except Exception as exc:
            if isinstance(exc, AccountSetupError):
                log.critical("cannot trade: %s", exc)
                code = EXIT_ACCOUNT
            else:
                log.critical("bot crashed: %s: %s", type(exc).__name__, exc, exc_info=True)
                code = EXIT_CRASH
            self.notifier.lifecycle("crash", detail=f"{type(exc).__name__}: {exc}"[:300],
                                    restarting=code == EXIT_CRASH and self.cfg.AUTO_RESTART)
        code = code if code != EXIT_OK else self.exit_code
        if code == EXIT_OK:
            self.notifier.lifecycle("stop")
        elif code == EXIT_USAGE:
            self.notifier.lifecycle("crash", detail=self.stop_reason[:300], restarting=False)
        await self.shutdown(tasks, executor_task)
        return code

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the order in flight, then exiting")
            self.stopping.set()
            self.feed.stop()

    async def shutdown(self, tasks: list[asyncio.Task], executor_task: asyncio.Task | None) -> None:
        sdnotify.notify("STOPPING=1")
        self.stopping.set()
        self.feed.stop()
        if self.user_stream is not None:
            self.user_stream.stop()
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        if executor_task is not None and self.executor is not None:
            self.executor.stop()
            try:
                await asyncio.wait_for(asyncio.shield(executor_task), timeout=max(deadline - time.monotonic(), 0.1))
            except (TimeoutError, Exception) as exc:
                log.error("order still in flight at shutdown (%s); it is resolved at the next start",
                          type(exc).__name__)
                executor_task.cancel()
                await asyncio.gather(executor_task, return_exceptions=True)
        for t in [*tasks, *self._background]:
            t.cancel()
        await asyncio.gather(*tasks, *self._background, return_exceptions=True)
        self.writer.post(db.Store.set_status, status_values(self) | {"connection": "stopped"})
        if self.exchange is not None:
            await self.exchange.close()
        await asyncio.to_thread(self.notifier.stop, max(min(deadline - time.monotonic(), 5.0), 0.5))
        bind_event_loop(None)  # the lines still held go out now, while the events table still takes them
        remove_log_handler(self.events)
        if not self.writer.close(timeout=max(deadline - time.monotonic(), 0.5)):
            log.error("the database writer did not finish in time")
        log.info("stopped")


def _read_daily_summary(path: str, day_ms: int, symbol: str) -> notify.DailySummary:
    conn = db.connect_readonly(path)
    try:
        return notify.daily_summary(conn, day_ms, symbol)
    finally:
        conn.close()


def _snapshot(ledger: Ledger) -> Ledger:
    return Ledger(ledger.qty, ledger.entry_price, ledger.realized_usdt, ledger.fees_usdt, ledger.closed_trades,
                  ledger.winning_trades)


# ---- entry points ---------------------------------------------------------------------------------

SWITCH_INTERVAL_S = 0.0005


def run_bot(cfg: Config) -> int:
    # The DB writer and logging threads need the GIL for every statement they run; with
    # CPython's 5 ms switch interval a busy event loop makes them wait and their queues (and
    # the process's memory) grow under a firehose. 0.5 ms keeps them close behind (BENCHMARKS.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        bot = Bot(cfg)
    except (db.StoreError, sqlite3.DatabaseError) as exc:
        # An unusable DB (damaged, foreign, newer, read-only, disk full) needs a person: exit 2,
        # which neither the AUTO_RESTART supervisor nor systemd (RestartPreventExitStatus) retries.
        log.critical("%s", exc if isinstance(exc, db.StoreError) else db.describe(cfg.DB_PATH, exc))
        return EXIT_USAGE
    return asyncio.run(bot.run())


def main(cfg: Config) -> int:
    """``bollmin.py run``: the bot, under the AUTO_RESTART supervisor when run by hand."""
    setup_logging(cfg)
    try:
        if cfg.AUTO_RESTART and not sdnotify.under_systemd() and not supervised_child():
            return supervise([os.path.abspath(sys.argv[0]), *sys.argv[1:]])
        return run_bot(cfg)
    finally:
        stop_logging()


__all__ = ["Bot", "main", "run_bot"]
