"""Checked by mypy in tests/unit/test_typing.py; each `# E:` line must be reported."""

from taskq import Celery

app = Celery("typed")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, name="typed.mul")
def mul(self: object, x: int, y: int) -> int:
    return x * y


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


ok: int = add(1, 2)
add.delay(1, 2).get()
mul.delay(2, 3)
fetch.delay("https://example.org")
result_value: int = add.delay(1, 2).get(timeout=1)

add.delay(1, "x")  # E: arg-type
add.delay(1)  # E: call-arg
mul.delay(2, "three")  # E: arg-type
fetch.delay(3)  # E: arg-type
wrong: str = add.delay(1, 2).get()  # E: assignment
