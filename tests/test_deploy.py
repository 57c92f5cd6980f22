"""Static checks of the server deployment: auto_deploy.sh and the two systemd units.

- ``shellcheck -S warning auto_deploy.sh`` is clean;
- ``systemd-analyze verify --man=no`` prints nothing for either unit (any output is a finding);
- ``systemd-analyze security --offline=true`` rates each unit's exposure at most 1.5;
- ``--help`` works for a non-root user and changes nothing.

The tools come with Debian's shellcheck and systemd packages. Without them these tests skip,
except under CI (``$CI`` set), where a missing tool is a failure. The real install, restart and
uninstall run in a booted Debian container: tests/test_deploy_nspawn.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "auto_deploy.sh"
UNITS = ("bollmin.service", "bollmin-dashboard.service")
MAX_EXPOSURE = 1.5


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"missing tool(s): {', '.join(missing)} (apt-get install shellcheck systemd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def unit_settings(name: str) -> dict[str, list[str]]:
    """KEY -> every value assigned in the unit file (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_shellcheck_clean():
    need("shellcheck")
    res = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_script_is_strict_bash_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    # The unit files carry no secret and no machine-specific path outside the documented layout.
    for unit in UNITS:
        assert "API_SECRET=" not in (ROOT / unit).read_text()


def test_systemd_analyze_verify_prints_nothing(tmp_path):
    """Verify in a scratch root that has the units and stand-ins for what they reference."""
    need("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "multi-user.target").exists():
        system_units = Path("/lib/systemd/system")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(ROOT / unit, root / "etc/systemd/system" / unit)
    python = root / "opt/bollmin/venv/bin/python"  # the venv exists only after a deploy
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *UNITS],
                         capture_output=True, text=True, timeout=120)
    output = (res.stdout + res.stderr).strip()
    assert output == "" and res.returncode == 0, output


@pytest.mark.parametrize("unit", UNITS)
def test_offline_security_exposure(unit):
    need("systemd-analyze")
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(ROOT / unit)],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert match, res.stdout + res.stderr
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, res.stdout


def test_bot_unit_contract():
    s = unit_settings("bollmin.service")
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["User"] == ["bollmin"] and s["NoNewPrivileges"] == ["true"]
    assert s["WatchdogSec"] == ["120"]
    assert s["RestartPreventExitStatus"] == ["2 3"]  # bad config / refused account: never a restart loop
    assert s["Restart"] == ["on-failure"]  # replaced by the AUTO_RESTART drop-in
    # Its own secrets, and the dashboard password (the config check covers the dashboard rule too).
    assert s["EnvironmentFile"] == ["/etc/bollmin/bollmin.env", "-/etc/bollmin/dashboard.env"]
    assert s["ExecStart"] == [
        "/opt/bollmin/venv/bin/python /opt/bollmin/bollmin.py run --config /etc/bollmin/config.py"]
    assert s["StateDirectory"] == ["bollmin"] and s["LogsDirectory"] == ["bollmin"]
    assert s["WorkingDirectory"] == ["/var/lib/bollmin"]


def test_dashboard_unit_contract():
    s = unit_settings("bollmin-dashboard.service")
    assert s["User"] == ["bollmin"] and s["NoNewPrivileges"] == ["true"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]  # READY=1 once it listens
    assert s["ExecStart"] == [
        "/opt/bollmin/venv/bin/python /opt/bollmin/bollmin.py dashboard --config /etc/bollmin/config.py"]
    assert s["RestartPreventExitStatus"] == ["2"]
    # No exchange keys: not in its environment, the bot's secrets file not even visible, and the bot's
    # process (with its environment) out of reach in another user namespace.
    assert s["EnvironmentFile"] == ["/etc/bollmin/dashboard.env"]
    assert s["InaccessiblePaths"] == ["-/etc/bollmin/bollmin.env"]
    assert s["PrivateUsers"] == ["true"] and s["ProtectProc"] == ["invisible"]
    # It never slows trading: lower CPU and IO priority than the bot, bounded memory and tasks.
    assert s["CPUSchedulingPolicy"] == ["idle"] and s["Nice"] == ["10"]
    assert s["CPUWeight"] == ["20"] and s["IOWeight"] == ["20"]
    assert s["MemoryMax"] and s["TasksMax"] == ["64"]
    # psutil reads /proc/stat, /proc/meminfo for the server's CPU and memory: no ProcSubset=pid here.
    assert "ProcSubset" not in s


def test_default_settings_file_has_the_lines_the_deploy_rewrites():
    """auto_deploy.sh points DB_PATH and LOG_FILE of the generated /etc/bollmin/config.py at
    /var/lib/bollmin and /var/log/bollmin by rewriting these two lines of ``python config.py``."""
    out = subprocess.run([sys.executable, "config.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert re.search(r"^DB_PATH = '[^']*'$", out, re.M)
    assert re.search(r"^LOG_FILE = '[^']*'$", out, re.M)
    assert re.search(r"^AUTO_RESTART = True$", out, re.M)


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture
def script():
    """A copy of the script that user nobody can read, wherever the checkout lives."""
    with tempfile.TemporaryDirectory(prefix="bollmin-deploy-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - user nobody must reach the copy
        copy = Path(tmp) / "auto_deploy.sh"
        shutil.copy(SCRIPT, copy)
        copy.chmod(0o755)
        yield copy


def test_help_needs_no_root_and_changes_nothing(script):
    before = {p: os.path.exists(p) for p in ("/opt/bollmin", "/etc/bollmin", "/var/lib/bollmin")}
    for flag in ("--help", "-h"):
        res = subprocess.run([*_as_nobody(), "bash", str(script), flag], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert "Usage: sudo ./auto_deploy.sh" in res.stdout
        for word in ("status", "logs", "restart", "stop", "uninstall [--purge]"):
            assert word in res.stdout
        assert res.stderr == ""
    assert before == {p: os.path.exists(p) for p in before}


def test_unknown_command_is_a_usage_error():
    res = subprocess.run(["bash", str(SCRIPT), "frobnicate"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "unknown command frobnicate" in res.stderr


def test_commands_other_than_help_need_root(script):
    res = subprocess.run([*_as_nobody(), "bash", str(script), "status"], capture_output=True, text=True, timeout=30,
                         cwd="/")
    assert res.returncode == 1
    assert "run it as root: sudo" in res.stderr
