#!/usr/bin/env python3
"""Orders matching the backtest at R ticks/s with L ms order latency (live bot, simulated exchange).

    python bench/bench_parity.py              print the markdown section on stdout (progress on stderr)
    python bench/bench_parity.py --write      also put it in BENCHMARKS.md (<!-- parity:begin/end -->)
    python bench/bench_parity.py --raw F      also save every measured value as JSON
    python bench/bench_parity.py --from-raw F render a saved run again, measuring nothing

Each case is a fresh ``python bollmin.py run`` in live mode against a fresh ``python -m simexchange``
(its own process) replaying a slice of ``marketdata/btcusdt_um_1m_2025-05.csv.gz``: 19 closed
candles of history (the bot fetches exactly those, so its window is ready at the first tick, as
the backtest's is) and ``--candles`` streamed candles of 4 ticks each. Pacing: R ticks/s
(speed 15·R: 4 ticks per 60 s of data), or bursts of N ticks back to back every M ms
(``POST /_sim/burst``); every order executes at once and is answered L ms later
(``POST /_sim/order_latency``). Once the replay is over, the bot has seen the last tick and every
order has settled, the exchange's orders (side, reduceOnly, origQty, in order) are compared one by
one with the ``orders`` rows of ``bollmin.py backtest --db`` on the same file and config.

Reported per case: the orders matching the backtest before the first difference, both counts,
the first difference, the achieved tick rate (ticks replayed over the replay's wall time), and the
order executor's backlog: from the product's timing probes (``BOLLMIN_TIMING``) the most
transitions waiting for it at once and the longest wait from "queued" to its intent commit, and
from the status table the largest ``order_backlog`` / ``order_backlog_age_s`` seen (polled 10× a
second). The same cases run against the product at ``--baseline`` (default 106a7ce, before the
executor; no probes there), interleaved. About 6 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import botbench as bb
import common

HISTORY = 19
TICKS_PER_CANDLE = 4


def write_slice(path: str, candles: int, skip: int) -> int:
    """The rows ``skip`` … ``skip + HISTORY + candles`` of the 1m file as a CSV; returns the last tick's time."""
    with gzip.open(bb.MARKET_1M, "rt") as fh, open(path, "w", newline="") as out:
        reader, writer = csv.reader(fh), csv.writer(out)
        writer.writerow(next(reader))
        rows = [row for i, row in enumerate(reader) if skip <= i < skip + HISTORY + candles]
        writer.writerows(rows)
    return int(rows[-1][0]) + 59_999


def ctl(port: int, name: str, body: dict | None = None) -> Any:
    """The simulated exchange's control API (``/_sim/<name>``; GET without a body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_sim/{name}", data=data,
                                 method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class SimProcess:
    """``python -m simexchange`` (the current tree's) on a free 127.0.0.1 port, replaying ``klines`` (paused)."""

    def __init__(self, workdir: str, klines: str) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.port_file = os.path.join(workdir, "sim.port")
        self.argv = [sys.executable, "-m", "simexchange", "--klines", klines, "--paused",
                     "--history", str(HISTORY), "--interval", "1m", "--port-file", self.port_file,
                     "--api-key", bb.DEMO_API_KEY, "--api-secret", bb.DEMO_API_SECRET, "--log-level", "warning"]
        self.stderr_path = os.path.join(workdir, "sim-stderr.txt")
        self.proc: subprocess.Popen | None = None
        self.port = 0

    async def start(self) -> int:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd=bb.ROOT, env=bb.clean_env(), stdout=subprocess.DEVNULL,
                                         stderr=err)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simexchange did not start (see {self.stderr_path})")
            await asyncio.sleep(0.1)
        with open(self.port_file, encoding="utf-8") as fh:
            self.port = int(fh.read())
        return self.port

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def backtest_orders(product: str, klines: str, config: str, db: str) -> list[tuple[str, bool, float]]:
    """(side, reduceOnly, quantity) of every order ``backtest`` decides on the file, in order."""
    out = subprocess.run([sys.executable, os.path.join(product, "bollmin.py"), "backtest", "--klines", klines,
                          "--db", db, "--config", config], capture_output=True, text=True, timeout=300,
                         env=bb.clean_env())
    if out.returncode != 0:
        raise RuntimeError(f"backtest failed ({out.returncode}): {out.stderr[-800:]}")
    return [(r["side"], bool(r["reduce_only"]), round(r["qty"], 3))
            for r in bb.query(db, "SELECT side, reduce_only, qty FROM orders ORDER BY id")]


def executor_backlog(marks: list[tuple[str, Any, int]], rows: list[Any]) -> dict[str, Any]:
    """From the timing probes: most transitions waiting for the executor at once, longest wait queued → commit."""
    tid_of = {r["client_order_id"]: r["transition_id"] for r in rows}
    queued: dict[int, int] = {}
    started: dict[int, int] = {}
    for point, key, ns in marks:
        if point == "queued":
            queued.setdefault(key, ns)
        elif point == "commit" and key in tid_of:
            started.setdefault(tid_of[key], ns)
    waits = [(started[t] - q) / 1e6 for t, q in queued.items() if t in started]
    spans = sorted((q, started.get(t)) for t, q in queued.items())
    most = 0
    for i, (q, _s) in enumerate(spans):  # waiting at q: queued by then and not started yet
        most = max(most, sum(1 for q2, s2 in spans[:i + 1] if s2 is None or s2 > q))
    return {"waiting_max": most, "wait_max_ms": max(waits, default=0.0), "wait_p50_ms": bb.pct(sorted(waits), 50),
            "never_started": sum(1 for t in queued if t not in started)}


async def parity_run(workdir: str, case: dict[str, Any], product: str, baseline: bool, klines: str,
                     last_tick_ms: int, log: Any) -> dict[str, Any]:
    sim = SimProcess(workdir, klines)
    bot: bb.BotProcess | None = None
    out: dict[str, Any] = {"case": case, "bot": "baseline" if baseline else "current"}
    peak = {"order_backlog": 0.0, "order_backlog_age_s": 0.0}

    def sample() -> dict[str, str]:
        st = bb.bot_status(bot.db)  # type: ignore[union-attr]
        for k in peak:
            peak[k] = max(peak[k], float(st.get(k) or 0))
        return st

    try:
        port = await sim.start()
        ctl(port, "order_latency", {"ms": case["latency_ms"]})
        bot = bb.BotProcess(workdir, product=product, timing=not baseline, REST_BASE_URL=f"http://127.0.0.1:{port}",
                            WS_BASE_URL=f"ws://127.0.0.1:{port}", PAPER_TRADING=False, HISTORY_KLINES=HISTORY,
                            **bb.LIVE_KEYS)
        meter = bb.LoadMeter()
        bot.start()
        await bb.wait_connected(bot)
        if not baseline:
            await bb.wait_until(lambda: sample().get("user_stream") == "connected", 30, "the user-data stream", bot)
        if case.get("burst"):
            ctl(port, "burst", case["burst"])
        else:
            ctl(port, "speed", {"speed": case["rate"] * 60 / TICKS_PER_CANDLE})
        meter.start(bot)
        t0 = time.monotonic()
        ctl(port, "resume", {})
        await bb.wait_until(lambda: (sample(), ctl(port, "state")["finished"])[1], 600, "the replay to finish", bot)
        out["replay_s"] = time.monotonic() - t0
        out["ticks"] = ctl(port, "state")["ticks_emitted"]
        out["others"] = meter.stop()
        await bb.wait_until(lambda: sample().get("price_time_ms") == str(last_tick_ms), 120, "the last tick", bot)
        if not baseline:
            await bb.wait_until(lambda: sample().get("order_backlog") == "0", 300, "the executor to catch up", bot)
        await bb.wait_until(lambda: not bb.query(bot.db, "SELECT id FROM orders WHERE status IN "  # type: ignore
                                                        "('pending','sent','unknown')"), 120, "orders to settle", bot)
        out["live"] = [(o["side"], o["reduceOnly"], round(float(o["origQty"]), 3)) for o in ctl(port, "orders")]
        out["exit"] = await bot.astop()
    finally:
        if bot is not None and bot.alive():
            await bot.astop()
        sim.stop()
    rows = bb.query(bot.db, "SELECT client_order_id, transition_id, status FROM orders ORDER BY id")
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out.update(statuses=statuses, status_peak=peak, not_sent=bot.count_lines("not sent"),
               reconciles=bot.count_lines("RECONCILE"), config=bot.config,
               probes=executor_backlog(bot.timing_marks(), rows) if not baseline else {})
    return out


def compare(live: list, back: list) -> dict[str, Any]:
    """Orders equal one by one before the first difference, and that difference."""
    k = 0
    while k < min(len(live), len(back)) and live[k] == back[k]:
        k += 1
    diff = None
    if live != back:
        diff = {"index": k, "live": live[k] if k < len(live) else None, "back": back[k] if k < len(back) else None}
    return {"matched": k, "n_live": len(live), "n_back": len(back), "equal": live == back, "first_diff": diff}


def parse_cases(pairs: list[str], bursts: list[str]) -> list[dict[str, Any]]:
    cases = []
    for p in pairs:
        r, lat = p.split(":")
        cases.append({"rate": float(r), "latency_ms": int(lat), "burst": None})
    for b in bursts:
        n, every, lat = b.split(":")
        cases.append({"rate": None, "latency_ms": int(lat), "burst": {"ticks": int(n), "every_ms": int(every)}})
    return cases


async def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    res: dict[str, Any] = {"machine": common.machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "loadavg": os.getloadavg(), "candles": args.candles, "skip": args.skip, "runs": []}
    bots = ["current"]
    if args.baseline != "none":
        short, subject = bb.describe_ref(args.baseline)
        res["baseline"] = {"ref": args.baseline, "short": short, "subject": subject}
        bots.append("baseline")
    baseline = bb.product_at(args.baseline) if args.baseline != "none" else contextlib.nullcontext(bb.ROOT)
    with tempfile.TemporaryDirectory(prefix="bollmin-bench-parity-") as tmp, baseline as old:
        klines = os.path.join(tmp, "slice.csv")
        last_tick = write_slice(klines, args.candles, args.skip)
        back: dict[str, list] = {}
        for i, case in enumerate(parse_cases(args.pairs, args.bursts)):
            for who in (bots if i % 2 == 0 else list(reversed(bots))):
                work = os.path.join(tmp, f"{i}-{who}")
                await bb.wait_quiet(args.wait_quiet, log)
                what = (f"{case['burst']['ticks']} ticks every {case['burst']['every_ms']} ms" if case["burst"]
                        else f"{case['rate']:g} ticks/s") + f", {case['latency_ms']} ms order latency"
                log(f"{who}: {what}")
                product = old if who == "baseline" else bb.ROOT
                try:
                    run = await parity_run(work, case, product, who == "baseline", klines, last_tick, log)
                    if who not in back:
                        back[who] = backtest_orders(product, klines, run["config"], os.path.join(tmp, f"bt-{who}.db"))
                    run.update(compare(run.pop("live"), back[who]))
                    log(f"{who}: {run['matched']} of {run['n_back']} orders match ({run['n_live']} sent), "
                        f"{run['ticks'] / run['replay_s']:.0f} ticks/s")
                except (RuntimeError, OSError) as exc:  # one failed case is reported, the others still run
                    log(f"{who} failed: {exc}")
                    run = {"case": case, "bot": who, "error": str(exc)[-1500:]}
                res["runs"].append(run)
    res["total_s"] = time.monotonic() - started
    return res


# ---- the section ------------------------------------------------------------------------------------

def _order(o: Any) -> str:
    return "none" if o is None else f"{o[0]}{' reduceOnly' if o[1] else ''} {o[2]:g}"


def _pacing(case: dict[str, Any]) -> str:
    b = case["burst"]
    return f"bursts: {b['ticks']} ticks every {b['every_ms']} ms" if b else f"{case['rate']:,.0f} ticks/s"


def render(res: dict[str, Any]) -> str:
    base = res.get("baseline")
    out = ["## Live orders = backtest, at speed (live bot, simulated exchange)", "",
           f"Machine: {res['machine']}  ",
           f"Command: `{res.get('command', 'python bench/bench_parity.py')}` ({res['date']}; {res['total_s']:.0f} s)",
           "",
           f"Each row: a fresh live bot against a fresh simulated exchange (its own process) replaying "
           f"{res['candles']:,} 1m candles of May 2025 BTCUSDT (4 ticks each, after {HISTORY} candles of history) "
           f"at the pacing shown; every order executes at once and is answered after the order latency shown. "
           f"Then the exchange's orders (side, reduceOnly, quantity, in order) are compared one by one with the "
           f"orders `bollmin.py backtest --db` decides on the same file and config. \"Waiting\": transitions "
           f"decided and not yet started by the order executor, from the bot's timing probes, and the longest "
           f"wait from a transition joining the executor's queue to its first intent commit; the status columns "
           f"are the largest `order_backlog` (transitions queued or running) and `order_backlog_age_s` polled "
           f"10× a second." + (f" \"Before\" is `{base['short']}` ({base['subject']}): it has neither the "
                              f"executor nor the probes." if base else ""), "",
           "| pacing | order latency | achieved ticks/s | bot | orders equal to the backtest, in order | sent / "
           "backtest | first difference (sent vs backtest) | most waiting | longest wait ms | max order_backlog "
           "/ age s |", "|---|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in res["runs"]:
        c = r["case"]
        who = f"before: {base['short']}" if r["bot"] == "baseline" and base else "**current**"
        if "error" in r:
            out.append(f"| {_pacing(c)} | {c['latency_ms']} ms | — | {who} | failed: {r['error'][-200:]!r} "
                       f"| | | | | |")
            continue
        d = r["first_diff"]
        diff = "none" if d is None else f"#{d['index'] + 1}: {_order(d['live'])} vs {_order(d['back'])}"
        pr, sp = r.get("probes") or {}, r["status_peak"]
        ok = "**all**" if r["equal"] else f"{r['matched']:,}"
        out.append(f"| {_pacing(c)} | {c['latency_ms']} ms | {r['ticks'] / r['replay_s']:,.0f} | {who} | {ok} of "
                   f"{r['n_back']:,} | {r['n_live']:,} / {r['n_back']:,} | {diff} | "
                   + (f"{pr['waiting_max']} | {pr['wait_max_ms']:.0f} | " if pr else "— | — | ")
                   + (f"{sp['order_backlog']:.0f} / {sp['order_backlog_age_s']:.2f} |" if r["bot"] == "current"
                      else "— |"))
    cur = [r for r in res["runs"] if r["bot"] == "current" and "error" not in r]
    if cur:
        equal = sum(r["equal"] for r in cur)
        worst = max(cur, key=lambda r: (r.get("probes") or {}).get("wait_max_ms", 0))
        out += ["", f"Current tree: live equals the backtest one by one in {equal} of {len(cur)} cases. Its "
                    f"executor fell furthest behind at {_pacing(worst['case'])} with {worst['case']['latency_ms']} "
                    f"ms order latency: up to {(worst.get('probes') or {}).get('waiting_max', 0)} transitions "
                    f"waiting, {(worst.get('probes') or {}).get('wait_max_ms', 0):.0f} ms at most from the queue to "
                    f"the intent commit. Orders not filled: "
                    + (", ".join(f"{k} {v}" for r in cur for k, v in r["statuses"].items() if k != "filled")
                       or "none") + f"; transitions queued that never reached an intent commit (nothing to "
                    f"send, or dropped): {sum((r.get('probes') or {}).get('never_started', 0) for r in cur)}; "
                    f"\"not sent\" lines in the bots' logs: {sum(r['not_sent'] for r in cur)}; reconciliations "
                    f"(RECONCILE lines): {sum(r['reconciles'] for r in cur)}."]
    others = [r["others"] for r in res["runs"] if "others" in r]
    loadavg = " / ".join(f"{x:.2f}" for x in res.get("loadavg", ()))
    out += ["", "Other processes' CPU during the replays, % of one core: " + " / ".join(f"{x:.0f}" for x in others)
            + f". Load average when the bench started: {loadavg} (1 / 5 / 15 min). Bot exit codes: "
            + ", ".join(str(r.get("exit")) for r in res["runs"] if "exit" in r) + "."]
    if others and max(others) > 25:
        out += ["", f"⚠ Other processes used up to {max(others):.0f} % of a core during these runs (the machine has "
                    f"{os.cpu_count()} cores): the tick rates are what the exchange achieved on a busy machine."]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate the parity section of BENCHMARKS.md")
    parser.add_argument("--pairs", nargs="*", default=["100:0", "300:0", "300:20", "300:50", "1000:20"],
                        metavar="R:L", help="ticks per second and order latency in ms")
    parser.add_argument("--bursts", nargs="*", default=["150:500:20"], metavar="N:M:L",
                        help="N ticks back to back every M ms, order latency L ms")
    parser.add_argument("--candles", type=int, default=1200, help="streamed 1m candles per case")
    parser.add_argument("--skip", type=int, default=0, help="start this many candles into the file")
    parser.add_argument("--baseline", default="106a7ce", metavar="REF",
                        help="git revision measured as 'before' (none: skip)")
    parser.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to calm down")
    parser.add_argument("--raw", metavar="PATH", help="also write every measured value as JSON to PATH")
    parser.add_argument("--from-raw", metavar="PATH", help="measure nothing: render the results saved by --raw")
    args = parser.parse_args()
    log = bb.stderr_log("bench_parity")
    if not args.from_raw:
        try:
            parse_cases(args.pairs, args.bursts)
        except ValueError:
            parser.error("--pairs are R:L and --bursts N:M:L (numbers)")
    res = bb.measure_or_load(args, "bench_parity.py", measure, log)
    if res is None:
        return 130
    bb.publish("parity", render(res), args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
