"""Static checks of the server deployment: auto_deploy.sh and the systemd units (the bot, the
dashboard, and the template of the added instances, bollmin@.service, as bollmin@ETHUSDT.service).

- ``shellcheck -S warning auto_deploy.sh`` is clean;
- ``systemd-analyze verify --man=no`` prints nothing for any unit (any output is a finding);
- ``systemd-analyze security --offline=true`` rates each unit's exposure at most 1.5;
- the template repeats bollmin.service line for line but for the instance's name and paths;
- ``--help`` works for a non-root user and changes nothing; a bad symbol is refused before root;
- the Python the script runs as the service user (its probe): a new instance's settings file,
  and the exchange's answer on the symbol (listed / not listed / unreachable).

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
from support.paths import MARKET_1M

import config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "auto_deploy.sh"
UNITS = ("bollmin.service", "bollmin-dashboard.service", "bollmin@.service")
INSTANCE = "bollmin@ETHUSDT.service"  # the template is checked as this instance
MAX_EXPOSURE = 1.5
# bollmin@.service differs from bollmin.service only in these settings, each naming the instance.
INSTANCE_SETTINGS = {
    "Description": ["bollmin Bollinger-band trading bot for %i (Binance USD-M futures)"],
    "Environment": ["BOLLMIN_CONFIG=/etc/bollmin/%i.py PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1"],
    "ExecStart": ["/opt/bollmin/venv/bin/python /opt/bollmin/bollmin.py run --config /etc/bollmin/%i.py"],
    "SyslogIdentifier": ["bollmin-%i"],
}


def analysed(unit: str) -> str:
    """The name systemd-analyze checks: a template as one of its instances."""
    return INSTANCE if unit.endswith("@.service") else unit


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


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A scratch root with the system's units, ours installed as auto_deploy.sh does, and stand-ins for
    what they reference (the venv exists only after a deploy)."""
    need("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "multi-user.target").exists():
        system_units = Path("/lib/systemd/system")
    root = tmp_path_factory.mktemp("units") / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(ROOT / unit, root / "etc/systemd/system" / unit)
    python = root / "opt/bollmin/venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return root


def test_systemd_analyze_verify_prints_nothing(unit_root):
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={unit_root}", *map(analysed, UNITS)],
                         capture_output=True, text=True, timeout=120)
    output = (res.stdout + res.stderr).strip()
    assert output == "" and res.returncode == 0, output


@pytest.mark.parametrize("unit", UNITS)
def test_offline_security_exposure(unit, unit_root):
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={unit_root}", "--no-pager",
                          analysed(unit)], capture_output=True, text=True, timeout=120)
    match = re.search(rf"Overall exposure level for {re.escape(analysed(unit))}: (\d+(?:\.\d+)?)", res.stdout)
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


def test_instance_template_is_the_bot_unit_with_the_instance_name():
    """Same hardening, watchdog, restart policy, secrets (one account) and directories as bollmin.service;
    only the name, the settings file and the journal identifier are the instance's."""
    bot, template = unit_settings("bollmin.service"), unit_settings("bollmin@.service")
    assert {k: v for k, v in template.items() if k not in INSTANCE_SETTINGS} == \
           {k: v for k, v in bot.items() if k not in INSTANCE_SETTINGS}
    assert {k: template[k] for k in INSTANCE_SETTINGS} == INSTANCE_SETTINGS
    assert template["EnvironmentFile"] == ["/etc/bollmin/bollmin.env", "-/etc/bollmin/dashboard.env"]
    assert template["StateDirectory"] == ["bollmin"]  # the dashboard finds every instance's DB there


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
        for word in ("status [SYMBOL]", "logs [SYMBOL]", "restart [SYMBOL]", "stop [SYMBOL]", "list",
                     "add SYMBOL", "remove SYMBOL [--purge]", "uninstall [--purge]"):
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


def test_symbol_spelling_is_that_of_the_setting():
    """An instance is named by its symbol: the script accepts exactly what the SYMBOL setting accepts."""
    pattern = re.search(r"^readonly SYMBOL_RE='\^(.*)\$'$", SCRIPT.read_text(), re.M).group(1)
    for name in ("ETHUSDT", "1000PEPEUSDT", "BTCUSDT_250627", "ethusdt", "E", "ETH-USDT", "A" * 21, "AB", "ETHUSDT "):
        ok = re.fullmatch(pattern, name) is not None
        assert ok == (config._symbol(name) is None), name


def test_a_bad_symbol_is_refused_without_root_and_changes_nothing(script):
    before = {p: os.path.exists(p) for p in ("/opt/bollmin", "/etc/bollmin", "/var/lib/bollmin")}
    for args, expected in ((["add", "ethusdt"], "did you mean ETHUSDT?"), (["remove", "ETH/USDT"], "not a symbol"),
                           (["status", "ETHUSDT", "BTCUSDT"], "at most a symbol"), (["add"], "usage: add SYMBOL")):
        res = subprocess.run([*_as_nobody(), "bash", str(script), *args], capture_output=True, text=True, timeout=30,
                             cwd="/")
        assert res.returncode == 1 and res.stdout == "", res
        assert res.stderr.count("\n") == 1 and expected in res.stderr, res.stderr
    assert before == {p: os.path.exists(p) for p in before}


# ---- the Python that auto_deploy.sh runs as the service user (its "probe") ---------------------

PROBE_PY = re.search(r"^read -r -d '' PROBE_PY <<'PY' \|\| true\n(.*?)\nPY\n", SCRIPT.read_text(), re.M | re.S).group(1)


def run_probe(tmp_path: Path, conf: Path, *what: str, env_text: str = "") -> subprocess.CompletedProcess:
    """The probe as auto_deploy.sh runs it (from the code directory, the secrets from an env file)."""
    env_file = tmp_path / "bollmin.env"
    env_file.write_text(env_text)
    return subprocess.run([sys.executable, "-E", "-s", "-c", PROBE_PY, str(conf), str(env_file),
                           str(tmp_path / "no-dashboard.env"), "/var/lib/bollmin", *what],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_new_instance_gets_the_defaults_its_own_paths_and_the_accounts_exchange(tmp_path):
    """add ETHUSDT: the default settings file, with SYMBOL, DB_PATH, LOG_FILE of its own, and the exchange
    of the default instance (the keys in bollmin.env belong to it); paper trading whatever the default does."""
    default = tmp_path / "config.py"
    default.write_text("SYMBOL = 'BTCUSDT'\nTESTNET = True\nREST_BASE_URL = 'http://127.0.0.1:9999'\n"
                       "PAPER_TRADING = False\nTRADE_AMOUNT_USDT = 500.0\nINTERVAL = '1m'\nAUTO_RESTART = False\n")
    res = run_probe(tmp_path, default, "instance", "ETHUSDT", "/var/log/bollmin",
                    env_text="BINANCE_API_KEY=key123\nBINANCE_API_SECRET=secret456\n")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "TESTNET = True REST_BASE_URL = 'http://127.0.0.1:9999'\n"
    instance = tmp_path / "ETHUSDT.py"
    instance.write_text(res.stdout)
    cfg = config.load_config(str(instance), env={})
    assert (cfg.SYMBOL, cfg.DB_PATH, cfg.LOG_FILE) == ("ETHUSDT", "/var/lib/bollmin/ETHUSDT.db",
                                                      "/var/log/bollmin/ETHUSDT.log")
    assert cfg.TESTNET and cfg.REST_BASE_URL == "http://127.0.0.1:9999" and cfg.WS_BASE_URL == config.TESTNET_WS
    assert cfg.mode == "PAPER" and cfg.TRADE_AMOUNT_USDT == 200.0 and cfg.INTERVAL == "15m" and cfg.AUTO_RESTART
    assert "key123" not in res.stdout and "secret456" not in res.stdout
    # Line for line the default file, but for those settings.
    changed = {a.split(" = ")[0] for a, b in zip(config.render_default_file().splitlines(), res.stdout.splitlines(),
                                                  strict=True) if a != b}
    assert changed == {"SYMBOL", "TESTNET", "REST_BASE_URL", "DB_PATH", "LOG_FILE"}

    default.write_text("SYMBOL = 'BTCUSDT'\n")  # production, the default URLs: nothing to copy
    res = run_probe(tmp_path, default, "instance", "SOLUSDT", "/var/log/bollmin")
    assert res.returncode == 0 and res.stderr == "\n", res.stderr
    changed = {a.split(" = ")[0] for a, b in zip(config.render_default_file().splitlines(), res.stdout.splitlines(),
                                                  strict=True) if a != b}
    assert changed == {"SYMBOL", "DB_PATH", "LOG_FILE"}


def test_the_probe_reads_an_instances_status_from_its_db(tmp_path):
    import store

    conf = tmp_path / "ETHUSDT.py"
    conf.write_text(f"SYMBOL = 'ETHUSDT'\nDB_PATH = '{tmp_path}/ETHUSDT.db'\n")
    db = store.Store(str(tmp_path / "ETHUSDT.db"))
    db.set_status({"heartbeat_ms": store.now_ms(), "state": "SHORT", "mode": "PAPER", "position_qty": -0.25,
                   "entry_price": 104321.55, "connection": "connected"})
    db.close()
    res = run_probe(tmp_path, conf, "status")
    assert res.returncode == 0, res.stderr
    out = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert out["SYMBOL"] == "ETHUSDT" and out["DB"] == f"{tmp_path}/ETHUSDT.db" and out["db_state"] == "SHORT"
    assert out["position"] == "short 0.25 @ 104321.55" and out["db_mode"] == "PAPER"
    assert 0 <= float(out["heartbeat_age_s"]) < 30


def test_the_exchange_check_of_add(tmp_path):
    """Listed: silent; not listed: exit 2 and one line; the exchange unreachable: a one-line warning, exit 0.
    The secrets come from the env file, as under systemd (a live config needs them to be valid)."""
    from simexchange import SimExchangeThread

    keys = "BINANCE_API_KEY=key123\nBINANCE_API_SECRET=secret456\n"
    conf = tmp_path / "instance.py"
    with SimExchangeThread(MARKET_1M, paused=True, target_interval="1m") as sim:
        conf.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'BTCUSDT'\nPAPER_TRADING = False\n")
        res = run_probe(tmp_path, conf, "exchange", env_text=keys)
        assert res.returncode == 0 and res.stderr == "", res
        assert "key123" not in res.stdout and "secret456" not in res.stdout  # (the script discards it anyway)
        conf.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'NOPEUSDT'\n")
        res = run_probe(tmp_path, conf, "exchange")
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "does not list it" in res.stderr, res
    conf.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'ETHUSDT'\nREST_TIMEOUT_SECONDS = 2.0\n")
    res = run_probe(tmp_path, conf, "exchange")  # the exchange is gone now
    assert res.returncode == 0 and res.stderr.count("\n") == 1 and "not confirmed" in res.stderr, res
