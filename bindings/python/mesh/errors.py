"""libmesh errors as Python exceptions, and diagnostics as values.

A negative MESH_ERR_* code becomes an instance of the MeshError subclass for
that code; its message comes from mesh_strerror, followed by the diagnostics
that say where the input went wrong.
"""

import operator
from typing import List, NamedTuple, Optional, Sequence

from ._lib import diags_p, lib

__all__ = [
    "Diagnostic", "MeshError", "NoMemory", "InvalidArgument", "ParseError", "NotFound",
    "RangeError", "MeshIOError", "LimitError", "Unsupported", "TLSError", "IdentityError",
    "ExpiredError", "DeniedError", "MeshTimeoutError", "ConnectError", "ClosedError",
    "AgainError", "UnavailableError", "strerror",
]

ERROR = "error"
WARNING = "warning"


def _str(b: Optional[bytes]) -> Optional[str]:
    # Diagnostics quote the input, which may not be UTF-8: never fail on it.
    return None if b is None else b.decode("utf-8", "replace")


def strerror(code: int) -> str:
    """mesh_strerror(code): never fails; unknown codes give "unknown error"."""
    return _str(lib.mesh_strerror(_int32(code))) or "unknown error"


def _int32(v) -> int:
    v = operator.index(v)
    return v if -2**31 <= v < 2**31 else -2**31  # anything else is "unknown error"


class Diagnostic(NamedTuple):
    """One error or warning about input: where it is and what is wrong.

    line and column are 1-based; 0 means the whole input. severity is
    "error" or "warning". text is what a compiler would print:
    "file:line:col: error: message".
    """

    file: str
    line: int
    column: int
    severity: str
    message: str
    text: str

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        return self.text


def read_diags(d: diags_p) -> List[Diagnostic]:
    """Copy every diagnostic of a mesh_diags list into Python values."""
    out = []
    for i in range(lib.mesh_diags_count(d)):
        sev = lib.mesh_diags_severity(d, i)
        out.append(Diagnostic(
            file=_str(lib.mesh_diags_file(d, i)) or "",
            line=lib.mesh_diags_line(d, i),
            column=lib.mesh_diags_column(d, i),
            severity=ERROR if sev == 0 else WARNING,
            message=_str(lib.mesh_diags_message(d, i)) or "",
            text=_str(lib.mesh_diags_text(d, i)) or ""))
    return out


class MeshError(Exception):
    """A libmesh call failed. code is the (negative) MESH_ERR_* value.

    diagnostics lists what the parser reported (errors and warnings, in
    order); it is empty for errors that are not about input.
    """

    code = None  # type: Optional[int]
    name = "MESH_ERR"
    _by_code = {}  # type: dict

    def __init__(self, code: Optional[int] = None, diagnostics: Sequence[Diagnostic] = (),
                 detail: Optional[str] = None):
        if code is None:
            code = type(self).code if type(self).code is not None else -2
        self.code = code
        self.diagnostics = list(diagnostics)
        self.detail = detail
        super().__init__(self._message())

    @property
    def errors(self) -> List[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    def _message(self) -> str:
        msg = strerror(self.code)
        if self.detail:
            msg += ": " + self.detail
        errs = self.errors
        if errs:
            shown = errs[:10]
            msg += "\n" + "\n".join("  " + d.text for d in shown)
            if len(errs) > len(shown):
                msg += "\n  (%d more errors)" % (len(errs) - len(shown))
        return msg

    def __reduce__(self):
        return (_rebuild, (self.code, self.diagnostics, self.detail))

    @classmethod
    def from_code(cls, code: int, diagnostics: Sequence[Diagnostic] = (),
                  detail: Optional[str] = None) -> "MeshError":
        sub = MeshError._by_code.get(code, MeshError)
        return sub(code, diagnostics, detail)


def _rebuild(code, diagnostics, detail):
    return MeshError.from_code(code, diagnostics, detail)


def _define(name: str, code: int, cname: str, *bases, doc: str = "") -> type:
    cls = type(name, (MeshError,) + bases, {"code": code, "name": cname, "__doc__": doc,
                                            "__module__": "mesh"})
    MeshError._by_code[code] = cls
    return cls


NoMemory = _define("NoMemory", -1, "MESH_ERR_NOMEM", MemoryError,
                   doc="An allocation failed (MESH_ERR_NOMEM).")
InvalidArgument = _define("InvalidArgument", -2, "MESH_ERR_INVALID", ValueError,
                          doc="An argument is invalid, or the object is in the wrong state "
                              "(MESH_ERR_INVALID).")
ParseError = _define("ParseError", -3, "MESH_ERR_PARSE", ValueError,
                     doc="Input is malformed; .diagnostics say where (MESH_ERR_PARSE).")
NotFound = _define("NotFound", -4, "MESH_ERR_NOT_FOUND", LookupError,
                   doc="The named thing does not exist (MESH_ERR_NOT_FOUND).")
RangeError = _define("RangeError", -5, "MESH_ERR_RANGE", ValueError,
                     doc="A number is out of range (MESH_ERR_RANGE).")
MeshIOError = _define("MeshIOError", -6, "MESH_ERR_IO",
                      doc="A system call failed, e.g. a file is unreadable (MESH_ERR_IO).")
LimitError = _define("LimitError", -7, "MESH_ERR_LIMIT",
                     doc="A limit on input size, depth or count was exceeded (MESH_ERR_LIMIT).")
Unsupported = _define("Unsupported", -8, "MESH_ERR_UNSUPPORTED",
                      doc="Valid, but not supported by libmesh (MESH_ERR_UNSUPPORTED).")
TLSError = _define("TLSError", -9, "MESH_ERR_TLS", doc="A TLS operation failed.")
IdentityError = _define("IdentityError", -10, "MESH_ERR_IDENTITY",
                        doc="A peer's identity is missing or not the expected one.")
ExpiredError = _define("ExpiredError", -11, "MESH_ERR_EXPIRED",
                       doc="A certificate or token is expired or not yet valid.")
DeniedError = _define("DeniedError", -12, "MESH_ERR_DENIED",
                      doc="Refused by policy or by a credential check.")
MeshTimeoutError = _define("MeshTimeoutError", -13, "MESH_ERR_TIMEOUT",
                           doc="An operation did not finish in time.")
ConnectError = _define("ConnectError", -14, "MESH_ERR_CONNECT",
                       doc="A connection could not be made.")
ClosedError = _define("ClosedError", -15, "MESH_ERR_CLOSED",
                      doc="The peer or the object was closed (also: using a closed handle).")
AgainError = _define("AgainError", -16, "MESH_ERR_AGAIN",
                     doc="Try again later (would block, no budget).")
UnavailableError = _define("UnavailableError", -17, "MESH_ERR_UNAVAILABLE",
                           doc="A needed service or resource is not available.")


def check(rc: int, diagnostics: Sequence[Diagnostic] = (), detail: Optional[str] = None) -> int:
    """Raise the MeshError for a negative return code; return rc otherwise."""
    if rc < 0:
        raise MeshError.from_code(rc, diagnostics, detail)
    return rc
