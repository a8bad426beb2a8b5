"""The log shipper cuts a chunk of an instance's log into lines at once (`bytes.split`, one decode):
for any bytes, that gives exactly what cutting and decoding line by line gives, and the batches it
makes cover every line once, in order, within their limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.logship import MAX_BATCH_BYTES, MAX_LINE, _groups, _split, _split_each

# Lines of text, CRs, invalid UTF-8 and the odd line over MAX_LINE, joined by newlines.
pieces = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"\r", b"\xff\xfe", b"\xe2\x82", "é".encode(), b""]),
    st.integers(MAX_LINE - 2, MAX_LINE + 3).map(lambda n: b"y" * n),
)
chunks = st.lists(pieces, max_size=30).map(b"\n".join) | st.lists(pieces, max_size=30).map(b"".join)


@given(chunks, st.booleans(), st.booleans())
def test_cutting_a_chunk_at_once_is_cutting_it_line_by_line(data: bytes, newline_last: bool, final: bool) -> None:
    data += b"\n" if newline_last else b""
    assert _split(data, final=final) == _split_each(data, final=final)


@given(st.lists(st.integers(1, MAX_LINE), max_size=300), st.integers(1, 50))
def test_batches_cover_every_line_once_in_order_within_their_limits(sizes: list[int], most: int) -> None:
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    groups = _groups(starts, most)
    assert [n for first, last in groups for n in range(first, last)] == list(range(len(sizes)))
    for first, last in groups:
        assert 1 <= last - first <= most
        assert last - first == 1 or starts[last] - starts[first] <= MAX_BATCH_BYTES
