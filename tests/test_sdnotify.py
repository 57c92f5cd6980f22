"""sdnotify against a real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest
from support.paths import ROOT

import sdnotify


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SYSTEMD_EXEC_PID", "INVOCATION_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def listener(tmp_path, clean_env):
    """A datagram socket bound to a file path, announced in $NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_the_state_as_one_datagram(listener):
    assert sdnotify.notify("READY=1") is True
    assert listener.recv(4096) == b"READY=1"
    assert sdnotify.notify("STATUS=PAPER BTCUSDT 15m: connected\nWATCHDOG=1") is True
    assert listener.recv(4096) == b"STATUS=PAPER BTCUSDT 15m: connected\nWATCHDOG=1"


def test_notify_sends_utf8(listener):
    assert sdnotify.notify("STATUS=持有空仓 SHORT")
    assert listener.recv(4096).decode("utf-8") == "STATUS=持有空仓 SHORT"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract AF_UNIX names are Linux only")
def test_notify_abstract_namespace(clean_env):
    name = f"bollmin-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_noop(clean_env):
    assert sdnotify.notify("READY=1") is False


def test_notify_unknown_transport_is_a_noop(clean_env):
    clean_env.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


def test_notify_never_raises_when_nobody_listens(tmp_path, clean_env):
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.notify("READY=1") is False


def test_watchdog_period_is_half_the_timeout(clean_env):
    assert sdnotify.watchdog_period() is None
    clean_env.setenv("WATCHDOG_USEC", "120000000")  # WatchdogSec=120
    assert sdnotify.watchdog_period() == 60.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_period() == 60.0


def test_watchdog_for_another_process_is_not_ours(clean_env):
    clean_env.setenv("WATCHDOG_USEC", "120000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_period() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_watchdog_disabled_or_garbage(clean_env, usec):
    clean_env.setenv("WATCHDOG_USEC", usec)
    assert sdnotify.watchdog_period() is None


def test_under_systemd(clean_env):
    assert sdnotify.under_systemd() is False
    clean_env.setenv("SYSTEMD_EXEC_PID", str(os.getpid()))
    assert sdnotify.under_systemd() is True
    # A process started from inside a service (e.g. a test run by a CI service) inherits the
    # variable but is not the process systemd supervises.
    clean_env.setenv("SYSTEMD_EXEC_PID", str(os.getpid() + 1))
    assert sdnotify.under_systemd() is False


def test_child_process_notifies_and_sees_its_own_watchdog(listener):
    """What the bot does: a separate interpreter, environment as systemd sets it."""
    code = ("import os, sdnotify; "
            "print(sdnotify.watchdog_period(), sdnotify.under_systemd()); "
            "sdnotify.notify('READY=1')")
    env = dict(os.environ, WATCHDOG_USEC="5000000", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.split() == ["2.5", "False"]
    assert listener.recv(4096) == b"READY=1"
