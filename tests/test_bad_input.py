"""Hostile input and broken storage: every case ends in one clear line on stderr, the right exit
code (2: a person must act), nothing written half-way and no secret shown.

Every case runs the real program (``python bollmin.py ...``) on real files: settings files,
kline files (FIFOs, devices, sparse and gzip-bomb files made cheaply), and SQLite databases that
are damaged, foreign, newer, a directory, on read-only storage or on a full disk (tmpfs mounts;
those tests need root and skip with the reason otherwise). The hypothesis fuzzers at the end feed
random settings files and kline files to the loaders in-process (many examples) and through the
command line (fewer), with the same assertions.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import run_bollmin
from support.dbs import build_dashboard_db
from support.env import clean_env
from support.paths import MARKET_15M, ROOT

import config
import history
import store

# ---- helpers -----------------------------------------------------------------------------------


def snapshot(root) -> dict[str, tuple]:
    """Every file and directory under ``root``: type, size and content hash (big files: size, mtime).

    An empty ``-wal`` and its ``-shm`` are left out: SQLite's bookkeeping for a reader of a WAL
    database, holding no data.
    """
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st_.st_mode):
                if name.endswith("-wal") and st_.st_size == 0:
                    continue
                if name.endswith("-shm") and os.path.exists(path[:-4] + "-wal") \
                        and os.path.getsize(path[:-4] + "-wal") == 0:
                    continue
                if st_.st_size > 16 * 2**20:
                    out[rel] = ("file", st_.st_size, st_.st_mtime_ns)
                else:
                    with open(path, "rb") as fh:
                        out[rel] = ("file", st_.st_size, hashlib.sha256(fh.read()).hexdigest())
            else:
                out[rel] = (stat.S_IFMT(st_.st_mode),)
    return out


def _root_state() -> tuple[bool, bool]:
    """Whether the project's default data/ and logs/ exist (a bad run must never create them)."""
    return os.path.exists(os.path.join(ROOT, "data")), os.path.exists(os.path.join(ROOT, "logs"))


def one_line(proc: subprocess.CompletedProcess, code: int = 2, *words: str) -> str:
    """Assert the exit code and exactly one line on stderr (no traceback) holding ``words``."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def checked_run(tmp_path, *args: str, code: int = 2, words: tuple[str, ...] = (), env=None,
                timeout: float = 60) -> str:
    """Run bollmin; assert one line, the exit code, and that no file under tmp_path changed.

    ``run`` logs its one line to LOG_FILE (tmp_path/bot/bollmin.log) as well: that file may
    appear, holding the same line and nothing else.
    """
    before, root_before = snapshot(tmp_path), _root_state()
    proc = run_bollmin(*args, env=env, timeout=timeout)
    line = one_line(proc, code, *words)
    after = snapshot(tmp_path)
    if args[0] == "run" and "bot/bollmin.log" in after and "bot/bollmin.log" not in before:
        log_lines = (tmp_path / "bot" / "bollmin.log").read_text().splitlines()
        assert log_lines == [line]
        after = {k: v for k, v in after.items() if k not in ("bot", "bot/bollmin.log")}
    assert after == before
    assert _root_state() == root_before
    return line


def settings_file(tmp_path, body: str | bytes, name: str = "settings.py") -> str:
    """A settings file with DB_PATH/LOG_FILE in tmp_path/bot (never created by a failing run)."""
    head = (f"DB_PATH = {str(tmp_path / 'bot' / 'bollmin.db')!r}\n"
            f"LOG_FILE = {str(tmp_path / 'bot' / 'bollmin.log')!r}\n"
            "REST_BASE_URL = 'http://127.0.0.1:9'\nWS_BASE_URL = 'ws://127.0.0.1:9'\n")
    path = tmp_path / name
    path.write_bytes(head.encode() + (body.encode() if isinstance(body, str) else body))
    return str(path)


HEADER = "open_time_ms,open,high,low,close,volume"


def kline_text(n: int = 30, step_ms: int = 900_000, t0: int = 1_672_531_200_000, extra: str = "") -> str:
    """A small valid kline CSV (a gentle zig-zag, so the bands have a width)."""
    rows = [HEADER + ("," + extra if extra else "")]
    for i in range(n):
        base = 20_000.0 + (i % 7) * 25.0
        rows.append(f"{t0 + i * step_ms},{base},{base + 40},{base - 40},{base + 10},1.5"
                    + ("," if extra else ""))
    return "\n".join(rows) + "\n"


def gzip_members(chunk: bytes, count: int) -> bytes:
    """``count`` gzip members of ``chunk``: decompresses to len(chunk)*count bytes, costs one compress."""
    return gzip.compress(chunk, compresslevel=9, mtime=0) * count


@pytest.fixture
def bot_db(tmp_path):
    """A real bot DB (candles, paper trades, live orders) in its own directory; returns the path."""
    path = tmp_path / "db" / "bollmin.db"
    path.parent.mkdir()
    build_dashboard_db(str(path), n_candles=600)
    return path


def _damage(path, pages=(2, 3, 4, 5)) -> None:
    """Overwrite whole pages of a database file with noise (as a failing disk would)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        for page in pages:
            if (page + 1) * 4096 <= size:
                fh.seek(page * 4096)
                fh.write(bytes((i * 37 + page) % 256 for i in range(4096)))


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` for the test (root only; skips with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount_readonly(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


# ---- 1. settings files --------------------------------------------------------------------------

SECRET = "Zq9SecretSentinel42"  # must never appear on stderr

CONFIG_CASES = {
    # id: (file body, words the line must hold)
    "huge-int-float-setting": ("TRADE_AMOUNT_USDT = 10**400\n", ("TRADE_AMOUNT_USDT", "too large")),
    "huge-int-int-setting": ("BOLL_PERIOD = 10**5000\n", ("BOLL_PERIOD", "between 2 and 500")),
    "amount-1e300": ("TRADE_AMOUNT_USDT = 1e300\n", ("TRADE_AMOUNT_USDT", "1000000")),
    "amount-inf": ("TRADE_AMOUNT_USDT = 1e999\n", ("TRADE_AMOUNT_USDT", "finite")),
    "nan": ("BOLL_K = float('nan')\n", ("BOLL_K", "finite")),
    "unquoted-secret": (f"API_SECRET = {SECRET}\n", ("line 5", "quotes")),
    "secret-expression": (f"API_KEY = 'abc' + {SECRET}\n", ("line 5", "quotes")),
    "secret-in-later-error": (f"API_SECRET = '{SECRET}'\n_S = API_SECRET\n_N = int(_S)\n",
                              ("line 7", "ValueError", "***")),
    "secret-with-space": (f"API_SECRET = '{SECRET} x'\n", ("API_SECRET", "paste the key again")),
    "system-exit-0": ("raise SystemExit(0)\n", ("line 5", "exit()")),
    "sys-exit-5": ("import sys\nsys.exit(5)\n", ("line 6", "exit()")),
    "nul-byte": (b"SYMBOL = 'BTCUSDT'\nBOLL_K = 2\x00\n", ("line 6", "NUL")),
    "syntax-error": ("BOLL_K = = 2\n", ("line 5", "syntax error")),
    "name-error": ("SYMBOL = ETHUSDT\n", ("line 5", "NameError", "quotes")),
    "zero-division": ("BOLL_K = 1/0\n", ("line 5", "ZeroDivisionError")),
    "recursion": ("def _f():\n    return _f()\n_f()\n", ("RecursionError",)),
    "hostile-str": ("class _E(Exception):\n    def __str__(self):\n        raise ValueError\nraise _E()\n",
                    ("line 8", "_E")),
    "hostile-repr": ("class _V(str):\n    def __repr__(self):\n        raise ValueError\nSYMBOL = 5 and [_V('x')]\n",
                     ("SYMBOL", "text string")),
    "latin-1-text": (b"# prix\nSYMBOL = 'BTC\xe9'\n", ("line 6", "UTF-8")),
    "unknown-setting": ("BOLL_PERIODS = 30\n", ("BOLL_PERIODS", "BOLL_PERIOD")),
    "newline-in-text": ("SYMBOL = 'BTC\\nUSDT'\n", ("SYMBOL", "line breaks")),
    "nul-in-path": ("DB_PATH = 'data/a\\x00b.db'\n", ("DB_PATH", "control characters")),
    "bad-ipv6-url": ("REST_BASE_URL = 'http://[::1'\n", ("REST_BASE_URL", "not a valid URL")),
    "bad-port-url": ("REST_BASE_URL = 'https://fapi.binance.com:99999'\n", ("REST_BASE_URL", "not a valid URL")),
    "url-with-password": ("REST_BASE_URL = 'https://me:pw@fapi.binance.com'\n", ("REST_BASE_URL", "password")),
    "live-plain-http": ("PAPER_TRADING = False\nAPI_KEY = 'k' * 64\nAPI_SECRET = 's' * 64\n"
                        "REST_BASE_URL = 'http://203.0.113.7'\n", ("REST_BASE_URL", "https://")),
    "live-plain-ws": ("PAPER_TRADING = False\nAPI_KEY = 'k' * 64\nAPI_SECRET = 's' * 64\n"
                      "REST_BASE_URL = 'https://fapi.binance.com'\nWS_BASE_URL = 'ws://fstream.example.com'\n",
                      ("WS_BASE_URL", "wss://")),
    "int-subclass": ("class _I(int):\n    def __le__(self, other):\n        return True\n"
                     "    __ge__ = __le__\nBOLL_PERIOD = _I(10**6)\n", ("BOLL_PERIOD", "between 2 and 500")),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_settings_file_is_one_line_exit_2(tmp_path, case):
    body, words = CONFIG_CASES[case]
    path = settings_file(tmp_path, body)
    line = checked_run(tmp_path, "check-config", "--config", path, words=words)
    assert line.startswith("bollmin: ")
    assert SECRET not in line


@pytest.mark.parametrize("command", ["run", "backtest", "trades", "dashboard", "demo", "check-config"])
@pytest.mark.parametrize("body", ["TRADE_AMOUNT_USDT = 10**400\n", f"API_SECRET = {SECRET}\n",
                                  "raise SystemExit(0)\n"], ids=["huge", "secret", "exit0"])
def test_every_subcommand_stops_on_a_bad_settings_file(tmp_path, command, body):
    path = settings_file(tmp_path, body)
    extra = ["--klines", MARKET_15M] if command == "backtest" else []
    line = checked_run(tmp_path, command, "--config", path, *extra)
    assert SECRET not in line


def test_a_secret_from_the_environment_is_masked_in_a_settings_error(tmp_path):
    path = settings_file(tmp_path, "import os\n_V = os.environ['BINANCE_API_' + 'SECRET']\n_N = int(_V)\n")
    line = checked_run(tmp_path, "check-config", "--config", path, words=("ValueError", "***"),
                       env=clean_env(BINANCE_API_SECRET=SECRET))
    assert SECRET not in line


@pytest.mark.parametrize("where", ["file", "env"])
def test_a_secret_given_to_another_setting_by_mistake_is_masked(tmp_path, where):
    """The key pasted into SYMBOL as well: the SYMBOL error must not echo it, nor its upper-case form."""
    secret = "Fz7SecretNeverShown"
    body = f"SYMBOL = {secret!r}\n" + (f"API_SECRET = {secret!r}\n" if where == "file" else "")
    env = clean_env(BINANCE_API_SECRET=secret) if where == "env" else clean_env()
    line = checked_run(tmp_path, "check-config", "--config", settings_file(tmp_path, body), words=("SYMBOL", "***"),
                       env=env)
    assert secret not in line and secret.upper() not in line


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "missing", "utf-16"])
def test_a_settings_path_that_is_not_a_settings_file(tmp_path, kind):
    target = tmp_path / "settings.py"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)  # opened without blocking: the run must not hang (timeout = failure)
    elif kind == "device":
        target = "/dev/zero"
    elif kind == "utf-16":
        target.write_bytes("SYMBOL = 'BTCUSDT'\n".encode("utf-16"))
    words = {"directory": "directory", "fifo": "not a regular file", "device": "not a regular file",
             "missing": "no such file", "utf-16": "UTF-8"}[kind]
    checked_run(tmp_path, "check-config", "--config", str(target), words=(words,), timeout=30)


def test_a_settings_file_path_with_a_line_break_still_gives_one_line(tmp_path):
    path = settings_file(tmp_path, "BOLL_K = = 1\n", name="my\nsettings.py")
    checked_run(tmp_path, "check-config", "--config", path, words=("my\\nsettings.py", "line 5", "syntax error"))


def test_a_utf8_bom_settings_file_is_fine(tmp_path):
    path = settings_file(tmp_path, "")
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + data + b"SYMBOL = 'ETHUSDT'\n")
    proc = run_bollmin("check-config", "--config", path, "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout)["SYMBOL"] == "ETHUSDT"


# ---- limits of settings: both sides -------------------------------------------------------------

@pytest.mark.parametrize(("value", "ok"), [("5", True), ("4.99", False), ("1_000_000", True),
                                           ("1_000_000.01", False)])
def test_trade_amount_limits(tmp_path, value, ok):
    path = settings_file(tmp_path, f"TRADE_AMOUNT_USDT = {value}\n")
    if ok:
        proc = run_bollmin("check-config", "--config", path, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["TRADE_AMOUNT_USDT"] == float(value.replace("_", ""))
    else:
        checked_run(tmp_path, "check-config", "--config", path, words=("TRADE_AMOUNT_USDT", "between 5 and 1000000"))


@pytest.mark.parametrize(("value", "ok"), [("0.01", True), ("0.009", False), ("1e12", True), ("1.01e12", False)])
def test_paper_start_balance_limits(tmp_path, value, ok):
    path = settings_file(tmp_path, f"PAPER_START_BALANCE_USDT = {value}\n")
    if ok:
        assert run_bollmin("check-config", "--config", path).returncode == 0
    else:
        checked_run(tmp_path, "check-config", "--config", path, words=("PAPER_START_BALANCE_USDT", "between"))


def test_command_line_number_limits_accept_their_edges():
    import argparse

    import bollmin

    assert bollmin._limit("1") == 1 and bollmin._limit(str(bollmin.MAX_LIMIT)) == bollmin.MAX_LIMIT
    assert bollmin._speed("100000") == 100_000.0 and bollmin._speed("0.001") == 0.001
    for bad in (str(bollmin.MAX_LIMIT + 1), "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            bollmin._limit(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        bollmin._speed("100000.5")


@pytest.mark.parametrize("extra", [0, 1])
def test_settings_file_size_limit(tmp_path, extra):
    path = settings_file(tmp_path, "")
    size = os.path.getsize(path)
    with open(path, "ab") as fh:
        fh.write(b"#" * (config.MAX_CONFIG_BYTES - size - 1 + extra) + b"\n")
    assert os.path.getsize(path) == config.MAX_CONFIG_BYTES + extra
    if extra:
        checked_run(tmp_path, "check-config", "--config", path, words=("larger than 1,048,576 bytes",))
    else:
        assert run_bollmin("check-config", "--config", path).returncode == 0


@pytest.mark.parametrize("extra", [0, 1])
def test_text_setting_length_limit(tmp_path, extra):
    long_path = "/tmp/" + "d" * (config.MAX_TEXT_CHARS - 5 + extra)
    path = settings_file(tmp_path, f"DB_PATH = {long_path!r}\n")
    if extra:
        checked_run(tmp_path, "check-config", "--config", path, words=("DB_PATH", "longer than 4096"))
    else:
        proc = run_bollmin("check-config", "--config", path, "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout)["DB_PATH"] == long_path


@pytest.mark.parametrize(("url", "paper", "ok"), [
    ("http://127.0.0.1:8000", False, True), ("http://localhost:8000", False, True),
    ("https://fapi.binance.com", False, True), ("http://203.0.113.7", True, True),
    ("http://203.0.113.7", False, False),
])
def test_plain_http_is_refused_beyond_this_machine_in_live_mode(tmp_path, url, paper, ok):
    path = settings_file(tmp_path, f"PAPER_TRADING = {paper}\nAPI_KEY = 'k' * 64\nAPI_SECRET = 's' * 64\n"
                                   f"REST_BASE_URL = {url!r}\n")
    if ok:
        assert run_bollmin("check-config", "--config", path).returncode == 0
    else:
        checked_run(tmp_path, "check-config", "--config", path, words=("REST_BASE_URL", "https://"))


# ---- 2. kline files --------------------------------------------------------------------------------

def backtest_checked(tmp_path, klines: str, words: tuple[str, ...], settings: str = "", timeout: float = 60) -> str:
    """``backtest --json --db`` on a bad kline file: one line, exit 2, no DB and nothing else written."""
    path = settings_file(tmp_path, settings)
    db = tmp_path / "out" / "bt.db"
    line = checked_run(tmp_path, "backtest", "--config", path, "--klines", klines, "--json", "--db", str(db),
                       words=words, timeout=timeout)
    assert not db.parent.exists()
    return line


@pytest.fixture(scope="session")
def one_gib_single_line_gz(tmp_path_factory):
    """A 1 GiB single-line .gz (1 MB on disk): 1024 gzip members of 1 MiB of '1'."""
    path = tmp_path_factory.mktemp("bomb") / "oneline.csv.gz"
    path.write_bytes(gzip_members(b"1" * 2**20, 1024))
    return str(path)


def test_dev_zero_is_refused_at_once(tmp_path):
    backtest_checked(tmp_path, "/dev/zero", ("/dev/zero", "a device"))


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "klines.csv"
    os.mkfifo(fifo)
    backtest_checked(tmp_path, str(fifo), ("klines.csv", "pipe"), timeout=30)


def test_a_2gib_sparse_file_is_refused_by_size(tmp_path):
    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(2 * 2**30)
    backtest_checked(tmp_path, str(big), ("big.csv", "1,073,741,824-byte limit"))


def test_the_size_limit_itself_is_allowed(tmp_path):
    """A sparse file of exactly the limit passes the size check; its NULs then end it on line 1."""
    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(history.MAX_KLINE_BYTES)
    line = backtest_checked(tmp_path, str(big), ("line 1",))
    assert "1,073,741,824" not in line


def test_a_1gib_single_line_gz_is_refused_after_one_line(tmp_path, one_gib_single_line_gz):
    backtest_checked(tmp_path, one_gib_single_line_gz, ("line 1", "longer than 65,536"))


def test_a_gzip_bomb_of_empty_lines_is_refused(tmp_path):
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip_members(b"\n" * 2**20, 1100))  # 1.1 GiB of line breaks
    backtest_checked(tmp_path, str(bomb), ("more than 10,000 empty rows",))


@pytest.mark.parametrize("case", ["utf-16", "latin-1", "nul", "truncated-gz", "corrupt-gz", "microseconds",
                                  "huge-time", "huge-price", "field-limit", "named-gz-not-gzip"])
def test_unreadable_or_absurd_kline_files(tmp_path, case):
    good = kline_text().encode()
    data = {
        "utf-16": kline_text().encode("utf-16"),
        "latin-1": good.replace(b"volume", b"vol\xfbme"),
        "nul": good[:200] + b"\x00" + good[200:],
        "truncated-gz": gzip.compress(kline_text(n=400).encode())[:1000],
        "corrupt-gz": (lambda z: z[:40] + bytes(b ^ 0x5A for b in z[40:80]) + z[80:])(gzip.compress(good)),
        "microseconds": kline_text(t0=1_672_531_200_000_000).encode(),
        "huge-time": good.replace(b"\n1672531200000,", b"\n" + b"9" * 5000 + b",", 1),
        "huge-price": good.replace(b",20040.0,", b",1e999,", 1),
        "field-limit": good + b'"' + (b"x" * 1000 + b"\n") * 200 + b'"\n',  # one quoted cell of many lines
        "named-gz-not-gzip": b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic\n",
    }[case]
    words = {"utf-16": ("UTF-16",), "latin-1": ("line 1", "UTF-8"), "nul": ("line", "NUL"),
             "truncated-gz": ("gzip",), "corrupt-gz": ("gzip",), "microseconds": ("line 2", "milliseconds"),
             "huge-time": ("line 2", "finite"), "huge-price": ("line 2", "finite"),
             "field-limit": ("not a readable CSV file", "field limit"), "named-gz-not-gzip": ("gzip",)}[case]
    path = tmp_path / ("k.csv.gz" if case.endswith("gz") else "k.csv")
    path.write_bytes(data)
    line = backtest_checked(tmp_path, str(path), words)
    assert len(line) < 600  # a 5000-digit cell is cut short in the message


def test_a_utf8_bom_and_old_mac_line_breaks_read_like_the_plain_file(tmp_path):
    path = settings_file(tmp_path, "")
    plain, bom, cr = tmp_path / "plain.csv", tmp_path / "bom.csv", tmp_path / "cr.csv"
    plain.write_text(kline_text())
    bom.write_bytes(b"\xef\xbb\xbf" + kline_text().encode())
    cr.write_text(kline_text().replace("\n", "\r"))
    outs = []
    for f in (plain, bom, cr):
        proc = run_bollmin("backtest", "--config", path, "--klines", str(f), "--json")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        outs.append(proc.stdout)
    assert outs[0] == outs[1] == outs[2]
    assert json.loads(outs[0].splitlines()[-1])["summary"]["candles"] == 30


@pytest.mark.parametrize("extra", [0, 1])
def test_line_length_limit(tmp_path, extra):
    text = kline_text(extra="note").splitlines()
    pad = history.MAX_LINE_CHARS - len(text[5]) + extra
    text[5] += "x" * pad
    assert len(text[5]) == history.MAX_LINE_CHARS + extra
    path = tmp_path / "k.csv"
    path.write_text("\n".join(text) + "\n")
    if extra:
        backtest_checked(tmp_path, str(path), ("line 6", "longer than 65,536 characters"))
    else:
        proc = run_bollmin("backtest", "--config", settings_file(tmp_path, ""), "--klines", str(path), "--json")
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("extra", [0, 1])
def test_empty_row_limit(tmp_path, extra):
    lines = kline_text().splitlines()
    path = tmp_path / "k.csv"
    path.write_text("\n".join(lines[:3] + [""] * (history.MAX_BLANK_ROWS + extra) + lines[3:]) + "\n")
    if extra:
        backtest_checked(tmp_path, str(path), ("more than 10,000 empty rows",))
    else:
        proc = run_bollmin("backtest", "--config", settings_file(tmp_path, ""), "--klines", str(path), "--json")
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("extra", [0, 1])
def test_decompressed_size_limit(tmp_path, monkeypatch, extra):
    """The limit on text after decompression, at a small value (the real one is 1 GiB)."""
    text = kline_text(n=5)
    monkeypatch.setattr(history, "MAX_KLINE_BYTES", len(text) - 1 + extra)
    for name, data in (("k.csv.gz", gzip.compress(text.encode())), ("k.csv", text.encode())):
        path = tmp_path / name
        path.write_bytes(data)
        if extra:
            assert len(history.read_candles(str(path))) == 5
        else:
            with pytest.raises(history.HistoryError, match="bytes"):
                history.read_candles(str(path))


@pytest.mark.parametrize("extra", [0, 1])
def test_open_time_limit(tmp_path, extra):
    t = history.MAX_OPEN_TIME_MS + extra
    path = tmp_path / "k.csv"
    path.write_text(f"{HEADER}\n{t - 60_000},1,1,1,1,0\n{t},1,1,1,1,0\n")
    if extra:
        with pytest.raises(history.HistoryError, match="line 3: open time .* epoch milliseconds"):
            history.read_candles(str(path))
    else:
        assert history.read_candles(str(path))[-1].open_time_ms == t


@pytest.mark.parametrize("amount", ["99.99", "edge", "safe"])
def test_entries_refused_for_a_small_amount_are_reported(tmp_path, amount):
    """Below the minimum notional (100 USDT) every entry is refused; just above it, rounding down
    to the lot step (0.001) refuses some; from 100 + highest price x 0.001 on, none."""
    klines = tmp_path / "k.csv"
    with gzip.open(MARKET_15M, "rt") as fh:
        klines.write_text("".join(fh.readline() for _ in range(1500)))
    highest = max(c.high for c in history.read_candles(str(klines)))
    value = {"99.99": 99.99, "edge": 100.5, "safe": 100 + highest * 0.001 + 0.01}[amount]
    path = settings_file(tmp_path, f"TRADE_AMOUNT_USDT = {value!r}\n")
    proc = run_bollmin("backtest", "--config", path, "--klines", str(klines), "--json")
    summary = json.loads(proc.stdout.splitlines()[-1])["summary"]
    if amount == "safe":
        assert proc.returncode == 0 and proc.stderr == "" and summary["trades"] > 0
        return
    line = one_line(proc, 0, "bollmin: warning:", "entries were refused by the exchange minimums", "100 USDT")
    refused = int(line.split("warning: ")[1].split()[0])
    if amount == "99.99":
        assert summary["orders"] == 0 and refused > 0
    else:
        assert refused > 0 and summary["orders"] > 0  # some entries go through, some do not


def test_run_warns_at_startup_about_an_amount_below_the_minimum():
    from broker import DEFAULT_RULES, amount_warning

    assert "every entry will be refused" in amount_warning(99.99, DEFAULT_RULES, "BTCUSDT")
    assert amount_warning(100, DEFAULT_RULES, "BTCUSDT") is None
    assert "an entry would be refused" in amount_warning(100.5, DEFAULT_RULES, "BTCUSDT", 16_523.4)
    assert amount_warning(200, DEFAULT_RULES, "BTCUSDT", 105_000.0) is None


# ---- 3. databases ---------------------------------------------------------------------------------

def _bad_db(tmp_path, bot_db, kind: str) -> str:
    """A database file of the given kind at tmp_path/bad/bollmin.db."""
    d = tmp_path / "bad"
    d.mkdir()
    path = d / "bollmin.db"
    if kind == "random-bytes":
        path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(64 * 1024)))
    elif kind == "text":
        path.write_text("these are my notes, not a database\n" * 100)
    elif kind == "truncated":
        data = bot_db.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "damaged":
        path.write_bytes(bot_db.read_bytes())
        _damage(path)
    elif kind == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO photos(name) VALUES ('cat.jpg')")
        conn.commit()
        conn.close()
    elif kind == "newer":
        path.write_bytes(bot_db.read_bytes())
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
        conn.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return str(path)


DB_KINDS = {
    "random-bytes": "not an SQLite database", "text": "not an SQLite database", "truncated": "damaged",
    "damaged": "damaged", "foreign": "not a bollmin one", "newer": "newer", "directory": "is a directory",
    "fifo": "not a regular file",
}


@pytest.mark.parametrize("kind", list(DB_KINDS))
def test_trades_on_an_unusable_db(tmp_path, bot_db, kind):
    path = _bad_db(tmp_path, bot_db, kind)
    checked_run(tmp_path, "trades", "--config", settings_file(tmp_path, ""), "--db", path,
                words=("bollmin.db", DB_KINDS[kind]), timeout=30)


@pytest.mark.parametrize("kind", list(DB_KINDS))
def test_run_on_an_unusable_db_stops_with_exit_2(tmp_path, bot_db, kind):
    path = _bad_db(tmp_path, bot_db, kind)
    cfg = settings_file(tmp_path, f"DB_PATH = {path!r}\nAUTO_RESTART = False\n")
    line = checked_run(tmp_path, "run", "--config", cfg, words=("CRITICAL", DB_KINDS[kind]), timeout=30)
    if DB_KINDS[kind] == "damaged":
        assert "move" in line and "exchange is the truth for the position" in line


@pytest.mark.parametrize("kind", list(DB_KINDS))
def test_backtest_db_on_an_unusable_db(tmp_path, bot_db, kind):
    path = _bad_db(tmp_path, bot_db, kind)
    klines = tmp_path / "k.csv"
    klines.write_text(kline_text())
    checked_run(tmp_path, "backtest", "--config", settings_file(tmp_path, ""), "--klines", str(klines),
                "--db", path, words=("bollmin.db", DB_KINDS[kind]), timeout=30)


def test_a_damaged_db_is_never_restarted_by_auto_restart(tmp_path, bot_db):
    """The supervisor (AUTO_RESTART by hand) passes exit 2 on instead of restarting in a loop."""
    _damage(bot_db)
    cfg = settings_file(tmp_path, f"DB_PATH = {str(bot_db)!r}\nAUTO_RESTART = True\n")
    env = clean_env()  # outside systemd too: no SYSTEMD_EXEC_PID, INVOCATION_ID or NOTIFY_SOCKET
    line = checked_run(tmp_path, "run", "--config", cfg, env=env, words=("damaged",), timeout=60)
    assert "Traceback" not in line


def test_systemd_never_restarts_exit_2():
    """Under systemd the same exit 2 is in RestartPreventExitStatus (Restart=on-failure otherwise)."""
    with open(os.path.join(ROOT, "bollmin.service"), encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh if not ln.lstrip().startswith("#")]
    prevent = [ln.split("=", 1)[1].split() for ln in lines if ln.startswith("RestartPreventExitStatus=")]
    assert prevent and "2" in prevent[-1]


def test_a_damaged_db_found_in_the_startup_reads_is_exit_2(tmp_path, bot_db, monkeypatch):
    """Damage that only the startup reads meet (not the quick check) is still a StoreError and exit 2."""
    import runner
    from config import load_config

    cfg = load_config(settings_file(tmp_path, f"DB_PATH = {str(bot_db)!r}\nAUTO_RESTART = False\n"), env={})

    def broken(_conn):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(store, "read_status", broken)
    with _saved_logging():
        logging.getLogger().handlers[:] = []
        messages: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger().addHandler(handler)
        assert runner.run_bot(cfg) == 2
    assert any("is damaged" in m and "move" in m for m in messages), messages


def test_full_disk_during_backtest_db_keeps_the_earlier_run(tmp_path):
    with tmpfs(tmp_path / "small", "2m") as disk:
        cfg = settings_file(tmp_path, "")
        db = disk / "bt.db"
        first = tmp_path / "first.csv"
        with gzip.open(MARKET_15M, "rt") as fh:
            first.write_text("".join(fh.readline() for _ in range(3000)))
        assert run_bollmin("backtest", "--config", cfg, "--klines", str(first), "--db", str(db)).returncode == 0
        before = run_bollmin("trades", "--config", cfg, "--db", str(db), "--json")
        assert before.returncode == 0 and len(before.stdout.splitlines()) > 50
        line = one_line(run_bollmin("backtest", "--config", cfg, "--klines", MARKET_15M, "--db", str(db), "--json"),
                        2, "bt.db", "disk is full")
        assert "unchanged" in line
        after = run_bollmin("trades", "--config", cfg, "--db", str(db), "--json")
        assert after.returncode == 0 and after.stdout == before.stdout


def test_full_disk_when_creating_a_backtest_db_leaves_no_file(tmp_path):
    with tmpfs(tmp_path / "small", "64k") as disk:
        filler = disk / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            fh.write(b"\0" * (64 * 1024))
        klines = tmp_path / "k.csv"
        klines.write_text(kline_text())
        one_line(run_bollmin("backtest", "--config", settings_file(tmp_path, ""), "--klines", str(klines),
                             "--db", str(disk / "new.db")), 2, "new.db")
        assert sorted(os.listdir(disk)) == ["filler"]


def _wal_db_on(directory, leave_wal: bool) -> str:
    """A bot DB in WAL mode in ``directory``; ``leave_wal``: as left by a kill -9 (-wal and -shm kept)."""
    path = str(directory / "bollmin.db")
    build_dashboard_db(path, n_candles=300)
    assert not os.path.exists(path + "-wal")
    if leave_wal:
        pid = os.fork()
        if pid == 0:  # a writer that dies without closing: its log is not checkpointed
            conn = sqlite3.connect(path)
            conn.execute("INSERT INTO events(time_ms, level, message) VALUES (1, 'INFO', 'after the crash')")
            conn.commit()
            os._exit(0)
        os.waitpid(pid, 0)
    return path


@pytest.mark.parametrize("state", ["clean", "hot", "wal-without-shm"])
def test_trades_on_a_wal_db_on_read_only_storage(tmp_path, state):
    with tmpfs(tmp_path / "ro", "16m") as disk:
        path = _wal_db_on(disk, leave_wal=state != "clean")
        if state == "wal-without-shm":
            os.remove(path + "-shm")
        assert os.path.exists(path + "-wal") == (state != "clean")
        remount_readonly(disk)
        cfg = settings_file(tmp_path, "")
        proc = run_bollmin("trades", "--config", cfg, "--db", path, "--json")
        if state == "wal-without-shm":
            one_line(proc, 2, "read-only storage", "-wal", "copy")
        else:
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr == ""
            rows = [json.loads(x) for x in proc.stdout.splitlines()]
            ids = [r["client_order_id"] for r in rows]
            assert len(rows) > 10 and ids[-1] == "bm-live-1"  # the newest filled order (see conftest)


def test_run_and_backtest_on_read_only_storage(tmp_path):
    with tmpfs(tmp_path / "ro", "16m") as disk:
        path = _wal_db_on(disk, leave_wal=False)
        remount_readonly(disk)
        cfg = settings_file(tmp_path, f"DB_PATH = {path!r}\nAUTO_RESTART = False\n")
        checked_run(tmp_path, "run", "--config", cfg, words=("CRITICAL", "bollmin.db"), timeout=30)
        klines = tmp_path / "k.csv"
        klines.write_text(kline_text())
        checked_run(tmp_path, "backtest", "--config", cfg, "--klines", str(klines), "--db", str(disk / "bt.db"),
                    words=("bt.db",))


def test_trades_limit_is_bounded(tmp_path, bot_db):
    cfg = settings_file(tmp_path, "")
    for bad in ("0", "-3", "abc", str(10**30)):
        checked_run(tmp_path, "trades", "--config", cfg, "--db", str(bot_db), "--limit", bad, words=("--limit",))
    proc = run_bollmin("trades", "--config", cfg, "--db", str(bot_db), "--limit", str(10**9), "--json")
    assert proc.returncode == 0 and proc.stdout


def test_trades_shows_a_hand_edited_row_without_crashing(tmp_path, bot_db):
    conn = sqlite3.connect(bot_db)
    conn.execute("UPDATE orders SET time_ms = 99999999999999999, fill_price = NULL WHERE id = 1")
    conn.commit()
    conn.close()
    proc = run_bollmin("trades", "--config", settings_file(tmp_path, ""), "--db", str(bot_db))
    assert proc.returncode == 0 and proc.stderr == ""
    assert "99999999999999999" in proc.stdout


def test_trades_on_an_empty_file_says_so(tmp_path):
    empty = tmp_path / "db" / "empty.db"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    checked_run(tmp_path, "trades", "--config", settings_file(tmp_path, ""), "--db", str(empty),
                words=("empty.db", "no bollmin data"))


# ---- the command line's last resorts ----------------------------------------------------------------

def test_an_unexpected_error_is_one_line_exit_1(monkeypatch, capsys):
    import bollmin

    def broken(_args):
        raise RuntimeError("something no one foresaw\nsecond line")

    monkeypatch.setitem(bollmin.COMMANDS, "check-config", broken)
    monkeypatch.delenv("BOLLMIN_DEBUG", raising=False)
    assert bollmin.main(["check-config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected RuntimeError: something no one foresaw second line" in err
    assert "BOLLMIN_DEBUG=1" in err


def test_a_reader_that_goes_away_is_not_an_error(tmp_path):
    """``backtest --json | head -1``: exit 0 and nothing on stderr (no BrokenPipeError noise)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bollmin.py"), "backtest", "--config",
                             settings_file(tmp_path, ""), "--klines", MARKET_15M, "--json"], cwd=ROOT,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the rest (thousands of lines) hits a closed pipe
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0 and err == b""
    assert json.loads(first)["action"]


# ---- 4. the demo ------------------------------------------------------------------------------------

@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "0", "-1", "abc", "100001"])
def test_demo_speed_is_validated(tmp_path, speed):
    env = clean_env(BOLLMIN_DEMO_DIR=str(tmp_path / "demo"))
    checked_run(tmp_path, "demo", "--speed", speed, env=env, words=("--speed",))


def test_demo_main_refuses_nan_speed_too(tmp_path, capsys):
    import demo

    assert demo.main(None, float("nan"), workdir=str(tmp_path / "demo")) == 2
    assert "--speed" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_directory_that_is_not_its_own(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "demo.db").write_text("an old demo DB")
    checked_run(tmp_path, "demo", env=clean_env(BOLLMIN_DEMO_DIR=str(d)), words=("thesis.tex", "BOLLMIN_DEMO_DIR"))


@pytest.mark.e2e
def test_demo_exits_non_zero_when_its_bot_dies(tmp_path):
    d = tmp_path / "demo"
    d.mkdir()
    (d / "demo.log.3").write_text("an old rotated demo log")  # the demo's own: replaced
    env = clean_env(BOLLMIN_DEMO_DIR=str(d))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bollmin.py"), "demo", "--speed", "60"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pid = None
        deadline = time.monotonic() + 90
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = sqlite3.connect(f"file:{d / 'demo.db'}?mode=ro", uri=True)
                row = conn.execute("SELECT value FROM status WHERE key = 'pid'").fetchone()
                conn.close()
                pid = int(row[0]) if row else None
            except (sqlite3.Error, ValueError):
                pass
            time.sleep(0.2)
        assert pid is not None, "the demo's bot never started"
        assert not (d / "demo.log.3").exists()
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and "bot exited with code -9" in lines[0], err
    assert "Traceback" not in err


# ---- 5. secrets in the log --------------------------------------------------------------------------

@contextlib.contextmanager
def _saved_logging():
    import logs

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        logs.stop_logging()  # lines are written by a logging thread: flush them
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_short_password_does_not_garble_paths_but_is_masked_as_a_word(tmp_path):
    import logs
    from config import load_config

    log_file = tmp_path / "logs" / "bot.log"
    cfg = load_config(settings_file(tmp_path, f"LOG_FILE = {str(log_file)!r}\nDASHBOARD_PASSWORD = 'demo'\n"), env={})
    with _saved_logging():
        logs.setup_logging(cfg)
        logging.getLogger("bollmin").info("DB %s", "/srv/demo-data/demo.db")
        logging.getLogger("bollmin").info("login with password=demo or 'demo'")
    text = log_file.read_text()
    assert "/srv/demo-data/demo.db" in text
    assert "password=*** or '***'" in text


def test_a_long_secret_is_masked_in_messages_tracebacks_and_the_events_table(tmp_path):
    import logs
    from config import load_config

    log_file, db = tmp_path / "bot.log", tmp_path / "bot.db"
    cfg = load_config(settings_file(tmp_path, f"LOG_FILE = {str(log_file)!r}\nAPI_KEY = '{SECRET}'\n"), env={})
    with _saved_logging():
        logs.setup_logging(cfg)
        writer = store.Writer(str(db))
        events = logs.EventsHandler(writer)
        logging.getLogger().addHandler(events)
        log = logging.getLogger("bollmin")
        log.warning("key in text: %s", SECRET)
        try:
            raise ValueError(f"the exchange echoed {SECRET}")
        except ValueError:
            log.exception("request failed")
        logging.getLogger().removeHandler(events)
        assert writer.close()
    text = log_file.read_text()
    assert SECRET not in text and "key in text: ***" in text and "the exchange echoed ***" in text
    conn = sqlite3.connect(db)
    rows = [r[0] for r in conn.execute("SELECT message FROM events")]
    conn.close()
    assert len(rows) == 2 and not any(SECRET in r for r in rows)


def test_an_error_line_masks_every_notification_url_however_many(tmp_path):
    """Each NOTIFY_URLS entry is a secret of its own in error lines and log lines (the list as a
    whole once broke the error line of a config with four of them)."""
    urls = [f"json://127.0.0.1:9/{i}Tok{SECRET}" for i in range(4)]
    path = settings_file(tmp_path, f"NOTIFY_URLS = {urls!r}\n")
    missing = tmp_path / "none.db"
    line = checked_run(tmp_path, "trades", "--config", path, "--db", str(missing), words=("none.db",))
    assert SECRET not in line
    import logs
    from config import load_config

    log_file = tmp_path / "bot.log"
    cfg = load_config(settings_file(tmp_path, f"LOG_FILE = {str(log_file)!r}\nNOTIFY_URLS = {urls!r}\n",
                                    name="log-settings.py"), env={})
    with _saved_logging():
        logs.setup_logging(cfg)
        logging.getLogger("bollmin").warning("sending to %s failed", urls[3])
    text = log_file.read_text()
    assert "sending to *** failed" in text and SECRET not in text


def test_mask_secrets_rules():
    m = config.mask_secrets
    assert m("a abcdefgh b xabcdefghx", ["abcdefgh"]) == "a *** b x***x"
    assert m("demo-data/demo.db demo. x.demo demo", ["demo"]) == "demo-data/demo.db ***. x.demo ***"
    assert m("pw=abc", ["abc"]) == "pw=abc"  # under 4 characters: indistinguishable from text
    assert m("k=KEY1KEY1KEY1 s=KEY1", ["KEY1KEY1KEY1", "KEY1"]) == "k=*** s=***"


# ---- 6. fuzzing: settings files -----------------------------------------------------------------------

SETTING_NAMES = [s.name for s in config.SETTINGS]
FUZZ_SECRET = "Fz7SecretNeverShown"


def _literal(value) -> str:
    """Python source for a value (huge ints as hex: no digit limit; nan/inf as calls)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, float):
        if value != value:
            return "float('nan')"
        if value in (float("inf"), float("-inf")):
            return f"float('{value}')"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


_values = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-(2**20000), max_value=2**20000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=12),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3),
    st.sampled_from(["BTCUSDT", "15m", "1h", "https://fapi.binance.com", "http://203.0.113.9", "127.0.0.1",
                     "0.0.0.0", "exchange", "DEBUG", FUZZ_SECRET]),
)
_expressions = st.sampled_from(["10**400", "10**5000", "-10**400", "1e999", "-1e999", "1e308*10", "2**-1074",
                                "float('nan')", "()", "{}", "{1: 2}", "b'\\x00'", "'\\x00'", "'\\u2028'",
                                "'\\ud800'", "'x' * 5000", "[[[[[[[[1]]]]]]]]"])
_names = st.one_of(st.sampled_from(SETTING_NAMES), st.sampled_from(["FOO", "symbol", "_X", "BOLL_PERIODS", "Api_Key"]))
_assignment = st.one_of(
    st.builds(lambda n, v: f"{n} = {_literal(v)}", _names, _values),
    st.builds(lambda n, e: f"{n} = {e}", _names, _expressions),
    st.text(max_size=30).map(lambda t: t.replace("\x00", "")),  # junk lines: syntax errors and the like
    st.just(f"API_SECRET = {FUZZ_SECRET}"),
    st.just(f"API_SECRET = '{FUZZ_SECRET}'"),
)
_encodings = st.sampled_from(["utf-8"] * 5 + ["utf-8-sig", "utf-16", "latin-1", "cp1252", "gb18030"])


@st.composite
def settings_sources(draw) -> bytes:
    """A settings file: random assignments in an odd encoding, or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    text = "\n".join(draw(st.lists(_assignment, max_size=6))) + "\n"
    return text.encode(draw(_encodings), errors="replace")


def _holds_the_secret(source: bytes) -> bool:
    """Whether the file gives FUZZ_SECRET to a secret setting (given to SYMBOL it is no secret and may be echoed)."""
    text = source.decode("utf-8", "replace")
    return any(re.search(rf"^\s*{name}\s*=.*{FUZZ_SECRET}", text, re.M) for name in config.SECRET_NAMES)


def _assert_clean_config_outcome(outcome, source: bytes) -> None:
    if isinstance(outcome, config.ConfigError):
        message = str(outcome)
        assert "\n" not in message and "\r" not in message and message
        if _holds_the_secret(source):
            assert FUZZ_SECRET not in message
    else:
        assert isinstance(outcome, config.Config)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=settings_sources())
def test_fuzz_the_settings_loader(tmp_path, source):
    path = tmp_path / "fuzz_settings.py"
    path.write_bytes(source)
    try:
        outcome = config.load_config(str(path), env={})
    except config.ConfigError as err:
        outcome = err
    _assert_clean_config_outcome(outcome, source)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=settings_sources())
def test_fuzz_check_config_on_the_command_line(tmp_path_factory, source):
    d = tmp_path_factory.mktemp("cfgfuzz")
    path = d / "fuzz_settings.py"
    path.write_bytes(source)
    before = snapshot(d)
    proc = run_bollmin("check-config", "--config", str(path), timeout=60)
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        one_line(proc, 2)
        if _holds_the_secret(source):
            assert FUZZ_SECRET not in proc.stderr
    else:
        assert proc.stderr == "" and proc.stdout.startswith("# bollmin settings")
    assert snapshot(d) == before


# ---- 7. fuzzing: kline files -------------------------------------------------------------------------

_cells = st.one_of(
    st.floats(min_value=1e-9, max_value=1e12).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-0", "1e999", "1e-999", "9" * 400, "0x10", "1_000", "１２", "٣",
                     "\ufeff1", "1e300", "\u2028"]),
    st.text(max_size=8),
)


@st.composite
def kline_files(draw) -> tuple[str, bytes]:
    """(file name, bytes): a mostly valid kline CSV with random damage, in an odd encoding; or noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["k.csv", "k.csv.gz"])), draw(st.binary(max_size=2000))
    step = draw(st.sampled_from([60_000, 180_000, 900_000]))
    t0 = draw(st.sampled_from([1_672_531_200_000] * 4 + [0, history.MAX_OPEN_TIME_MS - 10**9, 10**16]))
    t0 -= t0 % step
    n = draw(st.integers(0, 40))
    header = draw(st.sampled_from([HEADER, "open_time_ms,open,high,low,close", "", "open_time,open,high,low,"
                                   "close,volume,close_time,quote_volume,count,taker_buy_volume,"
                                   "taker_buy_quote_volume,ignore", "time;open;high;low;close"]))
    rows = [header] if header else []
    raw = header == "" or header.startswith("open_time,")
    for i in range(n):
        base = draw(st.floats(min_value=1e-6, max_value=1e9))
        lo, o, c, hi = sorted([base, base * 1.01, base * 0.995, base * 1.02])
        cells = [str(t0 + i * step), repr(o), repr(hi), repr(lo), repr(c), "1.0"]
        if raw:
            cells += [str(t0 + (i + 1) * step - 1), "1", "2", "0.5", "0.5", "0"]
        if draw(st.integers(0, 4)) == 0:  # damage one cell
            cells[draw(st.integers(0, len(cells) - 1))] = draw(_cells)
        rows.append(",".join(cells))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(rows) + draw(st.sampled_from([newline, "", newline * 3]))
    data = text.encode(draw(_encodings), errors="replace")
    if draw(st.booleans()):
        return "k.csv.gz", gzip.compress(data)
    return "k.csv", data


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=kline_files())
def test_fuzz_the_kline_reader_and_the_backtest(tmp_path, case):
    """Read the file; what reads is also played through the backtest (absurd but finite prices)."""
    import io

    from backtest import main_backtest

    name, data = case
    path = tmp_path / name
    path.write_bytes(data)
    try:
        candles = history.read_candles(str(path))
    except history.HistoryError as err:
        assert "\n" not in str(err) and "\r" not in str(err) and str(path) in str(err)
        return
    assert candles and all(0 <= c.open_time_ms <= history.MAX_OPEN_TIME_MS for c in candles)
    assert all(c.low <= min(c.open, c.close) and c.high >= max(c.open, c.close) for c in candles)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main_backtest(_FUZZ_CFG, str(path), True, None, out=out, err=err)
    except history.HistoryError as exc:
        assert "\n" not in str(exc)
        return
    assert code == 0
    assert "summary" in json.loads(out.getvalue().splitlines()[-1])


_FUZZ_CFG = config.load_config(None, env={})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=kline_files())
def test_fuzz_backtest_on_the_command_line(tmp_path_factory, case):
    d = tmp_path_factory.mktemp("klinefuzz")
    name, data = case
    path = d / name
    path.write_bytes(data)
    cfg = settings_file(d, "")
    db = d / "out" / "bt.db"
    before = snapshot(d)
    proc = run_bollmin("backtest", "--config", cfg, "--klines", str(path), "--json", "--db", str(db), timeout=120)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    if proc.returncode == 2:
        one_line(proc, 2)
        assert snapshot(d) == before and not db.parent.exists()
    else:
        lines = [json.loads(x) for x in proc.stdout.splitlines()]
        assert "summary" in lines[-1] and db.exists()
