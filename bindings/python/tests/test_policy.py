"""Tests of the policy declarations (mesh/policy.h) against the real libmesh.so: the
seed's exam-api policy compiled and decided through ctypes. Run as test_mesh.py says.
"""

import ctypes
import os
import socket
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import mesh  # noqa: F401 (loads and declares libmesh)
except ImportError as e:
    if "libmesh" in str(e):
        raise
    sys.path.insert(0, os.path.dirname(HERE))
    import mesh  # noqa: F401
from mesh import _lib

DATA = os.environ.get("MESH_TEST_DATA", os.path.join(HERE, "..", "..", "..", "tests", "data"))
FRONTEND = b"frontend-service.production.serviceaccount.identity.linkerd.cluster.local"


class TestPolicy(unittest.TestCase):
    def setUp(self):
        lib = _lib.lib
        self.ctx = _lib.ctx_p()
        self.assertEqual(lib.mesh_ctx_new(ctypes.byref(self.ctx)), 0)
        m = _lib.manifest_p()
        path = os.path.join(DATA, "seed", "exam-api-policy.yaml").encode()
        self.assertEqual(lib.mesh_manifest_load_file(self.ctx, path, None, ctypes.byref(m)), 0)
        self.policy = _lib.policy_p()
        arr = (_lib.manifest_p * 1)(m)
        self.assertEqual(lib.mesh_policy_compile(self.ctx, arr, 1, None, None,
                                                 ctypes.byref(self.policy)), 0)
        lib.mesh_manifest_free(m)

    def tearDown(self):
        _lib.lib.mesh_policy_unref(self.policy)
        _lib.lib.mesh_ctx_free(self.ctx)

    def decide(self, client_id, path, tls=1):
        labels = (_lib.mesh_policy_label * 1)(_lib.mesh_policy_label(b"app", b"exam-api"))
        wl = _lib.mesh_policy_workload(ns=b"production", labels=labels, nlabels=1, port=8080)
        req = _lib.mesh_policy_request(client_id=client_id, tls=tls, addr_family=4,
                                       method=b"GET", path=path, path_len=len(path))
        ctypes.memmove(req.addr, socket.inet_aton("10.1.2.3"), 4)
        res = _lib.mesh_policy_result()
        self.assertEqual(_lib.lib.mesh_policy_decide(self.policy, ctypes.byref(wl),
                                                     ctypes.byref(req), ctypes.byref(res)), 0)
        return res

    def test_seed_decisions(self):
        lib = _lib.lib
        self.assertEqual(lib.mesh_policy_server_count(self.policy), 1)
        r = self.decide(FRONTEND, b"/api/v1/public/exams")
        self.assertEqual(r.decision, 1)
        self.assertEqual(r.server_name, b"exam-api-server")
        self.assertEqual(r.route_name, b"exam-routes")
        self.assertEqual(r.authz_name, b"exam-api-authz")
        self.assertEqual(self.decide(None, b"/api/v1/public", tls=0).decision, 0)
        self.assertEqual(self.decide(FRONTEND, b"/elsewhere").decision, 2)

    def test_default_names(self):
        lib = _lib.lib
        self.assertEqual(lib.mesh_policy_default_name(6), b"audit")
        self.assertEqual(lib.mesh_policy_default_parse(b"deny"), 5)
        self.assertLess(lib.mesh_policy_default_parse(b"nope"), 0)


if __name__ == "__main__":
    unittest.main()
