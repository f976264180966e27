#!/usr/bin/env python3
"""Peers for meshd's tests and benchmark: an echo server, checks through the proxy, a held connection, load."""
import os
import socket
import socketserver
import sys
import threading
import time


def echo_server(port, log_path):
    # Echoes until the client half-closes, then closes: exercises half-close
    # through both proxies. Each accepted connection is one line in log_path.
    lock = threading.Lock()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock, open(log_path, "a") as f:
                f.write("conn\n")
            s = self.request
            while True:
                b = s.recv(65536)
                if not b:
                    break
                s.sendall(b)
            s.shutdown(socket.SHUT_WR)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 1024

    with Server(("127.0.0.1", port), Handler) as srv:
        srv.serve_forever()


def sink_server(port):
    # Reads everything and answers with the byte count at EOF (throughput).
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            n = 0
            while True:
                b = self.request.recv(262144)
                if not b:
                    break
                n += len(b)
            self.request.sendall(b"%d\n" % n)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 4096

    with Server(("127.0.0.1", port), Handler) as srv:
        srv.serve_forever()


def exchange(port, payload, timeout=10):
    # Send payload, half-close, read until EOF: the echo must be identical.
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = bytearray()

    def reader():
        while True:
            b = s.recv(65536)
            if not b:
                return
            got.extend(b)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    t.join(timeout)
    s.close()
    return bytes(got)


def check(port, size):
    payload = os.urandom(size)
    got = exchange(port, payload)
    if got != payload:
        print("echo mismatch: sent %d bytes, got %d back" % (len(payload), len(got)))
        sys.exit(1)
    print("ok: %d bytes echoed" % size)


def concurrent(port, n, size):
    # n connections open at once, each checked; all must succeed.
    socks, payloads = [], []
    for _ in range(n):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        payloads.append(os.urandom(size))
    for s, p in zip(socks, payloads):
        s.sendall(p)
        s.shutdown(socket.SHUT_WR)
    bad = []
    for i, (s, p) in enumerate(zip(socks, payloads)):
        got = bytearray()
        err = ""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got.extend(b)
        except OSError as e:  # say which and how, for whoever reads a failure
            err = " (%s)" % e
        s.close()
        if bytes(got) != p:
            bad.append("#%d got %d of %d bytes%s" % (i, len(got), len(p), err))
    if bad:
        print("%d of %d concurrent connections failed: %s" % (len(bad), n, "; ".join(bad[:5])))
        sys.exit(1)
    print("ok: %d concurrent connections, %d bytes each" % (n, size))


def hold(port, go_path, out_path):
    # One exchange now, wait for go_path to appear, one more exchange, then a
    # clean end: a connection that lives across a reload or a shutdown.
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"first")
    first = s.recv(100)
    with open(out_path + ".1", "w") as f:
        f.write(first.decode())
    while not os.path.exists(go_path):
        time.sleep(0.05)
    s.sendall(b"second")
    second = s.recv(100)
    s.shutdown(socket.SHUT_WR)
    rest = s.recv(100)
    s.close()
    with open(out_path, "w") as f:
        f.write("%s %s %s" % (first.decode(), second.decode(), "eof" if rest == b"" else "more"))


def throughput(port, seconds, chunk=262144):
    # One connection to the sink for `seconds`; MB/s of what the sink counted.
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds + 30)
    buf = b"x" * chunk
    end = time.monotonic() + seconds
    start = time.monotonic()
    sent = 0
    while time.monotonic() < end:
        s.sendall(buf)
        sent += chunk
    s.shutdown(socket.SHUT_WR)
    got = int(s.recv(100).strip() or 0)
    took = time.monotonic() - start
    s.close()
    if got != sent:
        print("throughput: sink counted %d of %d bytes" % (got, sent))
        sys.exit(1)
    print("%.1f" % (got / took / 1e6))


def connrate(port, seconds):
    # Sequential connect + 1-byte echo + close: connections per second.
    end = time.monotonic() + seconds
    start = time.monotonic()
    n = 0
    while time.monotonic() < end:
        # No reader thread here: one byte each way, then the echo server's FIN.
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        got = s.recv(10)
        while s.recv(10):
            pass
        s.close()
        if got != b"x":
            print("connrate: bad echo")
            sys.exit(1)
        n += 1
    print("%.0f" % (n / (time.monotonic() - start)))


def open_many(port, n, ready_path, go_path):
    # n idle connections (one echo each, so every one is fully set up), held
    # until go_path appears: for RSS with many open connections.
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            print("open_many: bad echo")
            sys.exit(1)
        socks.append(s)
    open(ready_path, "w").close()
    while not os.path.exists(go_path):
        time.sleep(0.05)
    for s in socks:
        s.close()


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "echo-server":
        echo_server(int(args[0]), args[1])
    elif cmd == "sink-server":
        sink_server(int(args[0]))
    elif cmd == "check":
        check(int(args[0]), int(args[1]))
    elif cmd == "concurrent":
        concurrent(int(args[0]), int(args[1]), int(args[2]))
    elif cmd == "hold":
        hold(int(args[0]), args[1], args[2])
    elif cmd == "throughput":
        throughput(int(args[0]), float(args[1]))
    elif cmd == "connrate":
        connrate(int(args[0]), float(args[1]))
    elif cmd == "open-many":
        open_many(int(args[0]), int(args[1]), args[2], args[3])
    elif cmd == "free-ports":
        # n distinct free loopback ports (bound at once, then released).
        socks = [socket.socket() for _ in range(int(args[0]))]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        print(" ".join(str(s.getsockname()[1]) for s in socks))
        for s in socks:
            s.close()
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
