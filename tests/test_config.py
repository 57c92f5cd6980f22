"""Settings (config.py) and the command line's common options (README)."""

from __future__ import annotations

import json
import os

import pytest
from support.env import clean_env
from support.paths import MARKET_1M

import config
from bollmin import build_parser
from config import ConfigError, load_config

SPEC_DEFAULTS = {
    "SYMBOL": "BTCUSDT",
    "INTERVAL": "15m",
    "BOLL_PERIOD": 20,
    "BOLL_K": 2.0,
    "BOLL_DDOF": 0,
    "HISTORY_KLINES": 50,
    "TRADE_AMOUNT_USDT": 200.0,
    "LEVERAGE": 5,
    "PAPER_TRADING": True,
    "PAPER_FEE_RATE": 0.0005,
    "API_KEY": "",
    "API_SECRET": "",
    "TESTNET": False,
    "REST_BASE_URL": "https://fapi.binance.com",
    "WS_BASE_URL": "wss://fstream.binance.com",
    "DB_PATH": "data/bollmin.db",
    "LOG_FILE": "logs/bollmin.log",
    "AUTO_RESTART": True,
    "DASHBOARD_HOST": "127.0.0.1",
    "DASHBOARD_PORT": 8080,
    "DASHBOARD_PASSWORD": "",
}

SUBCOMMANDS = ("run", "backtest", "trades", "dashboard", "demo", "check-config")


def test_every_spec_setting_exists_with_the_spec_default():
    cfg = load_config(None, env={})
    declared = {s.name: s.default for s in config.SETTINGS}
    for name, default in SPEC_DEFAULTS.items():
        assert name in declared, name
        assert declared[name] == default and type(declared[name]) is type(default), name
        assert getattr(cfg, name) == default, name
    assert cfg.source == "defaults" and cfg.mode == "PAPER"
    assert all(s.help.strip() for s in config.SETTINGS)  # every setting is documented


def test_the_default_file_round_trips(tmp_path):
    """``python config.py`` output is a valid settings file giving the defaults back."""
    path = tmp_path / "default_config.py"
    path.write_text(config.render_default_file(), encoding="utf-8")
    cfg = load_config(str(path), env={})
    for name, default in SPEC_DEFAULTS.items():
        assert getattr(cfg, name) == default


def test_file_overrides_and_env_secrets_win(tmp_path):
    path = tmp_path / "c.py"
    path.write_text('SYMBOL = "ETHUSDT"\nBOLL_PERIOD = 30\nHISTORY_KLINES = 100\nAPI_KEY = "file-key"\n'
                    'API_SECRET = "file-secret"\nDASHBOARD_PASSWORD = "file-pw"\nimport math\n_helper = 1\n')
    cfg = load_config(str(path), env={"BINANCE_API_KEY": "env-key", "BINANCE_API_SECRET": "env-secret",
                                      "BOLLMIN_DASHBOARD_PASSWORD": "env-pw"})
    assert (cfg.SYMBOL, cfg.BOLL_PERIOD, cfg.HISTORY_KLINES) == ("ETHUSDT", 30, 100)
    assert (cfg.API_KEY, cfg.API_SECRET, cfg.DASHBOARD_PASSWORD) == ("env-key", "env-secret", "env-pw")
    assert cfg.source == str(path)
    cfg = load_config(str(path), env={})
    assert (cfg.API_KEY, cfg.API_SECRET, cfg.DASHBOARD_PASSWORD) == ("file-key", "file-secret", "file-pw")


def test_bollmin_config_env_names_the_file_and_config_option_wins(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text('SYMBOL = "ETHUSDT"\n')
    b.write_text('SYMBOL = "SOLUSDT"\n')
    assert load_config(None, env={"BOLLMIN_CONFIG": str(a)}).SYMBOL == "ETHUSDT"
    assert load_config(str(b), env={"BOLLMIN_CONFIG": str(a)}).SYMBOL == "SOLUSDT"


def test_testnet_switches_the_default_urls_only(tmp_path):
    path = tmp_path / "t.py"
    path.write_text("TESTNET = True\n")
    cfg = load_config(str(path), env={})
    assert cfg.REST_BASE_URL == "https://demo-fapi.binance.com"
    assert cfg.WS_BASE_URL == "wss://fstream.binancefuture.com"
    path.write_text('TESTNET = True\nREST_BASE_URL = "http://127.0.0.1:9001"\nWS_BASE_URL = "ws://127.0.0.1:9002"\n')
    cfg = load_config(str(path), env={})
    assert (cfg.REST_BASE_URL, cfg.WS_BASE_URL) == ("http://127.0.0.1:9001", "ws://127.0.0.1:9002")


def test_mode_is_paper_testnet_or_live(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('PAPER_TRADING = False\nAPI_KEY = "k"\nAPI_SECRET = "s"\n')
    assert load_config(str(path), env={}).mode == "LIVE"
    path.write_text('PAPER_TRADING = False\nTESTNET = True\nAPI_KEY = "k"\nAPI_SECRET = "s"\n')
    assert load_config(str(path), env={}).mode == "TESTNET"


def test_keys_from_env_make_live_valid(tmp_path):
    path = tmp_path / "live.py"
    path.write_text("PAPER_TRADING = False\n")
    with pytest.raises(ConfigError, match="API_KEY"):
        load_config(str(path), env={})
    cfg = load_config(str(path), env={"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})
    assert cfg.mode == "LIVE"


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    path = tmp_path / "f.py"
    path.write_text("BOLL_K = 3\nTRADE_AMOUNT_USDT = 500\n")
    cfg = load_config(str(path), env={})
    assert cfg.BOLL_K == 3.0 and isinstance(cfg.BOLL_K, float) and cfg.TRADE_AMOUNT_USDT == 500.0


# ---- each validation through the real CLI: exit 2, one line naming the setting, no traceback ----------

BAD_CONFIGS = [
    ("type-int", 'BOLL_PERIOD = "20"\n', "BOLL_PERIOD"),
    ("type-bool", 'PAPER_TRADING = "yes"\n', "PAPER_TRADING"),
    ("type-float", 'TRADE_AMOUNT_USDT = "200"\n', "TRADE_AMOUNT_USDT"),
    ("type-str", "SYMBOL = 42\n", "SYMBOL"),
    ("type-bool-is-not-int", "LEVERAGE = True\n", "LEVERAGE"),
    ("nan", 'BOLL_K = float("nan")\n', "BOLL_K"),
    ("range-leverage", "LEVERAGE = 500\n", "LEVERAGE"),
    ("range-period", "BOLL_PERIOD = 1\n", "BOLL_PERIOD"),
    ("range-k", "BOLL_K = 0.0\n", "BOLL_K"),
    ("range-ddof", "BOLL_DDOF = 2\n", "BOLL_DDOF"),
    ("range-amount", "TRADE_AMOUNT_USDT = -5.0\n", "TRADE_AMOUNT_USDT"),
    ("range-fee", "PAPER_FEE_RATE = 0.5\n", "PAPER_FEE_RATE"),
    ("range-port", "DASHBOARD_PORT = 70000\n", "DASHBOARD_PORT"),
    ("history-too-short", "BOLL_PERIOD = 60\n", "HISTORY_KLINES"),
    ("unknown-interval", 'INTERVAL = "7m"\n', "INTERVAL"),
    ("lowercase-symbol", 'SYMBOL = "btcusdt"\n', "SYMBOL"),
    ("rest-scheme", 'REST_BASE_URL = "ftp://fapi.binance.com"\n', "REST_BASE_URL"),
    ("rest-ws-scheme", 'REST_BASE_URL = "wss://fapi.binance.com"\n', "REST_BASE_URL"),
    ("ws-scheme", 'WS_BASE_URL = "https://fstream.binance.com"\n', "WS_BASE_URL"),
    ("url-with-path", 'REST_BASE_URL = "https://fapi.binance.com/fapi/v1"\n', "REST_BASE_URL"),
    ("unknown-name", "BOLL_PERIODS = 20\n", "BOLL_PERIODS"),
    ("live-without-key", "PAPER_TRADING = False\n", "API_KEY"),
    ("live-without-secret", 'PAPER_TRADING = False\nAPI_KEY = "abc"\n', "API_SECRET"),
    ("open-dashboard-without-password", 'DASHBOARD_HOST = "0.0.0.0"\n', "DASHBOARD_PASSWORD"),
    ("syntax-error", 'SYMBOL = "BTCUSDT"\nLEVERAGE = = 3\n', "line 2"),
    ("raises", "BOLL_K = 1 / 0\n", "ZeroDivisionError"),
    ("empty-db-path", 'DB_PATH = "  "\n', "DB_PATH"),
    ("bad-choice", 'LOG_LEVEL = "LOUD"\n', "LOG_LEVEL"),
]


@pytest.mark.parametrize(("text", "name"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_setting_stops_check_config_with_one_line(tmp_path, bollmin_cli, text, name):
    path = tmp_path / "bad_config.py"
    path.write_text(text, encoding="utf-8")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert name in lines[0]
    if name in ("line 2", "ZeroDivisionError", "BOLL_PERIODS"):
        assert "bad_config.py" in lines[0]  # a problem with the file itself names the file
    assert r.stdout == ""


def test_unknown_name_suggests_the_closest_valid_one(tmp_path, bollmin_cli):
    path = tmp_path / "typo.py"
    path.write_text("BOLL_PERIODS = 20\n")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2
    assert "did you mean BOLL_PERIOD?" in r.stderr


def test_lowercase_symbol_suggests_the_upper_case_name(tmp_path, bollmin_cli):
    path = tmp_path / "lower.py"
    path.write_text('SYMBOL = "ethusdt"\n')
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2 and "'ETHUSDT'" in r.stderr


def test_missing_config_file(tmp_path, bollmin_cli):
    r = bollmin_cli("check-config", "--config", str(tmp_path / "nope.py"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "no such file" in r.stderr


def test_bad_config_named_by_env_stops_the_same_way(tmp_path, bollmin_cli):
    path = tmp_path / "bad.py"
    path.write_text("LEVERAGE = 0\n")
    r = bollmin_cli("check-config", env=clean_env(BOLLMIN_CONFIG=str(path)))
    assert r.returncode == 2 and "LEVERAGE" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- check-config output, secrets masked ------------------------------------------------------------

FILE_SECRETS = {"API_KEY": "AKfileKEY5551234", "API_SECRET": "SKfileSECRET7776543",
                "DASHBOARD_PASSWORD": "PWfilePASS8889"}
ENV_SECRETS = {"BINANCE_API_KEY": "AKenvKEY1112223", "BINANCE_API_SECRET": "SKenvSECRET4445556",
               "BOLLMIN_DASHBOARD_PASSWORD": "PWenvPASS9990"}
ALL_SECRETS = list(FILE_SECRETS.values()) + list(ENV_SECRETS.values())


def _assert_no_secret(text: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text
        assert secret[2:10] not in text  # not even a part of it


def test_check_config_prints_the_effective_settings_with_secrets_masked(tmp_path, bollmin_cli):
    path = tmp_path / "secret_config.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in FILE_SECRETS.items())
                    + 'PAPER_TRADING = False\nDASHBOARD_HOST = "0.0.0.0"\nSYMBOL = "ETHUSDT"\n')
    for env in (clean_env(), clean_env(**ENV_SECRETS)):
        r = bollmin_cli("check-config", "--config", str(path), env=env)
        assert r.returncode == 0, r.stderr
        _assert_no_secret(r.stdout + r.stderr)
        assert "SYMBOL = 'ETHUSDT'" in r.stdout
        assert "API_KEY = '***'" in r.stdout and "DASHBOARD_PASSWORD = '***'" in r.stdout
        assert "LIVE" in r.stdout
        r = bollmin_cli("check-config", "--json", "--config", str(path), env=env)
        assert r.returncode == 0
        _assert_no_secret(r.stdout + r.stderr)
        values = json.loads(r.stdout)
        assert values["API_KEY"] == values["API_SECRET"] == values["DASHBOARD_PASSWORD"] == "***"
        assert values["SYMBOL"] == "ETHUSDT" and values["mode"] == "LIVE"
        assert values["source"] == str(path)


def test_check_config_shows_unset_secrets_as_empty(bollmin_cli):
    r = bollmin_cli("check-config", "--json")
    assert r.returncode == 0
    values = json.loads(r.stdout)
    assert values["API_KEY"] == "" and values["mode"] == "PAPER"
    assert {k: values[k] for k in SPEC_DEFAULTS} == SPEC_DEFAULTS


@pytest.mark.parametrize("name", ["API_KEY", "API_SECRET", "DASHBOARD_PASSWORD"])
def test_a_mistyped_secret_is_not_echoed_in_the_error(tmp_path, bollmin_cli, name):
    """A secret typed without quotes is a type error; the message must still not show it."""
    path = tmp_path / "typed.py"
    path.write_text(f"{name} = 8675309123456\n")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2 and name in r.stderr
    assert "8675309123456" not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- every subcommand: --help, --config ----------------------------------------------------------------

@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(bollmin_cli, tmp_path, command):
    r = bollmin_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--config" in r.stdout
    r = bollmin_cli(command, "--config", str(tmp_path / "whatever.py"), "--help")
    assert r.returncode == 0


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_accepts_config(command):
    extra = ["--klines", "k.csv"] if command == "backtest" else []
    args = build_parser().parse_args([command, *extra, "--config", "/etc/bollmin/config.py"])
    assert args.command == command and args.config == "/etc/bollmin/config.py"


@pytest.mark.parametrize("command", ["check-config", "trades", "backtest"])
def test_config_option_is_used(tmp_path, bollmin_cli, command):
    """--config reaches the settings: a broken file stops each of these with the config error."""
    path = tmp_path / "broken.py"
    path.write_text("INTERVAL = '7m'\n")
    extra = ["--klines", str(tmp_path / "k.csv")] if command == "backtest" else []
    r = bollmin_cli(command, *extra, "--config", str(path))
    assert r.returncode == 2 and "INTERVAL" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["check-config", "trades", "backtest"])
def test_config_before_the_subcommand_is_used_too(tmp_path, bollmin_cli, command):
    """``bollmin.py --config F cmd`` equals ``bollmin.py cmd --config F``: never the built-in defaults."""
    path = tmp_path / "broken.py"
    path.write_text("INTERVAL = '7m'\n")
    extra = ["--klines", str(tmp_path / "k.csv")] if command == "backtest" else []
    r = bollmin_cli("--config", str(path), command, *extra)
    assert r.returncode == 2 and "INTERVAL" in r.stderr and "Traceback" not in r.stderr


def test_config_after_the_subcommand_wins():
    args = build_parser().parse_args(["--config", "a.py", "check-config", "--config", "b.py"])
    assert args.config == "b.py"
    assert build_parser().parse_args(["--config", "a.py", "trades"]).config == "a.py"
    assert build_parser().parse_args(["trades"]).config is None


def test_a_lowercase_setting_name_is_refused_not_ignored(tmp_path, bollmin_cli):
    path = tmp_path / "lower.py"
    path.write_text("import os\nboll_period = 30\n")
    r = bollmin_cli("check-config", "--config", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "'boll_period' is not a setting" in r.stderr and "did you mean BOLL_PERIOD?" in r.stderr
    # other lower-case names (helpers, imports) stay the file's own business
    path.write_text("import os\nbase = 25\nBOLL_PERIOD = base - 5\n")
    r = bollmin_cli("check-config", "--config", str(path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["BOLL_PERIOD"] == 20


def test_a_directory_as_config_file_is_named_in_one_line(tmp_path, bollmin_cli):
    r = bollmin_cli("check-config", "--config", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == (f"bollmin: config file {tmp_path}: is a directory; "
                                                      f"give the settings file itself (e.g. config.py)")


def test_unknown_subcommand_or_option_is_a_one_line_usage_error(bollmin_cli):
    r = bollmin_cli("backtest", "--klines", "x.csv", "--frobnicate")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_every_environment_variable_the_program_reads_is_declared():
    """Settings live in the settings file; the few environment variables are listed in config.ENVIRONMENT."""
    import re

    from config import ENVIRONMENT, env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    read = set()
    for name in os.listdir(root):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(root, name), encoding="utf-8") as fh:
            text = fh.read()
        read |= set(re.findall(r"""env\(\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
        read |= set(re.findall(r"""environ(?:\.get)?[\[(]\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
        read |= set(re.findall(r"""getenv\(\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
    assert read, "the scan found nothing: the patterns are wrong"
    assert read <= set(ENVIRONMENT), f"read but not declared: {sorted(read - set(ENVIRONMENT))}"
    with pytest.raises(KeyError):
        env("BOLLMIN_SOMETHING_NEW")


def test_check_config_asks_the_exchange_whether_the_symbol_is_listed(tmp_path, bollmin_cli):
    """auto_deploy.sh add SYMBOL validates an instance with this before starting it."""
    from simexchange import SimExchangeThread

    with SimExchangeThread(MARKET_1M, paused=True, target_interval="1m") as sim:
        good = tmp_path / "good.py"
        good.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'BTCUSDT'\n")
        out = bollmin_cli("check-config", "--exchange", "--config", str(good))
        assert out.returncode == 0 and out.stderr == "", out.stderr
        bad = tmp_path / "bad.py"
        bad.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'NOPEUSDT'\n")
        out = bollmin_cli("check-config", "--exchange", "--config", str(bad))
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "NOPEUSDT" in out.stderr and "does not list it" in out.stderr
    gone = tmp_path / "gone.py"
    gone.write_text(f"REST_BASE_URL = {sim.base_url!r}\nSYMBOL = 'ETHUSDT'\nREST_TIMEOUT_SECONDS = 2.0\n")
    out = bollmin_cli("check-config", "--exchange", "--config", str(gone))  # the exchange is down now
    assert out.returncode == 0 and "warning" in out.stderr and "not confirmed" in out.stderr
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize("command,code", [("trades", 130), ("check-config", 130), ("backtest", 130),
                                          ("run", 0), ("dashboard", 0)])
def test_ctrl_c_exit_codes(monkeypatch, capsys, command, code):
    """A batch command cut short says so and exits 130; the long-running ones stop cleanly (0)."""
    import bollmin

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(bollmin.COMMANDS, command, interrupted)
    extra = ["--klines", "k.csv"] if command == "backtest" else []
    assert bollmin.main([command, *extra]) == code
    err = capsys.readouterr().err
    assert err == ("" if code == 0 else f"bollmin: {command} interrupted; its output is incomplete\n")
