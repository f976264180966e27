"""Load balancing: power of two choices over Peak-EWMA, with failure accrual (as Linkerd)."""

import ctypes
import enum
import random as _random
import threading
import time
import weakref
from typing import List, Optional

from . import _lib
from ._lib import lib
from .context import Context, Handle, cstr, pystr, resolve_ctx, u
from .errors import InvalidArgument, RangeError, check

__all__ = ["Balancer", "Endpoint", "EndpointState", "now_ns", "DECAY_NS", "DEFAULT_RTT_NS",
           "FAILURE_THRESHOLD", "MIN_PENALTY_NS", "MAX_PENALTY_NS", "JITTER", "WEIGHT_DEFAULT"]

# Linkerd's defaults (mesh/balance.h).
DECAY_NS = 10_000_000_000
DEFAULT_RTT_NS = 30_000_000
FAILURE_THRESHOLD = 7
MIN_PENALTY_NS = 1_000_000_000
MAX_PENALTY_NS = 60_000_000_000
JITTER = 0.5
WEIGHT_DEFAULT = 1000


class EndpointState(enum.IntEnum):
    """An endpoint's breaker (MESH_ENDPOINT_*)."""

    READY = 0
    OPEN = 1
    PROBATION = 2


def now_ns() -> int:
    """Monotonic nanoseconds, the clock the balancer expects by default."""
    return time.monotonic_ns()


def _now(t: Optional[int], what: str = "now_ns") -> int:
    return now_ns() if t is None else u(t, 64, what)


def _rnd(r: Optional[int], what: str) -> int:
    return _random.getrandbits(32) if r is None else u(r, 32, what)


class Endpoint(Handle):
    """One endpoint of a Balancer. The object holds its own reference, so it
    stays readable after the endpoint is removed; it is closed with its
    balancer."""

    _free_fn = lib.mesh_endpoint_unref
    _what = "endpoint"

    def __init__(self):
        raise TypeError("endpoints come from Balancer.add() and Balancer.pick()")

    @classmethod
    def _wrap(cls, balancer: "Balancer", ptr) -> "Endpoint":
        self = cls.__new__(cls)
        ctx = balancer.context
        ctx._acquire()
        self._adopt(ctx, lib.mesh_endpoint_ref(ptr))
        self._balancer = balancer  # the balancer must outlive the C endpoint
        return self

    @property
    def addr(self) -> str:
        return pystr(lib.mesh_endpoint_addr(self._handle))

    @property
    def weight(self) -> int:
        return lib.mesh_endpoint_weight(self._handle)

    @property
    def active(self) -> bool:
        """True while the endpoint is in its balancer (not removed)."""
        return lib.mesh_endpoint_active(self._handle) == 1

    @property
    def state(self) -> EndpointState:
        return EndpointState(lib.mesh_endpoint_state(self._handle))

    @property
    def pending(self) -> int:
        return lib.mesh_endpoint_pending(self._handle)

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return lib.mesh_endpoint_failures(self._handle)

    @property
    def retry_at_ns(self) -> int:
        """When an open breaker's penalty ends; 0 when it is not open."""
        return lib.mesh_endpoint_retry_at(self._handle)

    def rtt_ns(self, now_ns: Optional[int] = None) -> float:
        """The RTT estimate at now_ns, decay included."""
        return lib.mesh_endpoint_rtt(self._handle, _now(now_ns))

    def cost(self, now_ns: Optional[int] = None) -> float:
        """rtt * (pending + 1) * 1000 / weight: what a pick compares."""
        return lib.mesh_endpoint_cost(self._handle, _now(now_ns))

    def __repr__(self):
        if self.closed:
            return "<mesh.Endpoint closed>"
        return "<mesh.Endpoint %s %s pending=%d%s>" % (
            self.addr, self.state.name.lower(), self.pending, "" if self.active else " removed")


class Balancer(Handle):
    """A p2c + Peak-EWMA balancer with consecutive-failure circuit breaking.

    Times are monotonic nanoseconds (now_ns() when omitted) and randomness
    is 32-bit integers (the random module when omitted); pass both for exact
    tests. Thread-safe. Every pick() must be followed by one done().
    """

    _free_fn = lib.mesh_balance_free
    _what = "balancer"

    def __init__(self, decay_ns: int = DECAY_NS, default_rtt_ns: int = DEFAULT_RTT_NS,
                 failure_threshold: int = FAILURE_THRESHOLD,
                 min_penalty_ns: int = MIN_PENALTY_NS, max_penalty_ns: int = MAX_PENALTY_NS,
                 jitter: float = JITTER, ctx: Optional[Context] = None):
        try:
            jitter = float(jitter)
        except (TypeError, ValueError):
            raise TypeError("jitter must be a number, not %s" % type(jitter).__name__) from None
        if jitter != jitter:
            raise RangeError(detail="jitter is NaN")
        args = (u(decay_ns, 64, "decay_ns"), u(default_rtt_ns, 64, "default_rtt_ns"),
                u(failure_threshold, 32, "failure_threshold"),
                u(min_penalty_ns, 64, "min_penalty_ns"), u(max_penalty_ns, 64, "max_penalty_ns"))
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        o = _lib.balance_opts_p()
        h = _lib.balance_p()
        try:
            check(lib.mesh_balance_opts_new(ctx_ptr, ctypes.byref(o)))
            try:
                check(lib.mesh_balance_opts_set_decay(o, args[0]), detail="decay_ns")
                check(lib.mesh_balance_opts_set_default_rtt(o, args[1]), detail="default_rtt_ns")
                check(lib.mesh_balance_opts_set_failure_threshold(o, args[2]),
                      detail="failure_threshold")
                check(lib.mesh_balance_opts_set_penalty(o, args[3], args[4]),
                      detail="min_penalty_ns, max_penalty_ns")
                check(lib.mesh_balance_opts_set_jitter(o, jitter), detail="jitter")
                check(lib.mesh_balance_new(ctx_ptr, o, ctypes.byref(h)))
            finally:
                lib.mesh_balance_opts_free(o)
        except BaseException:
            ctx._release()
            raise
        self._adopt(ctx, h)
        # One Python object per C endpoint, so that identity comparisons work.
        self._eps = weakref.WeakValueDictionary()
        self._eps_lock = threading.Lock()

    def _endpoint(self, ptr) -> Endpoint:
        key = ctypes.cast(ptr, ctypes.c_void_p).value
        with self._eps_lock:
            ep = self._eps.get(key)
            if ep is None or ep.closed:
                ep = Endpoint._wrap(self, ptr)
                self._eps[key] = ep
            return ep

    def close(self) -> None:
        """Free the balancer; its Endpoint objects are closed first."""
        eps = getattr(self, "_eps", None)
        if eps is not None:
            with self._eps_lock:
                live = list(eps.values())
                eps.clear()
            for ep in live:
                ep.close()
        super().close()

    def add(self, addr: str, weight: int = WEIGHT_DEFAULT) -> Endpoint:
        """Add an endpoint. InvalidArgument for an address already present,
        RangeError for weight 0, LimitError past 65536 endpoints."""
        p = _lib.endpoint_p()
        check(lib.mesh_balance_add(self._handle, cstr(addr, "addr"), u(weight, 32, "weight"),
                                   None, ctypes.byref(p)))
        return self._endpoint(p)

    def remove(self, ep: Endpoint) -> None:
        """Take ep out: no longer picked; requests in flight finish normally.
        NotFound when it is not in this balancer."""
        if not isinstance(ep, Endpoint):
            raise TypeError("ep must be a mesh.Endpoint, not %s" % type(ep).__name__)
        check(lib.mesh_balance_remove(self._handle, ep._handle))

    def __len__(self) -> int:
        return lib.mesh_balance_count(self._handle)

    @property
    def ready_count(self) -> int:
        return lib.mesh_balance_ready_count(self._handle)

    @property
    def endpoints(self) -> List[Endpoint]:
        out = []
        h = self._handle
        i = 0
        while True:
            p = lib.mesh_balance_endpoint(h, i)
            if not p:
                return out
            out.append(self._endpoint(p))
            lib.mesh_endpoint_unref(p)  # the Endpoint object holds its own
            i += 1

    def pick(self, now_ns: Optional[int] = None, rnd_a: Optional[int] = None,
             rnd_b: Optional[int] = None) -> Endpoint:
        """Choose an endpoint for one request and count it pending.
        UnavailableError when none can be picked (none, or all breakers open)."""
        p = _lib.endpoint_p()
        check(lib.mesh_balance_pick(self._handle, _now(now_ns), _rnd(rnd_a, "rnd_a"),
                                    _rnd(rnd_b, "rnd_b"), ctypes.byref(p)))
        return self._endpoint(p)

    def done(self, ep: Endpoint, start_ns: int, success: bool = True,
             now_ns: Optional[int] = None, rnd: Optional[int] = None) -> None:
        """The end of a request to ep picked at start_ns: records its RTT and
        outcome. rnd jitters the penalty if this failure opens the breaker."""
        if not isinstance(ep, Endpoint):
            raise TypeError("ep must be a mesh.Endpoint, not %s" % type(ep).__name__)
        if ep._balancer is not self:
            raise InvalidArgument(detail="the endpoint belongs to another balancer")
        self._handle  # noqa: B018 - a closed balancer raises ClosedError here
        lib.mesh_balance_done(ep._handle, _now(now_ns), u(start_ns, 64, "start_ns"),
                              1 if success else 0, _rnd(rnd, "rnd"))

    def __repr__(self):
        if self.closed:
            return "<mesh.Balancer closed>"
        return "<mesh.Balancer %d endpoints, %d ready>" % (len(self), self.ready_count)
