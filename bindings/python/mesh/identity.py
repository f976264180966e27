"""Workload identity: names, keys, CSRs, certificates, the CA, and tokens.

    import mesh
    ident = mesh.Identity.parse("spiffe://cluster.local/ns/prod/sa/web")
    ident.dns          # 'web.prod.serviceaccount.identity.linkerd.cluster.local'
    anchor, issuer = mesh.CA.init()                 # what `meshctl identity init` makes
    key = mesh.Key.generate()
    leaf = issuer.issue(mesh.Csr(key, ident), ident)  # leaf, then the issuer's chain
    leaf[0].sans       # [San(DNS, 'web.prod...'), San(URI, 'spiffe://...')]
    leaf.verify(anchor.certs)                       # or raises ExpiredError, TLSError
    leaf.verify_peer(anchor.certs, expected=ident)  # or raises IdentityError

Times are wall-clock seconds since the Unix epoch (ints); every function
that looks at the clock takes now= (default: time.time()), so tests are
exact. Functions that reject input raise the MeshError for the C error code
with libmesh's reason in the message and in .detail, e.g.
"malformed input: SPIFFE ID must start with spiffe://".

Every object is immutable once made (a CA's lifetime and clock skew aside)
and may be shared between threads.
"""

import ctypes
import datetime as _dt
import enum
import operator
import os
import random as _random
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

from . import _lib
from ._lib import lib
from .context import Context, Handle, buffer, cstr, pystr, resolve_ctx, u
from .errors import (ExpiredError, IdentityError, InvalidArgument, MeshError, MeshIOError,
                     RangeError, check)

__all__ = [
    "Identity", "Key", "Csr", "Certs", "Certificate", "San", "SanType", "CA",
    "renew_at", "retry_delay_ms",
    "DEFAULT_TRUST_DOMAIN", "DEFAULT_CP_NS", "IDENTITY_DNS_MAX", "IDENTITY_SPIFFE_MAX",
    "RENEW_MIN_S", "RENEW_MAX_S", "RETRY_BASE_MS", "RETRY_MAX_MS", "CSR_MAX_BYTES",
    "CERTS_MAX", "CERTS_MAX_BYTES", "CA_DEFAULT_LIFETIME_S", "CA_DEFAULT_CLOCK_SKEW_S",
    "CA_DEFAULT_CA_LIFETIME_S", "TOKEN_MAX_LEN", "TOKEN_CLOCK_SKEW_S",
]

# mesh/identity.h
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_CP_NS = "linkerd"
IDENTITY_DNS_MAX = 253
IDENTITY_SPIFFE_MAX = 2048
RENEW_MIN_S = 10
RENEW_MAX_S = 86400
RETRY_BASE_MS = 1000
RETRY_MAX_MS = 300000
CSR_MAX_BYTES = 16384
CERTS_MAX = 64
CERTS_MAX_BYTES = 1048576
CA_DEFAULT_LIFETIME_S = 86400
CA_DEFAULT_CLOCK_SKEW_S = 20
CA_DEFAULT_CA_LIFETIME_S = 31536000
TOKEN_MAX_LEN = 8192
TOKEN_CLOCK_SKEW_S = 20

_KEY_MAX_BYTES = 65536  # mesh_key_parse refuses more (MESH_ERR_LIMIT)
_MESH_ERR_INVALID = -2
_MESH_ERR_PARSE = -3
_MESH_ERR_RANGE = -5
_MESH_ERR_UNSUPPORTED = -8
_MESH_ERR_IDENTITY = -10
_CN_RULE = "cn must be 1-64 characters of [A-Za-z0-9 ._-]"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

TimeArg = Union[int, _dt.datetime, None]


# -- helpers -------------------------------------------------------------------

def _check(rc: int, why: ctypes.c_char_p, reasons: Optional[dict] = None) -> int:
    """Raise the MeshError for rc with libmesh's reason (*why) as detail;
    reasons[rc] says what the error means for calls that set no *why."""
    if rc < 0:
        detail = pystr(why.value) if why.value else (reasons or {}).get(rc)
        raise MeshError.from_code(rc, detail=detail)
    return rc


def _time(t: TimeArg, what: str = "now") -> int:
    """Seconds since the epoch: t itself, an aware datetime's, or time.time()'s."""
    if t is None:
        return int(time.time())
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise InvalidArgument(detail="%s is a naive datetime; give it a tzinfo" % what)
        t = (t - _EPOCH) // _dt.timedelta(seconds=1)
    return u(t, 64, what)


def _datetime(s: int) -> _dt.datetime:
    """Epoch seconds as an aware UTC datetime (exact, no platform limits)."""
    return _EPOCH + _dt.timedelta(seconds=s)


def _read(path, limit: int) -> bytes:
    """At most limit + 1 bytes of a file: the C parser refuses more with LimitError."""
    try:
        with open(os.fspath(path), "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise MeshIOError(detail="%s: %s" % (os.fsdecode(os.fspath(path)),
                                             e.strerror or e)) from e


def _make(cls, ctx: Context, call, reasons: Optional[dict] = None):
    """Run call(ctx_ptr, byref(handle), byref(why)) and wrap the new handle
    as a cls owned by ctx (the context the C object was made with)."""
    ctx_ptr = ctx._acquire()
    h = cls._ptype()
    why = ctypes.c_char_p()
    try:
        _check(call(ctx_ptr, ctypes.byref(h), ctypes.byref(why)), why, reasons)
    except BaseException:
        ctx._release()
        raise
    return cls._wrap(ctx, h)


def _need(obj, cls, what: str):
    if not isinstance(obj, cls):
        raise TypeError("%s must be a mesh.%s, not %s" % (what, cls.__name__,
                                                          type(obj).__name__))
    return obj._handle


# -- names ---------------------------------------------------------------------

class Identity(Handle):
    """A workload identity: trust domain, namespace and service account,
    plus the control plane's namespace that the DNS form carries.

        Identity("prod", "web")                      # the defaults: linkerd, cluster.local
        Identity.parse("web.prod.serviceaccount.identity.linkerd.cluster.local")
        Identity.parse("spiffe://cluster.local/ns/prod/sa/web", cp_ns="linkerd")

    Two identities are equal when they name the same workload (trust domain,
    namespace and service account; the control-plane namespace does not take
    part). str() is the DNS form. Its parts are read once and stay readable
    after close().
    """

    _free_fn = lib.mesh_identity_free
    _ptype = _lib.identity_p
    _what = "identity"

    def __init__(self, ns: str, sa: str, cp_ns: Optional[str] = None,
                 trust_domain: Optional[str] = None, ctx: Optional[Context] = None):
        """ParseError (with the reason) unless ns, sa and cp_ns are DNS-1123
        labels and trust_domain a lowercase DNS name."""
        ns_b, sa_b = cstr(ns, "ns"), cstr(sa, "sa")
        cp_b = cstr(cp_ns, "cp_ns", allow_none=True)
        td_b = cstr(trust_domain, "trust_domain", allow_none=True)
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        h = _lib.identity_p()
        why = ctypes.c_char_p()
        try:
            _check(lib.mesh_identity_new(ctx_ptr, ns_b, sa_b, cp_b, td_b, ctypes.byref(why),
                                         ctypes.byref(h)), why)
        except BaseException:
            ctx._release()
            raise
        self._init(ctx, h)

    @classmethod
    def parse(cls, name: Union[str, bytes], cp_ns: Optional[str] = None,
              ctx: Optional[Context] = None) -> "Identity":
        """Parse the DNS form or a SPIFFE ID. A SPIFFE ID carries no
        control-plane namespace: cp_ns (None: "linkerd") supplies it; a DNS
        name brings its own and cp_ns is then ignored. ParseError with the
        reason when name is not a valid identity."""
        name_b = cstr(name, "name")
        cp_b = cstr(cp_ns, "cp_ns", allow_none=True)
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_identity_parse(
            cp, name_b, cp_b, why, ret))

    @classmethod
    def _wrap(cls, ctx: Context, h) -> "Identity":
        self = cls.__new__(cls)
        self._init(ctx, h)
        return self

    def _init(self, ctx: Context, h) -> None:
        self._adopt(ctx, h)
        self._ns = pystr(lib.mesh_identity_ns(h))
        self._sa = pystr(lib.mesh_identity_sa(h))
        self._cp_ns = pystr(lib.mesh_identity_cp_ns(h))
        self._td = pystr(lib.mesh_identity_trust_domain(h))
        self._dns = pystr(lib.mesh_identity_dns(h))
        self._uri = pystr(lib.mesh_identity_uri(h))

    @property
    def ns(self) -> str:
        return self._ns

    @property
    def sa(self) -> str:
        return self._sa

    @property
    def cp_ns(self) -> str:
        return self._cp_ns

    @property
    def trust_domain(self) -> str:
        return self._td

    @property
    def dns(self) -> str:
        """<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>"""
        return self._dns

    @property
    def uri(self) -> str:
        """spiffe://<trust-domain>/ns/<ns>/sa/<sa>"""
        return self._uri

    def match(self, name: Union[str, bytes]) -> None:
        """Check that name (either form) names this workload. Returns None
        when it does; raises IdentityError saying which workload it names
        instead, or ParseError with the reason when it is not an identity."""
        name_b = cstr(name, "name")
        why = ctypes.c_char_p()
        rc = lib.mesh_identity_match(self._handle, name_b, ctypes.byref(why))
        if rc == _MESH_ERR_IDENTITY:
            other = Identity.parse(name_b, self._cp_ns, ctx=self._ctx)
            raise IdentityError(detail="%s names %s/%s in trust domain %s, not %s/%s in %s" % (
                pystr(name_b), other.ns, other.sa, other.trust_domain, self._ns, self._sa,
                self._td))
        _check(rc, why)

    def matches(self, name: Union[str, bytes]) -> bool:
        """True when name (either form) names this workload; False when it
        names another or is not a valid identity (match() says why)."""
        name_b = cstr(name, "name")
        return lib.mesh_identity_match(self._handle, name_b, None) == 0

    def _key(self) -> Tuple[str, str, str]:
        return (self._td, self._ns, self._sa)

    def __eq__(self, other):
        if not isinstance(other, Identity):
            return NotImplemented
        a, b = getattr(self, "_h", None), getattr(other, "_h", None)
        if a is not None and b is not None:
            return lib.mesh_identity_equal(a, b) == 1
        return self._key() == other._key()  # what mesh_identity_equal compares

    def __hash__(self):
        return hash(self._key())

    def __str__(self):
        return self._dns

    def __repr__(self):
        return "<mesh.Identity %s%s>" % (self._uri, " closed" if self.closed else "")


# -- keys ----------------------------------------------------------------------

class Key(Handle):
    """A private key (or, parsed from a public-key PEM, a public key).
    Workload and token keys are ECDSA P-256; a CA's may also be P-384 or
    RSA >= 2048."""

    _free_fn = lib.mesh_key_free
    _ptype = _lib.key_p
    _what = "key"

    def __init__(self, *a, **kw):
        raise TypeError("use Key.generate(), Key.parse(pem) or Key.load(path)")

    @classmethod
    def generate(cls, ctx: Optional[Context] = None) -> "Key":
        """A new ECDSA P-256 key from the context's random source."""
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_key_generate(cp, ret))

    @classmethod
    def parse(cls, pem: Union[str, bytes], ctx: Optional[Context] = None) -> "Key":
        """Parse a PEM or DER key: an unencrypted private key (PKCS#8, SEC1,
        PKCS#1) or a public key (SubjectPublicKeyInfo). ParseError,
        Unsupported (encrypted, or not P-256, P-384 or RSA >= 2048), LimitError."""
        buf = buffer(pem, "pem")
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_key_parse(
            cp, buf, len(buf), why, ret))

    @classmethod
    def load(cls, path, ctx: Optional[Context] = None) -> "Key":
        """Key.parse of a file's contents (MeshIOError when it is unreadable)."""
        return cls.parse(_read(path, _KEY_MAX_BYTES), ctx)

    @classmethod
    def _wrap(cls, ctx: Context, h) -> "Key":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        return self

    @property
    def pem(self) -> Optional[str]:
        """The private key as PKCS#8 PEM; None for a public key."""
        return pystr(lib.mesh_key_pem(self._handle))

    @property
    def public_pem(self) -> str:
        return pystr(lib.mesh_key_public_pem(self._handle))

    @property
    def id(self) -> str:
        """The RFC 7638 JWK thumbprint (a token's "kid"); "" unless P-256."""
        return pystr(lib.mesh_key_id(self._handle))

    @property
    def is_private(self) -> bool:
        return lib.mesh_key_pem(self._handle) is not None

    def public_key(self) -> "Key":
        """The public half, as a Key of its own."""
        return Key.parse(lib.mesh_key_public_pem(self._handle), ctx=self._ctx)

    # -- tokens ----------------------------------------------------------------
    def mint_token(self, ns: str, sa: str, aud: str, exp: TimeArg,
                   iat: TimeArg = None) -> str:
        """A compact JWS (ES256) claiming ns/sa for audience aud, issued at
        iat (default: now) and expiring at exp (> iat). Needs a P-256
        private key. ParseError (bad ns, sa or aud), Unsupported, RangeError."""
        ns_b, sa_b, aud_b = cstr(ns, "ns"), cstr(sa, "sa"), cstr(aud, "aud")
        iat_s, exp_s = _time(iat, "iat"), _time(exp, "exp")
        buf = ctypes.create_string_buffer(TOKEN_MAX_LEN + 1)
        n = ctypes.c_size_t()
        _check(lib.mesh_token_mint(self._handle, ns_b, sa_b, aud_b, iat_s, exp_s, buf,
                                   len(buf), ctypes.byref(n)), ctypes.c_char_p(), {
            _MESH_ERR_INVALID: "a public key cannot mint tokens",
            _MESH_ERR_UNSUPPORTED: "tokens are signed with P-256 keys only",
            _MESH_ERR_PARSE: "ns and sa must be DNS-1123 labels, aud 1-256 printable "
                             "ASCII characters",
            _MESH_ERR_RANGE: "exp must be after iat (and below 2**63)"})
        return buf.raw[:n.value].decode("ascii")

    def verify_token(self, token: Union[str, bytes], aud: str, claimed: Identity,
                     now: TimeArg = None) -> None:
        """Check that token was signed by this key (public or private), is
        for aud, is valid at now, and names claimed's namespace and service
        account. Returns None; raises DeniedError (signature, key id,
        algorithm, audience), ExpiredError, IdentityError (another
        workload), ParseError (malformed) or LimitError, with the reason."""
        tok = buffer(token, "token")
        aud_b = cstr(aud, "aud")
        id_h = _need(claimed, Identity, "claimed")
        why = ctypes.c_char_p()
        _check(lib.mesh_token_verify(self._handle, tok, len(tok), aud_b, _time(now), id_h,
                                     ctypes.byref(why)), why)

    def __repr__(self):
        if self.closed:
            return "<mesh.Key closed>"
        return "<mesh.Key %s%s>" % ("private" if self.is_private else "public",
                                    " kid=" + self.id if self.id else "")


# -- CSRs ------------------------------------------------------------------------

class Csr(Handle):
    """A certificate signing request for a workload identity.

    Csr(key, identity) makes one, signed by key (a P-256 private key), with
    exactly the DNS and URI forms of identity as SANs and CN = the DNS form.
    Csr.parse(pem) reads one; verify(identity) is the CA's check."""

    _free_fn = lib.mesh_csr_free
    _ptype = _lib.csr_p
    _what = "CSR"

    def __init__(self, key: Key, identity: Identity):
        key_h = _need(key, Key, "key")
        id_h = _need(identity, Identity, "identity")
        ctx = key._ctx  # the C CSR uses its key's context
        ctx._acquire()
        h = _lib.csr_p()
        try:
            _check(lib.mesh_csr_new(key_h, id_h, ctypes.byref(h)), ctypes.c_char_p(), {
                _MESH_ERR_INVALID: "a CSR is signed with a private key",
                _MESH_ERR_UNSUPPORTED: "a CSR is signed with a P-256 key"})
        except BaseException:
            ctx._release()
            raise
        self._adopt(ctx, h)

    @classmethod
    def parse(cls, pem: Union[str, bytes], ctx: Optional[Context] = None) -> "Csr":
        """Parse a PEM or DER CSR (structure only; see verify)."""
        buf = buffer(pem, "pem")
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_csr_parse(
            cp, buf, len(buf), why, ret))

    @classmethod
    def _wrap(cls, ctx: Context, h) -> "Csr":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        return self

    @property
    def pem(self) -> str:
        return pystr(lib.mesh_csr_pem(self._handle))

    @property
    def der(self) -> bytes:
        n = ctypes.c_size_t()
        p = lib.mesh_csr_der(self._handle, ctypes.byref(n))
        return ctypes.string_at(p, n.value) if p else b""

    @property
    def identity(self) -> Identity:
        """The identity the CSR claims (its DNS and URI SANs, which must
        agree): IdentityError with the reason otherwise."""
        h = self._handle
        return _make(Identity, self._ctx, lambda cp, ret, why: lib.mesh_csr_identity(
            h, why, ret))

    def verify(self, identity: Identity) -> None:
        """The CA's check for identity, the one its sender proved: the
        signature verifies (else DeniedError), and the SANs and subject name
        exactly identity (else IdentityError)."""
        id_h = _need(identity, Identity, "identity")
        why = ctypes.c_char_p()
        _check(lib.mesh_csr_verify(self._handle, id_h, ctypes.byref(why)), why)

    def __repr__(self):
        return "<mesh.Csr%s>" % (" closed" if self.closed else "")


# -- certificates ----------------------------------------------------------------

class SanType(enum.IntEnum):
    """Subject alternative name kinds (MESH_SAN_*)."""

    OTHER = 0
    DNS = 1
    URI = 2
    IP = 3
    EMAIL = 4

    @classmethod
    def _of(cls, v: int) -> Union["SanType", int]:
        try:
            return cls(v)
        except ValueError:  # a newer library's kind: keep the number
            return v


class San(NamedTuple):
    """A subject alternative name: DNS names, URIs and emails as written, IP
    addresses as text, other kinds ""."""

    type: SanType
    value: str


class Certs(Handle):
    """An ordered list of certificates: a leaf and its chain, or a bundle of
    trust anchors. Indexing gives Certificate views, which need the Certs
    open (ClosedError after close())."""

    _free_fn = lib.mesh_certs_free
    _ptype = _lib.certs_p
    _what = "certificate list"

    def __init__(self, *a, **kw):
        raise TypeError("use Certs.parse(pem) or Certs.load(path)")

    @classmethod
    def parse(cls, pem: Union[str, bytes], ctx: Optional[Context] = None) -> "Certs":
        """Parse one or more PEM certificates (or one DER certificate).
        ParseError (with the reason) or LimitError (over CERTS_MAX
        certificates or CERTS_MAX_BYTES)."""
        buf = buffer(pem, "pem")
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_certs_parse(
            cp, buf, len(buf), why, ret))

    @classmethod
    def load(cls, path, ctx: Optional[Context] = None) -> "Certs":
        """Certs.parse of a file's contents (MeshIOError when it is unreadable)."""
        return cls.parse(_read(path, CERTS_MAX_BYTES), ctx)

    @classmethod
    def _wrap(cls, ctx: Context, h) -> "Certs":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        return self

    def __len__(self) -> int:
        return lib.mesh_certs_count(self._handle)

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return [Certificate(self, j) for j in range(*i.indices(n))]
        j = operator.index(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError("certificate index %d out of range (%d certificates)" % (i, n))
        return Certificate(self, j)

    def __iter__(self) -> Iterator["Certificate"]:
        return iter(self[:])

    @property
    def leaf(self) -> "Certificate":
        """The first certificate."""
        return self[0]

    @property
    def pem(self) -> str:
        """All the certificates as one PEM bundle."""
        return self.bundle_pem(0)

    def bundle_pem(self, start: int = 0) -> str:
        """Certificates start..end as one PEM bundle: after issuance,
        bundle_pem(1) is the issuer chain."""
        h = self._handle
        start = u(start, 64, "start")
        if start >= lib.mesh_certs_count(h):
            raise IndexError("start %d out of range" % start)
        return pystr(lib.mesh_certs_bundle_pem(h, start))

    def verify(self, anchors: "Certs", now: TimeArg = None) -> None:
        """Verify this chain (leaf first, then intermediates) against
        anchors at now (default: the current time). Every certificate on the
        path, anchor included, must be valid then. Returns None; raises
        ExpiredError (expired or not yet valid) or TLSError (no path to an
        anchor, bad signature, key usage or path length, weak algorithm),
        each with the reason."""
        a = _need(anchors, Certs, "anchors")
        why = ctypes.c_char_p()
        _check(lib.mesh_certs_verify(self._handle, a, _time(now), ctypes.byref(why)), why)

    def verify_peer(self, anchors: "Certs", expected: Optional[Identity] = None,
                    now: TimeArg = None) -> Identity:
        """verify(), then the leaf's identity, which must equal expected when
        given (else IdentityError). Returns the leaf's identity."""
        a = _need(anchors, Certs, "anchors")
        exp_h = None if expected is None else _need(expected, Identity, "expected")
        h, now_s = self._handle, _time(now)
        return _make(Identity, self._ctx, lambda cp, ret, why: lib.mesh_certs_verify_peer(
            h, a, now_s, exp_h, why, ret))

    def __repr__(self):
        if self.closed:
            return "<mesh.Certs closed>"
        return "<mesh.Certs %d: %s>" % (len(self), ", ".join(c.subject for c in self))


class Certificate:
    """Certificate index of a Certs list: a view that keeps the list
    (the Python object) alive, and raises ClosedError once it is closed."""

    __slots__ = ("_certs", "index", "__weakref__")

    def __init__(self, certs: Certs, index: int):
        self._certs = certs
        self.index = index

    @property
    def _h(self):
        return self._certs._handle

    @property
    def certs(self) -> Certs:
        return self._certs

    @property
    def pem(self) -> str:
        return pystr(lib.mesh_certs_pem(self._h, self.index))

    @property
    def subject(self) -> str:
        """The subject's distinguished name, e.g. "CN=web.prod..., O=..."."""
        return pystr(lib.mesh_certs_subject(self._h, self.index))

    @property
    def issuer(self) -> str:
        return pystr(lib.mesh_certs_issuer(self._h, self.index))

    @property
    def serial(self) -> str:
        """Hex bytes joined by colons, e.g. "0A:1B:2C"."""
        return pystr(lib.mesh_certs_serial(self._h, self.index))

    @property
    def not_before(self) -> int:
        """notBefore, in seconds since the Unix epoch."""
        return lib.mesh_certs_not_before(self._h, self.index)

    @property
    def not_after(self) -> int:
        """notAfter, in seconds since the Unix epoch."""
        return lib.mesh_certs_not_after(self._h, self.index)

    @property
    def not_before_datetime(self) -> _dt.datetime:
        """notBefore as an aware UTC datetime."""
        return _datetime(self.not_before)

    @property
    def not_after_datetime(self) -> _dt.datetime:
        """notAfter as an aware UTC datetime."""
        return _datetime(self.not_after)

    def valid_at(self, now: TimeArg = None) -> bool:
        """not_before <= now <= not_after (this certificate alone: verify()
        checks the whole chain)."""
        t = _time(now)
        return self.not_before <= t <= self.not_after

    @property
    def is_ca(self) -> bool:
        return lib.mesh_certs_is_ca(self._h, self.index) == 1

    @property
    def pathlen(self) -> Optional[int]:
        """basicConstraints pathLenConstraint; None when absent (no limit,
        or not a CA)."""
        n = lib.mesh_certs_pathlen(self._h, self.index)
        return None if n < 0 else n

    @property
    def sans(self) -> List[San]:
        h, i = self._h, self.index
        return [San(SanType._of(lib.mesh_certs_san_type(h, i, j)),
                    pystr(lib.mesh_certs_san_value(h, i, j)) or "")
                for j in range(lib.mesh_certs_san_count(h, i))]

    @property
    def identity(self) -> Identity:
        """The workload identity the certificate carries (its DNS and/or URI
        SAN, which must agree). IdentityError with the reason for none, an
        ambiguous or disagreeing one, or a CA certificate. Only meaningful
        for a verified chain (see Certs.verify_peer)."""
        h, i = self._h, self.index
        return _make(Identity, self._certs._ctx, lambda cp, ret, why: lib.mesh_certs_identity(
            h, i, why, ret))

    def __eq__(self, other):
        if not isinstance(other, Certificate):
            return NotImplemented
        return self.pem == other.pem

    def __hash__(self):
        return hash(self.pem)

    def __repr__(self):
        if self._certs.closed:
            return "<mesh.Certificate closed>"
        return "<mesh.Certificate %s%s serial=%s>" % (
            self.subject, " CA" if self.is_ca else "", self.serial)


# -- certificate authority ---------------------------------------------------------

class CA(Handle):
    """An issuer: its certificate (with its chain) and private key.

        anchor, issuer = CA.init("cluster.local", "linkerd")
        CA.new_root("my root"), anchor.new_issuer("my issuer")
        CA.from_pem(chain_pem, key_pem)
        issuer.issue(csr, identity)   # a Certs: the leaf, then issuer.certs

    Set the lifetime and clock skew before sharing a CA between threads;
    issue() itself is thread-safe."""

    _free_fn = lib.mesh_ca_free
    _ptype = _lib.ca_p
    _what = "CA"

    def __init__(self, *a, **kw):
        raise TypeError("use CA.init(), CA.new_root(cn), ca.new_issuer(cn) or "
                        "CA.from_pem(chain_pem, key_pem)")

    @classmethod
    def _wrap(cls, ctx: Context, h) -> "CA":
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        return self

    @classmethod
    def from_pem(cls, chain_pem: Union[str, bytes], key_pem: Union[str, bytes],
                 ctx: Optional[Context] = None) -> "CA":
        """An issuer from its certificate (first) and chain, and its private
        key. InvalidArgument (with the reason) unless the certificate is a
        CA allowed to sign certificates and the key matches it."""
        c, k = buffer(chain_pem, "chain_pem"), buffer(key_pem, "key_pem")
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_ca_new(
            cp, c, len(c), k, len(k), why, ret))

    @classmethod
    def new_root(cls, cn: str, now: TimeArg = None, lifetime: int = 0,
                 ctx: Optional[Context] = None) -> "CA":
        """A self-signed trust anchor with a fresh P-256 key, valid from
        now - 20 s for lifetime seconds (0: 365 days). cn: 1-64 of
        [A-Za-z0-9 ._-] (else InvalidArgument)."""
        cn_b = cstr(cn, "cn")
        now_s, life = _time(now), u(lifetime, 64, "lifetime")
        return _make(cls, resolve_ctx(ctx), lambda cp, ret, why: lib.mesh_ca_new_root(
            cp, cn_b, now_s, life, ret), {_MESH_ERR_INVALID: _CN_RULE,
                                          _MESH_ERR_RANGE: "lifetime over 100 years"})

    def new_issuer(self, cn: str, now: TimeArg = None, lifetime: int = 0) -> "CA":
        """An intermediate signed by this CA, with a fresh P-256 key and
        pathlen 0, valid for lifetime seconds (0: 365 days) clamped to this
        CA's notAfter. InvalidArgument when this CA has pathlen 0,
        ExpiredError when it is not valid at now."""
        cn_b = cstr(cn, "cn")
        now_s, life = _time(now), u(lifetime, 64, "lifetime")
        h = self._handle
        return _make(CA, self._ctx, lambda cp, ret, why: lib.mesh_ca_new_issuer(
            h, cn_b, now_s, life, ret), {
                _MESH_ERR_INVALID: "this CA has pathlen 0 (it signs leaves only), or " + _CN_RULE,
                _MESH_ERR_RANGE: "lifetime over 100 years",
                ExpiredError.code: "this CA is not valid at now"})

    @classmethod
    def init(cls, trust_domain: Optional[str] = None, cp_ns: Optional[str] = None,
             now: TimeArg = None, lifetime: int = 0,
             ctx: Optional[Context] = None) -> Tuple["CA", "CA"]:
        """What `meshctl identity init` makes: (anchor, issuer), the trust
        anchor "root.<cp-ns>.<trust-domain>" and the issuer
        "identity.<cp-ns>.<trust-domain>" it signed."""
        td_b = cstr(trust_domain, "trust_domain", allow_none=True)
        cp_b = cstr(cp_ns, "cp_ns", allow_none=True)
        now_s, life = _time(now), u(lifetime, 64, "lifetime")
        ctx = resolve_ctx(ctx)
        ctx_ptr = ctx._acquire()
        try:
            ctx._acquire()
        except BaseException:
            ctx._release()
            raise
        a, i = _lib.ca_p(), _lib.ca_p()
        try:
            _check(lib.mesh_ca_init(ctx_ptr, td_b, cp_b, now_s, life, ctypes.byref(a),
                                    ctypes.byref(i)), ctypes.c_char_p(), {
                _MESH_ERR_INVALID: "root.<cp_ns>.<trust_domain> must be a valid cn: " + _CN_RULE,
                _MESH_ERR_RANGE: "lifetime over 100 years"})
        except BaseException:
            ctx._release()
            ctx._release()
            raise
        return cls._wrap(ctx, a), cls._wrap(ctx, i)

    @property
    def certs(self) -> Certs:
        """A copy of the CA's certificate and chain (a Certs of its own,
        usable after the CA is closed). For an anchor, the trust bundle."""
        c = lib.mesh_ca_certs(self._handle)
        return Certs.parse(lib.mesh_certs_bundle_pem(c, 0), ctx=self._ctx)

    @property
    def certificate(self) -> Certificate:
        """The CA's own certificate (from a copy, see certs)."""
        return self.certs[0]

    @property
    def key(self) -> Key:
        """A copy of the CA's private key."""
        k = lib.mesh_ca_key(self._handle)
        return Key.parse(lib.mesh_key_pem(k), ctx=self._ctx)

    def set_lifetime(self, seconds: int) -> None:
        """Lifetime of the certificates issue() makes (0: 24 h). RangeError
        past 10 years."""
        rc = lib.mesh_ca_set_lifetime(self._handle, u(seconds, 64, "seconds"))
        if rc == RangeError.code:
            raise RangeError(detail="lifetime %d s is over 10 years" % seconds)
        check(rc)

    def set_clock_skew(self, seconds: int) -> None:
        """How far issue() backdates notBefore (default 20 s). RangeError
        past 1 day."""
        rc = lib.mesh_ca_set_clock_skew(self._handle, u(seconds, 64, "seconds"))
        if rc == RangeError.code:
            raise RangeError(detail="clock skew %d s is over 1 day" % seconds)
        check(rc)

    def issue(self, csr: Csr, identity: Identity, now: TimeArg = None) -> Certs:
        """Issue a workload certificate for csr, whose sender proved
        identity: the CSR is checked first (Csr.verify). The result holds
        the leaf, then this CA's chain. ExpiredError when this CA is not
        valid at now."""
        csr_h = _need(csr, Csr, "csr")
        id_h = _need(identity, Identity, "identity")
        h, now_s = self._handle, _time(now)
        return _make(Certs, self._ctx, lambda cp, ret, why: lib.mesh_ca_issue(
            h, csr_h, id_h, now_s, why, ret))

    def __repr__(self):
        if self.closed:
            return "<mesh.CA closed>"
        c = lib.mesh_ca_certs(self._handle)
        return "<mesh.CA %s>" % pystr(lib.mesh_certs_subject(c, 0))


# -- renewal schedule ---------------------------------------------------------------

def renew_at(not_before: TimeArg, not_after: TimeArg, now: TimeArg = None) -> int:
    """When to renew a certificate valid [not_before, not_after] at now:
    now + 70 % of its remaining life, the delay clamped to [RENEW_MIN_S,
    RENEW_MAX_S]. Seconds since the epoch."""
    return lib.mesh_identity_renew_at(_time(not_before, "not_before"),
                                      _time(not_after, "not_after"), _time(now))


def retry_delay_ms(attempt: int, not_after: TimeArg, now: TimeArg = None,
                   rnd: Optional[int] = None) -> int:
    """Milliseconds before retrying a failed renewal (attempt counts from
    0): exponential from RETRY_BASE_MS up to RETRY_MAX_MS with equal jitter
    from the 32 random bits rnd (drawn from the random module when None),
    and never past not_after while the certificate is still valid."""
    if rnd is None:
        rnd = _random.getrandbits(32)
    return lib.mesh_identity_retry_delay_ms(u(attempt, 32, "attempt"), _time(now),
                                            _time(not_after, "not_after"), u(rnd, 32, "rnd"))
