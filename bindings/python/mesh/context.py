"""The libmesh context (log hook, random source) and the handle base class.

Every C object is made with a context and borrows it, so every Python object
that owns a C handle keeps its Context alive and is counted by it: the C
context is freed only once the last of them is gone, whatever order the
garbage collector finalises them in.
"""

import ctypes
import operator
import threading
from typing import Callable, Optional, Union

from . import _lib
from ._lib import lib
from .errors import ClosedError, InvalidArgument, RangeError, check, read_diags

__all__ = ["Context", "default_context", "LOG_ERROR", "LOG_WARN", "LOG_INFO", "LOG_DEBUG"]

LOG_ERROR = 3
LOG_WARN = 4
LOG_INFO = 6
LOG_DEBUG = 7

_MESH_ERR_IO = -6


class Context:
    """A mesh_ctx: the log hook and random source every other object uses.

    One default context, shared by everything that is not given one, is made
    on first use (default_context()). Make your own to route libmesh's log
    lines somewhere, or to supply randomness in tests. Set hooks before the
    context is shared between threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._live = 0          # objects made with this context and not yet freed
        self._closing = False
        self._ptr = None
        # Callbacks handed to C are kept here for the context's lifetime (a
        # replaced one may still be running in another thread, so the old
        # ones are kept too).
        self._callbacks = []
        self._log_fn = None
        ptr = _lib.ctx_p()
        check(lib.mesh_ctx_new(ctypes.byref(ptr)))
        self._ptr = ptr
        # Bound now: at interpreter exit the module globals may be gone.
        self._free = lib.mesh_ctx_free

    # -- lifetime --------------------------------------------------------
    def _acquire(self) -> _lib.ctx_p:
        """Count one more object made with this context; return the C pointer."""
        with self._lock:
            if self._ptr is None or self._closing:
                raise ClosedError(detail="the context is closed")
            self._live += 1
            return self._ptr

    def _release(self) -> None:
        with self._lock:
            self._live -= 1
            free_now = self._closing and self._live == 0
        if free_now:
            self._really_free()

    def _really_free(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._free(ptr)

    @property
    def ptr(self) -> _lib.ctx_p:
        if self._ptr is None or self._closing:
            raise ClosedError(detail="the context is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None or self._closing

    def close(self) -> None:
        """Free the C context once no object made with it is left.

        Objects still alive keep working; new ones cannot be made.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            free_now = self._live == 0
        if free_now:
            self._really_free()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- hooks -----------------------------------------------------------
    def set_log(self, fn: Optional[Callable[[int, str], None]], max_level: int = LOG_INFO) -> None:
        """Send libmesh's log lines at or below max_level to fn(level, line).

        fn None turns logging off. Exceptions raised by fn are swallowed:
        they cannot cross the C library. Levels: LOG_ERROR (3), LOG_WARN (4),
        LOG_INFO (6), LOG_DEBUG (7).
        """
        max_level = operator.index(max_level)
        if not -2**31 <= max_level < 2**31:
            raise RangeError(detail="max_level out of range")
        if fn is None:
            check(lib.mesh_ctx_set_log(self.ptr, max_level, _lib.LOG_FN(), None))
            self._log_fn = None
            return
        if not callable(fn):
            raise TypeError("fn must be callable or None")

        def trampoline(ud, level, line, fn=fn):
            try:
                fn(level, line.decode("utf-8", "replace") if line is not None else "")
            except BaseException:  # noqa: B902 - nothing may unwind into C
                pass

        cb = _lib.LOG_FN(trampoline)
        self._callbacks.append(cb)
        check(lib.mesh_ctx_set_log(self.ptr, max_level, cb, None))
        self._log_fn = fn

    def set_random(self, fn: Optional[Callable[[int], bytes]]) -> None:
        """Use fn(n) -> n bytes as the random source (None: getrandom(2)).

        A failing fn (an exception, or fewer bytes than asked) makes the C
        call that wanted randomness fail with MESH_ERR_IO.
        """
        if fn is None:
            check(lib.mesh_ctx_set_random(self.ptr, _lib.RANDOM_FN(), None))
            return
        if not callable(fn):
            raise TypeError("fn must be callable or None")

        def trampoline(ud, buf, n, fn=fn):
            try:
                data = bytes(fn(n))
                if len(data) < n:
                    return _MESH_ERR_IO
                ctypes.memmove(buf, data, n)
                return 0
            except BaseException:  # noqa: B902
                return _MESH_ERR_IO

        cb = _lib.RANDOM_FN(trampoline)
        self._callbacks.append(cb)
        check(lib.mesh_ctx_set_random(self.ptr, cb, None))

    def random(self, n: int) -> bytes:
        """n bytes from the context's random source (mesh_ctx_random)."""
        n = operator.index(n)
        if n < 0:
            raise InvalidArgument(detail="n must not be negative")
        buf = (ctypes.c_uint8 * max(n, 1))()
        check(lib.mesh_ctx_random(self.ptr, buf, n))
        return bytes(buf)[:n]

    def random_u32(self) -> int:
        return int.from_bytes(self.random(4), "little")

    def __repr__(self):
        state = "closed" if self.closed else "%d objects" % self._live
        return "<mesh.Context %s>" % state


_default = None
_default_lock = threading.Lock()


def default_context() -> Context:
    """The context shared by every object made without an explicit one."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Context()
        return _default


_close_lock = threading.Lock()


class Handle:
    """Owns one C handle made with a Context; frees it exactly once.

    Subclasses set _free_fn (the C destructor or unref). close() and the
    context-manager exit free it now; __del__ frees it otherwise. Using a
    closed object raises ClosedError rather than touching freed memory; but
    close() must not race with a call still running on the same object in
    another thread (objects that need to outlive such a call hold their own
    reference, as routes do).
    """

    _free_fn = None  # the C function that frees or unrefs the handle
    _what = "object"

    def _adopt(self, ctx: Context, handle) -> None:
        """Take ownership of handle, made with ctx (already _acquire'd)."""
        self._ctx = ctx
        self._h = handle
        self._release_fn = type(self)._free_fn  # bound now, for interpreter exit

    @property
    def _handle(self):
        h = getattr(self, "_h", None)
        if h is None:
            raise ClosedError(detail="%s is closed" % self._what)
        return h

    @property
    def closed(self) -> bool:
        return getattr(self, "_h", None) is None

    @property
    def context(self) -> Context:
        return self._ctx

    def close(self) -> None:
        """Release the C handle now (idempotent). Objects that took their own
        reference (documents' profiles, routes, splits) stay valid."""
        with _close_lock:  # two threads closing one shared object free it once
            h = getattr(self, "_h", None)
            if h is None:
                return
            self._h = None
        try:
            self._release_fn(h)
        finally:
            self._ctx._release()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resolve_ctx(ctx: Optional[Context]) -> Context:
    if ctx is None:
        return default_context()
    if not isinstance(ctx, Context):
        raise TypeError("ctx must be a mesh.Context or None, not %s" % type(ctx).__name__)
    return ctx


# -- argument conversion: ctypes truncates silently, so check here -----------

def u(v, bits: int, what: str) -> int:
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError("%s must be an integer, not %s" % (what, type(v).__name__)) from None
    if not 0 <= v < (1 << bits):
        raise RangeError(detail="%s %d is outside [0, 2**%d)" % (what, v, bits))
    return v


def i32(v, what: str) -> int:
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError("%s must be an integer, not %s" % (what, type(v).__name__)) from None
    if not -2**31 <= v < 2**31:
        raise RangeError(detail="%s %d does not fit in int32" % (what, v))
    return v


def cstr(s: Union[str, bytes, None], what: str, allow_none: bool = False) -> Optional[bytes]:
    """A NUL-terminated argument: str (UTF-8) or bytes, without NUL bytes."""
    if s is None:
        if allow_none:
            return None
        raise TypeError("%s must be str or bytes, not None" % what)
    if isinstance(s, str):
        b = s.encode("utf-8", "surrogateescape")
    elif isinstance(s, (bytes, bytearray, memoryview)):
        b = bytes(s)
    else:
        raise TypeError("%s must be str or bytes, not %s" % (what, type(s).__name__))
    if b"\0" in b:
        raise InvalidArgument(detail="%s contains a NUL byte" % what)
    return b


def buffer(s: Union[str, bytes], what: str = "text") -> bytes:
    """A (pointer, length) argument: any bytes are allowed, NULs included."""
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape")
    if isinstance(s, (bytes, bytearray, memoryview)):
        return bytes(s)
    raise TypeError("%s must be str or bytes, not %s" % (what, type(s).__name__))


def pystr(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("utf-8", "replace")


def call_with_diags(ctx_ptr, fn):
    """Run fn(diags) with a fresh mesh_diags list; return (rc, [Diagnostic])."""
    d = _lib.diags_p()
    check(lib.mesh_diags_new(ctx_ptr, ctypes.byref(d)))
    try:
        rc = fn(d)
        return rc, read_diags(d)
    finally:
        lib.mesh_diags_free(d)
