"""Public market history: request weight, injected public 429/418, funding-rate history.

Used by ``bollmin.py download`` (and its tests): every REST answer carries Binance's
``X-MBX-USED-WEIGHT-1M`` (the weight this minute); klines and fundingRate past the per-minute
limit get 429 with ``Retry-After`` (to the next minute), as Binance does; ``/_sim/public_rate_limit``
makes public requests fail with 429/418 after a number of good ones; ``/_sim/corrupt_klines``
spoils one row of the next klines answers. Funding rates are generated from each symbol's
candles: every 8 h, 0.01 % plus 1 % of the price change over the 8 h before, within ±0.75 %,
at the last close. The weight is counted per IP, as on Binance: for every symbol together.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .control import count
from .wire import ApiError, RateLimited, int_param

if TYPE_CHECKING:
    from .server import Listing

FUNDING_EVERY_MS = 8 * 3_600_000


@dataclass
class PublicLimits:
    weight_limit: int = 2400
    minute: int = -1           # wall-clock minute the count below belongs to
    used: int = 0              # weight used this minute
    total: int = 0             # weight used since start (for benchmarks)
    fail_after: int = 0        # public requests that still succeed before the injected failures
    fail_count: int = 0
    fail_status: int = 429
    retry_after_s: int = 1
    corrupt_count: int = 0


def klines_weight(params: dict[str, str]) -> int:
    """Binance's klines weight by ``limit``: [1,100) 1, [100,500) 2, [500,1000] 5, > 1000 10."""
    try:
        limit = int(params.get("limit", 500))
    except ValueError:
        return 1
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class PublicHistory:
    """SimExchange's public market history (a mixin): weights, faults and funding rates."""

    public_limits: PublicLimits
    if TYPE_CHECKING:  # from rest.RestApi
        def _listing(self, params: dict[str, str]) -> Listing: ...
        def _klines(self, params: dict[str, str]) -> list[list[Any]]: ...

    def _public(self, fn: Any, weight_of: Any) -> Any:
        def handler(params: dict[str, str]) -> Any:
            lim = self.public_limits
            self._count_weight(weight_of(params))
            if lim.fail_count > 0:
                if lim.fail_after > 0:
                    lim.fail_after -= 1
                else:
                    lim.fail_count -= 1
                    raise RateLimited(lim.fail_status, "Too many requests; current limit is 2400 requests per "
                                      "minute." if lim.fail_status == 429 else "Way too many requests; IP banned.",
                                      lim.retry_after_s)
            if lim.used > lim.weight_limit:
                raise RateLimited(429, "Too many requests; current limit of IP is 2400 requests per minute.",
                                  max(1, 60 - int(time.time()) % 60))
            result = fn(params)
            if lim.corrupt_count > 0 and fn == self._klines and len(result) > 1:
                lim.corrupt_count -= 1
                result[1] = [*result[1][:2], "-1", *result[1][3:]]  # a high that cannot be
            return result

        return handler

    def _count_weight(self, weight: int) -> None:
        lim = self.public_limits
        minute = int(time.time()) // 60
        if minute != lim.minute:
            lim.minute, lim.used = minute, 0
        lim.used += weight
        lim.total += weight

    async def _weight_header(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(("/fapi/", "/api/")):
            if request.path not in ("/fapi/v1/klines", "/fapi/v1/fundingRate"):
                self._count_weight(1)
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self.public_limits.used)

    def _funding_rate(self, params: dict[str, str]) -> list[dict[str, Any]]:
        listing = self._listing(params)
        limit = int_param(params, "limit", 100)
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        m = listing.market
        first = -(-m.times[0] // FUNDING_EVERY_MS) * FUNDING_EVERY_MS
        last = min(m.clock_ms, end if end is not None else m.clock_ms) // FUNDING_EVERY_MS * FUNDING_EVERY_MS
        lo = first if start is None else max(first, -(-start // FUNDING_EVERY_MS) * FUNDING_EVERY_MS)
        times = list(range(lo, last + 1, FUNDING_EVERY_MS))
        times = times[:limit] if start is not None else times[-limit:]
        return [_funding_record(listing, t) for t in times]

    def _sim_post_public_rate_limit(self, body: dict) -> dict:
        status = int(body.get("status", 429))
        if status not in (429, 418):
            raise ValueError("status must be 429 or 418")
        lim = self.public_limits
        lim.fail_count, lim.fail_status = count(body), status
        lim.retry_after_s, lim.fail_after = int(body.get("retry_after", 1)), int(body.get("after", 0))
        return {"count": lim.fail_count, "after": lim.fail_after, "status": status, "retry_after": lim.retry_after_s}

    def _sim_post_weight_limit(self, body: dict) -> dict:
        self.public_limits.weight_limit = int(body["limit"])
        return {"limit": self.public_limits.weight_limit}

    def _sim_post_corrupt_klines(self, body: dict) -> dict:
        self.public_limits.corrupt_count = count(body)
        return {"count": self.public_limits.corrupt_count}

    def _sim_get_weight(self, body: dict) -> dict:
        lim = self.public_limits
        return {"used_this_minute": lim.used, "total": lim.total, "limit": lim.weight_limit}


def _funding_record(listing: Listing, t: int) -> dict[str, Any]:
    m = listing.market
    now = m.candles[max(bisect.bisect_right(m.times, t - 1) - 1, 0)].close
    before = m.candles[max(bisect.bisect_right(m.times, t - FUNDING_EVERY_MS - 1) - 1, 0)].close
    rate = max(-0.0075, min(0.0075, 0.0001 + 0.01 * (now - before) / before))
    return {"symbol": listing.symbol, "fundingTime": t, "fundingRate": f"{rate:.8f}", "markPrice": f"{now:.8f}"}
