"""The order driver: carries one committed intent to its outcome against the exchange.

The policy — what to do after each answer — is ``orders.decide`` (pure, tested without a
network). This module only does the I/O of each step: send the MARKET order, look it up by
client id, wait, resync the clock, write the outcome to SQLite. It also holds the intent
type and the writes that run on the DB writer thread.

The user-data stream feeds ``stream_update``: a fill pushed by the exchange ends a wait for
an order whose answer was lost, and carries the commission actually charged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orders as lifecycle
import timing
from broker import Ledger, client_order_id, ledger_status
from config import env
from exchange import ApiError, Exchange, Outcome, classify
from orders import OrderStatus
from state import Action, Reason

log = logging.getLogger("bollmin.orders")


def fault(point: str) -> None:
    """Fault injection for the crash tests: ``BOLLMIN_FAULT=<point>`` kills the process there.

    Points: ``after_intent`` (committed, not sent), ``after_send`` (sent, reply not read),
    ``after_reply`` (reply read, not recorded). Unset in production.
    """
    if point == _FAULT:
        log.critical("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT = env("BOLLMIN_FAULT")


@dataclass
class Intent:
    """An order intent as stored in ``orders``."""

    client_order_id: str
    action: Action
    reason: Reason
    qty: Decimal
    reduce_only: bool
    tick_price: float
    time_ms: int                 # exchange time of the tick that decided it
    transition_id: int = 0
    created_wall_s: float = 0.0  # wall clock when committed


@dataclass
class LegResult:
    intent: Intent
    status: OrderStatus
    fill_price: float = 0.0
    filled_qty: float = 0.0
    fee_usdt: float = 0.0
    realized_pnl_usdt: float = 0.0
    error: ApiError | None = None
    order_id: int | None = None      # the exchange's order id (filled legs)
    exchange_time_ms: int = 0        # when the exchange executed it (filled legs)


Submit = Callable[..., Awaitable[Any]]  # run a function on the DB writer (priority lane) and await its commit
Post = Callable[..., None]              # run a function on the DB writer (priority lane) without waiting


class OrderDriver:
    """Sends, resolves and records live orders, one at a time (the executor's hands)."""

    def __init__(self, exchange: Exchange, submit: Submit, post: Post, ledger: Ledger, *, symbol: str,
                 on_event: Callable[[str, str], None] | None = None,
                 on_rate_limit: Callable[[ApiError], None] | None = None,
                 notifier: Any = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.exchange = exchange
        self.submit = submit
        self.post = post
        self.ledger = ledger
        self.symbol = symbol
        self.event = on_event or (lambda level, msg: log.log(getattr(logging, level), "%s", msg))
        self.on_rate_limit = on_rate_limit or (lambda err: None)
        self.notifier = notifier  # notify.Notifier (never raises, never blocks) or None
        self.sleep = sleep
        # What the user-data stream said, kept only as long as it can matter (bounded: an order's
        # commission that never arrives is forgotten after MAX_REMEMBERED newer orders).
        self._pushed: dict[str, dict[str, Any]] = {}       # order in progress -> as the stream last showed it
        self._pushed_fee: dict[str, float] = {}            # order in progress -> commission (USDT) it reported
        self._waiting: dict[str, asyncio.Event] = {}       # order in progress -> set when the stream shows it done
        self._estimated: dict[str, float] = {}             # filled order -> fee recorded, estimated from the rate

    # ---- one order -------------------------------------------------------------------------------
    async def complete(self, intent: Intent, *, look_up_first: bool = False,
                       resend_ok: Callable[[], bool] = lambda: True) -> LegResult:
        """Drive one committed intent to filled, rejected or expired (never sending it twice).

        ``look_up_first`` (after a restart) starts with a look-up: the order is taken as never
        executed only once the exchange's clock is past recvWindow from now.
        """
        ex = self.exchange
        recv = ex.client.REQUEST_RECVWINDOW
        cid = intent.client_order_id
        progress = lifecycle.Progress()
        step: lifecycle.Step
        if look_up_first:
            progress = progress.sending(ex.server_time_ms(), recv)
            step = lifecycle.Query(0.0)
        else:
            step = lifecycle.Send()
        self._waiting[cid] = asyncio.Event()
        try:
            while True:
                if isinstance(step, lifecycle.Send):
                    progress = progress.sending(ex.server_time_ms(), recv)
                    reply = await self._send(intent)
                elif isinstance(step, lifecycle.Resync):
                    offset = await self._resync()
                    self.event("WARNING", f"order {cid}: timestamp refused (-1021); clock resynced (offset "
                                          f"{offset} ms), sending again")
                    step = lifecycle.Send()
                    continue
                elif isinstance(step, lifecycle.Query):
                    reply = await self._look_up(intent, step)
                elif isinstance(step, lifecycle.RecordFill):
                    fault("after_reply")
                    return await self._record_fill(intent, step.order)
                else:
                    return await self._record_failure(intent, step.status, step.error)
                confirming = progress.confirming
                step, progress = lifecycle.decide(progress, reply, now_ms=ex.server_time_ms(), resend_ok=resend_ok())
                if isinstance(step, lifecycle.Send) and isinstance(reply, lifecycle.Missing):
                    why = "was refused by the rate limit and did not execute" if confirming else \
                        "never reached the exchange"
                    self.event("WARNING", f"order {cid} {why}; sending the same order again")
                    await self.submit(_mark, cid, status=OrderStatus.PENDING)
        finally:
            self._waiting.pop(cid, None)
            self._pushed.pop(cid, None)
            self._pushed_fee.pop(cid, None)

    async def _send(self, intent: Intent) -> lifecycle.Reply:
        ex = self.exchange
        try:
            fault("after_intent")
            if timing.ON:
                timing.mark("send", intent.client_order_id)
            res = await ex.place_market(intent.action.side, ex.rules.format_qty(intent.qty), intent.reduce_only,
                                        intent.client_order_id)
            if timing.ON:
                timing.mark("answered", intent.client_order_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = classify(exc, ex.server_time_ms())
            if err.outcome is Outcome.RATE_LIMITED:
                self.on_rate_limit(err)
            return lifecycle.Refused(err)
        fault("after_send")
        return lifecycle.Placed(res)

    async def _look_up(self, intent: Intent, step: lifecycle.Query) -> lifecycle.Reply:
        cid = intent.client_order_id
        if step.mark is not None:
            err = step.mark
            what = f"rate limited, waiting {step.after_s:g}s" if err.outcome is Outcome.RATE_LIMITED else \
                "outcome unknown"
            self.event("WARNING", f"order {cid}: {what} ({err}); querying by client order id")
            await self.submit(_mark, cid, status=OrderStatus.UNKNOWN, error_code=err.code,
                              error_message=str(err)[:300])
        if step.after_s > 0 and cid not in self._pushed:
            await self._pause(cid, step.after_s)
        pushed = self._pushed.get(cid)
        if pushed is not None and pushed.get("status") in ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"):
            return lifecycle.Found(pushed)  # the user-data stream already told us
        try:
            found = await self.exchange.query_order(cid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return lifecycle.QueryFailed(classify(exc, self.exchange.server_time_ms()))
        return lifecycle.Missing() if found is None else lifecycle.Found(found)

    async def _pause(self, cid: str, seconds: float) -> None:
        """Wait ``seconds``, or less when the user-data stream reports the order done."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waiter = self._waiting.get(cid)
        if waiter is None:
            await sleeper
            return
        watcher = asyncio.ensure_future(waiter.wait())
        try:
            await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            watcher.cancel()

    async def _resync(self) -> int:
        try:
            return await self.exchange.sync_time()
        except Exception as exc:
            log.warning("server time resync failed: %s", classify(exc))
            return self.exchange.offset_ms

    async def _record_fill(self, intent: Intent, res: dict[str, Any]) -> LegResult:
        # The fee is the commission the user-data stream reported when it has already arrived,
        # else an estimate from the account's taker rate, replaced when the stream reports it.
        cid = intent.client_order_id
        qty = float(res.get("executedQty", 0) or 0)
        price = float(res.get("avgPrice", 0) or 0) or intent.tick_price
        order_id = res.get("orderId")
        when = int(res.get("updateTime") or res.get("time") or 0)
        fee = self._pushed_fee.pop(cid, None)
        if fee is None:
            quote = float(res.get("cumQuote", 0) or 0) or qty * price
            fee = quote * self.exchange.taker_rate
            self._estimated[cid] = fee
        _bound(self._estimated)
        pnl = self.ledger.apply(intent.action, price, qty, fee)
        # Not awaited: the next intent's commit (same lane) lands after it, usually in one transaction.
        self.post(_record_fill, intent, order_id, when, price, qty, fee, pnl, ledger_status(self.ledger))
        self._pushed.pop(cid, None)
        self.event("INFO", f"{intent.action.value} {qty} {self.symbol} @ {price} ({intent.reason.value}) "
                           f"filled, order {order_id}, fee {fee:.4f} USDT")
        if self.notifier is not None:
            self.notifier.fill(action=intent.action.value, reason=intent.reason.value, qty=qty, price=price,
                               paper=False, fee_usdt=fee, realized_pnl_usdt=pnl if intent.action.closes else None,
                               client_order_id=cid)
        return LegResult(intent, OrderStatus.FILLED, price, qty, fee, pnl, order_id=order_id, exchange_time_ms=when)

    async def _record_failure(self, intent: Intent, status: OrderStatus, err: ApiError) -> LegResult:
        await self.submit(_mark, intent.client_order_id, status=status, error_code=err.code,
                          error_message=str(err)[:300])
        self._pushed.pop(intent.client_order_id, None)
        self.event("ERROR", f"{intent.action.value} {intent.qty} {self.symbol} ({intent.reason.value}) "
                            f"{status}: {err}")
        if self.notifier is not None:
            self.notifier.rejected(action=intent.action.value, reason=intent.reason.value, qty=float(intent.qty),
                                   code=err.code, message=f"{status}: {err.message}",
                                   client_order_id=intent.client_order_id)
        return LegResult(intent, status, error=err)

    # ---- the user-data stream --------------------------------------------------------------------
    def stream_update(self, cid: str, order: dict[str, Any], commission_usdt: float | None) -> None:
        """One of our orders as ORDER_TRADE_UPDATE shows it (fields as in a REST order).

        ``commission_usdt`` is the order's total commission once it is done (None otherwise,
        or when charged in another asset).
        """
        in_progress = cid in self._waiting
        if in_progress:
            self._pushed[cid] = order
        if commission_usdt is not None:
            estimated = self._estimated.pop(cid, None)
            if estimated is None:
                if in_progress:
                    self._pushed_fee[cid] = commission_usdt   # the fill is not recorded yet: it takes this fee
            elif abs(estimated - commission_usdt) > 1e-12:
                self.ledger.fees_usdt += commission_usdt - estimated
                self.post(_settle_fee, cid, commission_usdt, ledger_status(self.ledger))
        waiter = self._waiting.get(cid)
        if waiter is not None and order.get("status") in ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH"):
            waiter.set()

# ---- intents ------------------------------------------------------------------------------------

MAX_REMEMBERED = 1000


def _bound(d: dict[str, Any]) -> None:
    """Keep ``d`` (insertion-ordered) to its newest MAX_REMEMBERED entries."""
    while len(d) > MAX_REMEMBERED:
        d.pop(next(iter(d)))


def new_intent(db_id: str, transition_id: int, action: Action, reason: Reason, qty: Decimal, tick_price: float,
               time_ms: int) -> Intent:
    """The intent for one leg of a transition; its client id is ``bm-<db id>-<transition>-<c|o>``."""
    leg = "c" if action.closes else "o"
    return Intent(client_order_id(db_id, transition_id, leg), action, reason, qty, action.closes, tick_price,
                  time_ms, transition_id)


def intent_from_row(row: dict[str, Any]) -> Intent:
    return Intent(row["client_order_id"], Action(row["action"]), Reason(row["reason"]),
                  Decimal(repr(row["qty"])), bool(row["reduce_only"]), row["tick_price"], row["time_ms"],
                  row["transition_id"] or 0, row["created_ms"] / 1000.0)


# ---- writes run on the DB writer thread (each in its own savepoint) -----------------------------

def write_intent(store, it: Intent, *, symbol: str) -> None:
    store.add_order(client_order_id=it.client_order_id, transition_id=it.transition_id, time_ms=it.time_ms,
                    symbol=symbol, action=it.action, reason=it.reason, side=it.action.side, qty=float(it.qty),
                    reduce_only=it.reduce_only, paper=False, tick_price=it.tick_price)


def _mark(store, cid: str, **fields: Any) -> None:
    store.update_order(cid, **fields)


def _settle_fee(store, cid: str, fee: float, ledger_values: dict[str, Any]) -> None:
    store.update_order(cid, fee_usdt=fee)
    store.conn.execute("UPDATE fills SET fee_usdt = ? WHERE order_id = "
                       "(SELECT id FROM orders WHERE client_order_id = ?)", (fee, cid))
    store.set_status(ledger_values)


def _record_fill(store, intent: Intent, exchange_order_id: Any, when_ms: int, price: float, qty: float, fee: float,
                 pnl: float, ledger_values: dict[str, Any]) -> None:
    store.update_order(intent.client_order_id, status=OrderStatus.FILLED, exchange_order_id=exchange_order_id,
                       fill_price=price, filled_qty=qty, fee_usdt=fee,
                       realized_pnl_usdt=pnl if intent.action.closes else None)
    row = store.conn.execute("SELECT id, time_ms FROM orders WHERE client_order_id = ?",
                             (intent.client_order_id,)).fetchone()
    store.add_fill(row["id"], when_ms or row["time_ms"], price, qty, fee, pnl, False)
    store.set_status(ledger_values)


def wall_age_s(intent: Intent) -> float:
    """Seconds since the intent was committed (0 when unknown)."""
    return time.time() - intent.created_wall_s if intent.created_wall_s else 0.0


__all__ = ["OrderDriver", "Intent", "LegResult", "new_intent", "intent_from_row", "write_intent", "fault"]
