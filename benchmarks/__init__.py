"""Side-by-side benchmark of taskq against Celery, Dramatiq and Huey (issue 9).

Run ``python -m benchmarks setup`` once, then ``python -m benchmarks``; see README.md. Each
peer runs in subprocesses of its own, so no two task libraries are ever imported together.
"""
