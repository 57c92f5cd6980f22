"""The README's first command on a fresh Debian bookworm machine: the offline demo works.

In a freshly booted systemd-nspawn container (python3-venv removed, as on a new server), run
``./bootstrap.sh demo`` as root the way the README says; within 120 s of the demo starting,
the dashboard answers (demo login) and shows at least one trade; SIGINT stops every process.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from nspawn import PROJECT_IN_CONTAINER, Container, missing_tools

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nspawn


def _get(url: str, user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_readme_first_command_runs_the_demo_with_a_trade_within_120_s():
    missing = missing_tools()
    if missing:
        message = f"container test needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with Container.boot(ROOT) as box:
        box.run("apt-get", "purge", "-y", "-q", "python3-venv", "python3.11-venv", timeout=180)
        # Not /tmp: the booted container mounts its own tmpfs there, invisible from the host.
        box.sh(f"cd {PROJECT_IN_CONTAINER} && (setsid ./bootstrap.sh demo --speed 60 > /root/demo.out 2>&1 &)")
        out = box.path("/root/demo.out")
        deadline = time.monotonic() + 900  # apt-get + pip install on a fresh machine, then the demo
        url = None
        begun = time.monotonic()
        while time.monotonic() < deadline and url is None:
            if not out.exists() and time.monotonic() - begun > 30:
                pytest.fail("bootstrap.sh did not start (no output file)")
            text = out.read_text(errors="replace") if out.exists() else ""
            match = re.search(r"(http://127\.0\.0\.1:\d+)/\s", text)
            url = match.group(1) if match else None
            if "bootstrap.sh:" in text or "demo could not start" in text:
                pytest.fail(f"the demo did not start:\n{text[-3000:]}")
            time.sleep(1)
        assert url, f"no dashboard URL printed:\n{out.read_text(errors='replace')[-3000:]}"
        text = out.read_text(errors="replace")
        assert "demo / 密码 password demo" in text and "demo.db" in text
        started = time.monotonic()
        trades: list = []
        while time.monotonic() - started < 120 and not trades:
            try:
                trades = _get(f"{url}/api/trades", "demo", "demo").get("rows") or []
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(2)
        assert trades, f"no trade on the dashboard within 120 s:\n{out.read_text(errors='replace')[-3000:]}"
        status = _get(f"{url}/api/status", "demo", "demo")
        assert status["mode"] == "DEMO"
        # Ctrl-C stops every process of the demo.
        box.sh("pkill -INT -f 'bollmin.py demo'", check=False)
        stop_deadline = time.monotonic() + 10
        while time.monotonic() < stop_deadline:
            left = box.sh("pgrep -f '[b]ollmin.py|[s]imexchange.py|[d]ashboard' || true").stdout.strip()
            if not left:
                break
            time.sleep(0.5)
        assert not left, f"processes left after SIGINT: {left}"
        assert "演示已停止" in out.read_text(errors="replace")
