"""An order's life (orders.py): the status table and every rule of ``decide``, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orders as o
from exchange import ApiError, Outcome
from orders import OrderStatus

NOW = 1_750_000_000_000
FILLED = {"status": "FILLED", "executedQty": "0.002", "avgPrice": "95000.0", "orderId": 7}


def err(outcome: Outcome, code: int | None = None, retry: float | None = None, status: int | None = None) -> ApiError:
    return ApiError(outcome, code, "x", status, retry)


def test_terminal_statuses_have_no_way_out_and_the_table_is_complete():
    assert set(o.ALLOWED) == set(OrderStatus)
    for terminal in (OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.EXPIRED):
        assert o.ALLOWED[terminal] == frozenset()
        for other in OrderStatus:
            with pytest.raises(o.IllegalTransition):
                o.check_move(terminal, other)
    assert o.check_move(OrderStatus.PENDING, OrderStatus.UNKNOWN) is OrderStatus.UNKNOWN
    assert o.check_move(OrderStatus.UNKNOWN, OrderStatus.PENDING) is OrderStatus.PENDING  # proven unsent, sent again
    with pytest.raises(o.IllegalTransition):
        o.check_move(OrderStatus.PENDING, OrderStatus.PENDING)


def test_a_filled_answer_is_recorded():
    step, _ = o.decide(o.Progress(), o.Placed(FILLED), now_ms=NOW, resend_ok=True)
    assert step == o.RecordFill(FILLED)


def test_an_accepted_but_not_yet_filled_answer_is_watched():
    step, _ = o.decide(o.Progress(), o.Placed({"status": "NEW"}), now_ms=NOW, resend_ok=True)
    assert step == o.Query(o.POLL_S)


@pytest.mark.parametrize("outcome", [Outcome.REJECTED, Outcome.AUTH])
def test_a_definite_refusal_is_final_and_never_resent(outcome):
    e = err(outcome, -2019)
    step, _ = o.decide(o.Progress(), o.Refused(e), now_ms=NOW, resend_ok=True)
    assert step == o.RecordFailure(OrderStatus.REJECTED, e)


def test_a_timestamp_refusal_resyncs_three_times_then_gives_up():
    p = o.Progress()
    e = err(Outcome.CLOCK, -1021)
    for _ in range(o.MAX_CLOCK_RETRIES):
        step, p = o.decide(p, o.Refused(e), now_ms=NOW, resend_ok=True)
        assert step == o.Resync()
    step, _ = o.decide(p, o.Refused(e), now_ms=NOW, resend_ok=True)
    assert step == o.RecordFailure(OrderStatus.REJECTED, e)


@pytest.mark.parametrize("code,status", [(None, 503), (-1007, 408), (None, None)])
def test_an_unknown_outcome_is_looked_up_at_once_never_resent(code, status):
    e = err(Outcome.UNKNOWN, code, status=status)
    step, p = o.decide(o.Progress().sending(NOW, 5000), o.Refused(e), now_ms=NOW, resend_ok=True)
    assert step == o.Query(0.0, mark=e)
    # Unknown to the exchange but still inside recvWindow: keep looking, never send.
    step, p = o.decide(p, o.Missing(), now_ms=NOW + 4000, resend_ok=True)
    assert step == o.Query(o.POLL_S)


def test_missing_past_the_deadline_is_proof_it_never_executed_resent_once_only():
    p = o.Progress().sending(NOW, 5000)
    late = NOW + 5000 + o.RESOLVE_MARGIN_MS
    step, p = o.decide(p, o.Missing(), now_ms=late, resend_ok=True)
    assert step == o.Send() and p.resent
    p = p.sending(late, 5000)
    step, _ = o.decide(p, o.Missing(), now_ms=late + 5000 + o.RESOLVE_MARGIN_MS, resend_ok=True)
    assert isinstance(step, o.RecordFailure) and step.status is OrderStatus.EXPIRED


def test_a_stale_intent_proven_unsent_is_expired_not_sent():
    p = o.Progress().sending(NOW, 5000)
    step, _ = o.decide(p, o.Missing(), now_ms=NOW + 10_000, resend_ok=False)
    assert isinstance(step, o.RecordFailure) and step.status is OrderStatus.EXPIRED


@pytest.mark.parametrize("status", [429, 418])
def test_a_rate_limit_waits_retry_after_confirms_once_then_sends_the_same_intent(status):
    e = err(Outcome.RATE_LIMITED, -1003, retry=1.0, status=status)
    step, p = o.decide(o.Progress().sending(NOW, 5000), o.Refused(e), now_ms=NOW, resend_ok=True)
    assert step == o.Query(1.0, mark=e) and p.confirming
    # The one look-up: not there -> the same intent goes out at once (no recvWindow wait).
    step, p = o.decide(p, o.Missing(), now_ms=NOW + 1100, resend_ok=True)
    assert step == o.Send() and not p.confirming and not p.resent


def test_a_rate_limited_order_that_did_execute_is_recorded_not_resent():
    e = err(Outcome.RATE_LIMITED, -1003, retry=1.0, status=429)
    _, p = o.decide(o.Progress(), o.Refused(e), now_ms=NOW, resend_ok=True)
    step, _ = o.decide(p, o.Found(FILLED), now_ms=NOW + 1100, resend_ok=True)
    assert step == o.RecordFill(FILLED)


def test_a_rate_limited_entry_that_went_stale_is_not_sent_again():
    e = err(Outcome.RATE_LIMITED, None, retry=120.0, status=418)
    _, p = o.decide(o.Progress(), o.Refused(e), now_ms=NOW, resend_ok=True)
    step, _ = o.decide(p, o.Missing(), now_ms=NOW + 120_000, resend_ok=False)
    assert isinstance(step, o.RecordFailure) and step.status is OrderStatus.EXPIRED


@pytest.mark.parametrize("status,executed,expect", [
    ("FILLED", "0.002", "fill"), ("CANCELED", "0.001", "fill"), ("EXPIRED", "0", "expired"),
    ("EXPIRED_IN_MATCH", "0", "expired"), ("NEW", "0", "query"), ("PARTIALLY_FILLED", "0.001", "query"),
])
def test_what_a_look_up_shows(status, executed, expect):
    found = {"status": status, "executedQty": executed}
    step, _ = o.decide(o.Progress(), o.Found(found), now_ms=NOW, resend_ok=True)
    if expect == "fill":
        assert step == o.RecordFill(found)
    elif expect == "expired":
        assert isinstance(step, o.RecordFailure) and step.status is OrderStatus.EXPIRED
    else:
        assert step == o.Query(o.POLL_S)


def test_a_failed_look_up_is_retried_later_honouring_rate_limits():
    step, _ = o.decide(o.Progress(), o.QueryFailed(err(Outcome.UNKNOWN)), now_ms=NOW, resend_ok=True)
    assert step == o.Query(1.0)
    step, _ = o.decide(o.Progress(), o.QueryFailed(err(Outcome.RATE_LIMITED, retry=3.0, status=429)), now_ms=NOW,
                       resend_ok=True)
    assert step == o.Query(3.0)


# A model exchange: did the order execute? Every answer is consistent with that truth. Whatever
# the sequence of answers, the order is never sent again after the exchange executed it.
_replies = st.sampled_from(["placed", "refused_unknown", "refused_rate", "refused_clock", "lookup", "lookup_failed"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_replies, min_size=1, max_size=30), st.booleans())
def test_never_a_second_execution_whatever_the_exchange_answers(script, resend_ok):
    executed = False
    p = o.Progress().sending(NOW, 5000)
    now = NOW
    step: o.Step = o.Send()
    sends = 1
    for kind in script:
        now += 700
        if isinstance(step, (o.RecordFill, o.RecordFailure)):
            break
        if isinstance(step, o.Resync):
            step = o.Send()
        if isinstance(step, o.Send):
            if kind == "placed":
                executed = True
                reply: o.Reply = o.Placed(FILLED)
            elif kind == "refused_unknown":
                executed = executed or len(script) % 2 == 0  # sometimes it did execute
                reply = o.Refused(err(Outcome.UNKNOWN, status=503))
            elif kind == "refused_rate":
                reply = o.Refused(err(Outcome.RATE_LIMITED, retry=1.0, status=429))
            elif kind == "refused_clock":
                reply = o.Refused(err(Outcome.CLOCK, -1021))
            else:
                reply = o.Refused(err(Outcome.UNKNOWN))
        else:  # a look-up
            if kind == "lookup_failed":
                reply = o.QueryFailed(err(Outcome.UNKNOWN))
            else:
                reply = o.Found(FILLED) if executed else o.Missing()
        step, p = o.decide(p, reply, now_ms=now, resend_ok=resend_ok)
        if isinstance(step, o.Send):
            assert not executed, "an order the exchange executed must never be sent again"
            sends += 1
            p = p.sending(now, 5000)
        if executed and isinstance(step, o.RecordFailure):
            pytest.fail("an executed order must not be recorded as failed")
    assert sends <= 1 + len(script)
