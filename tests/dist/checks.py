"""The tests in tests/dist and tests/clients print one "ok"/"FAIL" line per check and
exit 1 if any failed: check() and finish() do that."""
import sys

failures = 0


def check(cond, what):
    """Prints what was checked and whether it held; counts failures."""
    global failures
    print("%s %s" % ("ok  " if cond else "FAIL", what), flush=True)
    if not cond:
        failures += 1


def finish():
    """Exits 1 if a check failed, else 0."""
    print("%d failure(s)" % failures)
    sys.exit(1 if failures else 0)
