"""Tests of the balancer bindings (mesh/balance.h) against the real libmesh.so.

Times and random draws are passed explicitly, so every pick below is exact.
Run as test_mesh.py says.
"""

import gc
import math
import os
import sys
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

MS = 1_000_000
SEC = 1_000_000_000
U32 = 2**32 - 1


class TestBalancer(unittest.TestCase):
    def test_options_are_checked(self):
        for kw in ({"decay_ns": 0}, {"default_rtt_ns": 0}, {"failure_threshold": 0},
                   {"min_penalty_ns": 0}, {"min_penalty_ns": 2 * SEC, "max_penalty_ns": SEC},
                   {"jitter": 1.5}, {"jitter": float("nan")}, {"decay_ns": -1}):
            with self.subTest(**{k: repr(v) for k, v in kw.items()}):
                with self.assertRaises(mesh.RangeError):
                    mesh.Balancer(**kw)
        with self.assertRaises(TypeError):
            mesh.Balancer(jitter="half")

    def test_p2c_prefers_the_cheaper(self):
        with mesh.Balancer(default_rtt_ns=1 * MS) as b:
            slow, fast = b.add("10.0.0.1:80"), b.add("10.0.0.2:80", weight=1000)
            self.assertEqual(len(b), 2)
            self.assertIs(b.pick(0, 0, 0), slow)  # a tie goes to the first draw
            b.done(slow, start_ns=0, now_ns=100 * MS)
            self.assertIs(b.pick(0, U32, 0), fast)
            b.done(fast, start_ns=0, now_ns=10 * MS)
            self.assertEqual(slow.rtt_ns(100 * MS), 100 * MS)
            for ra, rb in ((0, 0), (U32, U32), (2**31, 7)):
                self.assertIs(b.pick(100 * MS, ra, rb), fast)
            self.assertEqual(fast.pending, 3)
            self.assertAlmostEqual(fast.cost(10 * MS), 40 * MS, delta=1)
            self.assertEqual(fast.addr, "10.0.0.2:80")
            self.assertTrue(fast.active)
            self.assertEqual(fast.state, mesh.EndpointState.READY)
            self.assertEqual({e.addr for e in b.endpoints}, {"10.0.0.1:80", "10.0.0.2:80"})
            for _ in range(3):
                b.done(fast, start_ns=100 * MS, now_ns=110 * MS)
            self.assertEqual(fast.pending, 0)

    def test_peak_and_decay(self):
        with mesh.Balancer() as b:
            ep = b.add("a:1")
            self.assertEqual(ep.rtt_ns(0), 30 * MS)  # the default before any sample
            b.pick(0, 0, 0)
            b.done(ep, start_ns=0, now_ns=100 * MS)
            self.assertAlmostEqual(ep.rtt_ns(100 * MS + 10 * SEC), 100 * MS * math.exp(-1),
                                   delta=1)

    def test_breaker_and_unavailable(self):
        with mesh.Balancer() as b:
            ep = b.add("a:1")
            for i in range(7):
                self.assertEqual(ep.state, mesh.EndpointState.READY)
                b.pick(0, 0, 0)
                b.done(ep, start_ns=0, success=False, now_ns=MS, rnd=2**31)
            self.assertEqual(ep.state, mesh.EndpointState.OPEN)
            self.assertEqual(ep.failures, 7)
            self.assertEqual(ep.retry_at_ns, MS + SEC)
            with self.assertRaises(mesh.UnavailableError):
                b.pick(MS + SEC - 1, 0, 0)
            self.assertIs(b.pick(MS + SEC, 0, 0), ep)  # the one probation request
            self.assertEqual(ep.state, mesh.EndpointState.PROBATION)
            with self.assertRaises(mesh.UnavailableError):
                b.pick(MS + SEC, 0, 0)
            b.done(ep, start_ns=MS + SEC, now_ns=2 * SEC)
            self.assertEqual(ep.state, mesh.EndpointState.READY)
            self.assertEqual(b.ready_count, 1)

    def test_removal_keeps_the_endpoint_readable(self):
        b = mesh.Balancer()
        a, other = b.add("a:1"), b.add("b:1")
        with self.assertRaises(mesh.InvalidArgument):
            b.add("a:1")  # already there
        self.assertIs(b.pick(0, 0, 0), a)
        b.remove(a)
        with self.assertRaises(mesh.NotFound):
            b.remove(a)
        self.assertFalse(a.active)
        self.assertEqual(len(b), 1)
        self.assertIs(b.pick(0, 0, 0), other)
        b.done(a, start_ns=0, now_ns=MS)
        b.done(other, start_ns=0, now_ns=MS)
        self.assertEqual(a.addr, "a:1")  # the Python object holds a reference
        self.assertEqual(a.pending, 0)
        b.close()
        self.assertTrue(a.closed)
        with self.assertRaises(mesh.ClosedError):
            a.addr
        del a, other
        gc.collect()

    def test_threads(self):
        b = mesh.Balancer()
        for i in range(8):
            b.add("10.0.0.%d:80" % i)
        errors = []

        def work():
            try:
                for _ in range(500):
                    ep = b.pick()
                    b.done(ep, start_ns=mesh.balance.now_ns())
            except Exception as e:  # noqa: B902 - reported below
                errors.append(e)

        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(sum(e.pending for e in b.endpoints), 0)
        b.close()


if __name__ == "__main__":
    unittest.main()
