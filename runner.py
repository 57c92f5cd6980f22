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
import signal
import subprocess
import sys
import time
from typing import Any

import store as db
from broker import (
    Ledger,
    OrderSizeError,
    PaperBroker,
    SymbolRules,
    ledger_from_status,
    ledger_status,
    record_transition,
    state_from_status,
)
from config import Config
from engine import Engine, Transition
from feed import Feed, KlineClose, stream_url
from history import Candle, HistoryError, interval_ms, validate_frame
from state import POSITION, Action, Order, Reason, State

log = logging.getLogger("bollmin")

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_ACCOUNT = 0, 1, 2, 3
SHUTDOWN_BUDGET_S = 8.0


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


def setup_logging(cfg: Config) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(cfg.LOG_LEVEL)
    fmt = OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret_filter = SecretFilter([cfg.API_KEY, cfg.API_SECRET, cfg.DASHBOARD_PASSWORD])
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.LOG_FILE)), exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(cfg.LOG_FILE, maxBytes=10 * 2**20, backupCount=5,
                                                             encoding="utf-8"))
    except OSError as exc:
        sys.stderr.write(f"bollmin: cannot write LOG_FILE {cfg.LOG_FILE} ({exc.strerror}); logging to stderr only\n")
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(secret_filter)
        root.addHandler(h)
    for noisy in ("websockets", "asyncio", "aiohttp", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
        logging.getLogger().addHandler(self.events)
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
        self.engine = Engine.from_config(cfg, self.step_ms, restored,
                                         [c.close for c in closes], closes[-1].open_time_ms if closes else None)
        self.paused = status.get("entries_paused") == "1"
        self.pause_reason = status.get("pause_reason") or ""
        self.rejects = 0
        self.connection = "starting"
        self.inflight: asyncio.Task | None = None
        self.stopping = asyncio.Event()
        self.started_ms = db.now_ms()
        self.exchange: Any = None
        self.live: Any = None
        self.rules = SymbolRules()
        self.paper_broker = PaperBroker(cfg.TRADE_AMOUNT_USDT, cfg.PAPER_FEE_RATE, self.rules, self.ledger)
        self.feed = Feed(stream_url(cfg.WS_BASE_URL, cfg.SYMBOL, cfg.INTERVAL), cfg.SYMBOL, cfg.INTERVAL,
                         on_trade=self.on_trade, on_kline_closed=self.on_kline_closed,
                         on_connected=self.on_connected, on_state=self._set_connection,
                         stall_s=cfg.WS_STALL_SECONDS, max_age_s=cfg.WS_MAX_AGE_HOURS * 3600,
                         max_jump_pct=cfg.MAX_PRICE_JUMP_PCT,
                         reference_price=closes[-1].close if closes else None)
        import psutil

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
        """Run ``fn(store, ...)`` on the writer and wait until it is committed."""
        return await asyncio.wrap_future(self.writer.submit(fn, *args, **kwargs))

    async def pause_unless_stopping(self, seconds: float) -> None:
        """Sleep ``seconds``, waking at once when a stop is requested."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    def _set_connection(self, state: str) -> None:
        self.connection = state

    def _override(self, to: State, cause: str, why: str) -> None:
        """Move the state outside the table (refused entry, reconciliation, command), on record."""
        before = self.engine.state
        if before is to:
            return
        self.engine.state = to
        price = self.engine.last_price or 0.0
        t = self.engine.last_time_ms or db.now_ms()
        log.warning("state %s -> %s (%s): %s", before, to, cause, why)
        self.writer.post(_write_override, t, before, to, price, self.engine.last_bands, cause)

    def _pause(self, reason: str) -> None:
        self.paused, self.pause_reason = True, reason
        log.error("new entries paused: %s", reason)
        self.writer.post(db.Store.set_status, {"entries_paused": 1, "pause_reason": reason})

    def _resume(self) -> None:
        self.paused, self.pause_reason, self.rejects = False, "", 0
        log.info("new entries resumed")
        self.writer.post(db.Store.set_status, {"entries_paused": 0, "pause_reason": ""})

    # ---- market data -----------------------------------------------------------------------------
    def on_trade(self, time_ms: int, price: float) -> None:
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
        if not self.paper:
            await self.reconcile("reconnect" if self.feed.reconnects else "startup")

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

    # ---- orders ----------------------------------------------------------------------------------
    def _on_transition(self, tr: Transition) -> None:
        orders = tr.orders
        if self.paused and any(not o.action.closes for o in orders):
            orders = tuple(o for o in orders if o.action.closes)
            skipped = True
        else:
            skipped = False
        if not orders:
            self.writer.post(record_transition, tr, [], db_id=self.db_id, symbol=self.cfg.SYMBOL,
                             paper=self.paper, ledger=_snapshot(self.ledger))
        elif self.paper:
            self._paper(tr, orders)
        else:
            self.engine.hold = True
            self.inflight = asyncio.get_running_loop().create_task(self._live(tr, orders))
        b = tr.bands  # logged after the order is on its way: the log line must not delay it
        log.info("%s -> %s at %s (UP %.2f MID %.2f DN %.2f)", tr.from_state, tr.to_state, tr.price, b.up, b.mid, b.dn)
        if skipped:
            self._override(State.FLAT, "paused", f"entry skipped: new entries are paused ({self.pause_reason})")

    def _paper(self, tr: Transition, orders: tuple[Order, ...]) -> None:
        fills, refused = self.paper_broker.fill_orders(orders, tr.price)
        self.writer.post(record_transition, tr, fills, db_id=self.db_id, symbol=self.cfg.SYMBOL, paper=True,
                         ledger=_snapshot(self.ledger))
        for f in fills:
            log.info("paper %s %s %s @ %s (%s), fee %.4f USDT", f.action, f.qty, self.cfg.SYMBOL, f.price, f.reason,
                     f.fee_usdt)
        if refused:
            self._override(State.FLAT, "refused", f"entry refused: {refused}")

    async def _live(self, tr: Transition, orders: tuple[Order, ...], cause: str = "tick") -> None:
        from livebroker import write_intent, write_transition

        try:
            intents, refused = [], None
            for order in orders:
                try:
                    intents += self.live.make_intents(tr, (order,))
                except OrderSizeError as exc:
                    refused = str(exc)
            tid = None
            results = []
            for it in intents:
                if tid is None:
                    tid = await self.commit(write_transition, tr, cause, it, symbol=self.cfg.SYMBOL,
                                            db_id=self.db_id)
                else:
                    await self.commit(write_intent, tid, it, symbol=self.cfg.SYMBOL, db_id=self.db_id)
                res = await self.live.complete(it)
                results.append(res)
                if res.status != "filled":
                    break  # a failed close stops the reversal: the open is never sent
            if tid is None:
                await self.commit(write_transition, tr, cause, None, symbol=self.cfg.SYMBOL, db_id=self.db_id)
            failed = [r for r in results if r.status != "filled"]
            if refused:
                self._override(State.FLAT if not self.ledger.qty else self.engine.state, "refused",
                               f"entry refused: {refused}")
            if failed:
                leg = failed[0]
                if leg.intent.action.closes:
                    await self.reconcile(f"the close {leg.intent.client_order_id} failed")
                else:
                    self._override(State.FLAT, "rejected", f"entry {leg.intent.client_order_id} {leg.status}")
                    definite = leg.error is not None and leg.status == "rejected"
                    self.rejects = self.rejects + 1 if definite else self.rejects
                    if self.rejects >= self.cfg.MAX_ORDER_REJECTS and not self.paused:
                        self._pause(f"{self.rejects} entries in a row rejected by the exchange; last: {leg.error}")
            elif any(not r.intent.action.closes for r in results):
                self.rejects = 0
            filled = [r for r in results if r.status == "filled"]
            if filled:
                asyncio.get_running_loop().create_task(self._settle_fees(filled))
        except Exception:
            log.exception("error while executing %s -> %s", tr.from_state, tr.to_state)
            try:
                await self.reconcile("after an order error")
            except Exception as exc:
                log.error("reconciliation failed: %s", exc)
        finally:
            self.engine.hold = False
            self.inflight = None

    async def _settle_fees(self, legs: list) -> None:
        try:
            await self.live.settle_fees(legs)
        except Exception:
            log.exception("reading the actual commission of the last orders failed")

    async def reconcile(self, why: str) -> None:
        """Compare the stored state with the exchange position; the exchange is the truth."""
        amt, entry = await self.exchange.position()
        qty = float(amt)
        want = 0 if qty == 0 else (1 if qty > 0 else -1)
        have = POSITION[self.engine.state]
        if want != have:
            target = {0: State.FLAT, 1: State.LONG, -1: State.SHORT}[want]
            log.critical("RECONCILE (%s): stored state %s (position %s) but the exchange holds %s %s @ %s: "
                         "adopting %s", why, self.engine.state, self.ledger.qty, qty, self.cfg.SYMBOL, entry, target)
            self._override(target, "reconcile", f"exchange position {qty}")
            if self.cfg.RECONCILE_RULE == "pause":
                self._pause(f"position mismatch at {why}; check the account, then resume")
        elif abs(qty - self.ledger.qty) > 1e-12:
            log.warning("RECONCILE (%s): position size %s here, %s on the exchange: adopting the exchange's", why,
                        self.ledger.qty, qty)
        if abs(qty - self.ledger.qty) > 1e-12 or (qty and abs(entry - self.ledger.entry_price) > 1e-9):
            self.ledger.qty, self.ledger.entry_price = qty, (entry if qty else 0.0)
            self.writer.post(db.Store.set_status, ledger_status(self.ledger))

    async def close_now(self, why: str) -> str:
        """Close the whole position at market (dashboard command)."""
        if not self.ledger.qty:
            return "no position to close"
        held = abs(self.ledger.qty)
        price = self.engine.last_price or self.ledger.entry_price
        action = Action.CLOSE_LONG if self.ledger.qty > 0 else Action.CLOSE_SHORT
        bands = self.engine.last_bands
        tr = Transition(self.engine.last_time_ms or db.now_ms(), self.engine.state, State.FLAT, price,
                        bands if bands is not None else (0.0, 0.0, 0.0), (Order(action, Reason.MANUAL),))
        self.engine.state = State.FLAT
        if self.paper:
            self._paper(tr, tr.orders)
        else:
            while self.inflight is not None:
                await asyncio.sleep(0.05)
            self.engine.hold = True
            await self._live(tr, tr.orders, cause="command")
        if self.ledger.qty:
            return f"close of {held} {self.cfg.SYMBOL} failed; see the events"
        return f"closed {held} {self.cfg.SYMBOL} at market ({why})"

    # ---- background loops ------------------------------------------------------------------------
    async def heartbeat(self) -> None:
        import sdnotify

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
        e, led = self.engine, self.ledger
        b = e.last_bands
        mem = self._proc.memory_info().rss
        return {
            "heartbeat_ms": db.now_ms(), "state": e.state.value, "price": e.last_price,
            "price_time_ms": e.last_time_ms, "band_up": b.up if b else None, "band_mid": b.mid if b else None,
            "band_dn": b.dn if b else None, "connection": self.connection,
            "last_message_ms": int(self.feed.last_message_wall * 1000) or None,
            "unrealized_pnl_usdt": led.unrealized(e.last_price) if e.last_price else 0.0,
            "equity_usdt": (self.cfg.PAPER_START_BALANCE_USDT if self.paper else 0.0) + led.net_pnl_usdt
            + (led.unrealized(e.last_price) if e.last_price else 0.0),
            "cpu_pct": self._proc.cpu_percent(None), "rss_bytes": mem, "entries_paused": int(self.paused),
            "pause_reason": self.pause_reason, "messages": self.feed.messages, "dropped": self.feed.dropped,
            "reconnects": self.feed.reconnects, "db_backlog": self.writer.backlog,
        } | ledger_status(led)

    async def commands(self) -> None:
        while not self.stopping.is_set():
            try:
                for cmd in await self.commit(lambda s: db.pending_commands(s.conn)):
                    ok, result = True, ""
                    try:
                        if cmd["command"] == "pause":
                            self._pause("paused from the dashboard")
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

    # ---- lifecycle -------------------------------------------------------------------------------
    async def setup_exchange(self) -> None:
        """REST client; live: time offset, filters, account checks, unfinished intents."""
        from exchange import AccountSetupError, Exchange, classify

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
                from livebroker import LiveBroker

                self.live = LiveBroker(self.exchange, self.commit, self.ledger, db_id=self.db_id,
                                       symbol=self.cfg.SYMBOL, amount_usdt=self.cfg.TRADE_AMOUNT_USDT,
                                       on_event=lambda level, msg: log.log(getattr(logging, level), "%s", msg))
                await self.resolve_intents()
                log.info("live trading on %s: leverage %s, one-way mode, server time offset %d ms",
                         self.cfg.REST_BASE_URL, self.cfg.LEVERAGE, self.exchange.offset_ms)
                return
            except AccountSetupError:
                raise
            except Exception as exc:
                log.warning("exchange setup failed (%s); retrying in %.0fs", classify(exc), delay)
                await self.pause_unless_stopping(delay)
                delay = min(delay * 2, 60.0)

    async def resolve_intents(self) -> None:
        """Settle every order whose outcome was not recorded before the last stop."""
        from livebroker import RESOLVE_MARGIN_MS, intent_from_row

        rows = await self.commit(lambda s: db.read_open_intents(s.conn))
        if not rows:
            return
        log.warning("%d order intent(s) without a known outcome: resolving them before trading", len(rows))
        # Anything the previous process sent carries a timestamp before now: once recvWindow
        # has passed on the server, an order the exchange does not know can never execute.
        deadline = self.exchange.server_time_ms() + self.exchange.client.REQUEST_RECVWINDOW + RESOLVE_MARGIN_MS
        for row in rows:
            res = await self.live.complete(intent_from_row(row), send_first=False, deadline_ms=deadline)
            log.warning("intent %s resolved: %s", row["client_order_id"], res.status)

    async def run(self) -> int:
        import sdnotify

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS={self.mode} {self.cfg.SYMBOL} {self.cfg.INTERVAL}: starting")
        log.info("bollmin %s mode, %s %s, DB %s, state %s, position %s", self.mode, self.cfg.SYMBOL,
                 self.cfg.INTERVAL, self.cfg.DB_PATH, self.engine.state, self.ledger.qty)
        tasks = [loop.create_task(self.heartbeat()), loop.create_task(self.commands())]
        code = EXIT_OK
        try:
            await self.setup_exchange()
            if not self.stopping.is_set():
                feed_task = loop.create_task(self.feed.run())
                tasks.append(feed_task)
                await self.stopping.wait()
        except Exception as exc:
            from exchange import AccountSetupError

            if isinstance(exc, AccountSetupError):
                log.critical("cannot trade: %s", exc)
                code = EXIT_ACCOUNT
            else:
                log.critical("bot crashed: %s: %s", type(exc).__name__, exc, exc_info=True)
                code = EXIT_CRASH
        await self.shutdown(tasks)
        return code

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the order in flight, then exiting")
            self.stopping.set()
            self.feed.stop()

    async def shutdown(self, tasks: list[asyncio.Task]) -> None:
        import sdnotify

        sdnotify.notify("STOPPING=1")
        self.stopping.set()
        self.feed.stop()
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        if self.inflight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.inflight), timeout=max(deadline - time.monotonic(), 0.1))
            except (TimeoutError, Exception) as exc:
                log.error("order still in flight at shutdown (%s); it is resolved at the next start", exc)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.writer.post(db.Store.set_status, self.status_values() | {"connection": "stopped"})
        if self.exchange is not None:
            await self.exchange.close()
        logging.getLogger().removeHandler(self.events)
        if not self.writer.close(timeout=max(deadline - time.monotonic(), 0.5)):
            log.error("the database writer did not finish in time")
        log.info("stopped")


def _snapshot(ledger: Ledger) -> Ledger:
    copy = Ledger(ledger.qty, ledger.entry_price, ledger.realized_usdt, ledger.fees_usdt, ledger.closed_trades,
                  ledger.winning_trades)
    return copy


def _write_override(store, t: int, before: State, to: State, price: float, bands, cause: str) -> None:
    store.add_transition(t, before, to, price, bands, cause)
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
    import sdnotify

    setup_logging(cfg)
    if cfg.AUTO_RESTART and not sdnotify.under_systemd() and not os.environ.get("BOLLMIN_SUPERVISED"):
        return supervise([os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    return run_bot(cfg)


__all__ = ["Bot", "main", "run_bot", "supervise"]
