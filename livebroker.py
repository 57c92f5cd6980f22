"""Live orders, exactly once (SPEC §4, DESIGN "One order's life").

1. Every order is first an *intent*: a row in ``orders`` (status ``pending``, deterministic
   ``client_order_id``) committed to SQLite **before** anything is sent.
2. It is sent as a MARKET order with ``newOrderRespType=RESULT``.
3. A definite answer (FILLED, or a rejection) is recorded. Anything else — a timeout, a 5xx,
   -1007, a 429/418 — is an *unknown* outcome: the order is looked up by
   ``origClientOrderId`` until the exchange shows it, or until it provably never executed
   (the exchange refuses a request older than ``recvWindow``, so once our clock says
   ``sent + recvWindow`` has passed on the server and the id is still unknown, it never will
   be). Only then may the same intent be sent again — never a blind resend.
4. After a restart, every ``pending``/``unknown`` intent is resolved the same way before
   trading. A proven-unsent intent younger than ``INTENT_TTL_S`` is carried out (the decision
   was committed); an older one expires and reconciliation takes the exchange as the truth.

A reversal is close then open; if the close fails the open is not sent.
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

from broker import Ledger, client_order_id, order_qty
from engine import Transition
from exchange import ApiError, Exchange, Outcome, classify
from state import Action, Order, Reason

log = logging.getLogger("bollmin.orders")

INTENT_TTL_S = 60.0          # a committed, provably unsent intent older than this is not sent after a restart
RESOLVE_MARGIN_MS = 1500     # extra wait past recvWindow before concluding "never executed"


def fault(point: str) -> None:
    """Fault injection for the crash tests: ``BOLLMIN_FAULT=<point>`` kills the process there.

    Points: ``after_intent`` (committed, not sent), ``after_send`` (sent, reply not read),
    ``after_reply`` (reply read, not recorded). Unset in production.
    """
    if os.environ.get("BOLLMIN_FAULT") == point:
        log.critical("fault injection: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Intent:
    """An order intent as stored in ``orders``."""

    client_order_id: str         # assigned by write_intents from the DB id, transition id and leg
    action: Action
    reason: Reason
    qty: Decimal
    reduce_only: bool
    tick_price: float
    time_ms: int
    leg: str = "o"               # "c" close, "o" open (part of the client order id)
    order_id: int = 0            # row id in orders
    created_wall_s: float = 0.0  # wall clock when committed


@dataclass
class LegResult:
    intent: Intent
    status: str                  # filled | rejected | expired
    fill_price: float = 0.0
    filled_qty: float = 0.0
    fee_usdt: float = 0.0
    realized_pnl_usdt: float = 0.0
    error: ApiError | None = None
    order_id: int | None = None  # the exchange's order id (filled legs)


Submit = Callable[..., Awaitable[Any]]  # run a function on the DB writer and await its commit


class LiveBroker:
    """Sends, resolves and records live orders. One transition at a time."""

    def __init__(self, exchange: Exchange, submit: Submit, ledger: Ledger, *, db_id: str, symbol: str,
                 amount_usdt: float, on_event: Callable[[str, str], None],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.exchange = exchange
        self.submit = submit
        self.ledger = ledger
        self.db_id = db_id
        self.symbol = symbol
        self.amount_usdt = amount_usdt
        self.event = on_event
        self.sleep = sleep

    # ---- planning ----------------------------------------------------------------------------
    def make_intents(self, tr: Transition, orders: tuple[Order, ...]) -> list[Intent]:
        """Size the orders of a transition. Raises OrderSizeError for an entry below minimums."""
        intents = []
        held = Decimal(repr(abs(self.ledger.qty))) if self.ledger.qty else Decimal(0)
        rules = self.exchange.rules
        for order in orders:
            if order.action.closes:
                if not held:
                    continue  # nothing to close (already flat on the exchange)
                qty, leg = rules.floor_qty(held), "c"
            else:
                qty, leg = order_qty(self.amount_usdt, tr.price, rules), "o"
            intents.append(Intent("", order.action, order.reason, qty, order.action.closes, tr.price, tr.time_ms,
                                  leg))
        return intents

    # ---- one leg -----------------------------------------------------------------------------
    async def complete(self, intent: Intent, *, send_first: bool = True, deadline_ms: int = 0,
                       resent: bool = False) -> LegResult:
        """Drive one committed intent to filled, rejected or expired (never sending it twice).

        ``send_first=False`` (after a restart) starts by looking the order up; it is taken as
        never executed only once the server clock passes ``deadline_ms``.
        """
        ex = self.exchange
        need_send = send_first
        clock_retries = 0
        while True:
            if need_send:
                need_send = False
                sent_ms = ex.server_time_ms()
                try:
                    fault("after_intent")
                    res = await ex.place_market(intent.action.side, ex.rules.format_qty(intent.qty),
                                                intent.reduce_only, intent.client_order_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    err = classify(exc)
                    if err.outcome in (Outcome.REJECTED, Outcome.AUTH):
                        return await self._record_failure(intent, "rejected", err)
                    if err.outcome is Outcome.CLOCK and clock_retries < 3:
                        clock_retries += 1
                        offset = await self._resync()
                        self.event("WARNING", f"order {intent.client_order_id}: timestamp refused (-1021); "
                                              f"clock resynced (offset {offset} ms), sending again")
                        need_send = True  # -1021 is a definite "not executed"
                        continue
                    # Unknown outcome (timeout, 5xx, -1007) or rate limited: find out, never resend blind.
                    wait = err.retry_after_s if err.outcome is Outcome.RATE_LIMITED else 0.0
                    self.event("WARNING", f"order {intent.client_order_id}: outcome unknown ({err}); "
                                          f"querying by client order id")
                    await self.submit(_mark, intent.client_order_id, status="unknown", error_code=err.code,
                                      error_message=str(err)[:300])
                    deadline_ms = sent_ms + ex.client.REQUEST_RECVWINDOW + RESOLVE_MARGIN_MS
                    if wait:
                        await self.sleep(wait)
                else:
                    fault("after_send")
                    if res.get("status") == "FILLED":
                        fault("after_reply")
                        return await self._record_fill(intent, res)
                    deadline_ms = sent_ms + ex.client.REQUEST_RECVWINDOW + RESOLVE_MARGIN_MS
            # Resolve by origClientOrderId.
            try:
                found = await ex.query_order(intent.client_order_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = classify(exc)
                await self.sleep(err.retry_after_s if err.outcome is Outcome.RATE_LIMITED else 1.0)
                continue
            if found is not None:
                status = found.get("status")
                if status == "FILLED":
                    return await self._record_fill(intent, found)
                if status in ("CANCELED", "EXPIRED", "REJECTED", "EXPIRED_IN_MATCH"):
                    if float(found.get("executedQty", 0) or 0) > 0:
                        return await self._record_fill(intent, found)
                    return await self._record_failure(
                        intent, "expired", ApiError(Outcome.REJECTED, None, f"exchange status {status}"))
                await self.sleep(0.5)  # NEW / PARTIALLY_FILLED: a MARKET order finishes in moments
                continue
            if ex.server_time_ms() < deadline_ms:
                await self.sleep(0.5)
                continue
            # Proven: the exchange never executed it and never will.
            age = time.time() - intent.created_wall_s if intent.created_wall_s else 0.0
            if not resent and age < INTENT_TTL_S:
                self.event("WARNING", f"order {intent.client_order_id} never reached the exchange; sending it now")
                resent = True
                need_send = True
                continue
            return await self._record_failure(
                intent, "expired", ApiError(Outcome.REJECTED, None, "never executed by the exchange"))

    async def _resync(self) -> int:
        try:
            return await self.exchange.sync_time()
        except Exception as exc:
            log.warning("server time resync failed: %s", classify(exc))
            return self.exchange.offset_ms

    async def _record_fill(self, intent: Intent, res: dict[str, Any]) -> LegResult:
        # The fee is first estimated from the account's taker rate, so that the open of a
        # reversal is not delayed by another request; ``settle_fees`` replaces it with the
        # commission the exchange actually charged once the transition is done.
        qty = float(res.get("executedQty", 0) or 0)
        price = float(res.get("avgPrice", 0) or 0) or intent.tick_price
        order_id = res.get("orderId")
        fee = float(res.get("cumQuote", 0) or 0) * self.exchange.taker_rate
        pnl = self.ledger.apply(intent.action, price, qty, fee)
        from broker import ledger_status

        await self.submit(_record_fill, intent, res, price, qty, fee, pnl, ledger_status(self.ledger))
        self.event("INFO", f"{intent.action.value} {qty} {self.symbol} @ {price} ({intent.reason.value}) "
                           f"filled, order {order_id}, fee {fee:.4f} USDT")
        return LegResult(intent, "filled", price, qty, fee, pnl, order_id=order_id)

    async def settle_fees(self, legs: list[LegResult]) -> None:
        """Replace estimated fees with the commission the exchange charged (userTrades)."""
        from broker import ledger_status

        for leg in legs:
            if leg.order_id is None:
                continue
            actual = await self.exchange.order_fee_usdt(int(leg.order_id))
            if actual is None or abs(actual - leg.fee_usdt) < 1e-9:
                continue
            self.ledger.fees_usdt += actual - leg.fee_usdt
            leg.fee_usdt = actual
            await self.submit(_settle_fee, leg.intent.client_order_id, actual, ledger_status(self.ledger))

    async def _record_failure(self, intent: Intent, status: str, err: ApiError) -> LegResult:
        await self.submit(_mark, intent.client_order_id, status=status, error_code=err.code,
                          error_message=str(err)[:300])
        self.event("ERROR", f"{intent.action.value} {intent.qty} {self.symbol} ({intent.reason.value}) "
                            f"{status}: {err}")
        return LegResult(intent, status, error=err)


# ---- writes run on the DB writer thread (each in its own transaction) ---------------------------

def _mark(store, cid: str, **fields: Any) -> None:
    store.update_order(cid, **fields)


def _settle_fee(store, cid: str, fee: float, ledger_values: dict[str, Any]) -> None:
    store.update_order(cid, fee_usdt=fee)
    store.conn.execute("UPDATE fills SET fee_usdt = ? WHERE order_id = "
                       "(SELECT id FROM orders WHERE client_order_id = ?)", (fee, cid))
    store.set_status(ledger_values)


def _record_fill(store, intent: Intent, res: dict[str, Any], price: float, qty: float, fee: float, pnl: float,
                 ledger_values: dict[str, Any]) -> None:
    store.update_order(intent.client_order_id, status="filled", exchange_order_id=res.get("orderId"),
                       fill_price=price, filled_qty=qty, fee_usdt=fee,
                       realized_pnl_usdt=pnl if intent.action.closes else None)
    row = store.conn.execute("SELECT id, time_ms FROM orders WHERE client_order_id = ?",
                             (intent.client_order_id,)).fetchone()
    store.add_fill(row["id"], int(res.get("updateTime") or row["time_ms"]), price, qty, fee, pnl, False)
    store.set_status(ledger_values)


def write_transition(store, tr: Transition, cause: str, first: Intent | None, *, symbol: str, db_id: str) -> int:
    """A transition and its first order intent, committed together before that order is sent.

    Later legs (the open of a reversal) are written by ``write_intent`` only once the close
    filled, so an intent in the DB is always one that is meant to be sent.
    """
    tid = store.add_transition(tr.time_ms, tr.from_state, tr.to_state, tr.price, tr.bands, cause)
    if first is not None:
        write_intent(store, tid, first, symbol=symbol, db_id=db_id)
    store.set_status({"state": tr.to_state.value})
    return tid


def write_intent(store, tid: int, it: Intent, *, symbol: str, db_id: str) -> None:
    it.client_order_id = client_order_id(db_id, tid, it.leg)
    it.order_id = store.add_order(client_order_id=it.client_order_id, transition_id=tid, time_ms=it.time_ms,
                                  symbol=symbol, action=it.action, reason=it.reason, side=it.action.side,
                                  qty=float(it.qty), reduce_only=it.reduce_only, paper=False,
                                  tick_price=it.tick_price)
    it.created_wall_s = time.time()


def intent_from_row(row: dict[str, Any]) -> Intent:
    return Intent(row["client_order_id"], Action(row["action"]), Reason(row["reason"]),
                  Decimal(repr(row["qty"])), bool(row["reduce_only"]), row["tick_price"], row["time_ms"],
                  row["client_order_id"].rsplit("-", 1)[-1], row["id"], row["created_ms"] / 1000.0)


__all__ = ["LiveBroker", "Intent", "LegResult", "write_transition", "write_intent", "intent_from_row", "fault"]
