"""The order executor: live orders carried out strictly in the order the strategy decided them.

The strategy table sees every tick and never waits for the exchange. Each transition's
orders become one ``Job`` in a FIFO; the executor runs one job at a time and, inside a job,
one leg at a time (a reversal's open waits for its close). So on the same ticks, live trading
sends exactly the orders the backtest prints, in the same order, however fast the market is.

Sizing: an entry is sized when it is decided (TRADE_AMOUNT_USDT / the deciding tick's price,
rounded down to the step — the backtest's quantity); a close is sized when it runs (the
position the bot holds then, after every earlier order resolved).

Policy when something goes wrong (all of it logged, nothing silent):

* **A leg fails** (rejected, or provably never executed): the orders decided after it were
  decided on a position that does not exist, so they are dropped (logged one by one, never
  sent). A failed entry leaves the position as it was: the strategy state is set to match it.
  A failed close is followed by a reconciliation with the exchange.
* **Falling behind**: an entry decided more than ``MAX_ENTRY_DELAY_SECONDS`` before the
  executor reaches it is not sent (it went stale: the price it was decided at is gone), and
  the orders after it are dropped as above. A close always goes out, late or not — holding a
  position the strategy has left is the bigger risk — with a warning saying how late. More
  than ``MAX_BACKLOG_JOBS`` queued transitions: all are dropped and the bot reconciles.
* **Rate limits** are handled per order (``orders.py``); a 418 IP ban also pauses new
  entries for the ban's duration (the bot's temporary pause).
* **Knowing the position**: reconciliation is a job like an order, so it runs between
  orders, never in the middle of one. The user-data stream feeds ``on_order_update`` and
  ``on_position``; a fill of another order on our symbol (the Binance app, a liquidation,
  ADL) or a position that differs from the bot's once its own orders are done queues a
  reconciliation. Mismatches seen while running are read twice a second apart before
  anything is adopted, so a position read that lags behind our own fill is not mistaken
  for a change.

Why this size: the whole policy above lives here, in one place, and nothing else does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import timing
from broker import Ledger, OrderSizeError, SymbolRules, ledger_status, order_qty
from exchange import Exchange
from livebroker import LegResult, OrderDriver, new_intent, write_intent
from orders import OrderStatus
from state import POSITION, Action, Order, Reason, State

log = logging.getLogger("bollmin.executor")

MAX_BACKLOG_JOBS = 256        # queued transitions beyond which everything is dropped and the bot reconciles
RECONCILE_CONFIRM_S = 1.0     # a mismatch seen while running is read again after this long
EPS = 1e-9                    # quantities closer than this are equal

_STATE_OF_SIGN = {0: State.FLAT, 1: State.LONG, -1: State.SHORT}


def sign(qty: float) -> int:
    return 0 if abs(qty) <= EPS else (1 if qty > 0 else -1)


@dataclass(frozen=True)
class Leg:
    """One order of a transition. ``qty`` is set for entries (sized when decided) and None
    for closes (the held position when the leg runs)."""

    action: Action
    reason: Reason
    qty: Decimal | None = None


@dataclass
class Job:
    """The orders of one transition, in the order they must go out."""

    transition_id: int
    time_ms: int                  # exchange time of the deciding tick
    price: float                  # the deciding tick's price
    legs: tuple[Leg, ...]
    decided_mono: float           # time.monotonic() when decided
    cause: str = "tick"           # tick | command
    done: asyncio.Future | None = None  # resolved with the list of LegResults


@dataclass
class ReconcileJob:
    why: str
    confirm: bool = True          # read twice before adopting (not at startup)
    done: asyncio.Future | None = None


class Bot(Protocol):
    """What the executor needs from the bot that owns the strategy."""

    @property
    def state(self) -> State: ...

    def adopt_state(self, to: State, cause: str, why: str) -> None: ...

    def pause(self, reason: str) -> None: ...

    def entries_blocked(self) -> str | None: ...  # why new entries may not go out now, or None


@dataclass
class Settings:
    db_id: str
    symbol: str
    amount_usdt: float
    max_entry_delay_s: float = 10.0
    max_rejects: int = 3
    reconcile_rule: str = "exchange"


@dataclass
class _Stream:
    """What the user-data stream last said about the position."""

    qty: float | None = None
    time_ms: int = 0
    updates: int = 0  # ACCOUNT_UPDATEs taken so far (a reconcile's REST read supersedes the earlier ones)
    commission: dict[str, float] = field(default_factory=dict)  # client id -> USDT so far
    foreign_seen: set[tuple[int, str]] = field(default_factory=set)


class Executor:
    """One FIFO of jobs; ``run()`` carries them out until ``stop()``."""

    def __init__(self, exchange: Exchange, driver: OrderDriver, ledger: Ledger, bot: Bot, settings: Settings, *,
                 post_status: Callable[..., None], sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, notifier: Any = None) -> None:
        self.exchange = exchange
        self.driver = driver
        self.ledger = ledger
        self.bot = bot
        self.settings = settings
        self.post = post_status   # run a store write on the priority lane without waiting
        self.sleep = sleep
        self.clock = clock
        self.notifier = notifier  # notify.Notifier (never raises, never blocks) or None
        self.prefix = f"bm-{settings.db_id}-"
        self.rejects = 0
        self.busy = False
        self.last_fill_ms = 0
        self._queue: deque[Job | ReconcileJob] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stream = _Stream()

    # ---- deciding ----------------------------------------------------------------------------------
    @property
    def rules(self) -> SymbolRules:
        return self.exchange.rules

    def plan(self, price: float, orders: tuple[Order, ...]) -> tuple[tuple[Leg, ...], str | None]:
        """The legs for a transition's orders; entries below the exchange minimums are left out
        and the reason returned (the caller leaves the strategy FLAT, as the backtest does)."""
        legs, refused = [], None
        for order in orders:
            if order.action.closes:
                legs.append(Leg(order.action, order.reason))
                continue
            try:
                legs.append(Leg(order.action, order.reason, order_qty(self.settings.amount_usdt, price, self.rules)))
            except OrderSizeError as exc:
                refused = str(exc)
        return tuple(legs), refused

    def submit(self, job: Job) -> None:
        """Queue a job (never blocks)."""
        if self._stopping:
            self._dropped(job, "the bot is stopping")
            return
        if sum(isinstance(j, Job) for j in self._queue) >= MAX_BACKLOG_JOBS:
            log.error("the order executor is %d transitions behind: dropping them all and reconciling",
                      MAX_BACKLOG_JOBS)
            self._flush("the executor fell too far behind")
            self._dropped(job, "the executor fell too far behind")
            self.request_reconcile("executor backlog dropped", confirm=False)
            return
        if timing.ON and not self.idle:
            timing.mark("behind", job.transition_id)  # it waits for an earlier order's answer
        self._queue.append(job)
        self._wake.set()

    def request_reconcile(self, why: str, confirm: bool = True) -> asyncio.Future:
        """Queue a reconciliation (one at a time: an already queued one is reused)."""
        for job in self._queue:
            if isinstance(job, ReconcileJob):
                return job.done  # type: ignore[return-value]
        job = ReconcileJob(why, confirm, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wake.set()
        return job.done  # type: ignore[return-value]

    @property
    def backlog(self) -> int:
        """Transitions decided and not carried out yet (including the one running)."""
        return sum(isinstance(j, Job) for j in self._queue) + (1 if self.busy else 0)

    def backlog_age_s(self) -> float:
        """How long ago the oldest queued transition was decided (0 when none is waiting)."""
        for job in self._queue:
            if isinstance(job, Job):
                return self.clock() - job.decided_mono
        return 0.0

    @property
    def idle(self) -> bool:
        return not self.busy and not self._queue

    # ---- running ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the job in flight, drop the rest (logged: no new order goes out once the bot
        is stopping), set the strategy state to the position held, then ``run`` returns."""
        self._stopping = True
        self._flush("the bot is stopping")
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    self._resettle("the bot is stopping", "stopping")
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._queue.popleft()
            self.busy = True
            result: Any = None
            try:
                if isinstance(job, ReconcileJob):
                    await self._reconcile(job.why, job.confirm)
                else:
                    result = await self._run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("the order executor failed on %s", _describe(job))
                result = exc
                if not isinstance(job, ReconcileJob):
                    self._flush("an earlier order failed unexpectedly")
                    self.request_reconcile("after an unexpected order error", confirm=False)
            finally:
                self.busy = False
            if job.done is not None and not job.done.done():
                if isinstance(result, Exception):
                    job.done.set_exception(result)
                else:
                    job.done.set_result(result)
            if not self._queue:
                self._check_stream_position()

    async def _run_job(self, job: Job) -> list[LegResult]:
        results: list[LegResult] = []
        for leg in job.legs:
            late_s = self.clock() - job.decided_mono
            if leg.action.closes:
                held = Decimal(repr(abs(self.ledger.qty))) if self.ledger.qty else Decimal(0)
                qty = self.rules.floor_qty(held)
                if not qty:
                    log.info("%s (%s): no position to close", leg.action, leg.reason)
                    continue
            else:
                blocked, cause = self.bot.entries_blocked(), "paused"
                if late_s > self.settings.max_entry_delay_s:
                    blocked = f"decided {late_s:.1f} s ago at {job.price}, more than MAX_ENTRY_DELAY_SECONDS"
                    cause = "stale"
                if blocked:
                    log.error("entry %s not sent: %s", leg.action, blocked)
                    self._resettle(f"the entry before it was not sent ({blocked})", cause)
                    return results
                qty = leg.qty  # type: ignore[assignment]
            intent = new_intent(self.settings.db_id, job.transition_id, leg.action, leg.reason, qty, job.price,
                                job.time_ms)
            if timing.ON:
                timing.mark("commit", intent.client_order_id)
            await self.driver.submit(write_intent, intent, symbol=self.settings.symbol)
            if timing.ON:
                timing.mark("committed", intent.client_order_id)
            intent.created_wall_s = time.time()
            late_s = self.clock() - job.decided_mono  # the commit itself may have waited (a full or locked disk)
            if late_s > self.settings.max_entry_delay_s:
                if not leg.action.closes:
                    await self.driver.submit(_mark_stale, intent.client_order_id)
                    log.error("entry %s not sent: decided %.1f s ago at %s, more than MAX_ENTRY_DELAY_SECONDS",
                              intent.client_order_id, late_s, job.price)
                    self._resettle("the entry before it went stale while being recorded", "stale")
                    return results
                log.warning("sending %s (%s) decided %.1f s ago at %s: closes always go out", leg.action, leg.reason,
                            late_s, job.price)
            res = await self.driver.complete(intent, resend_ok=self._resend_ok(job, leg))
            results.append(res)
            if res.status is not OrderStatus.FILLED:
                await self._leg_failed(res)
                return results
            self.last_fill_ms = max(self.last_fill_ms, res.exchange_time_ms)
            if not leg.action.closes:
                self.rejects = 0
        return results

    def _resend_ok(self, job: Job, leg: Leg) -> Callable[[], bool]:
        if leg.action.closes:
            return lambda: True
        return lambda: self.clock() - job.decided_mono <= self.settings.max_entry_delay_s \
            and self.bot.entries_blocked() is None

    async def _leg_failed(self, res: LegResult) -> None:
        it = res.intent
        if it.action.closes:
            self._flush(f"the close {it.client_order_id} before it failed")
            await self._reconcile(f"the close {it.client_order_id} failed", confirm=False)
            return
        if res.status is OrderStatus.REJECTED and res.error is not None:
            self.rejects += 1
        self._resettle(f"the entry {it.client_order_id} before it was {res.status}", "rejected")
        if self.rejects >= self.settings.max_rejects and self.bot.entries_blocked() is None:
            self.bot.pause(f"{self.rejects} entries in a row rejected by the exchange; last: {res.error}")

    def _resettle(self, why: str, cause: str) -> None:
        """Drop the orders decided after a failure and set the strategy state to the position held."""
        self._flush(why)
        target = _STATE_OF_SIGN[sign(self.ledger.qty)]
        if POSITION[self.bot.state] != sign(self.ledger.qty):
            self.bot.adopt_state(target, cause, why)

    def _flush(self, why: str) -> int:
        """Drop every queued order job (reconciliations stay)."""
        kept: deque[Job | ReconcileJob] = deque()
        dropped = 0
        while self._queue:
            job = self._queue.popleft()
            if isinstance(job, ReconcileJob):
                kept.append(job)
            else:
                self._dropped(job, why)
                dropped += 1
        self._queue = kept
        return dropped

    def _dropped(self, job: Job, why: str) -> None:
        actions = ", ".join(f"{leg.action} ({leg.reason})" for leg in job.legs)
        log.warning("not sent: %s decided at %s (transition %d): %s", actions, job.price, job.transition_id, why)
        if job.done is not None and not job.done.done():
            job.done.set_result([])

    # ---- knowing the position ----------------------------------------------------------------------
    async def reconcile_now(self, why: str, confirm: bool = False) -> None:
        """Queue a reconciliation and wait for it."""
        await self.request_reconcile(why, confirm)

    async def _reconcile(self, why: str, confirm: bool) -> None:
        """Compare the bot's position with the exchange's; the exchange is the truth."""
        seen = self._stream.updates
        amt, entry = await self.exchange.position()
        qty = float(amt)
        if abs(qty - self.ledger.qty) > EPS and confirm:
            await self.sleep(RECONCILE_CONFIRM_S)
            seen = self._stream.updates
            amt, entry = await self.exchange.position()
            qty = float(amt)
        if self._stream.updates == seen:
            # This answer is newer than every position the stream has shown: it replaces them. (A
            # stream position REST does not confirm — a stale, garbled or future-dated update — would
            # otherwise queue the same reconciliation again at once, for ever.)
            self._stream.qty, self._stream.time_ms = None, 0
        held, before = self.ledger.qty, self.bot.state
        orders_waiting = any(isinstance(j, Job) for j in self._queue)
        changed = abs(qty - held) > EPS
        state_off = not orders_waiting and POSITION[before] != sign(qty)
        if not changed and not state_off:
            if qty and abs(entry - self.ledger.entry_price) > 1e-9:
                self.ledger.entry_price = entry
                self.post(_write_ledger, ledger_status(self.ledger))
            return
        # The rule: the exchange is the truth — flat there means FLAT here, a position there means
        # LONG or SHORT here, with the exchange's quantity and entry price.
        target = _STATE_OF_SIGN[sign(qty)]
        log.critical("RECONCILE (%s): stored state %s (position %s) but the exchange holds %s %s @ %s: adopting %s",
                     why, before, held, qty, self.settings.symbol, entry, target)
        if changed:
            self._flush(f"the position changed on the exchange ({why})")
        self.ledger.qty, self.ledger.entry_price = qty, (entry if qty else 0.0)
        self.post(_write_reconciliation, why, held, qty, entry, before, target, self.settings.reconcile_rule,
                  ledger_status(self.ledger))
        if self.notifier is not None:
            self.notifier.reconcile(why=why, stored_qty=held, exchange_qty=qty, exchange_entry_price=entry or None,
                                    adopted_state=target.value, rule=self.settings.reconcile_rule)
        if self.bot.state is not target:
            self.bot.adopt_state(target, "reconcile", f"exchange position {qty}")
        if self.settings.reconcile_rule == "pause":
            self.bot.pause(f"position mismatch at {why}; check the account, then resume")

    def on_position(self, qty: float, time_ms: int) -> None:
        """ACCOUNT_UPDATE: the exchange's position for our symbol at exchange time ``time_ms``."""
        if time_ms < self._stream.time_ms:
            return
        self._stream.qty, self._stream.time_ms = qty, time_ms
        self._stream.updates += 1
        if self.idle:
            self._check_stream_position()

    def _check_stream_position(self) -> None:
        s = self._stream
        if s.qty is None or s.time_ms < self.last_fill_ms or abs(s.qty - self.ledger.qty) <= EPS:
            return
        log.warning("the user-data stream shows a position of %s %s, the bot holds %s: reconciling", s.qty,
                    self.settings.symbol, self.ledger.qty)
        self.request_reconcile("user-data stream: position changed")

    def on_order_update(self, o: dict[str, Any]) -> None:
        """ORDER_TRADE_UPDATE's order object ``o`` for our symbol."""
        cid = str(o.get("c", ""))
        status, execution = o.get("X"), o.get("x")
        if cid.startswith(self.prefix):
            fees = self._stream.commission
            if execution == "TRADE" and o.get("N") == "USDT":
                fees[cid] = fees.get(cid, 0.0) + _float(o.get("n"))
            order = {"status": status, "executedQty": o.get("z"), "avgPrice": o.get("ap"), "orderId": o.get("i"),
                     "updateTime": o.get("T"), "clientOrderId": cid}
            final = status in ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH")
            total = fees.pop(cid, None) if final else None
            self.driver.stream_update(cid, order, total)
            return
        if execution == "TRADE" or status in ("FILLED", "PARTIALLY_FILLED"):
            key = (int(o.get("i") or 0), str(status))
            if key in self._stream.foreign_seen:
                return
            if len(self._stream.foreign_seen) > 1000:
                self._stream.foreign_seen.clear()
            self._stream.foreign_seen.add(key)
            log.critical("a fill this bot did not cause: %s %s %s @ %s (order %s, client id %r, %s): reconciling",
                         o.get("S"), o.get("l"), self.settings.symbol, o.get("L"), o.get("i"), cid[:40], status)
            self.request_reconcile("a fill this bot did not cause", confirm=False)


def _float(text: Any) -> float:
    try:
        return float(text or 0)
    except (TypeError, ValueError):
        return 0.0


def _describe(job: Job | ReconcileJob) -> str:
    if isinstance(job, ReconcileJob):
        return f"reconciliation ({job.why})"
    return f"transition {job.transition_id}"


# ---- writes run on the DB writer thread ----------------------------------------------------------

def _write_ledger(store, values: dict[str, Any]) -> None:
    store.set_status(values)


def _write_reconciliation(store, why: str, held: float, qty: float, entry: float, before: State, target: State,
                          rule: str, values: dict[str, Any]) -> None:
    store.add_reconciliation(why, held, qty, entry if qty else None, before, target, rule)
    store.set_status(values)


def _mark_stale(store, cid: str) -> None:
    store.update_order(cid, status=OrderStatus.EXPIRED, error_message="not sent: stale when recorded")


__all__ = ["Executor", "Job", "Leg", "ReconcileJob", "Settings", "MAX_BACKLOG_JOBS"]
