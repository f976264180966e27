"""libmesh for Python: ctypes bindings to the service mesh library.

    import mesh
    m = mesh.Manifest.load("exam-api-profile.yaml")
    profile = m.profiles[0]
    route = profile.match("GET", "/api/v1/exams/42/questions")
    route.name, route.timeout_ms, route.classify(503)
    ident = mesh.Identity.parse("spiffe://cluster.local/ns/prod/sa/web")
    mesh.Certs.load("chain.pem").verify_peer(mesh.Certs.load("anchors.pem"), ident)

The library is found through the environment variable MESH_LIBRARY (the full
path of libmesh.so), else ctypes.util.find_library("mesh"), else the dynamic
loader's search path for libmesh.so.0. Standard library only; Python 3.9+.

Thread safety follows the C library: profiles and sealed splits are
immutable and may be shared between threads, budgets and balancers are
thread-safe, so are identities, keys, CSRs, certificates, (once
configured) CAs and metrics (Registry and its series), and everything else is
used by one thread at a time.
"""

from ._lib import lib as _clib
from ._lib import path as library_path
from .balance import Balancer, Endpoint, EndpointState
from .context import (LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN, Context, default_context)
from .errors import (AgainError, ClosedError, ConnectError, DeniedError, Diagnostic,
                     ExpiredError, IdentityError, InvalidArgument, LimitError, MeshError,
                     MeshIOError, MeshTimeoutError, NoMemory, NotFound, ParseError, RangeError,
                     TLSError, UnavailableError, Unsupported, strerror)
from .identity import (CA, Certificate, Certs, Csr, Identity, Key, San, SanType, renew_at,
                       retry_delay_ms)
from .manifest import (Document, Kind, Manifest, dns_label_valid, dns_name_valid, duration_seconds,
                       manifest_file_name)
from .profile import (DEFAULT_BUDGET, ROUTE_DEFAULT_TIMEOUT_MS, Profile, RetryBudget, Route,
                      classify_default)
from .retry import BACKOFF_BASE_MS, BACKOFF_MAX_MS, Budget, backoff_ms, now_ms
from .split import WEIGHT_TOTAL, Backend, Split
from .metrics import LATENCY_BOUNDS, Registry

# Exceptions show as mesh.ParseError etc., wherever they are defined.
for _cls in (MeshError, Diagnostic):
    _cls.__module__ = __name__
del _cls


def version() -> str:
    """The version of the libmesh library loaded, e.g. "0.1.0"."""
    return _clib.mesh_version_string().decode("ascii", "replace")


def version_num() -> int:
    """The loaded library's MESH_VERSION_NUM: 0xMMmmpp."""
    return _clib.mesh_version_num()


def version_info() -> tuple:
    """(major, minor, patch) of the loaded library."""
    n = version_num()
    return (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF


__version__ = version()

__all__ = [
    "version", "version_num", "version_info", "library_path", "strerror",
    "Context", "default_context", "LOG_ERROR", "LOG_WARN", "LOG_INFO", "LOG_DEBUG",
    "Diagnostic", "MeshError", "NoMemory", "InvalidArgument", "ParseError", "NotFound",
    "RangeError", "MeshIOError", "LimitError", "Unsupported", "TLSError", "IdentityError",
    "ExpiredError", "DeniedError", "MeshTimeoutError", "ConnectError", "ClosedError",
    "AgainError", "UnavailableError",
    "Manifest", "Document", "Kind", "manifest_file_name",
    "Profile", "Route", "RetryBudget", "classify_default", "DEFAULT_BUDGET",
    "ROUTE_DEFAULT_TIMEOUT_MS",
    "Split", "Backend", "WEIGHT_TOTAL",
    "Registry", "LATENCY_BOUNDS",
    "Budget", "backoff_ms", "now_ms", "BACKOFF_BASE_MS", "BACKOFF_MAX_MS",
    "Balancer", "Endpoint", "EndpointState",
    "Identity", "Key", "Csr", "Certs", "Certificate", "San", "SanType", "CA",
    "renew_at", "retry_delay_ms",
]
