"""``bollmin.py demo``: the whole system offline, in three processes.

1. ``python -m simexchange`` replays bundled real BTCUSDT 1m candles (May 2025) as a Binance
   USDⓈ-M exchange on 127.0.0.1 (REST + market streams).
2. ``bollmin.py run`` trades against it through the **real live path** (signed MARKET
   orders with demo credentials, exactly-once intents, reconciliation) with INTERVAL 1m,
   badged DEMO, with its own DB (started afresh each time, never the real ``DB_PATH``).
3. ``bollmin.py dashboard`` on DASHBOARD_HOST:DASHBOARD_PORT with the demo login.

``--speed N`` replays at N× real time (default 30: a 1m candle every 2 s). Ctrl-C (SIGINT)
or SIGTERM stops every child within 5 s. Strategy settings (BOLL_*, TRADE_AMOUNT_USDT,
LEVERAGE, dashboard port) may come from ``--config``; the exchange, credentials, mode and
paths are always the demo's own.

The demo's files live outside the source tree, in ``bollmin-demo-<uid>`` in the temp directory
(or ``$BOLLMIN_DEMO_DIR``), and are replaced at each start. Only the demo's own files are ever
deleted there: a directory holding anything else is refused. Exit codes: 0 stopped by
Ctrl-C/SIGTERM, 1 a demo process died or could not start, 2 bad input (settings, --speed,
demo directory).
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from config import ConfigError, env, load_config

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "marketdata", "btcusdt_um_1m_2025-05.csv.gz")
DEMO_KEY, DEMO_SECRET = "demo-api-key", "demo-api-secret"
DEMO_USER, DEMO_PASSWORD = "demo", "demo"
DEFAULT_SPEED = 30.0


def _free_port(preferred: int, host: str = "127.0.0.1") -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


def _wait_port_file(path: str, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulated exchange exited with code {proc.returncode}")
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError("the simulated exchange did not start in time")


# Everything the demo writes into its directory (the bot's log rotates to demo.log.1 ... .5).
_DEMO_FILE = re.compile(r"demo\.db(-wal|-shm|-journal)?|demo\.log(\.\d+)?|demo_config\.py|exchange\.port")


class DemoDirError(ValueError):
    """The demo directory cannot be used; one line."""


def default_workdir() -> str:
    """The demo's own directory, outside the source tree: ``bollmin-demo-<uid>`` in the temp directory."""
    return os.path.join(tempfile.gettempdir(), f"bollmin-demo-{os.getuid()}")


def prepare_workdir(path: str) -> None:
    """Create the demo directory, or empty an earlier demo's: only the demo's own files are deleted."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise DemoDirError(f"demo directory {path} is not a directory; set BOLLMIN_DEMO_DIR to a new directory")
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise DemoDirError(f"demo directory {path}: {exc.strerror}") from None
        foreign = sorted(n for n in names if not _DEMO_FILE.fullmatch(n) or not os.path.isfile(os.path.join(path, n)))
        if foreign:
            raise DemoDirError(f"demo directory {path} holds files the demo did not write (e.g. {foreign[0]!r}); "
                               f"it deletes its directory's contents at each start, so set BOLLMIN_DEMO_DIR to an "
                               f"empty or new directory")
        for name in names:  # the demo replays from the start: its DB starts afresh
            os.remove(os.path.join(path, name))
    os.makedirs(path, exist_ok=True)


def write_demo_config(path: str, base, exchange_port: int, dashboard_port: int, workdir: str) -> None:
    values = {
        "SYMBOL": "BTCUSDT", "INTERVAL": "1m", "BOLL_PERIOD": base.BOLL_PERIOD, "BOLL_K": base.BOLL_K,
        "BOLL_DDOF": base.BOLL_DDOF, "HISTORY_KLINES": max(base.HISTORY_KLINES, base.BOLL_PERIOD),
        "TRADE_AMOUNT_USDT": base.TRADE_AMOUNT_USDT, "LEVERAGE": base.LEVERAGE,
        "PAPER_TRADING": False, "TESTNET": False,
        "API_KEY": DEMO_KEY, "API_SECRET": DEMO_SECRET,
        "REST_BASE_URL": f"http://127.0.0.1:{exchange_port}", "WS_BASE_URL": f"ws://127.0.0.1:{exchange_port}",
        "WS_STALL_SECONDS": 15.0,
        "DB_PATH": os.path.join(workdir, "demo.db"), "LOG_FILE": os.path.join(workdir, "demo.log"),
        "AUTO_RESTART": False, "DASHBOARD_HOST": "127.0.0.1", "DASHBOARD_PORT": dashboard_port,
        "DASHBOARD_PASSWORD": DEMO_PASSWORD,
    }
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Written by 'bollmin.py demo' for the offline demo. Not a real account.\n")
        for k, v in values.items():
            fh.write(f"{k} = {v!r}\n")


def main(config_path: str | None, speed: float | None, workdir: str | None = None) -> int:
    try:
        base = load_config(config_path)
    except ConfigError as err:
        sys.stderr.write(f"bollmin: {err}\n")
        return 2
    speed = DEFAULT_SPEED if speed is None else speed
    if not (math.isfinite(speed) and 0 < speed <= 100000):
        sys.stderr.write("bollmin: --speed must be greater than 0 and at most 100000 (times real time)\n")
        return 2
    workdir = workdir or env("BOLLMIN_DEMO_DIR") or default_workdir()
    try:
        prepare_workdir(workdir)
    except DemoDirError as err:
        sys.stderr.write(f"bollmin: {err}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"bollmin: demo directory {workdir}: {exc.strerror or exc}\n")
        return 2
    port_file = os.path.join(workdir, "exchange.port")
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "BOLLMIN_DASHBOARD_PASSWORD", "BOLLMIN_CONFIG")}
    children: list[subprocess.Popen] = []
    stop = {"requested": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    py = sys.executable
    try:
        exchange_env = dict(child_env, PYTHONPATH=os.pathsep.join(  # the package is found from any directory
            [HERE, *filter(None, [child_env.get("PYTHONPATH")])]))
        children.append(subprocess.Popen(
            [py, "-m", "simexchange", "--klines", DATA, "--port", "0", "--port-file", port_file,
             "--speed", str(speed), "--history", "120", "--api-key", DEMO_KEY, "--api-secret", DEMO_SECRET,
             "--log-level", "warning"],
            env=exchange_env, stdout=subprocess.DEVNULL))
        exchange_port = _wait_port_file(port_file, children[0])
        dash_port = _free_port(base.DASHBOARD_PORT)
        cfg_path = os.path.join(workdir, "demo_config.py")
        write_demo_config(cfg_path, base, exchange_port, dash_port, workdir)
        bot_env = dict(child_env, BOLLMIN_MODE_LABEL="DEMO")
        children.append(subprocess.Popen([py, os.path.join(HERE, "bollmin.py"), "run", "--config", cfg_path],
                                         env=bot_env, stderr=subprocess.DEVNULL))
        children.append(subprocess.Popen([py, os.path.join(HERE, "bollmin.py"), "dashboard", "--config", cfg_path],
                                         env=child_env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        print("bollmin 演示 (demo) 已启动 — 离线回放真实 BTCUSDT 行情 (offline replay of real BTCUSDT data)")
        print(f"  仪表盘 (dashboard):  http://127.0.0.1:{dash_port}/")
        print(f"  登录 (login):        用户名 user {DEMO_USER} / 密码 password {DEMO_PASSWORD}")
        print(f"  数据库 (DB):         {os.path.join(workdir, 'demo.db')}")
        print(f"  模拟交易所 (simulated exchange): http://127.0.0.1:{exchange_port}  速度 speed {speed:g}x")
        print("  按 Ctrl-C 停止 (press Ctrl-C to stop)", flush=True)
        died = None
        while not stop["requested"] and died is None:
            died = next((p for p in children if p.poll() is not None), None)
            if died is None:
                time.sleep(0.2)
    except (OSError, RuntimeError) as exc:
        sys.stderr.write(f"bollmin: demo could not start: {exc}\n")
        _stop(children)
        return 1
    _stop(children)
    if died is not None:
        # Not a clean stop: a part of the demo is gone, so say so and fail (exit 1).
        log = os.path.join(workdir, "demo.log")
        role = ("simulated exchange", "bot", "dashboard")[children.index(died)]
        sys.stderr.write(f"bollmin: the demo's {role} exited with code {died.returncode}; the demo stopped "
                         f"(see {log})\n")
        return 1
    print("演示已停止 (demo stopped)")
    return 0


def _stop(children: list[subprocess.Popen], budget_s: float = 4.0) -> None:
    """SIGTERM every child, then SIGKILL what is still alive when the budget runs out."""
    for p in reversed(children):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + budget_s
    for p in children:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
