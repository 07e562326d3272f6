"""Send tasks to a running worker and print what comes back."""

import sys
import time

from proj import add, divide

from taskq.exceptions import TimeoutError

try:
    started = time.perf_counter()
    result = add.delay(2, 3)
    print(
        f"add(2, 3) = {result.get(timeout=10)}  [{result.state}, {1000 * (time.perf_counter() - started):.1f} ms]"
    )
except TimeoutError:
    sys.exit("No answer in 10 s: is a worker running in this directory? (taskq -A proj worker -l info)")

results = [add.delay(i, i) for i in range(100)]
print(f"100 tasks: sum = {sum(r.get(timeout=30) for r in results)}")

failing = divide.delay(1, 0)
try:
    failing.get(timeout=10)
except ZeroDivisionError as exc:
    print(f"divide(1, 0) raised {type(exc).__name__}: {exc}  [{failing.state}]")
