"""Shared pytest fixtures. Each section belongs to the tests named in its heading; append new
sections rather than rewriting existing ones. Only fixtures live here: the helpers they and the
tests share are in ``tests/support/`` (importing ``support.paths`` puts the project on sys.path)."""

from __future__ import annotations

import pytest
from support.cli import run_bollmin
from support.dbs import build_dashboard_db
from support.paths import MARKET_15M, real_candles

# ---- dashboard (tests/test_dashboard.py, tests/test_dashboard_browser.py) -------------------


@pytest.fixture
def dashboard_db(tmp_path):
    """(path, summary) of a bot-role dashboard DB with a fresh heartbeat."""
    path = str(tmp_path / "bollmin.db")
    return path, build_dashboard_db(path)


@pytest.fixture
def dashboard_db_factory(tmp_path):
    """``make(name, **kwargs) -> (path, summary)`` building DBs with ``build_dashboard_db``."""

    def make(name: str = "bollmin.db", **kwargs):
        path = str(tmp_path / name)
        return path, build_dashboard_db(path, **kwargs)

    return make


# ---- core engine (tests/test_indicators.py, test_state.py, test_engine.py, test_config.py, --------
# ---- test_store.py, test_broker.py, test_backtest.py) -----------------------------------------


@pytest.fixture
def bollmin_cli():
    """``run(*args, env=None)`` → CompletedProcess of ``python bollmin.py ARGS`` (cwd = project)."""
    return run_bollmin


@pytest.fixture
def core_config(tmp_path):
    """``make(text="", name="config.py") -> path``: a settings file whose DB_PATH and LOG_FILE point into
    tmp_path (``tmp_path/"bot"/…``, never created by a well-behaved backtest), followed by ``text``."""

    def make(text: str = "", name: str = "config.py") -> str:
        path = tmp_path / name
        path.write_text(
            f"DB_PATH = {str(tmp_path / 'bot' / 'bollmin.db')!r}\n"
            f"LOG_FILE = {str(tmp_path / 'bot' / 'bollmin.log')!r}\n" + text,
            encoding="utf-8",
        )
        return str(path)

    return make


@pytest.fixture(scope="session")
def candles_15m_2023():
    """The bundled real BTCUSDT 15m candles of 2023 (35,040 ``history.Candle``; a tuple)."""
    return real_candles(MARKET_15M)
