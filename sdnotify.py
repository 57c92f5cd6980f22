"""Talk to systemd's service manager (``sd_notify``) with the standard library only.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``; the bot sends

    notify("READY=1")                 once started (systemctl start returns, the unit is "active")
    notify("STATUS=PAPER BTCUSDT…")   one line shown by ``systemctl status``
    notify("WATCHDOG=1")              every ``watchdog_period()`` seconds while market data is fresh
    notify("STOPPING=1")              when shutting down

With ``WatchdogSec=`` set, systemd kills the service (and restarts it when ``Restart=`` allows)
if no ``WATCHDOG=1`` arrives within that time. Outside systemd every call is a harmless no-op,
so the bot never needs to ask first.

The protocol: one datagram of newline-separated ``KEY=VALUE`` lines to the AF_UNIX socket
named in ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace.
See sd_notify(3) and systemd.service(5).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace socket
    if path.startswith("/"):
        return path
    return None  # unset, or a transport we do not speak (vsock:…)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd. False when not under systemd or on any error.

    Never raises: losing one notification must not hurt trading (a missed ``WATCHDOG=1`` is
    covered by the next one, sent every half timeout).
    """
    address = _address(os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # not inherited by children (PEP 446)
            sock.settimeout(1.0)  # the socket is local; never let a full queue stall the event loop long
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def watchdog_period() -> float | None:
    """Seconds between ``WATCHDOG=1`` messages (half of ``WatchdogSec=``), or None without a watchdog.

    Follows sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is the timeout in microseconds and, when
    ``$WATCHDOG_PID`` is set, the watchdog applies to that process only (not to its children).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def under_systemd() -> bool:
    """True when systemd started this very process as a unit's main process (it then restarts it).

    systemd ≥ 248 exports ``$SYSTEMD_EXEC_PID`` (the PID it executed), which children and
    programs started from a shell inside a service do not match. Older systemd: ``$INVOCATION_ID``
    set and the parent is PID 1 (the system manager).
    """
    exec_pid = os.environ.get("SYSTEMD_EXEC_PID")
    if exec_pid:
        return exec_pid == str(os.getpid())
    return bool(os.environ.get("INVOCATION_ID")) and os.getppid() == 1


__all__ = ["notify", "under_systemd", "watchdog_period"]
