"""Tests of the metrics bindings (mesh/metrics.h) against the real libmesh.so.

Run as test_mesh.py says.
"""

import gc
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

from mesh import metrics  # noqa: E402 - after the import fallback above


class TestRender(unittest.TestCase):
    def test_counter_gauge_histogram_exact_text(self):
        reg = mesh.Registry()
        req = reg.counter("request_total", "Total count of HTTP requests.",
                          ["direction", "authority"])
        s = req.series("outbound", "web:80")
        s.inc()
        s.inc(41)
        req.series(direction="inbound", authority='a"b\\c\nd')  # created at 0
        g = reg.gauge("tcp_open_connections", labels=["peer"])
        gs = g.series("10.0.0.1:80")
        gs.inc(3)
        gs.dec()
        half = g.series(peer="x")
        half.set(0.5)
        lat = reg.histogram("response_latency_ms", "Latency.", ["status_code"], bounds=[1, 10])
        h = lat.series("200")
        for v in (0, 1, 5, 10, 11):
            h.observe(v)
        self.assertEqual(reg.render(),
                         '# HELP request_total Total count of HTTP requests.\n'
                         '# TYPE request_total counter\n'
                         'request_total{direction="outbound",authority="web:80"} 42\n'
                         'request_total{direction="inbound",authority="a\\"b\\\\c\\nd"} 0\n'
                         '# TYPE tcp_open_connections gauge\n'
                         'tcp_open_connections{peer="10.0.0.1:80"} 2\n'
                         'tcp_open_connections{peer="x"} 0.5\n'
                         '# HELP response_latency_ms Latency.\n'
                         '# TYPE response_latency_ms histogram\n'
                         'response_latency_ms_bucket{status_code="200",le="1"} 2\n'
                         'response_latency_ms_bucket{status_code="200",le="10"} 4\n'
                         'response_latency_ms_bucket{status_code="200",le="+Inf"} 5\n'
                         'response_latency_ms_sum{status_code="200"} 27\n'
                         'response_latency_ms_count{status_code="200"} 5\n')
        self.assertIsInstance(reg.render_bytes(), bytes)
        self.assertEqual(s.count, 42)
        self.assertEqual(s.value, 42.0)
        self.assertEqual(gs.value, 2.0)
        self.assertEqual((h.count, h.sum, h.bucket(0), h.bucket(1), h.bucket(2)), (5, 27, 2, 4, 5))
        self.assertEqual(req.type, metrics.COUNTER)
        self.assertEqual(g.type, metrics.GAUGE)
        self.assertEqual(lat.type, metrics.HISTOGRAM)
        self.assertEqual(req.name, "request_total")
        self.assertEqual(req.series_count, 2)
        self.assertIn("request_total", repr(req))

    def test_default_buckets_are_linkerds(self):
        self.assertEqual(mesh.LATENCY_BOUNDS,
                         (1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000,
                          3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000))
        reg = mesh.Registry()
        h = reg.histogram("response_latency_ms").series()
        h.observe(50000)
        h.observe(50001)
        text = reg.render()
        self.assertIn('response_latency_ms_bucket{le="50000"} 1\n'
                      'response_latency_ms_bucket{le="+Inf"} 2\n', text)
        self.assertEqual(text.count("_bucket"), 26)

    def test_unicode_label_values(self):
        reg = mesh.Registry()
        reg.counter("c", labels=["authority"]).series("éxamen.日本:443").inc(2)
        self.assertIn('c{authority="éxamen.日本:443"} 2\n', reg.render())

    def test_process_collector(self):
        reg = mesh.Registry()
        reg.process()
        text = reg.render()
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds", "process_start_time_seconds"):
            self.assertIn("\n%s " % name, text)


class TestValidation(unittest.TestCase):
    def test_bad_names_and_labels(self):
        reg = mesh.Registry()
        for bad in ("", "1a", "a-b", "a b"):
            with self.assertRaises(mesh.InvalidArgument):
                reg.counter(bad)
        with self.assertRaises(mesh.InvalidArgument):
            reg.counter("a", labels=["__name__"])
        with self.assertRaises(mesh.InvalidArgument):
            reg.counter("a", labels=["x", "x"])
        with self.assertRaises(mesh.InvalidArgument):
            reg.histogram("h", labels=["le"])
        with self.assertRaises(mesh.InvalidArgument):
            reg.histogram("h", bounds=[5, 5])
        with self.assertRaises(mesh.InvalidArgument):
            reg.histogram("h", bounds=[])
        with self.assertRaises(mesh.RangeError):
            reg.histogram("h", bounds=[-1])
        with self.assertRaises(TypeError):
            reg.counter("a", labels="direction")  # a string is not a list of names

    def test_registration_is_idempotent_and_conflicts_are_refused(self):
        reg = mesh.Registry()
        a = reg.counter("request_total", "Requests.", ["direction"])
        b = reg.counter("request_total", "Requests.", ["direction"])
        a.series("outbound").inc()
        self.assertEqual(b.series("outbound").count, 1)  # the same family
        with self.assertRaises(mesh.InvalidArgument):
            reg.gauge("request_total", "Requests.", ["direction"])
        reg.histogram("lat")
        with self.assertRaises(mesh.InvalidArgument):
            reg.counter("lat_count")

    def test_label_values(self):
        reg = mesh.Registry()
        f = reg.counter("c", labels=["a", "b"])
        with self.assertRaises(mesh.InvalidArgument):
            f.series("only one")
        with self.assertRaises(mesh.InvalidArgument):
            f.series(a="1")
        with self.assertRaises(mesh.InvalidArgument):
            f.series(a="1", b="2", c="3")
        with self.assertRaises(TypeError):
            f.series("1", b="2")
        with self.assertRaises(mesh.InvalidArgument):
            f.series("\udcff", "x")  # not UTF-8 once encoded (surrogateescape)
        with self.assertRaises(mesh.InvalidArgument):
            f.series("a\0b", "x")
        with self.assertRaises(mesh.LimitError):
            f.series("x" * (metrics.MAX_LABEL_VALUE + 1), "y")
        f.series("x" * metrics.MAX_LABEL_VALUE, "")
        self.assertEqual(f.series_count, 1)

    def test_wrong_type_updates(self):
        reg = mesh.Registry()
        c = reg.counter("c").series()
        g = reg.gauge("g").series()
        h = reg.histogram("h").series()
        with self.assertRaises(mesh.InvalidArgument):
            c.set(1)
        with self.assertRaises(mesh.InvalidArgument):
            c.dec()
        with self.assertRaises(mesh.InvalidArgument):
            g.observe(1)
        with self.assertRaises(mesh.InvalidArgument):
            h.inc()
        with self.assertRaises(mesh.RangeError):
            c.inc(-1)
        with self.assertRaises(mesh.RangeError):
            g.set(2**63)
        with self.assertRaises(TypeError):
            g.set("1")
        g.set(-2**63)
        g.set(float("inf"))
        self.assertIn("g +Inf\n", reg.render())


class TestLimitsAndLifetimes(unittest.TestCase):
    def test_cardinality_limit_and_overflow_series(self):
        reg = mesh.Registry()
        f = reg.counter("tcp_open_total", labels=["peer"])
        f.set_max_series(3)
        overflow = f.series("overflow")
        for i in range(10):
            try:
                f.series("10.0.0.%d" % i).inc()
            except mesh.LimitError:
                overflow.inc()
        self.assertEqual(f.series_count, 3)
        self.assertEqual(overflow.count, 8)
        with self.assertRaises(mesh.InvalidArgument):
            f.set_max_series(0)

    def test_remove_and_handles_outliving_the_registry(self):
        ctx = mesh.Context()
        reg = mesh.Registry(ctx=ctx)
        f = reg.gauge("tcp_open_connections", labels=["peer"])
        gone = f.series("10.0.0.9:80")
        gone.set(7)
        gone.remove()
        gone.remove()
        self.assertEqual(reg.render(), "")
        gone.inc()  # still usable: the update goes nowhere
        self.assertEqual(gone.value, 8.0)
        kept = f.series("10.0.0.1:80")
        reg.close()
        with self.assertRaises(mesh.ClosedError):
            reg.render()
        with self.assertRaises(mesh.ClosedError):
            f.series("x")
        kept.inc()
        self.assertEqual(kept.value, 1.0)
        ctx.close()  # freed once the series are gone too
        self.assertFalse(ctx._ptr is None)
        kept.close()
        gone.close()
        gc.collect()
        self.assertIsNone(ctx._ptr)
        with self.assertRaises(mesh.ClosedError):
            kept.inc()

    def test_threads_sum_exactly(self):
        reg = mesh.Registry()
        s = reg.counter("request_total").series()
        h = reg.histogram("lat", bounds=[3]).series()

        def work():
            for i in range(20000):
                s.inc()
                h.observe(i % 5)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(s.count, 80000)
        self.assertEqual(h.count, 80000)
        self.assertEqual(h.bucket(0), 4 * 16000)
        self.assertEqual(h.sum, 4 * 4000 * (0 + 1 + 2 + 3 + 4))


if __name__ == "__main__":
    unittest.main()
