"""Tests of the certify declarations (mesh/certify.h) through ctypes, against the real libmesh.so.

The CA side and the workload side of Identity.Certify, as a Python control
plane or workload would call them; run as test_mesh.py says.
"""

import ctypes
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import mesh
except ImportError as e:
    if "libmesh" in str(e):
        raise
    sys.path.insert(0, os.path.dirname(HERE))
    import mesh

from mesh import _lib  # noqa: E402 - after the import fallback above

NOW = 1700000000  # 2023-11-14T22:13:20Z
AUD = b"identity.linkerd.cluster.local"
DNS_ID = "web.prod.serviceaccount.identity.linkerd.cluster.local"


def take_string(ctx, p):
    """Copy a libmesh-allocated char * and free it."""
    s = ctypes.string_at(p.value).decode()
    _lib.lib.mesh_free_string(ctx.ptr, p)
    return s


class TestCertify(unittest.TestCase):
    def setUp(self):
        self.ctx = mesh.Context()
        self.anchor, self.issuer = mesh.CA.init(now=NOW, ctx=self.ctx)
        self.token_key = mesh.Key.generate(self.ctx)
        self.token_pub = self.token_key.public_key()
        self.key = mesh.Key.generate(self.ctx)
        self.id = mesh.Identity("prod", "web", ctx=self.ctx)
        self.token = self.token_key.mint_token("prod", "web", AUD.decode(), NOW + 3600, iat=NOW)

    def handle(self, body: bytes, now=NOW):
        out, code, why = ctypes.c_void_p(), ctypes.c_char_p(), ctypes.c_char_p()
        rc = _lib.lib.mesh_certify_handle(self.issuer._handle, self.token_pub._handle, AUD, None,
                                          None, body, len(body), now, ctypes.byref(out),
                                          ctypes.byref(code), ctypes.byref(why))
        return rc, (take_string(self.ctx, out) if rc == 0 else None), code.value, why.value

    def test_round_trip(self):
        req = ctypes.c_void_p()
        self.assertEqual(_lib.lib.mesh_certify_request(self.key._handle, self.id._handle,
                                                       self.token.encode(), ctypes.byref(req)), 0)
        body = take_string(self.ctx, req)
        self.assertEqual(json.loads(body)["identity"], DNS_ID)
        rc, resp, code, why = self.handle(body.encode())
        self.assertEqual(rc, 0, why)
        self.assertIsNone(code)
        answer = json.loads(resp)
        self.assertEqual(answer["valid_until"], NOW + 86400)
        self.assertEqual(len(answer["intermediate_certificates"]), 1)
        chain, until = _lib.certs_p(), ctypes.c_uint64()
        raw = resp.encode()
        self.assertEqual(_lib.lib.mesh_certify_response_parse(
            self.ctx.ptr, raw, len(raw), ctypes.byref(chain), ctypes.byref(until), None), 0)
        self.assertEqual(until.value, NOW + 86400)
        certs = mesh.Certs.parse(_lib.lib.mesh_certs_bundle_pem(chain, 0), ctx=self.ctx)
        _lib.lib.mesh_certs_free(chain)
        self.assertEqual(certs.verify_peer(self.anchor.certs, self.id, now=NOW + 1), self.id)

    def test_error_classes(self):
        rc, _, code, why = self.handle(b"junk")
        self.assertEqual((rc, code), (-3, b"invalid_argument"))  # MESH_ERR_PARSE
        self.assertIn(b"JSON", why)
        other = self.token_key.mint_token("prod", "db", AUD.decode(), NOW + 3600, iat=NOW)
        body = json.dumps({"identity": DNS_ID, "token": other,
                           "certificate_signing_request": mesh.Csr(self.key, self.id).pem})
        rc, _, code, _ = self.handle(body.encode())
        self.assertLess(rc, 0)
        self.assertEqual(code, b"unauthenticated")
        body = json.dumps({"identity": "spiffe://example.org/ns/prod/sa/web", "token": self.token,
                           "certificate_signing_request": "x"})
        self.assertEqual(self.handle(body.encode())[2], b"failed_precondition")
        body = json.dumps({"identity": DNS_ID, "token": self.token,
                           "certificate_signing_request": mesh.Csr(self.key, self.id).pem})
        self.assertEqual(self.handle(body.encode(), now=NOW + 400 * 86400)[2], b"unavailable")


if __name__ == "__main__":
    unittest.main()
