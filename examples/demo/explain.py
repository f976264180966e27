#!/usr/bin/env python3
"""What the mesh would do with a set of manifests: routes, budgets, splits.

Runs the same logic as the proxy, in-process, through the Python bindings:
every decision printed here is libmesh's own (route match, classification,
split pick, retry budget), not a re-implementation.

    explain.py FILE_OR_DIR...
"""
import os
import random
import sys

import mesh

SAMPLE_REQUESTS = [
    ("GET", "/api/v1/exams/42/questions"),
    ("POST", "/api/v1/exams/42/submit"),
    ("GET", "/api/v1/exams/42/questions/7"),
    ("GET", "/api/v1/premium/reports"),
    ("POST", "/api/v1/auth/login"),
    ("GET", "/health"),
    ("GET", "/healthz"),
]


def files(args):
    for a in args:
        if os.path.isdir(a):
            for f in sorted(os.listdir(a)):
                if f.endswith((".yaml", ".yml", ".json")):
                    yield os.path.join(a, f)
        else:
            yield a


def seconds(ms):
    return f"{ms / 1000:g}s"


def budget_text(b):
    return f"retry ratio {b.ratio:g}, min {b.min_per_sec}/s, ttl {seconds(b.ttl_ms)}"


def explain_profile(p):
    print(f"ServiceProfile {p.namespace}/{p.name}: {len(p.routes)} routes")
    for r in p.routes:
        own = "own budget" if r.has_own_budget else "profile budget"
        retry = "retryable" if r.is_retryable else "not retryable"
        print(f"  route {r.name:22} timeout {seconds(r.timeout_ms):>4}  {retry:13}  "
              f"{own}: {budget_text(r.retry_budget)}")
        verdicts = ", ".join(f"{s} {'failure' if r.classify(s) else 'success'}"
                             for s in (200, 404, 503))
        print(f"  {'':28}responses: {verdicts}")
    print("  requests:")
    for method, path in SAMPLE_REQUESTS:
        r = p.match(method, path)
        print(f"    {method:4} {path:32} -> {r.name if r else '[DEFAULT]'}")


def explain_split(s, rng):
    leaves = ", ".join(f"{b.name} {b.weight / 100:g}%" for b in s.backends)
    print(f"TrafficSplit {s.namespace}/{s.service}: {leaves}")
    counts = {}
    for _ in range(10000):
        name = s.pick(rng.getrandbits(32))
        counts[name] = counts.get(name, 0) + 1
    seen = ", ".join(f"{n} {counts.get(n, 0)}" for n in (b.name for b in s.backends))
    print(f"  10,000 requests would go: {seen}")


def explain_budget(route):
    """One second of traffic to a backend that fails 30% of requests."""
    b = route.retry_budget
    budget = mesh.Budget(b.ratio, b.min_per_sec, b.ttl_ms, now_ms=0)
    rng = random.Random(7)
    allowed = refused = 0
    for i in range(1000):
        now = i  # one request a millisecond
        budget.deposit(now)
        if rng.random() < 0.3:
            if budget.withdraw(now):
                allowed += 1
            else:
                refused += 1
    verb = "allows" if route.is_retryable else "would allow, were the route retryable,"
    print(f"  budget of {route.name}: 1,000 requests in 1 s, 30% failing -> {verb} "
          f"{allowed} retries and refuses {refused}")


def main(argv):
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rng = random.Random(1)
    for path in files(argv):
        try:
            m = mesh.Manifest.load(path)
        except mesh.ParseError as e:
            for d in e.diagnostics:
                print(d, file=sys.stderr)
            return 1
        for doc in m:
            if doc.profile is not None:
                print()
                explain_profile(doc.profile)
                explain_budget(doc.profile.routes[0])
            elif doc.split is not None:
                print()
                explain_split(doc.split, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
