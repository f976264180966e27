"""ServiceProfiles: route matching, response classification, timeouts, budgets."""

import ctypes
from typing import List, NamedTuple, Optional, Union

from . import _lib
from ._lib import lib
from .context import (Context, Handle, buffer, call_with_diags, cstr, i32, pystr, resolve_ctx, u)
from .errors import check
from .split import Split

__all__ = ["Profile", "Route", "RetryBudget", "classify_default",
           "ROUTE_DEFAULT_TIMEOUT_MS", "DEFAULT_BUDGET"]

# Linkerd's defaults (mesh/profile.h).
ROUTE_DEFAULT_TIMEOUT_MS = 10000


class RetryBudget(NamedTuple):
    """A retry budget: retryRatio, minRetriesPerSecond and ttl (ms)."""

    ratio: float
    min_per_sec: int
    ttl_ms: int


DEFAULT_BUDGET = RetryBudget(0.2, 10, 10000)


def _grpc(grpc_status) -> int:
    return -1 if grpc_status is None else i32(grpc_status, "grpc_status")


def classify_default(status: int, grpc_status: Optional[int] = None) -> bool:
    """Linkerd's default classification (the [DEFAULT] route): True when the
    response is a failure: HTTP 5xx, or for gRPC (grpc_status not None)
    DataLoss, DeadlineExceeded, Internal, PermissionDenied, Unavailable and
    Unknown."""
    return lib.mesh_route_classify(None, u(status, 32, "status"), _grpc(grpc_status)) == 1


class Profile(Handle):
    """A compiled ServiceProfile. Immutable; match and classify are
    thread-safe. Made by Profile.parse, Profile.from_split, with_split, or
    taken from a Manifest (it then outlives the manifest)."""

    _free_fn = lib.mesh_profile_unref
    _what = "profile"

    def __init__(self, *a, **kw):
        raise TypeError("use Profile.parse(text) or Manifest.load(path).profiles")

    @classmethod
    def parse(cls, text: Union[str, bytes], file: Optional[str] = None,
              ctx: Optional[Context] = None) -> "Profile":
        """Parse exactly one ServiceProfile document (YAML or JSON).

        ParseError (with .diagnostics) when it is malformed, of another kind
        or more than one document; warnings are kept in .warnings."""
        buf = buffer(text)
        file_b = cstr(file, "file", allow_none=True)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.profile_p()
        try:
            rc, diags = call_with_diags(ctx_ptr, lambda d: lib.mesh_profile_parse(
                ctx_ptr, file_b, buf, len(buf), d, ctypes.byref(h)))
            check(rc, diags)
        except BaseException:
            ctx._release()
            raise
        return cls._wrap(ctx, h, diags)

    @classmethod
    def _wrap(cls, ctx: Context, h, warnings=()) -> "Profile":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        self.warnings = list(warnings)
        return self

    @classmethod
    def _borrow(cls, ctx: Context, borrowed) -> Optional["Profile"]:
        """Take a reference to a profile another object owns."""
        if not borrowed:
            return None
        ctx._acquire()
        return cls._wrap(ctx, lib.mesh_profile_ref(borrowed))

    @classmethod
    def from_split(cls, split: Split, port: int, cluster_domain: Optional[str] = None,
                   ctx: Optional[Context] = None) -> "Profile":
        """A profile with no routes, the default budget, and dstOverrides
        from split: how a TrafficSplit reaches the proxy."""
        return cls._with_split(None, split, port, cluster_domain, resolve_ctx(ctx))

    def with_split(self, split: Split, port: int,
                   cluster_domain: Optional[str] = None) -> "Profile":
        """A new profile equal to this one with its dstOverrides replaced by
        split's backends, each as "<backend>.<ns>.svc.<cluster_domain>:<port>"."""
        return self._with_split(self, split, port, cluster_domain, self._ctx)

    @classmethod
    def _with_split(cls, base, split, port, cluster_domain, ctx) -> "Profile":
        if not isinstance(split, Split):
            raise TypeError("split must be a mesh.Split")
        port = u(port, 16, "port")
        dom = cstr(cluster_domain, "cluster_domain", allow_none=True)
        base_h = base._handle if base is not None else None
        split_h = split._handle
        ctx_ptr = ctx._acquire()
        h = _lib.profile_p()
        try:
            check(lib.mesh_profile_with_split(ctx_ptr, base_h, split_h, dom, port,
                                              ctypes.byref(h)))
        except BaseException:
            ctx._release()
            raise
        return cls._wrap(ctx, h)

    @staticmethod
    def from_openapi(text: Union[str, bytes], name: str, namespace: Optional[str] = None,
                     file: Optional[str] = None, ctx: Optional[Context] = None) -> str:
        """Generate ServiceProfile YAML from an OpenAPI 2 or 3 document, as
        `linkerd profile --open-api` does. name is the service's FQDN, e.g.
        "web.default.svc.cluster.local". ParseError with diagnostics when the
        document is malformed."""
        buf = buffer(text)
        name_b = cstr(name, "name")
        ns_b = cstr(namespace, "namespace", allow_none=True)
        file_b = cstr(file, "file", allow_none=True)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx.ptr
        out = ctypes.c_void_p()
        rc, diags = call_with_diags(ctx_ptr, lambda d: lib.mesh_profile_from_openapi(
            ctx_ptr, file_b, buf, len(buf), name_b, ns_b, d, ctypes.byref(out)))
        if rc < 0:
            lib.mesh_free_string(ctx_ptr, out)  # NULL on failure; harmless either way
            check(rc, diags)
        try:
            return ctypes.string_at(out.value).decode("utf-8", "replace") if out.value else ""
        finally:
            lib.mesh_free_string(ctx_ptr, out)

    # -- reading -----------------------------------------------------------
    @property
    def name(self) -> str:
        return pystr(lib.mesh_profile_name(self._handle))

    @property
    def namespace(self) -> str:
        return pystr(lib.mesh_profile_namespace(self._handle))

    @property
    def routes(self) -> List["Route"]:
        h = self._handle
        return [Route(self, lib.mesh_profile_route(h, i))
                for i in range(lib.mesh_profile_route_count(h))]

    def route(self, name: str) -> Optional["Route"]:
        """The route called name, or None."""
        for r in self.routes:
            if r.name == name:
                return r
        return None

    def match(self, method: Union[str, bytes], path: Union[str, bytes]) -> Optional["Route"]:
        """The first route whose condition matches the request, or None (the
        request then counts under "[DEFAULT]"). path is without the query."""
        h = self._handle
        path_b = buffer(path, "path")
        r = lib.mesh_profile_match(h, cstr(method, "method"), path_b, len(path_b))
        return Route(self, r) if r else None

    def classify(self, method, path, status: int, grpc_status: Optional[int] = None) -> bool:
        """Match, then classify with the route found (or the default): True
        when the response is a failure."""
        h = self._handle
        path_b = buffer(path, "path")
        status = u(status, 32, "status")
        grpc = _grpc(grpc_status)
        r = lib.mesh_profile_match(h, cstr(method, "method"), path_b, len(path_b))
        return lib.mesh_route_classify(r, status, grpc) == 1

    @property
    def retry_budget(self) -> RetryBudget:
        """spec.retryBudget, or Linkerd's default (0.2, 10, 10 s)."""
        ratio, mps, ttl = ctypes.c_double(), ctypes.c_uint32(), ctypes.c_uint64()
        lib.mesh_profile_retry_budget(self._handle, ctypes.byref(ratio), ctypes.byref(mps),
                                      ctypes.byref(ttl))
        return RetryBudget(ratio.value, mps.value, ttl.value)

    @property
    def dst_overrides(self) -> Optional[Split]:
        """spec.dstOverrides as a Split over authorities, or None."""
        return Split._borrow(self._ctx, lib.mesh_profile_dst_overrides(self._handle))

    @property
    def opaque_ports(self) -> List[int]:
        h = self._handle
        return [lib.mesh_profile_opaque_port(h, i)
                for i in range(lib.mesh_profile_opaque_port_count(h))]

    def __repr__(self):
        if self.closed:
            return "<mesh.Profile closed>"
        return "<mesh.Profile %s/%s, %d routes>" % (
            self.namespace, self.name, lib.mesh_profile_route_count(self._handle))


class Route:
    """A route of a profile. It holds its own reference to the profile, so
    it stays valid after the Profile object (or its manifest) is closed."""

    __slots__ = ("_profile", "_r", "__weakref__")

    def __init__(self, profile: Profile, r):
        # A Profile of our own (one more C reference): closing the caller's
        # Profile object must not leave this route dangling.
        self._profile = Profile._borrow(profile._ctx, profile._handle)
        self._r = r

    @property
    def _route(self):
        self._profile._handle  # raises ClosedError if this route was closed
        return self._r

    @property
    def profile(self) -> Profile:
        return self._profile

    @property
    def name(self) -> str:
        return pystr(lib.mesh_route_name(self._route))

    @property
    def index(self) -> int:
        """The route's position in its profile."""
        return lib.mesh_route_index(self._route)

    @property
    def timeout_ms(self) -> int:
        return lib.mesh_route_timeout_ms(self._route)

    @property
    def is_retryable(self) -> bool:
        return lib.mesh_route_is_retryable(self._route) == 1

    @property
    def retry_budget(self) -> RetryBudget:
        """The budget that governs this route's retries: its own or the
        profile's (see has_own_budget)."""
        return self._budget()[0]

    @property
    def has_own_budget(self) -> bool:
        """True when the route sets its own retryBudget (as the seed does)."""
        return self._budget()[1]

    def _budget(self):
        ratio, mps, ttl = ctypes.c_double(), ctypes.c_uint32(), ctypes.c_uint64()
        own = lib.mesh_route_retry_budget(self._route, ctypes.byref(ratio), ctypes.byref(mps),
                                          ctypes.byref(ttl))
        return RetryBudget(ratio.value, mps.value, ttl.value), own == 1

    def classify(self, status: int, grpc_status: Optional[int] = None) -> bool:
        """True when the response is a failure. The route's first matching
        response class decides, else Linkerd's default (see classify_default)."""
        return lib.mesh_route_classify(self._route, u(status, 32, "status"),
                                       _grpc(grpc_status)) == 1

    def close(self) -> None:
        self._profile.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __eq__(self, other):
        if not isinstance(other, Route):
            return NotImplemented
        return ctypes.addressof(self._r.contents) == ctypes.addressof(other._r.contents)

    def __hash__(self):
        return hash(ctypes.addressof(self._r.contents))

    def __repr__(self):
        if self._profile.closed:
            return "<mesh.Route closed>"
        return "<mesh.Route %s timeout=%dms%s>" % (
            self.name, self.timeout_ms, " retryable" if self.is_retryable else "")
