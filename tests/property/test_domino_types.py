"""The Domino JSON -> Python type table (docs/calling.md, "Types"): any JSON document sent to `/model`,
as named arguments (`data`) or positional ones (`parameters`), reaches the function as the Python
value the table gives (object -> dict, array -> list, string -> str, integer of any size -> int,
real -> float, true/false -> bool, null -> None), and a value the function returns as it got it
comes back as the same JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.property.calls import Calls, harness, same

# Reals as clients write them: json.dumps gives 1.0, 1e+16, -0.0, 5e-324.
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def calls() -> Iterator[Calls]:
    with harness() as served:
        yield served


@given(value=json_documents, named=st.booleans())
@example(value=2**70, named=True)  # an integer past 64 bits stays an exact int
@example(value=[1, 1.0, True, None, "1"], named=False)
def test_json_values_reach_the_function_as_the_table_says(calls: Calls, value: Any, named: bool) -> None:
    payload = {"data": {"v": value}} if named else {"parameters": [value]}
    answer = calls.call("POST", "/model", json.dumps(payload).encode())
    assert answer.status == 200, answer.body
    [(args, kwargs)] = calls.captured.calls
    got = kwargs["v"] if named else args[0]
    assert same(got, value), (got, value)


def test_what_the_function_returns_comes_back_as_the_same_json(calls: Calls) -> None:
    @given(value=json_documents)
    def returned(value: Any) -> None:
        keep = calls.captured.keep
        calls.captured.keep = lambda *args, **kwargs: args[0]  # type: ignore[method-assign]
        try:
            answer = calls.call("POST", "/model", json.dumps({"parameters": [value]}).encode())
        finally:
            calls.captured.keep = keep  # type: ignore[method-assign]
        assert answer.status == 200, answer.body
        assert same(answer.body["result"], value)

    returned()
