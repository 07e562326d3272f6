"""Side-by-side benchmark of taskq against Celery, Dramatiq and Huey (issue 9).

Run ``python -m benchmarks setup`` once, then ``python -m benchmarks``; see README.md. Each
peer runs in subprocesses of its own, so no two task libraries are ever imported together.
"""

#: what ``python -m benchmarks --only`` chooses from, in the report's order
FIGURES = ("publish", "drain", "results", "roundtrip", "memory", "async", "ceiling")
