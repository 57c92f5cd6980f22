"""The environment for a product process the tests or benchmarks start: the developer's own
settings, keys and systemd variables must not leak into it."""

from __future__ import annotations

import os

import config
from support.paths import ROOT  # noqa: F401 - puts the product on sys.path for ``import config``

# Besides config.ENVIRONMENT (every variable the product reads): any BOLLMIN_* the product may read
# in future, and BENCH_* (read by bench/botwrap.py, which wraps the bot in benchmarks).
DROP_PREFIXES = ("BOLLMIN_", "BENCH_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any variable the product reads, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in config.ENVIRONMENT and not k.startswith(DROP_PREFIXES)}
    env.update(extra)
    return env
