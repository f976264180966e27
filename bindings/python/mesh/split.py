"""Traffic splits: weighted backends (SMI TrafficSplit, dstOverrides)."""

import ctypes
import random as _random
from typing import Iterator, List, NamedTuple, Optional, Union

from . import _lib
from ._lib import lib
from .context import (Context, Handle, buffer, call_with_diags, cstr, pystr, resolve_ctx, u)
from .errors import InvalidArgument, check

__all__ = ["Split", "Backend", "WEIGHT_TOTAL"]

# Normalised weights add up to this (MESH_WEIGHT_TOTAL).
WEIGHT_TOTAL = 10000


class Backend(NamedTuple):
    """A backend of a split: its weight as written, in thousandths
    (1000 = weight 1), and normalised so that all add up to WEIGHT_TOTAL."""

    name: str
    weight_milli: int
    weight: int


class Split(Handle):
    """A split of one logical service between weighted backends.

    Split(service, namespace) starts a builder: add() backends, then seal().
    Split.parse() and the splits of manifests and profiles come sealed.
    A sealed split is immutable and may be picked from by many threads.
    """

    _free_fn = lib.mesh_split_unref
    _what = "split"

    def __init__(self, service: str, namespace: Optional[str] = None,
                 ctx: Optional[Context] = None):
        service_b = cstr(service, "service")
        ns_b = cstr(namespace, "namespace", allow_none=True)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.split_p()
        try:
            check(lib.mesh_split_new(ctx_ptr, service_b, ns_b, ctypes.byref(h)))
        except BaseException:
            ctx._release()
            raise
        self._adopt(ctx, h)
        self._sealed = False
        self.warnings = []

    @classmethod
    def parse(cls, text: Union[str, bytes], file: Optional[str] = None,
              ctx: Optional[Context] = None) -> "Split":
        """Parse exactly one TrafficSplit (YAML or JSON). Raises ParseError
        with .diagnostics on error; warnings are kept in .warnings."""
        buf = buffer(text)
        file_b = cstr(file, "file", allow_none=True)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.split_p()
        try:
            rc, diags = call_with_diags(ctx_ptr, lambda d: lib.mesh_split_parse(
                ctx_ptr, file_b, buf, len(buf), d, ctypes.byref(h)))
            check(rc, diags)
        except BaseException:
            ctx._release()
            raise
        return cls._wrap(ctx, h, sealed=True, warnings=diags)

    @classmethod
    def _wrap(cls, ctx: Context, h, sealed: bool, warnings=()) -> "Split":
        """Own h, already counted against ctx."""
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        self._sealed = sealed
        self.warnings = list(warnings)
        return self

    @classmethod
    def _borrow(cls, ctx: Context, borrowed) -> Optional["Split"]:
        """Take a reference to a split owned by something else (a manifest, a
        profile), so that it outlives its owner."""
        if not borrowed:
            return None
        ctx._acquire()
        h = lib.mesh_split_ref(borrowed)
        return cls._wrap(ctx, h, sealed=True)

    # -- building ----------------------------------------------------------
    def add(self, backend: str, weight_milli: int) -> "Split":
        """Add a backend with a weight in thousandths (1000 = weight 1).
        Returns self, so calls chain. InvalidArgument once sealed."""
        check(lib.mesh_split_add(self._handle, cstr(backend, "backend"),
                                 u(weight_milli, 64, "weight_milli")))
        return self

    def seal(self) -> "Split":
        """Freeze and normalise. InvalidArgument when every weight is zero."""
        check(lib.mesh_split_seal(self._handle))
        self._sealed = True
        return self

    @property
    def sealed(self) -> bool:
        return self._sealed

    # -- reading -----------------------------------------------------------
    @property
    def service(self) -> str:
        return pystr(lib.mesh_split_service(self._handle))

    @property
    def namespace(self) -> str:
        return pystr(lib.mesh_split_namespace(self._handle))

    def __len__(self) -> int:
        return lib.mesh_split_count(self._handle)

    @property
    def backends(self) -> List[Backend]:
        h = self._handle
        return [Backend(pystr(lib.mesh_split_backend(h, i)),
                        lib.mesh_split_weight_milli(h, i),
                        lib.mesh_split_weight(h, i))
                for i in range(lib.mesh_split_count(h))]

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def pick_index(self, rnd: Optional[int] = None) -> int:
        """The index of a backend chosen with 32 random bits (rnd; drawn from
        the random module when None). Each backend's chance is its weight
        over the total. InvalidArgument for an unsealed split."""
        if rnd is None:
            rnd = _random.getrandbits(32)
        i = lib.mesh_split_pick(self._handle, u(rnd, 32, "rnd"))
        if i == _lib.SIZE_MAX:
            raise InvalidArgument(detail="the split is not sealed")
        return i

    def pick(self, rnd: Optional[int] = None) -> str:
        """The name of a backend chosen with 32 random bits (see pick_index)."""
        h = self._handle
        return pystr(lib.mesh_split_backend(h, self.pick_index(rnd)))

    def __repr__(self):
        if self.closed:
            return "<mesh.Split closed>"
        return "<mesh.Split %s/%s %s%s>" % (
            self.namespace, self.service,
            ", ".join("%s=%d" % (b.name, b.weight_milli) for b in self.backends),
            "" if self._sealed else " (unsealed)")
