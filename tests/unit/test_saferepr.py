"""argsrepr/kwargsrepr text equals Celery 5.7's for random nested arguments (under 1024 chars)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from celery.utils.saferepr import saferepr as celery_saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from taskq.saferepr import saferepr

scalars = st.one_of(
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
    st.text(alphabet="ab'\" \n\\é", max_size=6),
    st.binary(max_size=4),
    st.just(Decimal("1.10")),
    st.frozensets(st.integers(0, 3), max_size=2),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(st.integers(0, 9), max_size=4),
        st.dictionaries(st.sampled_from(["a", "b", "k'", 1, 2]), inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_same_text_as_celery(value: Any) -> None:
    expected = celery_saferepr(value, maxlen=1024, maxlevels=3)
    if len(expected) < 1000:  # past maxlen taskq cuts more simply; both stay bounded
        assert saferepr(value) == expected


def test_long_values_are_bounded() -> None:
    text = saferepr(list(range(10_000)))
    assert len(text) <= 1024 and text.endswith("...")


def test_never_raises() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert "unrepresentable" in saferepr((Broken(),))
