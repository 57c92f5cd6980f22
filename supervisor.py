"""Exit codes, and the crash supervisor for ``AUTO_RESTART`` when the bot is run by hand.

Exit codes (for systemd and scripts; documented in docs/operations.md):

    0  done, or a clean stop (SIGTERM/SIGINT)
    1  crash: restartable (AUTO_RESTART)
    2  bad configuration or input, or a damaged DB: never retried — a person must fix it
    3  the exchange refused the account setup (bad key or permissions, hedge-mode account):
       never retried

Under systemd, systemd restarts the bot (``Restart=on-failure`` with
``RestartPreventExitStatus=2 3``). By hand, with AUTO_RESTART, ``supervise`` runs the bot as
a child process and restarts it after a crash with capped backoff.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from config import env

log = logging.getLogger("bollmin")

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_ACCOUNT = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: a batch command (backtest, sweep, download, trades) cut short by Ctrl-C
NEVER_RETRIED = (EXIT_OK, EXIT_USAGE, EXIT_ACCOUNT)
SUPERVISED_ENV = "BOLLMIN_SUPERVISED"  # internal: set in the child so it does not supervise itself


def supervised_child() -> bool:
    """True in the child process the supervisor started."""
    return bool(env(SUPERVISED_ENV))


def supervise(argv: list[str]) -> int:
    """Run ``python argv`` as a child process and restart it after a crash (AUTO_RESTART by hand)."""
    env = dict(os.environ, **{SUPERVISED_ENV: "1"})
    delay = 1.0
    child: subprocess.Popen | None = None
    stop = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, *argv], env=env)
        code = child.wait()
        if stop or code in NEVER_RETRIED:
            return code if code >= 0 else EXIT_OK
        if time.monotonic() - started > 300:
            delay = 1.0
        log.error("the bot exited with %s; AUTO_RESTART: restarting in %.0fs", code, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stop:
            time.sleep(0.1)
        if stop:
            return EXIT_OK
        delay = min(delay * 2, 60.0)
