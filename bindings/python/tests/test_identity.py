"""Tests of the identity bindings (mesh/identity.h) against the real libmesh.so.

Certificates are issued in-process by a CA the tests make, at a fixed clock
(NOW), so that every time below is exact. A few tests use the openssl
command, when there is one, to make certificates libmesh did not write.
Run as test_mesh.py says.
"""

import base64
import datetime
import gc
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import mesh
except ImportError as e:
    if "libmesh" in str(e):
        raise
    sys.path.insert(0, os.path.dirname(HERE))
    import mesh

from test_mesh import run_python  # noqa: E402 - after the import fallback above

NOW = 1700000000  # 2023-11-14T22:13:20Z
DAY = 86400
YEAR = 365 * DAY
DNS_ID = "web.prod.serviceaccount.identity.linkerd.cluster.local"
URI_ID = "spiffe://cluster.local/ns/prod/sa/web"
SERIAL_RE = r"^[0-9A-F]{2}(:[0-9A-F]{2})*$"
OPENSSL = shutil.which("openssl")  # installed by make test; its absence fails the tests that use it


def issue(ca, ident, key=None, now=NOW):
    """A leaf for ident from ca, the way a proxy gets one: key, CSR, issue."""
    key = key or mesh.Key.generate()
    return ca.issue(mesh.Csr(key, ident), ident, now=now)


def b64url_json(seg):
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


class TestIdentityNames(unittest.TestCase):
    def test_parse_dns(self):
        i = mesh.Identity.parse(DNS_ID)
        self.assertEqual((i.ns, i.sa, i.cp_ns, i.trust_domain), ("prod", "web", "linkerd",
                                                                  "cluster.local"))
        self.assertEqual((i.dns, i.uri), (DNS_ID, URI_ID))
        self.assertEqual(str(i), DNS_ID)
        self.assertIn(URI_ID, repr(i))
        # A DNS name brings its own control-plane namespace: cp_ns is ignored.
        j = mesh.Identity.parse("api.shop.serviceaccount.identity.mesh-system.example.org",
                                cp_ns="ignored")
        self.assertEqual((j.ns, j.sa, j.cp_ns, j.trust_domain),
                         ("shop", "api", "mesh-system", "example.org"))
        self.assertEqual(j.uri, "spiffe://example.org/ns/shop/sa/api")
        self.assertEqual(mesh.Identity.parse(DNS_ID.encode()).dns, DNS_ID)

    def test_parse_spiffe(self):
        i = mesh.Identity.parse(URI_ID)
        self.assertEqual((i.ns, i.sa, i.cp_ns, i.trust_domain),
                         ("prod", "web", mesh.identity.DEFAULT_CP_NS,
                          mesh.identity.DEFAULT_TRUST_DOMAIN))
        self.assertEqual(i.dns, DNS_ID)
        j = mesh.Identity.parse("spiffe://example.org/ns/shop/sa/api", cp_ns="mesh-system")
        self.assertEqual(j.cp_ns, "mesh-system")
        self.assertEqual(j.dns, "api.shop.serviceaccount.identity.mesh-system.example.org")

    def test_constructor(self):
        i = mesh.Identity("prod", "web")
        self.assertEqual((i.dns, i.uri, i.cp_ns), (DNS_ID, URI_ID, "linkerd"))
        j = mesh.Identity("shop", "api", cp_ns="mesh-system", trust_domain="example.org")
        self.assertEqual(j.dns, "api.shop.serviceaccount.identity.mesh-system.example.org")
        self.assertEqual(j.uri, "spiffe://example.org/ns/shop/sa/api")
        with self.assertRaises(mesh.ParseError) as cm:
            mesh.Identity("Prod", "web")
        self.assertIn("namespace is not a DNS-1123 label", str(cm.exception))
        with self.assertRaises(mesh.ParseError) as cm:
            mesh.Identity("prod", "web_1")
        self.assertIn("service account", cm.exception.detail)
        with self.assertRaises(mesh.ParseError):
            mesh.Identity("prod", "web", trust_domain="Example.org")

    def test_equality_and_hash(self):
        a = mesh.Identity.parse(DNS_ID)
        b = mesh.Identity.parse(URI_ID)
        c = mesh.Identity("prod", "web", cp_ns="other-cp")  # cp_ns does not take part
        self.assertEqual(a, b)
        self.assertEqual(a, c)
        self.assertEqual(len({a, b, c}), 1)
        for other in (mesh.Identity("prod", "api"), mesh.Identity("dev", "web"),
                      mesh.Identity("prod", "web", trust_domain="example.org")):
            self.assertNotEqual(a, other)
        self.assertNotEqual(a, DNS_ID)  # names compare with match(), not ==
        # Parts and equality stay available once the C object is freed.
        b.close()
        self.assertTrue(b.closed)
        self.assertEqual((b.dns, b.uri), (DNS_ID, URI_ID))
        self.assertEqual(a, b)
        self.assertNotEqual(b, mesh.Identity("prod", "api"))
        self.assertIn("closed", repr(b))

    def test_match(self):
        i = mesh.Identity("prod", "web")
        self.assertIsNone(i.match(DNS_ID))
        self.assertIsNone(i.match(URI_ID))
        # Another control plane still names the same workload.
        self.assertIsNone(i.match("web.prod.serviceaccount.identity.other.cluster.local"))
        self.assertTrue(i.matches(URI_ID))
        with self.assertRaises(mesh.IdentityError) as cm:
            i.match("spiffe://cluster.local/ns/prod/sa/api")
        msg = str(cm.exception)
        self.assertIn("prod/api", msg)
        self.assertIn("prod/web", msg)
        with self.assertRaises(mesh.IdentityError):
            i.match("web.prod.serviceaccount.identity.linkerd.example.org")
        with self.assertRaises(mesh.ParseError) as cm:
            i.match("http://cluster.local/ns/prod/sa/web")
        self.assertEqual(cm.exception.detail, "SPIFFE ID must start with spiffe://")
        self.assertFalse(i.matches("spiffe://cluster.local/ns/prod/sa/api"))
        self.assertFalse(i.matches("not an identity"))
        i.close()
        with self.assertRaises(mesh.ClosedError):
            i.match(DNS_ID)

    def test_invalid_names_have_reasons(self):
        cases = [
            ("", "identity is empty"),
            ("WEB.prod.serviceaccount.identity.linkerd.cluster.local", "lowercase"),
            ("web.prod.serviceaccount.identity.linkerd.cluster.local..", "empty"),
            ("web.prod.svc.cluster.local", None),
            ("web_x.prod.serviceaccount.identity.linkerd.cluster.local", "character"),
            ("x" * 254, "longer than 253 bytes"),
            ("spiffe://cluster.local/ns/prod", "/ns/<namespace>/sa/<service-account>"),
            ("SPIFFE://cluster.local/ns/prod/sa/web", "lowercase 'spiffe'"),
            ("spiffe://cluster.local/ns/prod/sa/web?x=1", "query or a fragment"),
            ("spiffe:///ns/prod/sa/web", "no trust domain"),
            ("spiffe://user@cluster.local/ns/prod/sa/web", "user info"),
            ("spiffe://cluster.local:8443/ns/prod/sa/web", "port"),
            ("spiffe://cluster.local/ns//sa/web", "empty segment"),
            ("spiffe://cluster.local/ns/../sa/web", "'.' or '..'"),
            ("spiffe://cluster.local/" + "a" * 2100, "longer than 2048 bytes"),
        ]
        for name, reason in cases:
            with self.subTest(name=name[:60]):
                with self.assertRaises(mesh.ParseError) as cm:
                    mesh.Identity.parse(name)
                e = cm.exception
                self.assertEqual(e.code, -3)
                self.assertTrue(e.detail, "no reason given")
                self.assertEqual(str(e), "malformed input: " + e.detail)
                if reason:
                    self.assertIn(reason, e.detail)

    def test_bad_arguments(self):
        with self.assertRaises(TypeError):
            mesh.Identity.parse(None)
        with self.assertRaises(TypeError):
            mesh.Identity.parse(42)
        with self.assertRaises(mesh.InvalidArgument):
            mesh.Identity.parse("spiffe://cluster.local/ns/prod/sa/web\0x")
        with self.assertRaises(TypeError):
            mesh.Identity("prod", None)
        with self.assertRaises(TypeError):
            mesh.Identity.parse(URI_ID, ctx="nope")
        i = mesh.Identity("prod", "web")
        with self.assertRaises(mesh.InvalidArgument):
            i.match("a\0b")

    def test_own_context(self):
        ctx = mesh.Context()
        i = mesh.Identity.parse(URI_ID, ctx=ctx)
        self.assertIs(i.context, ctx)
        ctx.close()
        self.assertEqual(i.dns, DNS_ID)
        self.assertIsNone(i.match(DNS_ID))  # still usable: freed after the last object
        i.close()
        self.assertIsNone(ctx._ptr)


class TestRenewal(unittest.TestCase):
    def test_renew_at(self):
        self.assertEqual(mesh.renew_at(NOW, NOW + DAY, NOW), NOW + DAY * 7 // 10)
        self.assertEqual(mesh.renew_at(NOW, NOW + 5, NOW), NOW + mesh.identity.RENEW_MIN_S)
        self.assertEqual(mesh.renew_at(NOW, NOW + 30 * DAY, NOW),
                         NOW + mesh.identity.RENEW_MAX_S)
        self.assertEqual(mesh.renew_at(NOW - DAY, NOW - 1, NOW), NOW + 10)  # expired
        dt = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
        self.assertEqual(mesh.renew_at(dt, NOW + DAY, dt), NOW + DAY * 7 // 10)
        with self.assertRaises(mesh.InvalidArgument):
            mesh.renew_at(datetime.datetime(2023, 1, 1), NOW)  # naive
        with self.assertRaises(mesh.RangeError):
            mesh.renew_at(-1, NOW)

    def test_retry_delay(self):
        for attempt, d in ((0, 1000), (1, 2000), (3, 8000), (20, 300000), (2**32 - 1, 300000)):
            self.assertEqual(mesh.retry_delay_ms(attempt, NOW + DAY, NOW, rnd=0), d // 2)
            self.assertEqual(mesh.retry_delay_ms(attempt, NOW + DAY, NOW, rnd=d - d // 2), d)
            r = mesh.retry_delay_ms(attempt, NOW + DAY, NOW)
            self.assertTrue(d // 2 <= r <= d, r)
        # Never past notAfter while the certificate is valid.
        self.assertEqual(mesh.retry_delay_ms(10, NOW + 2, NOW, rnd=0), 2000)
        with self.assertRaises(mesh.RangeError):
            mesh.retry_delay_ms(2**32, NOW + DAY, NOW)


class TestKeys(unittest.TestCase):
    def test_generate_and_parse(self):
        k = mesh.Key.generate()
        self.assertTrue(k.is_private)
        self.assertTrue(k.pem.startswith("-----BEGIN "))
        self.assertIn("PRIVATE KEY-----", k.pem)
        self.assertIn("-----BEGIN PUBLIC KEY-----", k.public_pem)
        self.assertRegex(k.id, r"^[A-Za-z0-9_-]{43}$")  # SHA-256, base64url
        k2 = mesh.Key.parse(k.pem)
        self.assertEqual((k2.id, k2.public_pem, k2.pem), (k.id, k.public_pem, k.pem))
        pub = k.public_key()
        self.assertFalse(pub.is_private)
        self.assertIsNone(pub.pem)
        self.assertEqual((pub.id, pub.public_pem), (k.id, k.public_pem))
        self.assertEqual(mesh.Key.parse(k.public_pem.encode()).id, k.id)
        self.assertNotEqual(mesh.Key.generate().id, k.id)
        self.assertIn("private", repr(k))
        self.assertIn("public", repr(pub))

    def test_load(self):
        k = mesh.Key.generate()
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "key.pem")
            with open(p, "w") as f:
                f.write(k.pem)
            self.assertEqual(mesh.Key.load(p).id, k.id)
            with self.assertRaises(mesh.MeshIOError) as cm:
                mesh.Key.load(os.path.join(d, "missing.pem"))
            self.assertIn("missing.pem", str(cm.exception))

    def test_bad_keys(self):
        with self.assertRaises(mesh.ParseError):
            mesh.Key.parse("not a key")
        with self.assertRaises(mesh.ParseError):
            mesh.Key.parse(b"")
        with self.assertRaises(mesh.LimitError):
            mesh.Key.parse(b"x" * 70000)
        with self.assertRaises(TypeError):
            mesh.Key()
        with self.assertRaises(TypeError):
            mesh.Key.parse(None)

    def test_random_source_of_the_context(self):
        # The key comes from the context's random source: a fixed source gives
        # the same key twice, a failing one an error.
        ctx = mesh.Context()
        ctx.set_random(lambda n: bytes(range(1, n + 1)) if n <= 255 else b"\x05" * n)
        self.assertEqual(mesh.Key.generate(ctx=ctx).id, mesh.Key.generate(ctx=ctx).id)
        ctx.set_random(lambda n: b"")
        with self.assertRaises(mesh.MeshError):
            mesh.Key.generate(ctx=ctx)
        ctx.set_random(None)
        self.assertTrue(mesh.Key.generate(ctx=ctx).id)

    def test_rsa_key_from_openssl(self):
        pem = subprocess.run([OPENSSL, "genrsa", "2048"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, check=True).stdout
        k = mesh.Key.parse(pem)
        self.assertTrue(k.is_private)
        self.assertEqual(k.id, "")  # a thumbprint only for P-256
        with self.assertRaises(mesh.Unsupported):
            k.mint_token("prod", "web", "aud", exp=NOW + 60, iat=NOW)
        with self.assertRaises(mesh.Unsupported):
            mesh.Csr(k, mesh.Identity("prod", "web"))
        small = subprocess.run([OPENSSL, "genrsa", "1024"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True).stdout
        with self.assertRaises(mesh.Unsupported):
            mesh.Key.parse(small)


class TestCsr(unittest.TestCase):
    def test_new_parse_verify(self):
        key, ident = mesh.Key.generate(), mesh.Identity("prod", "web")
        csr = mesh.Csr(key, ident)
        self.assertTrue(csr.pem.startswith("-----BEGIN CERTIFICATE REQUEST-----"))
        der = csr.der
        self.assertEqual(der[0], 0x30)  # a DER SEQUENCE
        self.assertEqual(csr.identity, ident)
        self.assertIsNone(csr.verify(ident))
        with self.assertRaises(mesh.IdentityError) as cm:
            csr.verify(mesh.Identity("prod", "api"))
        self.assertTrue(cm.exception.detail)
        for data in (csr.pem, csr.pem.encode(), der):
            c2 = mesh.Csr.parse(data)
            self.assertEqual(c2.der, der)
            self.assertEqual(c2.identity.uri, URI_ID)
            c2.verify(ident)

    def test_bad_csrs(self):
        with self.assertRaises(mesh.ParseError):
            mesh.Csr.parse("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                           "-----END CERTIFICATE REQUEST-----\n")
        with self.assertRaises(mesh.LimitError):
            mesh.Csr.parse(b"\x30" * (mesh.identity.CSR_MAX_BYTES + 1))
        key = mesh.Key.generate()
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.Csr(key.public_key(), mesh.Identity("prod", "web"))
        self.assertIn("private key", str(cm.exception))
        with self.assertRaises(TypeError):
            mesh.Csr(mesh.Identity("prod", "web"), key)  # arguments swapped

    def test_foreign_csr_with_extra_san(self):
        with tempfile.TemporaryDirectory() as d:
            keyf = os.path.join(d, "k.pem")
            subprocess.run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                            "-out", keyf], check=True, stderr=subprocess.DEVNULL)
            pem = subprocess.run(
                [OPENSSL, "req", "-new", "-key", keyf, "-subj", "/CN=" + DNS_ID, "-addext",
                 "subjectAltName=DNS:%s,URI:%s,DNS:evil.example.com" % (DNS_ID, URI_ID)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout
        csr = mesh.Csr.parse(pem)
        with self.assertRaises(mesh.IdentityError):
            csr.identity
        with self.assertRaises(mesh.IdentityError):
            csr.verify(mesh.Identity("prod", "web"))


class TestCertificates(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.anchor, cls.issuer = mesh.CA.init(now=NOW)
        cls.anchors = cls.anchor.certs
        cls.ident = mesh.Identity("prod", "web")
        cls.key = mesh.Key.generate()
        cls.chain = issue(cls.issuer, cls.ident, cls.key)

    def test_ca_init(self):
        root, iss = self.anchor.certificate, self.issuer.certificate
        self.assertEqual(root.subject, "CN=root.linkerd.cluster.local")
        self.assertEqual(root.issuer, root.subject)
        self.assertTrue(root.is_ca)
        self.assertIsNone(root.pathlen)  # no limit
        self.assertEqual((root.not_before, root.not_after),
                         (NOW - mesh.identity.CA_DEFAULT_CLOCK_SKEW_S, NOW + YEAR))
        self.assertEqual(iss.subject, "CN=identity.linkerd.cluster.local")
        self.assertEqual(iss.issuer, root.subject)
        self.assertTrue(iss.is_ca)
        self.assertEqual(iss.pathlen, 0)
        self.assertEqual(iss.sans, [])
        self.assertEqual(len(self.anchors), 1)
        self.assertEqual(len(self.issuer.certs), 1)  # the anchor is not sent along
        self.assertRegex(root.serial, SERIAL_RE)
        self.assertIn("identity.linkerd.cluster.local", repr(self.issuer))
        # The issuer's certificate verifies against the anchor.
        self.issuer.certs.verify(self.anchors, now=NOW)
        a, i = mesh.CA.init("example.org", "mesh-system", now=NOW, lifetime=30 * DAY)
        self.assertEqual(a.certificate.subject, "CN=root.mesh-system.example.org")
        self.assertEqual(i.certificate.subject, "CN=identity.mesh-system.example.org")
        self.assertEqual(i.certificate.not_after, NOW + 30 * DAY)
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.CA.init("bad domain!", now=NOW)
        self.assertIn("cn", str(cm.exception))

    def test_issued_leaf(self):
        c = self.chain
        self.assertEqual(len(c), 2)
        leaf = c[0]
        self.assertEqual(c.leaf, leaf)
        self.assertEqual(leaf.subject, "CN=" + DNS_ID)
        self.assertEqual(leaf.issuer, "CN=identity.linkerd.cluster.local")
        self.assertRegex(leaf.serial, SERIAL_RE)
        self.assertNotEqual(leaf.serial, issue(self.issuer, self.ident).leaf.serial)
        self.assertEqual(leaf.not_before, NOW - 20)
        self.assertEqual(leaf.not_after, NOW + mesh.identity.CA_DEFAULT_LIFETIME_S)
        self.assertIsInstance(leaf.not_before, int)
        utc = datetime.timezone.utc
        self.assertEqual(leaf.not_before_datetime, datetime.datetime(2023, 11, 14, 22, 13, 0,
                                                                     tzinfo=utc))
        self.assertEqual(leaf.not_after_datetime, datetime.datetime(2023, 11, 15, 22, 13, 20,
                                                                    tzinfo=utc))
        self.assertEqual(leaf.not_after_datetime.timestamp(), leaf.not_after)
        self.assertFalse(leaf.is_ca)
        self.assertIsNone(leaf.pathlen)
        self.assertEqual(leaf.sans, [(mesh.SanType.DNS, DNS_ID), (mesh.SanType.URI, URI_ID)])
        self.assertEqual(leaf.sans[0].type, mesh.SanType.DNS)
        self.assertEqual(leaf.sans[1].value, URI_ID)
        self.assertEqual(leaf.identity, self.ident)
        self.assertEqual(leaf.identity.dns, DNS_ID)
        self.assertTrue(leaf.valid_at(NOW))
        self.assertTrue(leaf.valid_at(NOW + DAY))
        self.assertFalse(leaf.valid_at(NOW + DAY + 1))
        self.assertFalse(leaf.valid_at(NOW - 21))
        # The rest of the chain is the issuer's.
        self.assertEqual(c[1], self.issuer.certificate)
        self.assertEqual(c[-1], c[1])
        self.assertEqual(c.bundle_pem(1), self.issuer.certs.pem)
        self.assertEqual(c.pem, leaf.pem + c.bundle_pem(1))
        self.assertEqual([x.index for x in c], [0, 1])
        self.assertEqual(len(c[0:1]), 1)
        with self.assertRaises(IndexError):
            c[2]
        with self.assertRaises(IndexError):
            c.bundle_pem(2)
        self.assertIn(DNS_ID, repr(c))
        self.assertIn(DNS_ID, repr(leaf))

    def test_ca_certificate_names_no_workload(self):
        with self.assertRaises(mesh.IdentityError) as cm:
            self.chain[1].identity
        self.assertIn("CA", cm.exception.detail)

    def test_verify(self):
        self.assertIsNone(self.chain.verify(self.anchors, now=NOW))
        self.chain.verify(self.anchors, now=NOW + DAY)  # notAfter itself is valid
        dt = datetime.datetime.fromtimestamp(NOW + 3600, datetime.timezone.utc)
        self.chain.verify(self.anchors, now=dt)
        with self.assertRaises(mesh.ExpiredError) as cm:
            self.chain.verify(self.anchors, now=NOW + DAY + 1)
        self.assertEqual(cm.exception.detail, "the certificate has expired")
        with self.assertRaises(mesh.ExpiredError) as cm:
            self.chain.verify(self.anchors, now=NOW - 21)
        self.assertEqual(cm.exception.detail, "the certificate is not valid yet")
        # The real clock: this leaf of 2023 has long expired.
        with self.assertRaises(mesh.ExpiredError):
            self.chain.verify(self.anchors)
        # Another trust domain's anchor: no path.
        other_anchor, _ = mesh.CA.init(now=NOW)
        with self.assertRaises(mesh.TLSError) as cm:
            self.chain.verify(other_anchor.certs, now=NOW)
        self.assertIn("trust anchor", cm.exception.detail)
        # The leaf without its intermediate: no path either.
        leaf_only = mesh.Certs.parse(self.chain[0].pem)
        with self.assertRaises(mesh.TLSError):
            leaf_only.verify(self.anchors, now=NOW)
        # During a rotation the bundle holds both anchors.
        bundle = mesh.Certs.parse(other_anchor.certs.pem + self.anchors.pem)
        self.assertEqual(len(bundle), 2)
        self.chain.verify(bundle, now=NOW)
        with self.assertRaises(TypeError):
            self.chain.verify(self.anchor, now=NOW)  # a CA, not its Certs

    def test_verify_peer(self):
        got = self.chain.verify_peer(self.anchors, now=NOW)
        self.assertEqual(got, self.ident)
        self.assertEqual(got.uri, URI_ID)
        self.assertEqual(self.chain.verify_peer(self.anchors, self.ident, now=NOW), self.ident)
        with self.assertRaises(mesh.IdentityError) as cm:
            self.chain.verify_peer(self.anchors, mesh.Identity("prod", "api"), now=NOW)
        self.assertIn("another workload", cm.exception.detail)
        with self.assertRaises(mesh.ExpiredError):
            self.chain.verify_peer(self.anchors, self.ident, now=NOW + 2 * DAY)

    def test_parse_and_load(self):
        pem = self.chain.pem
        for data in (pem, pem.encode()):
            c = mesh.Certs.parse(data)
            self.assertEqual(len(c), 2)
            self.assertEqual([x.pem for x in c], [x.pem for x in self.chain])
            self.assertEqual(c[0].serial, self.chain[0].serial)
            c.verify_peer(self.anchors, self.ident, now=NOW)
        der = ssl.PEM_cert_to_DER_cert(self.chain[0].pem)
        one = mesh.Certs.parse(der)
        self.assertEqual(len(one), 1)
        self.assertEqual(one[0], self.chain[0])
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "chain.pem")
            with open(p, "w") as f:
                f.write(pem)
            import pathlib
            self.assertEqual(len(mesh.Certs.load(pathlib.Path(p))), 2)
            with self.assertRaises(mesh.MeshIOError):
                mesh.Certs.load(os.path.join(d, "nope.pem"))
            with self.assertRaises(mesh.MeshIOError):
                mesh.Certs.load(d)  # a directory

    def test_bad_pem(self):
        for bad in ("", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    self.chain[0].pem[:200]):
            with self.subTest(bad=bad[:30]):
                with self.assertRaises(mesh.ParseError) as cm:
                    mesh.Certs.parse(bad)
                self.assertEqual(cm.exception.code, -3)
        with self.assertRaises(mesh.LimitError):
            mesh.Certs.parse(self.chain[0].pem * 65)  # over CERTS_MAX certificates
        with self.assertRaises(mesh.LimitError):
            mesh.Certs.parse(b"x" * (mesh.identity.CERTS_MAX_BYTES + 1))
        with self.assertRaises(TypeError):
            mesh.Certs()

    def test_lifetime_skew_and_clamping(self):
        root = mesh.CA.new_root("test root", now=NOW, lifetime=10 * DAY)
        self.assertEqual(root.certificate.subject, "CN=test root")
        iss = root.new_issuer("test issuer", now=NOW)
        self.assertEqual(iss.certificate.not_after, NOW + 10 * DAY)  # clamped to the root's
        iss.set_lifetime(3600)
        iss.set_clock_skew(0)
        leaf = issue(iss, self.ident)[0]
        self.assertEqual((leaf.not_before, leaf.not_after), (NOW, NOW + 3600))
        iss.set_lifetime(0)  # back to the default, clamped to the issuer's notAfter
        iss.set_clock_skew(300)
        leaf = issue(iss, self.ident, now=NOW + 9 * DAY + 3600)[0]
        self.assertEqual(leaf.not_before, NOW + 9 * DAY + 3600 - 300)
        self.assertEqual(leaf.not_after, NOW + 10 * DAY)
        with self.assertRaises(mesh.RangeError):
            iss.set_lifetime(11 * YEAR)
        with self.assertRaises(mesh.RangeError):
            iss.set_clock_skew(2 * DAY)
        with self.assertRaises(mesh.RangeError):
            iss.set_lifetime(-1)
        with self.assertRaises(mesh.RangeError):
            mesh.CA.new_root("too long", now=NOW, lifetime=101 * YEAR)

    def test_issuer_limits(self):
        with self.assertRaises(mesh.ExpiredError) as cm:
            issue(self.issuer, self.ident, now=NOW + 2 * YEAR)
        self.assertEqual(cm.exception.detail, "issuer certificate has expired")
        with self.assertRaises(mesh.ExpiredError):
            issue(self.issuer, self.ident, now=NOW - DAY)
        with self.assertRaises(mesh.InvalidArgument) as cm:
            self.issuer.new_issuer("below pathlen 0", now=NOW)
        self.assertIn("pathlen 0", str(cm.exception))
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.CA.new_root("bad/cn", now=NOW)
        self.assertIn("cn", str(cm.exception))
        with self.assertRaises(mesh.InvalidArgument):
            mesh.CA.new_root("", now=NOW)
        with self.assertRaises(TypeError):
            mesh.CA()

    def test_csr_must_name_the_proven_identity(self):
        csr = mesh.Csr(self.key, self.ident)
        with self.assertRaises(mesh.IdentityError):
            self.issuer.issue(csr, mesh.Identity("prod", "api"), now=NOW)
        with self.assertRaises(TypeError):
            self.issuer.issue(csr, URI_ID, now=NOW)

    def test_ca_from_pem(self):
        ca = mesh.CA.from_pem(self.issuer.certs.pem, self.issuer.key.pem)
        self.assertEqual(ca.certificate, self.issuer.certificate)
        self.assertEqual(ca.key.id, self.issuer.key.id)
        issue(ca, self.ident).verify_peer(self.anchors, self.ident, now=NOW)
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.CA.from_pem(self.chain[0].pem, self.key.pem)
        self.assertEqual(cm.exception.detail, "issuer certificate is not a CA")
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.CA.from_pem(self.issuer.certs.pem, self.key.pem)
        self.assertIn("does not match", cm.exception.detail)
        with self.assertRaises(mesh.InvalidArgument) as cm:
            mesh.CA.from_pem(self.issuer.certs.pem, self.issuer.key.public_pem)
        self.assertIn("public key", cm.exception.detail)
        with self.assertRaises(mesh.ParseError):
            mesh.CA.from_pem("junk", self.issuer.key.pem)

    def test_lifetimes(self):
        ctx = mesh.Context()
        anchor, iss = mesh.CA.init(now=NOW, ctx=ctx)
        anchors = anchor.certs
        chain = issue(iss, self.ident)
        self.assertIs(chain.context, ctx)
        leaf = chain[0]
        ident = leaf.identity
        # Copies outlive the CA they came from.
        anchor.close()
        iss.close()
        gc.collect()
        junk = [mesh.CA.init(now=NOW) for _ in range(3)]
        del junk
        chain.verify(anchors, now=NOW)
        with self.assertRaises(mesh.ClosedError):
            anchor.certs
        with self.assertRaises(mesh.ClosedError):
            issue(iss, self.ident)
        self.assertIn("closed", repr(iss))
        # Views need their list; identities do not.
        chain.close()
        with self.assertRaises(mesh.ClosedError):
            leaf.subject
        with self.assertRaises(mesh.ClosedError):
            len(chain)
        self.assertIn("closed", repr(leaf))
        self.assertIn("closed", repr(chain))
        self.assertEqual(ident.uri, URI_ID)
        ctx.close()
        self.assertIsNotNone(ctx._ptr)  # anchors and ident are still alive
        anchors.close()
        ident.close()
        self.assertIsNone(ctx._ptr)

    def test_threads_share_a_ca(self):
        errors, serials = [], []

        def work():
            try:
                for _ in range(10):
                    c = issue(self.issuer, self.ident)
                    assert c.verify_peer(self.anchors, self.ident, now=NOW) == self.ident
                    serials.append(c[0].serial)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        ts = [threading.Thread(target=work) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(set(serials)), 60)

    def test_foreign_certificate(self):
        # Made by openssl: RSA, O= in the names, a pathlen, and every SAN kind.
        with tempfile.TemporaryDirectory() as d:
            keyf = os.path.join(d, "k.pem")
            pem = subprocess.run(
                [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyf,
                 "-days", "36500", "-subj", "/O=Example Org/CN=Foreign CA", "-addext",
                 "basicConstraints=critical,CA:TRUE,pathlen:2", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign", "-addext",
                 "subjectAltName=DNS:ca.example.org,URI:https://example.org/ca,"
                 "IP:10.0.0.1,IP:::1,email:ca@example.org"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout
            with open(keyf, "rb") as f:
                key_pem = f.read()
        c = mesh.Certs.parse(pem)[0]
        self.assertIn("CN=Foreign CA", c.subject)
        self.assertIn("O=Example Org", c.subject)
        self.assertEqual(c.issuer, c.subject)
        self.assertTrue(c.is_ca)
        self.assertEqual(c.pathlen, 2)
        sans = c.sans
        self.assertIn((mesh.SanType.DNS, "ca.example.org"), sans)
        self.assertIn((mesh.SanType.URI, "https://example.org/ca"), sans)
        self.assertIn((mesh.SanType.IP, "10.0.0.1"), sans)
        self.assertIn((mesh.SanType.EMAIL, "ca@example.org"), sans)
        self.assertEqual(len([s for s in sans if s.type == mesh.SanType.IP]), 2)
        self.assertGreater(c.not_after - c.not_before, 99 * YEAR)
        with self.assertRaises(mesh.IdentityError):
            c.identity
        # An RSA issuer libmesh did not make still issues workload certificates.
        ca = mesh.CA.from_pem(pem, key_pem)
        now = c.not_before + DAY
        chain = issue(ca, self.ident, now=now)
        self.assertEqual(chain[0].issuer, c.subject)
        self.assertEqual(chain.verify_peer(ca.certs, self.ident, now=now), self.ident)

    def test_mutated_certificates_never_crash(self):
        # In a child interpreter: a crash must fail this test, not the run.
        code = textwrap.dedent("""\
            import random, ssl, mesh
            NOW = %d
            anchor, issuer = mesh.CA.init(now=NOW)
            ident = mesh.Identity("prod", "web")
            chain = issuer.issue(mesh.Csr(mesh.Key.generate(), ident), ident, now=NOW)
            inputs = [chain.pem.encode(), ssl.PEM_cert_to_DER_cert(chain[0].pem)]
            anchors = anchor.certs
            rng = random.Random(7)
            ok = failed = verified = 0
            for i in range(1500):
                t = bytearray(rng.choice(inputs))
                for _ in range(rng.randint(1, 4)):
                    pos = rng.randrange(len(t))
                    if rng.randrange(3):
                        t[pos] = rng.randrange(256)
                    else:
                        del t[pos:pos + rng.randint(1, 8)]
                try:
                    c = mesh.Certs.parse(bytes(t))
                except mesh.MeshError as e:
                    assert e.code < 0 and str(e), e
                    failed += 1
                    continue
                ok += 1
                for x in c:
                    (x.subject, x.issuer, x.serial, x.not_before, x.not_after, x.is_ca,
                     x.pathlen, x.sans, x.pem)
                    try:
                        x.identity
                    except mesh.MeshError:
                        pass
                try:
                    c.verify_peer(anchors, ident, now=NOW)
                    verified += 1
                except mesh.MeshError as e:
                    assert e.code < 0, e
            print(ok, failed, verified)
            """) % NOW
        r = run_python(code)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        ok, failed, verified = map(int, r.stdout.split())
        self.assertGreater(failed, 0)
        self.assertGreater(ok, 0)


class TestTokens(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = mesh.Key.generate()
        cls.ident = mesh.Identity("prod", "web")
        cls.token = cls.key.mint_token("prod", "web", "identity.linkerd.cluster.local",
                                       exp=NOW + 3600, iat=NOW)

    def test_mint(self):
        parts = self.token.split(".")
        self.assertEqual(len(parts), 3)
        self.assertEqual(b64url_json(parts[0]), {"alg": "ES256", "typ": "JWT",
                                                 "kid": self.key.id})
        self.assertEqual(b64url_json(parts[1]), {"ns": "prod", "sa": "web",
                                                 "aud": "identity.linkerd.cluster.local",
                                                 "exp": NOW + 3600, "iat": NOW})
        self.assertEqual(len(base64.urlsafe_b64decode(parts[2] + "==")), 64)

    def test_verify(self):
        aud = "identity.linkerd.cluster.local"
        self.key.verify_token(self.token, aud, self.ident, now=NOW + 60)
        self.key.public_key().verify_token(self.token.encode(), aud, self.ident, now=NOW)
        cases = [
            (dict(aud="other"), mesh.DeniedError),
            (dict(now=NOW + 3600), mesh.ExpiredError),
            (dict(now=NOW - 21), mesh.ExpiredError),  # issued in the future
            (dict(claimed=mesh.Identity("prod", "api")), mesh.IdentityError),
            (dict(key=mesh.Key.generate()), mesh.DeniedError),
            (dict(token=self.token[:-4] + ("AAAA" if self.token[-4:] != "AAAA" else "BBBB")),
             mesh.DeniedError),
            (dict(token="a.b"), mesh.ParseError),
            (dict(token="x" * (mesh.identity.TOKEN_MAX_LEN + 1)), mesh.LimitError),
        ]
        for change, err in cases:
            args = dict(key=self.key, token=self.token, aud=aud, claimed=self.ident, now=NOW)
            args.update(change)
            with self.subTest(change=sorted(change)):
                with self.assertRaises(err) as cm:
                    args.pop("key").verify_token(**args)
                self.assertTrue(cm.exception.detail, "no reason given")
        # A token carries no trust domain: any trust domain's prod/web matches.
        self.key.verify_token(self.token, aud, mesh.Identity("prod", "web",
                                                             trust_domain="example.org"),
                              now=NOW)

    def test_mint_errors(self):
        with self.assertRaises(mesh.RangeError):
            self.key.mint_token("prod", "web", "aud", exp=NOW, iat=NOW)
        with self.assertRaises(mesh.ParseError) as cm:
            self.key.mint_token("Prod", "web", "aud", exp=NOW + 1, iat=NOW)
        self.assertIn("DNS-1123", str(cm.exception))
        with self.assertRaises(mesh.ParseError):
            self.key.mint_token("prod", "web", "", exp=NOW + 1, iat=NOW)
        with self.assertRaises(mesh.InvalidArgument):
            self.key.public_key().mint_token("prod", "web", "aud", exp=NOW + 1, iat=NOW)
        with self.assertRaises(mesh.RangeError):
            self.key.mint_token("prod", "web", "aud", exp=-1)
        # iat defaults to the real clock.
        t = self.key.mint_token("prod", "web", "aud", exp=2**40)
        iat = b64url_json(t.split(".")[1])["iat"]
        import time
        self.assertLessEqual(abs(iat - time.time()), 60)
        self.key.verify_token(t, "aud", self.ident)


class TestDeclarations(unittest.TestCase):
    def test_identity_h_is_bound(self):
        # Every function of identity.h is declared (test_mesh.py checks the
        # argument counts of every bound header); spot-check the types.
        from mesh import _lib
        self.assertEqual(_lib.lib.mesh_certs_verify.argtypes,
                         [_lib.certs_p, _lib.certs_p, _lib.c_uint64, _lib.why_p])
        self.assertIs(_lib.lib.mesh_ca_certs.restype, _lib.certs_p)
        self.assertIs(_lib.lib.mesh_certs_pathlen.restype, _lib.c_int32)
        # Distinct handle types: a key is refused where an identity is expected.
        import ctypes
        with self.assertRaises(ctypes.ArgumentError):
            _lib.lib.mesh_identity_dns(mesh.Key.generate()._handle)

    def test_exports(self):
        for name in ("Identity", "Key", "Csr", "Certs", "Certificate", "San", "SanType",
                     "CA", "renew_at", "retry_delay_ms"):
            self.assertIn(name, mesh.__all__)
            self.assertTrue(hasattr(mesh, name), name)
        self.assertEqual(mesh.identity.DEFAULT_TRUST_DOMAIN, "cluster.local")


if __name__ == "__main__":
    unittest.main()
