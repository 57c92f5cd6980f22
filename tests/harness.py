"""A stopgap, not a helper module: tests/test_deploy.py (owned elsewhere, not edited on this branch)
still does ``from harness import DATA_1M``. Everything shared is in ``tests/support/``; delete this
file once test_deploy.py imports ``MARKET_1M`` from ``support.paths``. Add nothing here."""

from support.paths import MARKET_1M as DATA_1M  # noqa: F401
