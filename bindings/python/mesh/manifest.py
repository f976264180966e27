"""Manifests: multi-document YAML/JSON files of Linkerd, SMI and mesh resources."""

import ctypes
import enum
import os
from typing import Iterator, List, Optional, Union

from . import _lib
from ._lib import lib
from .context import Context, Handle, buffer, call_with_diags, cstr, pystr, resolve_ctx
from .errors import check
from .profile import Profile
from .split import Split

__all__ = ["Manifest", "Document", "Kind"]


class Kind(enum.IntEnum):
    """What a document is, by apiVersion group and kind (MESH_KIND_*)."""

    OTHER = 0
    SERVICE_PROFILE = 1
    TRAFFIC_SPLIT = 2
    SERVER = 3
    SERVER_AUTHORIZATION = 4
    AUTHORIZATION_POLICY = 5
    MESH_TLS_AUTHENTICATION = 6
    NETWORK_AUTHENTICATION = 7
    HTTP_ROUTE = 8
    SERVICE = 9
    WORKLOAD = 10

    @classmethod
    def _of(cls, v: int) -> Union["Kind", int]:
        try:
            return cls(v)
        except ValueError:  # a newer library's kind: keep the number
            return v


class Document:
    """One document of a manifest. Its fields are copies; its profile or
    split (when it is one) holds its own reference, so a Document stays
    usable after the Manifest is closed."""

    __slots__ = ("index", "kind", "kind_name", "api_version", "name", "namespace", "line",
                 "profile", "split")

    def __init__(self, index, kind, kind_name, api_version, name, namespace, line, profile,
                 split):
        self.index = index
        self.kind = kind                 # Kind
        self.kind_name = kind_name       # as written, e.g. "HttpRoute"
        self.api_version = api_version   # e.g. "linkerd.io/v1alpha2"
        self.name = name                 # metadata.name (None if absent on unknown kinds)
        self.namespace = namespace       # metadata.namespace, "default" when absent
        self.line = line                 # 1-based line where the document starts
        self.profile = profile           # Profile for a ServiceProfile, else None
        self.split = split               # Split for a TrafficSplit, else None

    def __repr__(self):
        return "<mesh.Document %s %s/%s line %d>" % (self.kind_name, self.namespace,
                                                     self.name, self.line)


class Manifest(Handle):
    """A loaded, validated set of documents (Manifest.load / Manifest.loads).

    .documents lists them in order; .warnings has the diagnostics that did
    not fail the load (unknown fields, non-canonical spellings). A load that
    fails raises ParseError (or LimitError, MeshIOError) whose .diagnostics
    say file:line:column what is wrong."""

    _free_fn = lib.mesh_manifest_free
    _what = "manifest"

    def __init__(self, *a, **kw):
        raise TypeError("use Manifest.load(path) or Manifest.loads(text)")

    @classmethod
    def load(cls, path: Union[str, bytes, "os.PathLike"],
             ctx: Optional[Context] = None) -> "Manifest":
        """Load a file ("-" reads standard input)."""
        path_b = cstr(os.fsencode(path), "path")
        ctx = resolve_ctx(ctx)
        return cls._load(ctx, lambda cp, d, ret: lib.mesh_manifest_load_file(cp, path_b, d, ret))

    @classmethod
    def loads(cls, text: Union[str, bytes], name: Optional[str] = None,
              ctx: Optional[Context] = None) -> "Manifest":
        """Load from a string; name is the file name diagnostics show
        ("<input>" when None)."""
        buf = buffer(text)
        name_b = cstr(name, "name", allow_none=True)
        ctx = resolve_ctx(ctx)
        return cls._load(ctx, lambda cp, d, ret: lib.mesh_manifest_load_buffer(
            cp, name_b, buf, len(buf), d, ret))

    @classmethod
    def _load(cls, ctx: Context, call) -> "Manifest":
        ctx_ptr = ctx._acquire()
        h = _lib.manifest_p()
        try:
            rc, diags = call_with_diags(ctx_ptr, lambda d: call(ctx_ptr, d, ctypes.byref(h)))
            check(rc, diags)
        except BaseException:
            ctx._release()
            raise
        self = cls.__new__(cls)
        self._adopt(ctx, h)
        self.warnings = diags  # only warnings on success
        try:
            self.documents = [self._document(i) for i in range(lib.mesh_manifest_count(h))]
        except BaseException:
            self.close()
            raise
        return self

    def _document(self, i: int) -> Document:
        h = self._h
        return Document(
            index=i,
            kind=Kind._of(lib.mesh_manifest_kind(h, i)),
            kind_name=pystr(lib.mesh_manifest_kind_name(h, i)),
            api_version=pystr(lib.mesh_manifest_api_version(h, i)),
            name=pystr(lib.mesh_manifest_name(h, i)),
            namespace=pystr(lib.mesh_manifest_namespace(h, i)),
            line=lib.mesh_manifest_line(h, i),
            profile=Profile._borrow(self._ctx, lib.mesh_manifest_profile(h, i)),
            split=Split._borrow(self._ctx, lib.mesh_manifest_split(h, i)))

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __getitem__(self, i) -> Document:
        return self.documents[i]

    @property
    def profiles(self) -> List[Profile]:
        return [d.profile for d in self.documents if d.profile is not None]

    @property
    def splits(self) -> List[Split]:
        return [d.split for d in self.documents if d.split is not None]

    def find(self, kind: Optional[int] = None, name: Optional[str] = None,
             namespace: Optional[str] = None) -> Optional[Document]:
        """The first document with the given kind, name and namespace (each
        optional), or None."""
        for d in self.documents:
            if ((kind is None or d.kind == kind) and (name is None or d.name == name)
                    and (namespace is None or d.namespace == namespace)):
                return d
        return None

    def __repr__(self):
        return "<mesh.Manifest %d documents%s>" % (len(self.documents),
                                                   " closed" if self.closed else "")


def manifest_file_name(name: str) -> bool:
    """True when a file of that name is a manifest the store reads (*.yaml, *.yml, *.json, not hidden)."""
    return bool(lib.mesh_manifest_file_name(cstr(name, "name")))


def dns_label_valid(s: str) -> bool:
    """True when s is an RFC 1123 label, as Kubernetes names namespaces and Services."""
    return bool(lib.mesh_dns_label_valid(cstr(s, "name")))


def dns_name_valid(s: str) -> bool:
    """True when s is an RFC 1123 name (labels joined by '.', at most 253)."""
    return bool(lib.mesh_dns_name_valid(cstr(s, "name")))


def duration_seconds(s: str) -> int:
    """A Go duration ("24h0m0s", "90s") in whole seconds; ParseError/RangeError otherwise."""
    out = ctypes.c_uint64()
    why = ctypes.c_char_p()
    check(lib.mesh_duration_parse_s(cstr(s, "duration"), ctypes.byref(out), ctypes.byref(why)),
          detail=pystr(why.value))
    return out.value
