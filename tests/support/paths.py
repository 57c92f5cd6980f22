"""The repository root and the bundled market data. Importing this puts the root on ``sys.path``
(the product's modules are imported by name: ``import store``)."""

from __future__ import annotations

import functools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MARKET_15M = os.path.join(ROOT, "marketdata", "btcusdt_um_15m_2023.csv.gz")  # BTCUSDT 15m, all of 2023
MARKET_1M = os.path.join(ROOT, "marketdata", "btcusdt_um_1m_2025-05.csv.gz")  # BTCUSDT 1m, May 2025
PAYLOADS = os.path.join(ROOT, "marketdata", "payloads")  # captured Binance messages


@functools.cache
def real_candles(path: str):
    """The ``history.Candle`` of a bundled file, read once per process (a tuple)."""
    import history

    return tuple(history.read_candles(path))
