#!/usr/bin/env python3
"""The bot under a firehose: saturation message rate and resident memory (paper mode).

    python bench/bench_firehose.py              print the markdown section on stdout (progress on stderr)
    python bench/bench_firehose.py --write      also put it in BENCHMARKS.md (<!-- firehose:begin/end -->)
    python bench/bench_firehose.py --raw F      also save every measured value as JSON
    python bench/bench_firehose.py --from-raw F render a saved run again, measuring nothing

A plain ``websockets.serve`` server on 127.0.0.1 serves the routed path
``/market/stream?streams=btcusdt@kline_1m/btcusdt@aggTrade`` (no permessage-deflate) and sends
pre-serialized messages back to back; ``send`` waits when the socket buffer is full, so the bot's
reading speed sets the pace. REST history comes from a paused simulated exchange holding synthetic
candles that join the stream. Prices: a random walk around 95 000 (0.1 tick, weak pull back), a
trade every 60 ms of exchange time (1 000 per 1m candle) and a closed kline at each candle boundary,
so candles roll on exchange timestamps and the strategy trades.

* The rate is the slope of the bot's own ``status.messages`` counter against its
  ``status.heartbeat_ms`` while the stream is saturated; CPU from psutil (process, main thread).
* RSS after 10⁵ and 10⁶ ticks (and ``--plateau-ticks``: does growth level off?): the sender stops
  at each mark, waits until the bot has read everything and its DB writer is idle, then reads it.
* The same saturation rate, in ``--rounds`` interleaved rounds, for the product at ``--baseline``
  and the current tree on uvloop and with stdlib json instead of orjson (``bench/botwrap.py``), on a
  shorter stream.
* When RSS grows past the target while the DB writer's queue piles up: once more with a shorter
  GIL switch interval in the bot (``bench/botwrap.py``), to see whether the writer waits for the GIL.

About 6 minutes on a quiet 2-core machine, plus the wait for one (``--wait-quiet``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from typing import Any

import botbench as bb
import common
import firehose_stream as fs

VARIANTS = ("baseline", "current", "uvloop", "stdjson")
SWITCH_INTERVAL_S = 0.0005
TARGET_RATE = 20_000        # msg/s
TARGET_RSS_MB = 150.0       # after 10⁶ ticks
TARGET_GROWTH_MB = 2.0      # from 10⁵ to 10⁶ ticks
CHANGE = 0.10               # a variant "changes" a figure when it moves it by 10 % or more in every round
MB = 2 ** 20
LABELS = {"baseline": "before: {short}", "current": "**after: current tree**", "uvloop": "current + uvloop",
          "stdjson": "current with stdlib json instead of orjson"}


async def firehose_run(workdir: str, msgs: list[bytes], after_tick: list[int], history: list[Any],
                       marks: list[int], log: Any, *, product: str = bb.ROOT, variant: str = "current",
                       wrap_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Stream up to ``marks[-1]`` ticks to a fresh paper bot, stopping at each mark to read its RSS."""
    rest = bb.SimExchange(history, paused=True, history_candles=len(history) - 1, target_interval="1m")
    hose = fs.Firehose(msgs)
    bot: bb.BotProcess | None = None
    sampler: fs.Sampler | None = None
    meter = bb.LoadMeter()
    phases: list[tuple[int, int, int]] = []  # (first sampler row, messages at start, messages at the mark)
    readings: list[dict[str, Any]] = []
    try:
        rest_port = await rest.start("127.0.0.1", 0)
        ws_port = await hose.start()
        bot = bb.BotProcess(workdir, product=product, variant=variant, wrap_env=wrap_env,
                            REST_BASE_URL=f"http://127.0.0.1:{rest_port}", WS_BASE_URL=f"ws://127.0.0.1:{ws_port}",
                            PAPER_TRADING=True)
        sampler = fs.Sampler(bot)
        bot.start()
        await bb.wait_connected(bot)
        rss_start = bot.rss()
        sampler.start()
        meter.start(bot)
        for mark in marks:
            target = after_tick[mark]
            phases.append((len(sampler.rows), hose.sent, target))
            hose.allow(target)
            st = await fs.settle(bot, target, 600)
            readings.append({"ticks": mark, "rss": bot.rss(), "db_bytes": fs.db_bytes(bot.db),
                             "dropped": int(st.get("dropped") or 0), "reconnects": int(st.get("reconnects") or 0)})
            log(f"{variant}: {mark:,} ticks read; RSS {readings[-1]['rss'] / 2**20:.2f} MB")
        others = meter.stop()
        await sampler.stop()
        code = await bot.astop()
    finally:
        if sampler is not None:
            await sampler.stop()
        if bot is not None and bot.alive():
            await bot.astop()
        await hose.stop()
        await rest.stop()
    for i, (row0, _start, _end) in enumerate(phases):  # the writer's deepest queue on the way to each mark
        rows = sampler.rows[row0:phases[i + 1][0]] if i + 1 < len(phases) else sampler.rows[row0:]
        readings[i]["backlog_peak"] = int(max((x["backlog"] for x in rows), default=0))
    tot = [0.0] * 6  # each phase after the first mark, away from its ends (5 %), is saturated
    for i, (row0, start, end) in enumerate(phases[1:], 1):
        rows = sampler.rows[row0:phases[i + 1][0]] if i + 1 < len(phases) else sampler.rows[row0:]
        part = fs.saturated_rate(rows, start + 0.05 * (end - start), start + 0.95 * (end - start))
        tot = [x + y for x, y in zip(tot, part, strict=True)]
    n, secs, cpu, main, me, wall = tot
    counts = bb.query(bot.db, "SELECT (SELECT count(*) FROM transitions) AS tr, (SELECT count(*) FROM orders) AS o, "
                              "(SELECT count(*) FROM candles) AS c, (SELECT count(*) FROM events) AS e")[0]
    rate = n / secs if secs else float("nan")
    return {"variant": variant, "marks": marks, "readings": readings, "rss_start": rss_start, "rate": rate,
            "window_s": secs, "cpu": cpu / wall * 100 if wall else float("nan"),
            "main_cpu": main / wall * 100 if wall else float("nan"),
            "main_us": main / wall / rate * 1e6 if wall and rate == rate and rate else float("nan"),
            "sender_cpu": me / wall * 100 if wall else float("nan"), "transitions": counts["tr"],
            "orders": counts["o"], "candles": counts["c"], "events": counts["e"], "connections": hose.connections,
            "others": others, "exit": code}


async def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    short, subject = bb.describe_ref(args.baseline)
    res: dict[str, Any] = {"machine": common.machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "loadavg": os.getloadavg(), "baseline": {"ref": args.baseline, "short": short,
                                                                    "subject": subject},
                           "variants": [], "rounds": args.rounds}
    rng = random.Random(20250601)
    history = fs.synthetic_history(rng)
    t0 = time.monotonic()
    msgs, after_tick = fs.firehose_messages(max(args.plateau_ticks, args.variant_ticks), rng)
    res["messages"] = after_tick[args.plateau_ticks]
    log(f"{len(msgs):,} messages serialized in {time.monotonic() - t0:.1f}s, "
        f"{sum(map(len, msgs)) / len(msgs):.0f} bytes each on average")
    marks = sorted({args.first_mark, args.ticks, args.plateau_ticks})
    baseline = bb.product_at(args.baseline) if "baseline" in args.variants else contextlib.nullcontext(bb.ROOT)
    with tempfile.TemporaryDirectory(prefix="bollmin-bench-firehose-") as tmp, baseline as old:
        await bb.wait_quiet(args.wait_quiet, log)
        res["main"] = await firehose_run(os.path.join(tmp, "main"), msgs, after_tick, history, marks, log)
        log(f"saturation {res['main']['rate']:,.0f} msg/s at {res['main']['cpu']:.0f} % CPU")
        rd = res["main"]["readings"]
        growth = (rd[1]["rss"] - rd[0]["rss"]) / 2 ** 20
        if growth >= TARGET_GROWTH_MB and max(x["backlog_peak"] for x in rd) >= 100:
            await bb.wait_quiet(args.wait_quiet, log)
            log(f"RSS grew {growth:+.2f} MB: once more with a GIL switch interval of {SWITCH_INTERVAL_S * 1000:g} ms")
            res["switch"] = await firehose_run(os.path.join(tmp, "switch"), msgs, after_tick, history, marks[:2], log,
                                               wrap_env={"BENCH_SWITCH_INTERVAL_S": str(SWITCH_INTERVAL_S)})
        vmarks = [args.variant_ticks // 10, args.variant_ticks]
        for rnd in range(args.rounds):
            for variant in VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS)):
                if variant not in args.variants:
                    continue
                work = os.path.join(tmp, f"{variant}-{rnd}")
                await bb.wait_quiet(args.wait_quiet, log)
                try:
                    run = await firehose_run(work, msgs, after_tick, history, vmarks, log, variant="current"
                                             if variant == "baseline" else variant,
                                             product=old if variant == "baseline" else bb.ROOT)
                except RuntimeError as exc:
                    log(f"{variant} failed: {exc}")
                    run = {"error": str(exc)[-1500:]}
                run.update(variant=variant, round=rnd)
                res["variants"].append(run)
                if "rate" in run:
                    log(f"{variant}: {run['rate']:,.0f} msg/s, main thread {run['main_us']:.1f} µs/msg")
    res["total_s"] = time.monotonic() - started
    return res


# ---- the section ------------------------------------------------------------------------------------

def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def compare_rows(res: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The comparison table (rounds pooled) and each bot's mean rate and main-thread µs per message."""
    short = res["baseline"]["short"]
    rows = ["| bot | msg/s, per round | main-thread CPU µs / message | process CPU % | others' CPU, % of a core |",
            "|---|---:|---:|---:|---:|"]
    means: dict[str, dict[str, float]] = {}
    for v in VARIANTS:
        runs = [r for r in res["variants"] if r["variant"] == v and "rate" in r]
        if not runs:
            continue
        means[v] = {"rate": sum(r["rate"] for r in runs) / len(runs),
                    "main_us": sum(r["main_us"] for r in runs) / len(runs)}
        rows.append(f"| {LABELS[v].format(short=short)} | " + " / ".join(f"{r['rate']:,.0f}" for r in runs)
                    + f" | {means[v]['main_us']:.1f} | " + " / ".join(f"{r['cpu']:.0f}" for r in runs) + " | "
                    + " / ".join(f"{r['others']:.0f}" for r in runs) + " |")
    return rows, means


def paired(res: dict[str, Any], variant: str, reference: str, **kw: Any) -> tuple[str, str] | None:
    """``variant`` against ``reference`` in the same round (None when they never ran in one)."""
    moves: dict[str, list[float]] = {"time per message": [], "main-thread CPU per message": []}
    busy, seen = 0, False
    for rnd in range(res["rounds"]):
        a = next((r for r in res["variants"] if r["variant"] == variant and r["round"] == rnd and "rate" in r), None)
        c = next((r for r in res["variants"] if r["variant"] == reference and r["round"] == rnd and "rate" in r), None)
        if a is None or c is None:
            continue
        seen = True
        if max(a["others"], c["others"]) >= bb.NOISY_PCT:
            busy += 1
            continue
        moves["time per message"].append(c["rate"] / a["rate"] - 1)
        moves["main-thread CPU per message"].append(a["main_us"] / c["main_us"] - 1)
    return bb.judge(moves, CHANGE, busy, **kw) if seen else None


def verdicts(res: dict[str, Any], means: dict[str, dict[str, float]]) -> list[str]:
    """Before → after, and each library against the current bot of the same round."""
    cur = means.get("current")
    if not cur:
        return []
    out = []
    ba = paired(res, "current", "baseline", outcomes=bb.BEFORE_AFTER)
    if "baseline" in means and ba:
        b = means["baseline"]
        out.append(f"- Before → after: {b['rate']:,.0f} → {cur['rate']:,.0f} msg/s, {b['main_us']:.1f} → "
                   f"{cur['main_us']:.1f} µs of main-thread CPU per message (means of all rounds); per round, after "
                   f"against before: {ba[0]} → **{ba[1]}**.")
    judged = paired(res, "uvloop", "current")
    if judged:
        out.append(f"- {LABELS['uvloop']}: {judged[0]} → **{judged[1]}** at saturation.")
    judged = paired(res, "current", "stdjson")  # orjson is in the product: does it still beat json?
    if judged:
        out.append(f"- orjson (the current bot) against the same bot with stdlib json: {judged[0]} → **{judged[1]}** "
                   f"at saturation.")
    return out


def render(res: dict[str, Any]) -> str:
    fh = res["main"]
    rd = fh["readings"]
    r1, r2 = rd[0], rd[1]
    growth = (r2["rss"] - r1["rss"]) / MB
    out = ["## Firehose: saturation rate and memory (paper mode)", "",
           f"Machine: {res['machine']}  ",
           f"Command: `{res.get('command', 'python bench/bench_firehose.py')}` ({res['date']}; {res['total_s']:.0f} s)",
           "", "| measure | result | target | met |", "|---|---:|---:|:---:|",
           f"| saturation rate (the bot's own message counter over {fh['window_s']:.0f} s of a full stream) | "
           f"{fh['rate']:,.0f} msg/s | ≥ {TARGET_RATE:,} msg/s | {_ok(fh['rate'] >= TARGET_RATE)} |",
           f"| bot CPU at saturation (whole process / main thread; 100 % = one core) | {fh['cpu']:.0f} % / "
           f"{fh['main_cpu']:.0f} % | — | |",
           f"| main-thread CPU per message at saturation | {fh['main_us']:.1f} µs | — | |",
           f"| RSS after {r1['ticks']:,} ticks | {r1['rss'] / MB:.1f} MB | — | |",
           f"| RSS after {r2['ticks']:,} ticks | {r2['rss'] / MB:.1f} MB | < {TARGET_RSS_MB:g} MB | "
           f"{_ok(r2['rss'] / MB < TARGET_RSS_MB)} |",
           f"| RSS growth from {r1['ticks']:,} to {r2['ticks']:,} ticks | {growth:+.2f} MB | < {TARGET_GROWTH_MB:g} MB "
           f"| {_ok(growth < TARGET_GROWTH_MB)} |"]
    for a, b in zip(rd[1:], rd[2:], strict=False):
        out.append(f"| RSS growth from {a['ticks']:,} to {b['ticks']:,} ticks (does it level off?) | "
                   f"{(b['rss'] - a['rss']) / MB:+.2f} MB | — | |")
    out += ["", f"{res['messages']:,} pre-serialized messages ({rd[-1]['ticks']:,} synthetic ticks: a random "
                f"walk around 95 000 with a 0.1 tick, a trade per 60 ms of exchange time, a closed kline per 1m "
                f"candle) from a `websockets.serve` server on the routed path, as fast as the bot reads them; REST "
                f"history from a paused simulated exchange. The sender stops at each mark until the bot has read "
                f"everything and its DB writer is idle, then RSS is read; the rate is measured between marks only. "
                f"The bot recorded {fh['transitions']:,} transitions, {fh['orders']:,} paper orders, "
                f"{fh['candles']:,} candles and {fh['events']:,} events; dropped {rd[-1]['dropped']} messages, "
                f"reconnected {rd[-1]['reconnects']} times. RSS right after connecting: {fh['rss_start'] / MB:.1f} "
                f"MB; the bot's DB at the marks: " + ", ".join(f"{x['db_bytes'] / MB:.1f} MB" for x in rd)
                + "; the DB writer's deepest queue (`db_backlog`, sampled 4× a second) on the way to each mark: "
                + ", ".join(f"{x['backlog_peak']:,}" for x in rd) + f" writes. The sender used "
                f"{fh['sender_cpu']:.0f} % of a core; other processes {fh['others']:.0f} %."]
    sw = res.get("switch")
    if sw and len(sw.get("readings", [])) >= 2:
        a, b = sw["readings"][0], sw["readings"][1]
        out += ["", f"RSS grew past the target while the writer's queue piled up, so the same stream ran once more "
                    f"with the bot's GIL switch interval at {SWITCH_INTERVAL_S * 1000:g} ms instead of CPython's 5 ms: "
                    f"deepest queue {max(a['backlog_peak'], b['backlog_peak']):,} writes, RSS growth "
                    f"{(b['rss'] - a['rss']) / MB:+.2f} MB over the same phase, {sw['rate']:,.0f} msg/s. A smaller "
                    f"queue and growth there mean the writer thread was waiting for the GIL, not working."]
    rows, means = compare_rows(res)
    if means:
        out += ["", f"**Saturation rate by bot**: the same stream (first {res['variants'][0]['marks'][-1]:,} ticks), "
                    f"a fresh bot each, in {res['rounds']} interleaved rounds. Before: `{res['baseline']['short']}` "
                    f"({res['baseline']['subject']}); uvloop and stdlib json through `bench/botwrap.py` (uvloop's "
                    f"event loop policy; `json.loads` instead of `orjson.loads` in the feed and user-data "
                    f"stream). A figure counts as changed at "
                    f"±{CHANGE * 100:.0f} % or more the same way in every round (against the current bot of the same "
                    f"round; rounds in which either run had other processes at {bb.NOISY_PCT:g} % of a core or more "
                    f"are left out).", "", *rows, "", *verdicts(res, means)]
    for r in res["variants"]:
        if "error" in r:
            out.append(f"\n**{r['variant']} (round {r['round'] + 1}) failed:** `{r['error'][-300:]}`")
    loadavg = " / ".join(f"{x:.2f}" for x in res.get("loadavg", ()))
    codes = ", ".join(str(r.get("exit")) for r in [fh, *(res.get("variants") or [])] if "exit" in r)
    out += ["", f"Bot exit codes: {codes}. Load average when the bench started: {loadavg} (1 / 5 / 15 min)."]
    busy = max([fh["others"], *(r["others"] for r in res["variants"] if "others" in r)])
    if busy > 25:
        out += ["", f"⚠ Other processes used up to {busy:.0f} % of a core during these runs (the machine has "
                    f"{os.cpu_count()} cores): the figures are pessimistic."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate the firehose section of BENCHMARKS.md")
    parser.add_argument("--ticks", type=int, default=1_000_000, help="ticks of the second RSS reading")
    parser.add_argument("--first-mark", type=int, default=100_000, help="ticks of the first RSS reading")
    parser.add_argument("--plateau-ticks", type=int, default=2_000_000,
                        help="go on to this many ticks for a last RSS reading (does growth level off?)")
    parser.add_argument("--baseline", default="106a7ce", metavar="REF", help="git revision measured as 'before'")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS,
                        help="bots whose saturation rate is compared (none: skip)")
    parser.add_argument("--variant-ticks", type=int, default=600_000, help="ticks per comparison run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the comparison")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to calm down")
    parser.add_argument("--raw", metavar="PATH", help="also write every measured value as JSON to PATH")
    parser.add_argument("--from-raw", metavar="PATH", help="measure nothing: render the results saved by --raw")
    args = parser.parse_args()
    if not 0 < args.first_mark < args.ticks:
        parser.error("--first-mark must be between 0 and --ticks")
    args.plateau_ticks = max(args.plateau_ticks, args.ticks)
    log = bb.stderr_log("bench_firehose")
    res = bb.measure_or_load(args, "bench_firehose.py", measure, log)
    if res is None:
        return 130
    bb.publish("firehose", render(res), args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
