#!/usr/bin/env python3
"""HTTP peers for meshd's tests: an HTTP/1.1 backend, raw-socket probes, and gRPC (grpcio) server and client."""
import base64
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Backend(BaseHTTPRequestHandler):
    """Paths: /echo (the body back, chunked), /headers (the request's headers
    as JSON), /status/N, /slow/MS, /big/N (N bytes), anything else: the
    server's name. Request bodies may be chunked or have a length."""

    protocol_version = "HTTP/1.1"
    name = "backend"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return b"".join(out)
                out.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def send(self, code, body, chunked=False, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Backend", self.name)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7000):
                part = body[i:i + 7000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            # Head and body in one write, as most servers send small answers:
            # a proxy then never holds a head without its body.
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n" + (body if self.command != "HEAD" else b""))
            self.flush_headers()

    def websocket(self):
        # RFC 6455's handshake; after it the bytes are echoed as they come.
        accept = base64.b64encode(hashlib.sha1(
            self.headers["Sec-WebSocket-Key"].encode() + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            b = self.connection.recv(65536)
            if not b:
                break
            self.connection.sendall(b)
        self.close_connection = True

    def handle_any(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        body = self.read_body()
        p = self.path
        if p.startswith("/echo"):
            self.send(200, body, chunked=True, ctype="application/octet-stream")
        elif p.startswith("/headers"):
            h = {k.lower(): v for k, v in self.headers.items()}
            self.send(200, json.dumps(h).encode(), ctype="application/json")
        elif p.startswith("/status/"):
            self.send(int(p.split("/")[2]), b"status\n")
        elif p.startswith("/close"):  # answers, then closes its connection
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("Content-Length", "6")
            self._headers_buffer.append(b"\r\nclose\n")
            self.flush_headers()
        elif p.startswith("/flaky/"):  # fails N percent of requests, at random
            fail = random.random() * 100 < int(p.split("/")[2])
            self.send(500 if fail else 200, b"flaky\n")
        elif p.startswith("/slow/"):
            time.sleep(int(p.split("/")[2]) / 1000)
            self.send(200, b"slow\n")
        elif p.startswith("/big/"):
            self.send(200, b"x" * int(p.split("/")[2]), ctype="application/octet-stream")
        else:
            self.send(200, (self.name + "\n").encode())

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = handle_any


def backend(port, name, host="127.0.0.1"):
    Backend.name = name

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024
        allow_reuse_address = True

    Server((host, int(port)), Backend).serve_forever()


def raw(port, hexdata, timeout="5"):
    """Send bytes (hex, or text with \\r\\n escapes) and print the status line of the answer."""
    data = bytes.fromhex(hexdata) if all(c in "0123456789abcdef" for c in hexdata) else \
        hexdata.encode().decode("unicode_escape").encode("latin-1")
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=float(timeout))
    s.sendall(data)
    buf = b""
    try:
        while b"\r\n" not in buf:
            b = s.recv(4096)
            if not b:
                break
            buf += b
    except socket.timeout:
        pass
    print(buf.split(b"\r\n")[0].decode("latin-1") or "EOF")


def big_head(port, nbytes, nfields):
    """A request with nfields headers totalling about nbytes: print the status line."""
    nbytes, nfields = int(nbytes), int(nfields)
    per = max(1, nbytes // max(1, nfields))
    head = "GET /headers HTTP/1.1\r\nHost: x\r\n" + "".join(
        "X-F%d: %s\r\n" % (i, "v" * per) for i in range(nfields)) + "\r\n"
    raw(port, head.replace("\r\n", "\\r\\n"))


def slow_head(port, seconds):
    """Start a head and stall: print what the proxy answers (expect 408)."""
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=float(seconds) + 10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    buf = s.recv(4096)
    print(buf.split(b"\r\n")[0].decode("latin-1") or "EOF")


def pipeline(port, n):
    """n pipelined GETs in one write: the answers come back in order."""
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    n = int(n)
    req = b"".join(b"GET /headers?i=%d HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nX-I: %d\r\n\r\n"
                   % (i, i) for i in range(n))
    s.sendall(req)
    f = s.makefile("rb")
    for i in range(n):
        status = f.readline()
        assert b" 200 " in status, status
        length = None
        while True:
            line = f.readline()
            if line == b"\r\n":
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        body = json.loads(f.read(length))
        assert body["x-i"] == str(i), (i, body)
    print("pipelined %d in order" % n)


def upgrade(port, authority):
    """A WebSocket handshake, then bytes both ways over the switched connection."""
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /chat HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (authority, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        assert b, "closed during the handshake: %r" % head
        head += b
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines[0]
    h = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    want = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    assert h.get("sec-websocket-accept") == want, h
    assert h.get("upgrade", "").lower() == "websocket", h
    for payload in (b"hello", os.urandom(200000)):
        s.sendall(payload)
        got = rest
        rest = b""
        while len(got) < len(payload):
            b = s.recv(65536)
            assert b, "closed after %d bytes" % len(got)
            got += b
        assert got == payload, (len(got), len(payload))
    s.close()
    print("websocket: 101 with the right accept key, 5 B and 200 KB echoed over the upgraded connection")


def _grpc():
    import grpc  # Debian's python3-grpcio
    return grpc


def grpc_server(port):
    grpc = _grpc()
    from concurrent import futures

    def unary(req, ctx):
        if req == b"fail":
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        return b"echo:" + req

    def stream(req, ctx):
        for i in range(int(req.decode())):
            yield b"item-%d" % i

    def bidi(it, ctx):
        for m in it:
            yield m.upper()

    def flaky(req, ctx):
        # "PCT [MS]": headers first, MS later an answer, or for PCT percent of
        # calls UNAVAILABLE in the trailers (not a trailers-only answer).
        pct, _, ms = req.decode().partition(" ")
        ctx.send_initial_metadata((("x-backend", "grpc"),))
        if ms:
            time.sleep(int(ms) / 1000)
        if random.random() * 100 < int(pct):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "flaky")
        return b"ok"

    def items(req, ctx):
        # "N SIZE PCT PAUSE": N items "item-I:" padded to SIZE bytes, PAUSE ms
        # apart; then UNAVAILABLE for PCT percent of calls.
        n, size, pct, pause = (int(x) for x in req.split())
        fail = random.random() * 100 < pct
        for i in range(n):
            if i and pause:
                time.sleep(pause / 1000)
            yield (b"item-%d:" % i).ljust(size, b".")
        if fail:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "flaky stream")

    ident = (lambda b: b)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky, ident, ident),
        "Items": grpc.unary_stream_rpc_method_handler(items, ident, ident),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    srv.add_insecure_port("127.0.0.1:%s" % port)
    srv.start()
    srv.wait_for_termination()


def grpc_client(target, authority):
    """Unary, a failing unary, server streaming and bidi streaming through target."""
    grpc = _grpc()
    ident = (lambda b: b)
    ch = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    grpc.channel_ready_future(ch).result(timeout=10)
    unary = ch.unary_unary("/test.Echo/Unary", ident, ident)
    assert unary(b"hi", timeout=10) == b"echo:hi"
    try:
        unary(b"fail", timeout=10)
        raise AssertionError("the failing call succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert e.details() == "asked to fail", e.details()
    items = list(ch.unary_stream("/test.Echo/Stream", ident, ident)(b"50", timeout=10))
    assert items == [b"item-%d" % i for i in range(50)], items[:3]
    out = list(ch.stream_stream("/test.Echo/Bidi", ident, ident)(iter([b"a", b"b", b"c"]), timeout=10))
    assert out == [b"A", b"B", b"C"], out
    big = b"z" * 3_000_000  # past every flow-control window on the way
    assert unary(big, timeout=20) == b"echo:" + big
    n = 0
    threads = []

    def many():
        nonlocal n
        for _ in range(50):
            assert unary(b"x", timeout=10) == b"echo:x"
            n += 1
    for _ in range(8):
        t = threading.Thread(target=many)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    assert n == 400, n
    print("grpc: unary, status, server stream, bidi, 3 MB message, 400 concurrent calls")


def grpc_calls(target, authority, method, req, n):
    """n calls of /test.Echo/METHOD (Flaky: unary, Items: server streaming) with
    request req, 10 at a time; prints "ok=N fail=N bad=N items=N first_ms=N":
    calls that ended OK, that failed, whose items were not item-0, item-1, ...
    each once and in order (or whose unary answer was wrong), the items
    received, and the longest wait for a first item."""
    grpc = _grpc()
    from concurrent.futures import ThreadPoolExecutor
    ident = (lambda b: b)
    # The client's own retries off: what is retried here is the proxy's doing.
    ch = grpc.insecure_channel(target, options=[("grpc.default_authority", authority),
                                                ("grpc.enable_retries", 0)])
    grpc.channel_ready_future(ch).result(timeout=10)
    path = "/test.Echo/" + method
    unary = method != "Items"
    call = ch.unary_unary(path, ident, ident) if unary else ch.unary_stream(path, ident, ident)
    lock = threading.Lock()
    res = {"ok": 0, "fail": 0, "bad": 0, "items": 0, "first_ms": 0}

    def one(_):
        t0 = time.monotonic()
        got, first, good = [], None, True
        try:
            if unary:
                good = call(req.encode(), timeout=10) == b"ok"
            else:
                for m in call(req.encode(), timeout=10):
                    if first is None:
                        first = time.monotonic() - t0
                    got.append(m)
            ok = True
        except grpc.RpcError:
            ok = False
        good = good and all(m.startswith(b"item-%d:" % i) for i, m in enumerate(got))
        with lock:
            res["ok" if ok else "fail"] += 1
            res["bad"] += 0 if good else 1
            res["items"] += len(got)
            res["first_ms"] = max(res["first_ms"], int((first or 0) * 1000))
    with ThreadPoolExecutor(10) as ex:
        list(ex.map(one, range(int(n))))
    print(" ".join("%s=%d" % kv for kv in res.items()))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"backend": backend, "raw": raw, "big-head": big_head, "slow-head": slow_head,
     "pipeline": pipeline, "upgrade": upgrade, "grpc-server": grpc_server,
     "grpc-client": grpc_client, "grpc-calls": grpc_calls}[cmd](*args)


if __name__ == "__main__":
    main()
