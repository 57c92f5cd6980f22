"""One live order's life, as data and one pure function (no I/O).

An order starts as an *intent*: a row in ``orders`` committed before anything is sent, with
a deterministic ``newClientOrderId``. From then on its status moves only along ``ALLOWED``:

    pending ──► filled | rejected | expired
       │  ▲
       ▼  │ (proven never executed: the same intent goes out again)
    unknown ──► filled | expired

``decide`` is the whole policy: given what the exchange just said about the order (a
``Reply``) and where the order stands (``Progress``), it returns the next ``Step`` — send,
look it up (after a wait), resync the clock, record the fill, or record the failure. The
driver in ``executor.py`` does the I/O for each step and feeds the answer back. Rules:

* A definite answer is final: FILLED is a fill; a rejection (-2019, -2022, -4164 …), a bad
  key or a refused timestamp after three clock resyncs is a failure; nothing is resent.
* An *unknown* outcome (timeout, HTTP 5xx, -1007) is looked up by ``origClientOrderId``,
  never resent blind. The exchange refuses a request older than ``recvWindow``; so once
  its clock is past ``sent + recvWindow`` (+ a margin) and it still does not know the id,
  the order never executed and never will. Only then may the same intent go out again —
  once, and only while ``resend_ok`` (entries go stale, see ``executor.py``).
* A rate limit (HTTP 429/418, -1003, -1015) refused the request: wait ``Retry-After``,
  look the id up once (Binance does not promise a 429'd order never executed), and if it
  is unknown send the same intent again at once. Cost: Retry-After + two round trips.
* -1021 (timestamp outside recvWindow) is definite: resync the clock and send again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, NamedTuple

from exchange import ApiError, Outcome

RESOLVE_MARGIN_MS = 1500   # extra wait past recvWindow before concluding "never executed"
MAX_CLOCK_RETRIES = 3      # -1021 answers resolved by a clock resync before giving up
POLL_S = 0.5               # wait between look-ups of an order whose outcome is not known yet


class OrderStatus(StrEnum):
    """The ``orders.status`` column."""

    PENDING = "pending"    # committed intent; sent or about to be sent
    UNKNOWN = "unknown"    # sent; the outcome is being looked up by client order id
    FILLED = "filled"      # executed (paper fills are written as filled at once)
    REJECTED = "rejected"  # the exchange refused it: nothing executed
    EXPIRED = "expired"    # provably never executed, or never sent because it went stale


#: The only status changes an order may make.
ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.UNKNOWN, OrderStatus.FILLED, OrderStatus.REJECTED,
                                    OrderStatus.EXPIRED}),
    # Proven never executed and sent once more: back to pending.
    OrderStatus.UNKNOWN: frozenset({OrderStatus.PENDING, OrderStatus.FILLED, OrderStatus.EXPIRED,
                                    OrderStatus.UNKNOWN}),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}

#: Statuses an order still open after a restart can be in (``sent`` is an older name of pending).
OPEN_STATUSES = ("pending", "sent", "unknown")


class IllegalTransition(ValueError):
    """An order was asked to move along an edge ``ALLOWED`` does not have."""


def check_move(before: OrderStatus, after: OrderStatus) -> OrderStatus:
    """``after`` if the order may move there from ``before``; IllegalTransition otherwise."""
    if after not in ALLOWED[before]:
        raise IllegalTransition(f"an order cannot go from {before} to {after}")
    return after


# ---- what the exchange said --------------------------------------------------------------------

class Placed(NamedTuple):
    """A 2xx answer to the order POST (``newOrderRespType=RESULT``)."""

    order: dict[str, Any]


class Refused(NamedTuple):
    """An error answer to the order POST, classified."""

    error: ApiError


class Found(NamedTuple):
    """The order, as a look-up by client id (or the user-data stream) shows it."""

    order: dict[str, Any]


class Missing(NamedTuple):
    """The look-up says the exchange has no such order (-2013)."""


class QueryFailed(NamedTuple):
    """The look-up itself failed (timeout, 5xx, rate limit …)."""

    error: ApiError


Reply = Placed | Refused | Found | Missing | QueryFailed


# ---- what to do next ---------------------------------------------------------------------------

class Send(NamedTuple):
    """Send the intent (first time, or again after proof that it never executed)."""


class Resync(NamedTuple):
    """Resync the server-time offset, then send again."""


class Query(NamedTuple):
    """Look the order up by client id after ``after_s`` seconds; first record it as unknown
    (with ``error``) when ``mark`` is set."""

    after_s: float
    mark: ApiError | None = None


class RecordFill(NamedTuple):
    """The order executed: record it from ``order`` (exchange fields: executedQty, avgPrice …)."""

    order: dict[str, Any]


class RecordFailure(NamedTuple):
    """The order did not execute and will not: record ``status`` with ``error``."""

    status: OrderStatus
    error: ApiError


Step = Send | Resync | Query | RecordFill | RecordFailure

_DONE = ("CANCELED", "EXPIRED", "REJECTED", "EXPIRED_IN_MATCH")


@dataclass(frozen=True)
class Progress:
    """Where one order stands while its outcome is being settled."""

    deadline_ms: int = 0      # exchange time after which an unknown id can never execute
    clock_retries: int = 0    # -1021 answers already handled by a resync
    resent: bool = False      # sent again once already, after proof it never executed
    confirming: bool = False  # refused by a rate limit: the next look-up decides a resend

    def sending(self, now_ms: int, recv_window_ms: int) -> Progress:
        """The intent goes out at exchange time ``now_ms``."""
        return replace(self, deadline_ms=now_ms + recv_window_ms + RESOLVE_MARGIN_MS)


def decide(progress: Progress, reply: Reply, *, now_ms: int, resend_ok: bool) -> tuple[Step, Progress]:
    """The next step for an order after ``reply``.

    ``now_ms`` is the exchange's clock as we estimate it; ``resend_ok`` says whether the
    intent may still go out (an entry that went stale may not).
    """
    if isinstance(reply, Placed):
        if reply.order.get("status") == "FILLED":
            return RecordFill(reply.order), progress
        return Query(POLL_S), progress  # accepted but not reported filled yet: watch it
    if isinstance(reply, Refused):
        err = reply.error
        if err.outcome in (Outcome.REJECTED, Outcome.AUTH):
            return RecordFailure(OrderStatus.REJECTED, err), progress
        if err.outcome is Outcome.CLOCK:
            if progress.clock_retries < MAX_CLOCK_RETRIES:
                return Resync(), replace(progress, clock_retries=progress.clock_retries + 1)
            return RecordFailure(OrderStatus.REJECTED, err), progress
        if err.outcome is Outcome.RATE_LIMITED:
            return Query(err.retry_after_s or 1.0, mark=err), replace(progress, confirming=True)
        return Query(0.0, mark=err), progress  # unknown outcome: look it up before anything else
    if isinstance(reply, Found):
        order = reply.order
        status = order.get("status")
        if status == "FILLED":
            return RecordFill(order), progress
        if status in _DONE:
            if _float(order.get("executedQty")) > 0:
                return RecordFill(order), progress
            return RecordFailure(OrderStatus.EXPIRED, ApiError(Outcome.REJECTED, None, f"exchange status {status}")), \
                progress
        return Query(POLL_S), replace(progress, confirming=False)  # NEW / PARTIALLY_FILLED: moments away
    if isinstance(reply, Missing):
        if progress.confirming:
            progress = replace(progress, confirming=False)
            if resend_ok:
                return Send(), progress  # refused by the rate limit and not executed: the same intent again
            return RecordFailure(OrderStatus.EXPIRED, ApiError(Outcome.REJECTED, None, "not sent again: stale")), \
                progress
        if now_ms < progress.deadline_ms:
            return Query(POLL_S), progress
        if resend_ok and not progress.resent:
            return Send(), replace(progress, resent=True)
        return RecordFailure(OrderStatus.EXPIRED, ApiError(Outcome.REJECTED, None, "never executed by the exchange")), \
            progress
    if isinstance(reply, QueryFailed):
        err = reply.error
        wait = (err.retry_after_s or 1.0) if err.outcome is Outcome.RATE_LIMITED else 1.0
        return Query(wait), progress
    raise TypeError(f"not a reply: {reply!r}")


def _float(text: Any) -> float:
    try:
        return float(text or 0)
    except (TypeError, ValueError):
        return 0.0


__all__ = ["ALLOWED", "OPEN_STATUSES", "OrderStatus", "Progress", "decide", "check_move",
           "Placed", "Refused", "Found", "Missing", "QueryFailed", "Reply",
           "Send", "Resync", "Query", "RecordFill", "RecordFailure", "Step", "IllegalTransition"]
