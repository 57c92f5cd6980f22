"""Failures the control API (``/_sim/...``) injects, each for the next ``count`` requests of
its kind. Request-level ones (delay, rate limit, clock skew) hit the whole exchange; order
faults belong to one symbol (``/_sim/fail_orders {"symbol": ...}``, default the first listed):
an order counts against the faults of the symbol it names, or of the first symbol when it
names none that is listed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Faults:
    """Request-level faults of the whole exchange."""

    delay_count: int = 0
    delay_ms: int = 0
    rate_count: int = 0
    rate_status: int = 429
    retry_after_s: int = 1
    rate_path: str | None = None   # only requests to this path are limited (None: every signed request)
    skew_ms: int = 0


@dataclass
class OrderFaults:
    """Faults of one symbol's ``POST /fapi/v1/order``."""

    fail_orders: int = 0
    fail_mode: str = "after"       # "after": executed, reply lost; "before": not executed
    fail_status: int = 503
    fail_code: int | None = None
    reject_orders: int = 0
    reject: tuple[int, int, str] = (400, -2019, "Margin is insufficient.")
    order_latency_ms: int = 0      # every order is answered this long after it executes
