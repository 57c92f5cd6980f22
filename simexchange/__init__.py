"""A simulated Binance USDⓈ-M futures exchange: one account, one or more symbols, each
replaying a kline file as Binance's market streams; REST under ``/fapi``, streams under
``/market`` and ``/private``, a control API under ``/_sim`` (docs/exchange.md).

Run it in-process (``SimExchange``, ``SimExchangeThread``) or as ``python -m simexchange``.
The modules, each one responsibility:

==============  ==========================================================================
``wire``        error replies, signing, parameter parsing, number formatting, WebSocket sends
``catalogue``   the symbols: their rules (filters), exchangeInfo, data derived for a 2nd symbol
``account``     wallet, positions per symbol, margin; checking and filling a MARKET order
``market``      one symbol's kline replay (trades and klines) and its pacing
``streams``     the market WebSocket hub (every symbol's /market streams)
``user``        the listenKey and the account's /private stream
``public``      public history: request weight, injected public 429/418, funding rates
``rest``        the REST routes and their answers
``control``     the /_sim control API
``faults``      the failures the control API injects
``server``      ``SimExchange``: the pieces, the aiohttp app, start/stop, the request log
``thread``      ``SimExchangeThread``
``__main__``    ``python -m simexchange``
==============  ==========================================================================

Two symbols on one account::

    SimExchange(candles, more_symbols={"ETHUSDT": derived_symbol("ETHUSDT", candles)})
"""

from .catalogue import BTCUSDT, ETHUSDT, SymbolData, SymbolSpec, derived_symbol, exchange_info, spec_for
from .server import Listing, SimExchange
from .thread import SimExchangeThread
from .wire import DEMO_API_KEY, DEMO_API_SECRET, ApiError, sign, split_signature, verify_signature

__all__ = [
    "BTCUSDT", "DEMO_API_KEY", "DEMO_API_SECRET", "ETHUSDT", "ApiError", "Listing", "SimExchange",
    "SimExchangeThread", "SymbolData", "SymbolSpec", "derived_symbol", "exchange_info", "sign", "spec_for",
    "split_signature", "verify_signature",
]
