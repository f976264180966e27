"""Retries: the retry budget (tower's TpsBudget, as Linkerd) and backoff."""

import ctypes
import random as _random
import time
from typing import Optional

from . import _lib
from ._lib import lib
from .context import Context, Handle, resolve_ctx, u
from .errors import RangeError, check

__all__ = ["Budget", "backoff_ms", "BACKOFF_BASE_MS", "BACKOFF_MAX_MS", "now_ms"]

BACKOFF_BASE_MS = 25
BACKOFF_MAX_MS = 250


def now_ms() -> int:
    """Monotonic milliseconds, the clock the budget expects by default."""
    return time.monotonic_ns() // 1000000


def _now(t: Optional[int]) -> int:
    return now_ms() if t is None else u(t, 64, "now_ms")


class Budget(Handle):
    """A retry budget: every original request deposits, every retry
    withdraws 1/ratio deposits, deposits expire after ttl_ms, and a reserve
    of min_per_sec retries a second is always there. Times are monotonic
    milliseconds (now_ms() when omitted); pass them explicitly for exact
    tests. Thread-safe."""

    _free_fn = lib.mesh_budget_free
    _what = "budget"

    def __init__(self, ratio: float = 0.2, min_per_sec: int = 10, ttl_ms: int = 10000,
                 now_ms: Optional[int] = None, ctx: Optional[Context] = None):
        try:
            ratio = float(ratio)
        except (TypeError, ValueError):
            raise TypeError("ratio must be a number, not %s" % type(ratio).__name__) from None
        if ratio != ratio:  # NaN compares false to every bound in C, say it here
            raise RangeError(detail="ratio is NaN")
        mps = u(min_per_sec, 32, "min_per_sec")
        ttl = u(ttl_ms, 64, "ttl_ms")
        now = _now(now_ms)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.budget_p()
        try:
            check(lib.mesh_budget_new(ctx_ptr, ratio, mps, ttl, now, ctypes.byref(h)))
        except BaseException:
            ctx._release()
            raise
        self._adopt(ctx, h)
        self.ratio, self.min_per_sec, self.ttl_ms = ratio, mps, ttl

    @classmethod
    def for_route(cls, route, now_ms: Optional[int] = None,
                  ctx: Optional[Context] = None) -> "Budget":
        """A budget with the parameters that govern route's retries."""
        b = route.retry_budget
        return cls(b.ratio, b.min_per_sec, b.ttl_ms, now_ms, ctx)

    def deposit(self, now_ms: Optional[int] = None) -> None:
        """Record an original (non-retry) request."""
        lib.mesh_budget_deposit(self._handle, _now(now_ms))

    def withdraw(self, now_ms: Optional[int] = None) -> bool:
        """Ask to retry: True when the budget allows it (and it is charged)."""
        return lib.mesh_budget_withdraw(self._handle, _now(now_ms)) == 1

    def balance(self, now_ms: Optional[int] = None) -> int:
        """The balance in deposit units, reserve included."""
        return lib.mesh_budget_balance(self._handle, _now(now_ms))

    def __repr__(self):
        if self.closed:
            return "<mesh.Budget closed>"
        return "<mesh.Budget ratio=%g min_per_sec=%d ttl_ms=%d>" % (
            self.ratio, self.min_per_sec, self.ttl_ms)


def backoff_ms(base_ms: int = BACKOFF_BASE_MS, max_ms: int = BACKOFF_MAX_MS, attempt: int = 0,
               rnd: Optional[int] = None) -> int:
    """Exponential backoff with full jitter: uniform in
    [0, min(max_ms, base_ms * 2**attempt)], from 32 random bits (drawn from
    the random module when rnd is None). attempt counts from 0."""
    if rnd is None:
        rnd = _random.getrandbits(32)
    return lib.mesh_backoff_ms(u(base_ms, 64, "base_ms"), u(max_ms, 64, "max_ms"),
                               u(attempt, 32, "attempt"), u(rnd, 32, "rnd"))
