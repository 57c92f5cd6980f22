"""The real ``bollmin.py`` command line as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from support.env import clean_env
from support.paths import ROOT


def run_bollmin(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python bollmin.py ARGS`` with cwd = the project; text output captured, never raises on exit code."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "bollmin.py"), *args], cwd=ROOT,
                          env=clean_env() if env is None else env, capture_output=True, text=True,
                          timeout=timeout, check=False)
