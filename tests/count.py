#!/usr/bin/env python3
"""Count results from meson's test logs and print the closing line 'N passed, N failed'.

Usage: count.py [--broken N] BUILDDIR...   (N builds that failed count as failures)
Exit status is 1 when anything failed or nothing ran."""
import json
import os
import sys

PASS = {"OK", "EXPECTEDFAIL"}
SKIP = {"SKIP"}


def main(argv):
    broken = 0
    if len(argv) > 1 and argv[0] == "--broken":
        broken, argv = int(argv[1]), argv[2:]
    passed = failed = skipped = 0
    for build in argv:
        log = os.path.join(build, "meson-logs", "testlog.json")
        if not os.path.exists(log):
            continue
        with open(log) as f:
            for line in f:
                if not line.strip():
                    continue
                t = json.loads(line)
                result = t.get("result")
                if result in PASS:
                    passed += 1
                elif result in SKIP:
                    # No test here may skip: exit 77 means a missing
                    # dependency or, from libFuzzer, a finding.
                    skipped += 1
                    failed += 1
                    print(f"SKIPPED (counted as failed): {build}: {t.get('name')}")
                else:
                    failed += 1
                    print(f"FAILED: {build}: {t.get('name')} ({result})")
    failed += broken
    tail = f", {skipped} skipped" if skipped else ""
    print(f"{passed} passed, {failed} failed{tail}")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
