"""Metrics: counters, gauges and histograms with labels, Prometheus text exposition.

    reg = mesh.Registry()
    requests = reg.counter("request_total", "Total count of HTTP requests.",
                           ["direction", "authority"])
    s = requests.series("outbound", "web:80")    # or .series(direction=..., authority=...)
    s.inc()
    latency = reg.histogram("response_latency_ms", "Latency.", ["direction"])
    latency.series("outbound").observe(12)
    reg.render()                                  # the text /metrics serves

Linkerd's latency buckets are the default (LATENCY_BOUNDS). Everything here
is thread-safe; updates on a Series take no lock in C.
"""

import ctypes
import operator
from typing import Optional, Sequence, Tuple, Union

from . import _lib
from ._lib import lib
from .context import Context, Handle, cstr, pystr, resolve_ctx, u
from .errors import InvalidArgument, RangeError, check

__all__ = ["Registry", "Family", "Series", "COUNTER", "GAUGE", "HISTOGRAM", "LATENCY_BOUNDS",
           "DEFAULT_MAX_SERIES", "MAX_LABEL_VALUE"]

COUNTER = 1
GAUGE = 2
HISTOGRAM = 3
_TYPE_NAMES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}

DEFAULT_MAX_SERIES = 10000  # MESH_METRICS_DEFAULT_MAX_SERIES
MAX_LABEL_VALUE = 1024      # MESH_METRICS_MAX_LABEL_VALUE, in UTF-8 bytes


def _latency_bounds() -> Tuple[int, ...]:
    n = ctypes.c_size_t()
    p = lib.mesh_metrics_latency_bounds(ctypes.byref(n))
    return tuple(p[i] for i in range(n.value))


# Linkerd's response_latency_ms buckets (+Inf implied).
LATENCY_BOUNDS = _latency_bounds()


def _names(labels: Sequence[str], what: str):
    """A C array of label names (or None) and its length."""
    if isinstance(labels, (str, bytes)):
        raise TypeError("%s must be a sequence of names, not a single string" % what)
    bs = [cstr(x, what) for x in labels]
    return ((ctypes.c_char_p * len(bs))(*bs) if bs else None), len(bs)


class Registry(Handle):
    """A registry of metric families, rendered in the Prometheus text format."""

    _free_fn = lib.mesh_metrics_free
    _what = "registry"

    def __init__(self, ctx: Optional[Context] = None):
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.metrics_p()
        try:
            check(lib.mesh_metrics_new(ctx_ptr, ctypes.byref(h)))
        except BaseException:
            ctx._release()
            raise
        self._adopt(ctx, h)

    def _family(self, fn, name, help, labels, *extra) -> "Family":
        name_b = cstr(name, "name")
        help_b = cstr(help, "help", allow_none=True)
        arr, n = _names(labels, "labels")
        f = _lib.family_p()
        check(fn(self._handle, name_b, help_b, arr, n, *extra, ctypes.byref(f)))
        return Family(self, f, tuple(labels))

    def counter(self, name: str, help: Optional[str] = None,
                labels: Sequence[str] = ()) -> "Family":
        """Register (or get back, when identical) a counter family."""
        return self._family(lib.mesh_metrics_counter, name, help, labels)

    def gauge(self, name: str, help: Optional[str] = None,
              labels: Sequence[str] = ()) -> "Family":
        """Register (or get back, when identical) a gauge family."""
        return self._family(lib.mesh_metrics_gauge, name, help, labels)

    def histogram(self, name: str, help: Optional[str] = None, labels: Sequence[str] = (),
                  bounds: Optional[Sequence[int]] = None) -> "Family":
        """Register a histogram with strictly increasing integer upper bounds
        (le, inclusive); None means LATENCY_BOUNDS."""
        if bounds is None:
            arr, n = None, 0
        else:
            bs = [u(b, 64, "bound") for b in bounds]
            if not bs:
                raise InvalidArgument(detail="bounds is empty (None selects the defaults)")
            arr, n = (ctypes.c_uint64 * len(bs))(*bs), len(bs)
        return self._family(lib.mesh_metrics_histogram, name, help, labels, arr, n)

    def process(self) -> None:
        """Add the process collector (process_cpu_seconds_total, ...), read
        from /proc/self at each render."""
        check(lib.mesh_metrics_process(self._handle))

    def render_bytes(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4), as UTF-8 bytes."""
        out = ctypes.c_void_p()
        n = ctypes.c_size_t()
        check(lib.mesh_metrics_render(self._handle, ctypes.byref(out), ctypes.byref(n)))
        try:
            return ctypes.string_at(out, n.value)
        finally:
            # _ptr, not ptr: a closing context stays valid while this registry lives.
            lib.mesh_free_string(self._ctx._ptr, out)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        return self.render_bytes().decode("utf-8")

    def __repr__(self):
        return "<mesh.Registry%s>" % (" closed" if self.closed else "")


class Family:
    """A metric family of a Registry (borrowed from it: it keeps the
    registry alive, and fails with ClosedError once the registry is closed)."""

    def __init__(self, registry: Registry, handle, labels: Tuple[str, ...]):
        self._registry = registry
        self._h = handle
        self.labels = labels

    @property
    def _handle(self):
        self._registry._handle  # raises ClosedError once the registry is closed
        return self._h

    @property
    def name(self) -> str:
        return pystr(lib.mesh_metrics_family_name(self._handle))

    @property
    def type(self) -> int:
        """COUNTER, GAUGE or HISTOGRAM."""
        return lib.mesh_metrics_family_type(self._handle)

    @property
    def series_count(self) -> int:
        return lib.mesh_metrics_family_series_count(self._handle)

    def set_max_series(self, n: int) -> None:
        """Refuse new series past n (at least 1; default DEFAULT_MAX_SERIES)."""
        check(lib.mesh_metrics_family_set_max_series(self._handle, u(n, 64, "max series")))

    def series(self, *values: str, **by_name: str) -> "Series":
        """The series for these label values, positional (in the family's
        label order) or by label name; created the first time. LimitError
        past the family's series limit or for a value over MAX_LABEL_VALUE
        bytes; InvalidArgument for a wrong count or invalid UTF-8."""
        if by_name:
            if values:
                raise TypeError("give label values by position or by name, not both")
            extra = set(by_name) - set(self.labels)
            if extra:
                raise InvalidArgument(detail="unknown label(s): %s" % ", ".join(sorted(extra)))
            missing = [n for n in self.labels if n not in by_name]
            if missing:
                raise InvalidArgument(detail="missing label(s): %s" % ", ".join(missing))
            values = tuple(by_name[n] for n in self.labels)
        arr, n = _names(values, "label value")
        fh = self._handle
        ctx = self._registry._ctx
        ctx._acquire()
        h = _lib.series_p()
        try:
            check(lib.mesh_metrics_series(fh, arr, n, ctypes.byref(h)))
        except BaseException:
            ctx._release()
            raise
        return Series._wrap(ctx, h, self)

    def __repr__(self):
        try:
            return "<mesh.Family %s %s %s>" % (_TYPE_NAMES.get(self.type, "?"), self.name,
                                               list(self.labels))
        except Exception:
            return "<mesh.Family closed>"


class Series(Handle):
    """One series of a family: a reference, valid even after the registry
    is closed or the series removed (updates then go nowhere)."""

    _free_fn = lib.mesh_metrics_series_unref
    _what = "series"

    @classmethod
    def _wrap(cls, ctx: Context, h, family: Family) -> "Series":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        self.family = family
        return self

    def inc(self, n: int = 1) -> None:
        """Counter or gauge: add n (>= 0)."""
        check(lib.mesh_metrics_inc(self._handle, u(n, 64, "n")))

    def dec(self, n: int = 1) -> None:
        """Gauge: subtract n (>= 0)."""
        check(lib.mesh_metrics_dec(self._handle, u(n, 64, "n")))

    def set(self, v: Union[int, float]) -> None:
        """Gauge: set to v (an int, exact up to 2**53, or a float)."""
        if isinstance(v, float):
            check(lib.mesh_metrics_set_double(self._handle, v))
            return
        try:
            v = operator.index(v)
        except TypeError:
            raise TypeError("v must be an int or a float, not %s" % type(v).__name__) from None
        if not -2**63 <= v < 2**63:
            raise RangeError(detail="%d does not fit in int64" % v)
        check(lib.mesh_metrics_set(self._handle, v))

    def observe(self, v: int) -> None:
        """Histogram: record v (an integer >= 0, e.g. milliseconds)."""
        check(lib.mesh_metrics_observe(self._handle, u(v, 64, "v")))

    def remove(self) -> None:
        """Take the series out of its family (it is no longer rendered);
        this handle stays usable. Removing twice is harmless."""
        check(lib.mesh_metrics_series_remove(self._handle))

    @property
    def count(self) -> int:
        """Counter: its value; histogram: the number of observations."""
        return lib.mesh_metrics_count(self._handle)

    @property
    def value(self) -> float:
        """Gauge: its value; counter: its value as a float."""
        return lib.mesh_metrics_value(self._handle)

    @property
    def sum(self) -> int:
        """Histogram: the sum of the observations."""
        return lib.mesh_metrics_sum(self._handle)

    def bucket(self, i: int) -> int:
        """Histogram: observations <= the i-th bound; i == len(bounds) is +Inf."""
        return lib.mesh_metrics_bucket(self._handle, u(i, 64, "i"))

    def __repr__(self):
        if self.closed:
            return "<mesh.Series closed>"
        return "<mesh.Series of %s>" % self.family.labels
