"""The order executor's policy (executor.py) with a scripted exchange: FIFO order, sizing,
failed legs, stale entries, the backlog bound and reconciliation. No network: what the network
would add is tested end to end in test_live_e2e.py and test_livebroker.py."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from broker import Ledger, SymbolRules
from exchange import ApiError, Outcome
from executor import MAX_BACKLOG_JOBS, Executor, Job, Leg, Settings
from livebroker import LegResult
from orders import OrderStatus
from state import POSITION, Action, Order, Reason, State

RULES = SymbolRules()


class Spinning(BaseException):
    """Not an Exception: the executor must not catch it."""


class FakeExchange:
    rules = RULES

    def __init__(self) -> None:
        self.positions: list[tuple[Decimal, float]] = []  # answers to position(), last one repeats
        self.position_reads = 0

    async def position(self):
        self.position_reads += 1
        if self.position_reads > 100:  # a reconciliation that never settles: fail, do not spin for ever
            raise Spinning(f"{self.position_reads} position reads")
        answer = self.positions.pop(0) if len(self.positions) > 1 else self.positions[0]
        return answer


class FakeDriver:
    """Fills every intent at its tick price unless told otherwise; records what was sent."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.sent: list[tuple[str, str, bool, Decimal]] = []
        self.outcomes: dict[int, OrderStatus] = {}  # n-th order (0-based) -> outcome
        self.gates: dict[int, asyncio.Event] = {}   # n-th order waits for this before answering
        self.committed: list[str] = []
        self.pushed: list[tuple[str, dict, float | None]] = []

    async def submit(self, fn, *args, **kwargs):
        self.committed.append(args[0].client_order_id if args and hasattr(args[0], "client_order_id") else fn.__name__)

    async def complete(self, intent, *, look_up_first=False, resend_ok=lambda: True):
        n = len(self.sent)
        self.sent.append((intent.client_order_id, intent.action.side, intent.reduce_only, intent.qty))
        if n in self.gates:
            await self.gates[n].wait()
        status = self.outcomes.get(n, OrderStatus.FILLED)
        if status is not OrderStatus.FILLED:
            return LegResult(intent, status, error=ApiError(Outcome.REJECTED, -2019, "Margin is insufficient."))
        qty = float(intent.qty)
        pnl = self.ledger.apply(intent.action, intent.tick_price, qty, 0.0)
        return LegResult(intent, OrderStatus.FILLED, intent.tick_price, qty, 0.0, pnl, order_id=n,
                         exchange_time_ms=1000 + n)

    def stream_update(self, cid, order, commission):
        self.pushed.append((cid, order, commission))


class FakeBot:
    def __init__(self) -> None:
        self.state = State.FLAT
        self.adopted: list[tuple[State, str]] = []
        self.paused: str | None = None

    def adopt_state(self, to, cause, why):
        self.adopted.append((to, cause))
        self.state = to

    def pause(self, reason):
        self.paused = reason

    def entries_blocked(self):
        return f"paused ({self.paused})" if self.paused else None


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, **settings) -> None:
        self.ledger = Ledger()
        self.exchange = FakeExchange()
        self.exchange.positions = [(Decimal(0), 0.0)]
        self.driver = FakeDriver(self.ledger)
        self.bot = FakeBot()
        self.clock = Clock()
        self.writes: list[str] = []
        self.sleeps: list[float] = []

        async def sleep(s):
            self.sleeps.append(s)

        self.ex = Executor(self.exchange, self.driver, self.ledger, self.bot,
                           Settings("abc123", "BTCUSDT", 200.0, **settings),
                           post_status=lambda fn, *a, **k: self.writes.append(fn.__name__), sleep=sleep,
                           clock=self.clock)
        self.tid = 0

    def decide(self, *orders: Order, price: float = 95_000.0, to: State | None = None) -> Job:
        legs, refused = self.ex.plan(price, tuple(orders))
        assert refused is None
        self.tid += 1
        job = Job(self.tid, 1_000_000 + self.tid, price, legs, self.clock())
        if to is not None:
            self.bot.state = to
        self.ex.submit(job)
        return job

    def start(self) -> asyncio.Task:
        """The executor running; ``finish`` it."""
        self.task = asyncio.ensure_future(self.ex.run())
        return self.task

    async def finish(self) -> None:
        """Let the executor work until it is idle, then stop it."""
        for _ in range(200):
            await asyncio.sleep(0)
            if self.ex.idle:
                break
        self.ex.stop()
        await asyncio.wait_for(self.task, 5)

    async def drain(self) -> None:
        self.start()
        await self.finish()


OPEN_SHORT = Order(Action.OPEN_SHORT, Reason.ENTRY)
OPEN_LONG = Order(Action.OPEN_LONG, Reason.ENTRY)
CLOSE_SHORT_TP = Order(Action.CLOSE_SHORT, Reason.TAKE_PROFIT)
CLOSE_SHORT_SL = Order(Action.CLOSE_SHORT, Reason.STOP_LOSS)
CLOSE_LONG_TP = Order(Action.CLOSE_LONG, Reason.TAKE_PROFIT)


def run(coro):
    return asyncio.run(coro)


def test_orders_go_out_in_the_order_decided_and_a_later_one_waits_for_the_earlier():
    async def body():
        r = Rig()
        gate = asyncio.Event()
        r.driver.gates[0] = gate
        r.decide(OPEN_SHORT, to=State.SHORT)
        r.decide(CLOSE_SHORT_TP, OPEN_LONG, price=94_000.0, to=State.LONG)  # a reversal decided meanwhile
        r.decide(CLOSE_LONG_TP, OPEN_SHORT, price=96_000.0, to=State.SHORT)
        r.start()
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(r.driver.sent) == 1, "the second order waits until the first is resolved"
        assert r.ex.backlog == 3
        gate.set()
        await r.finish()
        return r

    r = run(body())
    sides = [(side, ro) for _, side, ro, _ in r.driver.sent]
    assert sides == [("SELL", False), ("BUY", True), ("BUY", False), ("SELL", True), ("SELL", False)]
    ids = [cid for cid, *_ in r.driver.sent]
    assert ids == ["bm-abc123-1-o", "bm-abc123-2-c", "bm-abc123-2-o", "bm-abc123-3-c", "bm-abc123-3-o"]


def test_entries_are_sized_at_the_deciding_price_closes_at_the_held_position():
    async def body():
        r = Rig()
        r.decide(OPEN_SHORT, price=95_000.0, to=State.SHORT)
        r.decide(CLOSE_SHORT_TP, OPEN_LONG, price=40_000.0, to=State.LONG)
        await r.drain()
        return r

    r = run(body())
    qty = [q for *_, q in r.driver.sent]
    assert qty == [Decimal("0.002"), Decimal("0.002"), Decimal("0.005")]


def test_an_entry_below_the_minimum_is_refused_when_decided():
    r = Rig()
    legs, refused = r.ex.plan(95_000.0, (CLOSE_SHORT_TP, OPEN_LONG))
    assert legs == (Leg(Action.CLOSE_SHORT, Reason.TAKE_PROFIT), Leg(Action.OPEN_LONG, Reason.ENTRY, Decimal("0.002")))
    assert refused is None
    r.ex.settings.amount_usdt = 50.0
    legs, refused = r.ex.plan(95_000.0, (CLOSE_SHORT_TP, OPEN_LONG))
    assert legs == (Leg(Action.CLOSE_SHORT, Reason.TAKE_PROFIT),) and "minimum" in refused


def test_a_rejected_entry_drops_what_was_decided_after_it_and_matches_the_state_to_the_position(caplog):
    async def body():
        r = Rig()
        r.driver.outcomes[0] = OrderStatus.REJECTED
        r.decide(OPEN_SHORT, to=State.SHORT)
        r.decide(CLOSE_SHORT_SL, to=State.FLAT_ABOVE_UP)
        r.decide(OPEN_SHORT, to=State.SHORT)
        await r.drain()
        return r

    with caplog.at_level(logging.WARNING, logger="bollmin.executor"):
        r = run(body())
    assert len(r.driver.sent) == 1, "orders decided on the failed entry are never sent"
    assert r.bot.adopted == [(State.FLAT, "rejected")]
    assert sum("not sent" in m for m in caplog.messages) == 2
    assert r.ex.rejects == 1


def test_rejections_in_a_row_pause_new_entries():
    async def body():
        r = Rig(max_rejects=2)
        r.driver.outcomes = {0: OrderStatus.REJECTED, 1: OrderStatus.REJECTED}
        r.decide(OPEN_SHORT, to=State.SHORT)
        await r.drain()
        r2 = r
        r2.ex._stopping = False
        r.decide(OPEN_LONG, to=State.LONG)
        await r.drain()
        return r

    r = run(body())
    assert r.bot.paused and "2 entries in a row" in r.bot.paused


def test_a_failed_close_never_sends_the_open_of_the_reversal_and_reconciles():
    async def body():
        r = Rig()
        r.decide(OPEN_SHORT, to=State.SHORT)
        r.driver.outcomes[1] = OrderStatus.REJECTED
        r.decide(CLOSE_SHORT_TP, OPEN_LONG, to=State.LONG)
        r.exchange.positions = [(Decimal("-0.002"), 95_000.0)]
        await r.drain()
        return r

    r = run(body())
    assert [(side, ro) for _, side, ro, _ in r.driver.sent] == [("SELL", False), ("BUY", True)]
    assert r.exchange.position_reads == 1
    assert r.bot.state is State.SHORT, "the strategy state follows the position the exchange still holds"
    assert r.bot.adopted == [(State.SHORT, "reconcile")]


def test_a_stale_entry_is_not_sent_but_a_late_close_always_goes_out(caplog):
    async def body():
        r = Rig(max_entry_delay_s=10.0)
        gate = asyncio.Event()
        r.driver.gates[0] = gate
        r.decide(OPEN_SHORT, to=State.SHORT)
        r.decide(CLOSE_SHORT_SL, to=State.FLAT_ABOVE_UP)   # decided at t=100
        r.clock.t += 5
        r.decide(OPEN_SHORT, to=State.SHORT)               # decided at t=105
        r.decide(CLOSE_SHORT_SL, to=State.FLAT_ABOVE_UP)
        r.start()
        for _ in range(10):
            await asyncio.sleep(0)
        r.clock.t += 20  # the first order hangs for 20 s (say the exchange is slow to answer)
        gate.set()
        await r.finish()
        return r

    with caplog.at_level(logging.WARNING):
        r = run(body())
    sent = [(side, ro) for _, side, ro, _ in r.driver.sent]
    assert sent == [("SELL", False), ("BUY", True)], "the late stop-loss goes out; the stale entry does not"
    assert any("closes always go out" in m for m in caplog.messages)
    assert any("not sent" in m and "MAX_ENTRY_DELAY_SECONDS" in m for m in caplog.messages)
    assert POSITION[r.bot.state] == 0 and r.ledger.qty == 0


def test_a_backlog_beyond_the_bound_is_dropped_whole_and_the_bot_reconciles():
    async def body():
        r = Rig()
        gate = asyncio.Event()
        r.driver.gates[0] = gate
        r.decide(OPEN_SHORT, to=State.SHORT)
        r.start()
        await asyncio.sleep(0)
        for i in range(MAX_BACKLOG_JOBS + 1):
            r.decide(CLOSE_SHORT_SL if i % 2 == 0 else OPEN_SHORT, to=State.SHORT)
        assert r.ex.backlog <= 2
        r.exchange.positions = [(Decimal("-0.002"), 95_000.0)]
        gate.set()
        await r.finish()
        return r

    r = run(body())
    assert len(r.driver.sent) == 1
    assert r.exchange.position_reads >= 1


def test_a_position_changed_outside_is_adopted_after_a_second_read_and_drops_queued_orders(caplog):
    async def body():
        r = Rig()
        r.decide(OPEN_SHORT, to=State.SHORT)
        await r.drain()
        r.ex._stopping = False
        r.exchange.positions = [(Decimal(0), 0.0)]  # someone closed it in the Binance app
        r.ex.on_position(0.0, 5000)
        assert r.ex.backlog == 0 and len(r.ex._queue) == 1  # a reconciliation is queued
        r.decide(CLOSE_SHORT_SL, to=State.FLAT_ABOVE_UP)  # decided before the bot knew
        await r.drain()
        return r

    with caplog.at_level(logging.WARNING):
        r = run(body())
    assert r.sleeps == [1.0] and r.exchange.position_reads == 2, "read twice a second apart"
    assert r.ledger.qty == 0 and r.bot.state is State.FLAT, "flat on the exchange means FLAT here"
    assert len(r.driver.sent) == 1, "no close for a position that no longer exists"
    assert any(m.startswith("RECONCILE") for m in caplog.messages)
    assert "_write_reconciliation" in r.writes


def test_a_stale_position_update_from_before_our_own_fill_is_ignored():
    async def body():
        r = Rig()
        r.decide(OPEN_SHORT, to=State.SHORT)
        await r.drain()
        r.ex.on_position(0.0, 999)  # from before our fill at exchange time 1000
        return r

    r = run(body())
    assert not r.ex._queue


@pytest.mark.parametrize("when", [5000, 10**13], ids=["now", "a-day-ahead"])
def test_a_stream_position_rest_does_not_confirm_is_reconciled_once_not_for_ever(when):
    """A garbled, stale or future-dated ACCOUNT_UPDATE (or a clock that stepped back) shows a position
    REST does not confirm: one reconciliation settles it; the stream's later real updates still count."""
    async def body():
        r = Rig()
        r.decide(OPEN_SHORT, to=State.SHORT)
        await r.drain()
        held = r.ledger.qty
        r.exchange.positions = [(Decimal(repr(held)), 95_000.0)]  # REST agrees with the bot
        r.ex._stopping = False
        r.ex.on_position(0.0, when)  # the stream says flat
        r.start()
        for _ in range(200):
            await asyncio.sleep(0)
        reads = r.exchange.position_reads
        assert r.ex.idle and not r.ex._queue and reads == 1, "one reconciliation (REST agrees: one read), then quiet"
        assert r.ledger.qty == held and r.bot.state is State.SHORT
        r.exchange.positions = [(Decimal(0), 0.0)]  # now really closed outside
        r.ex.on_position(0.0, 6000)  # a real update, older than the bogus one's date
        for _ in range(200):
            await asyncio.sleep(0)
        await r.finish()
        return r, reads

    r, reads = run(body())
    assert r.exchange.position_reads == reads + 2 and r.ledger.qty == 0 and r.bot.state is State.FLAT


def test_a_fill_this_bot_did_not_cause_queues_a_reconciliation_our_own_carries_the_commission():
    async def body():
        r = Rig()
        r.ex.on_order_update({"c": "bm-abc123-1-o", "x": "TRADE", "X": "PARTIALLY_FILLED", "N": "USDT", "n": "0.03",
                              "z": "0.001", "ap": "95000", "i": 1, "T": 5})
        r.ex.on_order_update({"c": "bm-abc123-1-o", "x": "TRADE", "X": "FILLED", "N": "USDT", "n": "0.05",
                              "z": "0.002", "ap": "95000", "i": 1, "T": 6})
        assert not r.ex._queue
        r.ex.on_order_update({"c": "web_123", "x": "TRADE", "X": "FILLED", "S": "BUY", "l": "0.002", "L": "95000",
                              "i": 99})
        r.ex.on_order_update({"c": "bm-other1-4-o", "x": "TRADE", "X": "FILLED", "S": "BUY", "l": "0.002",
                              "L": "95000", "i": 100})
        return r

    r = run(body())
    assert [c for c, _, _ in r.driver.pushed] == ["bm-abc123-1-o", "bm-abc123-1-o"]
    assert r.driver.pushed[0][2] is None and r.driver.pushed[1][2] == pytest.approx(0.08)
    assert len(r.ex._queue) == 1, "one reconciliation for the outside fills"


def test_startup_reconcile_adopts_the_exchange_state_when_the_stored_state_disagrees():
    async def body():
        r = Rig()
        r.bot.state = State.SHORT  # say the orders of the last decision were lost with the process
        r.exchange.positions = [(Decimal(0), 0.0)]
        fut = r.ex.request_reconcile("startup", confirm=False)
        await r.drain()
        await fut
        return r

    r = run(body())
    assert r.bot.state is State.FLAT and POSITION[r.bot.state] == 0


def test_stopping_finishes_the_order_in_flight_sends_nothing_more_and_matches_the_state_to_the_position():
    async def body():
        r = Rig()
        gate = asyncio.Event()
        r.driver.gates[0] = gate
        r.decide(OPEN_SHORT, to=State.SHORT)
        task = r.start()
        await asyncio.sleep(0)
        r.decide(CLOSE_SHORT_SL, to=State.FLAT_ABOVE_UP)  # decided just before the stop
        r.ex.stop()
        gate.set()
        await asyncio.wait_for(task, 5)
        return r

    r = run(body())
    assert len(r.driver.sent) == 1
    assert r.ledger.qty < 0 and r.bot.state is State.SHORT and r.bot.adopted == [(State.SHORT, "stopping")]
