"""What the running-bot benchmarks share (``bench_latency``, ``bench_firehose``, ``bench_parity``).

* ``BotProcess``: ``python bollmin.py run --config F`` as a child process with its own config,
  DB and log in a work dir — the current tree, or another revision of the product
  (``product_at``), optionally through ``bench/botwrap.py`` (uvloop, stdlib json) and with the
  product's timing probes on (``BOLLMIN_TIMING``).
* ``TimedSim``: the simulated exchange, stamping ``time.perf_counter_ns()`` (CLOCK_MONOTONIC,
  comparable with the bot's own stamps) when an aggTrade frame has been handed to the socket
  and when ``POST /fapi/v1/order`` arrives.
* ``wait_quiet`` / ``LoadMeter``: the machine is shared; wait for it to calm down, and report
  how much CPU other processes used while a figure was measured.
* ``DashboardLoad``: the real dashboard on the bot's DB, hammered by ``bench/dashboard_load.py``.
* Small helpers: percentiles, the bot's status. Read-only queries, free ports, a clean environment,
  settings files and file tails come from the tests' support package (``tests/support``).

Only 127.0.0.1 is used. Whoever starts a process here stops it in a ``finally``.

Over 400 lines on purpose: a toolbox of small, independent parts (one section each, below) that
the three running-bot benchmarks share; splitting it would scatter one concern, "drive the real
bot on loopback and account for the machine", over several files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tests' support package

import common  # noqa: E402
import psutil  # noqa: E402
from aiohttp import web  # noqa: E402
from support.bot import query, tail, write_config  # noqa: E402
from support.env import clean_env  # noqa: E402
from support.net import free_port  # noqa: E402
from support.paths import MARKET_1M  # noqa: E402,F401 - the benchmarks' data (bb.MARKET_1M)

from simexchange import DEMO_API_KEY, DEMO_API_SECRET, SimExchange  # noqa: E402
from simexchange.market import Replay  # noqa: E402
from simexchange.streams import StreamHub  # noqa: E402

WRAPPER = os.path.join(BENCH, "botwrap.py")
LIVE_KEYS = {"API_KEY": DEMO_API_KEY, "API_SECRET": DEMO_API_SECRET}
# Variants of the current bot (bench/botwrap.py reads these variables).
VARIANT_ENV: dict[str, dict[str, str]] = {
    "current": {},
    "uvloop": {"BENCH_UVLOOP": "1"},
    "stdjson": {"BENCH_STDJSON": "1"},  # what orjson buys: the same bot parsing with json
    "switch": {"BENCH_SWITCH_INTERVAL_S": "0.005"},  # a diagnostic: CPython's default instead of the bot's 0.5 ms
}


def stderr_log(name: str) -> Callable[[str], None]:
    """A progress logger writing ``[name] message`` lines to stderr (stdout is the section)."""
    def log(msg: str) -> None:
        sys.stderr.write(f"[{name}] {msg}\n")
        sys.stderr.flush()
    return log


def command_line(script: str, argv: list[str]) -> str:
    """How the figures were made, for the section: ``python bench/<script> <options>`` without ``--raw PATH``
    (it only saves them)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--raw":
            skip = not skip
            continue
        kept.append(arg)
    return " ".join(["python", f"bench/{script}", *kept])


QUIET_PCT = 25.0  # other processes below this, % of one core: a quiet machine (wait_quiet's bar)
NOISY_PCT = 50.0  # a round of a comparison counts only when both runs had other processes below this
# Steal: CPU time the hypervisor gave this machine's cores to other machines while ours wanted them, % of
# one core over a run. On a shared VM it, not the bot, sets the latency tail: runs with 1 % of a core
# stolen (200 ms over a 20 s run, in slices of milliseconds) have shown p99s 2-3x those of runs with none.
QUIET_STEAL_PCT = 1.0  # a quiet machine also has less steal than this during the run
NOISY_STEAL_PCT = 5.0  # a round of a comparison counts only when both runs had less steal than this


PAYS_OFF = ("pays off", "does not pay off (worse)", "mixed", "does not pay off")
BEFORE_AFTER = ("better after", "worse after", "mixed", "no clear change")


def judge(moves: dict[str, list[float]], change: float = 0.10, busy_rounds: int = 0,
          min_rounds: int = 2, outcomes: tuple[str, str, str, str] = PAYS_OFF,
          quiet_means: str = f"other processes below {NOISY_PCT:g} % of a core") -> tuple[str, str]:
    """A verdict on a variant from the relative change of each figure, one value per round (negative:
    better). A figure counts only when it moved by ``change`` or more the same way in every round
    counted, and at least ``min_rounds`` must count: one noisy run on a shared machine must not decide.
    The caller leaves out the rounds in which either run was noisy (other processes at ``NOISY_PCT``
    or more, or as ``quiet_means`` says; ``busy_rounds``: how many). Returns (the changes in words,
    the verdict)."""
    moves = {k: v for k, v in moves.items() if v and all(x == x for x in v)}  # NaN: not measured
    counted = len(next(iter(moves.values()))) if moves else 0
    better = [k for k, v in moves.items() if all(x <= -change for x in v)]
    worse = [k for k, v in moves.items() if all(x >= change for x in v)]
    words = ", ".join(f"{k} " + " / ".join(f"{x * 100:+.0f} %" for x in v) for k, v in moves.items())
    if busy_rounds:
        words = f"{words} ({counted} round(s) counted, {busy_rounds} busy left out)".strip()
    if counted < min_rounds:
        return words, f"not judged: fewer than {min_rounds} rounds in which both runs had {quiet_means}"
    if better and not worse:
        return words, outcomes[0]
    if worse and not better:
        return words, outcomes[1]
    if better and worse:
        return words, outcomes[2]
    return words, f"{outcomes[3]} (no change of {change * 100:.0f} % or more the same way in every round counted)"


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(math.ceil(p / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[min(k, len(sorted_values) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of ``values`` (ms or anything else)."""
    v = sorted(values)
    return {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99),
            "max": v[-1] if v else float("nan"), "mean": sum(v) / len(v) if v else float("nan")}


def bot_status(db_path: str) -> dict[str, str]:
    """The bot's ``status`` table (empty while the DB does not exist yet)."""
    try:
        return {r["key"]: r["value"] for r in query(db_path, "SELECT key, value FROM status")}
    except sqlite3.Error:
        return {}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


# ---- the product at another revision --------------------------------------------------------------

def describe_ref(ref: str) -> tuple[str, str]:
    """(short hash, subject) of a git revision of this repository."""
    out = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h%x00%s", ref], capture_output=True,
                         text=True, check=True).stdout.strip()
    short, subject = out.split("\0", 1)
    return short, subject


@contextlib.contextmanager
def product_at(ref: str) -> Iterator[str]:
    """The product's files at ``ref`` (``git archive``) in a temp dir, removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="bollmin-baseline-")
    try:
        tar = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=tar.stdout, check=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the bot process --------------------------------------------------------------------------------

class BotProcess:
    """``python <product>/bollmin.py run --config F`` as a child process (stderr to a file).

    ``product``: the tree to run (default: this one). ``variant``: a key of ``VARIANT_ENV``; any
    but "current" runs through ``bench/botwrap.py``. ``timing``: turn the product's timing
    probes on (written to ``workdir/timing.json`` at exit).
    """

    def __init__(self, workdir: str, product: str = ROOT, variant: str = "current", timing: bool = False,
                 wrap_env: dict[str, str] | None = None, **settings: Any) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.db = os.path.join(workdir, "bot.db")
        values = {"INTERVAL": "1m", "DB_PATH": self.db, "LOG_FILE": os.path.join(workdir, "bot.log"),
                  "AUTO_RESTART": False, **settings}
        self.config = write_config(os.path.join(workdir, "config.py"), **values)
        bollmin = os.path.join(product, "bollmin.py")
        env = {**VARIANT_ENV[variant], **(wrap_env or {})}
        self.argv = [sys.executable, *([WRAPPER] if env else []), bollmin, "run", "--config", self.config]
        self.timing_path = os.path.join(workdir, "timing.json") if timing else None
        self.env = clean_env(**env, **({"BOLLMIN_TIMING": self.timing_path} if self.timing_path else {}))
        self.stderr_path = os.path.join(workdir, "stderr.txt")
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None

    def start(self) -> BotProcess:
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL,
                                         stderr=err)
        self.ps = psutil.Process(self.proc.pid)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, n: int = 15) -> str:
        return tail(self.stderr_path, n)

    def count_lines(self, needle: str) -> int:
        """Lines of the bot's stderr containing ``needle``."""
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return sum(needle in line for line in fh)
        except OSError:
            return 0

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` (blocking)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    async def astop(self, timeout: float = 15.0) -> int | None:
        """Stop without blocking the event loop (an exchange on it must keep serving the bot)."""
        return await asyncio.to_thread(self.stop, timeout)

    def rss(self) -> int:
        return self.ps.memory_info().rss if self.ps is not None else 0

    def cpu(self) -> tuple[float, float]:
        """(CPU seconds of the whole process, of its main thread)."""
        if self.ps is None:
            return 0.0, 0.0
        t = self.ps.cpu_times()
        main = next((th.user_time + th.system_time for th in self.ps.threads() if th.id == self.ps.pid), 0.0)
        return t.user + t.system, main

    def timing_marks(self) -> list[tuple[str, Any, int]]:
        """The product's timing probes (``[point, key, perf_counter_ns]``), once the bot has exited."""
        if not self.timing_path:
            return []
        try:
            with open(self.timing_path, encoding="utf-8") as fh:
                return [tuple(x) for x in json.load(fh)]
        except (OSError, ValueError):
            return []


def run_measure(measure: Callable[..., Any], *args: Any, log: Callable[[str], None]) -> Any:
    """``measure(*args)`` (through ``asyncio.run`` when it is a coroutine function), or None when
    interrupted (SIGINT or SIGTERM).

    SIGTERM becomes KeyboardInterrupt: ``asyncio.run`` then cancels the bench's tasks, and every
    ``finally`` stops what it started (a bare SIGTERM would leave the bots and temp dirs behind).
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return asyncio.run(measure(*args)) if asyncio.iscoroutinefunction(measure) else measure(*args)
    except KeyboardInterrupt:
        log("interrupted; every process the bench started has been stopped")
        return None


def measure_or_load(args: Any, script: str, measure: Callable[..., Any], log: Callable[[str], None],
                    argv: list[str] | None = None) -> dict[str, Any] | None:
    """The results of a bench script: read back from ``--from-raw``, or measured (``measure(args,
    log)``) with the command line that made them and saved to ``--raw``. None when interrupted."""
    if args.from_raw:
        with open(args.from_raw, encoding="utf-8") as fh:
            return json.load(fh)
    res = run_measure(measure, args, log, log=log)
    if res is None:
        return None
    res["command"] = command_line(script, sys.argv[1:] if argv is None else argv)
    if args.raw:
        with open(args.raw, "w", encoding="utf-8") as fh:
            json.dump(res, fh)
    return res


def publish(name: str, section: str, args: Any, log: Callable[[str], None]) -> None:
    """A rendered section to stdout, and with ``--write`` into its place in BENCHMARKS.md."""
    sys.stdout.write(section)
    if args.write:
        common.replace_section(name, section)
        log(f"section written to {common.BENCH_MD}")


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str, bot: BotProcess,
                     every: float = 0.1) -> Any:
    """Poll ``predicate`` until truthy; fail when the bot exits or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not bot.alive():
            code = bot.proc.returncode if bot.proc else None
            raise RuntimeError(f"the bot exited ({code}) while waiting for {what}:\n" + bot.stderr_tail())
        value = predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}:\n" + bot.stderr_tail())


async def wait_connected(bot: BotProcess, timeout: float = 60) -> None:
    await wait_until(lambda: bot_status(bot.db).get("connection") == "connected", timeout, "the bot to connect", bot)


# ---- a shared machine ----------------------------------------------------------------------------------

def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; steal counted as busy)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def steal_s() -> float:
    """CPU seconds the hypervisor gave this machine's cores to others (0 on bare metal)."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


class LoadMeter:
    """CPU used by *other* processes (not the bots, not this bench) between ``start()`` and ``stop()``,
    in % of one core."""

    def __init__(self) -> None:
        self.bots: list[BotProcess] = []
        self._t0 = self._busy0 = self._ours0 = self._steal0 = 0.0
        self.steal = 0.0  # CPU the hypervisor gave to other machines during the run, % of one core

    def _ours(self) -> float:
        return own_cpu_s() + sum(b.cpu()[0] for b in self.bots if b.alive())

    def start(self, *bots: BotProcess) -> None:
        self.bots = list(bots)
        self._t0, self._busy0, self._ours0 = time.monotonic(), busy_s(), self._ours()
        self._steal0 = steal_s()

    def stop(self) -> float:
        span = max(time.monotonic() - self._t0, 1e-9)
        self.steal = max(steal_s() - self._steal0, 0.0) / span * 100
        return max(busy_s() - self._busy0 - (self._ours() - self._ours0), 0.0) / span * 100


async def wait_quiet(max_s: float, log: Callable[[str], None], limit_pct: float = QUIET_PCT) -> float:
    """Wait (at most ``max_s``) until other processes use less than ``limit_pct`` of one core over 2 s.

    Returns the last reading; the bench goes on either way (the load is reported with the figures).
    """
    deadline = time.monotonic() + max_s
    meter = LoadMeter()
    while True:
        meter.start()
        await asyncio.sleep(2.0)
        load = meter.stop()
        if load < limit_pct or time.monotonic() >= deadline:
            return load
        log(f"other processes use {load:.0f} % of a core; waiting for a quieter machine")


# ---- the timed exchange ------------------------------------------------------------------------------

class TimedHub(StreamHub):
    """``StreamHub`` that notes when each aggTrade frame has been handed to the socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trade_sent_ns: dict[int, int] = {}   # exchange time T of the trade -> perf_counter_ns
        self.sent_times: list[int] = []           # perf_counter_ns of every aggTrade, in order
        self.sent_T: list[int] = []

    async def sender(self, client: Any) -> None:  # StreamHub.sender plus the stamp
        try:
            while True:
                text = await client.queue.get()
                if client.queue.qsize() <= self.queue_size // 4:
                    client.drained.set()
                await client.ws.send_str(text)
                if '"e":"aggTrade"' in text:
                    now = time.perf_counter_ns()
                    i = text.rfind('"T":') + 4
                    t = int(text[i:text.index(",", i)])
                    self.trade_sent_ns.setdefault(t, now)
                    self.sent_times.append(now)
                    self.sent_T.append(t)
        except asyncio.CancelledError:
            raise
        except Exception:  # a dying socket: the client is gone
            return


class TimedSim(SimExchange):
    """``SimExchange`` with a ``TimedHub`` and the arrival time of every ``POST /fapi/v1/order``
    (headers parsed, before the body is read)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = TimedHub([x.market for x in self.listings.values()], self.hub.queue_size)
        for x in self.listings.values():
            x.replay = Replay(x.market, self.hub, x.replay.speed, x.replay.paused)
        self.app = self._make_app()  # routes bound to the new hub
        self.order_arrivals: list[tuple[int, str]] = []  # (perf_counter_ns, newClientOrderId)

    async def _serve_rest(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/fapi/v1/order":
            return await super()._serve_rest(request, handler)
        now = time.perf_counter_ns()
        response = await super()._serve_rest(request, handler)
        # the exchange keeps (raw query, raw body, params) on the request: the body cannot be read twice
        raw = next((v for v in request.values() if isinstance(v, tuple) and len(v) == 3 and isinstance(v[2], dict)),
                   None)
        self.order_arrivals.append((now, raw[2].get("newClientOrderId", "") if raw else ""))
        return response


# ---- the dashboard, hammered ---------------------------------------------------------------------------

class DashboardLoad:
    """The real dashboard (``python dashboard.py --config F``, F pointing at the bot's DB) on a free
    127.0.0.1 port, hammered by ``bench/dashboard_load.py`` (its own process, keep-alive clients)."""

    def __init__(self, bot: BotProcess, threads: int = 4, paths: tuple[str, ...] = ()) -> None:
        self.bot, self.threads, self.paths = bot, threads, paths
        self.port = free_port()
        self.config = write_config(os.path.join(bot.workdir, "dashboard-config.py"), DB_PATH=bot.db, INTERVAL="1m",
                                   DASHBOARD_HOST="127.0.0.1", DASHBOARD_PORT=self.port, LOG_LEVEL="WARNING")
        self.stderr_path = os.path.join(bot.workdir, "dashboard-stderr.txt")
        self.server: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self.load: asyncio.subprocess.Process | None = None
        self.marks: list[dict[str, Any]] = []

    async def start(self, log: Callable[[str], None]) -> None:
        with open(self.stderr_path, "ab") as err:
            self.server = subprocess.Popen([sys.executable, os.path.join(ROOT, "dashboard.py"), "--config",
                                            self.config], cwd=self.bot.workdir, env=clean_env(),
                                           stdout=subprocess.DEVNULL, stderr=err)
        self.ps = psutil.Process(self.server.pid)
        try:  # as bollmin-dashboard.service runs it (CPUSchedulingPolicy=idle; by hand it only lowers its nice)
            os.sched_setscheduler(self.server.pid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            log(f"could not put the dashboard in the idle scheduling class: {exc}")
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(http_ok, f"http://127.0.0.1:{self.port}/healthz"):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start:\n" + self._stderr_tail())
            await asyncio.sleep(0.2)
        log(f"dashboard on 127.0.0.1:{self.port}; load generator with {self.threads} keep-alive clients"
            + (f" on {' '.join(self.paths)}" if self.paths else ""))
        self.load = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(BENCH, "dashboard_load.py"), str(self.port), "--threads", str(self.threads),
            *(["--paths", *self.paths] if self.paths else []), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        try:  # it stands in for browsers on other machines: it takes only CPU nothing else wants
            os.sched_setscheduler(self.load.pid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            log(f"could not put the load generator in the idle scheduling class: {exc}")
        await asyncio.sleep(2.0)  # warm up: every client connected, every route served at least once
        first = await self.mark()
        if not first["requests"]:
            raise RuntimeError(f"the dashboard load generator got no answer ({first['last_error']}):\n"
                               + self._stderr_tail())
        self.marks.clear()

    def _stderr_tail(self, n: int = 10) -> str:
        return tail(self.stderr_path, n)

    async def mark(self) -> dict[str, Any]:
        """Counts of the load generator now, plus the dashboard's CPU seconds."""
        assert self.load is not None and self.load.stdin is not None and self.load.stdout is not None
        self.load.stdin.write(b"\n")
        await self.load.stdin.drain()
        m = json.loads(await asyncio.wait_for(self.load.stdout.readline(), 30))
        alive = self.ps is not None and self.server is not None and self.server.poll() is None
        t = self.ps.cpu_times() if alive else None
        m["dash_cpu_s"] = t.user + t.system if t else float("nan")
        self.marks.append(m)
        return m

    def summary(self) -> dict[str, Any]:
        """Requests, requests/s, errors and CPU (% of a core) between the first and last ``mark``."""
        if len(self.marks) < 2:
            return {}
        a, b = self.marks[0], self.marks[-1]
        span = b["t"] - a["t"]
        return {"threads": self.threads, "paths": list(self.paths), "seconds": span,
                "requests": b["requests"] - a["requests"], "rps": (b["requests"] - a["requests"]) / span,
                "errors": b["errors"] - a["errors"], "last_error": b["last_error"],
                "dash_cpu": (b["dash_cpu_s"] - a["dash_cpu_s"]) / span * 100,
                "load_cpu": (b["cpu_s"] - a["cpu_s"]) / span * 100}

    async def stop(self) -> None:
        if self.load is not None and self.load.returncode is None:
            try:
                assert self.load.stdin is not None
                self.load.stdin.close()
                await asyncio.wait_for(self.load.communicate(), 20)
            except (TimeoutError, OSError, ValueError):
                self.load.kill()
                await self.load.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                await asyncio.to_thread(self.server.wait, 10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                await asyncio.to_thread(self.server.wait, 5)
