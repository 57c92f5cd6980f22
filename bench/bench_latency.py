#!/usr/bin/env python3
"""Tick-to-order latency of the live bot: before/after, uvloop, orjson against json, the dashboard hammered.

    python bench/bench_latency.py              print the markdown section on stdout (progress on stderr)
    python bench/bench_latency.py --write      also put it in BENCHMARKS.md (<!-- latency:begin/end -->)
    python bench/bench_latency.py --raw F      also save every measured value as JSON
    python bench/bench_latency.py --from-raw F render a saved run again, measuring nothing

Each run is a fresh ``python bollmin.py run`` (live mode, MARKET orders) against a ``TimedSim`` on
this process's event loop, replaying the bundled May 2025 1m BTCUSDT file at ``--speed`` (default
4000×: a tick every 5 ms; a candle's close tick and the next open tick come back to back) with
orders answered at once. The exchange stamps ``perf_counter_ns`` when it hands an aggTrade frame to
the socket and when ``POST /fapi/v1/order`` arrives; each order is matched to the tick that decided
it by the exchange time the bot stores with the intent. A transition's first order is the
headline figure; the open leg of a reversal (sent once the close has filled) is reported apart.

Bots measured, in ``--rounds`` interleaved rounds (order reversed every other round) so that the
machine's noise hits all of them: the product at ``--baseline`` (default 106a7ce, before the order
executor; ``git archive`` into a temp dir, removed afterwards), the current tree, and the current
tree through ``bench/botwrap.py`` on uvloop, and with stdlib json instead of orjson, and (a diagnostic)
with CPython's 5 ms GIL switch interval instead of the bot's 0.5 ms: does the tail wait for the GIL?
And, in the same rounds, the current bot with the dashboard hammered by ``bench/dashboard_load.py``
("loaded"), and a control run with the same clients on ``/healthz`` (no SQLite): each round has a
plain run of the same bot to compare with, under the same machine noise. Where the time goes comes
from the product's own timing probes (``BOLLMIN_TIMING``), on in every run of the current tree (a
list append per point).
About 15 minutes on a quiet 2-core machine; each run waits for one first (``--wait-quiet``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from typing import Any

import botbench as bb
import common
import latency_report

VARIANTS = ("baseline", "current", "uvloop", "stdjson", "switch", "loaded", "control")
# the dashboard's load in the runs that have one: () = dashboard_load.py's own routes
LOAD_PATHS: dict[str, tuple[str, ...]] = {"loaded": (), "control": ("/healthz",)}  # control: Flask and JSON, no SQLite


def first_and_open(rows: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rows of each transition's first order and of the order after it (a reversal's open), by client id."""
    first: dict[int, Any] = {}
    second: dict[int, Any] = {}
    for r in rows:
        if r["transition_id"] not in first:
            first[r["transition_id"]] = r
        else:
            second.setdefault(r["transition_id"], r)
    return ({r["client_order_id"]: r for r in first.values()},
            {r["client_order_id"]: (r, first[tid]) for tid, r in second.items()})


def steps_from_timing(marks: list[tuple[str, Any, int]], sim: bb.TimedSim, firsts: dict[str, Any],
                      opens: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Each step of an order's way in ms (the product's probes between the exchange's two stamps)."""
    at: dict[str, dict[Any, int]] = {}
    for point, key, ns in marks:
        at.setdefault(point, {}).setdefault(key, ns)  # the first time a point is reached for a key
    arrived = {cid: ns for ns, cid in sim.order_arrivals}
    sent = sim.hub.trade_sent_ns

    def chain(stamps: list[int | None], names: tuple[str, ...], out: dict[str, list[float]]) -> None:
        if any(s is None for s in stamps):
            return
        for name, a, b in zip(names, stamps, stamps[1:], strict=False):
            out.setdefault(name, []).append((b - a) / 1e6)  # type: ignore[operator]
        out.setdefault("total", []).append((stamps[-1] - stamps[0]) / 1e6)  # type: ignore[operator]

    first_out: dict[str, list[float]] = {}
    for cid, r in firsts.items():
        t = r["time_ms"]
        chain([sent.get(t), at.get("tick", {}).get(t), at.get("decided", {}).get(t),
               at.get("queued", {}).get(r["transition_id"]), at.get("commit", {}).get(cid),
               at.get("committed", {}).get(cid), at.get("send", {}).get(cid), arrived.get(cid)],
              latency_report.STEP_KEYS, first_out)
    open_out: dict[str, list[float]] = {}
    own: list[float] = []  # from the close's answer (in the bot) to the open's arrival: the bot's own part
    for cid, (r, close) in opens.items():
        ccid = close["client_order_id"]
        answered = at.get("answered", {}).get(ccid)
        chain([sent.get(r["time_ms"]), answered, at.get("commit", {}).get(cid),
               at.get("committed", {}).get(cid), at.get("send", {}).get(cid), arrived.get(cid)],
              latency_report.OPEN_STEP_KEYS, open_out)
        if answered is not None and cid in arrived:
            own.append((arrived[cid] - answered) / 1e6)
    return {"first": first_out, "open": open_out, "open_own": own}


async def latency_run(workdir: str, args: argparse.Namespace, crossings: int, log: Any, *, product: str = bb.ROOT,
                      variant: str = "current", timing: bool = False,
                      load_paths: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One fresh bot and exchange; ``crossings`` first orders; ``load_paths``: hammer the dashboard."""
    sim = bb.TimedSim(bb.MARKET_1M, speed=args.speed, paused=True, target_interval="1m")
    bot: bb.BotProcess | None = None
    dash: bb.DashboardLoad | None = None
    out: dict[str, Any] = {"variant": variant, "dashboard": {}}
    try:
        port = await sim.start("127.0.0.1", 0)
        bot = bb.BotProcess(workdir, product=product, variant=variant, timing=timing,
                            REST_BASE_URL=f"http://127.0.0.1:{port}", WS_BASE_URL=f"ws://127.0.0.1:{port}",
                            PAPER_TRADING=False, **bb.LIVE_KEYS)
        dash = bb.DashboardLoad(bot, paths=load_paths) if load_paths is not None else None
        bot.start()
        await bb.wait_connected(bot)
        if product == bb.ROOT:  # the current bot also opens the user-data stream: let it settle first
            await bb.wait_until(lambda: bb.bot_status(bot.db).get("user_stream") == "connected", 30,
                                "the user-data stream", bot)
        if dash is not None:
            await dash.start(log)
        await asyncio.sleep(0.5)
        cpu0, me0, wall0 = bot.cpu()[0], bb.own_cpu_s(), time.monotonic()
        meter = bb.LoadMeter()
        meter.start(bot)
        if dash is not None:
            await dash.mark()
        sim.replay.resume()
        while time.monotonic() - wall0 < args.max_run_s and not sim.market.finished:
            if len({cid.rsplit("-", 1)[0] for _t, cid in sim.order_arrivals}) >= crossings:
                break
            if not bot.alive():
                raise RuntimeError("the bot exited during the run:\n" + bot.stderr_tail())
            await asyncio.sleep(0.5)
        sim.replay.pause()
        span = time.monotonic() - wall0
        if dash is not None:
            await dash.mark()
            out["dashboard"] = dash.summary()
        out["others"] = meter.stop()
        out["steal"] = meter.steal
        out["bot_cpu_s"] = bot.cpu()[0] - cpu0
        out["bench_cpu"] = (bb.own_cpu_s() - me0) / span * 100
        out["replay_s"] = span
        out["ticks"] = len(sim.hub.sent_times)
        if dash is not None:
            await dash.stop()
        await asyncio.sleep(1.0)  # the last order finishes
        out["exit"] = await bot.astop()
    finally:
        if dash is not None:
            await dash.stop()
        if bot is not None and bot.alive():
            await bot.astop()
        await sim.stop()
    rows = bb.query(bot.db, "SELECT client_order_id, transition_id, time_ms, status FROM orders WHERE paper = 0 "
                            "ORDER BY id")
    firsts, opens = first_and_open(rows)
    marks = bot.timing_marks() if timing else []
    # transitions whose job joined the executor while an earlier order was in flight (the product's probe)
    behind_tids = {key for point, key, _ns in marks if point == "behind"}
    first, second, unmatched, behind = [], [], 0, []
    for arrived, cid in sim.order_arrivals:
        row = firsts.get(cid) or (opens[cid][0] if cid in opens else None)
        sent = sim.hub.trade_sent_ns.get(row["time_ms"]) if row is not None else None
        if sent is None:
            unmatched += 1
            continue
        (first if cid in firsts else second).append((arrived - sent) / 1e6)
        if cid in firsts:
            behind.append(row["transition_id"] in behind_tids)
    out.update(first=first, open=second, orders=len(sim.order_arrivals), unmatched=unmatched,
               first_behind=behind if timing else None,
               filled=sum(r["status"] == "filled" for r in rows), db_busy=bot.count_lines("database busy"),
               bot_cpu=out["bot_cpu_s"] / out["replay_s"] * 100,
               steps=steps_from_timing(marks, sim, firsts, opens) if timing else {})
    out["open_own"] = out["steps"].pop("open_own", [])
    return out


async def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    short, subject = bb.describe_ref(args.baseline)
    res: dict[str, Any] = {"machine": common.machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "loadavg": os.getloadavg(), "speed": args.speed, "rounds": args.rounds,
                           "baseline": {"ref": args.baseline, "short": short, "subject": subject},
                           "runs": []}
    per_run = max(args.crossings // args.rounds, 1)
    baseline = bb.product_at(args.baseline) if "baseline" in args.variants else contextlib.nullcontext(bb.ROOT)
    with tempfile.TemporaryDirectory(prefix="bollmin-bench-latency-") as tmp, baseline as old:
        for rnd in range(args.rounds):
            order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                if variant not in args.variants:
                    continue
                work = os.path.join(tmp, f"{variant}-{rnd}")
                os.makedirs(work)
                res.setdefault("quiet", []).append(await bb.wait_quiet(args.wait_quiet, log))
                log(f"round {rnd + 1}/{args.rounds}: {variant}, {per_run} crossings")
                try:
                    run = await latency_run(work, args, per_run, log,
                                            variant=variant if variant in bb.VARIANT_ENV else "current",
                                            product=old if variant == "baseline" else bb.ROOT,
                                            timing=variant != "baseline", load_paths=LOAD_PATHS.get(variant))
                except RuntimeError as exc:
                    log(f"{variant} failed: {exc}")
                    run = {"error": str(exc)[-1500:]}
                run.update(variant=variant, round=rnd)
                res["runs"].append(run)
                if "first" in run:
                    s = bb.summary(run["first"])
                    log(f"{variant}: n={s['n']} p50={s['p50']:.2f} p99={s['p99']:.2f} ms, "
                        f"others {run['others']:.0f} %")
    res["total_s"] = time.monotonic() - started
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate the latency section of BENCHMARKS.md")
    parser.add_argument("--baseline", default="106a7ce", metavar="REF", help="git revision measured as 'before'")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="bots to compare (default: all)")
    parser.add_argument("--speed", type=float, default=4000.0, help="replay speed (× real time)")
    parser.add_argument("--crossings", type=int, default=900, help="first orders per bot, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each bot once per round)")
    parser.add_argument("--max-run-s", type=float, default=240.0, help="cap on one run's replay (s)")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to calm down")
    parser.add_argument("--raw", metavar="PATH", help="also write every measured value as JSON to PATH")
    parser.add_argument("--from-raw", metavar="PATH", help="measure nothing: render the results saved by --raw")
    args = parser.parse_args()
    if args.rounds < 1 or args.crossings < 1:
        parser.error("--rounds and --crossings must be at least 1")
    log = bb.stderr_log("bench_latency")
    res = bb.measure_or_load(args, "bench_latency.py", measure, log)
    if res is None:
        return 130
    bb.publish("latency", latency_report.render(res), args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
