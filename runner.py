"""``bollmin.py run``: the trading loop and its lifecycle (SPEC §3, §4, §10).

Startup: validate config → open DB (writer thread) → restore state and position → signal
READY → (live) account checks, resolve unfinished order intents, reconcile with the
exchange → connect the market stream. On every (re)connect, before any message is read:
backfill missed candles over REST (pandas validates them) and, live, reconcile again.

Per tick: O(1) work on the event loop (engine + table). SQLite writes go to the writer
thread; transitions and order intents are written at once (intents awaited before sending),
plain ticks are not. A heartbeat goes to the ``status`` table about once a second.

SIGTERM/SIGINT: stop reading, finish the order in flight, flush, exit 0 within 10 s.
With AUTO_RESTART and not under systemd, a supervisor process restarts the bot after a
crash with backoff; exit codes 2 (configuration) and 3 (account setup) are never retried.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import queue
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

import sdnotify
import store as db
import timing
from broker import (
    Ledger,
    PaperBroker,
    SymbolRules,
    ledger_from_status,
    ledger_status,
    record_transition,
    state_from_status,
)
from config import Config
from engine import Engine, Transition
from exchange import AccountSetupError, ApiError, Exchange, classify
from executor import Executor, Job, Leg
from executor import Settings as ExecutorSettings
from feed import Feed, KlineClose, stream_url
from history import Candle, HistoryError, interval_ms, validate_frame
from livebroker import OrderDriver, intent_from_row, wall_age_s
from state import Action, Order, Reason, State
from userstream import UserStream

log = logging.getLogger("bollmin")

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_ACCOUNT = 0, 1, 2, 3
SHUTDOWN_BUDGET_S = 8.0
INTENT_TTL_S = 60.0  # after a restart, a committed, provably unsent intent older than this is not sent


# ---- logging ----------------------------------------------------------------------------------

class SecretFilter(logging.Filter):
    """Replace any configured secret that slips into a log line with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            if any(s in text for s in self.secrets):
                for s in self.secrets:
                    text = text.replace(s, "***")
                record.msg, record.args = text, None
        return True


class OneLineFormatter(logging.Formatter):
    """One line per event: a traceback is folded onto the line (`` | `` between its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class EventsHandler(logging.Handler):
    """Copies INFO+ log lines of the bot into the ``events`` table (through the writer)."""

    def __init__(self, writer: db.Writer) -> None:
        super().__init__(logging.INFO)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "bollmin.store":
            return  # the writer reporting on itself must not queue more writes
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.writer.post(db.Store.add_event, record.levelname, message[:1000], int(record.created * 1000))
        except Exception:
            self.handleError(record)


_listener: logging.handlers.QueueListener | None = None


def setup_logging(cfg: Config) -> None:
    """Log lines go through a queue to a thread that writes stderr and the rotating file, so
    no log call on the event loop waits for I/O. Secrets are masked before a line is queued."""
    global _listener
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if _listener is not None:
        _listener.stop()
    root.setLevel(cfg.LOG_LEVEL)
    fmt = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.LOG_FILE)), exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(cfg.LOG_FILE, maxBytes=10 * 2**20, backupCount=5,
                                                             encoding="utf-8"))
    except OSError as exc:
        sys.stderr.write(f"bollmin: cannot write LOG_FILE {cfg.LOG_FILE} ({exc.strerror}); logging to stderr only\n")
    for h in handlers:
        h.setFormatter(fmt)
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = logging.handlers.QueueHandler(lines)
    front.addFilter(SecretFilter([cfg.API_KEY, cfg.API_SECRET, cfg.DASHBOARD_PASSWORD]))
    root.addHandler(front)
    _listener = logging.handlers.QueueListener(lines, *handlers, respect_handler_level=True)
    _listener.start()
    for noisy in ("websockets", "asyncio", "aiohttp", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_log_handler(handler: logging.Handler) -> None:
    """Also give every log line to ``handler`` (on the logging thread when logging is set up)."""
    if _listener is not None:
        _listener.handlers = (*_listener.handlers, handler)
    else:
        logging.getLogger().addHandler(handler)


def remove_log_handler(handler: logging.Handler) -> None:
    if _listener is not None:
        _listener.handlers = tuple(h for h in _listener.handlers if h is not handler)
    else:
        logging.getLogger().removeHandler(handler)


def stop_logging() -> None:
    """Write out every queued log line (at exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


# ---- the bot ----------------------------------------------------------------------------------

class Bot:
    """One symbol, one interval, one process."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.paper = cfg.PAPER_TRADING
        self.mode = os.environ.get("BOLLMIN_MODE_LABEL") or cfg.mode
        self.step_ms = interval_ms(cfg.INTERVAL)
        self.writer = db.Writer(cfg.DB_PATH)
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
        self.engine = Engine(cfg.BOLL_PERIOD, cfg.BOLL_K, cfg.BOLL_DDOF, self.step_ms, restored,
                             [c.close for c in closes], closes[-1].open_time_ms if closes else None)
        self.paused = status.get("entries_paused") == "1"
        self.pause_reason = status.get("pause_reason") or ""
        self.banned_until = 0.0  # time.monotonic() until which a 418 IP ban blocks new entries
        self.connection = "starting"
        self.stopping = asyncio.Event()
        self.started_ms = db.now_ms()
        self.exchange: Any = None
        self.executor: Executor | None = None
        self.user_stream: UserStream | None = None
        self.rules = SymbolRules()
        self.paper_broker = PaperBroker(cfg.TRADE_AMOUNT_USDT, cfg.PAPER_FEE_RATE, self.rules, self.ledger)
        self.feed = Feed(stream_url(cfg.WS_BASE_URL, cfg.SYMBOL, cfg.INTERVAL), cfg.SYMBOL, cfg.INTERVAL,
                         on_trade=self.on_trade, on_kline_closed=self.on_kline_closed,
                         on_connected=self.on_connected, on_state=self._set_connection,
                         stall_s=cfg.WS_STALL_SECONDS, max_age_s=cfg.WS_MAX_AGE_HOURS * 3600,
                         max_jump_pct=cfg.MAX_PRICE_JUMP_PCT,
                         reference_price=closes[-1].close if closes else None)
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self.writer.post(db.Store.set_status, {
            "db_role": "bot", "mode": self.mode, "symbol": cfg.SYMBOL, "interval": cfg.INTERVAL,
            "pid": os.getpid(), "started_ms": self.started_ms, "state": self.engine.state.value,
            "entries_paused": int(self.paused), "pause_reason": self.pause_reason,
        } | ledger_status(self.ledger))

    # ---- helpers ---------------------------------------------------------------------------------
    def _call_sync(self, fn):
        return self.writer.submit(fn).result(timeout=60)

    async def commit(self, fn, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(store, ...)`` on the writer's priority lane and wait until it is committed."""
        return await asyncio.wrap_future(self.writer.submit(fn, *args, urgent=True, **kwargs))

    def post_urgent(self, fn, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(store, ...)`` on the writer's priority lane without waiting."""
        self.writer.post(fn, *args, urgent=True, **kwargs)

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

    def _set_connection(self, state: str) -> None:
        self.connection = state

    @property
    def state(self) -> State:
        return self.engine.state

    def adopt_state(self, to: State, cause: str, why: str) -> None:
        """Move the state outside the table (refused entry, reconciliation, command), on record."""
        before = self.engine.state
        if before is to:
            return
        self.engine.state = to
        price = self.engine.last_price or 0.0
        t = self.engine.last_time_ms or db.now_ms()
        log.warning("state %s -> %s (%s): %s", before, to, cause, why)
        self.post_urgent(_write_override, self.new_transition_id(), t, before, to, price, self.engine.last_bands,
                         cause)

    def pause(self, reason: str) -> None:
        self.paused, self.pause_reason = True, reason
        log.error("new entries paused: %s", reason)
        self.writer.post(db.Store.set_status, {"entries_paused": 1, "pause_reason": reason})

    def _resume(self) -> None:
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
            return f"the exchange banned this IP for another {self.banned_until - time.monotonic():.0f} s"
        return None

    def on_rate_limit(self, err: ApiError) -> None:
        """Every rate-limit answer to an order; a 418 IP ban blocks new entries for its duration."""
        if err.status == 418:
            seconds = err.retry_after_s or 120.0
            self.banned_until = max(self.banned_until, time.monotonic() + seconds)
            log.critical("the exchange BANNED this IP for %.0f s (HTTP 418: too many requests): no new entries "
                         "until then; closes wait for the ban to end", seconds)

    # ---- market data -----------------------------------------------------------------------------
    def on_trade(self, time_ms: int, price: float) -> None:
        if timing.ON:
            timing.mark("tick", time_ms)
        try:
            tr = self.engine.on_trade(time_ms, price)
            if tr is not None:
                self._on_transition(tr)
        except Exception:  # one bad tick must never stop the bot
            log.exception("error handling the tick %s @ %s", time_ms, price)

    def on_kline_closed(self, k: KlineClose) -> None:
        try:
            outcome = self.engine.on_candle_closed(k.open_time_ms, k.close)
            if outcome == "gap":
                log.warning("candle %s closed but earlier candles are missing: backfilling", k.open_time_ms)
                asyncio.get_running_loop().create_task(self._backfill_task())
                return
            if outcome in ("closed", "confirmed", "corrected"):
                if outcome == "corrected":
                    log.info("candle %s close corrected by the exchange to %s", k.open_time_ms, k.close)
                self.writer.post(db.Store.add_candles, self.cfg.SYMBOL, self.cfg.INTERVAL, self.step_ms,
                                 [Candle(k.open_time_ms, k.open, k.high, k.low, k.close, k.volume)])
        except Exception:
            log.exception("error handling the closed candle %s", k.open_time_ms)

    async def _backfill_task(self) -> None:
        try:
            await self.backfill()
        except Exception as exc:
            log.error("backfill failed: %s", exc)

    async def on_connected(self) -> None:
        """Runs after each connect, before messages are read: backfill, then (live) reconcile."""
        await self.backfill()
        if self.executor is not None:
            await self.executor.reconcile_now("reconnect" if self.feed.reconnects else "startup")

    async def backfill(self) -> None:
        """Fetch the closed candles the DB lacks (or HISTORY_KLINES when empty); resync the window."""
        cfg = self.cfg
        stored = await self.commit(lambda s: db.read_candles(s.conn, cfg.SYMBOL, cfg.INTERVAL, cfg.BOLL_PERIOD - 1))
        fetched: list[Candle] = []
        if not stored:
            rows = await self.exchange.klines(cfg.INTERVAL, cfg.HISTORY_KLINES + 1)
            fetched = [c for c, _ in rows[:-1]]  # the last row is the forming candle
        else:
            start = stored[-1].open_time_ms + self.step_ms
            for _ in range(20):  # at most 20 pages of 1500 candles
                rows = await self.exchange.klines(cfg.INTERVAL, 1500, start_ms=start)
                page = [c for c, _ in rows]
                if len(rows) < 1500:
                    page = page[:-1]  # the last row of the last page is the forming candle
                fetched += page
                if len(rows) < 1500:
                    break
                start = rows[-1][0].open_time_ms + self.step_ms
        if fetched:
            try:
                validate_frame(stored + fetched if stored else fetched, self.step_ms)
            except HistoryError as exc:
                # The stored tail and the exchange do not join up (e.g. the bot was off longer
                # than one fetch): trust the exchange's own contiguous run.
                log.warning("%s; using the exchange's candles only", exc)
                validate_frame(fetched, self.step_ms)
                stored = []
            await self.commit(db.Store.add_candles, cfg.SYMBOL, cfg.INTERVAL, self.step_ms, fetched)
            log.info("loaded %d closed %s candles from the exchange (last opened %s)", len(fetched), cfg.INTERVAL,
                     fetched[-1].open_time_ms)
        window = (stored + fetched)[-(cfg.BOLL_PERIOD - 1):]
        if window:
            self.engine.resync([c.close for c in window], window[-1].open_time_ms)
            if self.feed.last_price is None:
                self.feed.last_price = window[-1].close
        if len(window) < cfg.BOLL_PERIOD - 1:
            log.warning("only %d closed candles known: no trading until %d exist", len(window), cfg.BOLL_PERIOD - 1)

    # ---- decisions -------------------------------------------------------------------------------
    def _on_transition(self, tr: Transition) -> None:
        """A transition of the table: record it and hand its orders on (paper: fill them now;
        live: to the executor). Runs on every tick that changes the state — never waits."""
        orders, skipped = tr.orders, self.entries_blocked() if any(not o.action.closes for o in tr.orders) else None
        if skipped:
            orders = tuple(o for o in orders if o.action.closes)
        tid = self.new_transition_id()
        refused = None
        if not orders:
            self.writer.post(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=self.paper,
                             ledger=_snapshot(self.ledger), transition_id=tid)
        elif self.paper:
            refused = self._paper(tr, orders, tid)
        else:
            if timing.ON:
                timing.mark("decided", tr.time_ms)
            legs, refused = self.executor.plan(tr.price, orders)
            self.post_urgent(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=False,
                             ledger=None, transition_id=tid)
            if legs:
                self.executor.submit(Job(tid, tr.time_ms, tr.price, legs, time.monotonic()))
                if timing.ON:
                    timing.mark("queued", tid)
        b = tr.bands  # logged after the orders are on their way: the log line must not delay them
        log.info("%s -> %s at %s (UP %.2f MID %.2f DN %.2f)", tr.from_state, tr.to_state, tr.price, b.up, b.mid, b.dn)
        # An entry left out leaves the strategy FLAT (a reversal's close still goes), as in the backtest.
        if refused:
            self.adopt_state(State.FLAT, "refused", f"entry refused: {refused}")
        if skipped:
            self.adopt_state(State.FLAT, "paused", f"entry skipped: {skipped}")

    def _paper(self, tr: Transition, orders: tuple[Order, ...], tid: int) -> str | None:
        fills, refused = self.paper_broker.fill_orders(orders, tr.price)
        self.writer.post(record_transition, tr, fills, db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=True,
                         ledger=_snapshot(self.ledger), transition_id=tid)
        for f in fills:
            log.info("paper %s %s %s @ %s (%s), fee %.4f USDT", f.action, f.qty, self.cfg.SYMBOL, f.price, f.reason,
                     f.fee_usdt)
        return refused

    async def close_now(self, why: str) -> str:
        """Close the whole position at market (dashboard command)."""
        if self.executor is not None and self.executor.backlog:
            await self._wait_idle(30.0)  # let the orders already decided settle first
        if not self.ledger.qty:
            return "no position to close"
        held = abs(self.ledger.qty)
        price = self.engine.last_price or self.ledger.entry_price
        action = Action.CLOSE_LONG if self.ledger.qty > 0 else Action.CLOSE_SHORT
        bands = self.engine.last_bands
        tr = Transition(self.engine.last_time_ms or db.now_ms(), self.engine.state, State.FLAT, price,
                        bands if bands is not None else (0.0, 0.0, 0.0), (Order(action, Reason.MANUAL),))
        self.engine.state = State.FLAT
        tid = self.new_transition_id()
        if self.paper:
            fills, _ = self.paper_broker.fill_orders(tr.orders, tr.price)
            self.writer.post(record_transition, tr, fills, db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=True,
                             ledger=_snapshot(self.ledger), transition_id=tid, cause="command")
        else:
            self.post_urgent(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=False,
                             ledger=None, transition_id=tid, cause="command")
            done = asyncio.get_running_loop().create_future()
            self.executor.submit(Job(tid, tr.time_ms, price, (Leg(action, Reason.MANUAL),), time.monotonic(),
                                     "command", done))
            await done
        if self.ledger.qty:
            return f"close of {held} {self.cfg.SYMBOL} failed; see the events"
        return f"closed {held} {self.cfg.SYMBOL} at market ({why})"

    async def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.executor is not None and not self.executor.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ---- background loops ------------------------------------------------------------------------
    async def heartbeat(self) -> None:
        period = sdnotify.watchdog_period()
        last_dog = 0.0
        while not self.stopping.is_set():
            try:
                self.writer.post(db.Store.set_status, self.status_values())
                fresh = time.time() - self.feed.last_message_wall < self.cfg.WS_STALL_SECONDS
                if period and fresh and time.monotonic() - last_dog >= period:
                    sdnotify.notify("WATCHDOG=1")
                    last_dog = time.monotonic()
            except Exception:
                log.exception("heartbeat failed")
            await self.pause_unless_stopping(1.0)

    def status_values(self) -> dict[str, Any]:
        """The heartbeat's status keys. The state and the position are written with the
        transitions and fills that change them, never here (a late heartbeat must not undo them)."""
        e, led = self.engine, self.ledger
        b = e.last_bands
        mem = self._proc.memory_info().rss
        ex = self.executor
        us = self.user_stream
        return {
            "heartbeat_ms": db.now_ms(), "price": e.last_price,
            "price_time_ms": e.last_time_ms, "band_up": b.up if b else None, "band_mid": b.mid if b else None,
            "band_dn": b.dn if b else None, "connection": self.connection,
            "last_message_ms": int(self.feed.last_message_wall * 1000) or None,
            "unrealized_pnl_usdt": led.unrealized(e.last_price) if e.last_price else 0.0,
            "equity_usdt": (self.cfg.PAPER_START_BALANCE_USDT if self.paper else 0.0) + led.net_pnl_usdt
            + (led.unrealized(e.last_price) if e.last_price else 0.0),
            "cpu_pct": self._proc.cpu_percent(None), "rss_bytes": mem, "entries_paused": int(self.paused),
            "pause_reason": self.pause_reason, "messages": self.feed.messages, "dropped": self.feed.dropped,
            "reconnects": self.feed.reconnects, "db_backlog": self.writer.backlog,
            "order_backlog": ex.backlog if ex is not None else 0,
            "order_backlog_age_s": round(ex.backlog_age_s(), 3) if ex is not None else 0.0,
            "user_stream": us.connection if us is not None else "off",
            "entries_blocked": self.entries_blocked() or "",
        }

    async def commands(self) -> None:
        while not self.stopping.is_set():
            try:
                for cmd in await self.commit(lambda s: db.pending_commands(s.conn)):
                    ok, result = True, ""
                    try:
                        if cmd["command"] == "pause":
                            self.pause("paused from the dashboard")
                            result = "new entries paused"
                        elif cmd["command"] == "resume":
                            self._resume()
                            result = "new entries resumed"
                        elif cmd["command"] == "close_position":
                            result = await self.close_now("requested from the dashboard")
                    except Exception as exc:
                        ok, result = False, f"{type(exc).__name__}: {exc}"
                        log.exception("command %s failed", cmd["command"])
                    await self.commit(db.Store.finish_command, cmd["id"], ok, result)
            except Exception:
                log.exception("reading dashboard commands failed")
            await self.pause_unless_stopping(1.0)

    async def periodic_reconcile(self) -> None:
        """Compare the position with the exchange every RECONCILE_INTERVAL_SECONDS (live), in
        case the user-data stream missed something."""
        while not self.stopping.is_set():
            await self.pause_unless_stopping(self.cfg.RECONCILE_INTERVAL_SECONDS)
            if self.stopping.is_set() or self.executor is None:
                continue
            try:
                if self.executor.idle:
                    self.executor.request_reconcile("periodic")
            except Exception:
                log.exception("periodic reconciliation failed")

    # ---- lifecycle -------------------------------------------------------------------------------
    async def setup_exchange(self) -> None:
        """REST client; live: time offset, filters, account checks, unfinished intents."""
        self.exchange = Exchange(self.cfg)
        delay = 1.0
        while not self.stopping.is_set():
            try:
                if self.paper:
                    try:
                        self.rules = await self.exchange.load_rules()
                        self.paper_broker.rules = self.rules
                    except AccountSetupError:
                        raise
                    except Exception as exc:
                        log.warning("exchange filters unavailable (%s): paper orders use step %s", classify(exc),
                                    self.rules.step)
                    return
                await self.exchange.sync_time()
                await self.exchange.load_rules()
                await self.exchange.check_account()
                await self.exchange.load_commission_rate()
                cfg = self.cfg
                driver = OrderDriver(self.exchange, self.commit, self.post_urgent, self.ledger, symbol=cfg.SYMBOL,
                                     on_rate_limit=self.on_rate_limit)
                self.executor = Executor(
                    self.exchange, driver, self.ledger, self,
                    ExecutorSettings(self.db_id, cfg.SYMBOL, cfg.TRADE_AMOUNT_USDT, cfg.MAX_ENTRY_DELAY_SECONDS,
                                     cfg.MAX_ORDER_REJECTS, cfg.RECONCILE_RULE),
                    post_status=self.post_urgent)
                await self.resolve_intents(driver)
                log.info("live trading on %s: leverage %s, one-way mode, server time offset %d ms",
                         self.cfg.REST_BASE_URL, self.cfg.LEVERAGE, self.exchange.offset_ms)
                return
            except AccountSetupError:
                raise
            except Exception as exc:
                log.warning("exchange setup failed (%s); retrying in %.0fs", classify(exc), delay)
                await self.pause_unless_stopping(delay)
                delay = min(delay * 2, 60.0)

    async def resolve_intents(self, driver: OrderDriver) -> None:
        """Settle every order whose outcome was not recorded before the last stop."""
        rows = await self.commit(lambda s: db.read_open_intents(s.conn))
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

    def _start_user_stream(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task:
        ex = self.executor
        self.user_stream = UserStream(
            self.exchange, self.cfg.WS_BASE_URL, self.cfg.SYMBOL, on_order=ex.on_order_update,
            on_position=ex.on_position,
            on_reconnected=lambda: ex.request_reconcile("user-data stream reconnected", confirm=False),
            max_age_s=self.cfg.WS_MAX_AGE_HOURS * 3600)
        return loop.create_task(self.user_stream.run())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS={self.mode} {self.cfg.SYMBOL} {self.cfg.INTERVAL}: starting")
        log.info("bollmin %s mode, %s %s, DB %s, state %s, position %s", self.mode, self.cfg.SYMBOL,
                 self.cfg.INTERVAL, self.cfg.DB_PATH, self.engine.state, self.ledger.qty)
        tasks = [loop.create_task(self.heartbeat()), loop.create_task(self.commands())]
        executor_task = None
        code = EXIT_OK
        try:
            await self.setup_exchange()
            if not self.stopping.is_set():
                if self.executor is not None:
                    executor_task = loop.create_task(self.executor.run())
                    tasks += [self._start_user_stream(loop), loop.create_task(self.periodic_reconcile())]
                tasks.append(loop.create_task(self.feed.run()))
                await self.stopping.wait()
        except Exception as exc:
            if isinstance(exc, AccountSetupError):
                log.critical("cannot trade: %s", exc)
                code = EXIT_ACCOUNT
            else:
                log.critical("bot crashed: %s: %s", type(exc).__name__, exc, exc_info=True)
                code = EXIT_CRASH
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
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.writer.post(db.Store.set_status, self.status_values() | {"connection": "stopped"})
        if self.exchange is not None:
            await self.exchange.close()
        remove_log_handler(self.events)
        if not self.writer.close(timeout=max(deadline - time.monotonic(), 0.5)):
            log.error("the database writer did not finish in time")
        log.info("stopped")


def _snapshot(ledger: Ledger) -> Ledger:
    copy = Ledger(ledger.qty, ledger.entry_price, ledger.realized_usdt, ledger.fees_usdt, ledger.closed_trades,
                  ledger.winning_trades)
    return copy


def _write_override(store, tid: int, t: int, before: State, to: State, price: float, bands, cause: str) -> None:
    store.add_transition(t, before, to, price, bands, cause, transition_id=tid)
    store.set_status({"state": to.value})


# ---- entry points ---------------------------------------------------------------------------------

def run_bot(cfg: Config) -> int:
    try:
        bot = Bot(cfg)
    except db.StoreError as exc:
        log.critical("%s", exc)
        return EXIT_USAGE
    return asyncio.run(bot.run())


def supervise(argv: list[str]) -> int:
    """Run the bot as a child process and restart it after a crash (AUTO_RESTART by hand)."""
    env = dict(os.environ, BOLLMIN_SUPERVISED="1")
    delay = 1.0
    child: subprocess.Popen | None = None
    stop = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, *argv], env=env)
        code = child.wait()
        if stop or code in (EXIT_OK, EXIT_USAGE, EXIT_ACCOUNT):
            return code if code >= 0 else EXIT_OK
        if time.monotonic() - started > 300:
            delay = 1.0
        log.error("the bot exited with %s; AUTO_RESTART: restarting in %.0fs", code, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stop:
            time.sleep(0.1)
        if stop:
            return EXIT_OK
        delay = min(delay * 2, 60.0)


def main(cfg: Config) -> int:
    setup_logging(cfg)
    try:
        if cfg.AUTO_RESTART and not sdnotify.under_systemd() and not os.environ.get("BOLLMIN_SUPERVISED"):
            return supervise([os.path.abspath(sys.argv[0]), *sys.argv[1:]])
        return run_bot(cfg)
    finally:
        stop_logging()


__all__ = ["Bot", "main", "run_bot", "supervise"]
