#!/usr/bin/env python3
"""The demo's EdTech services: small real applications that know nothing of
the mesh. Each listens on its workload's address and reaches the services it
depends on through its own meshd's outbound listeners, given as NAME=ADDR.

    app.py SERVICE LISTEN [NAME=ADDR ...]      one of the services below
    app.py driver SECONDS RATE OUT NAME=ADDR/PATH ...
        calls each target RATE times a second for SECONDS (both bounded),
        then writes {target: {status: count}} to OUT

payment-service speaks gRPC (Debian's python3-grpcio); the others HTTP/1.1.
Some behaviour is deliberate, for the mesh to show: learning-module-v2 answers
503 to a quarter of its requests, and exam-service-canary is slower.
"""
import http.client
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_S = 10  # every outbound call; the mesh's own timeouts are shorter
deps = {}  # NAME -> (host, port) of this workload's meshd outbound listener
rng = random.Random()


def call(name, method, path, body=None):
    """One request through the sidecar: (status, body); 599 when the
    connection itself failed, so a broken mesh shows up in the counts."""
    host, port = deps[name]
    c = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    except OSError as e:
        return 599, str(e).encode()
    finally:
        c.close()


def worst(*statuses):
    """The caller's answer for several calls: the first failure, else 200."""
    bad = [s for s in statuses if s >= 400]
    return bad[0] if bad else 200


# ---- the services: (method, path) -> handler(path, body) -> (status, body) ----

def frontend(method, path, body):
    n = rng.randrange(1, 50)
    return worst(call("exam-api", "GET", "/api/v1/exams/%d/questions" % n)[0],
                 call("learning-module", "GET", "/modules/%d" % n)[0],
                 call("user-service", "GET", "/api/v1/premium/dashboard")[0]), b"page\n"


def mobile_api(method, path, body):
    n = rng.randrange(1, 50)
    return worst(call("exam-api", "POST", "/api/v1/exams/%d/submit" % n, b'{"answers":[1,2]}')[0],
                 call("exam-api", "GET", "/api/v1/public/catalog")[0],
                 call("user-service", "POST", "/api/v1/auth/login", b'{"user":"ada"}')[0]), b"ok\n"


def exam_api(method, path, body):
    parts = path.split("/")  # /api/v1/exams/ID/questions|submit
    if path.startswith("/api/v1/exams/") and len(parts) == 6 and parts[5] in ("questions", "submit"):
        return call("exam-service", method, "/%s/%s" % (parts[5], parts[4]), body)
    if path.startswith("/api/v1/public/") or path.startswith("/api/v1/premium/"):
        return 200, b'{"catalog":["algebra","biology"]}\n'
    return 404, b"no such exam route\n"


def exam_service(version):
    def handle(method, path, body):
        if version == "canary":
            time.sleep(0.02)  # the canary is slower: visible in its latency column
        if path.startswith("/submit/"):
            ok = charge(b"exam-fee")
            return (200, b'{"submitted":true}\n') if ok else (502, b"payment failed\n")
        return 200, json.dumps({"version": version, "questions": [1, 2, 3]}).encode()
    return handle


def user_service(method, path, body):
    if path.startswith("/api/v1/auth/"):
        return (200, b'{"token":"t"}\n') if b"user" in (body or b"") else (401, b"who?\n")
    return 200, b'{"premium":true}\n'


def learning_module(version):
    def handle(method, path, body):
        if version == "v2" and rng.random() < 0.25:
            return 503, b"v2 is flaky\n"
        return 200, json.dumps({"module": path, "version": version}).encode()
    return handle


HTTP = {"frontend": frontend, "mobile-api": mobile_api, "exam-api": exam_api,
        "exam-service-stable": exam_service("stable"), "exam-service-canary": exam_service("canary"),
        "user-service": user_service, "learning-module-v1": learning_module("v1"),
        "learning-module-v2": learning_module("v2")}


# ---- gRPC: payment-service and its client --------------------------------

def _grpc():
    import grpc  # Debian's python3-grpcio
    return grpc


_charge = None
_charge_lock = threading.Lock()


def charge(what):
    """Payments/Charge through the sidecar, which carries it as HTTP/2 (one
    channel for the process, as gRPC clients keep)."""
    global _charge
    grpc = _grpc()
    with _charge_lock:
        if _charge is None:
            host, port = deps["payment-service"]
            _charge = grpc.insecure_channel("%s:%d" % (host, port)).unary_unary("/edtech.Payments/Charge")
    try:
        _charge(what, timeout=TIMEOUT_S)
        return True
    except grpc.RpcError:
        return False


def payment_service(listen):
    grpc = _grpc()
    from concurrent import futures

    def charge_rpc(req, ctx):
        return b"charged:" + req
    ident = (lambda b: b)
    handlers = {"Charge": grpc.unary_unary_rpc_method_handler(charge_rpc, ident, ident)}
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("edtech.Payments", handlers),))
    srv.add_insecure_port(listen)
    srv.start()
    srv.wait_for_termination()


def serve(name, listen):
    handler = HTTP[name]

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do(self):
            n = int(self.headers.get("Content-Length", "0") or 0)
            body = self.rfile.read(n) if n else None
            status, out = handler(self.command, self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            # Head and body in one write: two small writes would meet the
            # peer's delayed ACK (Nagle) and add 40 ms to every call.
            self._headers_buffer.append(b"\r\n" + out)
            self.flush_headers()
        do_GET = do_POST = do

    host, port = listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, int(port)), H).serve_forever()


# ---- the load driver ------------------------------------------------------

def driver(seconds, rate, out, targets):
    seconds, rate = min(float(seconds), 3600.0), min(float(rate), 100.0)  # bounded
    counts = {}
    lock = threading.Lock()

    def loop(target):
        name, path = target.split("/", 1)
        got = counts.setdefault(target, {})
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            status = call(name, "GET", "/" + path)[0]
            with lock:
                got[str(status)] = got.get(str(status), 0) + 1
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))

    threads = [threading.Thread(target=loop, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)


def main():
    args = sys.argv[1:]
    if args[0] == "driver":
        seconds, rate, out, rest = args[1], args[2], args[3], args[4:]
    else:
        rest = args[2:]
    targets = []
    for a in rest:
        name, addr = a.split("=", 1)
        addr, _, path = addr.partition("/")
        host, port = addr.rsplit(":", 1)
        deps[name] = (host, int(port))
        targets.append(name + "/" + path)
    if args[0] == "driver":
        driver(seconds, rate, out, targets)
    elif args[0] == "payment-service":
        payment_service(args[1])
    else:
        serve(args[0], args[1])


if __name__ == "__main__":
    main()
